"""Memory plugin core: items through the real engine, chain-derived episodes, exact reorg behaviour, anchoring."""

from __future__ import annotations

import contextlib
import uuid

import apsw
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monmouth.problems import status_of
from monmouth.types import Block, ChainCommitted, ChainReorged, ChainReverted
from monmouth_memory import ingest, merkle
from monmouth_memory.errors import ConflictError, MemoryRequestError, NotFoundError, UnknownAgentError
from tests.chains import address, chain, extend
from tests.memory_helpers import close, dump_tables, fts_rows_from, make_memory_engine, settle

A1, A2, OUTSIDER = address(1), address(2), address(7)
CHAIN_TABLES = {
    "memory_items": "SELECT n, id, agent, kind, origin, version, nonce, ct, commitment, created_at, head_number, "
                    "head_hash FROM memory_items WHERE origin = 1",
    "memory_tags": "SELECT * FROM memory_tags WHERE n >= 0",
    "memory_leaves": "SELECT * FROM memory_leaves",
    "memory_marks": "SELECT agent, block_number, count FROM memory_marks",
    "memory_blocks": "SELECT block_number, block_hash, agents, ops_seq FROM memory_blocks",
}
#: What differs on each backend: SQLite's view of global roots (a Python SQL function) and FTS5 table.
BACKEND_TABLES = {
    "sqlite": {"memory_global_roots": "SELECT * FROM memory_global_roots",
               "memory_fts": "SELECT rowid, tokens FROM memory_fts WHERE rowid >= 0"},
    "postgres": {"memory_fts": "SELECT n, tokens::text FROM memory_fts WHERE n >= 0"},
}


def backend(conn) -> str:
    return getattr(conn, "backend", "sqlite")


def dump(conn) -> dict[str, list[tuple]]:
    return dump_tables(conn, {**CHAIN_TABLES, **BACKEND_TABLES[backend(conn)]})


def _factory(tmp_path, storage):
    engines = []

    def factory(name="db.sqlite", memory=None, **kw):
        cfg = {"key_dir": str(tmp_path / "keys"), "agents": ["0x" + A1.hex(), "0x" + A2.hex()]}
        cfg.update(memory or {})
        e, p = make_memory_engine(storage(name), cfg, **kw)
        engines.append(e)
        return e, p.memory

    return factory, engines


@pytest.fixture
def mk(tmp_path, storage_of):
    """Memory engines on each backend in turn (a name is one SQLite file or one PostgreSQL database)."""
    factory, engines = _factory(tmp_path, storage_of)
    yield factory
    for e in engines:
        close(e)


@pytest.fixture
def mk_sqlite(tmp_path):
    """Memory engines on SQLite files only (what SQLite alone has: FTS5, changesets, SQL functions)."""
    factory, engines = _factory(tmp_path, lambda name: tmp_path / name)
    yield factory
    for e in engines:
        close(e)


def test_hooks_declared_and_config_agents_registered(mk_sqlite):
    e, mem = mk_sqlite()
    assert {a["address"] for a in mem.agents()} == {"0x" + A1.hex(), "0x" + A2.hex()}
    kinds = dict(e.conn.execute("SELECT name, type FROM pragma_table_list WHERE name LIKE 'memory_%'").fetchall())
    assert kinds["memory_fts"] == "virtual"
    assert "memory_fts" in e.host.trimmed_tables and "memory_vectors" in e.host.trimmed_tables
    st_ = e.host.status()["memory"]
    assert st_["state"] == "enabled" and st_["agents"] == 2


