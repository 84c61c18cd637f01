"""
The C{request_filter} policy: ordered rules refusing requests that look like
probes or attacks, before they reach an upstream.

A rule holds conditions on the path (C{path_regex}), the method
(C{method}/C{methods}), header fields (C{headers}), query parameters
(C{query}), the raw query string (C{query_regex}) and the client address
(C{client_ip}); it matches when every condition it gives holds. The first
rule that matches refuses the request with its C{status} (default the
policy's, 403) and a problem body with code C{filtered} naming the rule.

Attackers encode what they send, so paths and query strings are matched in
every form an upstream might see: as received, as normalised by the router
(dot segments gone, unreserved escapes decoded) and fully percent-decoded
(repeatedly, so C{%252e} is a dot too); a rule matches if any form does.
Query parameter values are matched decoded (once, then fully). Header
values are matched as received: upstreams do not decode them.

Rules come from C{rules} and from a C{rules_file} (a YAML file with a
C{rules} list, such as the starter set C{conf/filters.yaml}); C{disable}
names rules to leave out, and a rule with C{enabled: false} is left out too.
How often each rule refused is kept in L{RequestFilter.matches}. See
C{docs/request-filter.md}.
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Any, Iterable, Optional, Union
from urllib.parse import unquote, unquote_plus

from attrs import field, frozen
from zope.interface import implementer

from gatewaykit.config.addresses import parse_network
from gatewaykit.config.loader import conditions
from gatewaykit.config.model import Condition, Network
from gatewaykit.config.schema import (
    MISSING,
    Context,
    Invalid,
    Key,
    Parser,
    Section,
    boolean,
    check_header_name,
    converted,
    expect_list,
    expect_map,
    integer,
    list_of,
    position,
    text,
    token,
)
from gatewaykit.config.yamlpos import MapNode, Node, compose
from gatewaykit.http.errors import GatewayError
from gatewaykit.http.message import Request
from gatewaykit.interfaces import IPolicy, IPolicyFactory
from gatewaykit.policies.ip_filter import normalise_address, normalise_network

Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

CONDITIONS = ("path_regex", "method", "methods", "headers", "query", "query_regex", "client_ip")
"""The keys of a rule that are conditions (a rule needs one at least)."""

# Enough for double and triple encoding; more rounds would only find what
# no upstream decodes.
_DECODE_ROUNDS = 3


# -- the model ---------------------------------------------------------------------


@frozen
class FilterRule:
    """One rule: its conditions (empty ones are not checked) and its status."""

    name: str
    path_regex: Optional[re.Pattern[str]] = field(default=None, eq=False)
    methods: frozenset[str] = frozenset()
    headers: tuple[Condition, ...] = ()
    query: tuple[Condition, ...] = ()
    query_regex: Optional[re.Pattern[str]] = field(default=None, eq=False)
    client_ip: tuple[Network, ...] = ()
    status: Optional[int] = None  # None: the policy's
    enabled: bool = True

    def matches(self, request: Request, forms: RequestForms) -> bool:
        """Whether every condition of this rule holds for C{request}."""
        if self.methods and request.method not in self.methods:
            return False
        if self.client_ip:
            address = normalise_address(request.client_ip)
            if address is None or not any(address in net for net in self.client_ip):
                return False
        for condition in self.headers:
            if not condition.matches(request.headers.get_str(condition.name)):
                return False
        for condition in self.query:
            if not any(condition.matches(v) for v in forms.parameter(condition.name)):
                return False
        if self.path_regex is not None:
            search = self.path_regex.search
            if not any(search(path) for path in forms.paths()):
                return False
        if self.query_regex is not None:
            search = self.query_regex.search
            if not any(search(query) for query in forms.queries()):
                return False
        return True


@frozen
class RequestFilterOptions:
    """A C{request_filter} policy's rules (in order, the enabled ones) and default status."""

    rules: tuple[FilterRule, ...] = ()
    status: int = 403


# -- the forms of a request rules look at -------------------------------------------


