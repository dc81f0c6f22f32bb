"""Catch-up of plugins enabled late under the ``exex`` source (sidecar/catchup.py): the live stream comes from a
bridge over real ZeroMQ sockets speaking docs/wire.md, the history through that bridge's ``history`` requests
(answered from the node, anvil), with a reorg landing in the middle of the catch-up and no ``source.rpc_url``. An
older bridge that serves no history falls back to ``source.rpc_url`` (same reorg case); without it the plugin waits
with an error naming both ways out and nothing applied; a URL of another chain is refused with nothing applied;
the key is validated. (tests/test_reth.py does the same through the real ExEx.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio

from monmouth import hookimpl, wire
from monmouth.app import App, open_app
from monmouth.catchup import HistoryError, NodeHistory
from monmouth.errors import ConfigError
from monmouth.runner import Runner
from monmouth.sources.exex import ExExSource
from monmouth.sources.rpc import RpcSource
from monmouth.types import Block, BlockRef, Chain, ChainCommitted, ChainReorged, ChainReverted, Notification
from tests.anvil import Anvil
from tests.conftest import make_engine
from tests.plugins import chainrecord, ledger
from tests.test_bridge import run_until

REC_TABLES = ("rec_blocks", "rec_txs", "rec_logs")
LEDGER_TABLES = ("ledger_transfers", "ledger_balances", "ledger_block_stats")


class RpcBridge:
    """A stand-in for the Reth ExEx bridge (bridge/): a real ZeroMQ ROUTER speaking docs/wire.md, whose
    notifications are a JSON-RPC node's chain as the ``rpc`` source follows it (commits and reorgs), from the head
    the sidecar's ``hello`` names (block 1 on an empty database: the ExEx delivers no genesis). Each session is a
    new epoch; the credit window is respected; heartbeats carry the node's head. With ``history``, it answers
    ``history`` requests (at most ``history`` blocks each) with the node's blocks, checking the sidecar's head on
    the node as the ExEx does; without, it is an older bridge (no ``welcome.history``)."""

    def __init__(self, endpoint: str, node_url: str, history: int | None = None) -> None:
        self.endpoint, self.node_url, self.history = endpoint, node_url, history
        self.history_requests: list[wire.HistoryRequest] = []
        self.blocks: dict[int, Block] = {}  # the chain it delivered
        self.tip: BlockRef | None = None
        self.sessions = 0
        self.notifications: list[Notification] = []
        self._acked = 0
        self._stop = threading.Event()
        self._bound = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        assert self._bound.wait(10), "the bridge did not bind"

    # the rpc source's ChainView: the chain this bridge delivered
    def head(self) -> BlockRef | None:
        return self.tip

    def canonical(self, number: int) -> Block | None:
        return self.blocks.get(number)

    def source_token(self) -> Any:
        return None

    def _record(self, n: Notification) -> None:
        self.notifications.append(n)
        if isinstance(n, ChainReorged | ChainReverted):
            for b in n.old.blocks:
                self.blocks.pop(b.number, None)
        if not isinstance(n, ChainReverted):
            for b in n.new.blocks:
                self.blocks[b.number] = b
        top = max(self.blocks, default=None)
        self.tip = self.blocks[top].ref if top is not None else None

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:  # reported by close()
            self._error = e

    async def _serve(self) -> None:
        ctx = zmq.asyncio.Context()
        router = ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.bind(self.endpoint)
        self._bound.set()
        session: asyncio.Task[None] | None = None
        try:
            while not self._stop.is_set():
                try:
                    ident, frame = await asyncio.wait_for(router.recv_multipart(), 0.1)
                except TimeoutError:
                    continue
                msg = wire.decode(frame)
                if isinstance(msg, wire.Hello):
                    if session is not None:
                        session.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await session
                    session = asyncio.create_task(self._session(router, ident, msg))
                elif isinstance(msg, wire.Ack):
                    self._acked = msg.seq
                elif isinstance(msg, wire.HistoryRequest):
                    self.history_requests.append(msg)
                    await router.send_multipart([ident, wire.encode(await self._history(msg))])
        finally:
            if session is not None:
                session.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await session
            router.close(0)
            ctx.term()

    async def _history(self, req: wire.HistoryRequest) -> wire.HistoryBlocks:
        assert self.history is not None, "an older bridge got a history request"
        node = RpcSource(self.node_url)
        try:
            last = min(req.to_block, req.from_block + self.history - 1)
            if req.head is not None and await node.block_hash(req.head.number) != req.head.hash:
                return wire.HistoryBlocks(req.id, None, f"the node's block {req.head.number} is not the sidecar's head")
            return wire.HistoryBlocks(req.id, tuple(await node.fetch_blocks(req.from_block, last)), None)
        finally:
            await node.aclose()

    async def _session(self, router: Any, ident: bytes, hello: wire.Hello) -> None:
        self.sessions += 1
        if hello.head is None:
            self.blocks.clear()
            self.tip = None
        else:
            assert self.blocks[hello.head.number].hash == hello.head.hash, "the sidecar is on another chain"
            for n in [n for n in self.blocks if n > hello.head.number]:
                del self.blocks[n]
            self.tip = hello.head
        source = RpcSource(self.node_url, poll_interval=0.05, batch_size=4, max_backoff=0.5,
                           start_block=max(hello.start_block or 1, 1))
        await router.send_multipart([ident, wire.encode(wire.Welcome(wire.PROTOCOL_VERSION, 31337, "anvil via rpc",
                                                                     200, self.sessions, None, self.history))])
        self._acked = 0

        async def heartbeats() -> None:
            while True:
                await router.send_multipart([ident, wire.encode(wire.Heartbeat(int(time.time() * 1000),
                                                                               source.source_head))])
                await asyncio.sleep(0.2)

        beats = asyncio.create_task(heartbeats())
        try:
            seq = 0
            async for d in source.stream(self):
                while seq - self._acked >= hello.window:
                    await asyncio.sleep(0.01)
                seq += 1
                self._record(d.notification)
                await router.send_multipart([ident, wire.encode(wire.NotificationMsg(seq, d.notification))])
        finally:
            beats.cancel()
            await source.aclose()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        if self._error is not None:
            raise self._error


@pytest.fixture
def bridge(tmp_path, anvil):
    """An older bridge: no history."""
    b = RpcBridge(f"ipc://{tmp_path}/bridge.sock", anvil.url)
    yield b
    b.close()


@pytest.fixture
def history_bridge(tmp_path, anvil):
    b = RpcBridge(f"ipc://{tmp_path}/bridge.sock", anvil.url, history=3)
    yield b
    b.close()


def write_config(tmp_path: Path, bridge: RpcBridge, rpc_url: str | None, late: bool) -> Path:
    cfg = tmp_path / "config.toml"
    cfg.write_text(f"""