def test_a_store_on_postgresql_sends_its_writes_with_its_commit(pg_url, tmp_path, monkeypatch):
    """On PostgreSQL a store's writes whose results nobody reads (the item row, its tags, keyword row and embedding
    queue row) travel with its ``COMMIT``, and its lock with its first read: six round trips, not eleven. A failure among them (here a trigger
    refusing the tag row) fails the whole store: nothing of it is written, and the next store works."""
    import psycopg

    from monmouth.backends.postgres import PgDatabase
    from tests.pg import round_trips

    conns: list = []  # every connection the plugin opens, to trace them all
    connect = PgDatabase.connect

    def tracked(self, *args, **kwargs):
        conns.append(connect(self, *args, **kwargs))
        return conns[-1]

    monkeypatch.setattr(PgDatabase, "connect", tracked)
    e, p = make_memory_engine(pg_url, {"key_dir": str(tmp_path / "keys"), "agents": ["0x" + A1.hex()]})
    mem = p.memory
    e.apply(ChainCommitted(chain(extend(None, 1, number=1, n_txs=0))))
    mem.store(A1, "semantic", "warm up", tags=["ops"])
    out: list = []
    trips = round_trips(conns, lambda: out.append(mem.store(A1, "semantic", "the vault key rotates", tags=["ops"])))
    assert len(trips) == 6, trips
    assert trips[-1][-1] == "COMMIT" and len(trips[-1]) >= 5, trips  # item, tag, keyword, queue rows, COMMIT
    got = mem.get(A1, bytes.fromhex(out[0]["id"][2:]))
    assert got["content"] == "the vault key rotates" and got["tags"] == ["ops"]

    e.conn.execute("""
        CREATE FUNCTION refuse_tag() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'tag refused'; END $$;
        CREATE TRIGGER refuse_tag BEFORE INSERT ON memory_tags FOR EACH ROW EXECUTE FUNCTION refuse_tag()""")
    counts = "SELECT (SELECT count(*) FROM memory_items), (SELECT count(*) FROM memory_ops)"
    before = e.conn.execute(counts).fetchone()
    with pytest.raises(psycopg.errors.RaiseException, match="tag refused"):
        mem.store(A1, "semantic", "never stored", tags=["ops"])
    assert e.conn.execute(counts).fetchone() == before
    e.conn.execute("DROP TRIGGER refuse_tag ON memory_tags")
    mem.store(A1, "semantic", "stored after", tags=["ops"])
    assert e.conn.execute(counts).fetchone() == (before[0] + 1, before[1] + 1)
    close(e)


def test_store_get_list_update_delete(mk):
    e, mem = mk()
    e.apply(ChainCommitted(chain(extend(None, 1, number=1, n_txs=0))))
    r = mem.store(A1, "semantic", "the vault key rotates on fridays", key="vault", tags=["ops", "keys"],
                  metadata={"source": "runbook"})
    iid = bytes.fromhex(r["id"][2:])
    got = mem.get(A1, iid)
    assert got["content"] == "the vault key rotates on fridays" and got["tags"] == ["ops", "keys"]
    assert got["metadata"] == {"source": "runbook"} and got["key"] == "vault" and got["pending"]
    assert got["written_at_head"]["number"] == 1
    b = mem.store(A1, "procedural", b"\x00\x01binary", tags=["bin"])
    assert mem.get(A1, bytes.fromhex(b["id"][2:]))["content_b64"] == "AAFiaW5hcnk="
    assert [i["id"] for i in mem.list(A1, tags=["ops"])] == [r["id"]]
    assert [i["id"] for i in mem.list(A1, key="vault")] == [r["id"]]
    assert {i["id"] for i in mem.list(A1)} == {r["id"], b["id"]}
    assert mem.list(A1, kind="procedural")[0]["id"] == b["id"]
    assert mem.list(A2) == []
    up = mem.update(A1, iid, content="the vault key rotates on mondays", tags=["ops"])
    assert up["version"] == 2 and up["content"].endswith("mondays") and up["tags"] == ["ops"]
    assert mem.list(A1, tags=["keys"]) == []
    mem.delete(A1, bytes.fromhex(b["id"][2:]))
    with pytest.raises(NotFoundError):
        mem.get(A1, bytes.fromhex(b["id"][2:]))
    # Other agents cannot read it.
    with pytest.raises(NotFoundError):
        mem.get(A2, iid)


def test_bad_requests_name_the_field(mk):
    _e, mem = mk(memory={"max_content_bytes": 100})
    cases = [
        (lambda: mem.store(OUTSIDER, "semantic", "x"), UnknownAgentError, "agent", 404),
        (lambda: mem.store(A1, "dream", "x"), MemoryRequestError, "kind", 422),
        (lambda: mem.store(A1, "semantic", "x" * 101), MemoryRequestError, "content", 413),
        (lambda: mem.store(A1, "semantic", "x", ttl_seconds=5), MemoryRequestError, "ttl_seconds", 422),
        (lambda: mem.store(A1, "working", "x", ttl_seconds=-1), MemoryRequestError, "ttl_seconds", 422),
        (lambda: mem.store(A1, "working", "x", ttl_blocks=0), MemoryRequestError, "ttl_blocks", 422),
        (lambda: mem.store(A1, "working", "x", tags=[""]), MemoryRequestError, "tags", 422),
        (lambda: mem.store(A1, "working", "x", metadata=[1]), MemoryRequestError, "metadata", 422),
        (lambda: mem.recall(A1, ""), MemoryRequestError, "query", 422),
    ]
    for fn, exc, field, status in cases:
        with pytest.raises(exc) as ei:
            fn()
        assert ei.value.field == field and status_of(ei.value) == status, (field, ei.value)


