"""The deliverer: one background thread per integration (a ``monmouth.worker.BackgroundWorker``) that sends
outbox jobs after commit.

It never touches the engine's transaction: it reads due jobs on its own connection, talks to the service with no
transaction open, and records each outcome in a short write transaction of its own (a few row updates), so
ingestion neither waits for a service nor breaks when one is down.

One job at a time, in outbox order. For each due job:

1. already in the delivery log under its key → completed from the log, not sent again (``deduplicated``);
2. through the circuit breaker: prepare the request once and persist it (``body``), mark the job ``sending``
   (durably, attempts + 1), send it;
3. success → ``complete`` (log entry + ``done`` + the integration's own result rows, one transaction);
   transient failure → retry after ``Backoff.delay(attempts)``; permanent failure → ``failed``;
   breaker open → the job waits for the breaker, no attempt counted, and the rest of the batch too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import apsw

from monmouth.backoff import Backoff
from monmouth.errors import MonmouthError
from monmouth.worker import BackgroundWorker

from .errors import NotReady, PermanentError, StaleRequest, TransientError
from .metrics import IntegrationMetrics
from .outbox import Job, Outbox
from .resilience import BREAKER_STATES, CircuitBreakerError

log = logging.getLogger(__name__)


class Handler(Protocol):
    """What an integration implements for its outbox jobs."""

    def ready(self, job: Job) -> None:
        """Check that ``job`` can be prepared now (called outside the breaker, before :meth:`prepare`).

        Raises:
            NotReady: a dependency is missing; try again later without counting an attempt.
        """

    def prepare(self, job: Job) -> bytes:
        """Build the request for ``job`` (persisted and reused by every later attempt).

        Raises:
            TransientError, PermanentError: as for :meth:`deliver`.
        """

    def deliver(self, job: Job, body: bytes) -> Any:
        """Send the prepared request; return a JSON-able result.

        Raises:
            TransientError: retry later (``StaleRequest``: prepare a new request first).
            PermanentError: park the job as failed.
        """

    def on_delivered(self, conn: apsw.Connection, job: Job, result: Any) -> None:
        """Write the integration's result rows on ``conn`` (the completion transaction; the job still exists)."""


