"""Recall by meaning (the rag plugin's embedder) or by keyed full-text search, and the embedding of items.

Vectors are stored AES-GCM encrypted (``memory_vectors``), so recall decrypts an agent's vectors into a matrix
kept in memory (:class:`VectorCache`). The cache is refreshed incrementally: a write marks the agent's entry
stale, and the next recall compares the stored ``(row id, nonce)`` pairs (a fresh nonce per encryption) with the
cached ones and decrypts only what changed. Query embeddings are cached by text.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import apsw
import msgpack
import numpy as np

from .crypto import AgentKey, aad
from .errors import MemoryRequestError
from .lattice import LRU
from .schema import all_rows

if TYPE_CHECKING:
    from .core import Memory

log = logging.getLogger(__name__)

EMBED_DIM = 384


class _Entry:
    __slots__ = ("fresh", "mat", "ns", "rows", "stamp")

    def __init__(self) -> None:
        self.stamp: Any = None
        self.fresh = False
        self.rows: dict[int, tuple[bytes, np.ndarray]] = {}  # n -> (nonce, vector)
        self.ns = np.zeros(0, np.int64)
        self.mat = np.zeros((0, EMBED_DIM), np.float32)


class VectorCache:
    """Decrypted embedding matrices of the most recently recalled agents (thread-safe).

    Args:
        size: how many agents are kept.
    """

    def __init__(self, size: int = 64) -> None:
        self._lru = LRU(size)
        self._lock = threading.Lock()

    def stale(self, agent: bytes) -> None:
        """Mark ``agent``'s entry stale (its vectors may have changed); the next :meth:`get` refreshes it."""
        e = self._lru.get_(agent)
        if e is not None:
            e.fresh = False

    def drop(self, agent: bytes | None = None) -> None:
        """Forget ``agent``'s entry (every entry when ``None``)."""
        if agent is None:
            with self._lru.lock:
                self._lru.clear()
        else:
            with self._lru.lock:
                self._lru.pop(agent, None)

    def get(self, conn: apsw.Connection, k: AgentKey, agent: bytes) -> tuple[np.ndarray, np.ndarray]:
        """``(row ids, matrix)`` of the agent's decrypted vectors (float32, shape ``(n, 384)``)."""
        stamp = conn.execute("SELECT count(*), max(n), min(n) FROM memory_vectors WHERE agent = ?", (agent,)).fetchone()
        with self._lock:
            e = self._lru.get_(agent)
            if e is not None and e.fresh and e.stamp == stamp:
                return e.ns, e.mat
            e = e or _Entry()
            stored: dict[int, bytes] = dict(all_rows(conn, "SELECT n, nonce FROM memory_vectors WHERE agent = ?",
                                                     (agent,)))
            changed = [n for n, nonce in stored.items() if n not in e.rows or e.rows[n][0] != nonce]
            gone = [n for n in e.rows if n not in stored]
            for n in gone:
                del e.rows[n]
            for i in range(0, len(changed), 500):
                chunk = changed[i:i + 500]
                for n, nonce, ct, item_id, version in conn.execute(
                        "SELECT v.n, v.nonce, v.ct, i.id, i.version FROM memory_vectors v JOIN memory_items i ON "
                        f"i.n = v.n WHERE v.n IN ({','.join('?' * len(chunk))})", chunk):
                    try:
                        vec = np.frombuffer(k.decrypt(nonce, ct, aad(agent, item_id, version)), dtype=np.float32)
                    except Exception:  # a vector of an older version (being re-embedded): skip
                        e.rows.pop(n, None)
                        continue
                    e.rows[n] = (nonce, vec)
            if changed or gone or e.stamp is None:
                ns = sorted(e.rows)
                e.ns = np.asarray(ns, dtype=np.int64)
                e.mat = np.vstack([e.rows[n][1] for n in ns]) if ns else np.zeros((0, EMBED_DIM), np.float32)
            e.stamp, e.fresh = stamp, True
            self._lru.put(agent, e)
            return e.ns, e.mat


def embedder(mem: Memory) -> Any:
    """The rag plugin's embedder when that plugin is enabled (and ``embed`` is on), else ``None``."""
    if not mem.config.embed:
        return None
    rag = mem.rag
    fn = getattr(rag, "get_embedder", None) if rag is not None else None
    try:
        return fn() if fn is not None else None
    except Exception as e:  # the rag plugin failing must not break recall: FTS5 still answers
        log.warning("rag embedder unavailable: %s", e)
        return None


_LIGHT = "i.n, i.created_at, i.expires_at, i.ttl_blocks, i.agent, i.id"


