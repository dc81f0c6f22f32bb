"""The plugin host and every hook a plugin author can implement, exercised through a real runner (replay
source, real SQLite file, real HTTP server on loopback), plus hot reload of config.toml."""

from __future__ import annotations

from pathlib import Path

import anyio
import click
import httpx
import pytest
from click.testing import CliRunner
from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from monmouth import hookimpl
from monmouth.app import open_app
from monmouth.errors import MigrationError
from monmouth.plugins import PluginHost
from monmouth.replayfile import ReplayWriter
from monmouth.runner import Runner
from monmouth.sources.replay import ReplaySource
from monmouth.store import Database
from monmouth.types import ChainCommitted, ChainReorged
from tests.chains import chain, extend
from tests.conftest import wait_for

pytestmark = pytest.mark.anyio


class SpyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str = "spy"


class Spy:
    """Implements every hook and records each call."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.ctx = None

    @hookimpl
    def monmouth_config_model(self):
        return SpyConfig

    @hookimpl
    def monmouth_migrations(self):
        return ["CREATE TABLE spy_blocks (number INTEGER PRIMARY KEY, hash BLOB NOT NULL);"
                "CREATE VIRTUAL TABLE spy_fts USING fts5(body, block_number UNINDEXED);"]

    @hookimpl
    def monmouth_trimmed_tables(self):
        return {"spy_fts": "block_number"}

    @hookimpl
    def monmouth_startup(self, ctx):
        self.ctx = ctx
        self.calls.append(("startup", ctx.config.label))

    @hookimpl
    def monmouth_shutdown(self, ctx):
        self.calls.append(("shutdown", ctx.config.label))

    @hookimpl
    def monmouth_block_applied(self, conn, block, notification):
        conn.execute("INSERT INTO spy_blocks (number, hash) VALUES (?, ?)", (block.number, block.hash))
        conn.execute("INSERT INTO spy_fts (body, block_number) VALUES (?, ?)", (f"block {block.number}", block.number))
        self.calls.append(("applied", block.number))

    @hookimpl
    def monmouth_block_reverted(self, conn, block, notification):
        self.calls.append(("reverted", block.number))

    @hookimpl
    def monmouth_finalized(self, conn, number):
        self.calls.append(("finalized", number))

    @hookimpl
    def monmouth_notification_committed(self, notification, head):
        self.calls.append(("committed", notification.kind, head.number))

    @hookimpl
    def monmouth_status(self):
        return {"blocks": sum(1 for c in self.calls if c[0] == "applied")}

    @hookimpl
    def monmouth_http_router(self):
        router = APIRouter()

        @router.get("/spy/blocks")
        def blocks():
            rows = self.ctx.db.reader().execute("SELECT number FROM spy_blocks ORDER BY number").fetchall()
            return {"blocks": [r[0] for r in rows]}

        return router

    @hookimpl
    def monmouth_register_commands(self, cli):
        @cli.command("spy")
        def spy():
            click.echo("spy here")


def write_history(path: Path):
    bs = extend(None, 5, number=1)
    fork = extend(bs[2], 3, salt="f")
    with ReplayWriter(path) as w:
        w.write(ChainCommitted(chain(bs[:3])))
        w.write(ChainCommitted(chain(bs[3:])))
        w.write(ChainReorged(chain(bs[3:]), chain(fork)))
    return bs, fork


def config_file(tmp_path: Path, spy_enabled: bool, label: str = "spy") -> Path:
    p = tmp_path / "config.toml"
    p.write_text(
        f"""# test config
[source]
kind = "replay"
path = "history.mnr"

[storage]
path = "db.sqlite"
synchronous = "NORMAL"

[http]
port = 0

