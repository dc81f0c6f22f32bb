"""A node that answers badly never kills the ``rpc`` source (issue 19, item 2), against a real sidecar subprocess.

The node is a real HTTP JSON-RPC server in front of a real anvil that alters answers the way a broken or lying
node would: receipts as strings, a block as an integer or a string, a header without ``hash``, a transaction
list of lists, a body that is not JSON or nests 200,000 deep, and values that still parse but are false (a receipt's status, a log, a
transaction's value, a header field), which only the checks against the header's hash and roots catch. Each is
refused, counted per node in ``/status`` and ``/metrics``, logged naming the node and the block, and retried;
the process stays up and answers ``/health``; ``/ready`` is 503 meanwhile and 200 once the node answers well;
the final state equals a clean run's.
"""

from __future__ import annotations

import copy

import anyio
import pytest

from monmouth.sources.rpc import RpcSource
from tests.anvil import free_port
from tests.conftest import make_engine
from tests.plugins import ledger
from tests.running import FaultyNode, Raw, Sidecar, write_config
from tests.test_engine import PLUGIN_TABLES
from tests.test_sources_rpc import index_fresh

pytestmark = pytest.mark.anvil

#: Init code that emits one log (PUSH1 0 PUSH1 0 LOG0) and deploys no code.
LOG_INIT_CODE = "0x60006000a000"


def dump(conn) -> dict[str, list[tuple]]:
    """Every ledger table, sorted (``repr`` as the key: a contract creation has no ``to``)."""
    return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in PLUGIN_TABLES}


def full_block(method, params):
    return method == "eth_getBlockByNumber" and len(params) > 1 and params[1] is True


def first_with_logs(receipts):
    return next(r for r in receipts if r["logs"])


def _receipts_as_strings(m, p, r):
    return ["not a receipt" for _ in r] if m == "eth_getBlockReceipts" and r else r


def _block_as_int(m, p, r):
    return 7 if full_block(m, p) else r


def _block_as_string(m, p, r):
    return "0xdeadbeef" if full_block(m, p) else r


def _header_without_hash(m, p, r):
    if m == "eth_getBlockByNumber" and p[1] is False and isinstance(r, dict):
        return {k: v for k, v in r.items() if k != "hash"}
    return r


def _transactions_list_of_lists(m, p, r):
    if full_block(m, p) and isinstance(r, dict) and r["transactions"]:
        return {**r, "transactions": [[t["hash"]] for t in r["transactions"]]}
    return r


def _status_flipped(m, p, r):
    if m == "eth_getBlockReceipts" and r:
        r = copy.deepcopy(r)
        r[0]["status"] = "0x0" if r[0]["status"] == "0x1" else "0x1"
    return r


def _log_tampered(m, p, r):
    if m == "eth_getBlockReceipts" and any(x["logs"] for x in r or []):
        r = copy.deepcopy(r)
        first_with_logs(r)["logs"][0]["data"] = "0x" + "01" * 32
    return r


def _value_tampered(m, p, r):
    if full_block(m, p) and isinstance(r, dict) and r["transactions"]:
        r = copy.deepcopy(r)
        r["transactions"][0]["value"] = hex(int(r["transactions"][0]["value"], 16) + 10**18)
    return r


def _gas_used_tampered(m, p, r):
    if full_block(m, p) and isinstance(r, dict):
        return {**r, "gasUsed": hex(int(r["gasUsed"], 16) + 1)}
    return r


def _nested_deep(m, p, r):
    # deep enough to overflow the C stack of any JSON parser once py_ecc has raised the recursion limit
    return Raw(b"[" * 200_000 + b"]" * 200_000) if full_block(m, p) else r


def _not_json(m, p, r):
    return Raw(b"<html>502 Bad Gateway</html>") if full_block(m, p) else r


FAULTS = [
    ("receipts as strings", _receipts_as_strings, "$[0]"),
    ("block as an integer", _block_as_int, "got `int`"),
    ("block as a string", _block_as_string, "got `str`"),
    ("header without hash", _header_without_hash, "missing required field `hash`"),
    ("transaction list of lists", _transactions_list_of_lists, "$.transactions[0]"),
    ("receipt status flipped", _status_flipped, "receiptsRoot"),
    ("log data tampered", _log_tampered, "receiptsRoot"),
    ("transaction value tampered", _value_tampered, "do not hash to its hash"),
    ("header gasUsed tampered", _gas_used_tampered, "do not hash to the block hash"),
    ("body not JSON", _not_json, "not JSON"),
    ("answer nested 200,000 deep", _nested_deep, "nests 200000 deep"),
]


