"""
Session affinity (C{upstreams.NAME.sticky}): a cookie names the client's
session, and the state store remembers which target serves it, so every
worker process and gateway node sends the session to the same target while
that target is available.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from gatewaykit.http.forwarding import new_request_id
from gatewaykit.http.message import Request
from gatewaykit.upstream.target import Target

log = Logger()

_SESSION_ID = re.compile(r"^[0-9a-f]{32}$")


class StickySession:
    """One request's session: which target it should go to, and remembering it."""

    def __init__(self, upstream: Any, request: Request) -> None:
        self._upstream = upstream
        self._config = upstream.config.sticky
        given = request.cookies.get(self._config.cookie)
        self.is_new = given is None or not _SESSION_ID.match(given)
        self.session: str = new_request_id() if given is None or self.is_new else given
        self._secure = request.scheme == "https"
        self._known: Optional[str] = None  # the target address the store had

    def _key(self) -> str:
        digest = hashlib.sha256(self.session.encode("ascii")).hexdigest()
        return f"gk:sticky:{self._upstream.name}:{digest}"

    def lookup(self) -> Deferred[Optional[Target]]:
        """The session's target (C{None}: new session, unknown, or store away)."""
        store = self._upstream.store
        if self.is_new or store is None:
            return succeed(None)
        d = store.get(self._key())
        d.addCallbacks(self._found, self._store_failed)
        return d

    def _found(self, value: Optional[bytes]) -> Optional[Target]:
        if value is None:
            return None
        self._known = value.decode("ascii", "replace")
        return self._upstream.target_at(self._known)

    def _store_failed(self, failure: Any) -> None:
        log.warn(
            "upstream {upstream}: sticky lookup failed, balancing instead: {error}",
            upstream=self._upstream.name,
            error=failure.getErrorMessage(),
        )
        return None

    def served_by(self, target: Target, fields: list[tuple[bytes, bytes]]) -> None:
        """
        The response came from C{target}: remember it for the session (the
        TTL restarts with each use) and set the cookie on a new session.
        """
        ttl = self._config.ttl
        if self.is_new:
            cookie = "%s=%s; Path=/; Max-Age=%d; HttpOnly; SameSite=Lax" % (
                self._config.cookie,
                self.session,
                int(ttl),
            )
            if self._secure:
                cookie += "; Secure"
            fields.append((b"Set-Cookie", cookie.encode("ascii")))
        store = self._upstream.store
        if store is None:
            return
        d = store.set(self._key(), target.address.encode("ascii"), ttl)
        d.addErrback(self._store_failed)