def decoded_forms(text: str, plus: bool = False) -> list[str]:
    """
    C{text} and what percent-decoding it gives, round after round until
    nothing changes; with C{plus}, C{+} is a space too (a query string).
    """
    forms = [text]
    decode = unquote_plus if plus else unquote
    for _ in range(_DECODE_ROUNDS):
        if "%" not in text and not (plus and "+" in text):
            break
        decoded = decode(text)
        if decoded == text:
            break
        forms.append(decoded)
        text = decoded
    return forms


def _unique(texts: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(texts))


class RequestForms:
    """The forms of one request's path, query and parameters, each made when first needed."""

    __slots__ = ("_request", "_paths", "_queries")

    def __init__(self, request: Request) -> None:
        self._request = request
        self._paths: Optional[tuple[str, ...]] = None
        self._queries: Optional[tuple[str, ...]] = None

    def paths(self) -> tuple[str, ...]:
        """The normalised path, the path as received, and their decoded forms."""
        if self._paths is None:
            request = self._request
            raw = request.target.partition(b"?")[0].decode("latin-1")
            self._paths = _unique(
                [*decoded_forms(request.path), *decoded_forms(raw)]
                if raw != request.path
                else decoded_forms(raw)
            )
        return self._paths

    def queries(self) -> tuple[str, ...]:
        """The query string as received and its decoded forms."""
        if self._queries is None:
            self._queries = _unique(decoded_forms(self._request.query, plus=True))
        return self._queries

    def parameter(self, name: str) -> tuple[str, ...]:
        """Every value of query parameter C{name}, decoded once and fully."""
        values = self._request.query_params.get(name, ())
        return _unique(form for value in values for form in decoded_forms(value))


# -- the policy --------------------------------------------------------------------


@implementer(IPolicy)
class RequestFilter:
    """
    Refuses requests matching one of its rules.

    @ivar matches: by rule name, how many requests each rule refused.
    """

    def __init__(self, name: str, options: RequestFilterOptions) -> None:
        self.name = name
        self.rules = options.rules
        self.status = options.status
        self.matches: dict[str, int] = {rule.name: 0 for rule in self.rules}

    def match(self, request: Request) -> Optional[FilterRule]:
        """The first rule C{request} matches, if any."""
        forms = RequestForms(request)
        for rule in self.rules:
            if rule.matches(request, forms):
                return rule
        return None

    def on_request(self, call: Any) -> Optional[GatewayError]:
        rule = self.match(call.request)
        if rule is None:
            return None
        self.matches[rule.name] += 1
        return GatewayError(
            rule.status or self.status,
            "filtered",
            f"refused by rule {rule.name!r} of request filter {self.name!r}",
            extensions={"rule": rule.name},
        )


# -- the options -------------------------------------------------------------------


def _regex(value: str) -> re.Pattern[str]:
    try:
        return re.compile(value)
    except re.error as e:
        raise ValueError(f"invalid regular expression: {e}") from None


def _method(value: str) -> str:
    return str(token("method")(value)).upper()


def _network(value: str) -> Network:
    return normalise_network(parse_network(value))


_METHOD = converted(_method, "a method")

RULE = Section(
    {
        "name": text(expected="a rule name"),
        "enabled": boolean,
        "path_regex": converted(_regex, "a regular expression"),
        "method": _METHOD,
        "methods": list_of(_METHOD, unique=str, what="method"),
        "headers": conditions(check_header_name),
        "query": conditions(),
        "query_regex": converted(_regex, "a regular expression"),
        "client_ip": list_of(
            converted(_network, "a CIDR like 10.0.0.0/8 or an IP address"),
            unique=str,
            what="network",
        ),
        "status": integer(400, 599),
    }
)


