"""How a delivery attempt can fail, and what the deliverer does about it.

* :class:`TransientError` — the service may succeed later (timeout, connection refused, HTTP 408/425/429/5xx,
  malformed response): the job is retried with backoff, and the circuit breaker counts the failure.
* :class:`PermanentError` — retrying the same request cannot help (HTTP 4xx, JSON-RPC invalid params): the job
  is parked as ``failed`` (visible in ``/status`` and metrics); the breaker does not count it, since the
  service answered.
* :class:`NotReady` — the job depends on something not there yet (for example the EigenDA cert Othentic
  uses as proof of task): it is deferred without counting an attempt.
"""

from __future__ import annotations

from monmouth.errors import MonmouthError


class IntegrationError(MonmouthError):
    """Base class of integration errors."""


class TransientError(IntegrationError):
    """A failure that may go away: retried with backoff.

    Args:
        message: what failed, naming the service and the request.
        upstream_status: the HTTP status the service answered with, if any.
        sent: whether the request may have reached the service (``True`` for read timeouts and 5xx answers,
            ``False`` for connection errors and 429/503). Non-idempotent calls (Composio) retry only when
            ``sent`` is ``False``.
    """

    retryable = True

    def __init__(self, message: str, *, upstream_status: int | None = None, sent: bool = True) -> None:
        super().__init__(message)
        self.upstream_status = upstream_status
        self.sent = sent


class MalformedResponse(TransientError):
    """The service answered, but not in its documented shape (bad JSON, missing field, empty cert)."""


class StaleRequest(TransientError):
    """The prepared request can no longer be sent as is (for example a signed transaction whose nonce was
    taken); the deliverer discards it and prepares a new one."""

    def __init__(self, message: str) -> None:
        super().__init__(message, sent=False)


class PermanentError(IntegrationError):
    """A failure that retrying the same request cannot fix: the job is parked as ``failed``.

    Args:
        message: what failed.
        upstream_status: the HTTP status the service answered with, if any.
    """

    def __init__(self, message: str, *, upstream_status: int | None = None) -> None:
        super().__init__(message)
        self.upstream_status = upstream_status


class NotReady(IntegrationError):
    """The job cannot be prepared yet; retry after ``delay`` seconds without counting an attempt."""

    retryable = True

    def __init__(self, message: str, delay: float = 1.0) -> None:
        super().__init__(message)
        self.delay = delay
