"""
Cache keys (RFC 9111 2 and 4.1).

The primary key is the scheme, host (with a port other than the scheme's
default) and target URI of a request: C{https://api.example.com/users?id=1}.
Only responses to GET are stored, and HEAD is answered from them, so the
method is not part of it. Responses with C{Vary} are stored under the
primary key plus a secondary key made of the request's values of the fields
named in C{Vary}, normalised so that spelling differences that cannot change
the response (spaces, case of the C{Accept-Encoding} codings, their order at
equal weights) do not split the cache.

When a C{compress} policy runs after the cache, C{Accept-Encoding} is keyed
by the coding that policy negotiates instead (C{br}, C{gzip}, C{identity}):
every client that would get the gzip variant shares it, whatever its exact
C{Accept-Encoding}.
"""

from __future__ import annotations

from typing import Iterable, Optional
from urllib.parse import urlsplit

from gatewaykit.http.message import Headers, Request
from gatewaykit.routing.paths import BadPath, normalise_path

DEFAULT_PORTS = {"http": 80, "https": 443}

# Separates the primary key from the secondary one (never in a URI).
VARIANT_SEPARATOR = "\n"


def authority(scheme: str, host: str, port: Optional[int]) -> str:
    """C{host}, or C{host:port} when C{port} is not C{scheme}'s default."""
    if port is None or DEFAULT_PORTS.get(scheme) == port:
        return host
    return f"{host}:{port}"


def primary_key(request: Request) -> str:
    """The primary cache key of C{request}."""
    scheme = request.scheme
    return f"{scheme}://{authority(scheme, request.host, request.port)}{request.uri}"


def key_for_url(url: str) -> Optional[str]:
    """
    The primary key of an absolute C{http(s)://} URL (as given to a purge),
    its path normalised as the gateway normalises request paths; C{None}
    when it is not such a URL.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    try:
        path = normalise_path((parts.path or "/").encode("latin-1"))
        port = parts.port
    except (BadPath, ValueError, UnicodeEncodeError):
        return None
    uri = f"{path}?{parts.query}" if parts.query else path
    return f"{scheme}://{authority(scheme, parts.hostname.rstrip('.'), port)}{uri}"


def under_prefix(path: str, prefix: str) -> bool:
    """Whether C{path} lies under C{prefix} on segment boundaries."""
    if not path.startswith(prefix):
        return False
    return len(path) == len(prefix) or prefix.endswith("/") or path[len(prefix)] == "/"


def normalise_accept_encoding(value: bytes) -> bytes:
    """
    C{Accept-Encoding} as the cache keys it: the codings in lower case
    with their weights, heaviest first and by name at equal weights,
    without spaces: C{"gzip, deflate, br"} and C{"br,gzip,deflate"} are one
    key.
    """
    codings = []
    for item in value.split(b","):
        coding, _, parameters = item.partition(b";")
        coding = coding.strip().lower()
        if not coding:
            continue
        weight = 1.0
        for parameter in parameters.split(b";"):
            name, _, argument = parameter.partition(b"=")
            if name.strip().lower() == b"q":
                try:
                    weight = float(argument.strip())
                except ValueError:
                    weight = 0.0
        codings.append((-weight, coding))
    codings.sort()
    return b",".join(
        coding if weight == -1.0 else b"%s;q=%g" % (coding, -weight) for weight, coding in codings
    )


def _normalise(name: bytes, values: list[bytes]) -> bytes:
    joined = b",".join(values)
    if name == b"accept-encoding":
        return normalise_accept_encoding(joined)
    return b" ".join(joined.split())


def secondary_key(names: Iterable[bytes], headers: Headers, coding: Optional[bytes] = None) -> str:
    """
    The secondary key of a request for a response that varies on the
    lower-case field C{names}: each field's normalised value (absent and
    empty differ), or for C{Accept-Encoding} the negotiated C{coding} when
    given.
    """
    parts = []
    for name in names:
        if coding is not None and name == b"accept-encoding":
            parts.append("=" + coding.decode("latin-1"))
            continue
        values = headers.get_all(name)
        parts.append("\0" if not values else _normalise(name, values).decode("latin-1"))
    return "\t".join(parts)


def variant_key(primary: str, secondary: str) -> str:
    """The key a varying response is stored under."""
    return primary + VARIANT_SEPARATOR + secondary


def variant_keys(
    primary: str, names: tuple[bytes, ...], headers: Headers, coding: Optional[bytes]
) -> list[str]:
    """
    The keys a request's variant may be under, most likely first: by the
    negotiated C{coding}, then by its C{Accept-Encoding} (where a response
    the upstream encoded itself is kept).
    """
    keys = [variant_key(primary, secondary_key(names, headers))]
    if coding is not None and b"accept-encoding" in names:
        keys.insert(0, variant_key(primary, secondary_key(names, headers, coding)))
    return keys


def response_coding(fields: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The content coding of a response's body (C{identity} without one)."""
    for name, value in fields:
        if name.lower() == b"content-encoding":
            return value.strip().lower() or b"identity"
    return b"identity"
