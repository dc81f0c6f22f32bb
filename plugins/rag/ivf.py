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
without them, on the same cells. Both rebuilds read the index's own float16 vectors (``DirectMap``), not SQLite, and
hold the index's lock while they run (1M vectors: under two minutes on 2 cores, ``bench/search.py``).
"""

from __future__ import annotations

import logging
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
        return faiss.IndexScalarQuantizer(self.dim, _FP16, faiss.METRIC_INNER_PRODUCT)

    def _cells(self, rows: np.ndarray, nlist: int) -> faiss.IndexIVFScalarQuantizer:
        """An empty inverted file whose ``nlist`` cells faiss's own k-means trained on (at most ``64 nlist`` of)
        ``rows``."""
        rng = np.random.default_rng(self.seed)
        sample = np.sort(rng.choice(rows, min(len(rows), 64 * nlist), replace=False))
        ivf = self._ivf(faiss.IndexFlatIP(self.dim), nlist)
        ivf.cp.seed = self.seed
        ivf.train(self._vectors_of(sample))
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
            self._rebuild(retrain=True)

    def _compact(self) -> None:
        self._rebuild(retrain=False)

    def _rebuild(self, *, retrain: bool) -> None:
        """Move the live rows into a new index: new cells (``retrain``; flat below ``train_min`` rows) or the same."""
        t0 = time.perf_counter()
        keep = np.flatnonzero(self.alive[:self.n])
        with self._building():
            if retrain:
                new = self._cells(keep, nlist_for(len(keep))) if len(keep) >= self.train_min else self._new_graph()
            elif self.trained_n:
                new = self._ivf(faiss.clone_index(self.graph.quantizer), self.nlist)
                new.is_trained = True  # the cells are; float16 codes need no training
            else:
                new = self._new_graph()
            for s in range(0, len(keep), 65_536):
                new.add(self._vectors_of(keep[s:s + 65_536]))
        self._keep(keep)
        self.graph = new
        if retrain:
            self.trained_n = len(keep) if isinstance(new, faiss.IndexIVF) else 0
        log.info("rag: IVF index %s: %d live rows, %d cells, in %.1f s",
                 "retrained" if retrain else "rebuilt without deleted rows", self.n, self.nlist,
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
