"""The part the faiss-backed vector indexes share (:mod:`monmouth_rag.ivf`, :mod:`monmouth_rag.hnsw`): vectors kept
in a faiss index (https://github.com/facebookresearch/faiss, MIT licence) as IEEE float16, exact filters, and a copy
persisted beside the database so a restart neither re-embeds nor rebuilds.

Invariants:

* SQLite is the source of truth. Row ``i`` of the faiss index is row ``i`` of the metadata arrays of
  :class:`~monmouth_rag.ann.SyncedIndex`; the index follows ``rag_changes`` (``sync``) before every search, so a
  reverted block's vectors (deleted from ``rag_vec`` with an ``OP_DEL`` change in the revert's own transaction) are
  tombstoned before the next search ranks anything. Deleted rows stay in the faiss index as tombstones that are never
  returned (every search passes a bitmap of the allowed rows to faiss); when more than a quarter of the rows are dead
  the subclass rebuilds without them from its own float16 vectors (no SQLite read, no embedding).
* Filters are exact. A filter is a boolean mask of allowed rows (kind, intent, block and time ranges, candidate ids
  from SQL). The approximate search only returns allowed rows (faiss ``IDSelectorBitmap``). When the allowed rows are
  few (at most ``exact_rows``) or a small share of the collection (below ``exact_fraction``), they are ranked
  exactly instead, as they are when the approximate search returns fewer than ``k`` allowed rows.
* Persistence: :meth:`FaissIndex.save` writes the faiss index, the metadata arrays and ``seq`` (the last
  ``rag_changes.seq`` applied) to one ``.npz`` file, atomically (temporary file, then rename).
  :meth:`FaissIndex.load` reads it back when it is usable: same dimension, kind and settings, ``seq`` not ahead of
  the database, no ``rag_changes`` entry after ``seq`` pruned; then it applies the changes since ``seq``, and checks
  that its live count equals the rows of ``rag_vec`` (``rag_index.has_vec``). Otherwise (or if the file is
  unreadable, with a warning naming it) it rebuilds from ``rag_vec`` and saves.
"""

from __future__ import annotations

import json
import logging
import os
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import apsw
import faiss
import numpy as np

from .ann import SyncedIndex
from .store import all_rows, scalar

log = logging.getLogger(__name__)

#: version of the persisted file layout
FORMAT = 1


class FaissIndex(SyncedIndex):
    """A :class:`~monmouth_rag.ann.SyncedIndex` whose vectors live in ``self.graph``, a faiss index (thread-safe).

    Subclasses set :attr:`KIND` and implement :meth:`_new_graph`, :meth:`_store`, :meth:`_approx_params`,
    :meth:`_approx`, :meth:`_exact_search`, :meth:`vectors` and :meth:`_compact`; :meth:`_settings` and
    :meth:`_state` name what the persisted copy must agree on and what it carries besides the index.

    Args:
        dim: vector dimension.
        path: the persisted copy (``None``: never persisted).
        exact_rows, exact_fraction: filters allowing at most ``exact_rows`` rows, or less than ``exact_fraction``
            of them, are ranked exactly.
        threads: OpenMP threads for building (searches use one thread each: requests run in parallel).
    """

    #: the index's name in logs and in the persisted copy
    KIND = ""

    def __init__(self, dim: int = 384, path: Path | None = None, *, exact_rows: int = 2_000,
                 exact_fraction: float = 0.005, threads: int | None = None) -> None:
        self.path = path
        self.exact_rows = exact_rows
        self.exact_fraction = exact_fraction
        self.threads = threads or os.cpu_count() or 1
        #: ``seq`` of the persisted copy (``-1``: none written or read)
        self.saved_seq = -1
        #: seconds the last :meth:`load` took, and how (``"file"`` or ``"rebuild"``)
        self.load_seconds = 0.0
        self.loaded_from = ""
        super().__init__(dim)

    # ------------------------------------------------------------------------------------------ for subclasses
    def _new_graph(self) -> Any:
        """An empty faiss index for this class's settings."""
        raise NotImplementedError

    def _settings(self) -> dict[str, Any]:
        """Header fields a persisted copy must carry with these values to be read back."""
        return {}

    def _state(self) -> dict[str, Any]:
        """Header fields saved with the index and handed back to :meth:`_restore` when it is read."""
        return {}

    def _restore(self, header: dict[str, Any]) -> None:
        """Take back the :meth:`_state` fields of a persisted copy's header."""

    def _approx_params(self) -> Any:
        """Fresh faiss search parameters for :meth:`_approx` (the bitmap is added to them)."""
        raise NotImplementedError

    def _approx(self, q: np.ndarray, k: int, allowed: np.ndarray | None, count: int,
                params: Any) -> tuple[np.ndarray, np.ndarray]:
        """Approximate search: faiss's ``(scores, rows)`` for one query, rows outside ``allowed`` never returned
        (``params`` already carries their bitmap; ``count``: how many rows are allowed)."""
        raise NotImplementedError

    def _exact_search(self) -> tuple[Any, Any]:
        """The faiss index and fresh search parameters that rank every row exactly (the bitmap is added to them)."""
        raise NotImplementedError

    def vectors(self) -> np.ndarray:
        """The stored vectors, float16 ``(n, dim)`` (tombstoned rows included)."""
        raise NotImplementedError

    @contextmanager
    def _building(self) -> Iterator[None]:
        """Builds (adds, training) use :attr:`threads` OpenMP threads; searches one."""
        faiss.omp_set_num_threads(self.threads)
        try:
            yield
        finally:
            faiss.omp_set_num_threads(1)

    # ------------------------------------------------------------------------------------------ vector store
    def _reset(self, cap: int) -> None:
        super()._reset(cap)
        self.graph = self._new_graph()

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
            header = {"format": FORMAT, "dim": self.dim, **self._settings(), **self._state(), "seq": self.seq,
                      "n": n, "dead": self.dead}
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
        log.info("rag: %s index saved to %s (%d rows, seq %d) in %.1f s", self.KIND, self.path, n, self.seq,
                 time.perf_counter() - t0)
        return True

    def _read(self, conn: apsw.Connection) -> bool:
        """Read the persisted copy if it is usable for ``conn``'s database (see the module docstring)."""
        if self.path is None or not self.path.exists():
            return False
        try:
            with np.load(self.path) as z:
                header = json.loads(bytes(z["header"]).decode())
                want = {"format": FORMAT, "dim": self.dim, **self._settings()}
                if any(header.get(key) != value for key, value in want.items()):
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
        self._restore(header)
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
                    log.info("rag: %s index read from %s, %d vectors in %.1f s", self.KIND, self.path, len(self),
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
        index, params = self._exact_search()
        bits = None
        if allowed is not None:
            bits = np.packbits(allowed, bitorder="little")
            params.sel = faiss.IDSelectorBitmap(self.n, faiss.swig_ptr(bits))
        scores, rows = index.search(q[None, :], k, params=params)
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
            bits = None
            params = self._approx_params()
            if allowed is not None:
                bits = np.packbits(allowed, bitorder="little")
                params.sel = faiss.IDSelectorBitmap(n, faiss.swig_ptr(bits))
            scores, rows = self._approx(q, k, allowed, count, params)
            del bits
            got = rows[0] >= 0
            if int(got.sum()) < min(k, count):
                return self._exact(q, k, allowed)
            return self.ids[rows[0][got]].copy(), scores[0][got].astype(np.float32)
