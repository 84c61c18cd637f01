"""
Tests for L{gatewaykit.timer.TimerPool} and L{gatewaykit.timer.SPENT}.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gatewaykit.timer import SPENT, TimerPool


class TimerPoolTests(SynchronousTestCase):
    """Timers handed back and taken again."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.pool = TimerPool(self.clock, size=2)
        self.fired: list[str] = []

    def callback(self, name: str):  # type: ignore[no-untyped-def]
        return lambda: self.fired.append(name)

    def test_reused_without_new_call(self) -> None:
        """A timer taken again keeps its pending call: arming it later schedules nothing."""
        first = self.pool.take(self.callback("first"))
        first.set(60)
        self.pool.give_back(first)
        second = self.pool.take(self.callback("second"))
        self.assertIs(second, first)
        self.clock.advance(1)
        second.set(60)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(60)
        self.assertEqual(self.fired, ["second"])

    def test_given_back_never_fires(self) -> None:
        """A timer handed back while armed does not call its old owner."""
        timer = self.pool.take(self.callback("old"))
        timer.set(5)
        self.pool.give_back(timer)
        self.clock.advance(10)
        self.assertEqual(self.fired, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_earlier_deadline(self) -> None:
        """A new owner's earlier deadline is kept."""
        timer = self.pool.take(self.callback("old"))
        timer.set(60)
        self.pool.give_back(timer)
        timer = self.pool.take(self.callback("new"))
        timer.set(2)
        self.clock.advance(2)
        self.assertEqual(self.fired, ["new"])

    def test_bounded(self) -> None:
        """Beyond C{size} idle timers, one handed back is cancelled."""
        timers = [self.pool.take(self.callback(str(n))) for n in range(3)]
        for timer in timers:
            timer.set(10)
            self.pool.give_back(timer)
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)

    def test_close(self) -> None:
        """Closing cancels the idle timers' calls, and those handed back later."""
        idle = self.pool.take(self.callback("idle"))
        busy = self.pool.take(self.callback("busy"))
        idle.set(10)
        busy.set(10)
        self.pool.give_back(idle)
        self.pool.close()
        self.pool.give_back(busy)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_spent(self) -> None:
        """SPENT ignores being set, and handing it back is harmless."""
        SPENT.set(1)
        self.assertFalse(SPENT.armed)
        self.pool.give_back(SPENT)
        self.assertIsNot(self.pool.take(self.callback("x")), SPENT)
