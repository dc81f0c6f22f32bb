"""The RAG plugin through the real engine on real SQLite files and real PostgreSQL databases (the ``rig`` fixture runs
each test on both), with the real model and mainnet-shaped blocks: hooks, reorg exactness (pending and stored
documents of reverted blocks disappear, stale vectors never land), scope, status, the worker, and the address
graph."""

from __future__ import annotations

import time

import numpy as np
import pytest

import monmouth_rag.plugin as rag
from monmouth.config import validate
from monmouth.errors import ConfigError
from monmouth.plugins import config_models
from monmouth.types import ChainCommitted, ChainReorged, ChainReverted
from monmouth_rag.ann import VectorIndex
from monmouth_rag.search import rrf
from monmouth_rag.store import store_vectors, take_pending
from monmouth_rag.worker import STOP_CHECK_TEXTS
from tests.chains import chain
from tests.test_rag_support import (  # noqa: F401 (fixture)
    PLUGINS,
    blocks,
    embeddings,
    fts_stats,
    pg_rig_fixture,
    relink,
    rig_fixture,
    settings_for,
)


def dump(conn) -> dict[str, object]:
    """The plugin's state, keyed by transaction hash instead of row ids (ids differ between databases)."""
    docs = conn.execute(
        "SELECT kind, block_number, block_hash, timestamp, tx_hash, tx_index, log_index, sender, recipient, contract, "
        "intent, token, text, meta FROM rag_docs ORDER BY block_number, tx_index").fetchall()
    ids = {r[0] for r in conn.execute("SELECT id FROM rag_docs")}
    fts = {r[0] for r in conn.execute("SELECT rowid FROM rag_fts")}
    index = {r[0] for r in conn.execute("SELECT id FROM rag_index")}
    assert fts == ids and index == ids, "FTS and index rows must match the documents exactly"
    vec_ids = {r[0] for r in conn.execute("SELECT rowid FROM rag_vec")}
    flagged = {r[0] for r in conn.execute("SELECT id FROM rag_index WHERE has_vec = 1")}
    assert vec_ids == flagged and vec_ids <= ids, "vectors must belong to live documents"
    vectors = embeddings(conn)
    return {
        "docs": docs,
        "fts_stats": fts_stats(conn),
        "pending": sorted(r[0] for r in conn.execute(
            "SELECT d.tx_hash FROM rag_pending p JOIN rag_docs d ON d.id = p.doc")),
        "orphan_pending": conn.execute(
            "SELECT count(*) FROM rag_pending WHERE doc NOT IN (SELECT id FROM rag_docs)").fetchone()[0],
        "addresses": sorted(conn.execute(
            "SELECT a.address, a.role, d.tx_hash, a.block_number FROM rag_addresses a JOIN rag_docs d ON d.id = a.doc"
        ).fetchall()),
        "n_addresses": conn.execute("SELECT count(*) FROM rag_addresses").fetchone()[0],
        "tokens": sorted(conn.execute(
            "SELECT t.token, d.tx_hash FROM rag_tokens t JOIN rag_docs d ON d.id = t.doc").fetchall()),
        "n_tokens": conn.execute("SELECT count(*) FROM rag_tokens").fetchone()[0],
        "edges": sorted(conn.execute("SELECT * FROM rag_edges").fetchall()),
        "vectors": vectors,
    }


def assert_same(live: dict, ref: dict) -> None:
    lv, rv = live.pop("vectors"), ref.pop("vectors")
    assert live == ref
    assert lv.keys() == rv.keys()
    for k in lv:
        assert np.allclose(lv[k], rv[k], atol=2e-3), "same text, same vector"


# ------------------------------------------------------------------------------------------------ reorg exactness


