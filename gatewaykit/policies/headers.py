"""
The C{headers} policy: fields removed, set and added on the request sent
upstream and on the response sent to the client, with values that may hold
placeholders filled from the request (C{{client_ip}}, C{{jwt.sub}}...).

Each direction applies, in order: C{remove}, then C{set} (every field of
that name is dropped, then one is added with the value), then C{add} (a
field appended, any others kept). A value whose placeholder has nothing to
give (a claim the token lacks, a header the client did not send) leaves its
field out; with C{set}, the fields of that name are still dropped, so a
client's copy never passes for the gateway's.

See C{docs/transformation.md}.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Optional, Union

from attrs import frozen
from zope.interface import implementer

from gatewaykit.config.schema import (
    Check,
    Context,
    Invalid,
    Parser,
    Section,
    check_header_name,
    converted,
    did_you_mean,
    expect_map,
    list_of,
    pairs,
)
from gatewaykit.config.yamlpos import Node
from gatewaykit.http.forwarding import FORWARDING_FIELDS
from gatewaykit.http.message import Headers
from gatewaykit.http.wire import HOP_BY_HOP
from gatewaykit.interfaces import IPolicy, IPolicyFactory
from gatewaykit.policies.auth import check_upstream_header, claim_text, field_value, set_fields
from gatewaykit.policies.chain import PolicyCall

Fields = list[tuple[bytes, bytes]]
Resolve = Callable[[PolicyCall], Optional[str]]

# Fields that frame a response: the client connection's business.
_FRAMING_FIELDS = HOP_BY_HOP | {b"content-length"}

# {{, }}, a {placeholder}, or a lone brace (a mistake).
_TEMPLATE_PART = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_FORBIDDEN_IN_VALUE = re.compile(r"[\r\n\0]")


# -- placeholders ---------------------------------------------------------------


def _text(value: Optional[str]) -> Optional[str]:
    """An empty value counts as none: nothing to put in a field."""
    return value or None


_REQUEST_VALUES: dict[str, Resolve] = {
    "client_ip": lambda call: call.request.client_ip,
    "request_id": lambda call: call.request.request_id,
    "host": lambda call: _text(call.request.host),
    "method": lambda call: call.request.method,
    "scheme": lambda call: call.request.scheme,
    "path": lambda call: call.request.path,
    "query": lambda call: call.request.query,
    "uri": lambda call: call.request.uri,
    "route": lambda call: call.request.route,
}


def _header(name: str) -> Resolve:
    check_header_name(name)
    return lambda call: call.request.headers.get_str(name)


def _cookie(name: str) -> Resolve:
    return lambda call: call.request.cookies.get(name)


def _query_param(name: str) -> Resolve:
    return lambda call: call.request.query_param(name)


def _jwt_claim(name: str) -> Resolve:
    def resolve(call: PolicyCall) -> Optional[str]:
        identity = call.identity
        if identity is None or identity.kind != "jwt":
            return None
        return claim_text(identity.claims.get(name))

    return resolve


def _claim(name: str) -> Resolve:
    def resolve(call: PolicyCall) -> Optional[str]:
        identity = call.identity
        return None if identity is None else claim_text(identity.claims.get(name))

    return resolve


def _identity(name: str) -> Resolve:
    if name not in ("subject", "kind"):
        raise ValueError(
            f"unknown placeholder {{identity.{name}}}; expected identity.subject or identity.kind"
        )
    return lambda call: None if call.identity is None else _text(getattr(call.identity, name))


# Placeholders with a name after the dot: {header.X-Tenant}, {jwt.sub}...
_NAMED_VALUES: dict[str, Callable[[str], Resolve]] = {
    "header": _header,
    "cookie": _cookie,
    "query": _query_param,
    "jwt": _jwt_claim,
    "claim": _claim,
    "identity": _identity,
}

PLACEHOLDERS = (
    *_REQUEST_VALUES,
    "header.NAME",
    "cookie.NAME",
    "query.NAME",
    "jwt.CLAIM",
    "claim.NAME",
    "identity.subject",
    "identity.kind",
)


def _placeholder(name: str) -> Resolve:
    resolve = _REQUEST_VALUES.get(name)
    if resolve is not None:
        return resolve
    kind, dot, rest = name.partition(".")
    named = _NAMED_VALUES.get(kind)
    if named is not None and dot and rest:
        return named(rest)
    known = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
    hint = did_you_mean(name, [*_REQUEST_VALUES, *(k + "." for k in _NAMED_VALUES)])
    raise ValueError(f"unknown placeholder {{{name}}}{hint} (known: {known})")


def _flush(literal: list[str], parts: list[Union[str, Resolve]]) -> None:
    """Move the literal text gathered so far into C{parts}, as one piece."""
    text = "".join(literal)
    literal.clear()
    if text:
        parts.append(text)


class Template:
    """
    A value with placeholders, parsed once when the config loads. C{{{}}
    and C{}}} stand for literal braces.
    """

    __slots__ = ("text", "_parts")

    def __init__(self, text: str) -> None:
        self.text = text
        parts: list[Union[str, Resolve]] = []
        literal: list[str] = []
        position = 0
        for match in _TEMPLATE_PART.finditer(text):
            literal.append(text[position : match.start()])
            position = match.end()
            piece = match.group()
            if piece in ("{{", "}}"):
                literal.append(piece[0])
            elif match.group(1) is None:
                raise ValueError(
                    f"a lone {piece!r} in {text!r}; write {piece * 2} for a literal brace"
                )
            else:
                _flush(literal, parts)
                parts.append(_placeholder(match.group(1).strip()))
        literal.append(text[position:])
        _flush(literal, parts)
        self._parts = tuple(parts)

    def render(self, call: PolicyCall) -> Optional[str]:
        """The value for C{call}, or C{None} if a placeholder has no value."""
        pieces = []
        for part in self._parts:
            if isinstance(part, str):
                pieces.append(part)
            else:
                value = part(call)
                if value is None:
                    return None
                pieces.append(value)
        return "".join(pieces)

    def __repr__(self) -> str:
        return f"Template({self.text!r})"


def parse_template(text: str) -> Template:
    """A field (or query parameter) value; C{ValueError} names what is wrong."""
    if _FORBIDDEN_IN_VALUE.search(text):
        raise ValueError("a value cannot contain CR, LF or NUL")
    return Template(text)


template: Parser = converted(parse_template, "a value")


# -- the policy ---------------------------------------------------------------------


def check_request_field(name: str) -> str:
    """A field name the policy may change on the request sent upstream."""
    if name.lower() == "host":
        raise ValueError(
            "'Host' cannot be set by a policy: set the upstream's host"
            " (upstreams.NAME.host) instead"
        )
    check_upstream_header(name)
    if name.lower().encode("ascii") in FORWARDING_FIELDS:
        raise ValueError(f"{name!r} cannot be set by a policy: the gateway sets it itself")
    return name


def check_response_field(name: str) -> str:
    """A field name the policy may change on the response sent to the client."""
    check_header_name(name)
    if name.lower().encode("ascii") in _FRAMING_FIELDS:
        raise ValueError(
            f"{name!r} cannot be set by a policy: the gateway frames the response itself"
        )
    return name


@frozen
class FieldEdits:
    """One direction's edits, applied in this order: remove, set, add."""

    remove: tuple[str, ...] = ()
    set: tuple[tuple[str, Template], ...] = ()
    add: tuple[tuple[str, Template], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.remove or self.set or self.add)

    def apply(self, headers: Headers, call: PolicyCall) -> None:
        """Edit C{headers}, with placeholders filled from C{call}."""
        for name in self.remove:
            headers.remove(name)
        values = {}
        for name, value in self.set:
            text = value.render(call)
            if text is not None:
                values[name] = text
        set_fields(headers, (name for name, _ in self.set), values)
        for name, value in self.add:
            text = value.render(call)
            encoded = None if text is None else field_value(text)
            if encoded is not None:
                headers.add(name, encoded)


