"""Exponential backoff for the loops that retry (the runner, the sources, background workers, the integrations'
outbox), written once.

The delays are tenacity's (the library the ``rpc`` source's ``AsyncRetrying`` and the integrations' in-request
retries use): after ``n`` failures, ``first * 2**(n-1)`` seconds capped at ``cap`` (``wait_exponential``), or with
``jitter`` a uniform draw in ``[first, that]`` (``wait_random_exponential``, "full jitter"). A loop whose waits are
not plain sleeps (the runner's stall wait ends on a config reload, a worker's on a stop) keeps its own wait and
asks :class:`Backoff` only how long; a plain retry of one call uses tenacity's ``Retrying`` directly.
"""

from __future__ import annotations

from collections.abc import Callable

from tenacity import RetryCallState, Retrying, wait_exponential, wait_random_exponential


class Backoff:
    """The delays of one retry policy, in seconds.

    Args:
        first: the first delay and the floor, seconds, > 0.
        cap: the largest delay, seconds; a callable is read at each step (a setting that may be reloaded).
        jitter: draw each delay uniformly between ``first`` and the exponential value (full jitter).

    Raises:
        ValueError: ``first`` is not positive.
    """

    def __init__(self, first: float, cap: float | Callable[[], float], *, jitter: bool = False) -> None:
        if first <= 0:
            raise ValueError(f"backoff: the first delay must be positive, got {first!r}")
        self.first = first
        self._cap = cap if callable(cap) else (lambda: cap)
        self._wait = wait_random_exponential if jitter else wait_exponential
        self.failures = 0

    @property
    def cap(self) -> float:
        """The largest delay now, seconds (never below ``first``)."""
        return max(self._cap(), self.first)

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` (>= 1; less counts as 1) failed attempts in a row."""
        state = RetryCallState(Retrying(), None, (), {})  # the waits read only its attempt_number
        state.attempt_number = max(1, failures)
        return float(self._wait(multiplier=self.first, min=self.first, max=self.cap)(state))

    def next(self) -> float:
        """One more failure: the delay to wait now (the next one is twice as long, up to the cap)."""
        self.failures += 1
        return self.delay(self.failures)

    def reset(self) -> None:
        """A success: the next failure waits ``first`` again."""
        self.failures = 0
