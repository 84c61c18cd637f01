"""
The C{rewrite} policy: the path and query the upstream sees.

Applied in this order, each step to the result of the one before:

 1. C{strip_prefix}: a leading prefix removed on segment boundaries
    (C{/api} makes C{/api/users} C{/users} and C{/api} C{/}; C{/apix} is
    left alone). C{X-Forwarded-Prefix} tells the upstream what was removed;
    a client's copy is always dropped.
 2. C{regex} and C{replacement}: every match in the path replaced, as
    Python's C{re.sub} does (groups as C{\\1} or C{\\g<name>}). The result is
    normalised again like a client's path; one that climbs above the root
    is refused with 400, and one that does not start with C{/} (a mistake
    of the config) with 500.
 3. C{add_prefix}: a prefix put in front (C{/v2} makes C{/users}
    C{/v2/users} and C{/} C{/v2/}).
 4. C{query}: parameters removed (C{remove}), then set (C{set}: every
    parameter of that name dropped, then one added, its value with the
    placeholders of the C{headers} policy).

Policies after this one, and the upstream, see the rewritten request; the
route was already chosen on the client's path. See C{docs/transformation.md}.
"""

from __future__ import annotations

import re
from typing import Any, Optional
from urllib.parse import quote

from attrs import field, frozen
from twisted.logger import Logger
from zope.interface import implementer

from gatewaykit.config.schema import (
    Context,
    Invalid,
    Section,
    converted,
    expect_map,
    list_of,
    pairs,
    text,
)
from gatewaykit.config.yamlpos import Node
from gatewaykit.http.errors import GatewayError
from gatewaykit.interfaces import IPolicy, IPolicyFactory
from gatewaykit.policies.chain import PolicyCall
from gatewaykit.policies.headers import Template, template
from gatewaykit.routing.paths import BadPath, normalise_path

log = Logger()

# What a query parameter's name or value keeps unescaped: RFC 3986 query
# characters but the three that separate or encode parameters (& = +).
_QUERY_SAFE = "-._~!$'()*,;:@/"
# Never written into a path: they would end it, or break the request line.
_NOT_IN_PATH = re.compile(r"[\s?#\x00-\x1f\x7f]")
_PREFIX_HEADER = b"X-Forwarded-Prefix"


def _check_path_text(value: str, what: str) -> None:
    if not value.isascii() or _NOT_IN_PATH.search(value):
        raise ValueError(
            f"{what} cannot contain spaces, '?', '#', control or non-ASCII characters"
            f" (percent-encode them), got {value!r}"
        )


def parse_prefix(value: str) -> str:
    """
    A C{strip_prefix} or C{add_prefix}: a normalised path without its
    trailing slash, other than C{/} (which would change nothing).
    """
    if not value.startswith("/"):
        raise ValueError(f"a prefix must start with '/', got {value!r}")
    _check_path_text(value, "a prefix")
    try:
        prefix = normalise_path(value.encode("ascii")).rstrip("/")
    except BadPath as e:
        raise ValueError(f"invalid prefix {value!r}: {e}") from None
    if not prefix:
        raise ValueError("a prefix of '/' changes nothing; leave the key out")
    return prefix


def _regex(value: str) -> re.Pattern[str]:
    try:
        return re.compile(value)
    except re.error as e:
        raise ValueError(f"invalid regular expression: {e}") from None


def strip_prefix(path: str, prefix: str) -> Optional[str]:
    """C{path} without C{prefix} (on a segment boundary), or C{None} if it does not start so."""
    if not path.startswith(prefix):
        return None
    rest = path[len(prefix) :]
    if not rest:
        return "/"
    return rest if rest.startswith("/") else None


@frozen
class QueryEdits:
    """C{query}: parameters removed, then set."""

    remove: tuple[str, ...] = ()
    set: tuple[tuple[str, Template], ...] = ()


@frozen
class RewriteOptions:
    """A C{rewrite} policy's keys."""

    strip_prefix: Optional[str] = None
    regex: Optional[re.Pattern[str]] = field(default=None, eq=False)
    replacement: Optional[str] = None
    add_prefix: Optional[str] = None
    query: QueryEdits = QueryEdits()


