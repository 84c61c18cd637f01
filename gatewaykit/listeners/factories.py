"""
The protocol factory for each kind of listener.
"""

from __future__ import annotations

from typing import Any

from gatewaykit.config.model import ListenerConfig


def listener_factory(listener: ListenerConfig, gateway: Any, reactor: Any) -> Any:
    """
    The factory serving C{listener} (to listen with C{listenTCP}): it has
    C{gateway} (replaceable), C{listener} and C{connections} (each with
    C{drain()}); the https and tls_passthrough ones also C{reconfigure(listener)}
    for a reload that changed their TLS or SNI settings.
    """
    protocol = listener.protocol
    if protocol == "tcp":
        from gatewaykit.tunnel.tcp import TCPProxyFactory

        return TCPProxyFactory(listener, gateway, reactor)
    if protocol == "tls_passthrough":
        from gatewaykit.tunnel.passthrough import PassthroughFactory

        return PassthroughFactory(listener, gateway, reactor)
    if protocol == "https":
        from gatewaykit.listeners.h2 import h2_protocol
        from gatewaykit.listeners.tls import HTTPSServerFactory, register_h2_protocol_factory

        # HTTP/2 is offered (ALPN h2) by every https listener gatewaykit builds.
        register_h2_protocol_factory(h2_protocol)
        return HTTPSServerFactory(listener, gateway, reactor)
    from gatewaykit.listeners.http import HTTP11ServerFactory

    return HTTP11ServerFactory(listener, gateway, reactor)
