"""
The C{twistd gatewaykit} plugin: options and the service tree.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.python import usage

from gatewaykit import __version__


class Options(usage.Options):
    """C{twistd gatewaykit} options."""

    synopsis = "[--config PATH | --demo]"
    longdesc = "Run the gatewaykit reverse proxy, load balancer and API gateway."
    optParameters = [
        ["config", "c", None, "Path to the YAML configuration file."],
        [
            "workers",
            "w",
            None,
            "Worker processes sharing the listening sockets: a number, or 'auto' "
            "(one per CPU). Overrides gateway.workers.",
        ],
    ]
    optFlags = [
        ["demo", None, "Run the bundled demo (conf/demo.yaml and two demo upstreams)."],
    ]

    def opt_version(self) -> None:
        """Print gatewaykit's version and exit."""
        print(f"gatewaykit {__version__}")
        sys.exit(0)

    def postOptions(self) -> None:
        if not self["config"] and not self["demo"]:
            raise usage.UsageError("give --config PATH (or --demo)")
        # twistd installs its default reactor only after the options are
        # parsed (and has installed the one --reactor names already).
        from gatewaykit.reactor import install_if_none

        install_if_none()
        workers = self["workers"]
        if workers is not None and workers != "auto":
            if not workers.isdigit() or int(workers) < 1:
                raise usage.UsageError("--workers takes a number >= 1 or 'auto'")


def makeService(options: Options) -> IService:
    """Load and validate the config, then build the service tree."""
    from twisted.internet import reactor

    from gatewaykit.admin.metrics import Metrics
    from gatewaykit.admin.server import AdminService
    from gatewaykit.admin.state import LocalState, SupervisorState
    from gatewaykit.config import ConfigError, load_config
    from gatewaykit.demo import demo_config_path, demo_upstreams
    from gatewaykit.runtime import tune_garbage_collection
    from gatewaykit.service import GatewayService
    from gatewaykit.workers import Supervisor, worker_count

    path = options["config"] or demo_config_path()
    try:
        config = load_config(path)
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None
    top = MultiService()
    if options["demo"]:
        demo_upstreams().setServiceParent(top)
    count = worker_count(options["workers"] or config.gateway.workers)
    gateway: Any
    if count > 1:
        gateway = Supervisor(config, count, reactor)
        state: Any = SupervisorState(gateway)
    else:
        metrics = Metrics(reactor)
        gateway = GatewayService(config, reactor, metrics=metrics)
        state = LocalState(gateway, metrics)
    gateway.setServiceParent(top)
    if config.gateway.admin is not None:
        admin = AdminService(state, config.gateway.admin, reactor)
        admin.setServiceParent(top)  # after the gateway: it reports on it

        def reconfigure(new: Any) -> None:
            # Switching the admin API on or off takes a restart.
            if new.gateway.admin is not None:
                admin.reconfigure(new.gateway.admin)

        gateway.on_reloaded.append(reconfigure)
    # (twistd starts the services before the reactor runs.)
    reactor.callWhenRunning(tune_garbage_collection)
    return top
