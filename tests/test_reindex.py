"""`monmouth reindex PLUGIN [--from N]` on anvil: drops and rebuilds one plugin's tables from the node's history with
progress, stays reorg-exact afterwards (its changes were taken out of the held undo data and put back by the
rebuild), and refuses bad input (unknown plugin, block above the head, another reindex running) changing nothing."""

from __future__ import annotations

import fcntl
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner

from monmouth import hookimpl
from monmouth.app import open_app
from monmouth.cli import cli
from monmouth.progress import Progress
from monmouth.reindex import reindex
from monmouth.replayfile import ReplayWriter
from monmouth.runner import Runner
from monmouth.sources.rpc import RpcSource
from monmouth.types import Chain, ChainCommitted
from tests.chains import chain, extend
from tests.conftest import make_engine, rpc_config, wait_for
from tests.plugins import ledger

ROOT = Path(__file__).resolve().parents[1]
TABLES = ("ledger_transfers", "ledger_balances", "ledger_block_stats")
pytestmark = pytest.mark.anvil


def dump(conn) -> dict[str, list[tuple]]:
    return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall()) for t in TABLES}


def index_to_head(cfg: Path, anvil) -> None:
    """Run the sidecar in-process until its head is anvil's head."""
    async def main() -> None:
        app = open_app(cfg)
        runner = Runner(app, RpcSource(anvil.url, poll_interval=0.05), serve_http=False, watch_config=False)
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner.run)
            await wait_for(lambda: app.engine.head is not None and "0x" + app.engine.head.hash.hex() == anvil.head()[1])
            tg.cancel_scope.cancel()
        app.close()
    anyio.run(main)


def reference(tmp_path: Path, anvil) -> dict[str, list[tuple]]:
    """The ledger tables of a fresh index of anvil's canonical chain."""
    async def fetch():
        source = RpcSource(anvil.url)
        try:
            return await source.fetch_blocks(0, anvil.head()[0])
        finally:
            await source.aclose()
    engine = make_engine(tmp_path / f"ref-{anvil.head()[1]}.sqlite", {"ledger": ledger})
    engine.apply(ChainCommitted(Chain(tuple(anyio.run(fetch)))))
    out = dump(engine.conn)
    engine.host.shutdown()
    engine.close()
    return out


