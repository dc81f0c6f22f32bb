"""HNSW vector index (faiss ``IndexHNSWSQ``, float16 storage) over ``rag_vec``, derived from SQLite and persisted
beside the database so a restart neither re-embeds nor rebuilds the graph.

Method: hierarchical navigable small-world graph (Malkov & Yashunin, "Efficient and robust approximate nearest
neighbor search using Hierarchical Navigable Small World graphs", IEEE TPAMI 2020) from faiss
(https://github.com/facebookresearch/faiss, MIT licence), inner product on unit vectors (= cosine similarity), the
vectors stored as IEEE float16 (``2 * dim`` bytes each) plus ``2 * M`` 32-bit links per vector on the base layer.

Invariants:

* SQLite is the source of truth. Row ``i`` of the graph is row ``i`` of the metadata arrays of
  :class:`~monmouth_rag.ann.SyncedIndex`; the index follows ``rag_changes`` (:meth:`sync`) before every search, so a
  reverted block's vectors (deleted from ``rag_vec`` with an ``OP_DEL`` change in the revert's own transaction) are
  tombstoned before the next search ranks anything. HNSW cannot unlink a node cheaply: deleted rows stay in the graph
  as tombstones that are never returned (every search passes a bitmap of the allowed rows to faiss); when more than a
  quarter of the rows are dead the graph is rebuilt from the live float16 vectors (no SQLite read, no embedding).
* Filters are exact. A filter is a boolean mask of allowed rows (kind, intent, block and time ranges, candidate ids
  from SQL). The graph search only returns allowed rows (faiss ``IDSelectorBitmap``) and widens its beam as the
  filter narrows (``ef / sqrt(selectivity)``, at most ``ef_max``: at 1/9 of the rows allowed, three times the
  unfiltered beam). When the allowed rows are few (at most
  ``exact_rows``) or a small share of the collection (below ``exact_fraction``), they are ranked exactly instead:
  a graph walk through mostly disallowed nodes costs more than scoring the allowed ones and can miss connected
  components. If the graph still returns fewer than ``k`` allowed rows, the exact ranking answers.
* Persistence: :meth:`save` writes the graph, the metadata arrays and ``seq`` (the last ``rag_changes.seq``
  applied) to one ``.npz`` file, atomically (temporary file, then rename). :meth:`load` reads it back when it is
  usable: same dimension and format, ``seq`` not ahead of the database, no ``rag_changes`` entry after ``seq``
  pruned; then it applies the changes since ``seq``, and checks that its live count equals the rows of ``rag_vec``
  (``rag_index.has_vec``). Otherwise (or if the file is unreadable, with a warning naming it) it rebuilds from
  ``rag_vec`` and saves.
"""

from __future__ import annotations

import json
import logging
import os
import time
import zipfile
from pathlib import Path

import apsw
import faiss
import numpy as np

from .ann import SyncedIndex, VectorIndex
from .config import RagConfig
from .store import all_rows, scalar

log = logging.getLogger(__name__)

#: version of the persisted file layout
FORMAT = 1