def test_reorg_removes_pending_and_stored_docs_and_equals_fresh_index(rig):
    a = blocks(6, salt="A")
    r = rig("live.sqlite")
    e = r.engine
    e.apply(ChainCommitted(chain(a[:4])))
    assert rag.drain() == 24  # blocks 0-3 embedded (block 3 will be reverted with its vectors)
    e.apply(ChainCommitted(chain(a[4:])))
    reader = r.db.reader()
    index = VectorIndex(384) if r.backend == "sqlite" else None  # PostgreSQL: pgvector's index, in the server
    if index is not None:
        index.sync(reader)
        assert len(index) == 24

    # The worker has read the pending documents of blocks 4-5 and is embedding them when the reorg lands.
    in_flight = take_pending(reader, 100)
    assert {d.block_number for d in in_flight} == {a[4].number, a[5].number}
    vecs = rag.get_embedder().embed([d.text for d in in_flight])

    b = relink(blocks(3, salt="B", start=1), a[2], "B")
    res = e.apply(ChainReorged(chain(a[3:]), chain(b)))
    assert res.reverted == 3 and res.committed == 3

    with r.db.write() as conn:
        assert store_vectors(conn, in_flight, vecs) == 0, "a vector for a reverted block must never be stored"
    reverted_hashes = {t.hash for blk in a[3:] for t in blk.transactions}
    conn = r.db.reader()
    assert not conn.execute(
        f"SELECT count(*) FROM rag_docs WHERE tx_hash IN ({','.join('?' * len(reverted_hashes))})",
        tuple(reverted_hashes)).fetchone()[0]
    if index is not None:
        index.sync(conn)
        assert len(index) == 18, "the in-memory index follows the deletes"
    assert conn.execute("SELECT count(*) FROM rag_vec").fetchone()[0] == 18, "no orphan vector"
    assert rag.drain() == 18
    live = dump(conn)
    assert live["pending"] == [] and live["orphan_pending"] == 0
    assert len(live["docs"]) == 36 and len(live["vectors"]) == 36
    if index is not None:
        index.sync(conn)
        assert len(index) == 36

    ref_rig = rig("ref.sqlite")
    ref_rig.engine.apply(ChainCommitted(chain(a[:3] + b)))
    rag.drain()
    assert_same(live, dump(ref_rig.db.reader()))


def test_revert_then_recommit_same_blocks_gets_new_ids_and_no_stale_vectors(rig):
    a = blocks(3, salt="R")
    r = rig()
    r.engine.apply(ChainCommitted(chain(a)))
    rag.drain()
    conn = r.db.reader()
    old_ids = {x[0] for x in conn.execute("SELECT id FROM rag_docs WHERE block_number = ?", (a[2].number,))}
    r.engine.apply(ChainReverted(chain(a[2:])))
    assert {x[0] for x in conn.execute("SELECT rowid FROM rag_vec")}.isdisjoint(old_ids), "vectors removed"
    assert conn.execute("SELECT count(*) FROM rag_docs WHERE block_number = ?", (a[2].number,)).fetchone()[0] == 0
    r.engine.apply(ChainCommitted(chain(a[2:])))
    new_ids = {x[0] for x in conn.execute("SELECT id FROM rag_docs WHERE block_number = ?", (a[2].number,))}
    assert new_ids and not (new_ids & old_ids) and min(new_ids) > max(old_ids), "ids are never reused"
    assert {x[0] for x in conn.execute("SELECT rowid FROM rag_vec")}.isdisjoint(old_ids)
    rag.drain()
    assert dump(conn)["pending"] == []


def test_blocks_reverted_while_disabled_are_reconciled_when_enabled(rig):
    a = blocks(3, salt="D")
    r = rig()
    r.engine.apply(ChainCommitted(chain(a)))
    rag.drain()
    off = validate({"plugins": {"rag": {"enabled": False}}}, "<test>", config_models(PLUGINS))
    r.host.apply_settings(off)
    r.engine.apply(ChainReverted(chain(a[1:])))  # the engine trims rag_docs/pending even with rag off
    conn = r.db.reader()
    assert conn.execute("SELECT count(*) FROM rag_docs").fetchone()[0] == 6
    assert conn.execute("SELECT count(*) FROM rag_vec").fetchone()[0] == 18  # orphans until reconciled
    r.host.apply_settings(settings_for(worker=False))
    assert conn.execute("SELECT count(*) FROM rag_vec").fetchone()[0] == 6
    assert conn.execute("SELECT count(*) FROM rag_index").fetchone()[0] == 6
    dump(conn)  # consistency assertions


# ------------------------------------------------------------------------------------------------ hooks


