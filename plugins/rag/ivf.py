"""Inverted-file vector index (faiss ``IndexIVFScalarQuantizer``, float16 codes) over ``rag_vec``, derived from SQLite
and persisted beside the database so a restart neither re-embeds nor retrains (``ann_index = "ivf"``, the default).

Method: the inverted file of Sivic & Zisserman ("Video Google", ICCV 2003) as faiss implements it for
nearest-neighbour search (Jégou, Douze & Schmid, "Product quantization for nearest neighbor search", IEEE TPAMI
2011; Johnson, Douze & Jégou, "Billion-scale similarity search with GPUs", 2017): k-means (faiss's own IVF
training, 25 iterations) splits the unit vectors into ``nlist`` cells; each vector is stored in its cell's list as
its offset from the cell's centroid in IEEE float16 (``2 * dim`` bytes); a search ranks the ``nlist`` centroids by
inner product (= cosine similarity) and scores every vector of the ``nprobe`` nearest cells on its stored copy
(exact up to float16 rounding).

Sizes and why: ``nlist`` is the power of two nearest ``4 sqrt(n)`` (faiss's guideline for collections up to a few
million), at most ``n / 39`` (k-means needs 39 points per centroid) and trained on at most ``64 nlist`` rows; a
search probes ``nlist / 16`` cells, at least 32, unless ``nprobe`` is set (1M vectors: 256 of 4,096 cells, about
6 % of the vectors; recall@10 0.999 on the benchmark's collection, ``bench/search.py``). A filtered search probes
``n / allowed`` times as many cells, so that as many allowed rows are in reach as without the filter (the allowed
nearest neighbours lie farther out), but at most a quarter of the cells or the cells of ``FILTERED_SCAN_ROWS``
rows, whichever is more: scanning a cell costs a bit test per disallowed row, and at 1M the full ``n / allowed``
would cost four times the unfiltered search. Below ``train_min`` rows there are no cells: the vectors are one flat
float16 array, ranked exactly.

Following SQLite, tombstones, exact filters and the persisted copy: :mod:`monmouth_rag.faissindex`. The cells are
trained once on the rows present and retrained when the collection has grown fourfold since (the cells would
otherwise hold 4x the rows each and searches would slow down); past a quarter dead rows, the lists are rebuilt
without them, on the same cells. Both rebuilds read the index's own float16 vectors (``DirectMap``), not SQLite.

A rebuild runs beside the index it replaces, on a thread of its own (``monmouth-rag-ivf-rebuild``; 1M vectors:
under two minutes on 2 cores, ``bench/search.py``): searches, adds and deletes go on meanwhile on the old index.
It takes the index's lock only to copy a chunk of vectors (:data:`REBUILD_CHUNK` rows; the rows added meanwhile
too, once the rows of the start are in) and, at the end, to add the last :data:`SWAP_ROWS` or fewer rows added
meanwhile and swap the new index in; rows deleted meanwhile stay tombstones in the new one.
Memory: both indexes for its duration. The rebuild after a load (:meth:`IvfIndex._loaded`) runs on the loading
thread, before the index serves.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from .cells import nlist_for
from .faissindex import FaissIndex

log = logging.getLogger(__name__)

_FP16 = faiss.ScalarQuantizer.QT_fp16

#: a filtered search may probe the cells of this many rows, or a quarter of the cells if that is more
FILTERED_SCAN_ROWS = 100_000
#: rows a rebuild copies from the serving index per hold of its lock (16,384: ~35 ms at 200k rows, 65,536 took 140)
REBUILD_CHUNK = 16_384
#: rows added during a rebuild that it adds to the new index under the lock, with the swap (~40 us a row at 1M);
#: more are copied a chunk at a time first
SWAP_ROWS = 1024
#: seconds after a failed rebuild before the next add or delete that finds one due starts another
REBUILD_RETRY_S = 600.0


class IvfIndex(FaissIndex):
    """IVF index with exact filters and a persisted copy (thread-safe; see the module docstring).

    Args:
        dim, path, exact_rows, exact_fraction, threads: see :class:`~monmouth_rag.faissindex.FaissIndex`.
        nprobe: cells probed by an unfiltered search (0: ``nlist / 16``, at least 32).
        train_min: fewest rows worth cells; below, the index is flat and every search exact.
        seed: k-means seed (the same rows give the same cells).
    """

    KIND = "IVF"

    def __init__(self, dim: int = 384, path: Path | None = None, *, nprobe: int = 0, train_min: int = 10_000,
                 exact_rows: int = 2_000, exact_fraction: float = 0.005, threads: int | None = None,
                 seed: int = 1234) -> None:
        self.nprobe = nprobe
        self.train_min = train_min
        self.seed = seed
        #: rows present when the cells were trained (0: not trained, the index is flat)
        self.trained_n = 0
        #: the rebuild running beside the index, if any (:meth:`wait_rebuilt`)
        self.rebuilding: threading.Thread | None = None
        #: rebuilds beside the index that failed, and ``time.monotonic()`` of the last failure
        self.rebuild_errors = 0
        self._failed_at = -REBUILD_RETRY_S
        self._generation = 0  # bumped by every reset (load): a rebuild of an older generation is dropped
        super().__init__(dim, path, exact_rows=exact_rows, exact_fraction=exact_fraction, threads=threads)

    @property
    def nlist(self) -> int:
        """Cells of the inverted file (0 while the index is flat)."""
        return int(self.graph.nlist) if self.trained_n else 0

    def _settings(self) -> dict[str, Any]:
        return {"kind": "ivf", "train_min": self.train_min}

    def _state(self) -> dict[str, Any]:
        return {"trained_n": self.trained_n}

    def _restore(self, header: dict[str, Any]) -> None:
        self.trained_n = int(header.get("trained_n", 0))

    # ------------------------------------------------------------------------------------------ vector store
    def _new_graph(self) -> faiss.Index:
        self.trained_n = 0
        return self._flat()

    def _flat(self) -> faiss.Index:
        """An empty flat index of float16 codes (searched exhaustively)."""
        return faiss.IndexScalarQuantizer(self.dim, _FP16, faiss.METRIC_INNER_PRODUCT)

    def _reset(self, cap: int) -> None:
        self._generation += 1
        super()._reset(cap)

    def _training_sample(self, rows: np.ndarray, nlist: int, generation: int) -> np.ndarray | None:
        """The vectors k-means trains ``nlist`` cells on: at most ``64 nlist`` of ``rows`` (float32, a copy), read a
        chunk per hold of the lock; ``None`` if the index was reloaded meanwhile (``generation``)."""
        rng = np.random.default_rng(self.seed)
        picked = np.sort(rng.choice(rows, min(len(rows), 64 * nlist), replace=False))
        out = np.empty((len(picked), self.dim), np.float32)
        for s in range(0, len(picked), REBUILD_CHUNK):
            with self._lock:
                if self._generation != generation:
                    return None
                out[s:s + REBUILD_CHUNK] = self._vectors_of(picked[s:s + REBUILD_CHUNK])
        return out

    def _cells(self, sample: np.ndarray, nlist: int) -> faiss.IndexIVFScalarQuantizer:
        """An empty inverted file whose ``nlist`` cells faiss's own k-means trained on ``sample``."""
        ivf = self._ivf(faiss.IndexFlatIP(self.dim), nlist)
        ivf.cp.seed = self.seed
        ivf.train(sample)
        return ivf

    def _ivf(self, quantizer: faiss.Index, nlist: int) -> faiss.IndexIVFScalarQuantizer:
        """An empty inverted file of float16 codes on the cells of ``quantizer``."""
        ivf = faiss.IndexIVFScalarQuantizer(quantizer, self.dim, nlist, _FP16, faiss.METRIC_INNER_PRODUCT)
        ivf.set_direct_map_type(faiss.DirectMap.Array)  # row -> (cell, offset): reconstruct for rebuilds
        return ivf

    def _vectors_of(self, rows: np.ndarray) -> np.ndarray:
        """float32 copies ``(len(rows), dim)`` of the stored float16 vectors of ``rows``."""
        if len(rows) == 0:
            return np.zeros((0, self.dim), np.float32)
        return self.graph.reconstruct_batch(np.ascontiguousarray(rows, np.int64))

    def _store(self, rows: slice, vecs: np.ndarray) -> None:
        if self.graph.ntotal != rows.start:
            raise RuntimeError(f"rag: IVF index holds {self.graph.ntotal} rows, metadata {rows.start}")
        with self._building():
            self.graph.add(np.ascontiguousarray(vecs, np.float32))

    def add(self, ids: Sequence[int], vecs: np.ndarray, kinds: Sequence[str], blocks: Sequence[int],
            timestamps: Sequence[int], intents: Sequence[str]) -> None:
        with self._lock:
            super().add(ids, vecs, kinds, blocks, timestamps, intents)
            if not self.loading:  # a load trains once, at the end (_loaded)
                self._retrain_if_due()

    def _loaded(self) -> None:
        self._retrain_if_due()

    def _retrain_if_due(self) -> None:
        n = self.n
        if (not self.trained_n and n >= self.train_min) or (self.trained_n and n >= 4 * self.trained_n):
            self._start_rebuild(retrain=True)

    def _compact(self) -> None:
        self._start_rebuild(retrain=False)

    def _start_rebuild(self, *, retrain: bool) -> None:
        """Rebuild on the calling thread while a load runs or before the index was loaded (it does not serve yet),
        else on a thread beside the index, unless one is running (a compaction due meanwhile waits for the next
        delete after it) or one failed less than :data:`REBUILD_RETRY_S` seconds ago."""
        if self.loading or not self.loaded:
            self._rebuild(retrain=retrain)
        elif not self.rebuild_running and time.monotonic() - self._failed_at >= REBUILD_RETRY_S:
            self.rebuilding = threading.Thread(target=self._rebuild_logged, kwargs={"retrain": retrain},
                                               name="monmouth-rag-ivf-rebuild", daemon=True)
            self.rebuilding.start()

    @property
    def rebuild_running(self) -> bool:
        """Whether a rebuild runs beside the index now."""
        t = self.rebuilding
        return t is not None and t.is_alive()

    def wait_rebuilt(self, timeout: float | None = None) -> bool:
        """Wait for the rebuild running beside the index, if any; returns whether none runs any more."""
        t = self.rebuilding
        if t is not None:
            t.join(timeout)
        return not self.rebuild_running

    def _rebuild_logged(self, *, retrain: bool) -> None:
        try:
            self._rebuild(retrain=retrain)
        except Exception:  # the old index keeps serving; an add or delete that finds a rebuild due tries again
            self.rebuild_errors += 1
            self._failed_at = time.monotonic()
            log.exception("rag: rebuilding the IVF index failed; the current index keeps serving (next attempt in "
                          "%.0f s at the earliest)", REBUILD_RETRY_S)

    def _rebuild(self, *, retrain: bool) -> None:
        """Build a new index of the live rows beside this one and swap it in: new cells (``retrain``; flat below
        ``train_min`` rows) or the same (see the module docstring for the locking)."""
        t0 = time.perf_counter()
        with self._lock:
            generation, first_new = self._generation, self.n  # rows from first_new on arrive during the build
            keep = np.flatnonzero(self.alive[:first_new])
            trained = retrain and len(keep) >= self.train_min
            quantizer = None  # a compaction of trained cells: a copy of them
            if trained:
                nlist = nlist_for(len(keep))
            elif not retrain and self.trained_n:
                quantizer, nlist = faiss.clone_index(self.graph.quantizer), self.nlist
        sample = self._training_sample(keep, nlist, generation) if trained else None
        if trained and sample is None:
            return  # the index was reloaded meanwhile
        with self._building():
            if sample is not None:
                new = self._cells(sample, nlist)
                del sample
            elif quantizer is not None:
                new = self._ivf(quantizer, nlist)
                new.is_trained = True  # the cells are; float16 codes need no training
            else:
                new = self._flat()
        # The live rows of the start, then the rows added since, a chunk per hold of the lock; the last few
        # (at most SWAP_ROWS) under the lock, with the swap.
        chunks = [keep[s:s + REBUILD_CHUNK] for s in range(0, len(keep), REBUILD_CHUNK)]
        added = first_new  # rows before this one are in ``new`` or in ``chunks``
        while True:
            with self._lock:
                if self._generation != generation:
                    return  # the index was reloaded meanwhile
                if not chunks and self.n - added > SWAP_ROWS:
                    chunks.append(np.arange(added, min(self.n, added + REBUILD_CHUNK), dtype=np.int64))
                    added += len(chunks[-1])
                if not chunks:  # the swap
                    tail = np.arange(added, self.n, dtype=np.int64)
                    if len(tail):
                        new.add(self._vectors_of(tail))
                    self._keep(np.concatenate([keep, np.arange(first_new, self.n, dtype=np.int64)]))
                    self.dead = self.n - int(self.alive[:self.n].sum())  # rows deleted meanwhile: tombstones
                    self.graph = new
                    if retrain:
                        self.trained_n = len(keep) if trained else 0
                    self.saved_seq = -1  # the persisted copy holds the old index: written at the next save
                    break
                vecs = self._vectors_of(chunks.pop(0))
            with self._building():
                new.add(vecs)
        log.info("rag: IVF index %s: %d live rows, %d cells, in %.1f s",
                 "retrained" if retrain else "rebuilt without deleted rows", len(self), self.nlist,
                 time.perf_counter() - t0)

    def vectors(self) -> np.ndarray:
        """The stored vectors, float16 ``(n, dim)`` (a copy)."""
        return self._vectors_of(np.arange(self.graph.ntotal)).astype(np.float16)

    # ------------------------------------------------------------------------------------------ search
    def _exact_search(self) -> tuple[faiss.Index, faiss.SearchParameters]:
        if not self.trained_n:
            return self.graph, faiss.SearchParameters()
        params = faiss.SearchParametersIVF()
        params.nprobe = self.nlist  # every cell: each allowed row is scored
        return self.graph, params

    def _approx_params(self) -> faiss.SearchParameters:
        return faiss.SearchParametersIVF() if self.trained_n else faiss.SearchParameters()

    def _approx(self, q: np.ndarray, k: int, allowed: np.ndarray | None, count: int,
                params: faiss.SearchParameters) -> tuple[np.ndarray, np.ndarray]:
        if self.trained_n:
            nlist = self.nlist
            nprobe = self.nprobe or max(32, nlist // 16)
            if allowed is not None:  # as many allowed rows in reach as unfiltered, within a bound
                bound = max(nlist // 4, int(FILTERED_SCAN_ROWS * nlist / self.n))
                nprobe = max(nprobe, min(bound, int(nprobe * self.n / count)))
            params.nprobe = min(nlist, nprobe)
        return self.graph.search(q[None, :], k, params=params)