[source]
kind = "exex"
url = "{bridge.endpoint}"
heartbeat = 0.2
max_backoff = 0.5
{f'rpc_url = "{rpc_url}"' if rpc_url else ''}

[storage]
path = "db.sqlite"
synchronous = "NORMAL"

[http]
enabled = false

[plugins.ledger]
enabled = true

[plugins.rec]
enabled = {str(late).lower()}

[plugins.trigger]
enabled = {str(late).lower()}
""")
    return cfg


def open_sidecar(cfg: Path, trigger: object) -> App:
    return open_app(cfg, extra_plugins={"ledger": ledger, "rec": chainrecord, "trigger": trigger})


def follow(app: App, done: Any, timeout: float = 90, batch: int | None = None) -> Runner:
    """Run the sidecar's own Runner on its exex source until ``done(runner)``, then stop it."""
    s = app.settings.source
    src = ExExSource(s.url, window=8, heartbeat_s=s.heartbeat, max_backoff=s.max_backoff, metrics=app.metrics,
                     start_block=1)
    runner = Runner(app, src, serve_http=False, watch_config=False)
    if batch is not None:
        runner.catchup.batch = batch

    async def main() -> None:
        try:
            await run_until(runner.run(), lambda: done(runner), timeout, src)
        finally:
            await runner.catchup.aclose()

    asyncio.run(main())
    return runner


def at(anvil: Anvil) -> Any:
    """``done``: the engine is at anvil's head (as it is now) and every enabled plugin follows it."""
    def done(runner: Runner) -> bool:
        head = runner.app.engine.head
        st = runner.catchup.status()
        return (head is not None and (head.number, "0x" + head.hash.hex()) == anvil.head()
                and all(st.get(p, {}).get("state") == "live" for p in runner.app.host.enabled))
    return done


def dump(db: Path, tables: tuple[str, ...], plugins: dict[str, object]) -> dict[str, list]:
    eng = make_engine(db, plugins)
    try:
        return {t: sorted(eng.conn.execute(f"SELECT * FROM {t}").fetchall()) for t in tables}
    finally:
        eng.host.shutdown()
        eng.close()


