"""The memory plugin's Prometheus metrics: how far its derived state trails the chain.

Three gauges, read from the database at each scrape (a collector, so they are never stale and cost nothing between
scrapes; each is one indexed ``count(*)``):

- ``monmouth_memory_settle_backlog``: blocks applied by the engine whose memory items are not yet settled into
  the lattice (``memory_pending`` rows, one per block; :mod:`.ingest`);
- ``monmouth_memory_index_backlog``: settled items not yet in the recall index (``memory_items.n`` above the
  indexed mark);
- ``monmouth_memory_embed_backlog``: items queued for an embedding (``memory_embed_queue``).

Alert ``MonmouthMemorySettleBacklogGrowing`` (ops/prometheus/monmouth.rules.yml) fires when the settle backlog keeps
growing; the runbook is in docs/operations.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .schema import scalar

#: name -> (help, SQL returning one count)
GAUGES: dict[str, tuple[str, str]] = {
    "monmouth_memory_settle_backlog": (
        "Blocks applied whose memory items are not yet settled into the lattice.",
        "SELECT count(*) FROM memory_pending"),
    "monmouth_memory_index_backlog": (
        "Settled memory items not yet in the recall index.",
        "SELECT count(*) FROM memory_items WHERE n > (SELECT indexed_n FROM memory_state WHERE id = 1)"),
    "monmouth_memory_embed_backlog": (
        "Memory items waiting for an embedding.",
        "SELECT count(*) FROM memory_embed_queue"),
}


def backlogs(conn: Any) -> dict[str, int]:
    """``{metric name: count}`` of :data:`GAUGES` read on ``conn`` (also what ``/status`` reports as
    ``settle_backlog``, ``index_backlog`` and ``embed_backlog``)."""
    return {name: scalar(conn, sql) or 0 for name, (_, sql) in GAUGES.items()}


class MemoryCollector(Collector):
    """Yields :data:`GAUGES` read on a connection from ``reader`` (the sidecar's per-thread read connection)."""

    def __init__(self, reader: Callable[[], Any]) -> None:
        self.reader = reader

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, value in backlogs(self.reader()).items():
            yield GaugeMetricFamily(name, GAUGES[name][0], value=value)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """Names only (no database read when the collector is registered)."""
        for name, (doc, _) in GAUGES.items():
            yield GaugeMetricFamily(name, doc)