def test_chain_episodes_for_agents_only_and_encrypted(mk):
    e, mem = mk()
    bs = extend(None, 4, number=1, n_txs=4)
    e.apply(ChainCommitted(chain(bs)))
    expected = set()
    for b in bs:
        for i, tx in enumerate(b.transactions):
            for a in {tx.sender, tx.to} & {A1, A2}:
                expected.add((a, tx.hash, "transaction"))
            for lg in b.receipts[i].logs:
                for a in {lg.topics[1][12:], lg.topics[2][12:]} & {A1, A2}:
                    expected.add((a, tx.hash, "transfer"))
    assert expected, "the synthetic chain should touch the agents"
    got = set()
    for a in (A1, A2):
        for it in mem.list(a, limit=1000):
            assert it["origin"] == "chain" and it["kind"] == "episodic" and not it["pending"]
            got.add((a, bytes.fromhex(it["metadata"]["tx"][2:]), it["metadata"]["type"]))
            assert it["content"].startswith("Block ")
    assert got == expected
    # Ciphertext only: no rendered text is stored in the clear.
    some = mem.list(A1, limit=1)[0]["content"].encode()
    for (ct,) in e.conn.execute("SELECT ct FROM memory_items"):
        assert some not in ct
    # Chain-derived memories are immutable through the API.
    with pytest.raises(ConflictError):
        mem.delete(A1, bytes.fromhex(mem.list(A1, limit=1)[0]["id"][2:]))


def test_roots_match_leaves_and_proofs_verify(mk):
    e, mem = mk()
    bs = extend(None, 3, number=1, n_txs=4)
    e.apply(ChainCommitted(chain(bs)))
    for a in (A1, A2):
        for b in bs:
            r = mem.agent_root(a, b.number)
            leaves = mem.leaves(a, b.number)
            assert merkle.root_of([bytes.fromhex(x["leaf"][2:]) for x in leaves["leaves"]]).hex() == r["root"][2:] \
                or (not leaves["leaves"] and r["root"] == "0x" + "00" * 32)
            for x in leaves["leaves"]:
                p = mem.proof(a, bytes.fromhex(x["values"][0][2:]), b.number)
                assert merkle.verify(bytes.fromhex(p["root"][2:]), bytes.fromhex(p["leaf"][2:]),
                                     [bytes.fromhex(s[2:]) for s in p["proof"]])
    g = mem.global_root()
    heads = [merkle.agent_leaf(a, bytes.fromhex(mem.agent_root(a)["root"][2:])) for a in (A1, A2)
             if mem.agent_root(a)["count"]]
    assert g["root"] == "0x" + merkle.root_of(heads).hex()
    r = mem.agent_root(A1, with_global_proof=True)
    assert merkle.verify(bytes.fromhex(g["root"][2:]), bytes.fromhex(r["global_leaf"][2:]),
                         [bytes.fromhex(s[2:]) for s in r["global_proof"]])


def test_leaves_of_many_agents_seek_each_agent_and_equal_one_agent_at_a_time(mk_sqlite):
    """The roots of a block's agents read their leaves in one statement; it must seek each agent's leaves by the
    primary key, not scan the table (SQLite's planner chose a scan with a Bloom filter for a plain JOIN)."""
    from monmouth_memory.lattice import LEAVES_OF, leaves_at, leaves_at_many

    e, mem = mk_sqlite()
    bs = extend(None, 4, number=1, n_txs=4)
    e.apply(ChainCommitted(chain(bs)))
    mem.store(A1, "semantic", "a note")
    e.apply(ChainCommitted(chain(extend(bs[-1], 1, n_txs=0))))
    settle(e.db.reader())
    conn = e.db.reader()
    n = 200  # a block's agents: with a plain JOIN, the planner scanned from a few dozen on
    sql = "EXPLAIN QUERY PLAN " + LEAVES_OF.format(values=",".join(["(?, ?)"] * n))
    plan = " | ".join(r[3] for r in conn.execute(sql, [x for i in range(n) for x in (address(i), 5)]))
    assert "SEARCH l USING PRIMARY KEY (agent=?)" in plan and "SCAN l" not in plan, plan
    for block in (1, 3, 5):
        many = leaves_at_many(conn, [(A1, block), (A2, block), (OUTSIDER, block)])
        one = {a: leaves_at(conn, a, block) for a in (A1, A2, OUTSIDER)}
        assert many == {a: rows for a, rows in one.items() if rows} and many[A1], block


