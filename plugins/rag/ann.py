"""In-memory vector index over ``rag_vec``: a binary-quantised prefilter (Hamming distance on sign bits) followed by an
exact rerank, kept in step with SQLite through the ``rag_changes`` log.

SQLite stays the source of truth: this index is rebuilt from ``rag_vec`` when a process starts (nothing is
re-embedded) and then follows ``rag_changes`` (vector adds and deletes, in commit order), so it also sees vectors
written by other processes. A search first applies the changes committed since the last one.

Method: each unit vector ``x`` is reduced to the bits ``x - mu > 0`` (``dim/8`` bytes), where ``mu`` is the mean of
the stored vectors (sentence embeddings are anisotropic: centring makes every bit informative). The Hamming distance
between codes estimates the angle between vectors (Charikar 2002, sign random projections; here the projection is the
identity, as in "binary quantization" of embedding models). The ``C`` codes nearest to the query's code (``C`` grows
with the collection: ``max(1000, 40 k, n / 500)``) are reranked by exact cosine similarity on the stored vectors
(float16 in memory, ``2 * dim`` bytes per vector). Codes are stored word-major (one contiguous array per 64-bit word)
so the scan is a few streaming passes, and the ``C`` nearest are cut from a histogram of distances instead of a sort.
Metadata columns (kind, block, time, intent) are kept as arrays, so filters are boolean masks applied before the
prefilter.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import apsw
import numpy as np

from .decoded import INTENTS
from .store import OP_ADD, OP_DEL, all_rows, scalar

log = logging.getLogger(__name__)

KINDS = ("tx", "document", "memory")
_KIND_CODE = {k: i for i, k in enumerate(KINDS)}
_INTENT_CODE = {k: i + 1 for i, k in enumerate(INTENTS)}  # 0: none


def binary_codes(x: np.ndarray) -> np.ndarray:
    """Sign bits of ``x`` (shape ``(n, dim)``) packed into uint64 words: shape ``(n, ceil(dim / 64))``."""
    x = np.atleast_2d(x)
    bits = np.packbits(x > 0, axis=1, bitorder="little")
    pad = (-bits.shape[1]) % 8
    if pad:
        bits = np.pad(bits, ((0, 0), (0, pad)))
    return np.ascontiguousarray(bits).view(np.uint64)


def hamming(codes: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Hamming distances (uint16, shape ``(n,)``) between ``codes`` ``(n, w)`` and one code ``q`` ``(w,)``."""
    return np.bitwise_count(np.bitwise_xor(codes, q)).sum(axis=1, dtype=np.uint16)


def hamming_words(codes_t: np.ndarray, q: np.ndarray, n: int, workers: int = 1) -> np.ndarray:
    """Hamming distances (uint16, ``(n,)``) between word-major codes ``codes_t`` ``(w, cap)`` (first ``n`` columns)
    and one code ``q`` ``(w,)``: one streaming pass per word, no ``(n, w)`` temporaries. ``workers > 1`` splits the
    columns over threads (numpy releases the GIL in these loops)."""
    acc = np.zeros(n, np.uint16)

    def part(lo: int, hi: int) -> None:
        buf = np.empty(hi - lo, np.uint64)
        cnt = np.empty(hi - lo, np.uint8)
        out = acc[lo:hi]
        for w in range(codes_t.shape[0]):
            np.bitwise_xor(codes_t[w, lo:hi], q[w], out=buf)
            np.bitwise_count(buf, out=cnt)
            np.add(out, cnt, out=out)

    if workers <= 1 or n < 200_000:
        part(0, n)
        return acc
    bounds = np.linspace(0, n, workers + 1).astype(int)
    list(_pool(workers).map(lambda i: part(int(bounds[i]), int(bounds[i + 1])), range(workers)))
    return acc


