"""Block verification (sidecar/roots.py) on real data: the 10 mainnet blocks of ../shared/data verify, any
altered receipt, transaction or header field is caught naming the block, and the one-pass ordered trie equals
py-trie, the reference implementation."""

from __future__ import annotations

import copy
import json

import pytest

from monmouth.roots import VerificationError, verify_block


def test_every_mainnet_block_verifies_and_any_altered_field_is_caught():
    """The real blocks of ../shared/data (Frontier to Shanghai, legacy and typed transactions) pass; changing a
    receipt's status, a log, a transaction field or a header field anywhere fails, naming the block."""
    from tests.chains import shared_data_dir

    files = sorted((shared_data_dir() / "mainnet").glob("*.json"))
    assert len(files) == 10
    for f in files:
        raw = json.loads(f.read_text())
        block, receipts = raw["block"], raw["receipts"]
        verify_block(block, receipts)
        tampered = copy.deepcopy(receipts)
        if tampered:
            last = tampered[-1]
            if "status" in last:
                last["status"] = "0x0" if last["status"] == "0x1" else "0x1"
            else:
                last["cumulativeGasUsed"] = hex(int(last["cumulativeGasUsed"], 16) + 1)
            with pytest.raises(VerificationError, match="receiptsRoot") as e:
                verify_block(block, tampered)
            assert e.value.number == int(block["number"], 16) and e.value.block_hash == block["hash"]
            b2 = copy.deepcopy(block)
            b2["transactions"][-1]["input"] = b2["transactions"][-1]["input"] + "00"
            with pytest.raises(VerificationError, match=f"block {block['number']} {block['hash']}"):
                verify_block(b2, receipts)
            with pytest.raises(VerificationError, match="receiptsRoot"):
                verify_block(block, receipts[::-1] if len(receipts) > 1 else [])
        b3 = {**block, "timestamp": hex(int(block["timestamp"], 16) + 1)}
        with pytest.raises(VerificationError, match="do not hash to the block hash"):
            verify_block(b3, receipts)


def test_ordered_trie_root_equals_py_trie():
    """The one-pass ordered trie equals the reference implementation (py-trie) for 0..300 items of any size."""
    import rlp
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from trie import HexaryTrie

    from monmouth.roots import EMPTY_ROOT, ordered_trie_root

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.binary(min_size=1, max_size=120), max_size=300))
    def check(values):
        t = HexaryTrie({})
        for i, v in enumerate(values):
            t[rlp.encode(i)] = v
        assert ordered_trie_root(values) == (t.root_hash if values else EMPTY_ROOT)

    check()
