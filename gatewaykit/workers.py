"""
Running the gateway as several worker processes (C{gateway.workers} or
C{--workers N|auto}).

The supervisor reserves every listener's address (bound, not listening: it
takes no connections, and C{:0} gets its port) and starts N worker
processes (L{gatewaykit.worker}); each opens its own listening socket on
that address with C{SO_REUSEPORT}, so the kernel spreads new connections
evenly over the workers (as nginx's C{reuseport}). It restarts a
worker that dies, turns C{SIGHUP} into a reload of every worker (or, when
the listeners changed, a rolling replacement of the workers), passes
C{SIGTERM} on and waits for the workers to drain, and gathers the workers'
state for the admin API.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from typing import Any, Callable, Optional

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger

from gatewaykit.config import ConfigError, load_config
from gatewaykit.config.model import Config
from gatewaykit.reactor import name_of
from gatewaykit.service import ReloadResult, bound_socket, listener_key

log = Logger()

# The child's file descriptors of the control channel, in and out.
CONTROL_IN, CONTROL_OUT = 3, 4
# Restart delays for a worker that keeps dying soon after starting.
RESTART_DELAYS = (0.1, 1.0, 2.0, 5.0, 10.0, 30.0)
# A worker that ran this long before dying restarts at once.
STABLE_SECONDS = 10.0
# How long a control request may take before it counts as unanswered.
CONTROL_TIMEOUT = 5.0


def worker_count(workers: Any) -> int:
    """C{gateway.workers} or C{--workers} as a number (C{auto}: one per CPU)."""
    if workers == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1
        )
    return int(workers)


class WorkerProcess(ProcessProtocol):
    """One worker as the supervisor sees it: its process and control channel."""

    def __init__(self, supervisor: Supervisor, index: int, generation: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.generation = generation
        self.started_at = 0.0
        self.pid: Optional[int] = None
        self.ended: defer.Deferred[None] = defer.Deferred()
        self._buffer = b""
        self._asks: dict[int, defer.Deferred[Any]] = {}
        self._next_id = 0

    def connectionMade(self) -> None:
        self.pid = self.transport.pid  # type: ignore[union-attr]

    def ask(self, op: str) -> defer.Deferred[Any]:
        """Send a control request; fires with the worker's result."""
        self._next_id += 1
        ask_id = self._next_id
        d: defer.Deferred[Any] = defer.Deferred()
        self._asks[ask_id] = d
        line = json.dumps({"id": ask_id, "op": op}).encode("utf-8") + b"\n"
        self.transport.writeToChild(CONTROL_IN, line)  # type: ignore[union-attr]
        d.addTimeout(CONTROL_TIMEOUT, self.supervisor.reactor)
        d.addBoth(self._forget, ask_id)
        return d

    def _forget(self, result: Any, ask_id: int) -> Any:
        self._asks.pop(ask_id, None)
        return result

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD != CONTROL_OUT:
            return
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            try:
                message = json.loads(line)
            except ValueError:
                log.warn("worker {index}: unreadable control reply", index=self.index)
                continue
            d = self._asks.get(message.get("id"))
            if d is None or d.called:
                continue
            if "error" in message:
                d.errback(RuntimeError(message["error"]))
            else:
                d.callback(message.get("result"))

    def processEnded(self, reason: Any) -> None:
        for d in list(self._asks.values()):
            if not d.called:
                d.errback(RuntimeError(f"worker {self.index} ended"))
        self.ended.callback(None)
        self.supervisor.worker_ended(self, reason)

    def signal(self, name: str) -> None:
        """Send a signal to the worker, if it still runs."""
        try:
            self.transport.signalProcess(name)  # type: ignore[union-attr]
        except Exception:
            pass


