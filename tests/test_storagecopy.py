"""``monmouth storage copy`` (sidecar/storagecopy.py): a SQLite deployment moved to a real PostgreSQL (tests/pg.py)
behaves exactly like the original on the next reorg; refusals leave the target empty."""

from __future__ import annotations

import os
import subprocess

import apsw
import pytest

from monmouth.backends.postgres import PgDatabase
from monmouth.types import ChainCommitted, ChainReorged, ChainReverted
from tests.chains import chain, extend
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