[plugins.spy]
enabled = {"true" if spy_enabled else "false"}
label = "{label}"
""")
    return p


async def test_every_hook_through_runner_http_and_hot_reload(tmp_path):
    spy = Spy()
    bs, fork = write_history(tmp_path / "history.mnr")
    cfg = config_file(tmp_path, spy_enabled=False)
    app = open_app(cfg, extra_plugins={"spy": spy})
    source = ReplaySource(tmp_path / "history.mnr", rate=0)

    # The source is "live": hold it before the first frame until the plugin is enabled by a hot reload.
    gate = anyio.Event()
    orig_stream = source.stream

    async def gated(view):
        async for d in orig_stream(view):
            await gate.wait()
            yield d

    source.stream = gated  # type: ignore[method-assign]
    runner = Runner(app, source, serve_http=True, watch_config=True)
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run)
        await wait_for(lambda: runner.http_port is not None)
        base = f"http://127.0.0.1:{runner.http_port}"
        async with httpx.AsyncClient(base_url=base) as http:
            assert (await http.get("/health")).json() == {"status": "ok"}
            r = await http.get("/spy/blocks")
            assert r.status_code == 503 and "plugins.spy.enabled" in r.json()["detail"]
            # Hot reload: an invalid edit is rejected and counted; then a valid one enables the plugin.
            cfg.write_text(cfg.read_text().replace('label = "spy"', "label = 12"))
            await wait_for(lambda: app.metrics.registry.get_sample_value(
                "monmouth_config_reloads_total", {"outcome": "rejected"}) == 1.0, timeout=10)
            assert not app.host.is_enabled("spy")
            cfg.write_text(config_file(tmp_path, spy_enabled=True, label="live").read_text())
            await wait_for(lambda: app.host.is_enabled("spy"), timeout=10)
            assert spy.calls == [("startup", "live")]
            gate.set()
            await wait_for(lambda: runner.done, timeout=10)
            r = await http.get("/spy/blocks")
            assert r.json() == {"blocks": [1, 2, 3, 4, 5, 6]}
            st = (await http.get("/status")).json()
            assert st["head"] == {"number": 6, "hash": "0x" + fork[-1].hash.hex()}
            assert st["plugins"]["spy"] == {"state": "enabled", "blocks": 8}
            assert st["notifications"] == 3 and st["reorgs"] == 1
            metrics = (await http.get("/metrics")).text
            assert 'monmouth_notifications_total{kind="ChainReorged",outcome="applied"} 1.0' in metrics
            assert 'monmouth_hook_seconds_count{hook="monmouth_block_applied"} 8.0' in metrics
            assert "monmouth_reorg_depth_blocks_bucket" in metrics
        tg.cancel_scope.cancel()

    applied = [c[1] for c in spy.calls if c[0] == "applied"]
    assert applied == [1, 2, 3, 4, 5, 4, 5, 6]
    assert [c for c in spy.calls if c[0] == "reverted"] == [("reverted", 5), ("reverted", 4)]
    assert [c for c in spy.calls if c[0] == "committed"] == [
        ("committed", "ChainCommitted", 3), ("committed", "ChainCommitted", 5), ("committed", "ChainReorged", 6)]
    # Trimmed table: the reverted blocks' FTS rows are gone, the new ones are there.
    fts = app.engine.conn.execute("SELECT block_number FROM spy_fts ORDER BY block_number").fetchall()
    assert [r[0] for r in fts] == [1, 2, 3, 4, 5, 6]
    assert app.engine.conn.execute("SELECT hash FROM spy_blocks WHERE number = 4").fetchone()[0] == fork[0].hash
    # Finalized hook.
    assert app.engine.set_finalized(3)
    assert ("finalized", 3) in spy.calls
    app.close()
    assert spy.calls[-1] == ("shutdown", "live")


def test_register_commands_hook():
    from monmouth.cli import cli

    spy = Spy()
    group = click.Group("t", commands=dict(cli.commands))
    spy.monmouth_register_commands(group)
    assert CliRunner().invoke(group, ["spy"]).output == "spy here\n"


class NoPrimaryKey:
    @hookimpl
    def monmouth_migrations(self):
        return ["CREATE TABLE nopk_rows (a INTEGER)"]


class UndeclaredVirtual:
    @hookimpl
    def monmouth_migrations(self):
        return ["CREATE VIRTUAL TABLE undeclared_fts USING fts5(body)"]


@pytest.mark.parametrize("plugin, needle", [
    (NoPrimaryKey(), "table 'nopk_rows' has no PRIMARY KEY"),
    (UndeclaredVirtual(), "virtual table 'undeclared_fts' must be declared"),
])
def test_migrations_refuse_tables_the_journal_cannot_restore(tmp_path, plugin, needle):
    from monmouth.config import validate
    from monmouth.metrics import Metrics
    from monmouth.plugins import config_models

    db = Database(tmp_path / "db.sqlite")
    host = PluginHost({"bad": plugin}, db, Metrics().registry)
    settings = validate({"plugins": {"bad": {"enabled": True}}}, "<test>", config_models({"bad": plugin}))
    host.apply_settings(settings)
    assert host.states["bad"] == "failed" and needle in host.errors["bad"]
    assert not host.is_enabled("bad")
    conn = db.connect()
    # The failed migration was rolled back whole.
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name LIKE 'nopk%' OR name LIKE 'undeclared%'"
                        ).fetchone()[0] == 0
    with pytest.raises(MigrationError):
        from monmouth.store import migrate

        migrate(conn, "bad", plugin.monmouth_migrations(), set())


def test_migrations_hook_is_given_the_backend_when_it_asks(both_engine_factory):
    """``monmouth_migrations(backend)``: a plugin whose schema differs by backend gets its own list on each; one
    that does not name the argument (tests/plugins/ledger.py) is called as before."""
    from tests.plugins import ledger

    class PerBackend:
        @hookimpl
        def monmouth_backends(self):
            return ("sqlite", "postgres")

        @hookimpl
        def monmouth_migrations(self, backend):
            return [f"CREATE TABLE per_{backend} (id BIGINT PRIMARY KEY)"]

    e = both_engine_factory(plugins={"per": PerBackend(), "ledger": ledger})
    assert e.host.status()["per"]["state"] == "enabled" and e.host.status()["ledger"]["state"] == "enabled"
    assert e.conn.execute(f"SELECT count(*) FROM per_{both_engine_factory.backend}").fetchone()[0] == 0
