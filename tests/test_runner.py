"""The runner: a failing plugin holds the notification (retried with backoff, nothing half-applied, nothing
acknowledged) until an operator disables the plugin in config.toml; the hot reload lands between retries."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import anyio
import pytest

from monmouth import hookimpl
from monmouth.app import open_app
from monmouth.replayfile import ReplayWriter
from monmouth.runner import Runner, apply_reload, watch_config
from monmouth.sources.replay import ReplaySource
from monmouth.types import ChainCommitted
from tests.chains import chain, extend
from tests.conftest import rpc_config, wait_for
from tests.plugins import ledger

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.anyio


class Broken:
    @hookimpl
    def monmouth_block_applied(self, conn, block, notification):
        if block.number == 3:
            raise ValueError("cannot index block 3")


def write_replay(path, blocks):  # type: ignore[no-untyped-def]
    """A replay file with one ChainCommitted per block; returns ``blocks``."""
    with ReplayWriter(path) as w:
        for b in blocks:
            w.write(ChainCommitted(chain([b])))
    return blocks


async def test_failing_plugin_is_retried_until_disabled_by_hot_reload(tmp_path):
    bs = write_replay(tmp_path / "h.mnr", extend(None, 4, number=1, n_txs=2))
    cfg = tmp_path / "config.toml"
    text = """
[source]
kind = "replay"
path = "h.mnr"
[storage]
path = "db.sqlite"
[http]
enabled = false
[engine]
retry_max_backoff = 0.2
[plugins.ledger]
enabled = true
[plugins.broken]
enabled = true
"""
    cfg.write_text(text)
    app = open_app(cfg, extra_plugins={"ledger": ledger, "broken": Broken()})
    source = ReplaySource(tmp_path / "h.mnr")
    acked = []
    orig_ack = source.ack

    async def ack(d, head):
        acked.append(head.number)
        await orig_ack(d, head)

    source.ack = ack  # type: ignore[method-assign]
    runner = Runner(app, source, watch_config=True)
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run)
        errors = lambda: app.metrics.registry.get_sample_value("monmouth_errors_total", {"kind": "plugin"}) or 0  # noqa: E731
        await wait_for(lambda: errors() >= 3, timeout=20)
        assert app.engine.head == bs[1].ref and acked == [1, 2]  # held at block 2, block 3 not acknowledged
        assert "plugin 'broken' failed in monmouth_block_applied" in runner.status()["last_error"]
        assert app.engine.conn.execute("SELECT max(block_number) FROM ledger_transfers").fetchone()[0] == 2
        cfg.write_text(text.replace("[plugins.broken]\nenabled = true", "[plugins.broken]\nenabled = false"))
        await wait_for(lambda: runner.done, timeout=20)
    assert acked == [1, 2, 3, 4] and app.engine.head == bs[-1].ref
    assert app.engine.conn.execute("SELECT count(*) FROM ledger_transfers").fetchone()[0] == 8
    assert runner.status()["last_error"] is None
    app.close()


async def test_a_config_edit_made_before_the_watch_is_armed_is_still_applied(tmp_path):
    """The file is edited after the app read it but before its watcher exists (startup, or CI's race between the
    HTTP server answering and the watch being armed): no inotify event will ever come, yet the edit is applied."""
    cfg = tmp_path / "config.toml"
    text = '[source]\nkind = "replay"\npath = "h.mnr"\n[storage]\npath = "db.sqlite"\n[http]\nenabled = false\n'
    cfg.write_text(text)
    app = open_app(cfg)
    assert app.settings.engine.retry_max_backoff != 0.25
    cfg.write_text(text + "[engine]\nretry_max_backoff = 0.25\n")
    reloads = []

    async def on_change():
        reloads.append(await apply_reload(app))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_config, cfg, on_change, lambda: app.config_stamp)
            while not reloads:
                await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
    assert reloads == [True] and app.settings.engine.retry_max_backoff == 0.25
    app.close()


async def test_an_unchanged_config_is_not_reloaded_when_the_watch_starts(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text('[source]\nkind = "replay"\npath = "h.mnr"\n[storage]\npath = "db.sqlite"\n')
    app = open_app(cfg)
    reloads = []

    async def on_change():
        reloads.append(True)

    with anyio.move_on_after(2.5):  # two wake-ups of the armed watch (one a second)
        await watch_config(cfg, on_change, lambda: app.config_stamp)
    assert reloads == []
    app.close()


class SlowReplay(ReplaySource):
    """A replay source that lets the event loop run between notifications (for the checkpointer to tick)."""

    async def stream(self, view):  # type: ignore[no-untyped-def, override]
        async for d in super().stream(view):
            await anyio.sleep(0.01)
            yield d

    def take_ready(self, limit):  # type: ignore[no-untyped-def]
        return []  # one commit per notification: the WAL hook must see each


class Threads:
    """Records the thread each notification was committed on (``monmouth_notification_committed``)."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    @hookimpl
    def monmouth_notification_committed(self, notification, head):
        import threading

        self.seen.append(threading.current_thread().name)


