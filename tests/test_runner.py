"""The runner: a failing plugin holds the notification (retried with backoff, nothing half-applied, nothing
acknowledged) until an operator disables the plugin in config.toml; the hot reload lands between retries."""

from __future__ import annotations

import itertools

import anyio
import pytest

from monmouth import hookimpl
from monmouth.app import open_app
from monmouth.replayfile import ReplayWriter
from monmouth.runner import Runner
from monmouth.sources.replay import ReplaySource
from monmouth.testing import chain, extend
from monmouth.types import ChainCommitted
from tests.conftest import wait_for
from tests.plugins import ledger

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


class SlowReplay(ReplaySource):
    """A replay source that lets the event loop run between notifications (for the checkpointer to tick)."""

    async def stream(self, view):  # type: ignore[no-untyped-def, override]
        async for d in super().stream(view):
            await anyio.sleep(0.01)
            yield d

    def take_ready(self, limit):  # type: ignore[no-untyped-def]
        return []  # one commit per notification: the WAL hook must see each


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
    frames, done = app.db.checkpoint()
    assert frames == done  # nothing pins the WAL: every frame can be copied back
    assert app.engine.head == bs[-1].ref
    app.close()
