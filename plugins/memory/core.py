"""The memory runtime of one database: the parts, and what each is for.

One :class:`Memory` exists per running plugin instance. It builds its parts, each a module of its own with its
collaborators passed in, and offers their public methods:

* :class:`.agents.Agents`: registered agents, their keys, the tombstones of forgotten ones;
* :class:`.items.Items`: API writes and reads of items (store, get, list, update, delete, sweep);
* :class:`.recall.Recall`: recall by meaning or keyed full-text search, and the embedding of items;
* :class:`.ingest.ChainIngest`: the chain hooks' work (:meth:`apply_block`, :meth:`revert_block`), settling and
  indexing (with :class:`.registry.Registrations` for on-chain registrations);
* :class:`.proofs.Proofs`: roots, proofs, leaves and changes at a block;
* :class:`.forget.Forget`: forgetting an agent for good;
* :class:`.worker.MemoryWorker`: the worker thread, and how reads wait for it;
* :class:`.checkpoint.AutoCheckpoints`: automatic checkpoints.

The chain hooks call :meth:`Memory.apply_block` / :meth:`Memory.revert_block` with the engine's connection;
everything else (API, CLI, workers) runs outside the engine and writes only off-chain tables (see :mod:`.schema`).
Reads never write: they wait until the worker has settled what they read (see :mod:`.worker`).

What other plugins offer (an embedder, a transaction renderer) is found through :mod:`monmouth.interfaces`.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import apsw

from monmouth.chain import hx
from monmouth.errors import ConfigError
from monmouth.interfaces import Embedder, EmbedderSource, TransactionRenderer, provider

from . import dialect, lattice, txn
from .agents import Agents, Counters, Tombstones
from .checkpoint import AutoCheckpoints
from .config import MemoryConfig
from .crypto import KeyStore, aad
from .fields import parse_address, parse_id, utf8
from .forget import AGENT_COLUMN, Forget
from .ingest import ChainIngest
from .items import Items, head
from .metrics import backlogs
from .proofs import Proofs
from .recall import Recall
from .registrations import Registrations
from .schema import scalar
from .vectors import VectorCache
from .worker import MemoryWorker

__all__ = ["AGENT_COLUMN", "Memory", "aad", "parse_address", "parse_id", "utf8"]

log = logging.getLogger(__name__)


def _resolve(base: Path, p: str) -> Path:
    path = Path(p).expanduser()
    return path if path.is_absolute() else base / path


class Memory:
    """The memory plugin's runtime for one database.

    Args:
        config: the validated ``[plugins.memory]`` section.
        db: the sidecar database (``monmouth.store.Database``, or ``PgDatabase`` on PostgreSQL).
        host: the plugin host (to find what other plugins offer, :mod:`monmouth.interfaces`), or ``None``.
        settings: the whole settings (config hash in checkpoint manifests), or ``None``.

    Relative ``key_dir`` and ``checkpoint_dir`` are resolved against the SQLite file's directory, or on PostgreSQL
    against the config file's directory (``settings.origin``; the working directory when there is no file).

    Raises:
        monmouth.errors.ConfigError: ``checkpoint_every`` set on PostgreSQL (checkpoints are copies of the SQLite file).
    """

    def __init__(self, config: MemoryConfig, db: Any, host: Any = None, settings: Any = None) -> None:
        self.config = config
        self.db = db
        self.host = host
        self.settings = settings
        path = getattr(db, "path", None)
        origin = Path(getattr(settings, "origin", "") or "")
        base = (Path(path).resolve().parent if path is not None else
                origin.resolve().parent if origin.is_file() else Path.cwd())
        if path is None and config.checkpoint_every:
            raise ConfigError(
                "plugins.memory.checkpoint_every: automatic checkpoints copy the SQLite file and do not exist on "
                "PostgreSQL; back the database up with the server's tools (pg_dump, base backups) or use "
                "`monmouth memory export`, and set checkpoint_every = 0")
        self.key_dir = _resolve(base, config.key_dir)
        self.checkpoint_dir = _resolve(base, config.checkpoint_dir)
        self.keys = KeyStore(config.key_source, self.key_dir, config.key_env_prefix)
        self.counters = Counters()
        self.lattice = lattice.Lattice(dialect.of(db).key(db.reader()))
        self.lattice.settler = self.ensure_settled
        self.lattice.register()
        self.vectors = VectorCache(64)
        self.tombstones = Tombstones(self.key_dir)
        self.checkpoints = AutoCheckpoints(
            path or "", self.checkpoint_dir, config.checkpoint_every, config.checkpoint_keep,
            lambda: settings.digest() if settings is not None else None)
        write = self._write
        self.directory = Agents(config, db, self.keys, self.lattice, self.tombstones, write, self.ensure_settled)
        self.registrations = Registrations(config, self.keys, self.counters)
        self.ingest = ChainIngest(config, db, self.keys, self.lattice, self.directory, self.registrations,
                                  self.vectors, self.renderer, self._derive, self.counters)
        self.items = Items(config, db, self.directory, self.vectors, write, self.ensure_settled, self.ensure_settled,
                           self.ensure_indexed, self.wake)
        self.recaller = Recall(config, db, self.directory, self.vectors, self._offered_embedder, write, self.counters)
        self.proofs = Proofs(db, self.lattice, self.directory, self.ensure_settled)
        self.forgetting = Forget(db, self.keys, self.lattice, self.tombstones, self.vectors, self.checkpoint_dir,
                                 self.checkpoints.lock, write, self.ensure_settled)
        self.worker = MemoryWorker(self.ingest, db, self.embed_pending if config.embed else None, self.proofs.warm,
                                   self.items.sweep)
        # The public API, as the parts define it.
        self.key, self.check_agent, self.register = self.directory.key, self.directory.check, self.directory.register
        self.agent_info, self.agents = self.directory.info, self.directory.all
        self.store, self.store_batch, self.get = self.items.store, self.items.store_batch, self.items.get
        self.list, self.update, self.delete, self.sweep = (self.items.list, self.items.update, self.items.delete,
                                                           self.items.sweep)
        self.global_root, self.agent_root, self.proof = (self.proofs.global_root, self.proofs.agent_root,
                                                         self.proofs.proof)
        self.leaves, self.changes, self.warm = self.proofs.leaves, self.proofs.changes, self.proofs.warm
        self.forget = self.forgetting.forget

    # ------------------------------------------------------------------------------------------------ lifecycle
    def start(self, workers: bool = True) -> None:
        """Register config agents, re-apply forget tombstones, and start the worker thread."""
        with self._write() as conn:
            for a in self.config.agents:
                agent = parse_address(a, "plugins.memory.agents")
                row = conn.execute("SELECT forgotten_at FROM memory_agents WHERE address = ?", (agent,)).fetchone()
                if row is None:
                    self.keys.create(agent)
                    conn.execute("INSERT INTO memory_agents (address, label, source, created_at) VALUES (?, ?, ?, ?)",
                                 (agent, None, "config", time.time()))
                elif row[0] is not None:
                    log.warning("agent 0x%s in config.toml was forgotten; not re-registering it", agent.hex())
        for agent in self.tombstones.all():
            row = self.db.reader().execute(
                "SELECT forgotten_at FROM memory_agents WHERE address = ?", (agent,)).fetchone()
            if row is not None and row[0] is None:
                log.warning("agent 0x%s was forgotten after this database was taken; purging it again", agent.hex())
                self.forgetting.purge(agent)
        if workers:
            self.worker.start()

    def stop(self) -> None:
        """Stop background threads (waits up to 5 s each)."""
        self.lattice.unregister()
        self.worker.stop(timeout=5)
        for t in self.checkpoints.threads:
            t.join(timeout=5)

    def wake(self) -> None:
        """Wake the worker (after a commit or an API write): it settles, indexes and embeds now."""
        self.worker.wake()

    @property
    def _threads(self) -> builtins.list[threading.Thread]:
        """The worker's thread (once it ran) and the automatic checkpoints' threads."""
        return [t for t in (self.worker.thread, *self.checkpoints.threads) if t is not None]

    @property
    def key_errors(self) -> int:
        return self.counters.key_errors

    @property
    def embedded(self) -> int:
        return self.counters.embedded

    # ------------------------------------------------------------------------------------------------ what others offer
    def renderer(self) -> TransactionRenderer | None:
        """The transaction renderer of an enabled plugin that offers one (the rag plugin), else ``None``."""
        return provider(self.host, TransactionRenderer)

    def _offered_embedder(self) -> Embedder | None:
        source = provider(self.host, EmbedderSource)
        return source.get_embedder() if source is not None else None

    def embedder(self) -> Embedder | None:
        """The embedder of an enabled plugin that offers one (the rag plugin) when ``embed`` is on, else ``None``."""
        return self.recaller.embedder()

    # ------------------------------------------------------------------------------------------------ db helpers
    @contextlib.contextmanager
    def _write(self) -> Iterator[Any]:
        """One of the plugin's write transactions (:func:`.txn.write`), which the worker's settling makes way for
        (:meth:`.ingest.ChainIngest.writing`)."""
        with self.ingest.writing(), txn.write(self.db) as conn:
            yield conn

    def _derive(self) -> Any:
        """A write transaction of derived rows only (settling, indexing): :func:`.txn.write` without an fsync."""
        return txn.write(self.db, durable=False)

    def _read(self) -> apsw.Connection:
        return self.db.reader()  # type: ignore[no-any-return]

    def head(self, conn: apsw.Connection | None = None) -> tuple[int | None, bytes | None]:
        """The engine's durable head ``(number, hash)``."""
        return head(conn or self._read())

    # ------------------------------------------------------------------------------------------------ settling
    def ensure_settled(self, conn: apsw.Connection | None = None) -> None:
        """Make every block recorded so far settled (:meth:`.ingest.ChainIngest.settle`) before the caller reads the
        lattice tables (leaves, marks, block rows, chain-derived items). Without ``conn`` (a read): wait for the
        worker (:meth:`.worker.MemoryWorker.settled`). ``conn``: a connection holding SQLite's write lock (a write
        of this plugin, or another plugin's chain hook through ``memory_settle()``): settle inside its
        transaction."""
        if conn is None:
            self.worker.settled()
            return
        top = scalar(conn, "SELECT max(block_number) FROM memory_pending")
        while top is not None and self.ingest.settle(conn, until=top):
            pass

    def ensure_indexed(self) -> None:
        """Wait until every chain-derived item committed so far is settled and indexed (tags, FTS5, embedding
        queue: see :meth:`.ingest.ChainIngest.index_episodes`) before a read that filters or searches by them."""
        self.worker.indexed()

    # ------------------------------------------------------------------------------------------------ recall
    def recall(self, agent: bytes, query: str, *, k: int = 10, kind: str | None = None,
               tags: Sequence[str] | None = None, from_block: int | None = None, to_block: int | None = None,
               since: float | None = None, until: float | None = None, recency_weight: float = 0.0,
               half_life_s: float | None = None, mode: str | None = None) -> dict[str, Any]:
        """Recall the ``k`` items most related to ``query``: ``{"mode": "vector" | "fts", "results": [item + score,
        relevance]}``, best first.

        Scoring: relevance is the cosine similarity of the rag embedder's vectors when the rag plugin is enabled
        (``mode="vector"``), else FTS5 BM25 over keyed tokens (``mode="fts"``), scaled to [0, 1] by the best
        candidate. With ``recency_weight`` w in [0, 1] the score is ``(1 - w) * relevance + w * 0.5 ** (age /
        half_life)``, age in seconds since the item was written (chain items: the block time).

        Raises:
            UnknownAgentError, MemoryRequestError: unknown agent, bad parameter (4xx naming the field).
        """
        self.ensure_indexed()
        return self.recaller.recall(agent, query, k=k, kind=kind, tags=tags, from_block=from_block,
                                   to_block=to_block, since=since, until=until, recency_weight=recency_weight,
                                   half_life_s=half_life_s, mode=mode)

    def embed_pending(self, batch: int = 64) -> int:
        """Embed up to ``batch`` queued items with the offered embedder; returns how many were embedded (0 when no
        embedder). Vectors are encrypted like content. Safe against concurrent reverts: each vector is written only
        if its item still has the id and version that were embedded. Chain-derived items are indexed (queued) first."""
        self.ensure_indexed()
        return self.recaller.embed_pending(batch)

    @staticmethod
    def leaf_values(agent: bytes, r: Sequence[Any]) -> builtins.list[Any]:
        """JSON values of a per-agent leaf in :data:`merkle.ITEM_LEAF_TYPES` order (as the npm package takes)."""
        return lattice.leaf_values(agent, r)

    # ------------------------------------------------------------------------------------------------ chain hooks
    def apply_block(self, conn: apsw.Connection, block: Any) -> None:
        """The ``monmouth_block_applied`` work (see :meth:`.ingest.ChainIngest.apply_block`). Writes only through
        ``conn``."""
        self.ingest.apply_block(conn, block)

    def revert_block(self, conn: apsw.Connection, block: Any) -> None:
        """The ``monmouth_block_reverted`` work (see :meth:`.ingest.ChainIngest.revert_block`), then the registry's
        rows of ``memory_agents`` follow ``memory_registry`` (:meth:`.registry.Registrations.revert`)."""
        self.ingest.revert_block(conn, block)
        self.registrations.revert(conn, block)

    # ------------------------------------------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        """The ``monmouth_status`` of the plugin: counts, backlogs, counters and the latest global root (plus the
        registry's status when registries are configured)."""
        conn = self._read()
        backlog = backlogs(conn)
        agents = scalar(conn, "SELECT count(*) FROM memory_agents WHERE forgotten_at IS NULL")
        items = scalar(conn, "SELECT count(*) FROM memory_items")
        seq = scalar(conn, "SELECT ops_seq FROM memory_sync")
        pending = scalar(conn, "SELECT count(*) FROM memory_ops WHERE seq > ?", (seq,))
        g = scalar(conn, "SELECT max(block_number) FROM memory_blocks")
        out = {"agents": agents, "items": items, "pending_ops": pending,
               "settle_backlog": backlog["monmouth_memory_settle_backlog"],
               "index_backlog": backlog["monmouth_memory_index_backlog"],
               "embed_backlog": backlog["monmouth_memory_embed_backlog"],
               "embedded": self.counters.embedded, "key_errors": self.counters.key_errors,
               "worker_running": self.worker.running,
               "global_root": {"block": g, "root": hx(self.lattice.global_root(conn, g))} if g is not None else None}
        if self.config.registries:
            out["registry"] = self.registrations.status(conn)
        return out

