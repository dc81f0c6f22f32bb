"""The background embedding worker: takes pending documents, embeds them in length-bucketed batches (identical texts
once, recent texts from a cache), and stores the vectors with guarded writes (see
:func:`monmouth_rag.store.store_vectors`). It runs off the engine's commit path, on its own thread and connection.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

import numpy as np

from monmouth.store import Database
from monmouth.worker import BackgroundWorker

from .store import PendingDoc, counts, prune_changes, store_vectors, take_pending, text_key

log = logging.getLogger(__name__)


#: Texts embedded per call within a round; a stop requested meanwhile ends the round after the current slice.
STOP_CHECK_TEXTS = 32


class EmbedWorker(BackgroundWorker):
    """Embeds pending documents until stopped (a :class:`monmouth.worker.BackgroundWorker`: woken after every
    committed notification and document ingest, idle otherwise, backing off after a failed round).

    Args:
        db: the database (the worker uses its own per-thread connection through ``db.reader()``/``db.write()``).
        embed: texts → unit vectors ``(n, dim)`` float32.
        batch: pending documents per round.
        poll_interval: seconds to sleep when idle (``wake()`` ends the sleep early).
        stopping: set to stop.
        on_round: called with ``(stored, seconds, backlog)`` after each round (metrics).
        cache_size: recently embedded texts kept (by sha1) so that a text seen again is not re-embedded.
    """

    def __init__(self, db: Database, embed: Callable[[list[str]], np.ndarray], *, batch: int = 256,
                 poll_interval: float = 1.0, stopping: threading.Event | None = None,
                 on_round: Callable[[int, float, int], None] | None = None, cache_size: int = 4096) -> None:
        super().__init__("monmouth-rag-embed", idle_s=poll_interval)
        if stopping is not None:
            self.stopping = stopping
        self.db = db
        self.embed = embed
        self.batch = batch
        self.on_round = on_round
        self._cache: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._recent: deque[tuple[float, int]] = deque()
        self.stored_total = 0
        self._rounds = 0

    # ------------------------------------------------------------------------------------------------ work
    def _vectors(self, docs: list[PendingDoc]) -> tuple[list[PendingDoc], np.ndarray]:
        """The documents of ``docs`` that have a vector now, and their vectors (``(n, dim)`` float32, row ``i`` for
        document ``i``): all of them, unless a stop cut the round short (the texts are embedded STOP_CHECK_TEXTS at
        a time, so that a shutdown waits for one slice, not a round).

        The round's texts not cached are embedded shortest first (characters), so each STOP_CHECK_TEXTS slice holds
        texts of similar length and the embedder's length buckets (``batch_size``) are padded little: in pending
        order a slice mixes short and long texts, and at ``batch_size`` >= 32 each ONNX run was padded to the
        longest of 32 arbitrary texts (``bench/embed.py``, whose reference forms the batches shortest first and checks
        the worker ran the same: worker / raw onnxruntime was 0.51-0.57 at batch 32 and 64 and 0.77 at batch 8 in
        pending order, 0.98-1.00 shortest first, one thread)."""
        keys = [text_key(d.text) for d in docs]
        todo: dict[bytes, str] = {}
        for k, d in zip(keys, docs, strict=True):
            if k not in self._cache and k not in todo:
                todo[k] = d.text
        pending = sorted(todo.items(), key=lambda kv: len(kv[1]))
        for start in range(0, len(pending), STOP_CHECK_TEXTS):
            if start and self.stopping.is_set():
                break
            part = pending[start:start + STOP_CHECK_TEXTS]
            for (k, _), v in zip(part, self.embed([t for _, t in part]), strict=True):
                self._cache[k] = v
        done = [i for i, k in enumerate(keys) if k in self._cache]
        if not done:
            return [], np.zeros((0, 0), dtype=np.float32)
        out = np.stack([self._cache[keys[i]] for i in done])
        for i in done:
            self._cache.move_to_end(keys[i])
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return [docs[i] for i in done], out

    def step(self) -> int:
        """One round: embed and store up to ``batch`` pending documents. Returns how many were taken."""
        docs = take_pending(self.db.reader(), self.batch)
        if not docs:
            return 0
        t0 = time.perf_counter()
        docs, vecs = self._vectors(docs)
        if not docs:
            return 0
        with self.db.write() as conn:
            stored = store_vectors(conn, docs, vecs)
        dt = time.perf_counter() - t0
        self.stored_total += stored
        now = time.monotonic()
        self._recent.append((now, stored))
        while self._recent and now - self._recent[0][0] > 60:
            self._recent.popleft()
        self._rounds += 1
        if self._rounds % 1000 == 0:
            with self.db.write() as conn:
                prune_changes(conn)
        if self.on_round is not None:
            self.on_round(stored, dt, self.backlog())
        return len(docs)

    def drain(self, timeout: float | None = None) -> int:
        """Run rounds on the calling thread until nothing is pending (or ``timeout`` seconds). Returns documents
        taken."""
        t0 = time.monotonic()
        total = 0
        while timeout is None or time.monotonic() - t0 < timeout:
            n = self.step()
            total += n
            if n == 0:
                break
        return total

    # ------------------------------------------------------------------------------------------------ figures
    def backlog(self) -> int:
        return int(self.db.reader().execute("SELECT count(*) FROM rag_pending").fetchone()[0])

    def embeddings_per_s(self) -> float:
        """Vectors stored per second over the last minute (0 when idle that long)."""
        if not self._recent:
            return 0.0
        span = max(time.monotonic() - self._recent[0][0], 1.0)
        return sum(n for _, n in self._recent) / span

    def status(self) -> dict[str, Any]:
        c = counts(self.db.reader())
        return {**c, "embeddings_per_s": round(self.embeddings_per_s(), 2), "worker_running": self.running,
                "worker_errors": self.errors, **({"worker_last_error": self.last_error} if self.last_error else {})}