def _edits(check: Check) -> Parser:
    names = list_of(converted(check, "a header name"), unique=str.lower, what="header")
    return Section(
        {"remove": names, "set": pairs(template, check), "add": pairs(template, check)}
    ).into(FieldEdits)


@frozen
class HeadersOptions:
    """A C{headers} policy's keys."""

    request: FieldEdits = FieldEdits()
    response: FieldEdits = FieldEdits()


_KEYS = Section(
    {"request": _edits(check_request_field), "response": _edits(check_response_field)}
)


def _options(ctx: Context, node: Node) -> HeadersOptions:
    reported = len(ctx.problems)
    options = HeadersOptions(**_KEYS(ctx, node))
    if len(ctx.problems) > reported:
        raise Invalid()
    if not (options.request or options.response):
        raise Invalid(
            expect_map(node),
            "a headers policy needs request or response edits: {set: {}, add: {}, remove: []}",
        )
    return options


@implementer(IPolicy)
class HeadersPolicy:
    """Edits the fields of the request going upstream and of its response."""

    def __init__(self, name: str, options: HeadersOptions) -> None:
        self.name = name
        self._request = options.request
        self._response = options.response

    def on_request(self, call: PolicyCall) -> None:
        if self._request:
            self._request.apply(call.request.headers, call)
        if self._response:
            call.on_response(lambda status, fields: self._edit_response(call, fields))
        return None

    def _edit_response(self, call: PolicyCall, fields: Fields) -> None:
        # The hook must change the caller's list itself.
        headers = Headers(list(fields))
        self._response.apply(headers, call)
        fields[:] = headers.raw


@implementer(IPolicyFactory)
class HeadersFactory:
    """The C{headers} policy type."""

    name = "headers"
    options = staticmethod(_options)

    def build(self, name: str, options: HeadersOptions, context: Any) -> HeadersPolicy:
        return HeadersPolicy(name, options)