def recall(mem: Memory, agent: bytes, query: str, *, k: int = 10, kind: str | None = None,
           tags: Sequence[str] | None = None, from_block: int | None = None, to_block: int | None = None,
           since: float | None = None, until: float | None = None, recency_weight: float = 0.0,
           half_life_s: float | None = None, mode: str | None = None) -> dict[str, Any]:
    """See :meth:`Memory.recall <monmouth_memory.core.Memory.recall>`."""
    from .core import utf8  # core imports this module

    if not isinstance(query, str) or not query.strip():
        raise MemoryRequestError("query", "must be a non-empty string", 422)
    if len(utf8(query, "query")) > mem.config.max_content_bytes:
        raise MemoryRequestError("query", "too long", 413)
    if half_life_s is not None and not (math.isfinite(half_life_s) and half_life_s >= 1.0):
        raise MemoryRequestError("half_life_s", f"must be a number of seconds >= 1 (got {half_life_s!r})", 422)
    for name, t in (("since", since), ("until", until)):
        if t is not None and not math.isfinite(t):
            raise MemoryRequestError(name, f"must be a finite unix time (got {t!r})", 422)
    if not 1 <= k <= 1000:
        raise MemoryRequestError("k", "must be between 1 and 1000", 422)
    if not 0.0 <= recency_weight <= 1.0:  # NaN fails too
        raise MemoryRequestError("recency_weight", "must be between 0 and 1", 422)
    if mode not in (None, "vector", "fts"):
        raise MemoryRequestError("mode", "must be vector or fts", 422)
    mem._validate(kind, None, None, list(tags) if tags else None, None, None, None)
    mem.check_agent(agent)
    key = mem.key(agent)
    half = half_life_s or mem.config.recency_half_life_s
    emb = embedder(mem) if mode != "fts" else None
    if mode == "vector" and emb is None:
        raise MemoryRequestError("mode", "vector recall needs the rag plugin enabled", 422)
    conn = mem._read()
    where, args = mem._filters(key, agent, kind, tags, from_block, to_block, since, until)
    pool = max(k * 20, 200)
    cands: dict[int, float] = {}
    if emb is not None:
        used = "vector"
        ns, mat = mem._vec_cache.get(conn, key, agent)
        if len(ns):
            sims = mat @ _query_vector(mem, emb, query)
            top = min(len(ns), pool)
            idx = np.argpartition(-sims, top - 1)[:top] if top < len(ns) else np.arange(len(ns))
            cands = dict(zip(ns[idx].tolist(), np.maximum(sims[idx], 0.0).tolist(), strict=True))
    else:
        used = "fts"
        toks = key.token_list(query)
        if toks:
            match = " OR ".join(f'"{t}"' for t in toks)
            for n, score in conn.execute(
                    "SELECT f.rowid, bm25(memory_fts) FROM memory_fts f JOIN memory_items i ON i.n = f.rowid "
                    "WHERE memory_fts MATCH ? AND i.agent = ? ORDER BY rank LIMIT ?", (match, agent, pool)):
                cands[n] = -score
    if not cands:
        return {"mode": used, "results": []}
    best = max(cands.values()) or 1.0
    # Score on a few columns; read (and decrypt) whole rows only for the k results.
    rows = all_rows(conn, f"SELECT {_LIGHT} FROM memory_items i WHERE {' AND '.join(where)} AND i.n IN "
                          f"({','.join('?' * len(cands))})", (*args, *cands))
    now = time.time()
    scored = []
    for n, created, expires_at, ttl_b, a, item_id in rows:
        if (expires_at is not None and expires_at <= now) or (ttl_b and mem._leaf_expired(conn, a, item_id)):
            continue
        rel = cands[n] / best
        score = rel if not recency_weight else \
            (1 - recency_weight) * rel + recency_weight * 0.5 ** (max(now - created, 0.0) / half)
        scored.append((score, rel, n))
    scored.sort(key=lambda s: -s[0])
    scored = scored[:k]
    full = {r[0]: r for r in conn.execute(
        f"SELECT {mem._COLS} FROM memory_items WHERE n IN ({','.join('?' * len(scored))})", [s[2] for s in scored])}
    out = []
    for score, rel, n in scored:
        item = mem._item_json(conn, key, full[n])
        item["score"] = round(score, 6)
        item["relevance"] = round(rel, 6)
        out.append(item)
    return {"mode": used, "results": out}


def _query_vector(mem: Memory, emb: Any, query: str) -> np.ndarray:
    cache_key = (id(emb), query)
    q = mem._query_cache.get_(cache_key)
    if q is None:
        q = np.asarray(emb.embed([query]), dtype=np.float32)[0]
        mem._query_cache.put(cache_key, q)
    return q  # type: ignore[no-any-return]


def embed_pending(mem: Memory, batch: int = 64) -> int:
    """See :meth:`Memory.embed_pending <monmouth_memory.core.Memory.embed_pending>`."""
    emb = embedder(mem)
    if emb is None:
        return 0
    conn = mem._read()
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
            k = mem.keys.get(agent)
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
    with mem._write() as w:
        for n in gone:
            w.execute("DELETE FROM memory_embed_queue WHERE n = ?", (n,))
        for (n, item_id, agent, version, k), v in zip(keep, vecs, strict=True):
            cur = w.execute("SELECT id, version FROM memory_items WHERE n = ?", (n,)).fetchone()
            if cur is None or cur[0] != item_id:
                w.execute("DELETE FROM memory_embed_queue WHERE n = ?", (n,))
                continue
            if cur[1] != version:
                continue  # updated meanwhile: stays queued for the new version
            nonce, ct = k.encrypt(np.ascontiguousarray(v, dtype=np.float32).tobytes(), aad(agent, item_id, version))
            w.execute("INSERT OR REPLACE INTO memory_vectors (n, agent, nonce, ct) VALUES (?, ?, ?, ?)",
                      (n, agent, nonce, ct))
            w.execute("DELETE FROM memory_embed_queue WHERE n = ?", (n,))
            mem._vec_cache.stale(agent)
    mem.embedded += len(keep)
    return len(keep)