@pytest.mark.parametrize("inline_bytes", [65_536, 0])
async def test_a_small_notification_is_applied_on_the_event_loop_and_the_rest_on_the_engines_thread(
        tmp_path, inline_bytes):
    """engine.inline_apply_bytes: a single small notification is applied where it arrived (no thread hand-over
    between its arrival and its ack); with 0, or a larger one, on the engine's worker thread. Same result either way."""
    import threading

    big = extend(None, 1, number=1, n_txs=400)  # ~100 kB encoded: over the default limit
    bs = write_replay(tmp_path / "t.mnr", big + extend(big[-1], 4, n_txs=2))
    cfg = tmp_path / "config.toml"
    cfg.write_text(f"""
[source]
kind = "replay"
path = "t.mnr"
[storage]
path = "db.sqlite"
[http]
enabled = false
[engine]
inline_apply_bytes = {inline_bytes}
[plugins.ledger]
enabled = true
[plugins.threads]
enabled = true
""")
    threads = Threads()
    app = open_app(cfg, extra_plugins={"ledger": ledger, "threads": threads})
    runner = Runner(app, SlowReplay(tmp_path / "t.mnr"), watch_config=False)
    loop_thread = threading.current_thread().name
    with anyio.fail_after(30):
        await runner.run()
    assert app.engine.head == bs[-1].ref
    assert app.engine.conn.execute("SELECT count(*) FROM ledger_transfers").fetchone()[0] == 400 + 4 * 2
    assert len(threads.seen) == 5 and threads.seen[0] != loop_thread  # the large one: the worker thread
    if inline_bytes:
        assert threads.seen[1:] == [loop_thread] * 4
    else:
        assert loop_thread not in threads.seen
    app.close()


async def test_wal_checkpoints_run_in_the_background_not_in_the_engines_commits(tmp_path):
    bs = write_replay(tmp_path / "w.mnr", extend(None, 60, number=1, n_txs=3))
    cfg = tmp_path / "config.toml"
    cfg.write_text("""
[source]
kind = "replay"
path = "w.mnr"
[storage]
path = "db.sqlite"
checkpoint_pages = 8
[http]
enabled = false
[plugins.ledger]
enabled = true
""")
    app = open_app(cfg, extra_plugins={"ledger": ledger})
    wal_sizes: list[int] = []
    runner = Runner(app, SlowReplay(tmp_path / "w.mnr"), watch_config=False)
    on_commit = runner._on_wal_commit

    def spy(conn, name, pages):  # type: ignore[no-untyped-def]
        wal_sizes.append(pages)
        return on_commit(conn, name, pages)

    runner._on_wal_commit = spy  # type: ignore[method-assign]
    await runner.run()
    sample = app.metrics.registry.get_sample_value
    checkpoints = sample("monmouth_wal_checkpoint_seconds_count") or 0
    assert checkpoints >= 3 and sample("monmouth_wal_pending_frames") is not None
    # The engine's commits only reported the WAL's size; the background checkpoints let the WAL start over.
    assert len(wal_sizes) >= len(bs) and any(b < a for a, b in itertools.pairwise(wal_sizes))
    frames, done = app.db.checkpoint_wal()
    assert frames == done  # nothing pins the WAL: every frame can be copied back
    assert app.engine.head == bs[-1].ref
    app.close()


BOOM = """
from monmouth import hookimpl


@hookimpl
def monmouth_block_applied(conn, block, notification):
    if block.number == 3:  # a plugin with a bug, failing on block 3 every time
        raise RuntimeError(f"cannot index block {block.number}")
"""


