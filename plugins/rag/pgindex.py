"""pgvector's IVFFlat index on PostgreSQL (``plugins.rag.pg_knn = "ivfflat"``): when to build it, and building it.

IVFFlat (https://github.com/pgvector/pgvector, "IVFFlat") is an inverted file like :mod:`monmouth_rag.ivf`: k-means
lists computed from the rows present when the index is built, every vector of the ``ivfflat.probes`` nearest lists
scored exactly. Unlike HNSW it is not built up row by row, so its lists only fit the data they were computed from:

* No index below :data:`IVFFLAT_MIN_ROWS` rows: pgvector's own advice is to build it once the table holds data, and
  an exact scan of fewer rows costs a few milliseconds.
* ``lists``: :func:`monmouth_rag.cells.nlist_for`, the power of two nearest ``4 sqrt(rows)`` (1M rows: 4,096 lists of
  ~250 rows; pgvector's guideline of ``rows / 1000`` gives lists of 1,000 rows, and at 1M 20 probes of those took p99
  46 ms against 9.7 ms with 4,096 lists, at recall@10 0.968 against 0.995: docs/storage.md).
* Built again at four times the rows it was built for (recorded as the index's comment): the lists would otherwise
  hold four times the rows each, and searches would slow down by as much.

The plugin's start builds it in its start transaction if it is due (as it creates pgvector's HNSW index); afterwards
:class:`IvfflatWorker` in ``monmouth run`` looks every ten minutes and builds the new index next to the old one with
``CREATE INDEX CONCURRENTLY`` (writers are not blocked; searches use the old one meanwhile), then drops the old one.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from monmouth.worker import BackgroundWorker

from .cells import nlist_for

log = logging.getLogger(__name__)

#: fewest rows an IVFFlat index is built for
IVFFLAT_MIN_ROWS = 10_000
#: the index's name (``<name>_new`` while a concurrent build runs)
IVFFLAT = "rag_vec_ivfflat"


def ivfflat_lists(conn: Any) -> int:
    """The ``lists`` of the IVFFlat index of ``rag_vec`` (0: there is none, or only an invalid one)."""
    row = conn.execute("SELECT c.reloptions FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid "
                       "WHERE c.relname = ? AND i.indisvalid", (IVFFLAT,)).fetchone()
    for option in (row[0] or []) if row else []:
        key, _, value = option.partition("=")
        if key == "lists":
            return int(value)
    return 100 if row else 0  # pgvector's default


def ivfflat_rows(conn: Any) -> int:
    """The rows the IVFFlat index was built for (its comment, written by :func:`build_ivfflat`; 0: no index, or one
    made otherwise)."""
    row = conn.execute("SELECT obj_description(c.oid, 'pg_class') FROM pg_class c JOIN pg_index i "
                       "ON i.indexrelid = c.oid WHERE c.relname = ? AND i.indisvalid", (IVFFLAT,)).fetchone()
    text = (row[0] or "") if row else ""
    return int(text.split()[-1]) if text.startswith("monmouth: built for") else 0


def ivfflat_due(conn: Any) -> int:
    """The rows of ``rag_vec`` if a new IVFFlat index is due (none yet, or four times the rows it was built for);
    0 if not. Rows are counted exactly (a few tens of milliseconds at 1M)."""
    rows = int(conn.execute("SELECT count(*) FROM rag_vec").fetchone()[0])
    if rows < IVFFLAT_MIN_ROWS:
        return 0
    built = ivfflat_rows(conn)
    return rows if not built or rows >= 4 * built else 0


def build_ivfflat(conn: Any, rows: int, *, concurrently: bool) -> None:
    """Build the IVFFlat index for ``rows`` rows (``lists``: :func:`~monmouth_rag.cells.nlist_for`), replacing any
    other. ``concurrently``: ``CREATE INDEX CONCURRENTLY`` on an autocommit connection outside a transaction
    (writers go on; a failed build leaves an invalid ``_new`` index, dropped by the next attempt); otherwise in
    ``conn``'s transaction (writers wait).

    Raises:
        psycopg.Error: the build failed (lock or statement timeout, out of memory: nothing is dropped).
    """
    how = " CONCURRENTLY" if concurrently else ""
    lists = nlist_for(rows)
    t0 = time.perf_counter()
    # pgvector keeps its k-means sample in memory (50 rows per list, at least 10,000) and refuses to build with
    # less maintenance_work_mem than that takes; the session's own value is raised for this build only
    dim = int(conn.execute("SELECT coalesce(max(vector_dims(embedding)), 0) FROM (SELECT embedding FROM rag_vec "
                           "LIMIT 1) AS one").fetchone()[0])
    sample_mb = max(lists * 50, 10_000) * (dim * 4 + 16) / 2**20
    scope = "false" if concurrently else "true"  # is_local: in a transaction, until its end
    conn.execute(f"SELECT set_config('maintenance_work_mem', ?, {scope})",
                 (f"{max(64, int(sample_mb * 1.5) + 64)}MB",))
    conn.execute(f"DROP INDEX{how} IF EXISTS {IVFFLAT}_new")
    conn.execute(f"CREATE INDEX{how} {IVFFLAT}_new ON rag_vec USING ivfflat (embedding vector_cosine_ops) "
                 f"WITH (lists = {lists})")
    conn.execute(f"COMMENT ON INDEX {IVFFLAT}_new IS 'monmouth: built for {int(rows)}'")
    conn.execute(f"DROP INDEX{how} IF EXISTS {IVFFLAT}")
    conn.execute(f"ALTER INDEX {IVFFLAT}_new RENAME TO {IVFFLAT}")
    log.info("rag: pgvector IVFFlat index built for %d rows, %d lists, in %.1f s", rows, lists,
             time.perf_counter() - t0)


class IvfflatWorker(BackgroundWorker):
    """Looks every ``interval_s`` seconds whether the IVFFlat index is due (:func:`ivfflat_due`) and builds it
    concurrently on a connection of its own (``monmouth run`` only: one builder per database)."""

    def __init__(self, db: Any, interval_s: float = 600.0) -> None:
        super().__init__("monmouth-rag-ivfflat", idle_s=interval_s, max_backoff_s=interval_s)
        self.db = db

    def step(self) -> int:
        conn = self.db.connect(application_name="monmouth-rag-ivfflat")
        try:
            rows = ivfflat_due(conn)
            if rows:
                build_ivfflat(conn, rows, concurrently=True)
        finally:
            conn.close()
        return 0