_KEYS = Section(
    {
        "strip_prefix": converted(parse_prefix, "a path prefix"),
        "regex": converted(_regex, "a regular expression"),
        "replacement": text(non_empty=False, expected="a replacement path"),
        "add_prefix": converted(parse_prefix, "a path prefix"),
        "query": Section(
            {
                "remove": list_of(text(expected="a parameter name"), unique=str, what="parameter"),
                "set": pairs(template),
            }
        ).into(QueryEdits),
    }
)


def _options(ctx: Context, node: Node) -> RewriteOptions:
    """The keys, and what only makes sense together."""
    reported = len(ctx.problems)
    values = _KEYS(ctx, node)
    entries = expect_map(node).entries
    complete = len(ctx.problems) == reported
    for key, other in (("regex", "replacement"), ("replacement", "regex")):
        if key in values and other not in entries:
            ctx.report(entries[key][0], f"{key!r} needs {other!r} too")
            complete = False
    pattern, replacement = values.get("regex"), values.get("replacement")
    if pattern is not None and replacement is not None:
        problem = _replacement_problem(pattern, replacement)
        if problem is not None:
            ctx.report(entries["replacement"][1], problem)
            complete = False
    query = values.get("query", QueryEdits())
    nothing = not values or (set(values) == {"query"} and not (query.remove or query.set))
    if complete and nothing:
        ctx.report(
            node,
            "a rewrite policy needs at least one of strip_prefix, regex with replacement,"
            " add_prefix, query",
        )
        complete = False
    if not complete:
        raise Invalid()
    return RewriteOptions(**values)


def _replacement_problem(pattern: re.Pattern[str], replacement: str) -> Optional[str]:
    try:
        _check_path_text(replacement, "a replacement")
        # re.sub checks the template's group references before searching,
        # so an empty string finds every mistake without a match.
        pattern.sub(replacement, "")
    except ValueError as e:
        return str(e)
    except (re.error, IndexError) as e:
        return f"invalid replacement: {e}"
    return None


@implementer(IPolicy)
class Rewrite:
    """Rewrites the path and query of requests going upstream."""

    def __init__(self, name: str, options: RewriteOptions) -> None:
        self.name = name
        self._strip = options.strip_prefix
        self._regex = options.regex
        self._replacement = options.replacement or ""
        self._add = options.add_prefix
        self._query = options.query
        self._edits_query = bool(options.query.remove or options.query.set)

    def on_request(self, call: PolicyCall) -> Optional[GatewayError]:
        request = call.request
        path = request.path
        if self._strip is not None:
            request.headers.remove(_PREFIX_HEADER)
            stripped = strip_prefix(path, self._strip)
            if stripped is not None:
                path = stripped
                request.headers.add(_PREFIX_HEADER, self._strip)
        if self._regex is not None:
            path = self._regex.sub(self._replacement, path)
            if not path.startswith("/"):
                return self._config_fault(call, path)
            try:
                path = normalise_path(path.encode("latin-1"))
            except BadPath as e:
                return GatewayError(400, "bad_request", f"the rewritten path is invalid: {e}")
        if self._add is not None:
            path = self._add + path
        request.path = path
        if self._edits_query:
            self._edit_query(call)
        return None

    def _config_fault(self, call: PolicyCall, path: str) -> GatewayError:
        log.error(
            "rewrite {policy} made {path!r} of {request!r}, which is not a path",
            policy=self.name,
            path=path,
            request=call.request,
        )
        return GatewayError(500, "internal_error", "the gateway could not rewrite this request")

    def _edit_query(self, call: PolicyCall) -> None:
        request = call.request
        for name in self._query.remove:
            request.remove_query_param(name)
        added = []
        for name, value in self._query.set:
            request.remove_query_param(name)
            rendered = value.render(call)
            if rendered is not None:
                added.append(f"{quote(name, _QUERY_SAFE)}={quote(rendered, _QUERY_SAFE)}")
        request.add_query_params(added)


@implementer(IPolicyFactory)
class RewriteFactory:
    """The C{rewrite} policy type."""

    name = "rewrite"
    options = staticmethod(_options)

    def build(self, name: str, options: RewriteOptions, context: Any) -> Rewrite:
        return Rewrite(name, options)
