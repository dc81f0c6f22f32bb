"""The plugin base class every integration derives from, its runtime, and the checkpoint triggers.

An integration is a :class:`IntegrationPlugin` instance registered under its entry point
(``eigenda = "monmouth_integrations.eigenda.plugin:plugin"``). The base class implements the declaration and
lifecycle hooks once (config model, migrations with the outbox tables, trimmed tables, ``/status``,
startup/shutdown of the deliverer, waking it after each commit). Each subclass implements its chain hooks itself
(so that an error is blamed on the right plugin) and a :class:`~.worker.Handler` for its jobs.

**Triggers** (``trigger`` in the config, see :class:`~.config.TriggerConfig`) are pluggable:

* ``blocks`` — :meth:`IntegrationPlugin.enqueue_root_job` from the chain hook, every ``every_blocks`` blocks,
  inside the engine's transaction; the job's memory global root is read when it is delivered, from the memory
  plugin through :meth:`monmouth.interfaces.AgentMemory.global_root_at` (:func:`fill_global_root`);
* ``checkpoint`` — :class:`CheckpointTrigger` in the deliverer's thread: each new manifest of the memory
  plugin's checkpoints (:meth:`monmouth.interfaces.AgentMemory.checkpoints`) whose block is still canonical becomes
  a job for that block (so reverting the block cancels it, as for ``blocks``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import apsw
import httpx

from monmouth import hookimpl
from monmouth.chain import hx
from monmouth.engine import canonical_hash
from monmouth.interfaces import AgentMemory, AgentMemorySource, provider

from .config import IntegrationConfig, OutboxConfig, TriggerConfig
from .metrics import IntegrationMetrics, metrics_for
from .outbox import Job, Outbox, migration, trimmed
from .resilience import BREAKER_STATES, make_breaker, outbox_backoff
from .worker import Deliverer, Handler

try:
    import psycopg.errors

    _PG_MISSING: tuple[type[Exception], ...] = (psycopg.errors.UndefinedTable,)
except ImportError:  # pragma: no cover - psycopg is only needed for storage.url = "postgresql://..."
    _PG_MISSING = ()

#: What either backend raises when a statement names a table that does not exist (another plugin's, disabled).
NO_SUCH_TABLE: tuple[type[Exception], ...] = (apsw.SQLError, *_PG_MISSING)

log = logging.getLogger(__name__)


def agent_memory(host: Any) -> AgentMemory | None:
    """The agents' memory a started plugin of ``host`` offers (:class:`monmouth.interfaces.AgentMemorySource`, the
    memory plugin's), or ``None`` when none is enabled and started."""
    source = provider(host, AgentMemorySource)
    return source.get_agent_memory() if source is not None else None


#: Payload flag of a ``trigger = "blocks"`` job: its global root is read when the request is prepared, not in the
#: chain hook (computing a block's global tree over 10,000 agents takes ~10-15 ms: kept off the engine's transaction).
ROOT_AT_DELIVERY = "global_root_at_delivery"


def fill_global_root(rt: Runtime) -> Callable[[Job], None]:
    """The deliverer's ``before_prepare`` for root jobs: set ``global_root`` and ``agents`` of a job flagged
    :data:`ROOT_AT_DELIVERY`, read at its block from the memory plugin (:func:`global_root`). A block's global root
    never changes once the block is applied, and a job whose block is reverted is deleted with it, so reading it
    later gives the same answer as reading it in the chain hook."""
    def fill(job: Job) -> None:
        if job.payload.pop(ROOT_AT_DELIVERY, False):
            job.payload["global_root"], job.payload["agents"] = global_root(rt.memory, job.block_number)
    return fill


def global_root(memory: AgentMemory | None, number: int, block_hash: bytes | None = None
                ) -> tuple[str | None, int | None]:
    """The memory plugin's global root at block ``number`` (``"0x"`` + 64 hex) and its agent count, through
    :meth:`monmouth.interfaces.AgentMemory.global_root_at` (on SQLite and PostgreSQL alike; it waits until the
    memory settled the blocks applied so far, so call it off the engine's transaction); ``(None, None)`` when there
    is no memory (``memory`` is ``None``: the plugin is disabled or not started) or it has no root at the block, or
    its block is not ``block_hash`` when given."""
    found = memory.global_root_at(number, block_hash) if memory is not None else None
    return (hx(found[0]), found[1]) if found is not None else (None, None)


