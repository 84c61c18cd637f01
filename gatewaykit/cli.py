"""
The C{gatewaykit} command: C{gatewaykit check PATH} validates a
configuration without starting anything; C{gatewaykit explain PATH METHOD
URL} shows what the gateway would do with one request, sending nothing.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from gatewaykit import __version__
from gatewaykit.config import ConfigError, load_config


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _print_problems(path: str, error: ConfigError) -> None:
    for problem in error.problems:
        print(problem)
    print(f"{path}: {_count(len(error.problems), 'problem')}", file=sys.stderr)


def check(args: argparse.Namespace) -> int:
    """Print a one-line summary (exit 0) or every problem (exit 1)."""
    try:
        config = load_config(args.path)
    except ConfigError as e:
        _print_problems(args.path, e)
        return 1
    for warning in config.warnings:
        print(f"{warning.source}:{warning.line}:{warning.col}: warning: {warning.message}")
    counts = ", ".join(
        [
            _count(len(config.listeners), "listener"),
            _count(len(config.upstreams), "upstream"),
            _count(len(config.routes), "route"),
        ]
    )
    print(f"{args.path}: OK ({counts})")
    return 0


def explain(args: argparse.Namespace) -> int:
    """Print what the gateway would do with one request; 0 served, 2 refused, 1 invalid."""
    # Imported here: it builds a whole gateway, which 'check' never needs.
    from gatewaykit import explain as explaining

    try:
        config = load_config(args.path)
    except ConfigError as e:
        _print_problems(args.path, e)
        return explaining.EXIT_CONFIG
    try:
        headers = [explaining.parse_header(text) for text in args.headers]
        explanation = explaining.explain(
            config, args.method, args.url, headers, args.client_ip, args.listener
        )
    except explaining.ExplainError as e:
        print(f"gatewaykit explain: {e}", file=sys.stderr)
        return explaining.EXIT_CONFIG
    if args.json:
        print(explaining.render_json(explanation))
    else:
        print(explaining.render_text(explanation))
    return explaining.exit_code(explanation)


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
    explain_parser = commands.add_parser(
        "explain",
        help="show what the gateway would do with one request, sending nothing",
        description="Show which listener and route a request matches, the route's policies"
        " in order and what each decides, and the upstream target the balancer would pick,"
        " or why the request would be refused. Nothing is sent on the network. Exit 0 when"
        " the request would be served (2xx, 3xx or proxied), 2 when the gateway would"
        " refuse it (4xx or 5xx), 1 when the config or the request is invalid.",
    )
    explain_parser.add_argument("path", metavar="PATH", help="the YAML file")
    explain_parser.add_argument("method", metavar="METHOD", help="e.g. GET")
    explain_parser.add_argument(
        "url", metavar="URL", help="an absolute URL, e.g. http://api.example.com:8080/users/1"
    )
    explain_parser.add_argument(
        "-H",
        "--header",
        dest="headers",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a request header field (repeatable); Host replaces the URL's",
    )
    explain_parser.add_argument(
        "--listener",
        metavar="NAME",
        help="the listener the request arrives on (default: by the URL's scheme and port)",
    )
    explain_parser.add_argument(
        "--client-ip",
        default="127.0.0.1",
        metavar="IP",
        help="the address the request comes from (default: 127.0.0.1)",
    )
    explain_parser.add_argument("--json", action="store_true", help="print the explanation as JSON")
    explain_parser.set_defaults(run=explain)
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
