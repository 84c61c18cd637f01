"""
The vocabulary the configuration is checked with.

A parser takes the L{Context} and one node and returns a value, or raises
L{Invalid}. Parsers compose: L{list_of} and L{Section} (a declarative table of
the keys a mapping may hold) run their parts through L{Context.attempt},
which records a problem and carries on, so one pass finds every mistake.
"""

from __future__ import annotations

import difflib
import re
from typing import (
    Any,
    Callable,
    Collection,
    Hashable,
    Iterable,
    Mapping,
    Optional,
    Union,
)

from attrs import Factory, define, frozen

from gatewaykit.config.errors import ConfigProblem
from gatewaykit.config.units import (
    DURATION_FORM,
    SIZE_FORM,
    parse_duration,
    parse_size,
)
from gatewaykit.config.yamlpos import UNRESOLVED, ListNode, MapNode, Node, ScalarNode


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
"""What L{Context.attempt} returns for a value that did not parse."""


class Invalid(Exception):
    """
    A node is wrong. Without a message the problem was already reported and
    only the value it belongs to is abandoned.
    """

    def __init__(self, node: Optional[Node] = None, message: Optional[str] = None):
        super().__init__(message)
        self.node = node
        self.message = message


@define
class Context:
    """Where a configuration comes from, and the problems found so far."""

    source: str
    base_dir: str
    problems: list[ConfigProblem] = Factory(list)
    warnings: list[ConfigProblem] = Factory(list)
    # Names other parts may refer to, by kind ("listener", "upstream").
    names: dict[str, Collection[str]] = Factory(dict)

    def report(self, node: Node, message: str) -> None:
        """Record a problem at C{node}."""
        self.report_at(node.line, node.col, message)

    def report_at(self, line: int, col: int, message: str) -> None:
        """Record a problem at a position."""
        self.problems.append(ConfigProblem(self.source, line, col, message))

    def warn(self, node: Node, message: str) -> None:
        """Record something that loads but deserves a look, at C{node}."""
        self.warnings.append(ConfigProblem(self.source, node.line, node.col, message))

    def attempt(self, parse: "Parser", node: Node, default: Any = MISSING) -> Any:
        """C{parse(self, node)}, or C{default} once its problem is recorded."""
        try:
            return parse(self, node)
        except Invalid as e:
            if e.message is not None:
                self.report(e.node or node, e.message)
            return default


Parser = Callable[[Context, Node], Any]
Check = Callable[[str], Any]
"""A check of one text, raising C{ValueError} with the problem."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """C{"; did you mean 'x'?"} for the closest of C{choices}, or C{""}."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def describe(node: Node) -> str:
    """How a wrong value is named in a message: "a list", "'abc'", "5"."""
    if isinstance(node, MapNode):
        return "a mapping"
    if isinstance(node, ListNode):
        return "a list"
    value = node.value
    if value is None:
        return "nothing (null)"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (bool, int, float)):
        return node.text
    return f"a {type(value).__name__} ({node.text})"


def wrong(node: Node, expected: str) -> Invalid:
    """The L{Invalid} for C{node} not being C{expected}."""
    if isinstance(node, ScalarNode) and node.value is UNRESOLVED:
        return Invalid()
    return Invalid(node, f"expected {expected}, got {describe(node)}")


def position(node: Node) -> str:
    """C{LINE:COL} of C{node}, for pointing back at an earlier one."""
    return f"{node.line}:{node.col}"


def is_null(node: Node) -> bool:
    """Whether C{node} is an empty value (C{~}, C{null} or nothing)."""
    return isinstance(node, ScalarNode) and node.value is None


def expect_map(node: Node, expected: str = "a mapping") -> MapNode:
    """C{node} if it is a mapping."""
    if not isinstance(node, MapNode):
        raise wrong(node, expected)
    return node


def expect_list(node: Node, expected: str = "a list") -> ListNode:
    """C{node} if it is a sequence."""
    if not isinstance(node, ListNode):
        raise wrong(node, expected)
    return node


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def text_of(node: Node, expected: str) -> str:
    """
    The text of a string scalar; a number counts as its text, as written, so
    C{Accept-Version: 1} means the header value C{"1"}.
    """
    if isinstance(node, ScalarNode):
        if isinstance(node.value, str):
            return node.value
        if _is_number(node.value):
            return node.text
    raise wrong(node, expected)


def text(non_empty: bool = True, expected: str = "a string") -> Parser:
    """A string (or a number, taken as written)."""

    def parse(ctx: Context, node: Node) -> str:
        value = text_of(node, expected)
        if non_empty and not value:
            raise Invalid(node, f"expected {expected}, got an empty string")
        return value

    return parse


