"""
The bundled demo: small in-process upstreams for C{twistd gatewaykit --demo},
so a newcomer can curl something real with nothing else installed.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from twisted.application.internet import TCPServer
from twisted.application.service import MultiService
from twisted.web.resource import Resource
from twisted.web.server import Site

# The demo upstreams' addresses; conf/demo.yaml names the same ones.
DEMO_UPSTREAMS = (("demo-a", 9101), ("demo-b", 9102))


def demo_config_path() -> str:
    """Where C{conf/demo.yaml} is: installed as C{gatewaykit.conf}, or in a checkout."""
    try:
        return str(resources.files("gatewaykit.conf").joinpath("demo.yaml"))
    except ModuleNotFoundError:
        # Running from a source checkout: conf/ sits beside the package.
        return str(Path(__file__).resolve().parent.parent / "conf" / "demo.yaml")


class DemoApp(Resource):
    """
    Answers every path with a JSON description of the request it got, so the
    balancing and the forwarded headers are visible. C{/healthz} answers
    C{ok}; C{?bytes=N} answers N bytes instead.
    """

    isLeaf = True

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def render(self, request: Any) -> bytes:
        if request.path == b"/healthz":
            request.setHeader(b"content-type", b"text/plain")
            return b"ok\n"
        size = request.args.get(b"bytes")
        if size:
            request.setHeader(b"content-type", b"application/octet-stream")
            return b"x" * min(int(size[0]), 64 * 1024 * 1024)
        body = request.content.read()
        answer = {
            "upstream": self.name,
            "method": request.method.decode("latin-1"),
            "uri": request.uri.decode("latin-1"),
            "headers": {
                name.decode("latin-1"): ", ".join(v.decode("latin-1") for v in values)
                for name, values in request.requestHeaders.getAllRawHeaders()
            },
            "body_bytes": len(body),
        }
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(answer, indent=2).encode("utf-8") + b"\n"


class _QuietSite(Site):
    def log(self, request: Any) -> None:
        pass


def demo_upstreams(host: str = "127.0.0.1") -> MultiService:
    """A service running every demo upstream."""
    services = MultiService()
    for name, port in DEMO_UPSTREAMS:
        TCPServer(port, _QuietSite(DemoApp(name)), interface=host).setServiceParent(services)
    return services
