"""JSON-RPC objects to the data model, on the 10 real mainnet blocks of ../shared/data/mainnet."""

from __future__ import annotations

import json

import pytest

from monmouth.errors import CodecError
from monmouth.jsonrpc import block_from_rpc
from tests.chains import load_mainnet_blocks, shared_data_dir

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


def _depth(value) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


def test_json_depth_equals_the_parsed_depth_without_parsing():
    """json_depth (used to refuse a node's answer nested deep enough to crash a JSON parser) matches the depth of
    the parsed value for any JSON, strings full of brackets, quotes and backslashes included."""
    import json

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from monmouth.jsonrpc import json_depth

    text = st.text(alphabet='[]{}"\\ax\u00e9', max_size=8)
    values = st.recursive(st.none() | st.integers() | text,
                          lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
                          max_leaves=40)

    @settings(max_examples=300, deadline=None)
    @given(values, st.booleans())
    def check(value, ascii_only):
        body = json.dumps(value, ensure_ascii=ascii_only).encode()
        assert json_depth(body) == _depth(value)

    check()
    assert json_depth(b"[" * 200_000 + b"]" * 200_000) == 200_000
