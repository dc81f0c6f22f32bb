"""The rpc source against a real node (anvil): real transactions from several accounts, real reorgs of
depth 1 to 10 with ``anvil_reorg``, the node going away and coming back."""

from __future__ import annotations

import anyio
import httpx
import pytest

from monmouth.app import open_app
from monmouth.runner import Runner
from monmouth.sources.rpc import RpcSource
from tests.conftest import PG_ENV, settings_for, wait_for
from tests.plugins import ledger
from tests.test_engine import dump

pytestmark = [pytest.mark.anyio, pytest.mark.anvil]


def synced(app, anvil) -> bool:
    n, h = anvil.head()
    head = app.engine.head
    return head is not None and head.number == n and "0x" + head.hash.hex() == h


async def index_fresh(tmp_path, anvil, name: str, storage=None):
    """A fresh sidecar that indexes anvil's final chain from block 0 (on ``storage(name)``, default a SQLite file)."""
    target = storage(name) if storage is not None else tmp_path / name
    app = open_app(settings=settings_for(target, {"ledger": ledger}), extra_plugins={"ledger": ledger},
                   environ=PG_ENV)
    runner = Runner(app, RpcSource(anvil.url, poll_interval=0.05, batch_size=32), serve_http=False, watch_config=False)
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run)
        await wait_for(lambda: synced(app, anvil), what="fresh index")
        tg.cancel_scope.cancel()
    return app


async def test_follows_anvil_through_reorgs_of_depth_1_to_10(tmp_path, anvil, storage_of):
    """On each backend: SQLite, and PostgreSQL with its trigger journal."""
    app = open_app(settings=settings_for(storage_of("live.sqlite"), {"ledger": ledger}),
                   extra_plugins={"ledger": ledger}, environ=PG_ENV)
    source = RpcSource(anvil.url, poll_interval=0.05, batch_size=4)
    runner = Runner(app, source, serve_http=False, watch_config=False)
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run)
        anvil.traffic(14, txs_per_block=3)
        await wait_for(lambda: synced(app, anvil))
        for depth in (1, 2, 3, 5, 8, 10):
            anvil.reorg(depth, txs=3, seed=depth)
            await wait_for(lambda: synced(app, anvil))
            anvil.traffic(1, seed=depth)
            await wait_for(lambda: synced(app, anvil))
        tg.cancel_scope.cancel()
    assert source.reorgs_detected >= 6
    assert app.engine.reorgs_seen >= 6
    stored = app.engine.conn.execute("SELECT number, hash FROM monmouth_blocks ORDER BY number").fetchall()
    assert stored == anvil.block_hashes()
    fresh = await index_fresh(tmp_path, anvil, "fresh.sqlite", storage_of)
    assert dump(app.engine.conn) == dump(fresh.engine.conn)
    assert app.engine.conn.execute("SELECT count(*) FROM ledger_transfers").fetchone()[0] >= 20
    app.close()
    fresh.close()


async def test_node_going_away_and_coming_back(tmp_path, anvil):
    app = open_app(settings=settings_for(tmp_path / "db.sqlite", {"ledger": ledger}), extra_plugins={"ledger": ledger})
    source = RpcSource(anvil.url, poll_interval=0.05, batch_size=4, max_backoff=0.5, metrics=app.metrics)
    app.settings.http.enabled, app.settings.http.port = True, 0
    runner = Runner(app, source, watch_config=False)
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run)
        anvil.traffic(3)
        await wait_for(lambda: synced(app, anvil))
        http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{runner.http_port}")
        assert (await http.get("/ready")).status_code == 200
        state = anvil.rpc("anvil_dumpState")
        head_before = app.engine.head
        anvil.stop()
        await wait_for(lambda: source.reconnects >= 2, what="reconnect attempts")
        assert not source.connected and "ConnectError" in (source.last_error or "")
        assert app.engine.head == head_before  # the cursor does not move while the node is away
        r = await http.get("/ready")
        assert r.status_code == 503 and "source disconnected" in r.json()["reason"]
        assert (await http.get("/health")).status_code == 200
        anvil.start()
        anvil.rpc("anvil_loadState", state)
        anvil.traffic(2)
        await wait_for(lambda: synced(app, anvil))
        assert (await http.get("/ready")).status_code == 200
        await http.aclose()
        tg.cancel_scope.cancel()
    assert source.connected
    assert app.metrics.registry.get_sample_value("monmouth_source_reconnects_total", {"source": "rpc"}) >= 2
    app.close()


