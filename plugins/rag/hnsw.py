"""HNSW vector index (faiss ``IndexHNSWSQ``, float16 storage) over ``rag_vec``, derived from SQLite and persisted
beside the database so a restart neither re-embeds nor rebuilds the graph (``ann_index = "hnsw"``).

Method: hierarchical navigable small-world graph (Malkov & Yashunin, "Efficient and robust approximate nearest
neighbor search using Hierarchical Navigable Small World graphs", IEEE TPAMI 2020) from faiss, inner product on unit
vectors (= cosine similarity), the vectors stored as IEEE float16 (``2 * dim`` bytes each) plus ``2 * M`` 32-bit
links per vector on the base layer.

Following SQLite, tombstones, exact filters and the persisted copy: :mod:`monmouth_rag.faissindex`. Specific to the
graph: HNSW cannot unlink a node cheaply, so past a quarter dead the graph is rebuilt from the live float16 vectors;
a filtered search widens its beam as the filter narrows (``ef / sqrt(selectivity)``, at most ``ef_max``: at 1/9 of
the rows allowed, three times the unfiltered beam), since a graph walk through mostly disallowed nodes needs a wider
beam to reach the allowed ones and can miss connected components.
"""

from __future__ import annotations

import logging
from pathlib import Path

import faiss
import numpy as np

from .faissindex import FaissIndex

log = logging.getLogger(__name__)


class HnswIndex(FaissIndex):
    """HNSW index with exact filters and a persisted copy (thread-safe; see the module docstring).

    Args:
        dim, path, exact_rows, exact_fraction, threads: see :class:`~monmouth_rag.faissindex.FaissIndex`.
        m: graph degree ``M`` (links per node on the upper layers; ``2 M`` on the base layer).
        ef_construction: beam width while inserting.
        ef_search: beam width while searching (at least ``2 k`` is used).
        ef_max: widest beam for filtered searches.
    """

    KIND = "HNSW"

    def __init__(self, dim: int = 384, path: Path | None = None, *, m: int = 16, ef_construction: int = 128,
                 ef_search: int = 2048, ef_max: int = 2048, exact_rows: int = 2_000, exact_fraction: float = 0.005,
                 threads: int | None = None) -> None:
        self.m = m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self.ef_max = ef_max
        super().__init__(dim, path, exact_rows=exact_rows, exact_fraction=exact_fraction, threads=threads)

    def _settings(self) -> dict[str, int]:
        return {"m": self.m}

    # ------------------------------------------------------------------------------------------ vector store
    def _new_graph(self) -> faiss.IndexHNSWSQ:
        g = faiss.IndexHNSWSQ(self.dim, faiss.ScalarQuantizer.QT_fp16, self.m, faiss.METRIC_INNER_PRODUCT)
        g.hnsw.efConstruction = self.ef_construction
        g.is_trained = True  # float16 needs no training
        return g

    def _reset(self, cap: int) -> None:
        super()._reset(cap)
        self._vec_view: np.ndarray | None = None

    def _store(self, rows: slice, vecs: np.ndarray) -> None:
        if self.graph.ntotal != rows.start:
            raise RuntimeError(f"rag: HNSW graph holds {self.graph.ntotal} rows, metadata {rows.start}")
        with self._building():
            self.graph.add(np.ascontiguousarray(vecs, np.float32))
        self._vec_view = None

    def vectors(self) -> np.ndarray:
        """The stored vectors, float16 ``(n, dim)``: a view of the graph's storage (valid until the next add)."""
        if self._vec_view is None or len(self._vec_view) != self.graph.ntotal:
            n = self.graph.ntotal
            codes = faiss.downcast_index(self.graph.storage).codes
            raw = faiss.rev_swig_ptr(codes.data(), n * self.dim * 2) if n else np.zeros(0, np.uint8)
            self._vec_view = np.asarray(raw).view(np.float16).reshape(n, self.dim)
        return self._vec_view

    def _compact(self) -> None:
        keep = np.flatnonzero(self.alive[:self.n])
        live = self.vectors()[keep].astype(np.float32)
        self._keep(keep)
        self.graph = self._new_graph()
        self._vec_view = None
        for s in range(0, len(live), 65_536):
            self._store(slice(s, s + len(live[s:s + 65_536])), live[s:s + 65_536])
        log.info("rag: HNSW graph rebuilt without deleted rows (%d live)", self.n)

    # ------------------------------------------------------------------------------------------ search
    def _exact_search(self) -> tuple[faiss.Index, faiss.SearchParameters]:
        return self.graph.storage, faiss.SearchParameters()  # the flat float16 storage under the graph

    def _approx_params(self) -> faiss.SearchParametersHNSW:
        return faiss.SearchParametersHNSW()

    def _approx(self, q: np.ndarray, k: int, allowed: np.ndarray | None, count: int,
                params: faiss.SearchParametersHNSW) -> tuple[np.ndarray, np.ndarray]:
        ef = max(self.ef_search, 2 * k)
        if allowed is not None:
            ef = min(max(self.ef_max, 2 * k), int(ef * (self.n / count) ** 0.5))
        params.efSearch = ef
        return self.graph.search(q[None, :], k, params=params)

