"""Retries with exponential backoff and jitter (tenacity) and a circuit breaker per integration (pybreaker).

Two kinds of retry use the same policy:

* **Durable retries** (the outbox): a job's attempts are counted in SQLite and its next attempt time is
  ``now + outbox_backoff(...).delay(attempts)``, so the schedule survives restarts. tenacity supplies the policy
  (``wait_random_exponential``: full jitter, floor ``initial``, doubling up to ``max``).
* **In-request retries** (Composio, where an agent waits for the answer): :func:`retrying` returns a tenacity
  ``Retrying`` that retries only failures known not to have reached the service.

The breaker (:func:`make_breaker`) opens after ``fail_max`` consecutive failures and then rejects calls at once
(``pybreaker.CircuitBreakerError``) for ``reset_s`` seconds; the next call is a trial (half-open) that closes it
on success or re-opens it on failure. Only :class:`~.errors.TransientError` counts as a failure: a permanent
error (HTTP 4xx) means the service is up and answering.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pybreaker
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from monmouth.backoff import Backoff

from .errors import IntegrationError, NotReady, PermanentError, TransientError

#: Breaker states as gauge values.
BREAKER_STATES = {"closed": 0, "half-open": 1, "open": 2}


def outbox_backoff(initial_s: float, max_s: float) -> Backoff:
    """The outbox's retry delays: after ``n`` failed attempts, uniform in ``[initial_s, min(max_s, initial_s *
    2**(n-1))]`` seconds (exponential backoff with full jitter, :class:`monmouth.backoff.Backoff`)."""
    return Backoff(initial_s, max_s, jitter=True)


def retrying(attempts: int, initial_s: float, max_s: float,
             retry_on: Callable[[BaseException], bool] | None = None) -> Retrying:
    """A tenacity ``Retrying`` for in-request retries: at most ``attempts`` attempts, full-jitter exponential
    waits, retrying only exceptions for which ``retry_on`` is true (default: :class:`TransientError` whose
    request never reached the service). The last exception is re-raised."""
    def default(e: BaseException) -> bool:
        return isinstance(e, TransientError) and not e.sent

    return Retrying(stop=stop_after_attempt(max(1, attempts)),
                    wait=wait_random_exponential(multiplier=initial_s, max=max(max_s, initial_s), min=initial_s),
                    retry=retry_if_exception(retry_on or default), reraise=True)


class _Listener(pybreaker.CircuitBreakerListener):
    def __init__(self, on_change: Callable[[str, str], None]) -> None:
        self.on_change = on_change

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: Any, new_state: Any) -> None:
        self.on_change(old_state.name if old_state is not None else "closed", new_state.name)


def _not_a_failure(e: BaseException) -> bool:
    return isinstance(e, PermanentError | NotReady) or not isinstance(e, IntegrationError | OSError)


def make_breaker(name: str, fail_max: int, reset_s: float,
                 on_change: Callable[[str, str], None] | None = None) -> pybreaker.CircuitBreaker:
    """A pybreaker ``CircuitBreaker`` named ``name`` that counts transient failures only.

    ``on_change(old_state, new_state)`` is called on every transition (state names ``closed``, ``open``,
    ``half-open``). The failing call that trips the breaker raises its own error, not
    ``CircuitBreakerError``; later calls while open raise ``pybreaker.CircuitBreakerError`` without running.
    """
    return pybreaker.CircuitBreaker(
        fail_max=fail_max, reset_timeout=reset_s, name=name, exclude=[_not_a_failure],
        listeners=[_Listener(on_change)] if on_change else None, throw_new_error_on_trip=False,
    )


CircuitBreakerError = pybreaker.CircuitBreakerError
