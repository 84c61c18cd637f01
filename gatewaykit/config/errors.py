"""What a configuration that does not load reports."""

from __future__ import annotations

from typing import Iterable

from attrs import frozen


@frozen
class ConfigProblem:
    """One mistake in a configuration file, at a 1-based line and column."""

    source: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}:{self.col}: {self.message}"


class ConfigError(Exception):
    """
    A configuration could not be loaded. C{problems} holds every mistake
    found, sorted by position; C{str()} gives one line per problem.
    """

    def __init__(self, problems: Iterable[ConfigProblem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.line, p.col))
        super().__init__("\n".join(str(p) for p in self.problems))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)
