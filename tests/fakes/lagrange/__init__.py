"""Lagrange test registry: compile ``TestLPNRegistry.sol`` with the npm ``solc`` (``tests/js/node_modules``), deploy
it on anvil, and play the prover network's relayer (``respond``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from eth_abi import encode

from monmouth.chain import selector

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
NODE_MODULES = ROOT / "tests" / "js" / "node_modules"

_COMPILE = r"""
const fs = require('fs');
const solc = require('solc');
const src = fs.readFileSync(process.argv[1], 'utf8');
const input = {language: 'Solidity', sources: {'TestLPNRegistry.sol': {content: src}},
  settings: {optimizer: {enabled: true, runs: 200}, evmVersion: 'cancun',
             outputSelection: {'*': {'*': ['abi', 'evm.bytecode.object']}}}};
const out = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (out.errors || []).filter((e) => e.severity === 'error');
if (errors.length) { process.stderr.write(errors.map((e) => e.formattedMessage).join('\n')); process.exit(1); }
const c = out.contracts['TestLPNRegistry.sol'].TestLPNRegistry;
process.stdout.write(JSON.stringify({abi: c.abi, bytecode: '0x' + c.evm.bytecode.object, solc: solc.version()}));
"""


def available() -> str | None:
    """Why the registry cannot be compiled here, or ``None`` if it can."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not (NODE_MODULES / "solc").is_dir():
        return "npm solc is missing: run `npm install` in tests/js"
    return None


def compile_registry() -> dict[str, Any]:
    """``{"abi", "bytecode", "solc"}`` of TestLPNRegistry, compiled by the npm solc."""
    out = subprocess.run(["node", "-e", _COMPILE, str(HERE / "TestLPNRegistry.sol")], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "NODE_PATH": str(NODE_MODULES)}, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"solc failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout)


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
