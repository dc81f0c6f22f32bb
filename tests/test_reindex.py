"""`monmouth reindex PLUGIN [--from N]` on anvil, on SQLite and PostgreSQL: drops and rebuilds one plugin's tables
from the node's history with progress, stays reorg-exact afterwards (its changes were taken out of the held undo
data and put back by the rebuild), and refuses bad input (unknown plugin, block above the head, another reindex
running; on PostgreSQL another plugin's view on its tables) changing nothing."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner

from monmouth import hookimpl
from monmouth.app import open_app
from monmouth.cli import cli
from monmouth.errors import StorageError
from monmouth.progress import Progress
from monmouth.reindex import exclusive, reindex
from monmouth.replayfile import ReplayWriter
from monmouth.runner import Runner
from monmouth.sources.rpc import RpcSource
from monmouth.types import Chain, ChainCommitted
from tests.chains import chain, extend
from tests.conftest import make_engine, rpc_config, wait_for
from tests.pg import PASSWORD as PG_PASSWORD
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


def test_reindex_rebuilds_a_plugin_from_history_and_refuses_bad_input(tmp_path, anvil, storage_of, monkeypatch):
    """On SQLite and on PostgreSQL (``storage_of``): the same refusals, the same rebuilt tables, the same reorg."""
    storage = storage_of("db.sqlite")
    pg = isinstance(storage, str)
    monkeypatch.setenv("MONMOUTH_PG_PASSWORD", PG_PASSWORD)
    cfg = tmp_path / "config.toml"
    cfg.write_text(rpc_config(anvil.url, http="enabled = false", extra=f"""[plugins.ledger]
enabled = true
module = "{ROOT / 'tests' / 'plugins' / 'ledger.py'}"
""").replace('path = "db.sqlite"', f'url = "{storage}"' if pg else 'path = "db.sqlite"'))
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
    # Another reindex holds the database: refused naming it (SQLite: its lock file; PostgreSQL: the ingestion lock,
    # which also refuses `monmouth run`).
    holder = open_app(cfg)
    with exclusive(holder, "ledger"):
        res = r.invoke(cli, ["reindex", "ledger", "--config", str(cfg)])
        assert res.exit_code == 1 and f"reindex ledger pid {os.getpid()}" in res.output, res.output
        assert ("another engine owns ingestion" if pg else "another reindex is running") in res.output
        if pg:
            with pytest.raises(StorageError, match=f"monmouth reindex ledger pid {os.getpid()} on "):
                open_app(cfg)
    holder.close()
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
    """A plugin counting each block's transactions, with the migrations it is given (the same on both backends)."""

    def __init__(self, migrations: list[str]) -> None:
        self.migrations = migrations

    @hookimpl
    def monmouth_migrations(self) -> list[str]:
        return self.migrations

    @hookimpl
    def monmouth_backends(self) -> tuple[str, ...]:
        return ("sqlite", "postgres")

    @hookimpl
    def monmouth_block_applied(self, conn, block, notification) -> None:
        conn.execute("INSERT INTO tally_blocks (number, txs) VALUES (?, ?)", (block.number, len(block.transactions)))


V1 = ["CREATE TABLE tally_blocks (number INTEGER PRIMARY KEY, txs INTEGER NOT NULL)"]
V1_REINDENTED = ["CREATE TABLE tally_blocks (\n    number INTEGER PRIMARY KEY,\n    txs INTEGER NOT NULL\n)\n"]
V1_CHANGED = ["CREATE TABLE tally_blocks (number INTEGER PRIMARY KEY, txs INTEGER NOT NULL, note TEXT DEFAULT 'v2')"]


def columns(app, table: str) -> list[str]:
    """``table``'s column names, in order, on either backend."""
    if app.db.backend == "sqlite":
        return [r[1] for r in app.engine.conn.execute(f"PRAGMA table_info({table})")]
    return [r[0] for r in app.engine.conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = ? "
        "ORDER BY ordinal_position", (table,))]


def replay_config(tmp_path: Path, storage: Path | str, plugin: str, blocks) -> Path:
    """config.toml for a sidecar replaying ``blocks`` from a file, on ``storage``, with ``plugin`` enabled."""
    with ReplayWriter(tmp_path / "history.mnr") as w:
        w.write(ChainCommitted(chain(blocks)), 1)
    cfg = tmp_path / "config.toml"
    where = f'url = "{storage}"' if isinstance(storage, str) else f'path = "{storage}"'
    cfg.write_text(f'[source]\nkind = "replay"\npath = "history.mnr"\n[storage]\n{where}\n'
                   f'[http]\nenabled = false\n[plugins.{plugin}]\nenabled = true\n')
    return cfg