class Runtime:
    """A started integration: its config, HTTP client, breaker, outbox and deliverer.

    Attributes:
        ctx: the plugin context (``ctx.db``, ``ctx.host``, ``ctx.metrics``...).
        config: the validated config section.
        http: an ``httpx.Client`` with the configured timeout.
        metrics: :class:`~.metrics.IntegrationMetrics`.
        breaker: the pybreaker circuit breaker.
        outbox: the :class:`~.outbox.Outbox` (``None`` for integrations without one).
        deliverer: the :class:`~.worker.Deliverer` (``None`` without an outbox).
        state: integration-specific runtime values (addresses, cached ids).
    """

    def __init__(self, name: str, ctx: Any, config: IntegrationConfig) -> None:
        self.name = name
        self.ctx = ctx
        self.config = config
        self.db = ctx.db
        self.host = ctx.host
        self.http = httpx.Client(timeout=config.timeout_s)
        self.metrics: IntegrationMetrics = metrics_for(name, ctx.metrics)
        self.backoff = outbox_backoff(config.backoff_initial_s, config.backoff_max_s)
        self.breaker = make_breaker(name, config.breaker_fail_max, config.breaker_reset_s, self._breaker_changed)
        self.metrics.breaker_state.set(0)
        self.outbox: Outbox | None = None
        self.deliverer: Deliverer | None = None
        self.state: dict[str, Any] = {}

    def _breaker_changed(self, old: str, new: str) -> None:
        log.warning("%s: circuit breaker %s -> %s", self.name, old, new)
        self.metrics.breaker_transitions.labels(new).inc()
        self.metrics.breaker_state.set(BREAKER_STATES.get(new, 0))

    @property
    def memory(self) -> AgentMemory | None:
        """The agents' memory (:func:`agent_memory`), looked up at each use: plugins are enabled and disabled while
        the sidecar runs."""
        return agent_memory(self.host)

    def close(self) -> None:
        if self.deliverer is not None:
            self.deliverer.stop(timeout=self.config.timeout_s + 1)
        self.http.close()


class CheckpointTrigger:
    """Enqueues a job for each new memory checkpoint whose block is canonical (``trigger = "checkpoint"``).

    Called by the deliverer at the start of each round. Manifests of blocks older than the newest job already in
    the outbox or its delivery log are skipped, so pruned jobs are never sent again.
    """

    def __init__(self, plugin: IntegrationPlugin, rt: Runtime) -> None:
        self.plugin = plugin
        self.rt = rt
        self.seen: set[str] = set()
        p = plugin.name
        row = rt.db.reader().execute(
            f"SELECT max(b) FROM (SELECT max(block_number) AS b FROM {p}_outbox WHERE kind = 'checkpoint' "
            f"UNION ALL SELECT max(block_number) FROM {p}_deliveries)").fetchone()
        self.floor: int = row[0] if row and row[0] is not None else -1

    def __call__(self) -> None:
        mem = self.rt.memory
        if mem is None:
            return
        for m in mem.checkpoints():
            name = m.get("name")
            number = (m.get("block") or {}).get("number")
            bhash = (m.get("block") or {}).get("hash")
            if name in self.seen:
                continue
            self.seen.add(name)
            if number is None or bhash is None or number < self.floor:
                continue
            self.enqueue(m, number, bhash)

    def enqueue(self, manifest: Mapping[str, Any], number: int, bhash: str) -> bool:
        """Enqueue the job of one checkpoint if its block is canonical; returns whether a job was added."""
        assert self.rt.outbox is not None
        raw = bytes.fromhex(bhash[2:])
        groot = manifest.get("global_root") or {}
        payload = {"block": number, "hash": bhash,
                   "global_root": groot.get("root") if groot.get("block") == number else None,
                   "checkpoint": dict(manifest)}
        if payload["global_root"] is None:  # read first: settling takes the write lock
            payload["global_root"], payload["agents"] = global_root(self.rt.memory, number, raw)
        with self.rt.db.write() as conn:
            if canonical_hash(conn, number) != raw:
                log.info("%s: checkpoint %s is at a block no longer canonical; skipped", self.plugin.name,
                         manifest.get("name"))
                return False
            key = f"{self.plugin.name}:checkpoint:{number}:{bhash}:{manifest.get('sha256', '')[:16]}"
            return self.rt.outbox.enqueue(conn, key, number, raw, "checkpoint", payload)


