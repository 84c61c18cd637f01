"""
One worker process of a gateway run with C{--workers N}: it serves the
listening sockets its supervisor (L{gatewaykit.workers.Supervisor}) passed
down, and answers the supervisor's requests on a control channel.

Started by the supervisor as::

    python -m gatewaykit.worker --config PATH --index I \\
        --listen NAME=PORT ... --control-in FD --control-out FD

Each listener's port was reserved by the supervisor (C{:0} resolved); the
worker opens its own listening socket on it with C{SO_REUSEPORT}.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
from typing import Any, Optional

from twisted.internet import defer, stdio
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver
from twisted.protocols.basic import LineOnlyReceiver

from gatewaykit.config import ConfigError, load_config
from gatewaykit.reactor import install_named
from gatewaykit.runtime import tune_garbage_collection

log = Logger()

# A control message larger than this is refused (metrics text of a big
# config stays far below it).
MAX_CONTROL_LINE = 16 * 1024 * 1024


class ControlChannel(LineOnlyReceiver):
    """
    Newline-delimited JSON requests from the supervisor, each answered on
    one line: C{{"id": N, "op": "status" | "metrics" | "reload"}} ->
    C{{"id": N, "result": ...}} or C{{"id": N, "error": "..."}}.
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_CONTROL_LINE

    def __init__(self, worker: Any) -> None:
        self.worker = worker

    def lineReceived(self, line: bytes) -> None:
        try:
            message = json.loads(line)
            ask_id, op = message["id"], message["op"]
        except (ValueError, KeyError, TypeError):
            log.warn("control: unreadable request {line!r}", line=line[:200])
            return
        d = defer.maybeDeferred(self.worker.answer, op)
        d.addCallbacks(
            lambda result: self._reply({"id": ask_id, "result": result}),
            lambda failure: self._reply({"id": ask_id, "error": failure.getErrorMessage()}),
        )

    def _reply(self, message: dict) -> None:
        if self.transport is not None:
            self.sendLine(json.dumps(message).encode("utf-8"))

    def connectionLost(self, reason: Any = None) -> None:
        # The supervisor went away: a worker never outlives it.
        self.worker.stop()


class Worker:
    """The service of one worker process and what it tells its supervisor."""

    def __init__(self, service: Any, index: int, reactor: Any) -> None:
        from gatewaykit.admin.state import LocalState

        self.service = service
        self.index = index
        self.reactor = reactor
        self.state = LocalState(service, worker_id=index)

    def answer(self, op: str) -> Any:
        if op == "status":
            return self.status()
        if op == "metrics":
            return self.metrics()
        if op == "reload":
            return self.service.reload().addCallback(
                lambda result: {
                    "ok": result.ok,
                    "digest": result.digest,
                    "problems": list(result.problems),
                }
            )
        raise ValueError(f"unknown control operation {op!r}")

    def status(self) -> Any:
        return self.state.status()

    def metrics(self) -> Any:
        return self.state.metrics_text().addCallback(lambda text: text.decode("utf-8"))

    def stop(self) -> None:
        """Stop serving (the reactor's shutdown drains the service)."""
        try:
            self.reactor.stop()
        except ReactorNotRunning:
            pass  # already shutting down


def parse_arguments(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gatewaykit.worker")
    parser.add_argument("--config", required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--listen", action="append", default=[], metavar="NAME=PORT")
    parser.add_argument("--control-in", type=int, required=True)
    parser.add_argument("--control-out", type=int, required=True)
    parser.add_argument(
        "--reactor", default=None, help="reactor plugin name (default: gatewaykit's)"
    )
    return parser.parse_args(argv)


def listening_sockets(config: Any, specs: list[str]) -> dict[str, socket.socket]:
    """The worker's own listening sockets: C{["web=8080"]} for C{config}'s listeners."""
    from gatewaykit.service import listening_socket

    sockets = {}
    for spec in specs:
        name, _, port = spec.partition("=")
        sockets[name] = listening_socket(config.listeners[name], reuse_port=True, port=int(port))
    return sockets


def main(argv: Optional[list[str]] = None) -> int:
    """Run one worker until the supervisor stops it."""
    arguments = parse_arguments(argv)
    install_named(arguments.reactor)
    from twisted.internet import reactor as installed

    from gatewaykit.admin.metrics import Metrics
    from gatewaykit.service import GatewayService

    reactor: Any = installed

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)
    try:
        config = load_config(arguments.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    # The supervisor reloads workers through the control channel; a hangup
    # sent to the whole process group must not also end or reload them.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    sockets = listening_sockets(config, arguments.listen)
    service = GatewayService(
        config,
        reactor,
        sockets={name: (s.fileno(), int(s.family)) for name, s in sockets.items()},
        metrics=Metrics(reactor),
        handle_signals=False,
    )
    worker = Worker(service, arguments.index, reactor)
    service.startService()
    # The ports adopted their own duplicates; these must not keep the
    # address open (and taking connections) once the service stops listening.
    for sock in sockets.values():
        sock.close()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    signal.signal(signal.SIGUSR1, lambda *_: reactor.callFromThread(service.reopen_logs))
    stdio.StandardIO(  # type: ignore[call-arg]  # POSIX StandardIO takes the fds
        ControlChannel(worker), stdin=arguments.control_in, stdout=arguments.control_out
    )
    log.info(
        "worker {index} serving (reactor {reactor})",
        index=arguments.index,
        reactor=type(reactor).__qualname__,
    )
    reactor.callWhenRunning(tune_garbage_collection)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
