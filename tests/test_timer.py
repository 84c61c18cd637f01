"""
Tests for L{gatewaykit.timer}.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gatewaykit.timer import Timer


class TimerTests(SynchronousTestCase):
    """The re-armable timeout."""

    def setUp(self):
        self.clock = Clock()
        self.fired = []
        self.timer = Timer(self.clock, lambda: self.fired.append(self.clock.seconds()))

    def test_fires_at_deadline(self):
        """The callback runs once the deadline passes."""
        self.timer.set(5)
        self.clock.advance(4.9)
        self.assertEqual(self.fired, [])
        self.clock.advance(0.1)
        self.assertEqual(self.fired, [5])

    def test_later_deadline_reuses_call(self):
        """Moving the deadline later keeps one pending call and fires at the new deadline."""
        self.timer.set(5)
        self.clock.advance(3)
        self.timer.set(5)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(2)
        self.assertEqual(self.fired, [])
        self.clock.advance(3)
        self.assertEqual(self.fired, [8])

    def test_earlier_deadline(self):
        """Moving the deadline earlier fires at the earlier time."""
        self.timer.set(10)
        self.timer.set(2)
        self.clock.advance(2)
        self.assertEqual(self.fired, [2])

    def test_earlier_deadline_one_call(self):
        """Moving the deadline earlier leaves one pending call, not the old one too."""
        self.timer.set(10)
        self.timer.set(2)
        self.assertEqual([call.getTime() for call in self.clock.getDelayedCalls()], [2])

    def test_earlier_deadline_never_resets(self):
        """Moving the deadline earlier never uses DelayedCall.reset (a linear heap search)."""
        self.timer.set(10)
        call = self.clock.getDelayedCalls()[0]

        def reset(seconds: float) -> None:
            raise AssertionError("reset used")

        call.reset = reset  # type: ignore[method-assign]
        self.timer.set(2)
        self.clock.advance(2)
        self.assertEqual(self.fired, [2])

    def test_clear(self):
        """A cleared timer does not fire."""
        self.timer.set(1)
        self.timer.clear()
        self.clock.advance(2)
        self.assertEqual(self.fired, [])
        self.assertFalse(self.timer.armed)

    def test_cancel_drops_call(self):
        """Cancelling leaves no pending call behind."""
        self.timer.set(1)
        self.timer.cancel()
        self.assertEqual(self.clock.getDelayedCalls(), [])