class Deliverer(BackgroundWorker):
    """Delivers one integration's outbox.

    Args:
        name: the integration's name (thread name, logs).
        outbox: its outbox.
        handler: its :class:`Handler`.
        breaker: its pybreaker ``CircuitBreaker`` (see :func:`.resilience.make_breaker`).
        backoff: retry delays.
        metrics: its metrics.
        poll_interval_s: how often to look for due work when not woken, seconds.
        max_attempts: park a job as failed after this many attempts (0: never).
        keep_delivered_s: prune delivered jobs older than this, seconds.
        poll: called at the start of each round (checkpoint triggers enqueue from here).
        before_prepare: called with a job just before the handler prepares its request (the trigger fills in
            what was left out of the chain hook, e.g. the memory global root, off the engine's transaction).
    """

    def __init__(self, name: str, outbox: Outbox, handler: Handler, breaker: Any, backoff: Backoff,
                 metrics: IntegrationMetrics, *, poll_interval_s: float = 1.0, max_attempts: int = 0,
                 keep_delivered_s: float = 7 * 86_400.0, poll: Callable[[], None] | None = None,
                 before_prepare: Callable[[Job], None] | None = None) -> None:
        super().__init__(f"{name}-deliverer", idle_s=poll_interval_s, max_backoff_s=30.0)
        self.integration = name
        self.outbox = outbox
        self.handler = handler
        self.breaker = breaker
        self.backoff = backoff
        self.metrics = metrics
        self.max_attempts = max_attempts
        self.keep_delivered_s = keep_delivered_s
        self.poll = poll
        self.before_prepare = before_prepare
        self.last_delivery_at: float | None = None
        self.delivered = 0
        self._last_prune = 0.0
        self._last_gauges = 0.0
        self._round = threading.Lock()  # one round at a time (the thread, or a test calling run_once)

    def step(self) -> int:
        """One round (:meth:`run_once`); the base class waits ``poll_interval_s`` (or a :meth:`wake`) when it
        attempted nothing."""
        return self.run_once()

    # -- one round ------------------------------------------------------------------------------------------
    def run_once(self, limit: int = 32) -> int:
        """Attempt every due job (at most ``limit``); returns how many were attempted. Tests call it directly."""
        with self._round:
            return self._round_locked(limit)

    def _round_locked(self, limit: int) -> int:
        if self.poll is not None:
            try:
                self.poll()
            except Exception as e:
                self.last_error = f"trigger: {type(e).__name__}: {e}"
                log.error("%s: trigger poll failed: %s", self.integration, e)
        now = time.time()
        done = 0
        for job in self.outbox.due(now, limit):
            if self.stopping.is_set():
                break
            if not self._process(job):
                break
            done += 1
        if now - self._last_prune > 60.0:
            self._last_prune = now
            self.outbox.prune(self.keep_delivered_s, now)
        if done or now - self._last_gauges > 1.0:  # counting the outbox is O(rows): at most once a second when idle
            self._last_gauges = now
            self.refresh_gauges()
        return done

    def refresh_gauges(self) -> None:
        for state, n in self.outbox.counts().items():
            self.metrics.outbox.labels(state).set(n)
        self.metrics.oldest_pending_seconds.set(self.outbox.oldest_pending_age(time.time()))
        self.metrics.breaker_state.set(BREAKER_STATES.get(self.breaker.current_state, 0))

    def _process(self, job: Job) -> bool:
        """Attempt ``job``. Returns False when the rest of the batch should wait (breaker open)."""
        logged = self.outbox.logged(job.key)
        if logged is not None:
            self._complete(job, logged["result"], logged["attempts"], "deduplicated")
            return True
        if job.body is None:
            try:
                self.handler.ready(job)
            except NotReady as e:
                self.outbox.retry(job, e.delay, f"not ready: {e}")
                return True
        if job.state == "sending":
            self.metrics.redeliveries.inc()
        state: dict[str, Any] = {"job": job}

        def attempt() -> Any:
            j: Job = state["job"]
            if not self.outbox.mark_sending(j):  # durably: attempts + 1, in flight
                raise _Gone()
            state["attempts"] = j.attempts + 1
            body = j.body
            if body is None:
                if self.before_prepare is not None:
                    self.before_prepare(j)
                body = self.handler.prepare(j)
                if not self.outbox.save_body(j, body):
                    raise _Gone()
            t0 = time.perf_counter()
            try:
                return self.handler.deliver(j, body)
            finally:
                self.metrics.request_seconds.observe(time.perf_counter() - t0)

        try:
            result = self.breaker.call(attempt)
        except _Gone:
            return True
        except CircuitBreakerError:
            self.metrics.attempts.labels("rejected").inc()
            self.outbox.retry(job, self.breaker.reset_timeout, None)
            return False
        except StaleRequest as e:
            self.metrics.attempts.labels("transient").inc()
            self.outbox.save_body(job, None)
            self._retry(job, state.get("attempts", job.attempts), str(e))
            return True
        except TransientError as e:
            self.metrics.attempts.labels("transient").inc()
            self._retry(job, state.get("attempts", job.attempts), str(e))
            return True
        except PermanentError as e:
            self.metrics.attempts.labels("permanent").inc()
            self._fail(job, str(e))
            return True
        except Exception as e:  # a bug in a handler: keep the job, retry with backoff, say so
            log.exception("%s: delivering %s failed unexpectedly", self.integration, job.key)
            self._retry(job, state.get("attempts", job.attempts), f"{type(e).__name__}: {e}")
            return True
        self.metrics.attempts.labels("ok").inc()
        self._complete(job, result, state.get("attempts", job.attempts + 1), "delivered")
        return True

    def _retry(self, job: Job, attempts: int, error: str) -> None:
        self.last_error = error
        if self.max_attempts and attempts >= self.max_attempts:
            self._fail(job, f"gave up after {attempts} attempts: {error}")
            return
        delay = self.backoff.delay(attempts)
        log.warning("%s: %s failed (attempt %d), retrying in %.1fs: %s", self.integration, job.key, attempts, delay,
                    error)
        self.outbox.retry(job, delay, error)

    def _fail(self, job: Job, error: str) -> None:
        self.last_error = error
        log.error("%s: %s failed permanently: %s", self.integration, job.key, error)
        self.outbox.fail(job, error)
        self.metrics.deliveries.labels("failed").inc()

    def _complete(self, job: Job, result: Any, attempts: int, outcome: str) -> None:
        def write(conn: apsw.Connection) -> None:
            self.handler.on_delivered(conn, job, result)

        self.outbox.complete(job, result, attempts, write)
        self.metrics.deliveries.labels(outcome).inc()
        self.last_delivery_at = time.time()
        self.delivered += 1


class _Gone(MonmouthError):
    """The job disappeared (its block was reverted) before it was sent."""
