"""The memory lattice hash against outside implementations: eth-abi for the leaf encoding, and the npm package
``@openzeppelin/merkle-tree`` (run with node) for roots, leaf hashes, proofs and verification."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from eth_abi import encode as abi_encode
from hypothesis import given, settings
from hypothesis import strategies as st

from monmouth.types import ChainCommitted
from monmouth_memory import merkle
from tests.chains import address, chain, extend
from tests.memory_helpers import close, make_memory_engine

JS = Path(__file__).resolve().parent / "js"


def oz(req: dict) -> dict:
    """Run tests/js/oz_merkle.js with node on ``req``."""
    node = shutil.which("node")
    if node is None or not (JS / "node_modules" / "@openzeppelin" / "merkle-tree").is_dir():
        pytest.skip("needs node and `npm ci --prefix tests/js` (@openzeppelin/merkle-tree)")
    out = subprocess.run([node, str(JS / "oz_merkle.js")], input=json.dumps(req).encode(), capture_output=True,
                         check=True, timeout=120)
    return json.loads(out.stdout)


b32 = st.binary(min_size=32, max_size=32)
addr = st.binary(min_size=20, max_size=20)


@settings(max_examples=200, deadline=None)
@given(i=b32, a=addr, kind=st.integers(0, 255), version=st.integers(0, 2**32 - 1), block=st.integers(0, 2**64 - 1),
       c=b32)
def test_hand_encoding_equals_eth_abi(i, a, kind, version, block, c):
    values = [i, "0x" + a.hex(), kind, version, block, c]
    assert merkle.item_leaf_encoded(i, a, kind, version, block, c) == abi_encode(list(merkle.ITEM_LEAF_TYPES), values)
    assert merkle.item_leaf(i, a, kind, version, block, c) == merkle.standard_leaf_hash(merkle.ITEM_LEAF_TYPES, values)
    assert merkle.agent_leaf(a, c) == merkle.standard_leaf_hash(merkle.AGENT_LEAF_TYPES, ["0x" + a.hex(), c])


@settings(max_examples=200, deadline=None)
@given(salt=b32, ctype=st.integers(0, 1), content=st.binary(max_size=200), key=st.text(max_size=40),
       tags=st.lists(st.text(min_size=1, max_size=70), max_size=5), meta=st.text(max_size=100),
       ttl_s=st.integers(0, 2**64 - 1), ttl_b=st.integers(0, 2**64 - 1))
def test_hand_commitment_encoding_equals_eth_abi(salt, ctype, content, key, tags, meta, ttl_s, ttl_b):
    values = [salt, ctype, content, key, tags, meta, ttl_s, ttl_b]
    assert merkle.commitment_encoded(*values) == abi_encode(list(merkle.COMMITMENT_TYPES), values)


def _random_values(rng: random.Random, n: int) -> list[list]:
    return [["0x" + rng.randbytes(32).hex(), "0x" + rng.randbytes(20).hex(), rng.randrange(4), rng.randrange(1, 9),
             rng.randrange(1, 10**7), "0x" + rng.randbytes(32).hex()] for _ in range(n)]


def _leaf(v: list) -> bytes:
    return merkle.item_leaf(bytes.fromhex(v[0][2:]), bytes.fromhex(v[1][2:]), v[2], v[3], v[4], bytes.fromhex(v[5][2:]))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 9, 16, 33, 100])
def test_same_leaves_same_root_and_proofs_as_npm_package(n):
    rng = random.Random(n)
    values = _random_values(rng, n)
    res = oz({"types": list(merkle.ITEM_LEAF_TYPES), "values": values})
    leaves = [_leaf(v) for v in values]
    assert ["0x" + x.hex() for x in leaves] == res["leaves"]
    tree = merkle.Tree.of(leaves)
    assert "0x" + tree.root.hex() == res["root"]
    for leaf, proof in zip(leaves, res["proofs"], strict=True):
        assert ["0x" + p.hex() for p in tree.proof(leaf)] == proof
    # Our proofs verify in the npm package; a tampered one does not.
    checks = [{"root": res["root"], "leaf_values": v, "proof": ["0x" + p.hex() for p in tree.proof(_leaf(v))]}
              for v in values[:5]]
    bad = dict(checks[0], leaf_values=[*values[0][:3], values[0][3] + 1, *values[0][4:]])
    got = oz({"types": list(merkle.ITEM_LEAF_TYPES), "values": [], "check": [*checks, bad]})["checks"]
    assert got == [True] * len(checks) + [False]
    # The dump() format loads and validates there.
    dump = merkle.dump(merkle.ITEM_LEAF_TYPES, values, tree, leaves)
    d = oz({"types": list(merkle.ITEM_LEAF_TYPES), "values": [], "dump": dump})
    assert d["dump_ok"] and d["dump_root"] == res["root"], d


def test_plugin_roots_and_proofs_verify_in_npm_package(tmp_path):
    agents = [address(i) for i in range(4)]
    e, p = make_memory_engine(tmp_path / "db.sqlite", {"key_dir": str(tmp_path / "keys"),
                                                       "agents": ["0x" + a.hex() for a in agents]})
    try:
        mem = p.memory
        bs = extend(None, 3, number=1, n_txs=6)
        e.apply(ChainCommitted(chain(bs[:1])))
        for i in range(5):
            mem.store(agents[0], "semantic", f"fact {i}", tags=["t"])
        e.apply(ChainCommitted(chain(bs[1:])))
        for a in agents:
            leaves = mem.leaves(a)
            if not leaves["leaves"]:
                continue
            values = [x["values"] for x in leaves["leaves"]]
            res = oz({"types": list(merkle.ITEM_LEAF_TYPES), "values": values})
            assert res["root"] == leaves["root"] == mem.agent_root(a)["root"]
            checks = []
            for v in values:
                pr = mem.proof(a, bytes.fromhex(v[0][2:]))
                checks.append({"root": pr["root"], "leaf_values": pr["values"], "proof": pr["proof"]})
            assert all(oz({"types": list(merkle.ITEM_LEAF_TYPES), "values": [], "check": checks})["checks"])
        # The global root: the npm package over (agent, root) of every agent holding items.
        pairs = [["0x" + a.hex(), mem.agent_root(a)["root"]] for a in agents if mem.agent_root(a)["count"]]
        res = oz({"types": list(merkle.AGENT_LEAF_TYPES), "values": pairs})
        assert res["root"] == mem.global_root()["root"]
        r = mem.agent_root(agents[0], with_global_proof=True)
        ok = oz({"types": list(merkle.AGENT_LEAF_TYPES), "values": [],
                 "check": [{"root": r["global_root"], "leaf_values": ["0x" + agents[0].hex(), r["root"]],
                            "proof": r["global_proof"]}]})
        assert ok["checks"] == [True]
    finally:
        close(e)


def test_single_leaf_and_empty():
    leaf = os.urandom(32)
    t = merkle.Tree.of([leaf])
    assert t.root == leaf and t.proof(leaf) == []
    assert merkle.root_of([]) == merkle.EMPTY_ROOT
    with pytest.raises(ValueError):
        merkle.build([])