def test_api_items_anchor_at_next_block_and_reanchor_after_reorg(mk):
    e, mem = mk()
    bs = extend(None, 2, number=1, n_txs=0)
    e.apply(ChainCommitted(chain(bs)))
    r = mem.store(A1, "semantic", "re-anchor me")
    iid = bytes.fromhex(r["id"][2:])
    with pytest.raises(NotFoundError, match="not anchored yet"):
        mem.proof(A1, iid)
    b3 = extend(bs[-1], 1, salt="a", n_txs=0)
    e.apply(ChainCommitted(chain(b3)))
    got = mem.get(A1, iid)
    assert got["anchor"] == {"block": 3, "hash": "0x" + b3[0].hash.hex(), "version": 1} and not got["pending"]
    root_a = mem.agent_root(A1, 3)["root"]
    # Updates and a new item between blocks, then a reorg of block 3: no journal conflict, and everything is
    # anchored again on the new chain.
    mem.update(A1, iid, content="re-anchor me, version two")
    r2 = mem.store(A1, "working", "short-lived", ttl_blocks=2)
    fork = extend(bs[-1], 2, salt="b", n_txs=0)
    e.apply(ChainReorged(chain(b3), chain(fork)))
    got = mem.get(A1, iid)
    assert got["anchor"]["hash"] == "0x" + fork[0].hash.hex() and got["anchor"]["version"] == 2
    assert mem.agent_root(A1, 3)["root"] != root_a
    p = mem.proof(A1, iid, 3)
    assert p["values"][3] == 2 and p["values"][4] == 3
    # Working memory with a TTL of 2 blocks: anchored at 3, gone from the root at block 5.
    assert mem.proof(A1, bytes.fromhex(r2["id"][2:]), 4)
    e.apply(ChainCommitted(chain(extend(fork[-1], 1, salt="c", n_txs=0))))
    with pytest.raises(NotFoundError):
        mem.proof(A1, bytes.fromhex(r2["id"][2:]), 5)
    with pytest.raises(NotFoundError, match="expired"):
        mem.get(A1, bytes.fromhex(r2["id"][2:]))
    assert mem.agent_root(A1, 5)["count"] == 1
    # Deleting takes the item out of the root at the next block.
    mem.delete(A1, iid)
    e.apply(ChainCommitted(chain(extend(e_block(e, 5), 1, salt="d", n_txs=0))))
    assert mem.agent_root(A1, 6)["count"] == 0
    assert mem.agent_root(A1, 6)["root"] == "0x" + "00" * 32
    assert mem.proof(A1, iid, 5)["values"][3] == 2  # history is still provable


def e_block(engine, number) -> Block:
    sb = engine.canonical(number)
    return Block(sb.number, sb.hash, sb.parent_hash, sb.timestamp, b"\x00" * 20, 0, 0)


def test_revert_removes_roots_and_derived_rows(mk):
    e, mem = mk()
    bs = extend(None, 5, number=1, n_txs=4)
    e.apply(ChainCommitted(chain(bs[:2])))
    mem.ensure_indexed()
    before = dump(e.conn)
    assert before["memory_fts"] and before["memory_tags"]  # the episodes of blocks 1-2, indexed after their block
    e.apply(ChainCommitted(chain(bs[2:])))
    mem.ensure_indexed()
    assert e.conn.execute("SELECT count(*) FROM memory_tags WHERE n >= ?", (3 << 20,)).fetchone()[0]
    e.apply(ChainReverted(chain(bs[2:])))
    assert dump(e.conn) == before
    mem.ensure_indexed()  # the watermark went back below block 3: nothing of it comes back
    assert dump(e.conn) == before
    assert fts_rows_from(e.conn, 3 << 20) == 0
    with pytest.raises(NotFoundError):
        mem.global_root(3)
    # A fork at the same heights reuses the same row ids: it is indexed again, like a fresh run of the final chain.
    fork = extend(bs[1], 3, salt="fork", n_txs=4)
    e.apply(ChainCommitted(chain(fork)))
    mem.ensure_indexed()
    ref, ref_mem = mk("ref.sqlite")
    ref.apply(ChainCommitted(chain(bs[:2] + fork)))
    ref_mem.ensure_indexed()
    assert dump(e.conn) == dump(ref.conn)
    assert fts_rows_from(e.conn, 3 << 20) == \
        e.conn.execute("SELECT count(*) FROM memory_items WHERE n >= ?", (3 << 20,)).fetchone()[0] > 0