def test_config_model_refuses_unknown_keys_and_bad_values():
    with pytest.raises(ConfigError, match="plugins.rag.bogus"):
        settings_for(bogus=1)
    with pytest.raises(ConfigError, match="plugins.rag.scope"):
        settings_for(scope="some")
    with pytest.raises(ConfigError, match="plugins.rag.watched"):
        settings_for(watched=["0x123"])


def test_migrations_and_trimmed_tables_pass_the_host_checks(rig):
    r = rig(pg_knn="hnsw")
    conn = r.db.reader()
    if r.backend == "sqlite":
        kinds = {n: k for _s, n, k, *_ in conn.execute("PRAGMA main.table_list")}
        assert kinds["rag_fts"] == "virtual" and kinds["rag_vec"] == "virtual"
    else:  # a tsvector column with a GIN index, a pgvector column with an HNSW index (cosine)
        types = dict(conn.execute("SELECT table_name || '.' || column_name, udt_name FROM information_schema.columns "
                                  "WHERE table_name IN ('rag_fts', 'rag_vec')").fetchall())
        assert types["rag_fts.tsv"] == "tsvector" and types["rag_vec.embedding"] == "vector"
        indexes = dict(conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename IN "
                                    "('rag_fts', 'rag_vec')").fetchall())
        assert "USING gin (tsv)" in indexes["rag_fts_tsv"]
        assert "USING hnsw (embedding vector_cosine_ops)" in indexes["rag_vec_hnsw"]
        r.engine.apply(ChainCommitted(chain(blocks(1, txs=2, salt="T"))))  # the journal installs its triggers
        triggers = {t for (t,) in conn.execute("SELECT DISTINCT event_object_table FROM information_schema.triggers "
                                                "WHERE trigger_name = 'monmouth_undo'")}
        assert "rag_edges" in triggers and not triggers & set(rag.monmouth_trimmed_tables()), \
            "the graph is journaled by the undo trigger, the trimmed and self-managed tables are not"
        r.host.apply_settings(settings_for(worker=False, pg_knn="sql"))
        assert not conn.execute("SELECT 1 FROM pg_indexes WHERE indexname = 'rag_vec_hnsw'").fetchall()
    assert set(rag.monmouth_trimmed_tables()) >= {"rag_docs", "rag_fts", "rag_vec", "rag_pending"}
    assert "rag_edges" not in rag.monmouth_trimmed_tables(), "the graph is journaled"


def test_startup_shutdown_start_and_stop_the_worker(rig):
    r = rig(worker=True)
    st = rag.state()
    assert st.worker.running and rag.get_embedder() is not None
    r.host.shutdown()
    assert not st.worker.running and rag.get_embedder() is None
    with pytest.raises(RuntimeError, match="not running"):
        rag.search("x")


def test_notification_committed_wakes_the_worker(rig):
    r = rig(worker=True, poll_interval=3600)
    n = ChainCommitted(chain(blocks(1, txs=4, salt="W")))
    res = r.engine.apply(n)
    r.host.committed(n, res.head)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and rag.monmouth_status()["vectors"] < 4:
        time.sleep(0.05)
    status = rag.monmouth_status()
    assert status["vectors"] == 4 and status["backlog"] == 0 and status["embeddings_per_s"] > 0


