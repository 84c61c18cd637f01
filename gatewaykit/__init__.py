"""gatewaykit: a reverse proxy, load balancer and API gateway on Twisted."""

__version__ = "0.1.0"
