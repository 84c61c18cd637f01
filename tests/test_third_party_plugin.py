"""
A balancer shipped by a third party, found the way a fresh process finds it:
a folder on C{sys.path} holding its module and a C{twisted/plugins/} folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import IPlugin
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gatewaykit.config import ConfigError, parse_config
from gatewaykit.gateway import Gateway
from gatewaykit.http.message import Request
from gatewaykit.interfaces import IBalancerFactory
from gatewaykit.plugins import DuplicatePluginName, balancer_factories
from gatewaykit.testing import install_plugin_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "third_party")
BUILT_IN = ("round_robin", "weighted_round_robin", "least_request", "p2c", "random", "hash")

CONFIG = """\
listeners:
  web: {protocol: http, bind: "127.0.0.1:0"}
upstreams:
  app:
    targets: ["127.0.0.1:9001", "127.0.0.1:9002"]
    balancer: %s
routes:
  - {name: all, upstream: app}
"""


def ship(case: SynchronousTestCase, fixture: str) -> str:
    """Install a copy of the fixture folder C{fixture} for the rest of C{case}."""
    folder = os.path.abspath(case.mktemp())
    shutil.copytree(os.path.join(FIXTURES, fixture), folder)
    install_plugin_folder(case, folder)
    return folder


def run_check(folder: str, balancer: str) -> subprocess.CompletedProcess[str]:
    """Run C{python -m gatewaykit check} on a config naming C{balancer}, with C{folder} installed."""
    path = os.path.join(folder, "conf.yaml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(CONFIG % balancer)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (folder, ROOT, env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "gatewaykit", "check", "conf.yaml"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


class ThirdPartyPluginTests(SynchronousTestCase):
    """A third party's balancer plugin, installed beside the built-ins."""

    def setUp(self) -> None:
        self.folder = ship(self, "acme_lb")

    def test_found(self) -> None:
        """The plugin is found by its name, beside every built-in."""
        self.assertTrue({"acme.first", *BUILT_IN} <= set(balancer_factories()))

    def test_provides_interfaces(self) -> None:
        """The plugin found provides IPlugin and IBalancerFactory."""
        factory = balancer_factories()["acme.first"]
        verifyObject(IBalancerFactory, factory)
        self.assertTrue(IPlugin.providedBy(factory))

    def test_config_names_it(self) -> None:
        """A config naming the plugin's balancer loads."""
        config = parse_config(CONFIG % "acme.first", base_dir=self.folder, environ={})
        self.assertEqual(config.upstreams["app"].balancer, "acme.first")

    def test_gateway_uses_it(self) -> None:
        """The gateway built from that config picks targets with the plugin's balancer."""
        config = parse_config(CONFIG % "acme.first", base_dir=self.folder, environ={})
        upstream = Gateway(config, MemoryReactorClock()).upstreams["app"]
        self.assertIsInstance(upstream.balancer, sys.modules["acme_balancer"].FirstAvailable)
        first, second = upstream.targets
        request = Request("GET", b"/", "/", client_host="192.0.2.1")
        self.assertEqual([upstream.pick(request) for _ in range(3)], [first] * 3)
        first.healthy = False
        self.assertIs(upstream.pick(request), second)

    def test_unknown_name(self) -> None:
        """An unknown name is a config error listing every balancer found."""
        error = self.assertRaises(
            ConfigError, parse_config, CONFIG % "acme.nope", base_dir=self.folder, environ={}
        )
        message = str(error)
        self.assertIn("unknown balancer 'acme.nope'", message)
        for name in ("acme.first", *BUILT_IN):
            self.assertIn(name, message.partition("balancers found:")[2])

    def test_check_command(self) -> None:
        """gatewaykit check, in a process started with the plugin installed, accepts it."""
        result = run_check(self.folder, "acme.first")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("conf.yaml: OK", result.stdout)

    def test_check_command_unknown(self) -> None:
        """gatewaykit check lists the plugins it found when a name is unknown."""
        result = run_check(self.folder, "acme.nope")
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertIn("acme.first", result.stdout)


class DuplicatePluginNameTests(SynchronousTestCase):
    """Two plugins claiming one name."""

    def test_registry_refuses(self) -> None:
        """Two third-party plugins with one name make the registry raise."""
        ship(self, "acme_lb")
        ship(self, "acme_dup")
        self.assertRaises(DuplicatePluginName, balancer_factories)

    def test_config_error(self) -> None:
        """Two plugins with one name make every config a config error."""
        ship(self, "acme_lb")
        ship(self, "acme_dup")
        error = self.assertRaises(
            ConfigError, parse_config, CONFIG % "round_robin", base_dir=".", environ={}
        )
        self.assertIn(
            "cannot choose a balancer: two balancer plugins are named 'acme.first'", str(error)
        )

    def test_built_in_not_replaced(self) -> None:
        """A plugin named like a built-in is an error, not a replacement."""
        ship(self, "acme_shadow")
        error = self.assertRaises(
            ConfigError, parse_config, CONFIG % "round_robin", base_dir=".", environ={}
        )
        self.assertIn("two balancer plugins are named 'round_robin'", str(error))

    def test_gone_after_cleanup(self) -> None:
        """Once the folder is off sys.path again, its plugins are not found."""
        # Cleanups run last first: this one runs after ship's.
        self.addCleanup(lambda: self.assertNotIn("acme.first", balancer_factories()))
        ship(self, "acme_dup")
        self.assertIn("acme.first", balancer_factories())