def test_the_tags_migration_keeps_every_tag_keyed_by_item(tmp_path, storage_of, monkeypatch):
    """SQLite's migration 6 (PostgreSQL's 2) keys ``memory_tags`` by item ``(n, tag)`` instead of ``(agent, tag, n)``:
    a database written before it keeps every tag row, its tag filters answer the same, and a revert afterwards
    removes the reverted block's tags as on a fresh database."""
    from monmouth_memory import plugin as memory_plugin
    from monmouth_memory import schema

    bs = extend(None, 3, number=1, n_txs=4)
    factory, engines = _factory(tmp_path, storage_of)
    try:
        monkeypatch.setattr(memory_plugin, "MIGRATIONS", schema.MIGRATIONS[:5])
        monkeypatch.setattr(memory_plugin, "PG_MIGRATIONS", schema.PG_MIGRATIONS[:1])
        e, mem = factory()
        e.apply(ChainCommitted(chain(bs[:2])))
        mem.store(A1, "semantic", "rotate the vault key", tags=["ops", "keys"])
        e.apply(ChainCommitted(chain(bs[2:])))
        mem.ensure_indexed()
        before = dump(e.conn)
        filters = ("ops", "keys", "chain", "transaction", "received", "sent")
        listed = {t: [i["id"] for i in mem.list(A1, tags=[t])] for t in filters}
        assert listed["ops"] and listed["chain"] and len(before["memory_tags"]) > 12
        close(engines.pop())
        monkeypatch.undo()

        e, mem = factory()  # the same database, migrated
        versions = dict(e.conn.execute("SELECT plugin, version FROM monmouth_migrations").fetchall())
        assert versions["memory"] == len(schema.PG_MIGRATIONS if backend(e.conn) == "postgres" else schema.MIGRATIONS)
        assert dump(e.conn) == before
        assert {t: [i["id"] for i in mem.list(A1, tags=[t])] for t in filters} == listed
        if backend(e.conn) == "sqlite":
            pk = [r[2] for r in sorted(e.conn.execute("SELECT * FROM pragma_index_xinfo("
                                                        "(SELECT name FROM pragma_index_list('memory_tags') WHERE "
                                                        "origin = 'pk'))").fetchall()) if r[5]]
            assert pk == ["n", "tag"]
        e.apply(ChainReverted(chain(bs[2:])))
        mem.ensure_indexed()
        assert e.conn.execute("SELECT count(*) FROM memory_tags WHERE n >= ?", (3 << 20,)).fetchone()[0] == 0
        ref, ref_mem = factory("ref.sqlite")
        ref.apply(ChainCommitted(chain(bs[:2])))
        ref_mem.ensure_indexed()
        assert dump(e.conn)["memory_tags"] == [r for r in before["memory_tags"] if r[2] < 3 << 20] == \
            dump(ref.conn)["memory_tags"]
        assert [i["id"] for i in mem.list(A1, tags=["ops"])] == listed["ops"]  # the API item's tags (n < 0) stay
    finally:
        for engine in engines:
            close(engine)