def _rule(default_name: str) -> Parser:
    def parse(ctx: Context, node: Node) -> FilterRule:
        values = RULE(ctx, node)
        if not any(key in expect_map(node).entries for key in CONDITIONS):
            raise Invalid(node, "a rule needs at least one condition: " + ", ".join(CONDITIONS))
        methods = set(values.pop("methods", ()))
        if "method" in values:
            if methods:
                raise Invalid(
                    expect_map(node).entries["method"][0], "give method or methods, not both"
                )
            methods.add(values.pop("method"))
        values.setdefault("name", default_name)
        return FilterRule(methods=frozenset(methods), **values)

    return parse


def _rules(prefix: str) -> Parser:
    """A list of rules; one without a name is called C{PREFIXrules[INDEX]}."""

    def parse(ctx: Context, node: Node) -> tuple[FilterRule, ...]:
        rules: list[FilterRule] = []
        first_seen: dict[str, Node] = {}
        for index, item in enumerate(expect_list(node).items):
            rule = ctx.attempt(_rule(f"{prefix}rules[{index}]"), item)
            if rule is MISSING:
                continue
            first = first_seen.get(rule.name)
            if first is not None:
                ctx.report(item, f"duplicate rule name {rule.name!r} (first at {position(first)})")
                continue
            first_seen[rule.name] = item
            rules.append(rule)
        return tuple(rules)

    return parse


def _rules_file(ctx: Context, node: Node) -> tuple[FilterRule, ...]:
    """
    The rules of a YAML file (C{rules: [...]}) named relative to the config's
    folder; its problems are reported at their place in that file.
    """
    written = text(expected="a rules file path")(ctx, node)
    path = os.path.normpath(os.path.join(ctx.base_dir, written))
    try:
        with open(path, encoding="utf-8") as f:
            content = f.read()
    except OSError as e:
        raise Invalid(node, f"cannot read rules file {written!r} ({path}): {e.strerror}") from None
    except UnicodeDecodeError:
        raise Invalid(node, f"rules file {written!r} ({path}) is not valid UTF-8") from None
    inner = Context(source=path, base_dir=os.path.dirname(path))
    root = compose(content, os.environ, inner.report_at)
    rules: Any = ()
    if isinstance(root, MapNode):
        section = Section({"rules": Key(_rules(os.path.basename(path) + ":"), required=True)})
        values = inner.attempt(section, root)
        rules = () if values is MISSING else values["rules"]
    elif not inner.problems:
        inner.report_at(1, 1, "expected a mapping with a rules list")
    ctx.problems.extend(inner.problems)
    ctx.warnings.extend(inner.warnings)
    if inner.problems:
        raise Invalid()
    return tuple(rules)


_OPTIONS = Section(
    {
        "rules": _rules(""),
        "rules_file": _rules_file,
        "status": integer(400, 599),
        "disable": list_of(text(expected="a rule name"), unique=str, what="rule name"),
    }
)


def parse_options(ctx: Context, node: Node) -> RequestFilterOptions:
    """
    A C{request_filter}'s keys: the inline rules, then the file's; those
    named in C{disable} or with C{enabled: false} left out.
    """
    values = _OPTIONS(ctx, node)
    mapping = expect_map(node)
    if "rules" not in mapping.entries and "rules_file" not in mapping.entries:
        raise Invalid(node, "a request_filter needs rules, a rules_file, or both")
    rules = values.get("rules", ()) + values.get("rules_file", ())
    names = [rule.name for rule in rules]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise Invalid(node, f"rule {twice[0]!r} is both in rules and in the rules_file")
    disabled = set(values.get("disable", ()))
    unknown = sorted(disabled - set(names))
    if unknown:
        raise Invalid(mapping.node_of("disable"), f"disable names no rule called {unknown[0]!r}")
    kept = tuple(rule for rule in rules if rule.enabled and rule.name not in disabled)
    return RequestFilterOptions(kept, values.get("status", 403))


@implementer(IPolicyFactory)
class RequestFilterFactory:
    """The C{request_filter} policy type."""

    name = "request_filter"
    options = staticmethod(parse_options)

    def build(self, name: str, options: RequestFilterOptions, context: Any) -> RequestFilter:
        return RequestFilter(name, options)
