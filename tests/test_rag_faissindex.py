"""The faiss vector indexes (monmouth_rag.faissindex; IVF, the default, and HNSW), each through the same tests: recall
against exact search, exact filters, following SQLite, the persisted copy (read back after a restart, caught up, or
rebuilt when unusable), and a real revert through the engine removing the reverted block's vectors from the index."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest

import monmouth_rag.plugin as rag
from monmouth.store import Database, migrate
from monmouth.types import ChainCommitted, ChainReverted
from monmouth_rag.ann import VectorIndex
from monmouth_rag.faissindex import FaissIndex
from monmouth_rag.hnsw import HnswIndex
from monmouth_rag.ivf import IvfIndex
from monmouth_rag.search import Filters, Searcher
from monmouth_rag.store import MIGRATIONS, TRIMMED, prune_changes, store_vectors
from tests.chains import chain
from tests.test_rag_search import clustered, pending_docs
from tests.test_rag_support import blocks, sqlite_rig_fixture  # noqa: F401 (fixture: the index is SQLite's)

N = 6000

#: the index classes under test; IVF trains its cells from 1,000 rows here (the default, 10,000, would keep these
#: small collections flat, every search exact)
KINDS = {"ivf": lambda *a, **kw: IvfIndex(*a, train_min=1000, **kw), "hnsw": HnswIndex}


@pytest.fixture(scope="module", params=sorted(KINDS))
def kind(request):
    return request.param


@pytest.fixture(scope="module")
def data(kind):
    both = clustered(N + 40, seed=3)
    x, q = both[:N], both[N:]
    idx = KINDS[kind](384, exact_rows=500)
    kinds = ["tx" if i % 3 else "document" for i in range(N)]
    intents = ["swap" if i % 2 else "transfer" for i in range(N)]
    idx.add(list(range(1, N + 1)), x, kinds, [i if k == "tx" else -1 for i, k in enumerate(kinds)],
            [1000 + i for i in range(N)], intents)
    return idx, x, q, np.array(kinds), np.array(intents)


def exact(x: np.ndarray, v: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[int]:
    s = x @ v
    if allowed is not None:
        s[~allowed] = -np.inf
    top = np.argsort(-s, kind="stable")[:k]
    return [int(i) + 1 for i in top if allowed is None or allowed[i]]


def test_graph_search_recall_against_exact_search(data):
    idx, x, q, _, _ = data
    assert np.allclose(idx.vectors().astype(np.float32), x, atol=1e-3), "storage is the float16 vectors"
    recall = []
    for v in q:
        ids, scores = idx.search(v, 10)
        assert len(ids) == 10 and np.all(np.diff(scores) <= 1e-6)
        recall.append(len(set(exact(x, v, 10)) & set(ids.tolist())) / 10)
    assert np.mean(recall) >= 0.95


@pytest.mark.parametrize("name", ["kind", "intent+blocks", "blocks-narrow", "ids", "fewer-than-k"])
def test_filters_return_only_and_the_best_allowed_rows(data, name):
    idx, x, q, kinds, intents = data
    rows = np.arange(N)
    kw = {
        "kind": dict(kinds=["tx"]),  # 2/3 of the rows: graph search with a bitmap
        "intent+blocks": dict(intents=["swap"], block_from=0, block_to=3000),  # 1/6: wider beam
        "blocks-narrow": dict(block_from=100, block_to=400),  # 200 rows: ranked exactly
        "ids": dict(ids=list(range(1, N + 1, 7))),  # SQL candidates: 1/7
        "fewer-than-k": dict(ids=[5, 9, 11]),
    }[name]
    mask = idx.mask(**kw)
    allowed = np.ones(N, bool)
    if "kinds" in kw:
        allowed &= kinds == "tx"
    if "intents" in kw:
        allowed &= intents == "swap"
    if "block_to" in kw:
        allowed &= (kinds == "tx") & (rows >= kw["block_from"]) & (rows <= kw["block_to"])
    if "ids" in kw:
        allowed &= np.isin(rows + 1, kw["ids"])
    assert (mask == allowed).all()
    recall = []
    for v in q:
        ids, _ = idx.search(v, 10, mask)
        want = exact(x, v, 10, allowed)
        assert len(ids) == min(10, int(allowed.sum())), "always k results when k rows are allowed"
        assert allowed[ids - 1].all(), "never a row outside the filter"
        if allowed.sum() <= idx.exact_rows:
            assert set(ids.tolist()) == set(want)
        recall.append(len(set(want) & set(ids.tolist())) / len(want))
    assert np.mean(recall) >= 0.95


def test_deleted_rows_are_never_returned_and_compaction_keeps_the_rest(data, kind):
    idx, x, q, kinds, intents = data
    two = KINDS[kind](384, exact_rows=100)
    two.add(list(range(1, N + 1)), x, list(kinds), [0] * N, [0] * N, list(intents))
    gone = [int(i) for v in q[:5] for i in two.search(v, 10)[0]]
    assert two.remove(gone) == len(set(gone))
    for v in q[:5]:
        assert set(two.search(v, 10)[0].tolist()).isdisjoint(gone)
    two.remove(list(range(1, N // 2)))  # over a quarter dead: rebuilt from the live rows
    assert two.dead == 0 and two.n == len(two) == two.graph.ntotal
    live = np.ones(N, bool)
    live[np.array(sorted(set(gone) | set(range(1, N // 2)))) - 1] = False
    for v in q[:10]:
        ids, _ = two.search(v, 10)
        assert live[ids - 1].all() and len(ids) == 10


# ------------------------------------------------------------------------------------------- SQLite and the file


def _db(tmp_path, n: int = 3000):
    db = Database(tmp_path / "db.sqlite")
    conn = db.connect()
    migrate(conn, "rag", MIGRATIONS, set(TRIMMED))
    return db, conn, clustered(n, seed=5), pending_docs(conn, n)


def _delete(conn, ids):
    with conn:
        for d in ids:
            conn.execute("DELETE FROM rag_vec WHERE rowid = ?", (d,))
            conn.execute("UPDATE rag_index SET has_vec = 0 WHERE id = ?", (d,))
            conn.execute("INSERT INTO rag_changes (id, op) VALUES (?, -1)", (d,))


def test_persisted_copy_is_read_after_a_restart_and_catches_up(tmp_path, kind):
    db, conn, x, docs = _db(tmp_path)
    path = tmp_path / f"db.sqlite.rag-{kind}.npz"
    with conn:
        store_vectors(conn, docs[:2500], x[:2500])
    first = KINDS[kind](384, path, exact_rows=100)
    first.sync(conn)
    assert first.loaded_from == "rebuild" and path.exists() and first.saved_seq == first.seq
    before = [first.search(v, 10)[0].tolist() for v in x[:20]]
    # changes after the save: 500 adds and 10 deletes
    with conn:
        store_vectors(conn, docs[2500:], x[2500:])
    _delete(conn, [docs[i].id for i in range(10)])
    second = KINDS[kind](384, path, exact_rows=100)
    second.sync(conn)
    assert second.loaded_from == "file" and len(second) == 2990
    assert second.seq == conn.execute("SELECT max(seq) FROM rag_changes").fetchone()[0]
    gone = {docs[i].id for i in range(10)}
    for v in x[:20]:
        ids = second.search(v, 10)[0].tolist()
        assert gone.isdisjoint(ids)
    assert second.search(x[2700], 1)[0][0] == docs[2700].id, "a vector added after the save is found"
    assert [first.search(v, 10)[0].tolist() for v in x[10:20]] == before[10:], "the first one is unchanged"
    assert second.save() and not second.save(), "saves only what changed"
    third = KINDS[kind](384, path, exact_rows=100)
    third.sync(conn)
    assert third.loaded_from == "file" and third.graph.ntotal == second.graph.ntotal
    conn.close()


def test_unusable_copies_are_rebuilt_from_sqlite(tmp_path, caplog, kind):
    db, conn, x, docs = _db(tmp_path, 1200)
    path = tmp_path / f"db.sqlite.rag-{kind}.npz"
    with conn:
        store_vectors(conn, docs[:1000], x[:1000])
    KINDS[kind](384, path).sync(conn)
    good = path.read_bytes()

    def reopen() -> FaissIndex:
        idx = KINDS[kind](384, path)
        idx.sync(conn)
        assert len(idx) == conn.execute("SELECT count(*) FROM rag_vec").fetchone()[0]
        return idx

    # the changes the copy would need were pruned
    with conn:
        store_vectors(conn, docs[1000:], x[1000:])
        prune_changes(conn, keep=10)
    assert reopen().loaded_from == "rebuild"
    # truncated file: a warning naming it
    path.write_bytes(good[:len(good) // 2])
    with caplog.at_level(logging.WARNING, "monmouth_rag.faissindex"):
        assert reopen().loaded_from == "rebuild"
    assert str(path) in caplog.text
    # a copy whose seq is ahead of this database (another database's file)
    other, oconn, ox, odocs = _db(tmp_path / "other", 50)
    with oconn:
        store_vectors(oconn, odocs, ox)
    path.write_bytes(good)
    idx = KINDS[kind](384, path)
    idx.sync(oconn)
    assert idx.loaded_from == "rebuild" and len(idx) == 50
    # a copy that agrees on seq but not on the vectors (a row deleted without a change entry): the count check
    fresh = KINDS[kind](384, path)
    fresh.sync(conn)
    with conn:
        conn.execute("DELETE FROM rag_vec WHERE rowid = ?", (docs[0].id,))
        conn.execute("UPDATE rag_index SET has_vec = 0 WHERE id = ?", (docs[0].id,))
    with caplog.at_level(logging.WARNING, "monmouth_rag.faissindex"):
        assert reopen().loaded_from == "rebuild"
    assert "holds 1200 live vectors, the database 1199" in caplog.text
    conn.close()
    oconn.close()


# ------------------------------------------------------------------------------------------- through the engine


def test_revert_through_the_engine_removes_vectors_and_a_restart_reads_the_file(rig, kind):
    a = blocks(4, salt="H")
    r = rig("db.sqlite", ann_min_vectors=0, ann_index=kind)
    r.engine.apply(ChainCommitted(chain(a)))
    assert rag.drain() == 24
    st = rag.state()
    assert isinstance(st.index, {"ivf": IvfIndex, "hnsw": HnswIndex}[kind])
    conn = r.db.reader()
    last = [(d, np.frombuffer(v, np.float32)) for d, v in conn.execute(
        "SELECT d.id, v.embedding FROM rag_docs d JOIN rag_vec v ON v.rowid = d.id WHERE d.block_number = ?",
        (a[3].number,))]
    assert len(last) == 6
    for d, v in last:
        assert st.searcher.vector(v, 1)[0][0] == d
    r.engine.apply(ChainReverted(chain(a[3:])))
    reverted = {d for d, _ in last}
    for _d, v in last:
        got = [d for d, _ in st.searcher.vector(v, 24)]
        assert len(got) == 18 and reverted.isdisjoint(got), "a reverted block's vectors never come back"
    for h in rag.search("transfer", 30, "hybrid"):
        assert h.id not in reverted
    probe = last[0][1]
    before = st.searcher.vector(probe, 10)
    path = r.db.path.with_name(f"{r.db.path.name}.rag-{kind}.npz")

    r = rig("db.sqlite", ann_min_vectors=0, ann_index=kind)  # restart: shutdown saved the index
    assert path.exists()
    st = rag.state()
    after = st.searcher.vector(probe, 10)
    assert [d for d, _ in after] == [d for d, _ in before]
    assert [s for _, s in after] == pytest.approx([s for _, s in before])
    assert st.index.loaded_from == "file" and len(st.index) == 18  # type: ignore[attr-defined]
    assert rag.drain() == 0, "nothing is re-embedded"
    ivf_status = {"cells": 0, "rebuilding": False, "rebuild_errors": 0} if kind == "ivf" else {}  # flat: 18 rows
    assert rag.plugin.monmouth_status()["vector_index"] == {"kind": kind, "loaded": True, "size": 18, **ivf_status}


def test_filters_match_exact_sqlite_vec_search(rig, kind):
    r = rig("db.sqlite", ann_min_vectors=0, ann_index=kind)
    a = blocks(6, salt="F")
    r.engine.apply(ChainCommitted(chain(a)))
    rag.drain()
    st = rag.state()
    conn = r.db.reader()
    exact_path = Searcher(r.db.reader, st.embedder.embed, VectorIndex(384), ann_min_vectors=10**9)
    addr = conn.execute("SELECT address FROM rag_addresses GROUP BY address ORDER BY count(*) DESC").fetchone()[0]
    intent = conn.execute("SELECT intent FROM rag_docs GROUP BY intent ORDER BY count(*) DESC").fetchone()[0]
    q = st.embedder.embed(["token transfer to an exchange"])[0]
    for f in (Filters(), Filters(kinds=("tx",)), Filters(intents=(intent,)),
              Filters(block_from=a[1].number, block_to=a[3].number), Filters(address=addr),
              Filters(address=addr, block_from=a[2].number)):
        got = st.searcher.vector(q, 10, f)
        want = exact_path.vector(q, 10, f)
        assert [d for d, _ in got] == [d for d, _ in want], f
        assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=2e-3)


def test_while_another_thread_loads_the_index_searches_are_exact_in_sql_instead_of_waiting(rig, kind):
    """The plugin's start loads the index in the background (minutes at 1M when it is built from rag_vec); a
    search meanwhile does not wait for the index's lock: it ranks exactly in SQL, then the index serves once
    loaded."""
    r = rig("db.sqlite", ann_min_vectors=0, ann_index=kind)
    r.engine.apply(ChainCommitted(chain(blocks(4, salt="L"))))
    rag.drain()
    st = rag.state()
    idx = KINDS[kind](384)
    searcher = Searcher(r.db.reader, st.embedder.embed, idx, ann_min_vectors=0)
    exact_path = Searcher(r.db.reader, st.embedder.embed, VectorIndex(384), ann_min_vectors=10**9)
    held, release = threading.Event(), threading.Event()

    def loaded() -> None:  # the end of the load (an IVF index trains its cells here)
        held.set()
        assert release.wait(60)

    idx._loaded = loaded  # type: ignore[method-assign]
    loader = threading.Thread(target=lambda: idx.sync(r.db.reader()), name="loader")
    loader.start()
    try:
        assert held.wait(60) and idx.loading_elsewhere() and not idx.loaded
        q = st.embedder.embed(["token transfer to an exchange"])[0]
        t = time.monotonic()
        got = searcher.vector(q, 10)
        assert time.monotonic() - t < 30 and loader.is_alive(), "answered while the load was still held"
        assert got == exact_path.vector(q, 10) and len(got) == 10
    finally:
        release.set()
        loader.join(60)
    assert idx.loaded and not idx.loading_elsewhere()
    assert [d for d, _ in searcher.vector(q, 10)] == [d for d, _ in got]