def test_the_block_transaction_records_the_block_and_settling_derives_it(mk_sqlite):
    e, mem = mk_sqlite()
    mem.store(A1, "semantic", "written through the API")
    bs = extend(None, 2, number=1, n_txs=3)
    e.apply(ChainCommitted(chain(bs)))
    q = e.conn.execute
    # The engine's transactions wrote one pending row per block, and moved the op cursor: nothing derived yet.
    assert q("SELECT block_number, ops_from, ops_to FROM memory_pending ORDER BY 1").fetchall() == [(1, 0, 1),
                                                                                                  (2, 1, 1)]
    assert q("SELECT agents FROM memory_pending WHERE block_number = 1").fetchone()[0] == b"".join(sorted([A1, A2]))
    for t in ("memory_leaves", "memory_marks", "memory_blocks", "memory_items WHERE origin = 1"):
        assert q(f"SELECT count(*) FROM {t}").fetchone()[0] == 0, t
    # Their undo data hold the op cursor alone: no memory row of any agent is journaled.
    journaled = {ch.name for (cs,) in q("SELECT changeset FROM monmouth_blocks") for ch in apsw.Changeset.iter(cs)}
    assert journaled == {"memory_sync"}
    assert e.host.status()["memory"]["settle_backlog"] == 2
    # Another plugin's connection settles through the SQL function, then reads every block's root.
    other = apsw.Connection(str(e.db.path))
    assert other.execute("SELECT count(*) FROM memory_global_roots").fetchone()[0] == 0
    assert other.execute("SELECT memory_settle()").fetchone()[0] == 1
    roots = other.execute("SELECT block_number, root, agents FROM memory_global_roots ORDER BY 1").fetchall()
    assert [r[0] for r in roots] == [1, 2] and roots[1][2] == 2
    assert "0x" + roots[1][1].hex() == mem.global_root(2)["root"]
    assert q("SELECT count(*) FROM memory_pending").fetchone()[0] == 0
    assert q("SELECT count(*) FROM memory_items WHERE origin = 1").fetchone()[0] > 0
    assert mem.get(A1, bytes.fromhex(mem.list(A1, origin="api")[0]["id"][2:]))["anchor"]["block"] == 1
    # Inside a connection's write transaction (another plugin's chain hook) it settles in that transaction, which
    # may still roll back; inside a read snapshot, which would not see it, it does nothing.
    e.apply(ChainCommitted(chain(extend(bs[-1], 1, n_txs=3))))
    q("BEGIN IMMEDIATE")
    assert q("SELECT memory_settle()").fetchone()[0] == 1
    assert q("SELECT max(block_number) FROM memory_global_roots").fetchone()[0] == 3
    q("ROLLBACK")
    other.execute("BEGIN")
    assert other.execute("SELECT memory_settle(), max(block_number) FROM memory_blocks").fetchone() == (0, 2)
    other.execute("COMMIT")
    other.close()
    assert q("SELECT block_number FROM memory_pending").fetchall() == [(3,)]


def test_agents_registered_or_forgotten_between_blocks_are_seen_by_the_next_block(mk):
    e, mem = mk()
    a3 = address(4)
    bs = extend(None, 4, number=1, n_txs=12)  # transfers among address(0..7): every block touches address(1) and address(4)

    def chain_items(agent: bytes) -> int:
        settle(e.conn)
        return e.conn.execute("SELECT count(*) FROM memory_items WHERE agent = ? AND origin = 1",
                              (agent,)).fetchone()[0]

    e.apply(ChainCommitted(chain(bs[:1])))
    assert chain_items(A1) > 0 and chain_items(A2) > 0 and chain_items(a3) == 0
    mem.register(a3)  # through the API, between blocks: the hook's cached set of agents is reloaded
    e.apply(ChainCommitted(chain(bs[1:2])))
    n3 = chain_items(a3)
    assert n3 > 0
    n2 = chain_items(A2)
    mem.forget(A2)
    e.apply(ChainCommitted(chain(bs[2:4])))
    assert chain_items(A2) == 0 and chain_items(a3) > n3
    assert n2 > 0


op = st.one_of(
    st.tuples(st.just("commit"), st.integers(1, 3)),
    st.tuples(st.just("reorg"), st.integers(1, 4), st.integers(1, 4)),
    st.tuples(st.just("revert"), st.integers(1, 4)),
    st.tuples(st.just("api"), st.integers(0, 3)),
    st.tuples(st.just("index")),
    st.tuples(st.just("settle"), st.integers(1, 3)),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(op, min_size=1, max_size=10), txs=st.integers(1, 4))
