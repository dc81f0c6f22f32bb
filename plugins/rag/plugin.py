"""The RAG plugin: chain data and documents as searchable knowledge.

Hooks: config model, migrations, trimmed tables, startup/shutdown (model, registry, vector index, embedding worker),
``monmouth_block_applied`` (decode and record each in-scope transaction, inside the engine's transaction),
``monmouth_block_reverted`` (drop FTS/vector rows of reverted blocks), ``monmouth_notification_committed`` (wake the
worker), ``monmouth_status``, ``monmouth_http_router`` (``/rag/...``), ``monmouth_access_rules`` (:mod:`.access`),
``monmouth_mcp_tools`` (:mod:`.mcp_tools`) and ``monmouth_register_commands`` (``monmouth rag ...``).

The plugin is an instance of :class:`RagPlugin` holding its running state, registered with pluggy like any
third-party plugin (entry point ``rag = "monmouth_rag.plugin:plugin"``). It offers other plugins an embedder and a
transaction renderer (:mod:`monmouth.interfaces`), and uses an agent directory when a plugin offers one. Its API
for surfaces and embedders: :meth:`~RagPlugin.search`, :meth:`~RagPlugin.context`, :meth:`~RagPlugin.add_document`,
:meth:`~RagPlugin.delete_document`, :meth:`~RagPlugin.decode_transaction`, :meth:`~RagPlugin.transaction`,
:meth:`~RagPlugin.graph`. The module's names of the same spelling are :data:`plugin`'s bound methods, so the
module also works as a plugin object (``[plugins.rag] module = "monmouth_rag.plugin"``) and as that API.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import apsw

from monmouth import hookimpl
from monmouth.chain import address_set, hx
from monmouth.interfaces import AgentDirectory, provider
from monmouth.limits import check_json_value, check_text
from monmouth.plugins import hook_functions
from monmouth.types import Block

from . import decoded as _decoded
from . import decoder as _decoder
from . import store
from .abi import Registry, build_registry
from .ann import SyncedIndex
from .config import RagConfig, resolve_path
from .dialect import statements
from .documents import chunk_text
from .embedder import Embedder, load_embedder, load_tokenizer
from .indexes import open_index
from .ivf import IvfIndex
from .pgindex import IvfflatWorker, ivfflat_lists, ivfflat_rows
from .search import Filters, Hit, Searcher, build_context
from .worker import EmbedWorker

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------- metrics


class RagMetrics:
    """``monmouth_rag_*`` metrics (one set per registry, reused across restarts of the plugin)."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.embeddings = Counter("monmouth_rag_embeddings", "Vectors stored by the embedding worker.",
                                  registry=registry)
        self.embed_seconds = Histogram("monmouth_rag_embed_round_seconds",
                                       "Time per embedding round (embed + store), seconds.", registry=registry,
                                       buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.backlog = Gauge("monmouth_rag_backlog", "Documents waiting for a vector.", registry=registry)
        self.rate = Gauge("monmouth_rag_embeddings_per_second", "Vectors stored per second over the last minute.",
                          registry=registry)
        self.searches = Counter("monmouth_rag_searches", "Searches, by mode.", ["mode"], registry=registry)
        self.search_seconds = Histogram("monmouth_rag_search_seconds", "Search latency (embedding included), "
                                        "seconds.", ["mode"], registry=registry,
                                        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        self.docs = Counter("monmouth_rag_documents_ingested", "Document chunks ingested, by kind.", ["kind"],
                            registry=registry)


_metrics: dict[int, tuple[Any, RagMetrics]] = {}


def _metrics_for(registry: Any) -> RagMetrics | None:
    if registry is None:
        return None
    entry = _metrics.get(id(registry))
    if entry is None or entry[0] is not registry:
        entry = (registry, RagMetrics(registry))
        _metrics[id(registry)] = entry
    return entry[1]


# ----------------------------------------------------------------------------------------------------- state


@dataclass
class RagState:
    """Everything the running plugin holds (rebuilt on every start)."""

    ctx: Any
    cfg: RagConfig
    registry: Registry
    embedder: Embedder
    index: SyncedIndex
    searcher: Searcher
    worker: EmbedWorker
    indexer: store.ChainIndexer
    metrics: RagMetrics | None
    counter: Any  # tokenizers.Tokenizer for context budgets
    warm_thread: threading.Thread | None = None
    ivfflat: IvfflatWorker | None = None

    def count_tokens(self, text: str) -> int:
        return len(self.counter.encode(text, add_special_tokens=False).ids)


def _model_identity(e: Embedder) -> str:
    size = e.onnx_path.stat().st_size if e.onnx_path.exists() else 0
    return f"{e.onnx_path.name}:{size}:{e.dim}:{e.pooling}:{int(e.normalize)}:{e.max_tokens}"


class RagPlugin:
    """The rag plugin: hook implementations and the services other plugins and surfaces use
    (:class:`monmouth.interfaces.EmbedderSource`, :class:`monmouth.interfaces.TransactionRenderer`).

    Attributes:
        current: what the running plugin holds (``None`` while it is not started).
    """

    def __init__(self) -> None:
        self.current: RagState | None = None

    def state(self) -> RagState:
        """The running plugin's state.

        Raises:
            RuntimeError: the plugin is not started (not enabled, or failed to start).
        """
        if self.current is None:
            raise RuntimeError("the rag plugin is not running (enable it with [plugins.rag] enabled = true)")
        return self.current



    def get_embedder(self) -> Embedder | None:
        """The active :class:`~monmouth_rag.embedder.Embedder` (``embed(texts) -> (n, 384) float32``, unit rows;
        ``dim``), or ``None`` when the plugin is not started."""
        return self.current.embedder if self.current is not None else None

    def render_transaction(self, block: Block, index: int, labels: Mapping[bytes | str, str] | None = None) -> str:
        """The decoder's text for transaction ``index`` of ``block`` with its logs (the plugin's ABIs and labels when it
        runs, the bundled ones otherwise). ``labels``: extra ``{address: label}``, winning over the registry.

        Raises:
            IndexError: ``index`` is out of range.
        """
        reg = self.current.registry if self.current is not None else None
        return _decoder.render_transaction(block, index, labels, reg)

    def decode_transaction(self, block: Block, index: int, labels: Mapping[bytes | str, str] | None = None
                           ) -> _decoded.DecodedTx:
        """Structured decoding of one transaction: ``intent``, ``roles`` (address → roles), ``token``/``tokens``,
        ``call``, ``events``, ``transfers``...; ``.to_meta()`` gives the JSON form.

        Raises:
            IndexError: ``index`` is out of range.
        """
        reg = self.current.registry if self.current is not None else None
        return _decoder.decode_transaction(block, index, labels, reg)

    def search(self, query: str, k: int = 10, mode: str | None = None,
               filters: Filters | Mapping[str, Any] | None = None) -> list[Hit]:
        """Search the knowledge base (see :class:`~monmouth_rag.search.Searcher`). ``filters`` may be a
        :class:`~monmouth_rag.search.Filters` or a mapping of the HTTP API's filter fields.

        Raises:
            RuntimeError: the plugin is not running. ValueError: bad mode, k or filter.
        """
        s = self.state()
        mode = mode or s.cfg.mode
        f = filters if isinstance(filters, Filters) or filters is None else self._filters_from_mapping(filters)
        t0 = time.perf_counter()
        hits = s.searcher.search(query, k, mode, f)
        if s.metrics is not None:
            s.metrics.searches.labels(mode).inc()
            s.metrics.search_seconds.labels(mode).observe(time.perf_counter() - t0)
        return hits

    @staticmethod
    def _filters_from_mapping(m: Mapping[str, Any]) -> Filters:
        from .api import SearchFilters

        return SearchFilters(**m).to_filters()

    def context(self, query: str, max_tokens: int = 1500, filters: Filters | Mapping[str, Any] | None = None,
                mode: str | None = None, order: str = "relevance", candidates: int = 50) -> dict[str, Any]:
        """The best chunks for ``query`` packed into ``max_tokens`` (see :func:`~monmouth_rag.search.build_context`)."""
        s = self.state()
        f = filters if isinstance(filters, Filters) or filters is None else self._filters_from_mapping(filters)
        return build_context(s.searcher, s.count_tokens, query, max_tokens, filters=f, mode=mode or s.cfg.mode,
                             candidates=candidates, order=order)

    def add_document(self, doc_id: str, text: str, *, kind: str = "document", title: str | None = None,
                     meta: Mapping[str, Any] | None = None, markdown: bool = False,
                     timestamp: int | None = None) -> dict[str, Any]:
        """Add or replace document ``doc_id``: chunk it, record the chunks (FTS immediately, vectors by the worker).

        ``kind`` is ``document`` or ``memory`` (the memory plugin may index memories this way). Returns ``{"id",
        "chunks", "replaced"}``.

        Raises:
            ValueError: empty id or text, a bad kind, text that is not valid Unicode, or ``meta`` that is not plain
                finite JSON nested at most 32 levels (:func:`monmouth.limits.check_json_value`), naming the field.
            RuntimeError: the plugin is not running.
        """
        s = self.state()
        if not doc_id:
            raise ValueError("id: must not be empty")
        if not text.strip():
            raise ValueError("text: must not be empty")
        if kind not in ("document", "memory"):
            raise ValueError(f"kind: must be 'document' or 'memory' (got {kind!r})")
        check_text(doc_id, "id")
        check_text(text, "text")
        if title is not None:
            check_text(title, "title")
        if meta is not None:
            check_json_value(dict(meta), "meta")  # what every search that returns a chunk must encode again
        chunks = chunk_text(text, s.embedder.counter, s.cfg.chunk_tokens, s.cfg.chunk_overlap, markdown=markdown)
        with s.ctx.db.write() as conn:
            replaced = store.delete_document(conn, doc_id, kind)
            store.insert_chunks(conn, doc_id, chunks, kind=kind, title=title, meta=meta, timestamp=timestamp)
        if s.metrics is not None:
            s.metrics.docs.labels(kind).inc(len(chunks))
        s.worker.wake()
        return {"id": doc_id, "chunks": len(chunks), "replaced": replaced}

    def delete_document(self, doc_id: str, kind: str | None = None) -> int:
        """Delete document ``doc_id`` (every chunk, vector and index row). Returns the chunks removed (0: unknown
        id)."""
        s = self.state()
        with s.ctx.db.write() as conn:
            return store.delete_document(conn, doc_id, kind)

    def drain(self, timeout: float | None = None) -> int:
        """Embed everything pending now, on the calling thread (CLI, tests). Returns documents taken."""
        return self.state().worker.drain(timeout)

    def transaction(self, tx_hash: bytes) -> dict[str, Any] | None:
        """The indexed document of a transaction: ``{"text", "metadata", "provenance", "embedded"}`` or ``None``."""
        conn = self.state().ctx.db.reader()
        row = conn.execute("SELECT d.id, d.text, d.meta, d.block_number, d.block_hash, d.tx_index, d.log_index, "
                           "coalesce(i.has_vec, 0) FROM rag_docs d LEFT JOIN rag_index i ON i.id = d.id "
                           "WHERE d.tx_hash = ? AND d.kind = 'tx' ORDER BY d.id DESC LIMIT 1", (tx_hash,)).fetchone()
        if row is None:
            return None
        import json

        doc, text, meta, block, bhash, txi, logi, has_vec = row
        return {"id": doc, "text": text, "metadata": json.loads(meta),
                "provenance": {"block_number": block, "block_hash": hx(bhash), "tx_hash": hx(tx_hash),
                               "tx_index": txi, "log_index": logi}, "embedded": bool(has_vec)}

    def graph(self, address: bytes, depth: int = 1, limit: int = 50) -> dict[str, Any]:
        """The address graph around ``address`` (see :func:`monmouth_rag.graph.neighbourhood`)."""
        from .graph import neighbourhood

        s = self.state()
        return neighbourhood(s.ctx.db.reader(), address, depth=depth, limit=limit, registry=s.registry)



    @hookimpl
    def monmouth_config_model(self) -> type[RagConfig]:
        return RagConfig

    @hookimpl
    def monmouth_migrations(self, backend: str = "sqlite") -> Sequence[str]:
        return store.PG_MIGRATIONS if backend == "postgres" else store.MIGRATIONS

    @hookimpl
    def monmouth_backends(self) -> Sequence[str]:
        return ("sqlite", "postgres")

    @hookimpl
    def monmouth_trimmed_tables(self) -> Mapping[str, str | None]:
        return dict(store.TRIMMED)

    @hookimpl
    def monmouth_storage_copy(self, src: apsw.Connection, dst: Any) -> Sequence[str]:
        from .storagecopy import copy

        return copy(src, dst)

    @hookimpl
    def monmouth_startup(self, ctx: Any) -> None:
        cfg: RagConfig = ctx.config or RagConfig()
        origin = getattr(ctx.settings, "origin", None)
        if cfg.chunk_tokens > cfg.max_tokens - 2:
            raise ValueError(f"plugins.rag.chunk_tokens ({cfg.chunk_tokens}) must be at most max_tokens - 2 "
                             f"({cfg.max_tokens - 2})")
        if cfg.chunk_overlap >= cfg.chunk_tokens:
            raise ValueError(f"plugins.rag.chunk_overlap ({cfg.chunk_overlap}) must be below chunk_tokens")
        abi_dir = resolve_path(cfg.abi_dir, origin) if cfg.abi_dir else None
        registry = build_registry(abi_dir, cfg.labels)
        embedder = load_embedder(cfg, origin)
        if embedder.dim != store.DIM:
            raise ValueError(f"plugins.rag: the embedding model gives {embedder.dim} dimensions; the vector table "
                             f"holds {store.DIM} (all-MiniLM-L6-v2 size)")
        ident = _model_identity(embedder)
        with ctx.db.write() as conn:
            old = store.get_meta(conn, "model")
            if old is not None and old != ident:
                n = store.requeue_all(conn)
                log.warning("rag: embedding model changed (%s -> %s); %d documents queued for re-embedding", old,
                            ident, n)
            store.set_meta(conn, "model", ident)
            statements(ctx.db.backend).vector_index(conn, cfg.pg_knn)
            dropped = store.reconcile(conn)
            if dropped:
                log.info("rag: removed %d index rows of blocks reverted while the plugin was off", dropped)
        counter = load_tokenizer(resolve_path(cfg.context_tokenizer, origin)) if cfg.context_tokenizer \
            else embedder.counter
        index = open_index(cfg, getattr(ctx.db, "path", None), store.DIM)
        searcher = Searcher(ctx.db.reader, embedder.embed, index, ann_min_vectors=cfg.ann_min_vectors,
                            exact_max_candidates=cfg.exact_max_candidates, rrf_k=cfg.rrf_k, backend=ctx.db.backend,
                            pg_knn=cfg.pg_knn, pg_ef_search=cfg.pg_ef_search, pg_probes=cfg.pg_probes)
        metrics = _metrics_for(getattr(ctx, "metrics", None))

        def on_round(stored: int, seconds: float, backlog: int) -> None:
            if metrics is not None:
                metrics.embeddings.inc(stored)
                metrics.embed_seconds.observe(seconds)
                metrics.backlog.set(backlog)
                metrics.rate.set(worker.embeddings_per_s())

        worker = EmbedWorker(ctx.db, embedder.embed, batch=cfg.worker_batch, poll_interval=cfg.poll_interval,
                             stopping=ctx.stopping, on_round=on_round)
        indexer = store.ChainIndexer(registry, cfg.scope, address_set(cfg.watched), cfg.graph)
        st = RagState(ctx, cfg, registry, embedder, index, searcher, worker, indexer, metrics, counter)
        _decoded.set_active_registry(registry)
        self.current = st
        if cfg.worker and getattr(ctx, "role", "run") == "run":  # one embedding worker: `monmouth run`'s
            worker.start()
        if ctx.db.backend == "postgres" and cfg.pg_knn == "ivfflat" and getattr(ctx, "role", "run") == "run":
            st.ivfflat = IvfflatWorker(ctx.db)
            st.ivfflat.start()
        if searcher.sql.ann_in_memory and cfg.ann_min_vectors \
                and searcher.vector_count(ctx.db.reader()) >= cfg.ann_min_vectors:
            # Load the in-memory index in the background so the first search does not pay for it.
            def warm() -> None:
                try:
                    index.sync(ctx.db.reader())
                except Exception:
                    log.exception("rag: loading the vector index failed")

            st.warm_thread = threading.Thread(target=warm, name="monmouth-rag-index", daemon=True)
            st.warm_thread.start()

    @hookimpl
    def monmouth_shutdown(self, ctx: Any) -> None:
        st = self.current
        if st is None or st.ctx is not ctx:
            return
        st.worker.stop()
        if st.ivfflat is not None:
            # a build still running when the process exits is cancelled or finishes without its rename: either way
            # the next attempt drops rag_vec_ivfflat_new and builds again, and the old index serves meanwhile
            st.ivfflat.stop(timeout=5)
        if st.warm_thread is not None:
            st.warm_thread.join(60)
        save = getattr(st.index, "save", None)  # a persisted index (IVF, HNSW): the changes since its last save
        if callable(save) and (st.warm_thread is None or not st.warm_thread.is_alive()):
            try:
                save()
            except OSError as e:
                log.warning("%s (rebuilt or caught up at the next start)", e)
        _decoded.set_active_registry(None)
        self.current = None

    def _memory_agents(self, conn: apsw.Connection) -> frozenset[bytes]:
        """Agents of the plugin that offers an agent directory (:class:`monmouth.interfaces.AgentDirectory`: the
        memory plugin), as ``conn`` sees them; empty when none is enabled."""
        st = self.current
        directory = provider(st.ctx.host, AgentDirectory) if st is not None else None
        return address_set(directory.agent_addresses(conn)) if directory is not None else frozenset()

    @hookimpl
    def monmouth_block_applied(self, conn: apsw.Connection, block: Block, notification: Any) -> None:
        st = self.state()
        st.indexer.apply_block(conn, block, self._memory_agents(conn))

    @hookimpl
    def monmouth_block_reverted(self, conn: apsw.Connection, block: Block, notification: Any) -> None:
        store.revert_block(conn, block.number)

    @hookimpl
    def monmouth_notification_committed(self, notification: Any, head: Any) -> None:
        if self.current is not None:
            self.current.worker.wake()

    @hookimpl
    def monmouth_status(self) -> Mapping[str, Any] | None:
        st = self.current
        if st is None:
            return None
        out = st.worker.status()
        out.update({"scope": st.indexer.scope, "vector_index": self._vector_index_status(st),
                    "model": st.embedder.onnx_path.name, "dim": st.embedder.dim})
        if st.metrics is not None:
            st.metrics.backlog.set(out["backlog"])
            st.metrics.rate.set(out["embeddings_per_s"])
        return out

    @staticmethod
    def _vector_index_status(st: RagState) -> dict[str, Any]:
        """SQLite: the in-memory index (``ann_index``, loaded, live vectors; IVF: its cells, whether a rebuild runs
        beside it, and the rebuilds that failed). PostgreSQL: ``pg_knn``, and for
        IVFFlat its lists, the rows it was built for and its worker's failed builds."""
        if not st.searcher.sql.ann_in_memory:
            out: dict[str, Any] = {"pg_knn": st.cfg.pg_knn}
            if st.cfg.pg_knn == "ivfflat":
                conn = st.ctx.db.reader()
                out.update(lists=ivfflat_lists(conn), built_for_rows=ivfflat_rows(conn))
                if st.ivfflat is not None:
                    out.update(build_errors=st.ivfflat.errors, last_error=st.ivfflat.last_error)
            return out
        out = {"kind": st.cfg.ann_index, "loaded": st.index.loaded, "size": len(st.index)}
        if isinstance(st.index, IvfIndex):  # its cells, and a rebuild running beside it or failed
            out.update(cells=st.index.nlist, rebuilding=st.index.rebuild_running,
                       rebuild_errors=st.index.rebuild_errors)
        return out

    @hookimpl
    def monmouth_http_router(self) -> Any:
        from .api import make_router

        return make_router(self)

    @hookimpl
    def monmouth_access_rules(self) -> Sequence[Any]:
        from .access import RULES

        return RULES

    @hookimpl
    def monmouth_mcp_tools(self) -> Sequence[Any]:
        from .mcp_tools import tools_for

        return tools_for(self)

    @hookimpl
    def monmouth_register_commands(self, cli: Any) -> None:
        from .cli import rag_group

        cli.add_command(rag_group, "rag")


#: The instance the ``monmouth.plugins`` entry point names.
plugin = RagPlugin()

# The module as a plugin object (its hooks) and as the plugin's API (``monmouth_rag.plugin.search(...)``):
# ``plugin``'s bound methods.
globals().update(hook_functions(plugin))
state = plugin.state
get_embedder = plugin.get_embedder
render_transaction = plugin.render_transaction
decode_transaction = plugin.decode_transaction
search = plugin.search
context = plugin.context
add_document = plugin.add_document
delete_document = plugin.delete_document
drain = plugin.drain
transaction = plugin.transaction
graph = plugin.graph