def test_a_plugin_whose_applied_migration_changed_is_refused_until_reindexed(tmp_path, caplog, storage_of,
                                                                             monkeypatch):
    monkeypatch.setenv("MONMOUTH_PG_PASSWORD", PG_PASSWORD)
    blocks = extend(None, 6, number=1, n_txs=2)
    cfg = replay_config(tmp_path, storage_of("db.sqlite"), "tally", blocks)

    def opened(migrations: list[str]):
        return open_app(cfg, extra_plugins={"tally": Tally(migrations)})

    def table(app) -> tuple[list[str], list[tuple]]:
        return columns(app, "tally_blocks"), sorted(app.engine.conn.execute("SELECT * FROM tally_blocks").fetchall())

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


# ---------------------------------------------------------------------------------------------------- PostgreSQL


class Notes:
    """A PostgreSQL plugin whose migrations create more than tables: an enum, a domain, text search objects, a
    function, tables with an identity column and a foreign key between them, and a view."""

    MIGRATIONS = ["""
        CREATE TYPE notes_kind AS ENUM ('even', 'odd');
        CREATE DOMAIN notes_count AS BIGINT CHECK (VALUE >= 0);
        CREATE TEXT SEARCH DICTIONARY notes_stem (TEMPLATE = snowball, LANGUAGE = english);
        CREATE TEXT SEARCH CONFIGURATION notes_english (COPY = english);
        ALTER TEXT SEARCH CONFIGURATION notes_english ALTER MAPPING REPLACE english_stem WITH notes_stem;
        CREATE FUNCTION notes_parity(n bigint) RETURNS notes_kind LANGUAGE sql IMMUTABLE
            AS $$ SELECT CASE WHEN n % 2 = 0 THEN 'even'::notes_kind ELSE 'odd'::notes_kind END $$;
        CREATE TABLE notes_blocks (number BIGINT PRIMARY KEY, txs notes_count NOT NULL, kind notes_kind NOT NULL);
        CREATE TABLE notes_txs (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                                number BIGINT NOT NULL REFERENCES notes_blocks (number), hash BYTEA NOT NULL);
        CREATE VIEW notes_summary AS SELECT kind, count(*) AS blocks FROM notes_blocks GROUP BY kind;
    """]

    @hookimpl
    def monmouth_migrations(self) -> list[str]:
        return self.MIGRATIONS

    @hookimpl
    def monmouth_backends(self) -> tuple[str, ...]:
        return ("postgres",)

    @hookimpl
    def monmouth_block_applied(self, conn, block, notification) -> None:
        conn.execute("INSERT INTO notes_blocks VALUES (?, ?, notes_parity(?))",
                     (block.number, len(block.transactions), block.number))
        for tx in block.transactions:
            conn.execute("INSERT INTO notes_txs (number, hash) VALUES (?, ?)", (block.number, tx.hash))


