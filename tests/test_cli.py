"""Tests for the C{gatewaykit} command line (L{gatewaykit.cli})."""

from __future__ import annotations

import io
import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from gatewaykit import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

VALID = """\
listeners:
  web: {protocol: http, bind: "127.0.0.1:0"}
upstreams:
  users: {targets: ["127.0.0.1:9001"]}
routes:
  - {name: api, upstream: users}
  - {name: ping, respond: {body: pong}}
"""

THREE_MISTAKES = """\
gateway:
  trusted_proxies: [10.0.0.0/8, 300.1.2.3/24]
listeners:
  web: {protocol: http, bind: ":0"}
upstreams:
  users:
    targets: ["127.0.0.1:9001"]
    balancr: round_robin
routes:
  - name: api
    upstream: user
"""


class CheckCommandTests(SynchronousTestCase):
    """Tests for C{python -m gatewaykit check}, run as a real process."""

    def write(self, text: str) -> str:
        """A config file holding C{text}; its path."""
        path = os.path.abspath(self.mktemp()) + ".yaml"
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def check(self, path: str) -> subprocess.CompletedProcess[str]:
        """Run C{gatewaykit check PATH} in a child Python."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (ROOT, env.get("PYTHONPATH")) if p
        )
        return subprocess.run(
            [sys.executable, "-m", "gatewaykit", "check", path],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def test_every_problem(self) -> None:
        """An invalid file prints every problem at its line:col and exits 1."""
        path = self.write(THREE_MISTAKES)
        result = self.check(path)
        self.assertEqual(
            (result.returncode, result.stdout.splitlines()),
            (
                1,
                [
                    f"{path}:2:33: expected a CIDR like 10.0.0.0/8 or an IP address,"
                    " got '300.1.2.3/24'",
                    f"{path}:8:5: unknown key 'balancr'; did you mean 'balancer'?",
                    f"{path}:11:15: no upstream named 'user'; did you mean 'users'?",
                ],
            ),
        )

    def test_valid(self) -> None:
        """A valid file prints a one-line summary and exits 0."""
        path = self.write(VALID)
        result = self.check(path)
        self.assertEqual(
            (result.returncode, result.stdout),
            (0, f"{path}: OK (1 listener, 1 upstream, 2 routes)\n"),
        )

    def test_missing_file(self) -> None:
        """A missing file is one clear line, no traceback, exit 1."""
        path = os.path.abspath(self.mktemp())
        result = self.check(path)
        self.assertEqual(
            (result.returncode, result.stdout, "Traceback" in result.stderr),
            (
                1,
                f"{path}:1:1: cannot read the file: No such file or directory\n",
                False,
            ),
        )


class MainTests(SynchronousTestCase):
    """Tests for L{cli.main} called in-process."""

    def setUp(self) -> None:
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()
        self.patch(sys, "stdout", self.stdout)
        self.patch(sys, "stderr", self.stderr)

    def test_no_command(self) -> None:
        """Without a command, main prints the usage and returns 2."""
        self.assertEqual((cli.main([]), "usage:" in self.stderr.getvalue()), (2, True))

    def test_check_counts_problems(self) -> None:
        """check ends with the number of problems on stderr."""
        path = os.path.abspath(self.mktemp())
        with open(path, "w", encoding="utf-8") as f:
            f.write("gateway: {workers: 0, node: 'a b'}\n")
        self.assertEqual(
            (cli.main(["check", path]), self.stderr.getvalue()),
            (1, f"{path}: 2 problems\n"),
        )
