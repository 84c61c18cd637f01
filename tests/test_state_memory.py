"""
Tests for L{gatewaykit.state.memory}: the in-process store and the
reference rate-limit arithmetic.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gatewaykit.interfaces import IStateStore
from gatewaykit.state.memory import MemoryStore


class RateLimitTests(SynchronousTestCase):
    """The three algorithms through MemoryStore.decide."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_000_000.0)
        self.store = MemoryStore(self.clock)
        self.addCleanup(self.store.close)

    def spend(self, algorithm: str, limit: int = 10, window: float = 60.0, burst: int = 0):
        return [
            self.store.decide("k", limit, window, burst, algorithm)
            for _ in range(limit + burst + 3)
        ]

    def test_provides_interface(self):
        """MemoryStore provides IStateStore."""
        verifyObject(IStateStore, self.store)

    def test_quiet_key_spends_limit_at_once(self):
        """Each algorithm lets a quiet key spend its whole limit, then refuses."""
        for algorithm in ("gcra", "fixed_window", "sliding_window"):
            store = MemoryStore(self.clock)
            decisions = [store.decide(algorithm, 10, 60.0, 0, algorithm) for _ in range(13)]
            allowed = [d.allowed for d in decisions]
            self.assertEqual(allowed, [True] * 10 + [False] * 3, algorithm)

    def test_burst_adds_capacity(self):
        """burst adds to what a quiet key may spend at once."""
        decisions = self.spend("gcra", burst=5)
        self.assertEqual(sum(d.allowed for d in decisions), 15)
        self.assertEqual(decisions[0].limit, 15)

    def test_remaining_counts_down(self):
        """remaining goes down by one per allowed request, to zero, never below."""
        decisions = self.spend("gcra")
        self.assertEqual([d.remaining for d in decisions], list(range(9, -1, -1)) + [0, 0, 0])

    def test_gcra_refills_evenly(self):
        """After the limit is spent, GCRA allows one more every window/limit seconds."""
        self.spend("gcra")
        denied = self.store.decide("k", 10, 60.0, 0, "gcra")
        self.assertFalse(denied.allowed)
        self.assertAlmostEqual(denied.retry_after, 6.0)
        self.clock.advance(6.0)
        self.assertTrue(self.store.decide("k", 10, 60.0, 0, "gcra").allowed)
        self.assertFalse(self.store.decide("k", 10, 60.0, 0, "gcra").allowed)

    def test_gcra_long_run_rate(self):
        """Over a long span GCRA admits limit per window (plus the initial capacity)."""
        admitted = 0
        for _ in range(6000):
            admitted += self.store.decide("k", 10, 60.0, 0, "gcra").allowed
            self.clock.advance(0.1)
        # 600 s at 10 per 60 s, plus the 10 a quiet key may spend at once.
        self.assertIn(admitted, range(109, 112))

    def test_fixed_window_resets_at_boundary(self):
        """A fixed window starts over at the next multiple of the window."""
        self.clock.advance(60 - self.clock.seconds() % 60 + 30)  # mid-window
        decisions = self.spend("fixed_window")
        self.assertAlmostEqual(decisions[-1].retry_after, 30.0)
        self.clock.advance(30.0)
        self.assertTrue(self.store.decide("k", 10, 60.0, 0, "fixed_window").allowed)

    def test_sliding_window_weights_previous(self):
        """Halfway through a window, half the previous window's count still counts."""
        self.clock.advance(60 - self.clock.seconds() % 60)  # start of a window
        self.spend("sliding_window")
        self.clock.advance(90.0)  # half into the next window
        allowed = sum(
            self.store.decide("k", 10, 60.0, 0, "sliding_window").allowed for _ in range(10)
        )
        self.assertEqual(allowed, 5)

    def test_reset_after(self):
        """GCRA's reset_after is the time until the quota is whole again."""
        self.store.decide("k", 10, 60.0, 0, "gcra")
        decision = self.store.decide("k", 10, 60.0, 0, "gcra")
        self.assertAlmostEqual(decision.reset_after, 12.0)

    def test_keys_independent(self):
        """Two keys have their own counts."""
        self.spend("gcra")
        self.assertTrue(self.store.decide("other", 10, 60.0, 0, "gcra").allowed)


class KeyValueTests(SynchronousTestCase):
    """get, set, delete with TTLs."""

    def setUp(self):
        self.clock = Clock()
        self.store = MemoryStore(self.clock)
        self.addCleanup(self.store.close)

    def test_set_get(self):
        """A stored value comes back."""
        self.store.set("a", b"1", 10)
        self.assertEqual(self.successResultOf(self.store.get("a")), b"1")

    def test_expires(self):
        """A value is gone after its TTL."""
        self.store.set("a", b"1", 10)
        self.clock.advance(10)
        self.assertIsNone(self.successResultOf(self.store.get("a")))

    def test_delete(self):
        """delete removes a value."""
        self.store.set("a", b"1", 10)
        self.store.delete("a")
        self.assertIsNone(self.successResultOf(self.store.get("a")))

    def test_sweep(self):
        """Expired entries are swept, and the sweeper stops when nothing is left."""
        self.store.set("a", b"1", 1)
        self.clock.advance(11)
        self.assertEqual(self.store._values, {})
        self.assertEqual(self.clock.getDelayedCalls(), [])