def test_bad_node_answers_are_refused_counted_and_retried_never_fatal(tmp_path, anvil):
    anvil.traffic(3, txs_per_block=2)
    with FaultyNode(anvil.url) as node:
        port = free_port()
        cfg = write_config(tmp_path / "config.toml", url=node.url, port=port)
        with Sidecar(cfg, port) as sc:
            sc.wait(lambda: sc.head() == anvil.head(), what="the first sync")
            assert sc.ready()[0] == 200
            seen = 0
            for i, (name, fault, says) in enumerate(FAULTS):
                before = sc.head()
                node.fault = fault
                if name == "log data tampered":
                    anvil.rpc("eth_sendTransaction", {"from": anvil.accounts[0], "data": LOG_INIT_CODE})
                anvil.traffic(1, txs_per_block=2, seed=i)
                sc.wait(lambda seen=seen: sc.status()["source"]["bad_answers"].get(node.url, 0) > seen,
                        what=f"{name}: a bad answer counted")
                seen = sc.status()["source"]["bad_answers"][node.url]
                assert sc.alive and sc.get("/health").status_code == 200, name
                code, reason = sc.ready()
                assert code == 503 and "BadAnswerError" in reason and says in reason, (name, reason)
                assert sc.head() == before, f"{name}: nothing of a bad answer is applied"
                node.fault = None
                sc.wait(lambda: sc.head() == anvil.head(), what=f"{name}: catching up once the node answers well")
                sc.wait(lambda: sc.ready()[0] == 200, what=f"{name}: ready again")
            assert seen >= len(FAULTS)
            assert sc.metric("monmouth_source_bad_answers_total", f'node="{node.url}",source="rpc"') == seen
            log = sc.logged()
            assert f"bad answer from {node.url}" in log
            n, h = anvil.head()
            assert "Traceback" not in log
        # Every tampered block was refused by block number and hash, e.g. "block 0x6 0x...: the receipts ...".
        assert any(f"block {hex(k)} 0x" in log for k in range(4, n + 1))
    live = make_engine(tmp_path / "db.sqlite", {"ledger": ledger})
    assert live.head is not None and (live.head.number, "0x" + live.head.hash.hex()) == (n, h)
    fresh = anyio.run(index_fresh, tmp_path, anvil, "fresh.sqlite")
    assert dump(live.conn) == dump(fresh.engine.conn)
    live.close()
    fresh.close()


async def _fetch(url: str, n: int):
    src = RpcSource(url)
    try:
        return await src.fetch_blocks(n, n)
    finally:
        await src.aclose()


def test_anvil_typed_transactions_verify(anvil):
    """Types 0, 1 (EIP-2930), 2 (EIP-1559) and 4 (EIP-7702), and a contract creation, as anvil returns them,
    pass verification inside the rpc source (Prague headers: requestsHash, blob gas, beacon root)."""
    from eth_account import Account

    acc = anvil.accounts
    anvil.rpc("eth_sendTransaction", {"from": acc[0], "to": acc[1], "value": "0x1", "gasPrice": hex(3 * 10**9),
                                      "type": "0x0"})
    anvil.rpc("eth_sendTransaction", {"from": acc[1], "to": acc[2], "value": "0x1", "gasPrice": hex(3 * 10**9),
                                      "type": "0x1", "accessList": [{"address": acc[3],
                                                                     "storageKeys": ["0x" + "00" * 31 + "01"]}]})
    anvil.rpc("eth_sendTransaction", {"from": acc[2], "data": LOG_INIT_CODE})
    signer = Account.create()
    anvil.rpc("anvil_setBalance", signer.address, hex(10**20))
    chain_id = int(anvil.rpc("eth_chainId"), 16)
    base = int(anvil.rpc("eth_getBlockByNumber", "latest", False)["baseFeePerGas"], 16)
    auth = signer.sign_authorization({"chainId": chain_id, "address": "0x" + "11" * 20, "nonce": 1})
    tx = signer.sign_transaction({"type": 4, "chainId": chain_id, "nonce": 0, "to": "0x" + "22" * 20, "value": 0,
                                  "gas": 100_000, "maxFeePerGas": 3 * base + 10**9, "maxPriorityFeePerGas": 10**9,
                                  "data": b"", "accessList": [], "authorizationList": [auth]})
    anvil.rpc("eth_sendRawTransaction", "0x" + tx.raw_transaction.hex())
    anvil.mine()
    n, _ = anvil.head()
    [block] = anyio.run(_fetch, anvil.url, n)
    assert sorted(t.type for t in block.transactions) == [0, 1, 2, 4]
    assert any(r.logs for r in block.receipts)