async def test_restart_mid_stream_resumes_from_durable_head(tmp_path, anvil):
    anvil.traffic(20, txs_per_block=2)
    db = tmp_path / "db.sqlite"
    app = open_app(settings=settings_for(db, {"ledger": ledger}), extra_plugins={"ledger": ledger})
    runner = Runner(app, RpcSource(anvil.url, poll_interval=0.05, batch_size=2), serve_http=False, watch_config=False)
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run)
        await wait_for(lambda: app.engine.head is not None and app.engine.head.number >= 6)
        tg.cancel_scope.cancel()  # stop mid-stream
    stopped_at = app.engine.head.number
    app.close()
    assert stopped_at < 20
    anvil.reorg(3, txs=2)
    anvil.traffic(2)
    app = open_app(settings=settings_for(db, {"ledger": ledger}), extra_plugins={"ledger": ledger})
    assert app.engine.head.number == stopped_at  # the cursor is durable
    runner = Runner(app, RpcSource(anvil.url, poll_interval=0.05, batch_size=2), serve_http=False, watch_config=False)
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run)
        await wait_for(lambda: synced(app, anvil))
        tg.cancel_scope.cancel()
    fresh = await index_fresh(tmp_path, anvil, "fresh.sqlite")
    assert dump(app.engine.conn) == dump(fresh.engine.conn)
    app.close()
    fresh.close()


async def test_finalized_tag_prunes_undo_data(tmp_path):
    from tests.anvil import Anvil

    with Anvil(slots_in_an_epoch=1) as node:
        app = open_app(settings=settings_for(tmp_path / "db.sqlite", {"ledger": ledger}, engine={"finality_depth": 2}),
                       extra_plugins={"ledger": ledger})
        source = RpcSource(node.url, poll_interval=0.05, batch_size=4)
        runner = Runner(app, source, serve_http=False, watch_config=False)
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner.run)
            node.traffic(12)
            await wait_for(lambda: synced(app, node))
            await wait_for(lambda: app.engine.finalized is not None and app.engine.finalized >= 8)
            tg.cancel_scope.cancel()
        fin = app.engine.finalized
        # The node's finalized tag, believed for a block of the indexed chain, never within finality_depth of the head.
        assert fin == min(source.finalized, app.engine.head.number - 2)
        assert source.node_finalized[0] >= fin
        # Undo data at or below the finalized block is pruned; above it, kept.
        assert app.engine.oldest_revertible() == fin + 1
        app.close()


class NoBlockReceipts(httpx.AsyncBaseTransport):
    """In front of the real node: answers eth_getBlockReceipts as nodes without it do (-32601), forwards the rest."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.refused = 0

    async def handle_async_request(self, request):
        import json

        body = json.loads(request.content)
        calls = body if isinstance(body, list) else [body]
        if any(c["method"] == "eth_getBlockReceipts" for c in calls):
            self.refused += 1
            errs = [{"jsonrpc": "2.0", "id": c["id"], "error": {"code": -32601, "message": "the method "
                     "eth_getBlockReceipts does not exist/is not available"}} for c in calls]
            return httpx.Response(200, json=errs if isinstance(body, list) else errs[0])
        return await self.inner.handle_async_request(request)


async def test_receipts_fall_back_to_per_transaction_calls(tmp_path, anvil):
    proxy = NoBlockReceipts()
    app = open_app(settings=settings_for(tmp_path / "db.sqlite", {"ledger": ledger}), extra_plugins={"ledger": ledger})
    source = RpcSource(anvil.url, poll_interval=0.05, batch_size=4, transport=proxy)
    runner = Runner(app, source, serve_http=False, watch_config=False)
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run)
        anvil.traffic(5, txs_per_block=3)
        await wait_for(lambda: synced(app, anvil))
        tg.cancel_scope.cancel()
    assert proxy.refused == 1 and source.status()["block_receipts"] is False
    assert app.engine.conn.execute("SELECT count(*) FROM ledger_transfers").fetchone()[0] == 15
    app.close()
