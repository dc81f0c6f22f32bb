"""The memory plugin's proofs verify on chain: OpenZeppelin ``MerkleProof.verify`` compiled with the npm ``solc``
(monmouth_demo.compile_solidity), deployed on anvil with a transaction signed by eth-account and sent over JSON-RPC."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_utils import to_checksum_address

from monmouth.chain import selector
from monmouth.types import ChainCommitted
from tests.chains import address, chain, extend
from tests.memory_helpers import close, make_memory_engine

pytestmark = pytest.mark.anvil

JS = Path(__file__).resolve().parent / "js"
#: anvil's first dev account (the well-known test mnemonic "test test ... junk").
DEV_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"


def compiled() -> dict:
    node = shutil.which("node")
    if node is None or not (JS / "node_modules" / "solc").is_dir():
        if os.environ.get("CI"):
            pytest.fail("tests/js/node_modules is missing: run `npm install` in tests/js")
        pytest.skip("needs node and tests/js/node_modules (solc, @openzeppelin/contracts)")
    from monmouth_demo import compile_solidity

    source = (JS / "contracts" / "MemoryRootVerifier.sol").read_text()
    return compile_solidity(source, "MemoryRootVerifier", JS / "node_modules", timeout=300)


class Chain:
    def __init__(self, anvil) -> None:
        self.anvil = anvil
        self.acct = Account.from_key(DEV_KEY)
        self.chain_id = int(anvil.rpc("eth_chainId"), 16)

    def send(self, to: str | None, data: bytes) -> dict:
        nonce = int(self.anvil.rpc("eth_getTransactionCount", self.acct.address, "pending"), 16)
        tx = {"chainId": self.chain_id, "nonce": nonce, "gas": 3_000_000, "maxFeePerGas": 10**10,
              "maxPriorityFeePerGas": 10**9, "value": 0, "data": data, "type": 2}
        if to is not None:
            tx["to"] = to_checksum_address(to)
        signed = self.acct.sign_transaction(tx)
        raw = getattr(signed, "raw_transaction", None) or signed.rawTransaction
        h = self.anvil.rpc("eth_sendRawTransaction", "0x" + raw.hex().removeprefix("0x"))
        self.anvil.mine()
        rc = self.anvil.rpc("eth_getTransactionReceipt", h)
        assert rc is not None and int(rc["status"], 16) == 1, rc
        return rc

    def call(self, to: str, data: bytes) -> bytes:
        out = self.anvil.rpc("eth_call", {"to": to, "data": "0x" + data.hex()}, "latest")
        return bytes.fromhex(out[2:])


def test_memory_proofs_verify_with_openzeppelin_merkleproof_on_anvil(tmp_path, anvil):
    art = compiled()
    agents = [address(1), address(2), address(3)]
    e, p = make_memory_engine(tmp_path / "db.sqlite", {"key_dir": str(tmp_path / "keys"),
                                                       "agents": ["0x" + a.hex() for a in agents]})
    try:
        mem = p.memory
        bs = extend(None, 3, number=1, n_txs=5)
        e.apply(ChainCommitted(chain(bs[:1])))
        for i in range(6):
            mem.store(agents[0], "semantic", f"on-chain verifiable fact {i}")
        e.apply(ChainCommitted(chain(bs[1:])))

        ch = Chain(anvil)
        rc = ch.send(None, bytes.fromhex(art["bytecode"][2:]))
        contract = rc["contractAddress"]
        agent = agents[0]
        root = mem.agent_root(agent, with_global_proof=True)
        ch.send(contract, selector("publish(address,bytes32)") + abi_encode(
            ["address", "bytes32"], ["0x" + agent.hex(), bytes.fromhex(root["root"][2:])]))
        onchain_root = ch.call(contract, selector("roots(address)") + abi_encode(["address"], ["0x" + agent.hex()]))
        assert "0x" + onchain_root.hex() == root["root"]

        leaves = mem.leaves(agent)["leaves"]
        assert len(leaves) > 6
        verify_sig = selector("verify(bytes32[],bytes32,bytes32)")
        item_sig = selector("verifyItem(address,bytes32[],bytes32,uint8,uint32,uint64,bytes32)")
        for x in leaves:
            pr = mem.proof(agent, bytes.fromhex(x["values"][0][2:]))
            proof = [bytes.fromhex(s[2:]) for s in pr["proof"]]
            ok = ch.call(contract, verify_sig + abi_encode(["bytes32[]", "bytes32", "bytes32"],
                                                           [proof, bytes.fromhex(pr["root"][2:]),
                                                            bytes.fromhex(pr["leaf"][2:])]))
            assert abi_decode(["bool"], ok) == (True,)
            v = pr["values"]
            args = ["0x" + agent.hex(), proof, bytes.fromhex(v[0][2:]), v[2], v[3], v[4], bytes.fromhex(v[5][2:])]
            types = ["address", "bytes32[]", "bytes32", "uint8", "uint32", "uint64", "bytes32"]
            assert abi_decode(["bool"], ch.call(contract, item_sig + abi_encode(types, args))) == (True,)
            # A changed value (another version) must not verify.
            args[4] = v[3] + 1
            assert abi_decode(["bool"], ch.call(contract, item_sig + abi_encode(types, args))) == (False,)
        # The agent's root is in the global root, on chain too.
        g = ch.call(contract, verify_sig + abi_encode(
            ["bytes32[]", "bytes32", "bytes32"],
            [[bytes.fromhex(s[2:]) for s in root["global_proof"]], bytes.fromhex(root["global_root"][2:]),
             bytes.fromhex(root["global_leaf"][2:])]))
        assert abi_decode(["bool"], g) == (True,)
    finally:
        close(e)
