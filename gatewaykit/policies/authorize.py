"""
The C{authorize} policy: what the identity an authentication policy set
must hold (scopes, claims). No identity is 401; an identity lacking
something is 403.
"""

from __future__ import annotations

import re
from typing import Any, Optional

from attrs import frozen
from zope.interface import implementer

from gatewaykit.config.model import Condition
from gatewaykit.config.schema import Context, Section, converted, list_of, pairs, text
from gatewaykit.config.yamlpos import Node
from gatewaykit.http.errors import GatewayError
from gatewaykit.interfaces import IPolicy, IPolicyFactory
from gatewaykit.policies.auth import (
    DEFAULT_REALM,
    challenge,
    claim_text,
    forbidden,
    unauthorized,
)
from gatewaykit.policies.chain import Identity, PolicyCall, PolicyContext


def _condition_value(value: str) -> str:
    if value.startswith("~"):
        try:
            re.compile(value[1:])
        except re.error as e:
            raise ValueError(f"invalid regular expression: {e}") from None
    return value


def _claims(ctx: Context, node: Node) -> tuple[Condition, ...]:
    found = pairs(converted(_condition_value, "a value, ~regex or \"*\""))(ctx, node)
    return tuple(Condition.parse(name, value) for name, value in found)


_SCOPES = list_of(text(expected="a scope"), unique=str, what="scope")


@frozen
class AuthorizeOptions:
    """
    C{type: authorize}: every scope of C{scopes}, at least one of
    C{any_scopes} (when given), and every claim condition of C{claims}
    (exact, C{~regex} or C{"*"} for present, as route conditions).
    """

    scopes: tuple[str, ...] = ()
    any_scopes: tuple[str, ...] = ()
    claims: tuple[Condition, ...] = ()
    realm: str = DEFAULT_REALM


OPTIONS = Section(
    {"scopes": _SCOPES, "any_scopes": _SCOPES, "claims": _claims, "realm": text()}
).into(AuthorizeOptions)


def claim_matches(condition: Condition, value: Any) -> bool:
    """
    Whether a claim satisfies C{condition}; a list claim (C{groups},
    C{roles}) does when one of its items does.
    """
    if isinstance(value, list):
        return any(condition.matches(claim_text(item)) for item in value)
    return condition.matches(claim_text(value))


@implementer(IPolicy)
class AuthorizePolicy:
    """Lets on only identities holding what the options require."""

    def __init__(self, name: str, options: AuthorizeOptions) -> None:
        self.name = name
        self._options = options

    def on_request(self, call: PolicyCall) -> Optional[GatewayError]:
        identity = call.identity
        if identity is None:
            return unauthorized(
                "authentication is required", challenge("Bearer", realm=self._options.realm)
            )
        return self.refusal(identity)

    def refusal(self, identity: Identity) -> Optional[GatewayError]:
        """The 403 for C{identity}, or C{None} if it may go on."""
        options = self._options
        missing = [repr(scope) for scope in options.scopes if scope not in identity.scopes]
        if options.any_scopes and identity.scopes.isdisjoint(options.any_scopes):
            missing.append(" or ".join(repr(scope) for scope in options.any_scopes))
        if missing:
            headers: tuple[tuple[bytes, bytes], ...] = ()
            if identity.kind == "jwt":
                value = challenge(
                    "Bearer",
                    realm=options.realm,
                    error="insufficient_scope",
                    scope=" ".join(options.scopes + options.any_scopes),
                )
                headers = ((b"WWW-Authenticate", value),)
            noun = "scope" if len(missing) == 1 else "scopes"
            return forbidden(f"missing {noun} {', '.join(missing)}", headers)
        for condition in options.claims:
            if not claim_matches(condition, identity.claims.get(condition.name)):
                return forbidden(f"claim {condition.name!r} does not match")
        return None


@implementer(IPolicyFactory)
class AuthorizeFactory:
    """The C{authorize} policy type."""

    name = "authorize"
    options = staticmethod(OPTIONS)

    def build(
        self, name: str, options: AuthorizeOptions, context: PolicyContext
    ) -> AuthorizePolicy:
        return AuthorizePolicy(name, options)

