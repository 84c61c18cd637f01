"""
Finding balancers and policies through Twisted's plugin system.

Built-in and third-party plugins are found the same way, so that a config
name always means one thing: two plugins with the same name are an error.
"""

from __future__ import annotations

import importlib
from typing import Any, Sequence

from twisted.logger import Logger
from twisted.plugin import IPlugin, getPlugins
from zope.interface import implementer

from gatewaykit.interfaces import (
    IBalancer,
    IBalancerFactory,
    IPolicy,
    IPolicyFactory,
    ITarget,
)

log = Logger()


class DuplicatePluginName(Exception):
    """Two plugins claim the same config name."""


def _load(path: str) -> Any:
    module_name, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


@implementer(IPlugin, IBalancerFactory)
class LazyBalancerFactory:
    """
    A balancer factory named in C{twisted/plugins} that imports its
    implementation (C{"package.module:Class"}) only when first used, so
    plugin discovery stays cheap.
    """

    def __init__(self, name: str, path: str) -> None:
        self.name = name
        self.path = path

    def build(self, upstream: Any, targets: Sequence[ITarget]) -> IBalancer:
        return _load(self.path)(upstream, targets)

    def __repr__(self) -> str:
        return f"<balancer plugin {self.name} from {self.path}>"


@implementer(IPlugin, IPolicyFactory)
class LazyPolicyFactory:
    """
    A policy type named in C{twisted/plugins} whose factory
    (C{"package.module:Class"}, built with no arguments) is imported only
    when first used.
    """

    def __init__(self, name: str, path: str) -> None:
        self.name = name
        self.path = path
        self._loaded: Any = None

    def _factory(self) -> Any:
        if self._loaded is None:
            self._loaded = _load(self.path)()
        return self._loaded

    @property
    def options(self) -> Any:
        return self._factory().options

    def build(self, name: str, options: Any, context: Any) -> IPolicy:
        return self._factory().build(name, options, context)

    def __repr__(self) -> str:
        return f"<policy plugin {self.name} from {self.path}>"


def _by_name(interface: Any, kind: str) -> dict[str, Any]:
    import twisted.plugins

    found: dict[str, Any] = {}
    for plugin in getPlugins(interface, twisted.plugins):
        name = getattr(plugin, "name", None)
        if not isinstance(name, str):
            log.warn("ignoring {kind} plugin {plugin!r} without a name", kind=kind, plugin=plugin)
            continue
        if name in found:
            raise DuplicatePluginName(
                f"two {kind} plugins are named {name!r}: {found[name]!r} and {plugin!r}"
            )
        found[name] = plugin
    return found


def balancer_factories() -> dict[str, IBalancerFactory]:
    """Every balancer factory plugin by name; raises L{DuplicatePluginName}."""
    return _by_name(IBalancerFactory, "balancer")


def policy_factories() -> dict[str, IPolicyFactory]:
    """Every policy factory plugin by type name; raises L{DuplicatePluginName}."""
    return _by_name(IPolicyFactory, "policy")