def test_reindex_on_postgres_drops_and_rebuilds_every_object_its_migrations_create(tmp_path, pg_url, monkeypatch):
    from monmouth.backends.pg_objects import created_objects
    from monmouth.reindex import ReindexError
    from monmouth.types import ChainReverted

    monkeypatch.setenv("MONMOUTH_PG_PASSWORD", PG_PASSWORD)
    blocks = extend(None, 6, number=1, n_txs=2)
    cfg = replay_config(tmp_path, pg_url, "notes", blocks)

    def opened():
        return open_app(cfg, extra_plugins={"notes": Notes()})

    def state(app) -> tuple[list[tuple], list[tuple], list[tuple]]:
        q = app.engine.conn.execute
        return (q("SELECT number, txs, kind::text FROM notes_blocks ORDER BY number").fetchall(),
                q("SELECT number, hash FROM notes_txs ORDER BY number, hash").fetchall(),
                q("SELECT kind::text, blocks FROM notes_summary ORDER BY kind").fetchall())

    app = opened()
    objects = created_objects(app.db, Notes.MIGRATIONS)
    assert [(kind, name) for kind, _ident, name in objects] == [
        ("VIEW", "notes_summary"), ("TABLE", "notes_blocks"), ("TABLE", "notes_txs"), ("FUNCTION", "notes_parity"),
        ("TEXT SEARCH CONFIGURATION", "notes_english"), ("TEXT SEARCH DICTIONARY", "notes_stem"),
        ("DOMAIN", "notes_count"), ("TYPE", "notes_kind")]
    assert objects[3][1] == "notes_parity(n bigint)"
    # An extension a migration creates is not the plugin's: none of its objects is listed (nor left installed).
    assert created_objects(app.db, ["CREATE EXTENSION IF NOT EXISTS btree_gist; CREATE TABLE notes_x (k int)"]) == [
        ("TABLE", "notes_x", "notes_x")]
    assert app.engine.conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'btree_gist'").fetchone()[0] == 0
    assert app.engine.conn.execute(  # the scratch schema was rolled back
        "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'monmouth_reindex_%'").fetchone()[0] == 0
    app.engine.apply(ChainCommitted(chain(blocks)))
    good = state(app)
    assert len(good[0]) == 6 and len(good[1]) == 12 and good[2] == [("even", 3), ("odd", 3)]
    with app.engine.conn as conn:  # damage it: a reindex repairs it
        conn.execute("DELETE FROM notes_txs WHERE number > 3")
    assert state(app) != good

    # Another plugin's view on one of its tables: the DROP is refused and nothing changes.
    with app.engine.conn as conn:
        conn.execute("CREATE VIEW other_blocks AS SELECT number FROM notes_blocks")
    damaged = state(app)
    with pytest.raises(ReindexError, match="reindex 'notes': dropping its objects failed, nothing was changed: "
                                           r"cannot drop .* because other objects depend on (it|them) \(view "
                                           "other_blocks depends on table notes_blocks"):
        anyio.run(reindex, app, "notes", None, lambda _line: None)
    assert state(app) == damaged and Progress(app.engine).ranges()["notes"].state == "live"
    app.close()
    app = opened()
    with app.engine.conn as conn:
        conn.execute("DROP VIEW other_blocks")

    out: list[str] = []
    assert anyio.run(reindex, app, "notes", None, out.append) == 6
    assert "reindex notes: dropping notes_blocks, notes_txs; rebuilding blocks 1..6" in out[0], out
    assert state(app) == good
    app.close()
    app = opened()
    assert app.host.is_enabled("notes") and Progress(app.engine).ranges()["notes"].state == "live"
    assert state(app) == good
    # The rebuilt blocks revert exactly (their undo rows are the rebuild's), and the chain goes on.
    app.engine.apply(ChainReverted(chain(blocks[3:])))
    assert state(app)[0] == good[0][:3] and state(app)[1] == [r for r in good[1] if r[0] <= 3]
    app.engine.apply(ChainCommitted(chain(blocks[3:])))
    assert state(app) == good
    app.close()


def test_reindex_rebuilds_the_rag_plugin_on_both_backends(tmp_path, storage_of, monkeypatch):
    """The built-in rag plugin, whose schema differs per backend (FTS5 and ``vec0`` virtual tables on SQLite;
    ``tsvector``, ``vector`` and its own text search dictionary and configuration on PostgreSQL): a reindex drops
    all of it, its migrations run again, and the rebuilt documents and keyword index are the same."""
    from tests.test_rag_support import PG_RAG, TEMPLATES, mainnet_shaped

    monkeypatch.setenv("MONMOUTH_PG_PASSWORD", PG_PASSWORD)
    blocks = list(mainnet_shaped(TEMPLATES, 4, txs_per_block=20, start=1))
    cfg = replay_config(tmp_path, storage_of("db.sqlite"), "rag", blocks)
    cfg.write_text(cfg.read_text() + "worker = false\n" + "".join(f'{k} = "{v}"\n' for k, v in PG_RAG.items()))
    docs = "SELECT kind, block_number, tx_hash, doc_id, chunk, text FROM rag_docs ORDER BY 1, 2, 3, 4, 5, 6"
    app = open_app(cfg)
    app.engine.apply(ChainCommitted(chain(blocks)))
    before = app.engine.conn.execute(docs).fetchall()
    keyword = app.engine.conn.execute("SELECT count(*) FROM rag_fts").fetchone()
    assert len(before) == 80 and keyword == (80,)
    with app.engine.conn as conn:  # damage it
        conn.execute("DELETE FROM rag_docs WHERE block_number > 2")
    out: list[str] = []
    assert anyio.run(reindex, app, "rag", None, out.append) == 4
    assert "rag_docs" in out[0] and "rag_fts" in out[0] and "rag_vec" in out[0], out
    assert app.engine.conn.execute(docs).fetchall() == before
    assert app.engine.conn.execute("SELECT count(*) FROM rag_fts").fetchone() == keyword
    app.close()
    app = open_app(cfg)
    assert app.host.is_enabled("rag"), app.host.errors
    assert Progress(app.engine).ranges()["rag"].state == "live"
    app.close()
