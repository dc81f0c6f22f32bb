"""What only the IVF index (monmouth_rag.ivf) does: flat and exact below ``train_min`` rows, cells trained once a load
has read every row, retrained at fourfold growth, deleted rows dropped on the same cells, the trained state carried by
the persisted copy, and the default configuration opening it. Recall, filters, tombstones and the persisted copy in
general: tests/test_rag_faissindex.py."""

from __future__ import annotations

import threading

import faiss
import numpy as np
import pytest

from monmouth_rag import ivf
from monmouth_rag.cells import nlist_for
from monmouth_rag.config import RagConfig
from monmouth_rag.indexes import open_index
from monmouth_rag.ivf import IvfIndex
from monmouth_rag.store import store_vectors
from tests.test_rag_faissindex import _db, _delete
from tests.test_rag_search import clustered


def _add(idx: IvfIndex, x: np.ndarray, first: int) -> None:
    m = len(x)
    idx.add(list(range(first, first + m)), x, ["tx"] * m, list(range(first, first + m)), [0] * m, ["swap"] * m)


def _top(x: np.ndarray, v: np.ndarray, k: int = 10) -> list[int]:
    return [int(i) + 1 for i in np.argsort(-(x @ v), kind="stable")[:k]]


@pytest.mark.parametrize(("n", "cells"), [(1, 1), (500, 8), (10_000, 256), (50_000, 1024), (1_000_000, 4096),
                                           (5_000_000, 8192)])
def test_cells_are_the_power_of_two_nearest_4_sqrt_n_with_39_rows_each(n, cells):
    assert nlist_for(n) == cells
    assert n // nlist_for(n) >= 39 or nlist_for(n) == 1


def test_flat_until_train_min_then_cells_then_retrained_at_fourfold_growth():
    x = clustered(9000, seed=11)
    q = x[:20] + 0.01
    idx = IvfIndex(384, train_min=1000)
    _add(idx, x[:900], 1)
    assert idx.trained_n == 0 and idx.nlist == 0 and not isinstance(idx.graph, faiss.IndexIVF)
    for v in q[:5]:  # flat: every search is exact
        assert idx.search(v, 10)[0].tolist() == _top(x[:900], v)
    _add(idx, x[900:1000], 901)
    assert idx.trained_n == 1000 and idx.nlist == nlist_for(1000) == 16
    _add(idx, x[1000:3999], 1001)
    assert idx.trained_n == 1000, "not yet four times the rows"
    _add(idx, x[3999:4000], 4000)
    assert idx.trained_n == 4000 and idx.nlist == nlist_for(4000) == 64
    assert idx.graph.ntotal == idx.n == len(idx) == 4000
    assert np.allclose(idx.vectors().astype(np.float32), x[:4000], atol=1e-3), "retraining keeps every vector"
    recall = [len(set(idx.search(v, 10)[0].tolist()) & set(_top(x[:4000], v))) / 10 for v in q]
    assert np.mean(recall) >= 0.95


def test_compaction_drops_deleted_rows_on_the_same_cells():
    x = clustered(4000, seed=12)
    idx = IvfIndex(384, train_min=1000)
    _add(idx, x, 1)
    cells = faiss.rev_swig_ptr(faiss.downcast_index(idx.graph.quantizer).get_xb(), idx.nlist * 384).copy()
    idx.remove(list(range(1, 1500)))  # over a quarter dead
    assert idx.dead == 0 and idx.n == len(idx) == idx.graph.ntotal == 2501
    assert idx.trained_n == 4000 and idx.nlist == 64
    after = faiss.rev_swig_ptr(faiss.downcast_index(idx.graph.quantizer).get_xb(), idx.nlist * 384)
    assert np.array_equal(cells, after), "the same cells"
    assert idx.ids[:idx.n].tolist() == list(range(1500, 4001))
    for v in x[1500:1510]:
        ids, _ = idx.search(v, 10)
        assert ids.min() >= 1500 and ids[0] == _top(x[1499:], v)[0] + 1499


def test_a_load_trains_once_at_the_end_and_the_copy_keeps_the_cells(tmp_path, monkeypatch):
    db, conn, x, docs = _db(tmp_path, 3000)
    with conn:
        store_vectors(conn, docs, x)
    path = tmp_path / "db.sqlite.rag-ivf.npz"
    built = []
    real = IvfIndex._rebuild
    monkeypatch.setattr(IvfIndex, "_rebuild", lambda self, **kw: (built.append(kw), real(self, **kw))[1])
    first = IvfIndex(384, path, train_min=1000)
    first.sync(conn)
    assert built == [{"retrain": True}], "one training, after every row was read (not at 1,000 and 4,000 rows)"
    assert first.loaded_from == "rebuild" and first.trained_n == 3000 and first.nlist == nlist_for(3000) == 64
    second = IvfIndex(384, path, train_min=1000)
    second.sync(conn)
    assert second.loaded_from == "file" and second.trained_n == 3000 and second.nlist == 64 and len(built) == 1
    for v in x[:10]:
        assert second.search(v, 10)[0].tolist() == first.search(v, 10)[0].tolist()
    other = IvfIndex(384, path, train_min=500)  # another setting: the copy is not used
    other.sync(conn)
    assert other.loaded_from == "rebuild"
    conn.close()