def test_random_reorgs_leave_chain_memory_equal_to_fresh_run(mk, ops, txs):
    """Chain-derived memory after any commits/reorgs/reverts (with API writes interleaved) equals a fresh run of
    the final chain; API items survive, each anchored on the final chain."""
    run = uuid.uuid4().hex
    e, mem = mk(f"live-{run}.sqlite")
    canonical = extend(None, 2, number=1, salt=run, n_txs=txs)
    e.apply(ChainCommitted(chain(canonical)))
    api_ids = []
    for i, o in enumerate(ops):
        if o[0] == "commit":
            new = extend(canonical[-1], o[1], salt=(run, i), n_txs=txs)
            e.apply(ChainCommitted(chain(new)))
            canonical += new
        elif o[0] in ("reorg", "revert"):
            depth = min(o[1], len(canonical) - 1)
            if depth < 1:
                continue
            old, base = canonical[-depth:], canonical[:-depth]
            if o[0] == "reorg":
                new = extend(base[-1], o[2], salt=(run, i, "f"), n_txs=txs)
                e.apply(ChainReorged(chain(old), chain(new)))
                canonical = base + new
            else:
                e.apply(ChainReverted(chain(old)))
                canonical = base
        elif o[0] == "index":  # what the worker does after a block: index the chain-derived items committed so far
            mem.ensure_indexed()
        elif o[0] == "settle":  # settle only the oldest blocks: later reverts meet settled and pending blocks
            ingest.settle(mem, limit=o[1])
        else:
            if o[1] == 0 or not api_ids:
                api_ids.append((A1, bytes.fromhex(mem.store(A1, "semantic", f"note {i}")["id"][2:])))
            elif o[1] == 1:
                with contextlib.suppress(NotFoundError):  # an expired working item
                    mem.update(*api_ids[-1], content=f"note {i} updated")
            elif o[1] == 2:
                with contextlib.suppress(NotFoundError):
                    mem.delete(*api_ids.pop())
            else:
                api_ids.append((A2, bytes.fromhex(mem.store(A2, "working", f"tmp {i}", ttl_blocks=3)["id"][2:])))
        assert e.head == canonical[-1].ref
    # Compare the chain-derived rows with a fresh run (API writes excluded by anchoring one more block on both).
    ref, ref_mem = mk(f"ref-{run}.sqlite")
    ref.apply(ChainCommitted(chain(canonical)))
    mem.ensure_indexed()
    ref_mem.ensure_indexed()
    live = dump(e.conn)
    fresh = dump(ref.conn)
    assert live["memory_items"] == fresh["memory_items"]
    assert live["memory_fts"] == fresh["memory_fts"]
    assert live["memory_tags"] == fresh["memory_tags"]
    assert len(live["memory_fts"]) == len(live["memory_items"])  # every chain item indexed, once
    chain_ids = {r[1] for r in live["memory_items"]}
    assert [r for r in live["memory_leaves"] if r[1] in chain_ids] == \
        [r for r in fresh["memory_leaves"] if r[1] in chain_ids]
    # Every surviving API item is visible and, after one more block, anchored on the final chain.
    nxt = extend(canonical[-1], 1, salt=(run, "last"), n_txs=0)
    e.apply(ChainCommitted(chain(nxt)))
    for agent, iid in api_ids:
        try:
            it = mem.get(agent, iid)
        except NotFoundError:
            continue  # an expired working item
        assert it["anchor"] is not None and not it["pending"]
        assert e.canonical(it["anchor"]["block"]).hash.hex() == it["anchor"]["hash"][2:]


def test_sweep_deletes_expired_working_memory_rows(mk):
    e, mem = mk()
    e.apply(ChainCommitted(chain(extend(None, 1, number=1, n_txs=0))))
    r = mem.store(A1, "working", "gone soon", ttl_seconds=60)
    keep = mem.store(A1, "semantic", "stays")
    e.conn.execute("UPDATE memory_items SET expires_at = 1 WHERE id = ?", (bytes.fromhex(r["id"][2:]),))
    with pytest.raises(NotFoundError, match="expired"):
        mem.get(A1, bytes.fromhex(r["id"][2:]))
    assert mem.sweep() == 1
    assert [i["id"] for i in mem.list(A1)] == [keep["id"]]
    assert e.conn.execute("SELECT count(*) FROM memory_fts").fetchone()[0] == 1


def test_config_model_refuses_unknown_keys_and_bad_agents(tmp_path):
    from monmouth.config import validate
    from monmouth.errors import ConfigError
    from monmouth_memory.plugin import MemoryPlugin

    models = {"memory": MemoryPlugin().monmouth_config_model()}
    with pytest.raises(ConfigError, match="plugins.memory.colour"):
        validate({"plugins": {"memory": {"colour": "red"}}}, "config.toml", models)
    with pytest.raises(ConfigError, match="plugins.memory.agents"):
        validate({"plugins": {"memory": {"agents": ["0x12"]}}}, "config.toml", models)
    s = validate({"plugins": {"memory": {"enabled": True, "retention_blocks": 10}}}, "config.toml", models)
    assert s.plugins["memory"].config.retention_blocks == 10


def test_agent_addresses_for_other_plugins(mk):
    e, mem = mk()
    from monmouth_memory import plugin as module

    assert set(module.agent_addresses(e.conn)) == {A1, A2}
    mem.forget(A2)
    assert module.agent_addresses(e.conn) == [A1]