def test_reindex_rebuilds_a_plugin_from_history_and_refuses_bad_input(tmp_path, anvil):
    cfg = tmp_path / "config.toml"
    cfg.write_text(rpc_config(anvil.url, http="enabled = false", extra=f"""[plugins.ledger]
enabled = true
module = "{ROOT / 'tests' / 'plugins' / 'ledger.py'}"
"""))
    anvil.traffic(12, txs_per_block=3)
    index_to_head(cfg, anvil)
    good = reference(tmp_path, anvil)

    def tables() -> dict[str, list[tuple]]:
        app = open_app(cfg)
        try:
            return dump(app.engine.conn)
        finally:
            app.close()

    assert tables() == good
    app = open_app(cfg)  # damage the plugin's data (a bug fixed since): a reindex repairs it
    with app.engine.conn:
        app.engine.conn.execute("DELETE FROM ledger_transfers WHERE block_number > 5")
    app.close()
    damaged = tables()
    assert damaged != good

    r = CliRunner()
    for args, message in [
        (["reindex", "nosuch"], "reindex: no such plugin 'nosuch' (installed: "),
        (["reindex", "ledger", "--from", "999"], "reindex 'ledger': --from 999 is not a block number at or below"),
    ]:
        res = r.invoke(cli, [*args, "--config", str(cfg)])
        assert res.exit_code == 1 and message in res.output, res.output
        assert tables() == damaged
    with open(tmp_path / "db.sqlite.reindex.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("plugin ledger, pid 1")
        held.flush()
        res = r.invoke(cli, ["reindex", "ledger", "--config", str(cfg)])
        assert res.exit_code == 1 and "another reindex is running" in res.output and "pid 1" in res.output
        fcntl.flock(held, fcntl.LOCK_UN)
    assert tables() == damaged

    res = r.invoke(cli, ["reindex", "ledger", "--from", "0", "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    assert "dropping ledger_balances, ledger_block_stats, ledger_transfers; rebuilding blocks 0..12" in res.output
    assert "done, 13 blocks (0..12)" in res.output
    assert tables() == good

    # Afterwards it follows the head, and a reorg reverts rebuilt blocks exactly (their undo data was rewritten).
    anvil.traffic(3)
    anvil.reorg(6, txs=4, seed=3)
    index_to_head(cfg, anvil)
    assert tables() == reference(tmp_path, anvil)
    app = open_app(cfg)
    assert Progress(app.engine).ranges()["ledger"].state == "live"
    app.close()


def test_strip_tables_removes_one_plugins_changes_from_an_undo_changeset(tmp_path):
    import apsw

    from monmouth.reindex import plugin_tables, strip_tables

    conn = apsw.Connection(str(tmp_path / "s.sqlite"))
    conn.execute("CREATE TABLE a_rows (k INTEGER PRIMARY KEY, v); CREATE TABLE b_rows (k INTEGER PRIMARY KEY, v)")
    session = apsw.Session(conn, "main")
    session.attach()
    conn.execute("INSERT INTO a_rows VALUES (1, 'x'); INSERT INTO b_rows VALUES (1, 'y'), (2, 'z')")
    changeset = session.changeset()
    session.close()
    assert {c.name for c in apsw.Changeset.iter(changeset)} == {"a_rows", "b_rows"}
    kept = [(c.name, c.new) for c in apsw.Changeset.iter(strip_tables(changeset, {"b_rows"}))]
    assert kept == [("a_rows", (1, "x"))]
    assert strip_tables(changeset, {"a_rows", "b_rows"}) == b""
    assert plugin_tables(ledger) == ["ledger_balances", "ledger_block_stats", "ledger_transfers"]


# ---------------------------------------------------------------------------------------------------- migrations


class Tally:
    """A plugin counting each block's transactions, with the migrations it is given."""

    def __init__(self, migrations: list[str]) -> None:
        self.migrations = migrations

    @hookimpl
    def monmouth_migrations(self) -> list[str]:
        return self.migrations

    @hookimpl
    def monmouth_block_applied(self, conn, block, notification) -> None:
        conn.execute("INSERT INTO tally_blocks (number, txs) VALUES (?, ?)", (block.number, len(block.transactions)))


V1 = ["CREATE TABLE tally_blocks (number INTEGER PRIMARY KEY, txs INTEGER NOT NULL)"]
V1_REINDENTED = ["CREATE TABLE tally_blocks (\n    number INTEGER PRIMARY KEY,\n    txs INTEGER NOT NULL\n)\n"]
V1_CHANGED = ["CREATE TABLE tally_blocks (number INTEGER PRIMARY KEY, txs INTEGER NOT NULL, note TEXT DEFAULT 'v2')"]


def test_a_plugin_whose_applied_migration_changed_is_refused_until_reindexed(tmp_path, caplog):
    blocks = extend(None, 6, number=1, n_txs=2)
    with ReplayWriter(tmp_path / "history.mnr") as w:
        w.write(ChainCommitted(chain(blocks)), 1)
    cfg = tmp_path / "config.toml"
    cfg.write_text('[source]\nkind = "replay"\npath = "history.mnr"\n[storage]\npath = "db.sqlite"\n'
                   '[http]\nenabled = false\n[plugins.tally]\nenabled = true\n')

    def opened(migrations: list[str]):
        return open_app(cfg, extra_plugins={"tally": Tally(migrations)})

    def table(app) -> tuple[list[str], list[tuple]]:
        cols = [r[1] for r in app.engine.conn.execute("PRAGMA table_info(tally_blocks)")]
        return cols, sorted(app.engine.conn.execute("SELECT * FROM tally_blocks").fetchall())

    app = opened(V1)
    app.engine.apply(ChainCommitted(chain(blocks)))
    before = table(app)
    assert len(before[1]) == 6
    app.close()
    app = opened(V1_REINDENTED)  # re-indenting a script is not a change
    assert app.host.is_enabled("tally")
    app.close()
    for migrations, needle in [
        (V1_CHANGED, "plugin 'tally': migration 1 changed after it was applied to this database (sha256 "),
        ([], "plugin 'tally': the database has 1 of its migrations applied, but the plugin now has 0: migration 1 "
             "was removed"),
    ]:
        with caplog.at_level("ERROR", logger="monmouth"):
            app = opened(migrations)
        error = app.host.errors.get("tally", "")
        assert app.host.states["tally"] == "failed" and needle in error, error
        assert "`monmouth reindex tally`" in error and "add the change as migration 2" in error, error
        assert "plugin tally failed to start: " + error in caplog.text
        assert app.status()["plugins"]["tally"]["state"] == "failed"
        assert table(app) == before  # its tables are left as they were
        app.close()
    # A database from before digests were kept: the scripts applied are recorded as they are, and checked from then.
    app = opened(V1)
    with app.engine.conn:
        app.engine.conn.execute("DELETE FROM monmouth_migration_digests")
    app.close()
    app = opened(V1)
    assert app.host.is_enabled("tally")
    app.close()
    app = opened(V1_CHANGED)
    assert app.host.states["tally"] == "failed"
    # `monmouth reindex tally` (the way out the error names) rebuilds it with the new scripts.
    out: list[str] = []
    assert anyio.run(reindex, app, "tally", None, out.append) == 6
    app.close()
    app = opened(V1_CHANGED)
    assert app.host.is_enabled("tally")
    assert table(app) == (["number", "txs", "note"], [(b.number, 2, "v2") for b in blocks])
    assert Progress(app.engine).ranges()["tally"].state == "live"
    app.close()
    # Appending a migration is the other way: it runs, and the earlier ones still match.
    app = opened([*V1_CHANGED, "ALTER TABLE tally_blocks ADD COLUMN extra INTEGER"])
    assert app.host.is_enabled("tally") and table(app)[0] == ["number", "txs", "note", "extra"]
    app.close()
