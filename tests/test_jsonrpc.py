"""JSON-RPC objects to the data model, on the 10 real mainnet blocks of ../shared/data/mainnet."""

from __future__ import annotations

import json

import pytest

from monmouth.errors import CodecError
from monmouth.jsonrpc import block_from_rpc
from monmouth.testing import load_mainnet_blocks, shared_data_dir

# block: (transactions, logs), from ../shared/data/README.md
EXPECTED = {468179: (1, 0), 4370006: (64, 113), 4404763: (95, 70), 7280016: (91, 77), 11098450: (185, 263),
            13998626: (7, 15), 15753009: (210, 400), 16899757: (147, 520), 17053184: (125, 216),
            18000000: (94, 291)}


def test_real_blocks_decode_with_every_transaction_and_log():
    blocks = load_mainnet_blocks()
    got = {b.number: (len(b.transactions), sum(len(r.logs) for r in b.receipts)) for b in blocks}
    assert got == EXPECTED
    by_number = {b.number: b for b in blocks}
    assert by_number[468179].receipts[0].status is None  # Frontier: receipts carry a state root, not a status
    assert by_number[468179].base_fee_per_gas is None and by_number[13998626].base_fee_per_gas is not None
    assert {t.type for t in by_number[18000000].transactions} >= {0, 2}
    for b in blocks:
        assert b.receipts[-1].cumulative_gas_used == b.gas_used


def test_malformed_rpc_objects_are_named():
    raw = json.loads((shared_data_dir() / "mainnet" / "013998626.json").read_text())
    block, receipts = raw["block"], raw["receipts"]
    with pytest.raises(CodecError, match="7 transactions but 6 receipts"):
        block_from_rpc(block, receipts[:-1])
    bad = dict(block, transactions=[dict(block["transactions"][0], **{"from": "0x1234"}), *block["transactions"][1:]])
    with pytest.raises(CodecError, match=r"transactions\[0\].from: expected 20 bytes"):
        block_from_rpc(bad, receipts)
    with pytest.raises(CodecError, match="transactions are hashes"):
        block_from_rpc(dict(block, transactions=[t["hash"] for t in block["transactions"]]), receipts)
    swapped = [receipts[1], receipts[0], *receipts[2:]]
    with pytest.raises(CodecError, match="receipt 0 belongs to"):
        block_from_rpc(block, swapped)