def reference(tmp_path: Path, anvil: Anvil) -> dict[str, list]:
    """The plugins' tables for a fresh index of anvil's chain from block 1 (the ExEx's first block)."""
    async def fetch() -> list[Block]:
        node = RpcSource(anvil.url)
        try:
            return await node.fetch_blocks(1, anvil.head()[0])
        finally:
            await node.aclose()

    eng = make_engine(tmp_path / "reference.sqlite", {"ledger": ledger, "rec": chainrecord})
    try:
        eng.apply(ChainCommitted(Chain(tuple(asyncio.run(fetch())))))
    finally:
        eng.host.shutdown()
        eng.close()
    return dump(tmp_path / "reference.sqlite", LEDGER_TABLES + REC_TABLES, {"ledger": ledger, "rec": chainrecord})


class ReorgOnce:
    """A plugin enabled late that makes the node reorg ``depth`` blocks deep while it catches up through block
    ``at``: the reorg lands in the middle of every late plugin's catch-up."""

    def __init__(self, anvil: Anvil | None = None, at: int = 0, depth: int = 0) -> None:
        self.anvil, self.at, self.depth = anvil, at, depth
        self.fired_while: dict[str, Any] | None = None

    @hookimpl
    def monmouth_block_applied(self, conn: Any, block: Block, notification: Any) -> None:
        if self.anvil is not None and self.fired_while is None and block.number == self.at:
            row = conn.execute("SELECT state, last FROM monmouth_plugin_progress WHERE plugin = 'rec'").fetchone()
            self.fired_while = {"rec": tuple(row)}
            self.anvil.reorg(self.depth, txs=3, seed=11)


def catches_up_through_a_reorg(tmp_path: Path, anvil: Anvil, bridge: RpcBridge, rpc_url: str | None,
                               caplog: Any) -> Runner:
    anvil.traffic(30, txs_per_block=2)
    # The sidecar indexes the chain from the bridge with one plugin.
    cfg = write_config(tmp_path, bridge, rpc_url, late=False)
    app = open_sidecar(cfg, ReorgOnce())
    follow(app, at(anvil))
    app.close()
    assert bridge.sessions == 1
    # Two plugins are enabled late, with the head at 30; the node reorgs 12 blocks (19..30) while they catch up
    # 4 blocks per step, and goes on afterwards.
    trigger = ReorgOnce(anvil, at=20, depth=12)
    write_config(tmp_path, bridge, rpc_url, late=True)
    app = open_sidecar(cfg, trigger)
    with caplog.at_level(logging.INFO, logger="monmouth"):
        runner = follow(app, at(anvil), batch=4)
    assert trigger.fired_while is not None and trigger.fired_while["rec"][0] == "catching_up", trigger.fired_while
    assert any(isinstance(n, ChainReorged) for n in bridge.notifications), "the exex source delivered no reorg"
    anvil.traffic(3, txs_per_block=1, seed=3)  # and they follow the live stream afterwards
    app.close()
    app = open_sidecar(cfg, ReorgOnce())
    follow(app, at(anvil))
    app.close()
    text = caplog.text
    assert "WITHOUT blocks" not in text, text
    assert "plugin rec caught up to" in text and "catching up from block 1" in text, text
    status = runner.catchup.status()
    assert status["rec"]["first"] == 1 and status["rec"]["error"] is None, status
    # Exactly once, reorg-exact: the same tables as a fresh index of the node's final chain.
    assert dump(tmp_path / "db.sqlite", LEDGER_TABLES + REC_TABLES,
                {"ledger": ledger, "rec": chainrecord}) == reference(tmp_path, anvil)
    return runner


def test_a_plugin_enabled_late_under_exex_catches_up_through_the_bridge_through_a_reorg(tmp_path, anvil,
                                                                                       history_bridge, caplog):
    runner = catches_up_through_a_reorg(tmp_path, anvil, history_bridge, None, caplog)
    reqs = history_bridge.history_requests
    assert reqs and reqs[0].from_block == 1 and all(r.head is not None for r in reqs), reqs
    assert runner.source.status()["history_blocks"] >= 20  # type: ignore[attr-defined]


def test_an_older_bridge_falls_back_to_the_nodes_json_rpc_through_a_reorg(tmp_path, anvil, bridge, caplog):
    catches_up_through_a_reorg(tmp_path, anvil, bridge, anvil.url, caplog)




