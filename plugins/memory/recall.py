"""Recall by meaning (an embedder offered by another plugin) or by keyed full-text search, and the embedding of
items.

Vectors are stored AES-GCM encrypted (``memory_vectors``) and decrypted into matrices kept in memory
(:class:`~.vectors.VectorCache`). Query embeddings are cached by text.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgpack
import numpy as np

from monmouth.interfaces import Embedder

from . import dialect
from .agents import Agents, Counters
from .config import MemoryConfig
from .crypto import aad
from .errors import InvalidRequestError, TooLargeError
from .fields import utf8, validate_item_fields
from .items import COLUMNS, filters, item_json, leaf_expired
from .lattice import LRU
from .schema import all_rows
from .vectors import EMBED_DIM, VectorCache

log = logging.getLogger(__name__)

_LIGHT = "i.n, i.created_at, i.expires_at, i.ttl_blocks, i.agent, i.id"


class Recall:
    """Recall and embedding.

    Args:
        config: the ``[plugins.memory]`` section.
        db: the sidecar database: reads on ``db.reader()``.
        agents: the agent directory (checks and keys).
        vectors: the decrypted-vector cache.
        find_embedder: the embedder of the plugin that offers one (:class:`monmouth.interfaces.EmbedderSource`),
            or ``None``; asked at each use.
        write: opens one of the plugin's write transactions (:func:`.txn.write`).
        counters: ``embedded`` is counted here.
    """

    def __init__(self, config: MemoryConfig, db: Any, agents: Agents, vectors: VectorCache,
                 find_embedder: Callable[[], Embedder | None], write: Callable[[], Any], counters: Counters) -> None:
        self.config = config
        self.db = db
        self.agents = agents
        self.vectors = vectors
        self.find_embedder = find_embedder
        self.write = write
        self.counters = counters
        self.query_cache = LRU(256)

    def embedder(self) -> Embedder | None:
        """The offered embedder when ``embed`` is on, else ``None`` (also when finding it fails: FTS5 answers)."""
        if not self.config.embed:
            return None
        try:
            return self.find_embedder()
        except Exception as e:  # the other plugin failing must not break recall: FTS5 still answers
            log.warning("rag embedder unavailable: %s", e)
            return None

    def recall(self, agent: bytes, query: str, *, k: int = 10, kind: str | None = None,
               tags: Sequence[str] | None = None, from_block: int | None = None, to_block: int | None = None,
               since: float | None = None, until: float | None = None, recency_weight: float = 0.0,
               half_life_s: float | None = None, mode: str | None = None) -> dict[str, Any]:
        """See :meth:`Memory.recall <monmouth_memory.core.Memory.recall>` (the caller has indexed first)."""
        if not isinstance(query, str) or not query.strip():
            raise InvalidRequestError("query", "must be a non-empty string")
        if len(utf8(query, "query")) > self.config.max_content_bytes:
            raise TooLargeError("query", "too long")
        if half_life_s is not None and not (math.isfinite(half_life_s) and half_life_s >= 1.0):
            raise InvalidRequestError("half_life_s", f"must be a number of seconds >= 1 (got {half_life_s!r})")
        for name, t in (("since", since), ("until", until)):
            if t is not None and not math.isfinite(t):
                raise InvalidRequestError(name, f"must be a finite unix time (got {t!r})")
        if not 1 <= k <= 1000:
            raise InvalidRequestError("k", "must be between 1 and 1000")
        if not 0.0 <= recency_weight <= 1.0:  # NaN fails too
            raise InvalidRequestError("recency_weight", "must be between 0 and 1")
        if mode not in (None, "vector", "fts"):
            raise InvalidRequestError("mode", "must be vector or fts")
        validate_item_fields(self.config, kind, None, None, list(tags) if tags else None, None, None, None)
        self.agents.check(agent)
        key = self.agents.key(agent)
        half = half_life_s or self.config.recency_half_life_s
        emb = self.embedder() if mode != "fts" else None
        if mode == "vector" and emb is None:
            raise InvalidRequestError("mode", "vector recall needs the rag plugin enabled")
        conn = self.db.reader()
        where, args = filters(key, agent, kind, tags, from_block, to_block, since, until)
        pool = max(k * 20, 200)
        cands: dict[int, float] = {}
        if emb is not None:
            used = "vector"
            ns, mat = self.vectors.get(conn, key, agent)
            if len(ns):
                sims = mat @ self._query_vector(emb, query)
                top = min(len(ns), pool)
                idx = np.argpartition(-sims, top - 1)[:top] if top < len(ns) else np.arange(len(ns))
                cands = dict(zip(ns[idx].tolist(), np.maximum(sims[idx], 0.0).tolist(), strict=True))
        else:
            used = "fts"
            toks = key.token_list(query)
            if toks:
                cands.update(dialect.of(conn).fts_search(conn, agent, toks, pool))
        if not cands:
            return {"mode": used, "results": []}
        best = max(cands.values()) or 1.0
        # Score on a few columns; read (and decrypt) whole rows only for the k results.
        rows = all_rows(conn, f"SELECT {_LIGHT} FROM memory_items i WHERE {' AND '.join(where)} AND i.n IN "
                              f"({','.join('?' * len(cands))})", (*args, *cands))
        now = time.time()
        scored = []
        for n, created, expires_at, ttl_b, a, item_id in rows:
            if (expires_at is not None and expires_at <= now) or (ttl_b and leaf_expired(conn, a, item_id)):
                continue
            rel = cands[n] / best
            score = rel if not recency_weight else \
                (1 - recency_weight) * rel + recency_weight * 0.5 ** (max(now - created, 0.0) / half)
            scored.append((score, rel, n))
        scored.sort(key=lambda s: -s[0])
        scored = scored[:k]
        full = {r[0]: r for r in conn.execute(
            f"SELECT {COLUMNS} FROM memory_items WHERE n IN ({','.join('?' * len(scored))})", [s[2] for s in scored])}
        out = []
        for score, rel, n in scored:
            item = item_json(conn, key, full[n])
            item["score"] = round(score, 6)
            item["relevance"] = round(rel, 6)
            out.append(item)
        return {"mode": used, "results": out}

    def _query_vector(self, emb: Embedder, query: str) -> np.ndarray:
        cache_key = (id(emb), query)
        q = self.query_cache.get_(cache_key)
        if q is None:
            q = np.asarray(emb.embed([query]), dtype=np.float32)[0]
            self.query_cache.put(cache_key, q)
        return q  # type: ignore[no-any-return]

    def embed_pending(self, batch: int = 64) -> int:
        """See :meth:`Memory.embed_pending <monmouth_memory.core.Memory.embed_pending>` (the caller has indexed
        first)."""
        emb = self.embedder()
        if emb is None:
            return 0
        conn = self.db.reader()
        rows = all_rows(
            conn,
            "SELECT q.n, i.id, i.agent, i.version, i.nonce, i.ct FROM memory_embed_queue q "
            "LEFT JOIN memory_items i ON i.n = q.n ORDER BY q.n LIMIT ?", (batch,))
        if not rows:
            return 0
        texts, keep, gone = [], [], []
        for n, item_id, agent, version, nonce, ct in rows:
            if item_id is None:
                gone.append(n)
                continue
            try:
                k = self.agents.keys.get(agent)
                p = msgpack.unpackb(k.decrypt(nonce, ct, aad(agent, item_id, version)))
            except Exception:
                gone.append(n)
                continue
            if p["t"] != 0:
                gone.append(n)
                continue
            texts.append(p["c"].decode())
            keep.append((n, item_id, agent, version, k))
        vecs = np.asarray(emb.embed(texts), dtype=np.float32) if texts else np.zeros((0, EMBED_DIM), np.float32)
        with self.write() as w:
            for n in gone:
                w.execute("DELETE FROM memory_embed_queue WHERE n = ?", (n,))
            for (n, item_id, agent, version, k), v in zip(keep, vecs, strict=True):
                cur = w.execute("SELECT id, version FROM memory_items WHERE n = ?", (n,)).fetchone()
                if cur is None or cur[0] != item_id:
                    w.execute("DELETE FROM memory_embed_queue WHERE n = ?", (n,))
                    continue
                if cur[1] != version:
                    continue  # updated meanwhile: stays queued for the new version
                nonce, ct = k.encrypt(np.ascontiguousarray(v, dtype=np.float32).tobytes(),
                                      aad(agent, item_id, version))
                w.execute("INSERT INTO memory_vectors (n, agent, nonce, ct) VALUES (?, ?, ?, ?) ON CONFLICT (n) "
                          "DO UPDATE SET agent = excluded.agent, nonce = excluded.nonce, ct = excluded.ct",
                          (n, agent, nonce, ct))
                w.execute("DELETE FROM memory_embed_queue WHERE n = ?", (n,))
                self.vectors.stale(agent)
        self.counters.embedded += len(keep)
        return len(keep)
