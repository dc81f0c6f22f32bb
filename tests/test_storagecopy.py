"""``monmouth storage copy`` (sidecar/storagecopy.py): a SQLite deployment moved to a real PostgreSQL (tests/pg.py)
behaves exactly like the original on the next reorg; refusals leave the target empty."""

from __future__ import annotations

import os
import subprocess

import apsw
import pytest

from monmouth.backends.postgres import PgDatabase
from monmouth.types import ChainCommitted, ChainReorged, ChainReverted
from tests.chains import address, chain, extend
from tests.conftest import make_engine, settings_for
from tests.pg import PASSWORD
from tests.plugins import ledger, tally
from tests.running import MONMOUTH, ROOT

PLUGINS = {"ledger": ledger, "tally": tally}
TABLES = ("ledger_transfers", "ledger_balances", "ledger_block_stats", "tally_counts")


def dump(engine) -> dict[str, list[tuple]]:
    """Every plugin table, the hash history (undo held or not) and the cursor, comparable across backends."""
    conn = engine.conn
    out = {t: sorted(tuple(bytes(v) if isinstance(v, memoryview) else v for v in r)
                     for r in conn.execute(f"SELECT * FROM {t}").fetchall()) for t in TABLES}
    out["blocks"] = [tuple(bytes(v) if isinstance(v, memoryview) else v for v in r) for r in conn.execute(
        "SELECT number, hash, parent_hash, timestamp, changeset IS NOT NULL FROM monmouth_blocks ORDER BY number")]
    out["cursor"] = [(engine.head, engine.finalized, engine.notifications_seen, engine.reorgs_seen)]
    return out


def sqlite_deployment(path) -> list:
    """A SQLite database built by the engine with ledger and tally through commits and a reorg; its canonical
    blocks."""
    engine = make_engine(path, PLUGINS, undo_window=64)
    blocks = extend(None, 12, n_txs=3)
    engine.apply(ChainCommitted(chain(blocks)))
    fork = extend(blocks[8], 4, salt="fork", n_txs=2)
    engine.apply(ChainReorged(chain(blocks[9:]), chain(fork)))
    canonical = blocks[:9] + fork
    engine.host.shutdown()
    engine.close()
    return canonical


def test_a_copied_deployment_reverts_exactly_like_the_original(tmp_path, pg_server):
    canonical = sqlite_deployment(tmp_path / "db.sqlite")
    url = pg_server.database()
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[storage]\npath = "db.sqlite"\n[plugins.ledger]\nenabled = true\nmodule = "{ROOT}/tests/plugins/ledger.py"\n'
                   f'[plugins.tally]\nenabled = true\nmodule = "{ROOT}/tests/plugins/tally.py"\n')
    r = subprocess.run([*MONMOUTH, "storage", "copy", "--to", url, "--config", str(cfg)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "MONMOUTH_PG_PASSWORD": PASSWORD})
    assert r.returncode == 0, r.stderr
    assert f"head {canonical[-1].number}" in r.stdout and "tally_counts" in r.stdout, r.stdout

    original = make_engine(tmp_path / "db.sqlite", PLUGINS, undo_window=64)
    copy = make_engine(url, PLUGINS, undo_window=64)
    try:
        assert dump(copy) == dump(original)
        undo = copy.conn.execute("SELECT count(*), count(DISTINCT block), "
                                 "count(*) FILTER (WHERE op = 'U'), count(*) FILTER (WHERE op = 'D') "
                                 "FROM monmouth_undo").fetchone()
        assert undo[0] > 0 and undo[1] == len(canonical) and undo[2] > 0 and undo[3] > 0  # I, U and D images
        # The same reorg (deeper than the one before the copy, into blocks from before it) and a revert, on both.
        other = extend(canonical[5], 5, salt="other", n_txs=2)
        for n in (ChainReorged(chain(canonical[6:]), chain(other)), ChainReverted(chain(other[3:]))):
            original.apply(n)
            copy.apply(n)
            assert dump(copy) == dump(original)
        assert copy.head == other[2].ref
        more = extend(other[2], 3, salt="more")
        for engine in (original, copy):
            engine.apply(ChainCommitted(chain(more)))
        assert dump(copy) == dump(original)
    finally:
        for e in (original, copy):
            e.host.shutdown()
            e.close()