class Supervisor(Service):
    """
    Keeps C{count} workers serving C{config}'s listeners.

    @ivar sockets: the reserved (bound, not listening) sockets by listener name.
    @ivar workers: the running workers, by index.
    @ivar reloads: how many reloads succeeded and failed (for metrics).
    """

    def __init__(self, config: Config, count: int, reactor: Any) -> None:
        self.config = config
        self.count = count
        self.reactor = reactor
        self.sockets: dict[str, socket.socket] = {}
        self.workers: dict[int, WorkerProcess] = {}
        self.reloads = {"ok": 0, "failed": 0}
        self.started_at = 0.0
        # Called with the new Config after each successful reload.
        self.on_reloaded: list[Callable[[Config], Any]] = []
        self._generation = 0
        self._stopping = False
        self._failures: dict[int, int] = {}

    # -- starting -------------------------------------------------------------

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._bind_all()

    def startService(self) -> None:
        super().startService()
        self._bind_all()
        self.started_at = self.reactor.seconds()
        if self.config.gateway.redis is None:
            log.warn(
                "{count} workers without gateway.redis: rate limits, sessions and"
                " sticky sessions are kept per worker, not shared",
                count=self.count,
            )
        for index in range(self.count):
            self._spawn(index)
        call = self.reactor.callFromThread
        signal.signal(signal.SIGHUP, lambda *_: call(self.reload))
        signal.signal(signal.SIGUSR1, lambda *_: call(self._signal_all, "USR1"))

    def _bind_all(self) -> None:
        if self.sockets:
            return
        try:
            self.sockets = self._bind(self.config)
        except OSError as exc:
            raise SystemExit(f"gatewaykit: cannot bind a listener: {exc}") from None

    def _bind(self, config: Config) -> dict[str, socket.socket]:
        sockets: dict[str, socket.socket] = {}
        try:
            for listener in config.listeners.values():
                reused = self.sockets.get(listener.name)
                old = self.config.listeners.get(listener.name)
                unchanged = old is not None and listener_key(old) == listener_key(listener)
                if reused is not None and unchanged:
                    sockets[listener.name] = reused
                    continue
                sock = bound_socket(listener, reuse_port=True)
                sockets[listener.name] = sock
                host, port = sock.getsockname()[:2]
                log.info(
                    "gatewaykit listener {name} ({protocol}) on {host}:{port}",
                    name=listener.name,
                    protocol=listener.protocol,
                    host=host,
                    port=port,
                )
        except OSError:
            for name, sock in sockets.items():
                if sock is not self.sockets.get(name):
                    sock.close()
            raise
        return sockets

    def _spawn(self, index: int) -> None:
        self._generation += 1
        worker = WorkerProcess(self, index, self._generation)
        child_fds: dict[int, Any] = {0: "w", 1: 1, 2: 2, CONTROL_IN: "w", CONTROL_OUT: "r"}
        args = [
            sys.executable,
            "-m",
            "gatewaykit.worker",
            "--config",
            os.path.abspath(self.config.source),
            "--index",
            str(index),
            "--control-in",
            str(CONTROL_IN),
            "--control-out",
            str(CONTROL_OUT),
        ]
        for name, sock in sorted(self.sockets.items()):
            args += ["--listen", f"{name}={sock.getsockname()[1]}"]
        reactor_name = name_of(self.reactor)
        if reactor_name is not None:
            args += ["--reactor", reactor_name]  # the one twistd was told to use
        worker.started_at = self.reactor.seconds()
        self.reactor.spawnProcess(
            worker, sys.executable, args, env=dict(os.environ), childFDs=child_fds
        )
        self.workers[index] = worker
        log.info("started worker {index} (pid {pid})", index=index, pid=worker.pid)

    # -- workers dying ----------------------------------------------------------

    def worker_ended(self, worker: WorkerProcess, reason: Any) -> None:
        """Restart a worker that died, unless it was asked to stop."""
        if self.workers.get(worker.index) is not worker:
            return  # replaced already (rolling restart)
        del self.workers[worker.index]
        if self._stopping:
            return
        ran = self.reactor.seconds() - worker.started_at
        failures = 0 if ran >= STABLE_SECONDS else self._failures.get(worker.index, 0) + 1
        self._failures[worker.index] = failures
        delay = RESTART_DELAYS[min(failures, len(RESTART_DELAYS) - 1)] if failures else 0.0
        log.warn(
            "worker {index} (pid {pid}) ended ({reason}); restarting in {delay:g}s",
            index=worker.index,
            pid=worker.pid,
            reason=reason.getErrorMessage(),
            delay=delay,
        )
        self.reactor.callLater(delay, self._respawn, worker.index)

    def _respawn(self, index: int) -> None:
        if not self._stopping and index not in self.workers:
            self._spawn(index)

    def _signal_all(self, name: str) -> None:
        for worker in list(self.workers.values()):
            worker.signal(name)

    # -- reload -------------------------------------------------------------------

    def reload(self) -> defer.Deferred[ReloadResult]:
        """
        Check the config file; if valid, reload every worker in place, or
        replace them one by one when the listeners changed.
        """
        try:
            config = load_config(self.config.source)
        except ConfigError as exc:
            problems = tuple(str(problem) for problem in exc.problems)
            self.reloads["failed"] += 1
            log.error("configuration not reloaded:\n{problems}", problems="\n".join(problems))
            return defer.succeed(ReloadResult(False, problems=problems))
        if self._listeners_changed(config):
            return self._replace_workers(config)
        return self._reload_workers(config)

    def _listeners_changed(self, config: Config) -> bool:
        old, new = self.config.listeners, config.listeners
        return set(old) != set(new) or any(
            listener_key(old[name]) != listener_key(new[name]) for name in new
        )

    @defer.inlineCallbacks
    def _reload_workers(self, config: Config) -> Any:
        results = yield defer.DeferredList(
            [worker.ask("reload") for worker in self.workers.values()], consumeErrors=True
        )
        problems = []
        for succeeded, result in results:
            if not succeeded:
                problems.append(f"a worker did not answer: {result.getErrorMessage()}")
            elif not result["ok"]:
                problems.extend(result["problems"])
        self.config = config
        if problems:
            self.reloads["failed"] += 1
            return ReloadResult(False, problems=tuple(dict.fromkeys(problems)))
        self.reloads["ok"] += 1
        log.info("configuration reloaded by {count} workers", count=len(self.workers))
        self._reloaded(config)
        return ReloadResult(True, config.digest)

    @defer.inlineCallbacks
    def _replace_workers(self, config: Config) -> Any:
        """New sockets, then each worker replaced by one that serves them."""
        try:
            sockets = self._bind(config)
        except OSError as exc:
            self.reloads["failed"] += 1
            return ReloadResult(False, problems=(f"{config.source}: {exc}",))
        old_sockets, self.sockets = self.sockets, sockets
        self.config = config
        for index, worker in sorted(self.workers.items()):
            self._spawn(index)  # the new worker takes the index first
            worker.signal("TERM")  # the old one drains and ends
            yield worker.ended
        for name, sock in old_sockets.items():
            if sockets.get(name) is not sock:
                sock.close()
        self.reloads["ok"] += 1
        log.info("configuration reloaded: workers replaced for the new listeners")
        self._reloaded(config)
        return ReloadResult(True, config.digest)

    def _reloaded(self, config: Config) -> None:
        for hook in self.on_reloaded:
            hook(config)

    # -- gathering state -------------------------------------------------------

    def ask_all(self, op: str) -> defer.Deferred[list[Any]]:
        """Every running worker's answer to C{op} (failures left out)."""
        d = defer.DeferredList(
            [worker.ask(op) for worker in self.workers.values()], consumeErrors=True
        )
        return d.addCallback(lambda results: [r for ok, r in results if ok])

    # -- stopping -----------------------------------------------------------------

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        """Pass SIGTERM on and wait for every worker to drain and end."""
        super().stopService()
        self._stopping = True
        workers = list(self.workers.values())
        for worker in workers:
            worker.signal("TERM")
        grace = self.config.gateway.drain_timeout + 5.0
        waiting = defer.DeferredList([worker.ended for worker in workers])
        waiting.addTimeout(grace, self.reactor)
        try:
            yield waiting
        except defer.TimeoutError:
            for worker in workers:
                worker.signal("KILL")
        for sock in self.sockets.values():
            sock.close()
        if getattr(self.reactor, "_exitSignal", None) is not None:
            self.reactor._exitSignal = None
