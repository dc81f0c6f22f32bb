"""Per-integration Prometheus metrics, all named ``monmouth_<name>_...`` on the sidecar's registry.

Metrics are created once per (registry, integration) and reused when the plugin restarts after a config change
(a registry refuses a second collector of the same name).
"""

from __future__ import annotations

import threading
import weakref

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class IntegrationMetrics:
    """The metrics of integration ``name``.

    Attributes:
        attempts: ``monmouth_<name>_attempts_total{outcome}``: requests to the service; outcome ``ok``,
            ``transient``, ``permanent``, or ``rejected`` (breaker open, not sent).
        deliveries: ``monmouth_<name>_deliveries_total{outcome}``: jobs finished; outcome ``delivered``,
            ``deduplicated`` (already delivered under the same key: not sent again), ``failed``.
        request_seconds: ``monmouth_<name>_request_seconds``: time per request to the service, seconds.
        breaker_state: ``monmouth_<name>_breaker_state``: 0 closed, 1 half-open, 2 open.
        breaker_transitions: ``monmouth_<name>_breaker_transitions_total{to}``.
        outbox: ``monmouth_<name>_outbox_jobs{state}``: jobs in the outbox by state (``pending``, ``sending``,
            ``done``, ``failed``).
        oldest_pending_seconds: ``monmouth_<name>_outbox_oldest_pending_seconds``: age of the oldest undelivered job.
        redeliveries: ``monmouth_<name>_redeliveries_total``: jobs found in flight after a restart or a lost
            answer and sent again under the same delivery key.
    """

    def __init__(self, name: str, registry: CollectorRegistry) -> None:
        p = f"monmouth_{name}"
        self.attempts = Counter(f"{p}_attempts", f"Requests to {name}, by outcome.", ["outcome"], registry=registry)
        self.deliveries = Counter(f"{p}_deliveries", f"{name} outbox jobs finished, by outcome.", ["outcome"],
                                  registry=registry)
        self.request_seconds = Histogram(f"{p}_request_seconds", f"Time per request to {name}, seconds.",
                                         buckets=_BUCKETS, registry=registry)
        self.breaker_state = Gauge(f"{p}_breaker_state", f"{name} circuit breaker: 0 closed, 1 half-open, 2 open.",
                                   registry=registry)
        self.breaker_transitions = Counter(f"{p}_breaker_transitions", f"{name} circuit breaker transitions.",
                                           ["to"], registry=registry)
        self.outbox = Gauge(f"{p}_outbox_jobs", f"{name} outbox jobs by state.", ["state"], registry=registry)
        self.oldest_pending_seconds = Gauge(f"{p}_outbox_oldest_pending_seconds",
                                            f"Age of the oldest undelivered {name} job, seconds.", registry=registry)
        self.redeliveries = Counter(f"{p}_redeliveries", f"{name} jobs sent again after an unknown outcome "
                                    "(restart mid-request), under the same delivery key.", registry=registry)


_cache: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, IntegrationMetrics]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def metrics_for(name: str, registry: CollectorRegistry) -> IntegrationMetrics:
    """The metrics of integration ``name`` on ``registry`` (created on first use)."""
    with _lock:
        per = _cache.setdefault(registry, {})
        if name not in per:
            per[name] = IntegrationMetrics(name, registry)
        return per[name]