class HnswIndex(SyncedIndex):
    """HNSW index with exact filters and a persisted copy (thread-safe; see the module docstring).

    Args:
        dim: vector dimension.
        path: the persisted copy (``None``: never persisted).
        m: graph degree ``M`` (links per node on the upper layers; ``2 M`` on the base layer).
        ef_construction: beam width while inserting.
        ef_search: beam width while searching (at least ``2 k`` is used).
        ef_max: widest beam for filtered searches.
        exact_rows, exact_fraction: filters allowing at most ``exact_rows`` rows, or less than ``exact_fraction``
            of them, are ranked exactly.
        threads: OpenMP threads for building (searches use one thread each: requests run in parallel).
    """

    def __init__(self, dim: int = 384, path: Path | None = None, *, m: int = 16, ef_construction: int = 128,
                 ef_search: int = 2048, ef_max: int = 2048, exact_rows: int = 2_000, exact_fraction: float = 0.005,
                 threads: int | None = None) -> None:
        self.path = path
        self.m = m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self.ef_max = ef_max
        self.exact_rows = exact_rows
        self.exact_fraction = exact_fraction
        self.threads = threads or os.cpu_count() or 1
        #: ``seq`` of the persisted copy (``-1``: none written or read)
        self.saved_seq = -1
        #: seconds the last :meth:`load` took, and how (``"file"`` or ``"rebuild"``)
        self.load_seconds = 0.0
        self.loaded_from = ""
        super().__init__(dim)

    # ------------------------------------------------------------------------------------------ vector store
    def _new_graph(self) -> faiss.IndexHNSWSQ:
        g = faiss.IndexHNSWSQ(self.dim, faiss.ScalarQuantizer.QT_fp16, self.m, faiss.METRIC_INNER_PRODUCT)
        g.hnsw.efConstruction = self.ef_construction
        g.is_trained = True  # float16 needs no training
        return g

    def _reset(self, cap: int) -> None:
        super()._reset(cap)
        self.graph = self._new_graph()
        self._vec_view: np.ndarray | None = None

    def _store(self, rows: slice, vecs: np.ndarray) -> None:
        if self.graph.ntotal != rows.start:
            raise RuntimeError(f"rag: HNSW graph holds {self.graph.ntotal} rows, metadata {rows.start}")
        faiss.omp_set_num_threads(self.threads)
        try:
            self.graph.add(np.ascontiguousarray(vecs, np.float32))
        finally:
            faiss.omp_set_num_threads(1)
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

    # ------------------------------------------------------------------------------------------ persistence
    def save(self) -> bool:
        """Write the persisted copy if it is older than the index (atomically). Returns whether it wrote.

        Raises:
            OSError: the file cannot be written (the message names it).
        """
        if self.path is None:
            return False
        with self._lock:
            if not self.loaded or self.saved_seq == self.seq:
                return False
            t0 = time.perf_counter()
            n = self.n
            header = {"format": FORMAT, "dim": self.dim, "m": self.m, "seq": self.seq, "n": n, "dead": self.dead}
            tmp = self.path.with_name(self.path.name + ".tmp")
            try:
                with open(tmp, "wb") as f:
                    np.savez(f, header=np.frombuffer(json.dumps(header).encode(), np.uint8),
                             graph=faiss.serialize_index(self.graph),
                             **{c: getattr(self, c)[:n] for c in self._COLUMNS})
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except OSError as e:
                tmp.unlink(missing_ok=True)
                raise OSError(f"rag: cannot write the vector index {self.path}: {e.strerror or e}") from e
            self.saved_seq = self.seq
        log.info("rag: HNSW index saved to %s (%d rows, seq %d) in %.1f s", self.path, n, self.seq,
                 time.perf_counter() - t0)
        return True

    def _read(self, conn: apsw.Connection) -> bool:
        """Read the persisted copy if it is usable for ``conn``'s database (see the module docstring)."""
        if self.path is None or not self.path.exists():
            return False
        try:
            with np.load(self.path) as z:
                header = json.loads(bytes(z["header"]).decode())
                if header.get("format") != FORMAT or header.get("dim") != self.dim or header.get("m") != self.m:
                    log.info("rag: %s was written with other settings (%s); rebuilding", self.path, header)
                    return False
                seq = int(header["seq"])
                top, first = all_rows(conn, "SELECT coalesce(max(seq), 0), min(seq) FROM rag_changes")[0]
                if seq > top or (first is not None and first > seq + 1 and top > seq):
                    log.info("rag: %s (seq %d) does not follow this database's changes (%s..%d); rebuilding",
                             self.path, seq, first, top)
                    return False
                graph = faiss.deserialize_index(z["graph"])
                cols = {c: z[c] for c in self._COLUMNS}
        except (OSError, ValueError, KeyError, RuntimeError, EOFError, zipfile.BadZipFile) as e:
            log.warning("rag: cannot read the vector index %s (%s); rebuilding from rag_vec", self.path, e)
            return False
        n = int(header["n"])
        if graph.ntotal != n or any(len(a) != n for a in cols.values()):
            log.warning("rag: vector index %s is inconsistent (%d graph rows, %d metadata rows); rebuilding",
                        self.path, graph.ntotal, n)
            return False
        self._reset(max(n, 1024))
        self.graph = graph
        for c, a in cols.items():
            getattr(self, c)[:n] = a
        self.n, self.dead, self.seq, self.saved_seq = n, int(header["dead"]), seq, seq
        return True

    def load(self, conn: apsw.Connection) -> None:
        """Read the persisted copy and apply the changes since, or rebuild from ``rag_vec`` and save."""
        t0 = time.perf_counter()
        with self._lock:
            if self._read(conn):
                self.loaded = True
                self.sync(conn)
                want = int(scalar(conn, "SELECT count(*) FROM rag_index WHERE has_vec = 1"))
                if want == len(self) or (want == 0 and self._vec_rows(conn) == len(self)):
                    self.loaded_from = "file"
                    self.load_seconds = time.perf_counter() - t0
                    log.info("rag: HNSW index read from %s, %d vectors in %.1f s", self.path, len(self),
                             self.load_seconds)
                    return
                log.warning("rag: vector index %s holds %d live vectors, the database %d; rebuilding", self.path,
                            len(self), want)
            super().load(conn)
            self.loaded_from = "rebuild"
            self.load_seconds = time.perf_counter() - t0
            try:
                self.save()
            except OSError as e:
                log.warning("%s (the index is rebuilt at the next start)", e)

    @staticmethod
    def _vec_rows(conn: apsw.Connection) -> int:
        return int(scalar(conn, "SELECT count(*) FROM rag_vec"))

    # ------------------------------------------------------------------------------------------ search
    def _exact(self, q: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Exhaustive ranking of the ``allowed`` rows (``None``: every row) on the stored float16 vectors."""
        params = faiss.SearchParameters()
        bits = None
        if allowed is not None:
            bits = np.packbits(allowed, bitorder="little")
            params.sel = faiss.IDSelectorBitmap(self.n, faiss.swig_ptr(bits))
        scores, rows = self.graph.storage.search(q[None, :], k, params=params)
        del bits
        got = rows[0] >= 0
        return self.ids[rows[0][got]].copy(), scores[0][got].astype(np.float32)

    def search(self, q: np.ndarray, k: int, mask: np.ndarray | None = None, *,
               exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            n = self.n
            q = np.asarray(q, np.float32).reshape(self.dim)
            allowed = None if mask is None and self.dead == 0 else (self.alive[:n] if mask is None else mask)
            count = n if allowed is None else int(allowed.sum())
            if count == 0 or k <= 0:
                return np.zeros(0, np.int64), np.zeros(0, np.float32)
            if exact or count <= max(self.exact_rows, k) or count < self.exact_fraction * n:
                return self._exact(q, k, allowed)
            ef = max(self.ef_search, 2 * k)
            params = faiss.SearchParametersHNSW()
            bits = None
            if allowed is not None:
                ef = min(max(self.ef_max, 2 * k), int(ef * (n / count) ** 0.5))
                bits = np.packbits(allowed, bitorder="little")
                params.sel = faiss.IDSelectorBitmap(n, faiss.swig_ptr(bits))
            params.efSearch = ef
            scores, rows = self.graph.search(q[None, :], k, params=params)
            got = rows[0] >= 0
            if int(got.sum()) < min(k, count):
                return self._exact(q, k, allowed)
            r = rows[0][got]
            del bits
            return self.ids[r].copy(), scores[0][got].astype(np.float32)


def open_index(cfg: RagConfig, db_path: Path | None, dim: int) -> SyncedIndex:
    """The in-memory index ``cfg.ann_index`` names, for the database at ``db_path`` (the HNSW index is persisted as
    ``<db_path>.rag-hnsw.npz``; ``None``: not persisted)."""
    if cfg.ann_index == "binary":
        return VectorIndex(dim, candidates_per_k=cfg.ann_candidates_per_k)
    path = None if db_path is None else db_path.with_name(db_path.name + ".rag-hnsw.npz")
    return HnswIndex(dim, path, ef_search=cfg.ann_ef_search)
