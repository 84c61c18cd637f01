"""
Durations and sizes as written in the configuration.

Both parsers take the text of one YAML scalar and raise C{ValueError} with a
message naming the expected form.
"""

from __future__ import annotations

import re
from decimal import Decimal

DURATION_FORM = "a duration like 250ms, 5s, 2m, 1h or 1m30s"
SIZE_FORM = "a size like 512, 16KiB, 10MiB or 1GiB"

_NUMBER = r"\d+(?:\.\d+)?"
_DURATION_PART = re.compile(rf"({_NUMBER})(ms|s|m|h)")
_DURATION = re.compile(rf"(?:{_NUMBER}(?:ms|s|m|h))+")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

_SIZE = re.compile(rf"({_NUMBER}) ?([KMGT]i?B|B)?", re.IGNORECASE)
_BYTES = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def parse_duration(text: str) -> float:
    """
    Seconds in C{text}: C{"250ms"}, C{"5s"}, C{"2m"}, C{"1h"}, a sum such as
    C{"1m30s"}, or a bare number of seconds.
    """
    text = text.strip()
    if re.fullmatch(_NUMBER, text):
        return float(text)
    if not _DURATION.fullmatch(text):
        raise ValueError(f"expected {DURATION_FORM}, got {text!r}")
    return sum(
        float(number) * _SECONDS[unit] for number, unit in _DURATION_PART.findall(text)
    )


def parse_size(text: str) -> int:
    """
    Bytes in C{text}: a bare number, or a number with C{B}, C{KiB}/C{MiB}/
    C{GiB}/C{TiB} (powers of 1024) or C{KB}/C{MB}/C{GB}/C{TB} (powers of
    1000), in any letter case.
    """
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"expected {SIZE_FORM}, got {text!r}")
    number, unit = match.groups()
    value = Decimal(number) * _BYTES[(unit or "b").lower()]
    if value != value.to_integral_value():
        raise ValueError(f"expected a whole number of bytes, got {text!r}")
    return int(value)