@pytest.mark.anvil
async def test_a_stuck_sidecar_says_so_and_a_reload_retries_at_once(tmp_path, anvil, caplog):
    """A plugin failing on block 3: /status ``stuck`` names the block (number and hash), plugin, attempts and since,
    the lag is against anvil's real head, /ready answers a 503 problem document, the metrics and ``monmouth status``
    say so, the first failure is logged with its traceback and later ones in one line; disabling the plugin in
    config.toml retries at once rather than when the (long) backoff expires."""
    import logging

    import httpx
    from click.testing import CliRunner

    from monmouth.cli import cli
    from monmouth.sources.rpc import RpcSource
    from tests.anvil import free_port

    caplog.set_level(logging.INFO, logger="monmouth")
    (tmp_path / "boom.py").write_text(BOOM)
    cfg = tmp_path / "config.toml"
    text = rpc_config(anvil.url, http=f"port = {free_port()}", extra=f"""[engine]
retry_max_backoff = 60
[plugins.ledger]
enabled = true
module = "{ROOT / 'tests' / 'plugins' / 'ledger.py'}"
[plugins.boom]
enabled = true
module = "boom.py"
""")
    cfg.write_text(text)
    app = open_app(cfg)
    runner = Runner(app, RpcSource(anvil.url, poll_interval=0.05, metrics=app.metrics), watch_config=True)
    sample = app.metrics.registry.get_sample_value
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run)
        await wait_for(lambda: runner.http_port is not None)
        http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{runner.http_port}")
        for _ in range(2):
            anvil.traffic(1)
            await wait_for(lambda: app.engine.head is not None and app.engine.head.number == anvil.head()[0])
        assert (await http.get("/ready")).status_code == 200 and runner.status()["stuck"] is None
        anvil.traffic(1)  # block 3: boom fails on it
        stuck_hash = anvil.head()[1]
        await wait_for(lambda: runner.stall.attempts_so_far >= 2, timeout=10)
        anvil.mine(5)  # the chain goes on while the sidecar is stuck at 2
        node_head = anvil.head()[0]
        await wait_for(lambda: runner.status()["source_head"] == node_head, timeout=10, what="head polled while stuck")
        st = (await http.get("/status")).json()
        stuck = st["stuck"]
        assert st["head"]["number"] == 2 and st["lag"] == node_head - 2 == 6
        assert stuck["block"] == {"number": 3, "hash": stuck_hash}
        assert stuck["plugin"] == "boom" and stuck["hook"] == "monmouth_block_applied" and stuck["attempts"] >= 2
        assert f"at block #3 {stuck_hash}: RuntimeError: cannot index block 3" in stuck["error"]
        assert 0 < stuck["seconds"] < 60 and stuck["since"] <= time.time()

        r = await http.get("/ready")
        problem = r.json()
        assert r.status_code == 503 and r.headers["content-type"].startswith("application/problem+json")
        assert "plugin 'boom'" in problem["detail"] and f"block #3 {stuck_hash}" in problem["detail"]
        assert problem["stuck"]["block"]["number"] == 3 and problem["ready"] is False

        assert sample("monmouth_stuck_seconds") > 0 and sample("monmouth_notification_attempts") >= 2
        out = await anyio.to_thread.run_sync(lambda: CliRunner().invoke(cli, ["status", "--config", str(cfg)]).output)
        assert f"STUCK on block 3 {stuck_hash}" in out and "plugin boom in monmouth_block_applied" in out

        failures = [r for r in caplog.records if "plugin 'boom' failed" in r.getMessage()]
        assert failures[0].exc_info is not None and "rolled back" in failures[0].getMessage()
        assert all(r.exc_info is None and "attempt" in r.getMessage() for r in failures[1:])
        assert all(f"at block #3 {stuck_hash}" in r.getMessage() for r in failures)

        # The backoff doubles to minutes; disabling the plugin retries at once.
        await wait_for(lambda: runner.stall.current is not None and runner.stall.current.retry_at - time.time() > 6,
                       timeout=20, what="a long backoff")
        cfg.write_text(text.replace("[plugins.boom]\nenabled = true", "[plugins.boom]\nenabled = false"))
        await wait_for(lambda: app.engine.head.number == node_head, timeout=5, what="retried at once after reload")
        assert runner.status()["stuck"] is None and sample("monmouth_notification_attempts") == 0
        assert sample("monmouth_stuck_seconds") == 0
        await wait_for(lambda: runner.ready()[0])
        assert (await http.get("/ready")).status_code == 200
        assert any("recovered" in r.getMessage() and "#3" in r.getMessage() for r in caplog.records)
        await http.aclose()
        tg.cancel_scope.cancel()
    app.close()


async def test_a_postgres_connection_lost_mid_stream_is_reconnected_and_nothing_is_lost(tmp_path, pg_server):
    """The server ends the engine's session inside block 3's transaction: the runner reports the fault, reconnects
    (taking the ingestion lock again) and applies block 3 again; every block ends applied exactly once."""
    from monmouth.config import validate
    from tests.pg import PASSWORD

    url = pg_server.database()
    dbname = url.rsplit("/", 1)[1]

    class Dropper:
        monmouth_backends = hookimpl(lambda self: ("sqlite", "postgres"))
        drops = 0

        @hookimpl
        def monmouth_block_applied(self, conn, block, notification):
            if block.number == 3 and not self.drops:
                self.drops += 1
                pg_server.terminate(dbname, "monmouth run%")  # the engine's session

    bs = write_replay(tmp_path / "h.mnr", extend(None, 5, number=1, n_txs=2))
    dropper = Dropper()
    plugins = {"ledger": ledger, "drop": dropper}
    settings = validate({"source": {"kind": "replay", "path": str(tmp_path / "h.mnr")},
                         "storage": {"url": url}, "http": {"enabled": False}, "engine": {"retry_max_backoff": 0.2},
                         "plugins": {"ledger": {"enabled": True}, "drop": {"enabled": True}}},
                        "<test>", {"ledger": None, "drop": None})
    import os

    os.environ["MONMOUTH_PG_PASSWORD"] = PASSWORD
    try:
        app = open_app(settings=settings, extra_plugins=plugins)
    finally:
        del os.environ["MONMOUTH_PG_PASSWORD"]
    runner = Runner(app, SlowReplay(tmp_path / "h.mnr"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run)
        await wait_for(lambda: runner.done, timeout=30)
    assert dropper.drops == 1 and app.engine.head == bs[-1].ref
    assert app.metrics.registry.get_sample_value("monmouth_errors_total", {"kind": "storage"}) >= 1
    assert app.engine.conn.execute("SELECT count(*), count(DISTINCT tx_hash) FROM ledger_transfers").fetchone() == (
        10, 10)
    assert app.engine.notifications_seen == 5
    app.close()