# An RFC 9110 token: what header names and methods are made of.
TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def token(kind: str) -> Check:
    """A check that a string is a token, naming it C{kind} in the error."""

    def check(value: str) -> str:
        if not TOKEN.fullmatch(value):
            raise ValueError(f"{value!r} is not a valid {kind}")
        return value

    return check


check_header_name = token("header name")


def converted(convert: Callable[[str], Any], expected: str = "a string") -> Parser:
    """A string passed through C{convert}, whose C{ValueError} is the problem."""

    def parse(ctx: Context, node: Node) -> Any:
        try:
            return convert(text_of(node, expected))
        except ValueError as e:
            raise Invalid(node, str(e)) from None

    return parse


header_name: Parser = converted(check_header_name, "a header name")


def one_of(*options: str, later: Iterable[str] = (), what: str = "value") -> Parser:
    """
    One string of C{options}. A name in C{later} is known but not supported
    yet, and says so.
    """
    later = tuple(later)

    def parse(ctx: Context, node: Node) -> str:
        value = text_of(node, f"one of {', '.join(options)}")
        if value in options:
            return value
        supported = ", ".join(options)
        if value in later:
            raise Invalid(
                node, f"{what} {value!r} is not supported yet; supported: {supported}"
            )
        raise Invalid(
            node,
            f"unknown {what} {value!r}; expected one of: {supported}"
            + did_you_mean(value, options + later),
        )

    return parse


def integer(
    minimum: Optional[int] = None,
    maximum: Optional[int] = None,
    choices: tuple[int, ...] = (),
) -> Parser:
    """An integer, within bounds or among C{choices} when given."""
    if choices:
        expected = "one of " + ", ".join(map(str, choices))
    elif minimum is not None and maximum is not None:
        expected = f"an integer from {minimum} to {maximum}"
    elif minimum is not None:
        expected = f"an integer >= {minimum}"
    else:
        expected = "an integer"

    def parse(ctx: Context, node: Node) -> int:
        value = node.value if isinstance(node, ScalarNode) else None
        if not isinstance(value, int) or isinstance(value, bool):
            raise wrong(node, expected)
        if (
            (choices and value not in choices)
            or (minimum is not None and value < minimum)
            or (maximum is not None and value > maximum)
        ):
            raise wrong(node, expected)
        return value

    return parse


def boolean(ctx: Context, node: Node) -> bool:
    """C{true} or C{false}."""
    value = node.value if isinstance(node, ScalarNode) else None
    if not isinstance(value, bool):
        raise wrong(node, "true or false")
    return value


def number(minimum: float, maximum: float) -> Parser:
    """A number (integer or not) from C{minimum} to C{maximum}."""
    expected = f"a number from {minimum:g} to {maximum:g}"

    def parse(ctx: Context, node: Node) -> float:
        value: Any = node.value if isinstance(node, ScalarNode) else None
        if not _is_number(value) or not minimum <= value <= maximum:
            raise wrong(node, expected)
        return float(value)

    return parse


def _amount(
    node: Node, form: str, parse_text: Callable[[str], Any], integral: bool
) -> Any:
    """A non-negative number as it is, or text with a unit, for C{form}."""
    value: Any = node.value if isinstance(node, ScalarNode) else None
    if isinstance(value, str):
        try:
            return parse_text(value)
        except ValueError as e:
            raise Invalid(node, str(e)) from None
    if _is_number(value) and value >= 0 and (isinstance(value, int) or not integral):
        return value
    raise wrong(node, form)


def duration(positive: bool = True) -> Parser:
    """Seconds, from C{5s}-style text or a bare number of seconds."""

    def parse(ctx: Context, node: Node) -> float:
        seconds = float(_amount(node, DURATION_FORM, parse_duration, integral=False))
        if positive and seconds == 0:
            raise Invalid(
                node, f"expected a duration greater than 0, got {describe(node)}"
            )
        return seconds

    return parse


def size(minimum: int = 0) -> Parser:
    """Bytes, from a bare integer or C{16KiB}-style text."""

    def parse(ctx: Context, node: Node) -> int:
        count: int = _amount(node, SIZE_FORM, parse_size, integral=True)
        if count < minimum:
            raise Invalid(
                node, f"expected at least {minimum} bytes, got {describe(node)}"
            )
        return count

    return parse


