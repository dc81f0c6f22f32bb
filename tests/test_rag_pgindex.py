"""pgvector's IVFFlat index (monmouth_rag.pgindex, ``plugins.rag.pg_knn = "ivfflat"``) on a real PostgreSQL server:
no index below the row threshold (exact answers), built at start with the lists the rows call for, searched through
it (filters exact), built again concurrently by the worker after fourfold growth, and dropped when ``pg_knn``
changes."""

from __future__ import annotations

import numpy as np
import pytest

import monmouth_rag.pgindex as pgindex
from monmouth_rag.cells import nlist_for
from monmouth_rag.dialect import PG_MIGRATIONS, PgStatements
from monmouth_rag.store import TRIMMED
from tests.test_rag_search import clustered
from tests.test_rag_support import open_db

SQL = PgStatements()
INTENTS = ("swap", "transfer", "mint")


@pytest.fixture
def db(pg_url, monkeypatch):
    monkeypatch.setattr(pgindex, "IVFFLAT_MIN_ROWS", 500)  # the default, 10,000, would make this test slow
    d = open_db(pg_url)
    d.migrate("rag", PG_MIGRATIONS, set(TRIMMED))
    return d  # its connections end with the database (pg_url drops it)


def _fill(db, x: np.ndarray, first: int) -> None:
    with db.write() as conn:
        conn.executemany(SQL.INSERT_VECTOR, [(first + i, SQL.vector_text(v), "tx", first + i, 0,
                                              INTENTS[(first + i) % 3], "") for i, v in enumerate(x)])


def _indexes(conn) -> dict[str, bool]:
    return dict(conn.execute("SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                             "WHERE i.indrelid = 'rag_vec'::regclass AND NOT i.indisprimary").fetchall())


def _exact(x: np.ndarray, v: np.ndarray, allowed: np.ndarray | None = None, k: int = 10) -> list[int]:
    s = x @ v
    if allowed is not None:
        s[~allowed] = -np.inf
    return [int(i) + 1 for i in np.argsort(-s, kind="stable")[:k]]


def _knn(conn, v, clauses=(), params=(), probes=20):
    return [d for d, _ in SQL.knn(conn, v, 10, list(clauses), list(params), None, "ivfflat", probes=probes)]


def test_no_index_below_the_threshold_and_exact_answers(db):
    x = clustered(400, seed=21)
    _fill(db, x, 1)
    with db.write() as conn:
        SQL.vector_index(conn, "ivfflat")
        assert pgindex.ivfflat_lists(conn) == 0 and "rag_vec_ivfflat" not in _indexes(conn)
        for v in x[:5]:
            assert _knn(conn, v) == _exact(x, v)


def test_built_at_start_searched_through_it_and_rebuilt_concurrently_after_fourfold_growth(db):
    x = clustered(4000, seed=22)
    _fill(db, x[:1000], 1)
    with db.write() as conn:
        conn.execute("SET maintenance_work_mem = '1MB'")  # pgvector refuses less than its k-means sample takes
        SQL.vector_index(conn, "ivfflat")
    conn = db.connect()
    assert pgindex.ivfflat_lists(conn) == nlist_for(1000) == 16 and pgindex.ivfflat_rows(conn) == 1000
    assert _indexes(conn) == {"rag_vec_ivfflat": True}
    plan = "\n".join(r[0] for r in conn.execute(
        "EXPLAIN SELECT rowid FROM rag_vec ORDER BY embedding <=> ?::vector LIMIT 10", (SQL.vector_text(x[0]),)))
    assert "rag_vec_ivfflat" in plan, plan
    # every list probed: the index's answer is the exact one; with a filter, only allowed rows, k of them
    swap = np.array([INTENTS[i % 3] == "swap" for i in range(1, 1001)])
    for v in x[:5]:
        assert _knn(conn, v, probes=16) == _exact(x[:1000], v)
        got = _knn(conn, v, ["intent = ?"], ["swap"], probes=2)
        assert len(got) == 10 and all(swap[d - 1] for d in got)
    one_list = [_knn(conn, v, probes=1) == _exact(x[:1000], v) for v in x[1000:1020]]
    assert not all(one_list), "one list probed misses neighbours: the index answers, not a scan"
    assert pgindex.ivfflat_due(conn) == 0, "not due again for the same rows"

    _fill(db, x[1000:3999], 1001)
    assert pgindex.ivfflat_due(conn) == 0, "not yet four times the rows"
    _fill(db, x[3999:], 4000)
    assert pgindex.ivfflat_due(conn) == 4000
    conn.execute("CREATE INDEX rag_vec_ivfflat_new ON rag_vec (rowid)")  # as a failed concurrent build leaves one
    db.connect().execute(f"ALTER DATABASE {db.dbname} SET maintenance_work_mem = '1MB'")  # the worker's too
    worker = pgindex.IvfflatWorker(db)
    assert worker.step() == 0
    assert pgindex.ivfflat_lists(conn) == nlist_for(4000) == 64 and pgindex.ivfflat_rows(conn) == 4000
    assert _indexes(conn) == {"rag_vec_ivfflat": True}
    for v in x[:3]:
        assert _knn(conn, v, probes=64) == _exact(x, v)
    conn.close()


def test_another_pg_knn_drops_the_ivfflat_index(db):
    _fill(db, clustered(600, seed=23), 1)
    with db.write() as conn:
        SQL.vector_index(conn, "ivfflat")
        assert set(_indexes(conn)) == {"rag_vec_ivfflat"}
        SQL.vector_index(conn, "hnsw")
        assert set(_indexes(conn)) == {"rag_vec_hnsw"}
        SQL.vector_index(conn, "exact")
        assert _indexes(conn) == {}


def test_the_plugin_builds_it_at_start_and_runs_the_worker_in_monmouth_run(pg_url, monkeypatch):
    import monmouth_rag.plugin as rag
    from tests.test_rag_support import Rig

    monkeypatch.setattr(pgindex, "IVFFLAT_MIN_ROWS", 500)
    d = open_db(pg_url)
    d.migrate("rag", PG_MIGRATIONS, set(TRIMMED))
    x = clustered(600, seed=24)
    _fill(d, x, 1)
    r = Rig(pg_url, pg_knn="ivfflat", worker=False)
    try:
        st = rag.state()
        assert st.ivfflat is not None and st.ivfflat.running
        conn = r.db.reader()
        assert pgindex.ivfflat_rows(conn) == 600 and pgindex.ivfflat_lists(conn) == nlist_for(600) == 8
        got = [d for d, _ in st.searcher.vector(x[7], 10)]
        assert got[0] == 8 and len(got) == 10
        status = rag.plugin.monmouth_status()["vector_index"]
        assert status == {"pg_knn": "ivfflat", "lists": 8, "built_for_rows": 600, "build_errors": 0,
                          "last_error": None}
    finally:
        r.close()
    assert not st.ivfflat.running, "stopped with the plugin"
