"""Lagrange on a real node (anvil): a registry implementing the documented interface (compiled with the npm solc)
receives our signed ``request(...)`` transactions, exactly one per triggering block even when a send is repeated;
the sidecar indexes ``NewRequest`` / ``NewResponse`` in its chain hooks, and a reorg that removes the response
block removes the result, until it is answered again."""

from __future__ import annotations

import json

import anyio
import pytest

from monmouth.runner import Runner
from monmouth.sources.rpc import RpcSource
from monmouth_integrations.lagrange.abi import NEW_REQUEST_TOPIC, decode_new_request
from monmouth_integrations.lagrange.plugin import LagrangePlugin
from tests.conftest import wait_for
from tests.fakes import lagrange as registry_fake
from tests.fakes.harness import DEV_ADDRESS, DEV_KEY, FAST, loopback_client, open_test_app

pytestmark = [pytest.mark.anyio, pytest.mark.anvil]

QUERY = "0x" + "11" * 32


def count(app, table):
    return app.engine.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


async def test_requests_on_chain_exactly_once_and_results_follow_reorgs(storage_of, anvil, monkeypatch):
    why = registry_fake.available()
    if why:
        pytest.fail(why)
    contract = registry_fake.compile_registry()
    registry = registry_fake.deploy(anvil, contract["bytecode"])
    anvil.mine(8)  # head 9
    monkeypatch.setenv("LAGRANGE_PRIVATE_KEY", DEV_KEY)
    plugin = LagrangePlugin()
    app = open_test_app(storage_of("db.sqlite"), {"lagrange": plugin}, {"lagrange": {
        "rpc_url": anvil.url, "registry": registry, "query_hash": QUERY, "every_blocks": 5, "range_blocks": 3,
        "placeholders": ["$block_number", "0x" + "ab" * 32], **FAST, "timeout_s": 5.0}})
    runner = Runner(app, RpcSource(anvil.url, poll_interval=0.05, batch_size=8), serve_http=False,
                    watch_config=False)
    outbox = plugin.rt.outbox
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run)
        anvil.mine(1)  # head 10: triggers at blocks 5 and 10
        await wait_for(lambda: outbox.counts()["done"] == 2, timeout=30, what="two requests sent")
        anvil.mine(1)  # block 11 includes both
        await wait_for(lambda: count(app, "lagrange_requests") == 2, timeout=30, what="NewRequest indexed")
        rows = app.engine.conn.execute("SELECT request_id, start_block, end_block, placeholders, fee_wei "
                                       "FROM lagrange_requests ORDER BY end_block").fetchall()
        assert [(r[1], r[2]) for r in rows] == [(3, 5), (8, 10)]
        assert json.loads(rows[1][3]) == ["0x" + (10).to_bytes(32, "big").hex(), "0x" + "ab" * 32]
        assert rows[0][4] == str(10**16)  # the registry's gasFee() was paid
        # Exactly once on chain: two transactions from the requester, and re-sending a delivered request's
        # signed bytes (a lost answer) adds none.
        assert int(anvil.rpc("eth_getTransactionCount", DEV_ADDRESS, "latest"), 16) == 2
        handler = plugin.rt.deliverer.handler
        job = plugin.rt.outbox.get(1)
        assert handler.deliver(job, job.body)["tx_hash"] == json.loads(job.body)["hash"]
        anvil.mine(1)
        assert int(anvil.rpc("eth_getTransactionCount", DEV_ADDRESS, "latest"), 16) == 2

        # The relayer answers both in one block (13).
        logs = anvil.rpc("eth_getLogs", {"address": registry, "fromBlock": "0x0", "toBlock": "latest",
                                         "topics": ["0x" + NEW_REQUEST_TOPIC.hex()]})
        ids = [decode_new_request([bytes.fromhex(t[2:]) for t in lg["topics"]], bytes.fromhex(lg["data"][2:]))
               ["request_id"] for lg in logs]
        assert sorted(ids) == [1, 2]
        for rid in ids:
            registry_fake.respond(anvil, registry, rid, [rid.to_bytes(32, "big"), b"\x07" * 32], 12)
        anvil.mine(1)
        await wait_for(lambda: count(app, "lagrange_results") == 2, timeout=30, what="NewResponse indexed")
        client = loopback_client(app)
        r = client.get("/integrations/lagrange/results/2").json()
        assert r["total_matched_rows"] == "2" and r["rows"] == ["0x" + (2).to_bytes(32, "big").hex(), "0x" + "07" * 32]
        assert r["error"] == 0 and r["block"] == 13

        # A reorg replaces block 13: the results go with it (the requests, in block 11, stay).
        anvil.rpc("anvil_reorg", 1, [])
        await wait_for(lambda: count(app, "lagrange_results") == 0, timeout=30, what="results reverted")
        assert count(app, "lagrange_requests") == 2
        assert client.get("/integrations/lagrange/results/2").status_code == 404
        # Answered again on the new chain: back.
        for rid in ids:
            registry_fake.respond(anvil, registry, rid, [b"\x01" * 32], 13)
        anvil.mine(1)
        await wait_for(lambda: count(app, "lagrange_results") == 2, timeout=30, what="results again")
        listed = client.get("/integrations/lagrange/requests").json()
        assert {x["request_id"] for x in listed} == {"1", "2"} and all(x["result"]["block"] == 14 for x in listed)
        st = client.get("/status").json()["plugins"]["lagrange"]
        assert st["requester"] == DEV_ADDRESS and st["requests_on_chain"] == 2 and st["results"] == 2
        tg.cancel_scope.cancel()
    app.close()