def test_refusals_leave_the_target_empty(tmp_path, pg_server):
    from monmouth.storagecopy import CopyError, copy_to_postgres

    sqlite_deployment(tmp_path / "db.sqlite")
    url = pg_server.database()
    settings = settings_for(tmp_path / "db.sqlite", PLUGINS, enabled=("ledger", "tally"))
    target = PgDatabase(url, password=PASSWORD)
    tally.copies.clear()

    # An enabled plugin that does not run on PostgreSQL: refused naming it.
    sqlite_only = {**PLUGINS, "chainrecord": __import__("tests.plugins.chainrecord", fromlist=["x"])}
    with pytest.raises(CopyError, match="plugin 'chainrecord' does not support the postgres storage backend"):
        copy_to_postgres(settings_for(tmp_path / "db.sqlite", sqlite_only, enabled=("ledger", "chainrecord")),
                         sqlite_only, target)
    # A journaled table whose plugin is not enabled: its undo data has nowhere to go.
    with pytest.raises(CopyError, match="'tally_counts', which does not exist on the target"):
        copy_to_postgres(settings_for(tmp_path / "db.sqlite", PLUGINS, enabled=("ledger",)), PLUGINS, target)
    conn = target.connect()
    assert conn.execute("SELECT count(*) FROM monmouth_blocks").fetchone()[0] == 0  # rolled back, migrations too
    assert conn.execute("SELECT to_regclass('ledger_transfers')").fetchone()[0] is None

    # A copy while another process holds an open write transaction on the file: the committed snapshot is copied.
    writer = apsw.Connection(str(tmp_path / "db.sqlite"))
    writer.execute("BEGIN IMMEDIATE; DELETE FROM ledger_transfers; UPDATE monmouth_cursor SET notifications = 999")
    try:
        result = copy_to_postgres(settings, PLUGINS, target)
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert result.tables["ledger_transfers"] == 12 * 3 - 3 * 3 + 4 * 2 and tally.copies[-1]["in_transaction"]
    assert conn.execute("SELECT notifications FROM monmouth_cursor").fetchone()[0] == 2

    # Copying again: the target is not empty, refused naming the database; nothing merged.
    with pytest.raises(CopyError, match=rf"database '{url.rsplit('/', 1)[1]}'\) is not empty: it holds a cursor"):
        copy_to_postgres(settings, PLUGINS, target)
    assert conn.execute("SELECT count(*) FROM ledger_transfers").fetchone()[0] == result.tables["ledger_transfers"]
    conn.close()