def test_the_worker_embeds_a_round_shortest_first_and_a_stop_keeps_what_was_embedded(rig):
    r = rig()
    r.engine.apply(ChainCommitted(chain(blocks(2, txs=40, salt="L"))))
    st = rag.state()
    pending = {d.id: d.text for d in take_pending(r.db.reader(), 1 << 30)}
    distinct = sorted(set(pending.values()), key=len)
    assert len(distinct) > STOP_CHECK_TEXTS and len(pending) <= st.cfg.worker_batch, "one round, several slices"
    calls: list[list[str]] = []
    embed = st.worker.embed

    def recording(texts: list[str]) -> np.ndarray:
        calls.append(list(texts))
        st.worker.stopping.set()  # a stop requested during the first slice ends the round after it
        return embed(texts)

    st.worker.embed = recording
    try:
        stored = st.worker.step()
    finally:
        st.worker.stopping.clear()
        st.worker.embed = embed
    assert len(calls) == 1 and [len(t) for t in calls[0]] == [len(t) for t in distinct[:STOP_CHECK_TEXTS]], \
        "the first slice is the round's shortest texts"
    first = set(calls[0])
    left = {d.id: d.text for d in take_pending(r.db.reader(), 1 << 30)}
    assert stored == sum(t in first for t in pending.values()) and not first & set(left.values()), \
        "every document whose text was embedded before the stop is stored, the others stay pending"
    calls.clear()
    st.worker.embed = lambda texts: (calls.append(list(texts)), embed(texts))[1]
    try:
        assert st.worker.drain() == len(left)
    finally:
        st.worker.embed = embed
    flat = [t for c in calls for t in c]
    assert sorted(flat) == sorted(set(left.values()) - first) and [len(t) for t in flat] == sorted(map(len, flat))
    texts = {txh: text for txh, text in r.db.reader().execute(
        "SELECT tx_hash, coalesce(embed_text, text) FROM rag_docs")}
    stored_vectors = embeddings(r.db.reader())
    assert stored_vectors.keys() == texts.keys()
    for txh, vec in stored_vectors.items():
        np.testing.assert_allclose(vec, st.embedder.embed([texts[txh]])[0], atol=1e-4)


def test_status_and_metrics_show_backlog_and_rate(rig):
    r = rig()
    r.engine.apply(ChainCommitted(chain(blocks(2, txs=3, salt="S"))))
    s = rag.monmouth_status()
    assert s["backlog"] == 6 and s["vectors"] == 0 and s["documents"] == 6 and "embeddings_per_s" in s
    rag.drain()
    s = rag.monmouth_status()
    assert s["backlog"] == 0 and s["vectors"] == 6
    reg = r.metrics.registry
    assert reg.get_sample_value("monmouth_rag_embeddings_total") == 6
    assert reg.get_sample_value("monmouth_rag_backlog") == 0
    assert r.host.status()["rag"]["state"] == "enabled"


def test_watched_scope_indexes_only_transactions_touching_watched_addresses(rig):
    bs = blocks(2, txs=20, salt="X")
    watched = bs[0].transactions[5].to  # a contract several of these transactions touch
    r = rig(scope="watched", watched=["0x" + watched.hex()])
    r.engine.apply(ChainCommitted(chain(bs)))
    conn = r.db.reader()
    n = conn.execute("SELECT count(*) FROM rag_docs").fetchone()[0]
    touching = sum(1 for b in bs for i in range(len(b.transactions)) if watched in rag.decode_transaction(b, i).roles)
    assert 0 < n == touching < 40


def test_memory_agents_are_watched_and_labelled(tmp_path):
    import types

    from prometheus_client import CollectorRegistry

    from monmouth.engine import Engine
    from monmouth.metrics import Metrics
    from monmouth.plugins import PluginHost
    from monmouth.store import Database

    bs = blocks(1, txs=20, salt="M")
    agent = bs[0].transactions[3].sender
    memory = types.SimpleNamespace(agent_addresses=lambda conn: [agent])
    plugins = {"rag": rag, "memory": memory}
    db = Database(tmp_path / "m.sqlite")
    metrics = Metrics(CollectorRegistry())
    host = PluginHost(plugins, db, metrics.registry)
    settings = validate({"plugins": {"rag": {"enabled": True, "worker": False, "scope": "watched"},
                                     "memory": {"enabled": True}}}, "<test>", config_models(plugins))
    host.apply_settings(settings)
    engine = Engine(db, host, settings.engine, metrics)
    try:
        engine.apply(ChainCommitted(chain(bs)))
        rows = db.reader().execute("SELECT text FROM rag_docs").fetchall()
        expected = sum(1 for i in range(20) if agent in rag.decode_transaction(bs[0], i).roles)
        assert len(rows) == expected >= 1
        assert all(f"0x{agent.hex()} (agent)" in r[0] for r in rows)
    finally:
        host.shutdown()
        engine.close()


