"""
Twisted's stock reverse proxy, as a baseline for bench/run.py.

Usage: python3 stock_twisted_proxy.py LISTEN_PORT UPSTREAM_PORT

Serves twisted.web.proxy.ReverseProxyResource on 127.0.0.1:LISTEN_PORT,
forwarding every path to 127.0.0.1:UPSTREAM_PORT, with the default reactor
(epoll on Linux) and logging off, like every other benchmark target.
"""

import sys
from typing import Any, cast

from twisted.internet import reactor as _reactor
from twisted.web.proxy import ProxyClientFactory, ReverseProxyResource
from twisted.web.server import Site


class QuietSite(Site):
    """A Site that writes no access log."""

    def log(self, request):
        """Drop the access log line."""


def main(argv: list[str]) -> None:
    """Listen on argv[1], proxy to argv[2], run until SIGTERM/SIGINT."""
    listen_port, upstream_port = int(argv[1]), int(argv[2])
    # One "Starting factory" log event per upstream request otherwise.
    ProxyClientFactory.noisy = False
    resource = ReverseProxyResource("127.0.0.1", upstream_port, b"")
    site = QuietSite(resource, logPath=None)
    reactor = cast(Any, _reactor)  # the default reactor: epoll on Linux
    reactor.listenTCP(listen_port, site, interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main(sys.argv)
