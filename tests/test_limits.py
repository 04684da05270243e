"""Pure unit tests of TokenBucket and FloodGuard (a fake clock, plus a few short real sleeps)."""

from __future__ import annotations

import time
import types

import pytest

from unichatd import limits
from unichatd.limits import FloodGuard, TokenBucket


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Replace the clock the limits module reads (only there)."""
    fake = Clock()
    monkeypatch.setattr(limits, "time", types.SimpleNamespace(monotonic=fake.monotonic))
    return fake


# ---------------------------------------------------------------------------
# TokenBucket


def test_bucket_grants_the_burst_at_once(clock: Clock) -> None:
    """A fresh bucket grants exactly `burst` takes in a row."""
    bucket = TokenBucket(rate=1, burst=5)
    assert [bucket.take() for _ in range(5)] == [0] * 5


def test_bucket_refuses_after_the_burst(clock: Clock) -> None:
    """The take after the burst is refused with a positive wait."""
    bucket = TokenBucket(rate=1, burst=3)
    for _ in range(3):
        bucket.take()
    assert bucket.take() > 0


def test_retry_after_is_time_to_next_token(clock: Clock) -> None:
    """An empty bucket at 2 tokens/s asks to wait 500 ms."""
    bucket = TokenBucket(rate=2, burst=1)
    bucket.take()
    assert bucket.take() == 500


def test_retry_after_shrinks_as_time_passes(clock: Clock) -> None:
    """Part of the way to the next token, the wait is the remaining part."""
    bucket = TokenBucket(rate=2, burst=1)
    bucket.take()
    clock.advance(0.25)
    assert bucket.take() == 250


def test_retry_after_is_at_least_one_ms(clock: Clock) -> None:
    """Even a token almost refilled asks for a positive wait."""
    bucket = TokenBucket(rate=1, burst=1)
    bucket.take()
    clock.advance(0.9999999)
    assert bucket.take() >= 1


def test_honouring_retry_after_is_granted(clock: Clock) -> None:
    """Waiting exactly the given retry_after is enough for the next take."""
    bucket = TokenBucket(rate=3, burst=1)
    bucket.take()
    wait_ms = bucket.take()
    clock.advance(wait_ms / 1000)
    assert bucket.take() == 0


def test_refusal_consumes_nothing(clock: Clock) -> None:
    """Repeated refusals do not push the next grant further out."""
    bucket = TokenBucket(rate=1, burst=1)
    bucket.take()
    for _ in range(8):
        assert bucket.take() > 0
        clock.advance(0.0625)
    clock.advance(0.5)
    assert bucket.take() == 0


def test_bucket_refills_at_rate(clock: Clock) -> None:
    """After emptying, one second at 4 tokens/s grants exactly 4 more."""
    bucket = TokenBucket(rate=4, burst=10)
    while bucket.take() == 0:
        pass
    clock.advance(1.0)
    assert [bucket.take() for _ in range(5)] == [0, 0, 0, 0, 250]


def test_refill_is_capped_at_burst(clock: Clock) -> None:
    """A long idle time refills at most `burst` tokens."""
    bucket = TokenBucket(rate=100, burst=3)
    bucket.take()
    clock.advance(3600)
    assert [bucket.take() for _ in range(4)][:3] == [0, 0, 0]
    assert bucket.take() > 0


def test_fractional_rate(clock: Clock) -> None:
    """A rate below one token a second works: 0.5/s asks to wait 2000 ms."""
    bucket = TokenBucket(rate=0.5, burst=1)
    bucket.take()
    assert bucket.take() == 2000
    clock.advance(2.0)
    assert bucket.take() == 0


def test_bucket_refills_in_real_time() -> None:
    """With the real clock, an empty 20/s bucket grants again after a short sleep."""
    bucket = TokenBucket(rate=20, burst=2)
    assert bucket.take() == 0
    assert bucket.take() == 0
    wait_ms = bucket.take()
    assert 0 < wait_ms <= 50
    time.sleep(0.12)
    assert bucket.take() == 0


# ---------------------------------------------------------------------------
# FloodGuard


def test_flood_guard_below_limit_is_not_a_flood(clock: Clock) -> None:
    """Fewer refusals than the limit within the window are not a flood."""
    guard = FloodGuard(limit=3, window=1.0)
    assert [guard.refused(), guard.refused()] == [False, False]


def test_flood_guard_reaching_limit_is_a_flood(clock: Clock) -> None:
    """The refusal that reaches the limit within the window is a flood."""
    guard = FloodGuard(limit=3, window=1.0)
    guard.refused()
    guard.refused()
    assert guard.refused() is True


def test_flood_guard_limit_one(clock: Clock) -> None:
    """With limit 1 the first refusal is already a flood."""
    assert FloodGuard(limit=1).refused() is True


def test_flood_guard_window_resets(clock: Clock) -> None:
    """Refusals spread over more than the window never add up to a flood."""
    guard = FloodGuard(limit=3, window=1.0)
    results = []
    for _ in range(10):
        results.append(guard.refused())
        results.append(guard.refused())
        clock.advance(1.5)
    assert not any(results)


def test_flood_guard_counts_within_window(clock: Clock) -> None:
    """Refusals close together within one window reach the limit."""
    guard = FloodGuard(limit=4, window=1.0)
    results = []
    for _ in range(4):
        results.append(guard.refused())
        clock.advance(0.2)
    assert results == [False, False, False, True]


def test_flood_guard_with_real_clock() -> None:
    """With the real clock, a quick burst of refusals reaches the limit."""
    guard = FloodGuard(limit=5, window=1.0)
    assert [guard.refused() for _ in range(5)] == [False] * 4 + [True]