def test_block_applied_records_text_metadata_and_fts_immediately(rig):
    r = rig()
    b = blocks(1, txs=10, salt="F")
    r.engine.apply(ChainCommitted(chain(b)))
    conn = r.db.reader()
    tx = b[0].transactions[3]
    row = conn.execute("SELECT text, intent, block_number FROM rag_docs WHERE tx_hash = ?", (tx.hash,)).fetchone()
    assert row[0] == rag.render_transaction(b[0], 3) and row[2] == b[0].number
    hits = rag.search("0x" + tx.hash.hex(), 3, mode="keyword")  # keyword search works before any embedding
    assert hits and hits[0].provenance["tx_hash"] == "0x" + tx.hash.hex()
    got = rag.transaction(tx.hash)
    assert got is not None and got["embedded"] is False and got["metadata"]["intent"] == row[1]


def test_a_blocks_documents_cost_the_same_round_trips_whatever_their_number_on_postgresql(pg_rig):
    """On PostgreSQL the documents of a block go in one ``INSERT ... RETURNING`` and the rest of their rows (index,
    addresses, tokens, pending, graph edges) is queued with the commit: a block of 40 transactions costs the engine
    as many round trips as a block of 4 (it was five per transaction and two per graph edge), and the rows are all
    there."""
    from tests.pg import round_trips

    counts = {}
    for txs in (4, 40):
        r = pg_rig(f"db{txs}.sqlite")
        bs = blocks(2, txs=txs, salt=f"T{txs}")
        r.engine.apply(ChainCommitted(chain(bs[:1])))
        counts[txs] = len(round_trips(r.engine.conn, lambda r=r, bs=bs: r.engine.apply(ChainCommitted(chain(bs[1:])))))
        conn = r.db.reader()
        assert conn.execute("SELECT count(*) FROM rag_docs WHERE block_number = ?", (bs[1].number,)).fetchone() == (
            txs,)
        assert conn.execute("SELECT count(*) FROM rag_pending p JOIN rag_docs d ON d.id = p.doc "
                            "WHERE d.block_number = ?", (bs[1].number,)).fetchone() == (txs,)
        assert conn.execute("SELECT count(*) FROM rag_edges WHERE last_block = ?", (bs[1].number,)).fetchone()[0] > 0
    assert counts[40] == counts[4] <= 6, counts


def test_a_batch_of_vectors_costs_the_same_round_trips_whatever_its_size_on_postgresql(pg_rig):
    """The embedding worker's batch: one ``DELETE ... RETURNING`` of the pending rows decides which vectors are
    stored; the vectors, flags and change rows are queued with the commit. 30 vectors cost one round trip before the
    commit, as 3 do (it was four per vector); a document given twice is stored once, one no longer pending not at
    all."""
    import numpy as np

    from tests.pg import round_trips

    r = pg_rig()
    r.engine.apply(ChainCommitted(chain(blocks(1, txs=40, salt="V"))))
    pending = take_pending(r.db.reader(), 100)
    assert len(pending) == 40
    rng = np.random.default_rng(7)
    counts = {}
    for lo, hi in ((0, 2), (2, 5), (5, 35)):  # the first: statements' first use (pg_batch reads the catalog once)
        batch = pending[lo:hi]
        with r.db.write() as conn:
            counts[hi - lo] = len(round_trips(conn, lambda conn=conn, batch=batch: store_vectors(
                conn, batch, rng.standard_normal((len(batch), 384)).astype(np.float32))))
    assert counts[30] == counts[3] == 1, counts
    with r.db.write() as conn:
        twice = [pending[35], pending[35], pending[0]]  # pending[0] already stored: no longer pending
        assert store_vectors(conn, twice, rng.standard_normal((3, 384)).astype(np.float32)) == 1
    conn = r.db.reader()
    assert conn.execute("SELECT count(*) FROM rag_vec").fetchone() == (36,)
    assert conn.execute("SELECT count(*) FROM rag_index WHERE has_vec = 1").fetchone() == (36,)
    assert conn.execute("SELECT count(*) FROM rag_pending").fetchone() == (4,)


