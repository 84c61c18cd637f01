"""
Routing: path normalisation and the per-listener resource tree.
"""

from gatewaykit.routing.paths import BadPath, normalise_path
from gatewaykit.routing.router import MethodNotAllowed, NoRoute, Router

__all__ = ["BadPath", "MethodNotAllowed", "NoRoute", "Router", "normalise_path"]