def list_of(
    item: Parser,
    non_empty: bool = False,
    unique: Optional[Callable[[Any], Hashable]] = None,
    what: str = "item",
) -> Parser:
    """
    A list whose items each parse with C{item}; bad items are dropped. With
    C{unique}, two items with the same C{unique(value)} are an error.
    """

    def parse(ctx: Context, node: Node) -> tuple[Any, ...]:
        items = expect_list(node).items
        if non_empty and not items:
            raise Invalid(node, f"expected a list of at least one {what}")
        values = []
        first_seen: dict[Hashable, Node] = {}
        for each in items:
            value = ctx.attempt(item, each)
            if value is MISSING:
                continue
            if unique is not None:
                identity = unique(value)
                if identity in first_seen:
                    ctx.report(
                        each,
                        f"duplicate {what} {identity!r}"
                        f" (first at {position(first_seen[identity])})",
                    )
                    continue
                first_seen[identity] = each
            values.append(value)
        return tuple(values)

    return parse


def reference(kind: str) -> Parser:
    """The name of a C{kind} defined elsewhere (see L{Context.names})."""

    def parse(ctx: Context, node: Node) -> str:
        name = text_of(node, f"a {kind} name")
        known = ctx.names.get(kind, ())
        if name not in known:
            raise Invalid(node, f"no {kind} named {name!r}" + did_you_mean(name, known))
        return name

    return parse


def identity(ctx: Context, node: Node) -> Node:
    """The node itself, for a caller that parses it later."""
    return node


@frozen
class Key:
    """One key a L{Section} allows: its parser, and whether it must be given."""

    parse: Parser
    required: bool = False


class Section:
    """
    A mapping with a fixed set of keys, each with its parser. Parsing gives
    the values given, by key (named as the model's attributes), to build the
    model object from (absent keys keep the model's defaults). Unknown keys
    are reported with a hint; C{upcoming} names keys the spec has that are
    not implemented yet, with the feature they come with.
    """

    def __init__(
        self,
        keys: Mapping[str, Union[Key, Parser]],
        upcoming: Optional[Mapping[str, str]] = None,
    ) -> None:
        self.keys = {
            name: key if isinstance(key, Key) else Key(key)
            for name, key in keys.items()
        }
        self.upcoming = dict(upcoming or {})

    def unknown(self, name: str) -> str:
        """The message for a key this section does not have."""
        if name in self.upcoming:
            return (
                f"unknown key {name!r}: not supported yet"
                f" (coming with {self.upcoming[name]})"
            )
        hint = did_you_mean(name, self.keys)
        if hint:
            return f"unknown key {name!r}{hint}"
        return f"unknown key {name!r}; expected one of: {', '.join(self.keys)}"

    def __call__(self, ctx: Context, node: Node) -> dict[str, Any]:
        mapping = expect_map(node)
        values: dict[str, Any] = {}
        complete = True
        for name, (key_node, value_node) in mapping.entries.items():
            key = self.keys.get(name)
            if key is None:
                ctx.report(key_node, self.unknown(name))
                continue
            if is_null(value_node) and not key.required:
                continue
            value = ctx.attempt(key.parse, value_node)
            if value is MISSING:
                complete = complete and not key.required
            else:
                values[name] = value
        for name, key in self.keys.items():
            if key.required and name not in mapping.entries:
                ctx.report(mapping, f"missing required key {name!r}")
                complete = False
        if not complete:
            raise Invalid()
        return values

    def into(self, build: Callable[..., Any]) -> Parser:
        """A parser building C{build(**values)}, e.g. a model class."""
        return _Built(self, build)


class _Built:
    """
    A L{Section} whose values build an object. A callable object rather
    than a function, so it stays a plain parser when a plugin keeps it as a
    class attribute (C{options = Section(...).into(...)}).
    """

    def __init__(self, section: Section, build: Callable[..., Any]) -> None:
        self.section = section
        self.build = build

    def __call__(self, ctx: Context, node: Node) -> Any:
        return self.build(**self.section(ctx, node))


def pairs(value: Parser, key_check: Optional[Check] = None) -> Parser:
    """
    A mapping of name -> value as a tuple of pairs in file order; a name
    that fails C{key_check} is reported at the name.
    """

    def parse(ctx: Context, node: Node) -> tuple[tuple[str, Any], ...]:
        found = []
        for name, (key_node, value_node) in expect_map(node).entries.items():
            if key_check is not None:
                try:
                    key_check(name)
                except ValueError as e:
                    ctx.report(key_node, str(e))
                    continue
            parsed = ctx.attempt(value, value_node)
            if parsed is not MISSING:
                found.append((name, parsed))
        return tuple(found)

    return parse
