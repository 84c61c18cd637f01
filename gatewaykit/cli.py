"""
The C{gatewaykit} command: C{gatewaykit check PATH} validates a
configuration without starting anything.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from gatewaykit import __version__
from gatewaykit.config import ConfigError, load_config


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def check(args: argparse.Namespace) -> int:
    """Print a one-line summary (exit 0) or every problem (exit 1)."""
    try:
        config = load_config(args.path)
    except ConfigError as e:
        for problem in e.problems:
            print(problem)
        print(f"{args.path}: {_count(len(e.problems), 'problem')}", file=sys.stderr)
        return 1
    counts = ", ".join(
        [
            _count(len(config.listeners), "listener"),
            _count(len(config.upstreams), "upstream"),
            _count(len(config.routes), "route"),
        ]
    )
    print(f"{args.path}: OK ({counts})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, one subcommand per tool."""
    parser = argparse.ArgumentParser(
        prog="gatewaykit",
        description="Tools for the gatewaykit reverse proxy and API gateway."
        " Run the gateway itself with 'twistd -n gatewaykit --config PATH'.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    check_parser = commands.add_parser(
        "check",
        help="validate a configuration file",
        description="Validate a configuration file: exit 0 with a summary,"
        " or exit 1 with every problem as PATH:LINE:COL: message.",
    )
    check_parser.add_argument("path", metavar="PATH", help="the YAML file")
    check_parser.set_defaults(run=check)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command in C{argv} (default: C{sys.argv[1:]}); the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    result: int = args.run(args)
    return result
