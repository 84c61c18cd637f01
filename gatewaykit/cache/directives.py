"""
Parsing the fields that steer a cache: C{Cache-Control} (RFC 9111 5.2),
C{Pragma} (5.4), C{Vary} (RFC 9110 12.5.5) and delta-seconds.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Iterable, Mapping, Optional

Directives = Mapping[str, Optional[str]]
"""Directive name (lower case) to its argument (C{None} without one); shared, never changed."""

# One directive: a token, then optionally "=" and a token or a quoted string.
_DIRECTIVE = re.compile(rb'([^=,\s]+)[ \t]*(?:=[ \t]*("(?:[^"\\]|\\.)*"|[^,]*))?')
_QUOTED_PAIR = re.compile(rb"\\(.)")

# RFC 9111 1.2.2: a delta-seconds too large to represent is 2^31.
MAX_DELTA = 2**31


# Distinct single Cache-Control values remembered: an upstream sends few.
REMEMBERED_VALUES = 1024


def parse_cache_control(values: list[bytes]) -> Directives:
    """
    The directives of the C{Cache-Control} field values C{values}. When a
    directive is repeated the first one counts (RFC 9111 4.2.1).
    """
    if len(values) == 1:
        return _parse_one(values[0])
    return _parse(values)


@lru_cache(maxsize=REMEMBERED_VALUES)
def _parse_one(value: bytes) -> Directives:
    return _parse((value,))


def _parse(values: Iterable[bytes]) -> Directives:
    directives: dict[str, Optional[str]] = {}
    for value in values:
        for match in _DIRECTIVE.finditer(value):
            name = match.group(1).lower().decode("latin-1")
            if name in directives:
                continue
            argument = match.group(2)
            if argument is None:
                directives[name] = None
                continue
            argument = argument.strip()
            if argument.startswith(b'"'):
                argument = _QUOTED_PAIR.sub(rb"\1", argument[1:-1])
            directives[name] = argument.decode("latin-1")
    return directives


def delta_seconds(directives: Directives, name: str) -> Optional[int]:
    """
    The delta-seconds argument of directive C{name}, or C{None} when it is
    absent or invalid (an invalid one is ignored, as if absent).
    """
    argument = directives.get(name)
    if argument is None or not argument.isdigit():
        return None
    return min(int(argument), MAX_DELTA)


def pragma_no_cache(values: Iterable[bytes]) -> bool:
    """Whether C{Pragma} field values hold C{no-cache}."""
    return any(
        token.strip().lower() == b"no-cache" for value in values for token in value.split(b",")
    )


def parse_vary(values: Iterable[bytes]) -> tuple[bytes, ...]:
    """
    The lower-case field names listed in C{Vary} field values, each once,
    in order (C{*} included as is).
    """
    names: list[bytes] = []
    for value in values:
        for name in value.split(b","):
            name = name.strip().lower()
            if name and name not in names:
                names.append(name)
    return tuple(names)