class IntegrationPlugin:
    """Base class of the four integration plugins. Subclasses set the class attributes and implement
    :meth:`make_handler` (outbox integrations), their chain hooks, and optionally :meth:`extra_status`,
    :meth:`on_start`, :meth:`on_stop`, ``monmouth_http_router`` and ``monmouth_register_commands``.

    Args:
        workers: start the background deliverer (tests may pass ``False`` and call
            ``runtime.deliverer.run_once()`` themselves).
    """

    #: The plugin's name (entry point, config section, table prefix, metric prefix).
    name: ClassVar[str] = ""
    #: Its config model.
    Config: ClassVar[type[IntegrationConfig]] = IntegrationConfig
    #: Whether it has an outbox and a deliverer.
    uses_outbox: ClassVar[bool] = True
    #: SQL creating its own tables (appended to the outbox tables in migration 1).
    SCHEMA: ClassVar[str] = ""
    #: The same tables for PostgreSQL; ``None`` (with a ``SCHEMA``): the integration runs on SQLite only, and
    #: enabling it on PostgreSQL is refused naming it (``monmouth_backends``).
    PG_SCHEMA: ClassVar[str | None] = None
    #: Its own trimmed tables.
    TRIMMED: ClassVar[dict[str, str | None]] = {}

    def __init__(self, workers: bool = True) -> None:
        self.workers = workers
        self.rt: Runtime | None = None

    # -- to implement --------------------------------------------------------------------------------------
    def make_handler(self, rt: Runtime) -> Handler:
        """The outbox job handler (outbox integrations only)."""
        raise NotImplementedError

    def on_start(self, rt: Runtime) -> None:
        """Read secrets, check settings (raise to fail the start; the error shows in ``/status``)."""

    def on_stop(self, rt: Runtime) -> None:
        """Release what :meth:`on_start` acquired."""

    def extra_status(self, rt: Runtime) -> dict[str, Any]:
        """Integration-specific entries of ``/status``."""
        return {}

    # -- helpers for subclasses ----------------------------------------------------------------------------
    def runtime(self) -> Runtime:
        """The runtime; raises ``RuntimeError`` if the plugin is not started (a chain hook of a plugin that is
        not started must fail the notification, not skip work)."""
        if self.rt is None:
            raise RuntimeError(f"{self.name} plugin not started")
        return self.rt

    def enqueue_root_job(self, conn: apsw.Connection, block: Any) -> bool:
        """``trigger = "blocks"``: on every ``every_blocks``-th block (not genesis), enqueue a job for the block; its
        memory global root is filled in when the request is prepared (:func:`fill_global_root`). Called from a
        chain hook with the engine's connection."""
        rt = self.runtime()
        cfg = rt.config
        assert isinstance(cfg, TriggerConfig) and rt.outbox is not None
        if cfg.trigger != "blocks" or block.number == 0 or block.number % cfg.every_blocks:
            return False
        bh = hx(block.hash)
        payload = {"block": block.number, "hash": bh, "global_root": None, "agents": None, "checkpoint": None,
                   ROOT_AT_DELIVERY: True}
        return rt.outbox.enqueue(conn, f"{self.name}:block:{block.number}:{bh}", block.number, block.hash, "block",
                                 payload)

    # -- declarations --------------------------------------------------------------------------------------
    @hookimpl
    def monmouth_config_model(self) -> type[IntegrationConfig]:
        return self.Config

    @hookimpl
    def monmouth_migrations(self, backend: str = "sqlite") -> Sequence[str]:
        schema = self.PG_SCHEMA if backend == "postgres" else self.SCHEMA
        return [(migration(self.name, backend) if self.uses_outbox else "") + (schema or "")]

    @hookimpl
    def monmouth_backends(self) -> Sequence[str]:
        """Both when the integration's own tables have a PostgreSQL schema (or it has none), else SQLite only."""
        return ("sqlite", "postgres") if self.PG_SCHEMA is not None or not self.SCHEMA else ("sqlite",)

    @hookimpl
    def monmouth_trimmed_tables(self) -> Mapping[str, str | None]:
        return {**(trimmed(self.name) if self.uses_outbox else {}), **self.TRIMMED}

    @hookimpl
    def monmouth_status(self) -> Mapping[str, Any] | None:
        rt = self.rt
        if rt is None:
            return None
        out: dict[str, Any] = {"breaker": rt.breaker.current_state}
        if rt.outbox is not None and rt.deliverer is not None:
            d = rt.deliverer
            out.update({
                "outbox": rt.outbox.counts(),
                "oldest_pending_s": round(rt.outbox.oldest_pending_age(time.time()), 1),
                "deliverer": "running" if d.running else "stopped",
                "delivered": d.delivered,
                "last_delivery_at": d.last_delivery_at,
                "last_error": d.last_error or rt.outbox.last_error(),
            })
        out.update(self.extra_status(rt))
        return out

    # -- lifecycle -----------------------------------------------------------------------------------------
    @hookimpl
    def monmouth_startup(self, ctx: Any) -> None:
        config = ctx.config if ctx.config is not None else self.Config()
        rt = Runtime(self.name, ctx, config)
        try:
            self.on_start(rt)
            if self.uses_outbox:
                assert isinstance(config, OutboxConfig)
                rt.outbox = Outbox(ctx.db, self.name)
                poll = None
                if isinstance(config, TriggerConfig) and config.trigger == "checkpoint":
                    poll = CheckpointTrigger(self, rt)
                rt.deliverer = Deliverer(
                    self.name, rt.outbox, self.make_handler(rt), rt.breaker, rt.backoff, rt.metrics,
                    poll_interval_s=config.poll_interval_s, max_attempts=config.max_attempts,
                    keep_delivered_s=config.keep_delivered_s, poll=poll, before_prepare=fill_global_root(rt))
                rt.deliverer.refresh_gauges()
                if self.workers and getattr(ctx, "role", "run") == "run":  # one deliverer: `monmouth run`'s
                    rt.deliverer.start()
        except BaseException:
            rt.close()
            raise
        self.rt = rt

    @hookimpl
    def monmouth_shutdown(self, ctx: Any) -> None:
        rt, self.rt = self.rt, None
        if rt is not None:
            try:
                self.on_stop(rt)
            finally:
                rt.close()

    @hookimpl
    def monmouth_notification_committed(self, notification: Any, head: Any) -> None:
        rt = self.rt
        if rt is not None and rt.deliverer is not None:
            rt.deliverer.wake()
