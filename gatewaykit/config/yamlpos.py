"""
YAML with positions: a small node tree in which every key and value keeps
the 1-based line and column it was written at.

The file is composed (not constructed) with PyYAML's C{SafeLoader}, so
comments never reach us; C{${VAR}} references are then replaced in scalar
values, and a plain (unquoted, untagged) scalar that contained one is typed
again by the loader's resolver, so C{workers: ${W:-2}} is the integer 2.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Optional, Union

import yaml
from attrs import frozen

Report = Callable[[int, int, str], None]

MERGE_TAG = "tag:yaml.org,2002:merge"


class _Unresolved:
    def __repr__(self) -> str:
        return "UNRESOLVED"


UNRESOLVED: Any = _Unresolved()
"""The value of a scalar that could not be built (its problem is reported)."""


@frozen
class ScalarNode:
    """A scalar: its typed C{value} and its C{text} after substitution."""

    line: int
    col: int
    value: Any
    text: str


@frozen
class ListNode:
    """A sequence."""

    line: int
    col: int
    items: tuple["Node", ...]


@frozen(hash=False)
class MapNode:
    """A mapping: key text -> (key node, value node), in file order."""

    line: int
    col: int
    entries: dict[str, tuple[ScalarNode, "Node"]]

    def node_of(self, key: str) -> "Node":
        """The value node of C{key}, or this mapping when it is absent."""
        entry = self.entries.get(key)
        return self if entry is None else entry[1]


Node = Union[ScalarNode, ListNode, MapNode]


def plain(node: Node) -> Any:
    """The plain Python value of C{node}: dicts, lists and scalars."""
    if isinstance(node, MapNode):
        return {key: plain(value) for key, (_, value) in node.entries.items()}
    if isinstance(node, ListNode):
        return [plain(item) for item in node.items]
    return node.value

_REFERENCE = re.compile(
    r"\$\$\{"  # an escaped, literal "${"
    r"|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}"
    r"|\$\{"  # anything else starting with "${" is malformed
)


def substitute(text: str, environ: Mapping[str, str]) -> str:
    """
    Replace C{${VAR}} and C{${VAR:-default}} in C{text} from C{environ}
    (the default is used when C{VAR} is unset or empty); C{$${} is a literal
    C{${}. Raises C{ValueError} for an unset variable or a malformed
    reference.
    """

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        name, default = match.group("name", "default")
        if name is None:
            raise ValueError(
                "malformed '${' reference: write ${NAME} or ${NAME:-default},"
                " or '$${' for a literal '${'"
            )
        if default is not None:
            if "${" in default:
                raise ValueError(
                    f"the default of ${{{name}}} cannot contain another '${{'"
                )
            return environ.get(name) or default
        if name not in environ:
            raise ValueError(
                f"environment variable {name!r} is not set"
                f" (write ${{{name}:-default}} to give a default)"
            )
        return environ[name]

    return _REFERENCE.sub(replace, text)


class _Loader(yaml.SafeLoader):
    def compose_scalar_node(self, anchor: Optional[str]) -> yaml.ScalarNode:
        event = self.peek_event()
        node = super().compose_scalar_node(anchor)
        # Only a plain scalar without an explicit tag is typed by content.
        node.gk_resolvable = event.tag is None and event.style is None
        return node


def _position(mark: Any) -> tuple[int, int]:
    return (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)


def compose(text: str, environ: Mapping[str, str], report: Report) -> Optional[Node]:
    """
    The node tree of the single YAML document in C{text}, or C{None} when
    the text is empty or not valid YAML; every problem goes to C{report}.
    """
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as e:
        line, col = _position(e.problem_mark or e.context_mark)
        message = e.problem or e.context or "syntax error"
        if e.problem and e.context:
            message = f"{e.context}, {e.problem}"
        report(line, col, f"invalid YAML: {message}")
        return None
    except yaml.YAMLError as e:
        report(1, 1, f"invalid YAML: {e}")
        return None
    if root is None:
        return None
    try:
        return _Converter(loader, environ, report).convert(root)
    finally:
        loader.dispose()


class _Converter:
    """Turns composed PyYAML nodes into position-keeping L{Node}s."""

    def __init__(
        self, loader: _Loader, environ: Mapping[str, str], report: Report
    ) -> None:
        self.loader = loader
        self.environ = environ
        self.report = report
        # Aliases share PyYAML nodes: convert each once, and refuse cycles.
        self.done: dict[int, Node] = {}
        self.active: set[int] = set()

    def convert(self, node: yaml.Node) -> Node:
        key = id(node)
        if key in self.done:
            return self.done[key]
        line, col = _position(node.start_mark)
        if key in self.active:
            self.report(line, col, "an alias cannot refer to its own anchor")
            return ScalarNode(line, col, UNRESOLVED, "")
        self.active.add(key)
        try:
            if isinstance(node, yaml.MappingNode):
                result: Node = self.mapping(node, line, col)
            elif isinstance(node, yaml.SequenceNode):
                items = tuple(self.convert(item) for item in node.value)
                result = ListNode(line, col, items)
            else:
                result = self.scalar(node, line, col)
        finally:
            self.active.discard(key)
        self.done[key] = result
        return result

    def scalar(self, node: yaml.ScalarNode, line: int, col: int) -> ScalarNode:
        text, tag = node.value, node.tag
        if "$" in text:
            try:
                text = substitute(text, self.environ)
            except ValueError as e:
                self.report(line, col, str(e))
                return ScalarNode(line, col, UNRESOLVED, node.value)
            if getattr(node, "gk_resolvable", False):
                tag = self.loader.resolve(yaml.ScalarNode, text, (True, False))
        typed = yaml.ScalarNode(
            tag, text, node.start_mark, node.end_mark, style=node.style
        )
        try:
            value = self.loader.construct_object(typed, deep=True)
        except yaml.MarkedYAMLError as e:
            self.report(line, col, f"invalid value: {e.problem}")
            value = UNRESOLVED
        except ValueError as e:
            kind = tag.rpartition(":")[2]
            self.report(line, col, f"invalid {kind} {text!r}: {e}")
            value = UNRESOLVED
        return ScalarNode(line, col, value, text)

    def mapping(self, node: yaml.MappingNode, line: int, col: int) -> MapNode:
        merged: dict[str, tuple[ScalarNode, Node]] = {}
        own: dict[str, tuple[ScalarNode, Node]] = {}
        for key_node, value_node in node.value:
            key_line, key_col = _position(key_node.start_mark)
            if not isinstance(key_node, yaml.ScalarNode):
                self.report(key_line, key_col, "a key must be a plain string")
                continue
            if key_node.tag == MERGE_TAG:
                self.merge(value_node, merged)
                continue
            name = key_node.value
            if name in own:
                first = own[name][0]
                self.report(
                    key_line,
                    key_col,
                    f"duplicate key {name!r} (first at {first.line}:{first.col})",
                )
                continue
            key = ScalarNode(key_line, key_col, name, name)
            own[name] = (key, self.convert(value_node))
        # As YAML merge keys do: the mapping's own keys override merged ones.
        return MapNode(line, col, {**merged, **own})

    def merge(self, node: yaml.Node, into: dict[str, tuple[ScalarNode, Node]]) -> None:
        sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
        for source in sources:
            converted = self.convert(source)
            if isinstance(converted, MapNode):
                for name, entry in converted.entries.items():
                    into.setdefault(name, entry)
            else:
                self.report(
                    converted.line, converted.col, "'<<' can merge only mappings"
                )