def test_address_graph_is_exact_across_reorgs_and_queryable(rig):
    a = blocks(4, txs=8, salt="G")
    r = rig()
    r.engine.apply(ChainCommitted(chain(a)))
    fork = relink(blocks(2, txs=8, salt="H", start=5), a[1], "H")
    r.engine.apply(ChainReorged(chain(a[2:]), chain(fork)))
    live = sorted(r.db.reader().execute("SELECT * FROM rag_edges").fetchall())
    sender = a[0].transactions[0].sender
    g = rag.graph(sender, depth=2)
    assert g["nodes"][0]["address"] == "0x" + sender.hex() and g["edges"]
    assert all(e["count"] >= 1 for e in g["edges"])
    ref = rig("graph-ref.sqlite")
    ref.engine.apply(ChainCommitted(chain(a[:2] + fork)))
    assert live == sorted(ref.db.reader().execute("SELECT * FROM rag_edges").fetchall())


# ------------------------------------------------------------------------------------------------ both backends

GUIDE = ("# Staking guide\n\nValidators deposit 32 ETH into the beacon chain deposit contract to activate.\n\n"
         "## Withdrawals\n\nSince the Shanghai upgrade, validators can withdraw their stake and rewards "
         "automatically every few days.\n")
QUERIES = ["USDT transfer", "how do validators withdraw stake", "swap tokens on uniswap", "approve spender",
           "deposit contract"]


def _results(rig, name: str, bs, extra: dict[str, object],
             **cfg) -> dict[tuple[str, str, str], list[tuple[object, float]]]:
    """``{(mode, query, filter): [(stable id, score)]}`` for the same chain, documents and queries on one backend
    (rag configured by ``cfg``); a hit's stable id is its transaction hash or ``doc_id:chunk`` (row ids differ
    between databases)."""
    r = rig(name, **cfg)
    r.engine.apply(ChainCommitted(chain(bs)))
    rag.add_document("staking-guide", GUIDE, title="Staking guide", markdown=True)
    rag.add_document("notes/gas", "Gas refunds were reduced by EIP-3529; blobs arrived with EIP-4844.")
    rag.drain()
    filters: dict[str, dict[str, object]] = {"none": {}, "block": {"block_from": bs[1].number, "block_to": bs[1].number},
                                             "kind": {"kind": "document"}, **extra}
    def stable(hits):
        return [(h.provenance.get("tx_hash") or f"{h.provenance['doc_id']}:{h.provenance['chunk']}", h.score)
                for h in hits]

    out = {}
    for q in QUERIES:
        for fname, f in filters.items():
            for mode, k in (("vector", 10), ("keyword", 100), ("hybrid", 10), ("vector", 50), ("keyword", 50)):
                out[(mode, k, q, fname)] = stable(rag.search(q, k, mode=mode, filters=f or None))
            fused = rrf({"vector": [i for i, _ in out[("vector", 50, q, fname)]],
                         "keyword": [i for i, _ in out[("keyword", 50, q, fname)]]}, 60)
            out[("rrf", 10, q, fname)] = [(i, s) for i, s, _ in fused[:10]]
    r.close()
    return out


def same_fusion(a: list[tuple[object, float]], b: list[tuple[object, float]]) -> bool:
    """The same RRF scores in order, and the same hit for each score above the last one (RRF ties are broken by
    row id, which differs between databases)."""
    if len(a) != len(b) or not np.allclose([s for _, s in a], [s for _, s in b]):
        return False
    last = a[-1][1] if a else 0.0
    return {i for i, s in a if s > last + 1e-12} == {i for i, s in b if s > last + 1e-12}