def _any_equal(arr: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """``arr == v1 | arr == v2 ...`` (faster than ``np.isin`` for a few small codes)."""
    m = np.zeros(len(arr), bool)
    for v in values:
        m |= arr == v
    return m


_pools: dict[int, ThreadPoolExecutor] = {}


def _pool(workers: int) -> ThreadPoolExecutor:
    pool = _pools.get(workers)
    if pool is None:
        pool = _pools[workers] = ThreadPoolExecutor(workers, thread_name_prefix="monmouth-rag-ann")
    return pool


def nearest_by_histogram(dist: np.ndarray, c: int, limit: int) -> np.ndarray:
    """Indices of ``c`` smallest values of ``dist`` (small non-negative ints, at most ``limit``; larger values are
    excluded): all below the cut-off distance, then as many at it as needed."""
    hist = np.bincount(dist, minlength=limit + 2)[:limit + 1]
    cum = np.cumsum(hist)
    cut = int(np.searchsorted(cum, c))
    if cut > limit:
        return np.flatnonzero(dist <= limit)
    below = np.flatnonzero(dist < cut)
    at = np.flatnonzero(dist == cut)[:c - len(below)]
    return np.concatenate([below, at])


class SyncedIndex:
    """The part every in-memory vector index shares (thread-safe): row ids and metadata columns (kind, block, time,
    intent) as arrays, tombstones, the boolean filter :meth:`mask`, and following SQLite: :meth:`load` rebuilds from
    ``rag_vec`` and :meth:`sync` applies the ``rag_changes`` log (vector adds and deletes, in commit order).

    Subclasses store the vectors (row ``i`` of every array is vector ``i`` of the subclass's store) and implement
    :meth:`_store`, :meth:`search` and, when they hold per-row arrays beyond :attr:`_COLUMNS`, :meth:`_grow` and
    :meth:`_compact`.

    Attributes:
        seq: the last ``rag_changes.seq`` applied.
        loaded: whether :meth:`load` ran (or a persisted copy was read).
    """

    #: per-row arrays (first axis: row)
    _COLUMNS: tuple[str, ...] = ("ids", "block", "ts", "kind", "intent", "alive")

    def __init__(self, dim: int = 384) -> None:
        self.dim = dim
        self._lock = threading.RLock()
        self.loaded = False
        #: whether :meth:`load` is reading ``rag_vec`` (every row arrives through :meth:`add` first)
        self.loading = False
        self.seq = 0
        self._reset(1024)

    def _reset(self, cap: int) -> None:
        self.n = 0
        self.ids = np.zeros(cap, np.int64)
        self.block = np.zeros(cap, np.int64)
        self.ts = np.zeros(cap, np.int64)
        self.kind = np.zeros(cap, np.uint8)
        self.intent = np.zeros(cap, np.uint8)
        self.alive = np.zeros(cap, bool)
        self.dead = 0

    def __len__(self) -> int:
        return self.n - self.dead

    def loading_elsewhere(self) -> bool:
        """Whether another thread is loading the index now (not loaded yet, and its lock is taken: before
        :meth:`load` ends, only a load holds it)."""
        if self.loaded:
            return False
        if self._lock.acquire(blocking=False):
            self._lock.release()
            return False
        return True

    # -------------------------------------------------------------------------------------------- maintenance
    def _grow(self, extra: int) -> None:
        need = self.n + extra
        cap = len(self.ids)
        if need <= cap:
            return
        new = max(need, cap * 2)
        for name in self._COLUMNS:
            old = getattr(self, name)
            arr = np.zeros((new, *old.shape[1:]), old.dtype)
            arr[:self.n] = old[:self.n]
            setattr(self, name, arr)

    def _store(self, rows: slice, vecs: np.ndarray) -> None:
        """Store ``vecs`` (float32, ``(m, dim)``) as rows ``rows`` (called under the lock, after :meth:`_grow`)."""
        raise NotImplementedError

    def add(self, ids: Sequence[int], vecs: np.ndarray, kinds: Sequence[str], blocks: Sequence[int],
            timestamps: Sequence[int], intents: Sequence[str]) -> None:
        """Append vectors (shape ``(n, dim)``, unit norm) with their metadata."""
        m = len(ids)
        if m == 0:
            return
        with self._lock:
            self._grow(m)
            s = slice(self.n, self.n + m)
            self._store(s, np.asarray(vecs, np.float32).reshape(m, self.dim))
            self.ids[s] = ids
            self.block[s] = blocks
            self.ts[s] = timestamps
            self.kind[s] = [_KIND_CODE.get(k, 0) for k in kinds]
            self.intent[s] = [_INTENT_CODE.get(i, 0) for i in intents]
            self.alive[s] = True
            self.n += m

    def remove(self, ids: Sequence[int]) -> int:
        """Mark ``ids`` deleted; returns how many were live."""
        if not len(ids):
            return 0
        with self._lock:
            hit = np.isin(self.ids[:self.n], np.asarray(ids, np.int64)) & self.alive[:self.n]
            k = int(hit.sum())
            self.alive[:self.n][hit] = False
            self.dead += k
            if self.dead > 1024 and self.dead > self.n // 4:
                self._compact()
            return k

    def _compact(self) -> None:
        """Drop the deleted rows (subclasses holding vectors elsewhere move them too, with the same ``keep``)."""
        keep = np.flatnonzero(self.alive[:self.n])
        self._keep(keep)

    def _keep(self, keep: np.ndarray) -> None:
        for name in self._COLUMNS:
            arr = getattr(self, name)
            arr[:len(keep)] = arr[keep]
        self.n = len(keep)
        self.alive[self.n:] = False
        self.dead = 0

    def _loaded(self) -> None:
        """Called under the lock once :meth:`load` has read every row."""

    def _synced(self) -> None:
        """Called under the lock after :meth:`sync` applied changes."""

    _COLS = "rowid, embedding, kind, block_number, timestamp, intent"

    def _ingest_rows(self, rows: list[tuple]) -> None:
        if not rows:
            return
        vecs = np.frombuffer(b"".join(r[1] for r in rows), np.float32).reshape(len(rows), self.dim)
        self.add([r[0] for r in rows], vecs, [r[2] for r in rows], [r[3] for r in rows], [r[4] for r in rows],
                 [r[5] for r in rows])

    def load(self, conn: apsw.Connection) -> None:
        """Rebuild from ``rag_vec`` (one consistent read snapshot)."""
        t0 = time.perf_counter()
        with self._lock:
            self._reset(1024)
            self.loading = True  # until every row is in: subclasses may defer work to _loaded
            conn.execute("BEGIN")
            try:
                self.seq = int(scalar(conn, "SELECT coalesce(max(seq), 0) FROM rag_changes"))
                batch: list[tuple] = []
                for row in conn.execute(f"SELECT {self._COLS} FROM rag_vec"):
                    batch.append(row)
                    if len(batch) >= 20_000:
                        self._ingest_rows(batch)
                        batch = []
                self._ingest_rows(batch)
            finally:
                conn.execute("COMMIT")
                self.loading = False
            self._loaded()
            self.loaded = True
        log.info("rag: vector index loaded, %d vectors in %.1f s", len(self), time.perf_counter() - t0)

    def sync(self, conn: apsw.Connection) -> int:
        """Apply the ``rag_changes`` committed since the last call (loading first if needed). Returns how many
        changes were applied."""
        with self._lock:
            if not self.loaded:
                self.load(conn)
                return 0
            conn.execute("BEGIN")
            try:
                changes = all_rows(conn, "SELECT seq, id, op FROM rag_changes WHERE seq > ? ORDER BY seq", (self.seq,))
                if not changes:
                    return 0
                if changes[0][0] != self.seq + 1:
                    # entries we never saw were pruned: start over
                    conn.execute("COMMIT")
                    self.load(conn)
                    return len(changes)
                final: dict[int, int] = {}
                for _seq, doc, op in changes:
                    final[doc] = op
                dels = [d for _s, d, op in changes if op == OP_DEL]
                adds = [d for d, op in final.items() if op == OP_ADD]
                rows: list[tuple] = []
                for i in range(0, len(adds), 500):
                    part = adds[i:i + 500]
                    rows += all_rows(
                        conn, f"SELECT {self._COLS} FROM rag_vec WHERE rowid IN ({','.join('?' * len(part))})", part
                    )
                self.seq = changes[-1][0]
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")
            # a re-added id (re-embedding) replaces its old vector
            self.remove(dels + [r[0] for r in rows])
            self._ingest_rows(rows)
            self._synced()
            return len(changes)

    # -------------------------------------------------------------------------------------------- search
    def mask(self, *, kinds: Sequence[str] | None = None, intents: Sequence[str] | None = None,
             block_from: int | None = None, block_to: int | None = None, time_from: int | None = None,
             time_to: int | None = None, ids: Sequence[int] | None = None) -> np.ndarray:
        """A boolean mask over the stored rows (live rows matching every given filter)."""
        n = self.n
        m = self.alive[:n].copy()
        if kinds is not None:
            m &= _any_equal(self.kind[:n], [_KIND_CODE[k] for k in kinds if k in _KIND_CODE])
        if intents is not None:
            m &= _any_equal(self.intent[:n], [_INTENT_CODE[i] for i in intents if i in _INTENT_CODE])
        if block_from is not None or block_to is not None:
            m &= self.block[:n] >= max(0, block_from or 0)
            if block_to is not None:
                m &= self.block[:n] <= block_to
        if time_from is not None:
            m &= self.ts[:n] >= time_from
        if time_to is not None:
            m &= self.ts[:n] <= time_to
        if ids is not None:
            m &= np.isin(self.ids[:n], np.asarray(ids, np.int64))
        return m

    def search(self, q: np.ndarray, k: int, mask: np.ndarray | None = None, *,
               exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best rows for unit query ``q`` (shape ``(dim,)``).

        Args:
            mask: rows allowed (from :meth:`mask`); ``None`` allows every live row.
            exact: rank every allowed row exactly.

        Returns:
            ``(ids, scores)``: int64 ids and float32 cosine similarities, best first.
        """
        raise NotImplementedError


class VectorIndex(SyncedIndex):
    """The binary-quantised index (see the module docstring).

    Args:
        dim: vector dimension.
        min_candidates: fewest candidates handed to the rerank.
        candidates_per_k: candidates per wanted result.
        candidates_fraction: candidates per stored vector; ``C = max(min_candidates, k * candidates_per_k,
            n * candidates_fraction)``.
    """

    _COLUMNS = (*SyncedIndex._COLUMNS, "vecs")

    def __init__(self, dim: int = 384, *, min_candidates: int = 1000, candidates_per_k: int = 40,
                 candidates_fraction: float = 1 / 500) -> None:
        self.candidates_fraction = candidates_fraction
        #: threads for the Hamming scan of large collections
        self.workers = min(4, os.cpu_count() or 1)
        self.center = np.zeros(dim, np.float32)
        self._centered_at = 0
        self.words = (dim + 63) // 64
        self.min_candidates = min_candidates
        self.candidates_per_k = candidates_per_k
        super().__init__(dim)

    def _reset(self, cap: int) -> None:
        super()._reset(cap)
        self.codes = np.zeros((self.words, cap), np.uint64)  # word-major
        self.vecs = np.zeros((cap, self.dim), np.float16)

    def _grow(self, extra: int) -> None:
        cap = len(self.ids)
        super()._grow(extra)
        if len(self.ids) != cap:
            codes = np.zeros((self.words, len(self.ids)), np.uint64)
            codes[:, :self.n] = self.codes[:, :self.n]
            self.codes = codes

    def _store(self, rows: slice, vecs: np.ndarray) -> None:
        self.vecs[rows] = vecs
        self.codes[:, rows] = binary_codes(vecs - self.center).T

    def _keep(self, keep: np.ndarray) -> None:
        self.codes[:, :len(keep)] = self.codes[:, keep]
        super()._keep(keep)

    def recenter(self) -> None:
        """Recompute the centre ``mu`` from the live vectors and re-derive every code (done after a load, and when
        the collection has doubled since the last centring)."""
        with self._lock:
            n = self.n
            if n == 0:
                return
            live = self.alive[:n]
            mu = np.zeros(self.dim, np.float64)
            step = 65_536
            for s in range(0, n, step):
                e = min(s + step, n)
                mu += self.vecs[s:e][live[s:e]].astype(np.float32).sum(axis=0, dtype=np.float64)
            self.center = (mu / max(int(live.sum()), 1)).astype(np.float32)
            for s in range(0, n, step):
                e = min(s + step, n)
                self.codes[:, s:e] = binary_codes(self.vecs[s:e].astype(np.float32) - self.center).T
            self._centered_at = n

    _loaded = recenter

    def _synced(self) -> None:
        if self.n >= 10_000 and self.n > 2 * self._centered_at:
            self.recenter()

    # -------------------------------------------------------------------------------------------- search
    def search(self, q: np.ndarray, k: int, mask: np.ndarray | None = None, *,
               candidates: int | None = None, exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best rows for unit query ``q`` (shape ``(dim,)``).

        Args:
            mask: rows allowed (from :meth:`mask`); ``None`` allows every live row.
            candidates: prefilter size (default: see the class docstring).
            exact: skip the prefilter (rank every allowed row exactly).

        Returns:
            ``(ids, scores)``: int64 ids and float32 cosine similarities, best first.
        """
        with self._lock:
            n = self.n
            q = np.asarray(q, np.float32).reshape(self.dim)
            allowed = self.alive[:n] if mask is None else mask
            count = int(allowed.sum())
            if count == 0 or k <= 0:
                return np.zeros(0, np.int64), np.zeros(0, np.float32)
            c = candidates or max(self.min_candidates, k * self.candidates_per_k, int(n * self.candidates_fraction))
            if exact or count <= c:
                rows = np.flatnonzero(allowed)
            else:
                qcode = binary_codes((q - self.center)[None, :])[0]
                dist = hamming_words(self.codes, qcode, n, self.workers)
                if count < n:
                    dist[~allowed] = self.dim + 1
                rows = nearest_by_histogram(dist, c, self.dim)
            # einsum, not BLAS: a matrix-vector product this small is dominated by BLAS thread start-up
            scores = np.einsum("ij,j->i", self.vecs[rows].astype(np.float32), q)
            kk = min(k, len(rows))
            top = np.argpartition(-scores, kk - 1)[:kk] if kk < len(rows) else np.arange(len(rows))
            top = top[np.argsort(-scores[top], kind="stable")]
            return self.ids[rows[top]].copy(), scores[top]
