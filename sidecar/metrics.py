"""Prometheus metrics of the core, all prefixed ``monmouth_`` and kept in one registry per sidecar (served at
``/metrics``). Plugins add theirs to the same registry (``PluginContext.metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: Latency buckets in seconds, from 100 µs to 10 s.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)


class Metrics:
    """The core's metrics.

    Attributes:
        notifications: ``monmouth_notifications_total{kind, outcome}``; kind is the ExEx variant, outcome
            ``applied`` or ``skipped`` (already applied, idempotent re-delivery).
        blocks: ``monmouth_blocks_total{direction}``, blocks applied and reverted.
        reorg_depth: ``monmouth_reorg_depth_blocks``, blocks reverted per reorg or revert.
        notification_seconds: ``monmouth_notification_seconds``, engine time per notification (transaction
            included).
        commit_notifications: ``monmouth_commit_notifications``, notifications per committed transaction (above
            1 when the runner group-commits a backlog, see ``engine.group_commit``).
        wal_checkpoint_seconds: ``monmouth_wal_checkpoint_seconds``, background WAL checkpoints (duration).
        wal_pending_frames: ``monmouth_wal_pending_frames``, WAL frames a checkpoint could not copy yet (a
            long-running reader pins them; growth means the WAL file grows).
        errors: ``monmouth_errors_total{kind}``; kinds: ``plugin``, ``continuity``, ``reorg_too_deep``,
            ``codec``, ``source``, ``config``, ``hook``.
        head, finalized, source_head, lag: gauges in blocks.
        config_reloads: ``monmouth_config_reloads_total{outcome}``, ``applied`` or ``rejected``.
        source_reconnects: ``monmouth_source_reconnects_total{source}``.
        source_bad_answers: ``monmouth_source_bad_answers_total{source, node}``, answers refused as malformed or
            failing verification against the block header, by node URL.
        ingestion_paused: ``monmouth_ingestion_paused``, 1 while ingestion is paused by a fault (disk full,
            read-only database, a reorg deeper than the undo data held), else 0.
        source_connected: ``monmouth_source_connected{source}``, 1 while the source reaches its node or bridge
            (replay: always 1), else 0; refreshed with ``lag`` (each ``/metrics`` and ``/status``).
        undo_window: ``monmouth_undo_window_blocks``, ``engine.undo_window`` (for alerting on
            head - finalized approaching it).
        http_requests: ``monmouth_http_requests_total{method, route, status}``; ``route`` is the route template
            (``/memory/agents/{address}/items``), ``other`` for mounted apps and unknown paths.
        http_request_seconds: ``monmouth_http_request_seconds{method, route}``, until the response is sent.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.notifications = Counter(
            "monmouth_notifications", "Notifications processed, by ExEx kind and outcome.", ["kind", "outcome"],
            registry=r,
        )
        self.blocks = Counter("monmouth_blocks", "Blocks applied or reverted.", ["direction"], registry=r)
        self.reorg_depth = Histogram(
            "monmouth_reorg_depth_blocks", "Blocks reverted by one reorg or revert.",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64, 128, 256), registry=r,
        )
        self.notification_seconds = Histogram(
            "monmouth_notification_seconds", "Engine time per notification, commit included, seconds.",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.commit_notifications = Histogram(
            "monmouth_commit_notifications", "Notifications per committed engine transaction (group commit).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024), registry=r,
        )
        self.wal_checkpoint_seconds = Histogram(
            "monmouth_wal_checkpoint_seconds", "Background WAL checkpoint duration, seconds.",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.wal_pending_frames = Gauge(
            "monmouth_wal_pending_frames", "WAL frames the last background checkpoint could not copy yet.",
            registry=r,
        )
        self.errors = Counter("monmouth_errors", "Errors, by kind.", ["kind"], registry=r)
        self.head = Gauge("monmouth_head_block", "Engine head block number.", registry=r)
        self.finalized = Gauge(
            "monmouth_finalized_block", "Finalized block recorded (the source's, at most head - finality_depth).",
            registry=r,
        )
        self.source_head = Gauge("monmouth_source_head_block", "Newest block number the source knows.", registry=r)
        self.lag = Gauge("monmouth_source_lag_blocks", "Source head minus engine head, blocks.", registry=r)
        self.config_reloads = Counter(
            "monmouth_config_reloads", "config.toml reloads, by outcome.", ["outcome"], registry=r
        )
        self.source_reconnects = Counter(
            "monmouth_source_reconnects", "Reconnections to the node or bridge.", ["source"], registry=r
        )
        self.source_bad_answers = Counter(
            "monmouth_source_bad_answers", "Node answers refused as malformed or unverifiable.", ["source", "node"],
            registry=r,
        )
        self.ingestion_paused = Gauge(
            "monmouth_ingestion_paused", "1 while ingestion is paused by a fault, else 0.", registry=r
        )
        self.source_connected = Gauge(
            "monmouth_source_connected", "1 while the source reaches its node or bridge (replay: 1), else 0.",
            ["source"], registry=r,
        )
        self.undo_window = Gauge(
            "monmouth_undo_window_blocks", "engine.undo_window: blocks of undo data kept behind the head.", registry=r
        )
        self.http_requests = Counter(
            "monmouth_http_requests", "HTTP requests answered, by method, route template and status code.",
            ["method", "route", "status"], registry=r,
        )
        self.http_request_seconds = Histogram(
            "monmouth_http_request_seconds", "HTTP request handling time until the response is sent, seconds.",
            ["method", "route"], buckets=LATENCY_BUCKETS, registry=r,
        )