def test_same_chain_and_documents_give_the_same_top_k_on_both_backends(request, tmp_path):
    """Vector search: the same top 10, in the same order, with the same cosine scores, on PostgreSQL both through
    pgvector's HNSW index (``pg_knn`` default, tests/pgvector.py) and through ``pg_knn = "sql"`` (the cosine in plain
    SQL, the documented fallback): on these few dozen rows with ``hnsw.ef_search`` 100 the HNSW scan reaches every
    row, so it equals exact search (on large collections it may differ in the last places: recall is
    bench/search.py's). Keyword search: the
    same matching documents for these queries, all of them, with the same BM25 scores (FTS5's formula over the same
    tokens of these transaction texts and documents on both: issue 15). Hybrid: on each backend exactly the RRF
    (k = 60) of its own vector and keyword lists,
    the same code; the same hits wherever the two keyword rankings agree."""
    from tests.test_rag_support import _rigs

    bs = blocks(3, txs=12, salt="Q")
    sender = bs[0].transactions[4].sender
    extra = {"address": {"address": "0x" + sender.hex(), "role": ["sender"]}, "token": {"token": ["USDT"]}}
    got = {}
    for name, backend, cfg in (("sqlite", "sqlite", {}), ("postgres", "postgres", {}),
                               ("postgres-sql", "postgres", {"pg_knn": "sql"})):
        make = _rigs(request, tmp_path / name, backend)
        got[name] = _results(next(make), "same.sqlite", bs, extra, **cfg)
        make.close()
    lite, pg = got["sqlite"], got["postgres"]
    for key in lite:
        if key[0] == "vector":  # the plain-SQL cosine ranks exactly as pgvector's <=> and sqlite-vec
            assert [i for i, _ in got["postgres-sql"][key]] == [i for i, _ in lite[key]], key
            assert np.allclose([s for _, s in got["postgres-sql"][key]], [s for _, s in lite[key]], atol=1e-5), key
    assert lite.keys() == pg.keys()
    nonempty = same_keyword_order = 0
    for key in lite:
        mode, k, q, fname = key
        a, b = lite[key], pg[key]
        if mode == "vector":
            assert [i for i, _ in a] == [i for i, _ in b], key
            assert np.allclose([s for _, s in a], [s for _, s in b], atol=1e-5), key
        elif mode == "keyword" and k == 100:
            assert {i for i, _ in a} == {i for i, _ in b}, key
            # BM25 with FTS5's formula over the same tokens: the same scores (ties in any order: by row id on
            # PostgreSQL, unspecified on SQLite)
            a, b = sorted(a, key=lambda x: (-round(x[1], 9), x[0])), sorted(b, key=lambda x: (-round(x[1], 9), x[0]))
            assert [i for i, _ in a] == [i for i, _ in b], key
            assert np.allclose([s for _, s in a], [s for _, s in b], rtol=0, atol=1e-6), key
        elif mode == "hybrid":
            for got_, ref in ((a, lite[("rrf", 10, q, fname)]), (b, pg[("rrf", 10, q, fname)])):
                assert same_fusion(got_, ref), ("hybrid is RRF of the two lists", key)
            if [i for i, _ in lite[("keyword", 50, q, fname)]] == [i for i, _ in pg[("keyword", 50, q, fname)]]:
                same_keyword_order += 1
                assert same_fusion(a, b), ("the same two lists fuse to the same hits", key)
        nonempty += bool(a)
    assert nonempty > len(lite) // 2, "the queries must find something"
    assert same_keyword_order, "some query ranks its keyword matches the same way on both backends"


def test_a_revert_waits_for_the_workers_open_transaction_and_leaves_no_orphan_vector(rig):
    """The embedding worker's write transaction is open (vectors of the block about to be reverted stored, not yet
    committed) when the engine reverts that block on its own connection: the revert waits for the worker's commit
    (SQLite: the write lock; PostgreSQL: rag_pending's table lock) and then removes those vectors too."""
    import threading

    a = blocks(2, txs=4, salt="L")
    r = rig()
    r.engine.apply(ChainCommitted(chain(a)))
    docs = take_pending(r.db.reader(), 100)
    vecs = rag.get_embedder().embed([d.text for d in docs])
    worker = r.db.connect()
    worker.execute("BEGIN IMMEDIATE")
    assert store_vectors(worker, docs, vecs) == 8
    done = threading.Event()
    reverting = threading.Thread(target=lambda: (r.engine.apply(ChainReverted(chain(a[1:]))), done.set()))
    reverting.start()
    assert not done.wait(1.0), "the revert must wait for the worker's transaction"
    worker.execute("COMMIT")
    reverting.join(30)
    assert done.is_set()
    worker.close()
    conn = r.db.reader()
    live = dump(conn)
    assert len(live["docs"]) == 4 and len(live["vectors"]) == 4 and live["pending"] == []
