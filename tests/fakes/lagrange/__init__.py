"""Lagrange test registry: compile ``TestLPNRegistry.sol`` with the npm ``solc`` (``tests/js/node_modules``), deploy
it on anvil, and play the prover network's relayer (``respond``)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from eth_abi import encode

from monmouth.chain import selector

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
NODE_MODULES = ROOT / "tests" / "js" / "node_modules"

def available() -> str | None:
    """Why the registry cannot be compiled here, or ``None`` if it can."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not (NODE_MODULES / "solc").is_dir():
        return "npm solc is missing: run `npm install` in tests/js"
    return None


def compile_registry() -> dict[str, Any]:
    """``{"abi", "bytecode", "solc"}`` of TestLPNRegistry, compiled by the npm solc."""
    from monmouth_demo import compile_solidity

    return compile_solidity((HERE / "TestLPNRegistry.sol").read_text(), "TestLPNRegistry", NODE_MODULES, timeout=120)


def deploy(anvil: Any, bytecode: str, sender: int = 9) -> str:
    """Deploy ``bytecode`` from anvil dev account ``sender``; mines one block; returns the contract address."""
    tx = anvil.rpc("eth_sendTransaction", {"from": anvil.accounts[sender], "data": bytecode, "gas": hex(3_000_000)})
    anvil.mine()
    receipt = anvil.rpc("eth_getTransactionReceipt", tx)
    assert receipt and int(receipt["status"], 16) == 1, receipt
    return str(receipt["contractAddress"])


RESPOND = selector("respond(uint256,bytes32[],uint256)")


def respond(anvil: Any, registry: str, request_id: int, rows: list[bytes], block_number: int, sender: int = 9) -> str:
    """Send ``respond(requestId, rows, blockNumber)`` as the relayer (pending until mined); returns the tx hash."""
    data = RESPOND + encode(["uint256", "bytes32[]", "uint256"], [request_id, rows, block_number])
    return str(anvil.rpc("eth_sendTransaction", {"from": anvil.accounts[sender], "to": registry,
                                                 "data": "0x" + data.hex(), "gas": hex(500_000)}))