def test_an_older_bridge_without_rpc_url_leaves_the_plugin_waiting_with_an_error_naming_both_ways_out(
        tmp_path, anvil, bridge, caplog):
    anvil.traffic(6, txs_per_block=1)
    cfg = write_config(tmp_path, bridge, None, late=False)
    app = open_sidecar(cfg, ReorgOnce())
    follow(app, at(anvil))
    app.close()
    write_config(tmp_path, bridge, None, late=True)
    app = open_sidecar(cfg, ReorgOnce())

    def errored(runner: Runner) -> bool:
        return "serves no history" in ((runner.catchup.status().get("rec") or {}).get("error") or "")

    with caplog.at_level(logging.WARNING, logger="monmouth"):
        runner = follow(app, errored)
    app.close()
    st = runner.catchup.status()["rec"]
    assert st["state"] == "catching_up" and not st["last"], st
    assert "history blocks 1..6" in st["error"] and "serves no history" in st["error"], st
    assert "source.rpc_url" in st["error"], st
    assert "catch-up of plugin rec" in caplog.text, caplog.text
    assert dump(tmp_path / "db.sqlite", ("rec_blocks",), {"rec": chainrecord}) == {"rec_blocks": []}


def test_an_rpc_url_on_another_chain_is_refused_and_nothing_is_applied(tmp_path, anvil):
    anvil.traffic(5, txs_per_block=1)
    with Anvil() as other:
        other.traffic(8, txs_per_block=2, seed=4)  # another chain: same numbers, other hashes
        number, hash_ = anvil.head()
        head = BlockRef(number, bytes.fromhex(hash_[2:]))

        async def fetch(url: str) -> list[Block]:
            history = NodeHistory(url)
            try:
                return await history(1, 3, head)
            finally:
                await history.aclose()

        with pytest.raises(HistoryError, match=rf"source.rpc_url {other.url}: the node's block 5 is 0x[0-9a-f]{{64}}, "
                                               r"the indexed head is #5 0x.*not the node the bridge follows"):
            asyncio.run(fetch(other.url))
        assert [b.number for b in asyncio.run(fetch(anvil.url))] == [1, 2, 3]


@pytest.mark.parametrize(("kind", "value", "message"), [
    ("exex", "127.0.0.1:8545", "source.rpc_url: Value error, must be an http:// or https:// URL with a host"),
    ("exex", "tcp://127.0.0.1:5555", "source.rpc_url: Value error, must be an http:// or https:// URL"),
    ("rpc", "http://127.0.0.1:8545", "source.rpc_url is only used by the exex source (the rpc source reads "
                                     "history from source.url)"),
])
def test_rpc_url_is_validated_naming_file_and_key(tmp_path, kind, value, message):
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[source]\nkind = "{kind}"\nrpc_url = "{value}"\n[storage]\npath = "db.sqlite"\n')
    with pytest.raises(ConfigError) as e:
        open_app(cfg)
    assert str(e.value).startswith(f"{cfg}: ") and message in str(e.value), e.value
    assert not (tmp_path / "db.sqlite").exists()


def test_history_while_not_connected_is_refused_naming_the_blocks(tmp_path):
    """No bridge at the endpoint: a history request waits one handshake for a session, then fails naming the blocks
    and the connection state (the catch-up shows it and asks again later)."""
    src = ExExSource(f"ipc://{tmp_path}/nobody.sock", handshake_timeout_s=0.3)

    async def main() -> None:
        try:
            with pytest.raises(HistoryError, match=r"history blocks 3\.\.9: the bridge at ipc://\S+ is not connected "
                                                   r"\(state idle\)"):
                await src.history(3, 9, None)
        finally:
            await src.aclose()

    asyncio.run(main())


def test_reindex_under_exex_rebuilds_a_plugin_from_the_bridges_history(tmp_path, anvil, history_bridge):
    """``monmouth reindex`` (sidecar stopped) with the exex source and no ``source.rpc_url``: it opens its own bridge
    session for the history, and the rebuilt tables equal a fresh index of the node's chain."""
    from monmouth.reindex import reindex

    anvil.traffic(10, txs_per_block=2)
    cfg = write_config(tmp_path, history_bridge, None, late=False)
    app = open_sidecar(cfg, ReorgOnce())
    follow(app, at(anvil))
    with app.engine.conn:  # damage the plugin's data: a reindex repairs it
        app.engine.conn.execute("DELETE FROM ledger_transfers WHERE block_number > 4")
    app.close()
    before = len(history_bridge.history_requests)
    app = open_sidecar(cfg, ReorgOnce())
    said: list[str] = []
    try:
        assert asyncio.run(reindex(app, "ledger", 1, said.append)) == 10
    finally:
        app.close()
    assert "reindex ledger: done, 10 blocks (1..10)" in said[-1], said
    assert len(history_bridge.history_requests) > before
    assert dump(tmp_path / "db.sqlite", LEDGER_TABLES, {"ledger": ledger}) == \
        {t: v for t, v in reference(tmp_path, anvil).items() if t in LEDGER_TABLES}