def test_an_unreachable_target_is_named(tmp_path):
    from tests.anvil import free_port

    sqlite_deployment(tmp_path / "db.sqlite")
    (tmp_path / "config.toml").write_text('[storage]\npath = "db.sqlite"\n')
    url = f"postgresql://monmouth@127.0.0.1:{free_port()}/moved"
    r = subprocess.run([*MONMOUTH, "storage", "copy", "--to", url, "--config", "config.toml"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode != 0 and f"cannot connect to {url}" in r.stderr, r.stderr


# ------------------------------------------------------------------------------------------- rag and memory


def rag_memory_engine(target, keys):
    """An engine with rag (no background worker; :data:`tests.test_rag_support.PG_RAG`) and memory (agents A1, A2,
    keys in ``keys``) on a SQLite file or a PostgreSQL URL; ``(engine, memory plugin)``. One at a time: rag is a
    module."""
    from prometheus_client import CollectorRegistry

    import monmouth_rag.plugin as rag
    from monmouth.config import validate
    from monmouth.engine import Engine
    from monmouth.metrics import Metrics
    from monmouth.plugins import PluginHost, config_models
    from monmouth_memory.plugin import MemoryPlugin
    from tests.test_rag_support import PG_RAG, open_db

    memory = MemoryPlugin(workers=False)
    plugins = {"rag": rag, "memory": memory}
    db = open_db(target)
    metrics = Metrics(CollectorRegistry())
    host = PluginHost(plugins, db, metrics.registry)
    settings = validate({"plugins": {"rag": {"enabled": True, "worker": False, **PG_RAG},
                                     "memory": {"enabled": True, "key_dir": str(keys), "agents": AGENTS}},
                         "engine": {"undo_window": 64}}, "<test>", config_models(plugins))
    host.apply_settings(settings)
    assert host.errors == {}, host.errors
    return Engine(db, host, settings.engine, metrics), memory


AGENTS = ["0x" + address(1).hex(), "0x" + address(2).hex()]
#: What is comparable between the backends, per plugin table (ids, texts, vectors, roots; not the FTS internals).
PLUGIN_ROWS = {
    "rag_docs": "SELECT id, kind, block_number, tx_hash, doc_id, chunk, text, embed_text FROM rag_docs",
    "rag_pending": "SELECT doc, block_number, length FROM rag_pending",
    "rag_index": "SELECT id, block_number, has_vec FROM rag_index",
    "rag_edges": "SELECT src, dst, token, count, value, first_block, last_block FROM rag_edges",
    "rag_addresses": "SELECT address, role, doc, block_number FROM rag_addresses",
    "memory_items": "SELECT n, id, agent, kind, origin, version, nonce, ct FROM memory_items",
    "memory_leaves": "SELECT * FROM memory_leaves",
    "memory_ops": "SELECT * FROM memory_ops",
    "memory_marks": "SELECT agent, block_number, count FROM memory_marks",
    "memory_blocks": "SELECT block_number, block_hash, agents, ops_seq FROM memory_blocks",
    "memory_registry": "SELECT * FROM memory_registry",
    "memory_vectors": "SELECT n, agent, nonce, ct FROM memory_vectors",
    "memory_embed_queue": "SELECT n FROM memory_embed_queue",
}


def plugin_state(engine, mem, blocks) -> dict:
    """The comparable rows of the rag and memory tables, the stored vectors, the FTS row ids, and the memory global
    root and every proof at ``blocks``, after settling."""
    from tests.memory_helpers import settle
    from tests.test_rag_support import embeddings

    conn = engine.conn
    settle(conn)
    norm = lambda r: tuple(bytes(v) if isinstance(v, memoryview) else v for v in r)  # noqa: E731
    out: dict = {t: sorted(norm(r) for r in conn.execute(q).fetchall()) for t, q in PLUGIN_ROWS.items()}
    out["rag_vec"] = {k: v.tolist() for k, v in embeddings(conn).items()}
    out["rag_fts"] = sorted(r[0] for r in conn.execute("SELECT rowid FROM rag_fts").fetchall())
    pg = getattr(conn, "backend", "sqlite") == "postgres"
    out["memory_fts"] = sorted(r[0] for r in conn.execute(f"SELECT {'n' if pg else 'rowid'} FROM memory_fts"))
    m = mem.memory
    for b in blocks:
        out[("global", b)] = m.global_root(b)
        for a in (address(1), address(2)):
            leaves = m.leaves(a, b)
            out[("agent", a, b)] = (m.agent_root(a, b, with_global_proof=True), leaves)
            for x in leaves["leaves"]:
                out[("proof", a, x["values"][0], b)] = m.proof(a, bytes.fromhex(x["values"][0][2:]), b)
    return out


def searches(rag) -> dict:
    """The same searches on either backend: hybrid, vector and keyword hits (ids and texts)."""
    out = {}
    for q in ("transfer to the vault", "swap", "vault operations runbook"):
        for mode in ("hybrid", "vector", "keyword"):
            hits = rag.search(q, 50, mode)
            out[(q, mode)] = ([(h.id, h.text) for h in hits] if mode == "vector" else
                              sorted((h.id, h.text) for h in hits))  # keyword: BM25 over each backend's tokens
    return out


def test_a_rag_and_memory_deployment_copies_with_the_same_search_roots_and_proofs(tmp_path, pg_server):
    import monmouth_rag.plugin as rag
    from monmouth_memory.schema import PG_MIGRATIONS as MEMORY_PG
    from monmouth_rag.dialect import PG_MIGRATIONS as RAG_PG
    from tests.test_rag_support import fts_stats

    keys = tmp_path / "keys"
    a1, a2 = address(1), address(2)
    engine, mem = rag_memory_engine(tmp_path / "db.sqlite", keys)
    blocks = extend(None, 6, number=1, n_txs=4)  # transactions between the agents: chain episodes
    fork = extend(blocks[3], 3, salt="fork", n_txs=3)
    try:
        engine.apply(ChainCommitted(chain(blocks)))
        ids = [bytes([i]) * 32 for i in range(1, 4)]
        mem.memory.store(a1, "semantic", "the vault rotates keys every week", tags=["ops"], key="k1", item_id=ids[0])
        mem.memory.store(a2, "procedural", "runbook: pause the vault, then swap", item_id=ids[1])
        mem.memory.update(a1, ids[0], content="the vault rotates keys every day")
        rag.add_document("runbook", "Vault operations runbook. Pause deposits before a swap of the signer keys.")
        assert rag.drain() > 0  # the real model: vectors exist
        engine.apply(ChainReorged(chain(blocks[4:]), chain(fork)))
        mem.memory.store(a2, "semantic", "after the reorg", item_id=ids[2])
        rag.add_document("late", "A document added after the last embedding run waits in the queue.")
        canonical = blocks[:4] + fork
        heads = range(1, canonical[-1].number + 1)
        before, found = plugin_state(engine, mem, heads), searches(rag)
        assert before["rag_vec"] and before["rag_pending"] and before["memory_items"] and before["rag_edges"]
        assert any(r[4] == 1 for r in before["memory_items"]), "chain episodes (origin chain)"
    finally:
        engine.host.shutdown()
        engine.close()

    url = pg_server.database()
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[storage]\npath = "db.sqlite"\n[plugins.rag]\nenabled = true\nworker = false\n'
                   f'[plugins.memory]\nenabled = true\nkey_dir = "{keys}"\nagents = {AGENTS!r}\n'.replace("'", '"'))
    r = subprocess.run([*MONMOUTH, "storage", "copy", "--to", url, "--config", str(cfg)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "MONMOUTH_PG_PASSWORD": PASSWORD})
    assert r.returncode == 0, r.stderr
    assert "rag_vec" in r.stdout and "memory_fts" in r.stdout, r.stdout

    copy, cmem = rag_memory_engine(url, keys)
    try:
        versions = dict(copy.conn.execute("SELECT plugin, version FROM monmouth_migrations").fetchall())
        assert versions["memory"] == len(MEMORY_PG) == 2 and versions["rag"] == len(RAG_PG)
        assert plugin_state(copy, cmem, heads) == before  # vectors copied, not re-embedded; the same roots, proofs
        assert fts_stats(copy.conn)[0] == len(before["rag_fts"]), "BM25's statistics counted by the copy (recount)"
        assert searches(rag) == found
        pending = len(before["rag_pending"])  # the queue moved: the fork's transactions and the late document
        assert rag.drain() == pending == len(before["rag_docs"]) - len(before["rag_vec"]) > 1
        # The same reorg, deeper than the one before the copy, on both: the plugin tables stay equal.
        other = extend(canonical[2], 4, salt="other", n_txs=2)
        reorg = ChainReorged(chain(canonical[3:]), chain(other))
        copy.apply(reorg)
        after = plugin_state(copy, cmem, range(1, other[-1].number + 1))
        assert fts_stats(copy.conn)[0] == len(after["rag_fts"]), "and kept exact through the reorg"
    finally:
        copy.host.shutdown()
        copy.close()
    engine, mem = rag_memory_engine(tmp_path / "db.sqlite", keys)
    try:
        assert rag.drain() == pending
        engine.apply(reorg)
        assert plugin_state(engine, mem, range(1, other[-1].number + 1)) == after
    finally:
        engine.host.shutdown()
        engine.close()


def test_a_plugin_table_missing_a_column_is_refused_naming_it(tmp_path, pg_server):
    from monmouth.storagecopy import CopyError, copy_to_postgres
    from monmouth_memory.plugin import MemoryPlugin
    from tests.memory_helpers import close, make_memory_engine

    engine, _mem = make_memory_engine(tmp_path / "db.sqlite", {"key_dir": str(tmp_path / "keys"), "agents": AGENTS})
    engine.apply(ChainCommitted(chain(extend(None, 3, number=1, n_txs=2))))
    close(engine)
    conn = apsw.Connection(str(tmp_path / "db.sqlite"))
    conn.execute("ALTER TABLE memory_registry DROP COLUMN label")
    conn.close()
    plugins = {"memory": MemoryPlugin(workers=False)}
    settings = settings_for(tmp_path / "db.sqlite", plugins, enabled=("memory",))
    target = PgDatabase(pg_server.database(), password=PASSWORD)
    with pytest.raises(CopyError, match="table 'memory_registry': column.s. label of the PostgreSQL table are "
                                        "missing from the SQLite table 'memory_registry'; nothing was written"):
        copy_to_postgres(settings, plugins, target)
    conn = target.connect()
    assert conn.execute("SELECT count(*) FROM monmouth_migrations").fetchone()[0] == 0
    assert conn.execute("SELECT to_regclass('memory_items')").fetchone()[0] is None
    conn.close()