@pytest.mark.parametrize(("chunk", "swap_rows"), [(ivf.REBUILD_CHUNK, ivf.SWAP_ROWS), (64, 50)])
def test_a_retrain_runs_beside_the_serving_index_and_keeps_the_adds_and_deletes_made_meanwhile(
        tmp_path, monkeypatch, chunk, swap_rows):
    """At fourfold growth the new cells are trained and filled on a thread of their own: the sync that found the
    retrain due returns, and searches, adds and deletes go on with the old cells (the builder is held before its
    k-means here). The new index then holds every row: those added meanwhile, and those deleted meanwhile as
    tombstones, never returned. With small chunks, the 200 rows added meanwhile are copied in chunks before the
    last 50 or fewer go in with the swap."""
    monkeypatch.setattr(ivf, "REBUILD_CHUNK", chunk)
    monkeypatch.setattr(ivf, "SWAP_ROWS", swap_rows)
    db, conn, x, docs = _db(tmp_path, 5000)
    ids = [d.id for d in docs]
    with conn:
        store_vectors(conn, docs[:1200], x[:1200])
    idx = IvfIndex(384, None, train_min=1000, exact_rows=10)
    idx.sync(conn)  # the load trains its cells on this thread, before it serves
    assert idx.trained_n == 1200 and idx.rebuilding is None
    go, started = threading.Event(), threading.Event()
    real = IvfIndex._cells

    def held(self, sample, nlist):
        started.set()
        assert go.wait(60)
        return real(self, sample, nlist)

    monkeypatch.setattr(IvfIndex, "_cells", held)
    with conn:
        store_vectors(conn, docs[1200:4800], x[1200:4800])
    idx.sync(conn)  # 4,800 rows: four times 1,200
    assert started.wait(60) and idx.rebuilding is not None and idx.rebuilding.name == "monmouth-rag-ivf-rebuild"
    # Meanwhile, on the old cells:
    assert idx.trained_n == 1200 and idx.search(x[4000], 1)[0].tolist() == [ids[4000]]
    with conn:
        store_vectors(conn, docs[4800:], x[4800:])
    gone = ids[100:200]
    _delete(conn, gone)
    idx.sync(conn)
    assert idx.search(x[4900], 1)[0].tolist() == [ids[4900]] and idx.search(x[150], 10)[0][0] != ids[150]
    assert idx.rebuilding.is_alive() and idx.trained_n == 1200
    go.set()
    assert idx.wait_rebuilt(120)
    assert idx.trained_n == 4800 and idx.nlist == nlist_for(4800)  # trained on the rows present when it began
    assert idx.graph.ntotal == idx.n == 5000 and len(idx) == 4900 and idx.dead == 100
    assert idx.saved_seq == -1, "the persisted copy is written again at the next save"
    order = np.argsort(idx.ids[:idx.n])
    assert idx.ids[:idx.n][order].tolist() == ids  # every row once
    assert np.allclose(idx.vectors()[order].astype(np.float32), x, atol=1e-3)
    for i in list(range(4800, 5000, 10)) + list(range(0, 4800, 240)):
        got = idx.search(x[i], 10)[0].tolist()
        assert got[0] == (ids[i] if ids[i] not in gone else got[0]) and not set(got) & set(gone), i
    for i in range(100, 200, 10):
        assert ids[i] not in idx.search(x[i], 10)[0].tolist()
    conn.close()


def test_a_failed_rebuild_leaves_the_index_serving_and_is_tried_again_only_after_a_pause(tmp_path, monkeypatch):
    db, conn, x, docs = _db(tmp_path, 5000)
    ids = [d.id for d in docs]
    with conn:
        store_vectors(conn, docs[:1200], x[:1200])
    idx = IvfIndex(384, None, train_min=1000)
    idx.sync(conn)
    calls = []
    real = IvfIndex._cells

    def broken(self, sample, nlist):
        calls.append(nlist)
        raise MemoryError("no room for the new cells")

    monkeypatch.setattr(IvfIndex, "_cells", broken)
    with conn:
        store_vectors(conn, docs[1200:4800], x[1200:4800])
    idx.sync(conn)  # due: four times 1,200
    assert idx.wait_rebuilt(60) and len(calls) == 1 and idx.rebuild_errors == 1
    assert idx.trained_n == 1200 and len(idx) == 4800 and idx.search(x[4000], 1)[0].tolist() == [ids[4000]]
    with conn:
        store_vectors(conn, docs[4800:4900], x[4800:4900])
    idx.sync(conn)  # still due, but within the pause: no second attempt
    assert idx.wait_rebuilt(60) and len(calls) == 1 and idx.rebuild_errors == 1
    monkeypatch.setattr(IvfIndex, "_cells", real)
    monkeypatch.setattr(ivf, "REBUILD_RETRY_S", 0.0)  # the pause is over
    with conn:
        store_vectors(conn, docs[4900:], x[4900:])
    idx.sync(conn)
    assert idx.wait_rebuilt(60) and idx.trained_n == 5000 and idx.rebuild_errors == 1
    assert idx.search(x[4950], 1)[0].tolist() == [ids[4950]]
    conn.close()


def test_the_default_configuration_opens_a_persisted_ivf_index(tmp_path):
    idx = open_index(RagConfig(), tmp_path / "db.sqlite", 384)
    assert isinstance(idx, IvfIndex) and idx.path == tmp_path / "db.sqlite.rag-ivf.npz"
    assert open_index(RagConfig(ann_nprobe=32), None, 384).nprobe == 32  # type: ignore[attr-defined]


def test_another_kinds_file_is_named_in_the_log_and_left_alone(tmp_path, caplog):
    old = tmp_path / "db.sqlite.rag-hnsw.npz"
    old.write_bytes(b"x" * 2**20)
    with caplog.at_level("INFO", "monmouth_rag.indexes"):
        open_index(RagConfig(), tmp_path / "db.sqlite", 384)
    assert f"{old} is the index of ann_index = 'hnsw', not used with 'ivf' (1 MB" in caplog.text
    assert old.exists()