def test_retention_prunes_old_roots_and_answers_410(mk):
    from monmouth_memory.errors import GoneError

    e, mem = mk(memory={"retention_blocks": 5, "prune_every": 2})
    bs = extend(None, 20, number=1, n_txs=3)
    e.apply(ChainCommitted(chain(bs)))
    settle(e.conn)
    low = e.conn.execute("SELECT min(block_number) FROM memory_blocks").fetchone()[0]
    assert low == 15
    with pytest.raises(GoneError) as ei:
        mem.global_root(3)
    assert status_of(ei.value) == 410 and ei.value.field == "block"
    for b in range(15, 21):  # every retained block still answers roots and proofs
        for a in (A1, A2):
            r = mem.agent_root(a, b)
            for x in mem.leaves(a, b)["leaves"]:
                assert mem.proof(a, bytes.fromhex(x["values"][0][2:]), b)["root"] == r["root"]
    with pytest.raises(GoneError):
        mem.changes(A1, 2)


def test_lazy_roots_are_not_stale_after_a_revert_and_reapply_of_the_same_block(mk):
    """Roots are computed on demand and cached by (block, stamp): re-applying the same block hash with other
    content (an API write made between the revert and the re-apply) must give the new roots, in memory and after
    the cache rows were persisted."""
    e, mem = mk()
    bs = extend(None, 5, number=1, n_txs=0)
    e.apply(ChainCommitted(chain(bs[:2])))
    mem.store(A1, "semantic", "first")
    e.apply(ChainCommitted(chain(bs[2:3])))
    r1, g1 = mem.agent_root(A1, 3), mem.global_root(3)
    assert r1["count"] == 1
    e.apply(ChainReverted(chain(bs[2:3])))
    mem.store(A1, "semantic", "second")
    e.apply(ChainCommitted(chain(bs[2:3])))  # the same block 3 anchors both writes now
    e.apply(ChainCommitted(chain(bs[3:4])))  # flushes cached rows (the stale ones must be refused)
    for i in range(2):
        r2, g2 = mem.agent_root(A1, 3), mem.global_root(3)
        assert r2["count"] == 2 and r2["root"] != r1["root"] and g2["root"] != g1["root"]
        leaves = [bytes.fromhex(x["leaf"][2:]) for x in mem.leaves(A1, 3)["leaves"]]
        assert r2["root"] == "0x" + merkle.root_of(leaves).hex()
        assert g2["root"] == "0x" + merkle.root_of([merkle.agent_leaf(A1, bytes.fromhex(r2["root"][2:]))]).hex()
        if i == 0:
            e.apply(ChainCommitted(chain(bs[4:])))  # persists the rows just computed
            mem.lattice.invalidate()  # second round: from the persisted cache rows
    stamps = dict(e.conn.execute("SELECT block_number, stamp FROM memory_global_cache"))
    assert stamps[3] == e.conn.execute("SELECT stamp FROM memory_blocks WHERE block_number = 3").fetchone()[0]
    if backend(e.conn) == "postgres":
        return  # no SQL view of the roots there (it calls a Python SQL function on SQLite)
    # The SQL view other plugins read gives the same roots.
    view = e.conn.execute("SELECT root FROM memory_global_roots WHERE block_number = 3").fetchone()[0]
    assert "0x" + view.hex() == g2["root"]


def test_forget_keeps_the_global_roots_of_earlier_blocks(mk):
    e, mem = mk()
    bs = extend(None, 6, number=1, n_txs=3)
    e.apply(ChainCommitted(chain(bs[:3])))
    mem.store(A1, "semantic", "one")
    mem.store(A2, "semantic", "two")
    e.apply(ChainCommitted(chain(bs[3:4])))
    mem.lattice.invalidate()
    before = {b: mem.global_root(b)["root"] for b in range(1, 5)}
    mem.forget(A1)
    assert {b: mem.global_root(b)["root"] for b in range(1, 5)} == before
    # A global proof of the remaining agent still verifies under an earlier block's root.
    r = mem.agent_root(A2, 4, with_global_proof=True)
    assert merkle.verify(bytes.fromhex(before[4][2:]), bytes.fromhex(r["global_leaf"][2:]),
                         [bytes.fromhex(x[2:]) for x in r["global_proof"]])
    # New blocks (and blocks re-applied after a revert) no longer count the forgotten agent.
    e.apply(ChainCommitted(chain(bs[4:5])))
    g5 = mem.global_root(5)
    assert g5["agents"] == 1
    assert g5["root"] == "0x" + merkle.root_of([merkle.agent_leaf(A2, bytes.fromhex(
        mem.agent_root(A2, 5)["root"][2:]))]).hex()
    e.apply(ChainReverted(chain(bs[3:5])))
    e.apply(ChainCommitted(chain(bs[3:5])))
    assert mem.global_root(4)["agents"] == 1 and mem.global_root(4)["root"] != before[4]
