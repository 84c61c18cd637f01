"""
The C{twistd gatewaykit} plugin: options and the service tree.
"""

from __future__ import annotations

import sys

from twisted.application.service import IService, MultiService
from twisted.python import usage

from gatewaykit import __version__


class Options(usage.Options):
    """C{twistd gatewaykit} options."""

    synopsis = "[--config PATH | --demo]"
    longdesc = "Run the gatewaykit reverse proxy, load balancer and API gateway."
    optParameters = [
        ["config", "c", None, "Path to the YAML configuration file."],
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


def makeService(options: Options) -> IService:
    """Load and validate the config, then build the service tree."""
    from twisted.internet import reactor

    from gatewaykit.config import ConfigError, load_config
    from gatewaykit.demo import demo_config_path, demo_upstreams
    from gatewaykit.service import GatewayService

    path = options["config"] or demo_config_path()
    try:
        config = load_config(path)
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None
    top = MultiService()
    if options["demo"]:
        demo_upstreams().setServiceParent(top)
    GatewayService(config, reactor).setServiceParent(top)
    return top
