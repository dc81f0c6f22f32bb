"""``monmouth demo``: the whole product on a real local chain, in one command.

1. starts anvil (npm ``@foundry-rs/anvil``);
2. deploys real contracts: three ERC-20 tokens compiled from OpenZeppelin's sources (npm ``@openzeppelin/contracts``)
   with npm ``solc``, and Uniswap V2 core (factory and pairs) from the npm ``@uniswap/v2-core`` build artifacts;
3. registers a few agent accounts (anvil's dev keys) with the memory plugin, signs one in with Ethereum (SIWE) and
   stores memories through the API;
4. runs a traffic generator: transfers, approvals, swaps, liquidity added and removed, with an occasional
   ``anvil_reorg``;
5. runs the sidecar on it (rpc source, RAG, memory, dashboard, MCP) and prints where to look and example queries.

Ctrl-C stops everything cleanly (traffic, sidecar, anvil). Files go to ``--dir`` (default ``./monmouth-demo``):
the config, the database, compiled artifacts and the ABI/labels the RAG plugin uses to name things.

A command built from the library, not part of it: the package ``monmouth_demo`` uses only ``monmouth``'s public
modules, and :mod:`.command` adds ``monmouth demo`` to the command line through the ``monmouth.commands`` entry
point (``docs/architecture.md``, "commands"). Tests and benchmarks use its Solidity build (:func:`compile_solidity`)
and anvil's dev keys (:func:`dev_key`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_utils import to_checksum_address

from monmouth.chain import calldata
from monmouth.errors import MonmouthError
from monmouth.rpcclient import SyncJsonRpcClient

log = logging.getLogger("monmouth.demo")

MNEMONIC = "test test test test test test test test test test test junk"  # anvil's dev accounts
CHAIN_ID = 31337
AGENT_LABELS = {1: "trader", 2: "liquidity-provider", 3: "watcher"}

TOKEN_SOL = """// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// A plain OpenZeppelin ERC-20 with a fixed supply minted to `holder` and configurable decimals.
contract DemoToken is ERC20 {
    uint8 private immutable _decimals;

    constructor(string memory name_, string memory symbol_, uint8 decimals_, uint256 supply, address holder)
        ERC20(name_, symbol_)
    {
        _decimals = decimals_;
        _mint(holder, supply);
    }

    function decimals() public view override returns (uint8) {
        return _decimals;
    }
}
"""

#: Compile one Solidity source (stdin; file name argv[1], contract argv[2]) with the npm solc in NODE_MODULES, whose
#: packages (@openzeppelin/contracts...) resolve its imports; prints {"abi", "bytecode", "solc"} as JSON.
COMPILE_JS = r"""
'use strict';
const fs = require('fs');
const path = require('path');
const nm = process.env.NODE_MODULES;
const solc = require(path.join(nm, 'solc'));
const [file, contract] = process.argv.slice(1);
const input = {
  language: 'Solidity',
  sources: { [file]: { content: fs.readFileSync(0, 'utf8') } },
  settings: { optimizer: { enabled: true, runs: 200 }, evmVersion: 'cancun',
              outputSelection: { '*': { '*': ['abi', 'evm.bytecode.object'] } } },
};
function findImports(p) {
  const f = path.join(nm, p);
  return fs.existsSync(f) ? { contents: fs.readFileSync(f, 'utf8') } : { error: 'not found: ' + p };
}
const out = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
const errors = (out.errors || []).filter((e) => e.severity === 'error');
if (errors.length) { process.stderr.write(errors.map((e) => e.formattedMessage).join('\n')); process.exit(1); }
const c = out.contracts[file][contract];
process.stdout.write(JSON.stringify({ abi: c.abi, bytecode: '0x' + c.evm.bytecode.object, solc: solc.version() }));
"""

TOKENS = [("Demo Dollar", "DUSD", 6, 10**9 * 10**6), ("Demo Wrapped Ether", "DWETH", 18, 10**6 * 10**18),
          ("Demo Governance", "DGOV", 18, 10**8 * 10**18)]


class DemoError(MonmouthError):
    """The demo cannot run (a missing tool, a failed deployment)."""


# ---------------------------------------------------------------------------------------------------------------------
# Tools


def node_modules() -> Path:
    """The repository's ``node_modules`` with anvil, solc, @openzeppelin/contracts and @uniswap/v2-core."""
    candidates = [Path.cwd(), *Path.cwd().parents, Path(__file__).resolve().parents[1]]
    for c in candidates:
        nm = c / "node_modules"
        if (nm / ".bin" / "anvil").exists():
            missing = [p for p in ("solc", "@openzeppelin/contracts", "@uniswap/v2-core") if not (nm / p).is_dir()]
            if missing:
                raise DemoError(f"{nm}: missing npm packages {', '.join(missing)}: run `npm install` at the "
                                "repository root")
            return nm
    raise DemoError("anvil not found (node_modules/.bin/anvil): run `npm install` at the repository root")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dev_key(i: int) -> str:
    from eth_account import Account

    Account.enable_unaudited_hdwallet_features()
    return "0x" + bytes(Account.from_mnemonic(MNEMONIC, account_path=f"m/44'/60'/0'/0/{i}").key).hex()


class Rpc(SyncJsonRpcClient):
    """The JSON-RPC client with anvil's transaction helpers (dev accounts are unlocked: eth_sendTransaction)."""

    def __init__(self, url: str) -> None:
        super().__init__(url, timeout=30)

    def send(self, frm: str, to: str | None, data: str = "0x", value: int = 0, gas: int = 3_000_000) -> str:
        tx: dict[str, Any] = {"from": frm, "data": data, "value": hex(value), "gas": hex(gas)}
        if to:
            tx["to"] = to
        return str(self("eth_sendTransaction", tx))

    def receipt(self, tx: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self("eth_getTransactionReceipt", tx)
            if r:
                if r.get("status") != "0x1":
                    raise DemoError(f"transaction {tx} reverted")
                return dict(r)
            time.sleep(0.05)
        raise DemoError(f"transaction {tx} not mined after {timeout}s")

    def view(self, to: str, sig: str, *args: Any, out: list[str]) -> Any:
        """``eth_call`` of ``sig`` on ``to`` at the latest block, decoded as the types ``out``."""
        raw = self("eth_call", {"to": to, "data": calldata(sig, *args)}, "latest")
        return abi_decode(out, bytes.fromhex(raw[2:]))


# ---------------------------------------------------------------------------------------------------------------------
# Deployment


@dataclass
class Deployment:
    deployer: str
    agents: dict[str, str]  # address -> label
    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)  # symbol -> {address, decimals}
    factory: str = ""
    pairs: dict[str, str] = field(default_factory=dict)  # "A/B" -> pair address


def compile_token(nm: Path, workdir: Path) -> dict[str, Any]:
    """Compile DemoToken.sol with npm solc (cached in ``workdir`` by source and compiler)."""
    src = workdir / "DemoToken.sol"
    src.write_text(TOKEN_SOL)
    solc_version = json.loads((nm / "solc" / "package.json").read_text())["version"]
    key = hashlib.sha256((TOKEN_SOL + solc_version).encode()).hexdigest()[:16]
    cached = workdir / f"DemoToken.{key}.json"
    if cached.exists():
        return dict(json.loads(cached.read_text()))
    log.info("compiling DemoToken.sol (OpenZeppelin ERC20) with npm solc %s", solc_version)
    art = compile_solidity(TOKEN_SOL, "DemoToken", nm)
    cached.write_text(json.dumps(art))
    return art


def compile_solidity(source: str, contract: str, nm: Path, *, timeout: float = 600) -> dict[str, Any]:
    """``{"abi", "bytecode", "solc"}`` of ``contract`` in the Solidity ``source``, compiled by the npm solc in
    ``nm`` (a ``node_modules`` directory, whose packages resolve the source's imports), optimized, EVM cancun.

    Raises:
        DemoError: node is not installed, or solc refused the source (its messages).
    """
    node = shutil.which("node")
    if node is None:
        raise DemoError("node not found: Solidity is compiled with the npm solc")
    r = subprocess.run([node, "-e", COMPILE_JS, f"{contract}.sol", contract], input=source, capture_output=True,
                       text=True, timeout=timeout, env={**os.environ, "NODE_MODULES": str(nm)}, check=False)
    if r.returncode != 0:
        raise DemoError(f"solc failed on {contract}: {r.stderr[-2000:]}")
    return dict(json.loads(r.stdout))


def deploy(rpc: Rpc, nm: Path, workdir: Path, n_agents: int = 3) -> Deployment:
    accounts = rpc("eth_accounts")
    dep = Deployment(deployer=accounts[0], agents={accounts[i].lower(): AGENT_LABELS.get(i, f"agent-{i}")
                                                   for i in range(1, n_agents + 1)})
    token = compile_token(nm, workdir)

    def create(bytecode: str, ctor_types: list[str], args: list[Any]) -> str:
        data = bytecode + abi_encode(ctor_types, args).hex()
        rc = rpc.receipt(rpc.send(dep.deployer, None, data, gas=8_000_000))
        return str(rc["contractAddress"])

    for name, symbol, decimals, supply in TOKENS:
        addr = create(token["bytecode"], ["string", "string", "uint8", "uint256", "address"],
                      [name, symbol, decimals, supply, dep.deployer])
        dep.tokens[symbol] = {"address": addr, "decimals": decimals, "name": name}
    uni = nm / "@uniswap" / "v2-core" / "build"
    factory = json.loads((uni / "UniswapV2Factory.json").read_text())
    dep.factory = create("0x" + factory["bytecode"].removeprefix("0x"), ["address"], [dep.deployer])
    for a, b in (("DWETH", "DUSD"), ("DGOV", "DWETH")):
        ta, tb = dep.tokens[a]["address"], dep.tokens[b]["address"]
        rpc.receipt(rpc.send(dep.deployer, dep.factory, calldata("createPair(address,address)", ta, tb)))
        (pair,) = rpc.view(dep.factory, "getPair(address,address)", ta, tb, out=["address"])
        dep.pairs[f"{a}/{b}"] = to_checksum_address(pair)
    # Fund the agents with tokens, and seed each pool with liquidity from the deployer.
    for agent in dep.agents:
        for sym, t in dep.tokens.items():
            amount = {"DUSD": 200_000, "DWETH": 100, "DGOV": 50_000}[sym] * 10 ** t["decimals"]
            rpc.receipt(rpc.send(dep.deployer, t["address"], calldata("transfer(address,uint256)", agent, amount)))
    seed = {"DWETH/DUSD": (500 * 10**18, 1_500_000 * 10**6), "DGOV/DWETH": (1_000_000 * 10**18, 200 * 10**18)}
    for name, (amt_a, amt_b) in seed.items():
        a, b = name.split("/")
        add_liquidity(rpc, dep, dep.deployer, name, {a: amt_a, b: amt_b}, wait=True)
    # Artifacts for the RAG plugin: names of tokens, pools, agents; the Uniswap ABIs.
    abi_dir = workdir / "abi"
    abi_dir.mkdir(exist_ok=True)
    for f in ("UniswapV2Factory.json", "UniswapV2Pair.json"):
        (abi_dir / f).write_text(json.dumps({"abi": json.loads((uni / f).read_text())["abi"]}))
    (abi_dir / "tokens.json").write_text(json.dumps(
        {t["address"].lower(): {"symbol": s, "decimals": t["decimals"], "label": t["name"]}
         for s, t in dep.tokens.items()}, indent=1))
    labels = {dep.factory.lower(): "Uniswap V2 Factory (demo)", dep.deployer.lower(): "demo deployer"}
    labels.update({p.lower(): f"Uniswap V2 {n} pool (demo)" for n, p in dep.pairs.items()})
    labels.update({a: f"agent {label}" for a, label in dep.agents.items()})
    (abi_dir / "labels.json").write_text(json.dumps(labels, indent=1))
    return dep


def add_liquidity(rpc: Rpc, dep: Deployment, who: str, pool: str, amounts: dict[str, int], wait: bool = False
                  ) -> list[str]:
    pair = dep.pairs[pool]
    txs = [rpc.send(who, dep.tokens[s]["address"], calldata("transfer(address,uint256)", pair, amt))
           for s, amt in amounts.items()]
    txs.append(rpc.send(who, pair, calldata("mint(address)", who)))
    if wait:
        for t in txs:
            rpc.receipt(t)
    return txs


# ---------------------------------------------------------------------------------------------------------------------
# Traffic


class Traffic:
    """Transfers, approvals, swaps and liquidity from the agent accounts, a few transactions a second, with an
    ``anvil_reorg`` of depth 1-3 every ``reorg_every`` blocks (0: never)."""

    def __init__(self, rpc: Rpc, dep: Deployment, *, reorg_every: int = 30, rate: float = 4.0, seed: int = 7) -> None:
        self.rpc = rpc
        self.dep = dep
        self.reorg_every = reorg_every
        self.rate = rate
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.counts: dict[str, int] = {}
        self.reorgs: list[int] = []
        self.errors = 0
        self._last_reorg_block = 0

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.step()
            except Exception as e:  # a reverted swap or a reorged nonce: keep going
                self.errors += 1
                log.debug("traffic: %s", e)
            self.stop.wait(1.0 / self.rate)

    def step(self) -> None:
        agents = list(self.dep.agents)
        who = self.rng.choice(agents)
        action = self.rng.choices(["transfer", "approve", "swap", "liquidity", "eth"], [4, 2, 4, 1, 1])[0]
        toks = self.dep.tokens
        if action == "transfer":
            sym = self.rng.choice(list(toks))
            to = self.rng.choice([a for a in agents if a != who])
            amt = self.rng.randint(1, 500) * 10 ** toks[sym]["decimals"] // 10
            self.rpc.send(who, toks[sym]["address"], calldata("transfer(address,uint256)", to, amt))
        elif action == "approve":
            sym = self.rng.choice(list(toks))
            spender = self.rng.choice(list(self.dep.pairs.values()))
            self.rpc.send(who, toks[sym]["address"], calldata("approve(address,uint256)", spender,
                                                              self.rng.randint(1, 10**6) * 10 ** toks[sym]["decimals"]))
        elif action == "swap":
            self.swap(who)
        elif action == "liquidity":
            pool = self.rng.choice(list(self.dep.pairs))
            a, b = pool.split("/")
            pair = self.dep.pairs[pool]
            r0, r1, _ = self.rpc.view(pair, "getReserves()", out=["uint112", "uint112", "uint32"])
            (t0,) = self.rpc.view(pair, "token0()", out=["address"])
            ra, rb = (r0, r1) if t0.lower() == toks[a]["address"].lower() else (r1, r0)
            amt_a = max(1, ra // 2000)
            add_liquidity(self.rpc, self.dep, who, pool, {a: amt_a, b: amt_a * rb // max(ra, 1) + 1})
        else:
            to = self.rng.choice([a for a in agents if a != who])
            self.rpc.send(who, to, value=self.rng.randint(1, 100) * 10**15)
        self.counts[action] = self.counts.get(action, 0) + 1
        head = int(self.rpc("eth_blockNumber"), 16)
        if self.reorg_every and head - self._last_reorg_block >= self.reorg_every and head > 10:
            depth = self.rng.randint(1, 3)
            self.rpc("anvil_reorg", depth, [])
            self.reorgs.append(depth)
            self._last_reorg_block = head
            log.info("traffic: anvil_reorg of depth %d at block %d", depth, head)

    def swap(self, who: str) -> None:
        pool = self.rng.choice(list(self.dep.pairs))
        pair = self.dep.pairs[pool]
        toks = self.dep.tokens
        a, b = pool.split("/")
        sym_in = a if self.rng.random() < 0.5 else b
        (t0,) = self.rpc.view(pair, "token0()", out=["address"])
        r0, r1, _ = self.rpc.view(pair, "getReserves()", out=["uint112", "uint112", "uint32"])
        in_is_0 = t0.lower() == toks[sym_in]["address"].lower()
        r_in, r_out = (r0, r1) if in_is_0 else (r1, r0)
        amount_in = max(1, r_in // self.rng.randint(500, 5000))
        amount_out = amount_in * 997 * r_out // (r_in * 1000 + amount_in * 997)
        if amount_out <= 0:
            return
        self.rpc.send(who, toks[sym_in]["address"], calldata("transfer(address,uint256)", pair, amount_in))
        outs = (0, amount_out) if in_is_0 else (amount_out, 0)
        self.rpc.send(who, pair, calldata("swap(uint256,uint256,address,bytes)", outs[0], outs[1], who, b""),
                      gas=300_000)


# ---------------------------------------------------------------------------------------------------------------------
# The demo


def write_config(workdir: Path, anvil_url: str, port: int, dep: Deployment) -> Path:
    cfg = workdir / "config.toml"
    agents = ", ".join(f'"{a}"' for a in dep.agents)
    cfg.write_text(f"""# Written by `monmouth demo` (documented keys: config.toml at the repository root).
[source]
kind = "rpc"
url = "{anvil_url}"
poll_interval = 0.25
start_block = 0

[storage]
path = "demo.sqlite"
synchronous = "NORMAL"

[http]
host = "127.0.0.1"
port = {port}

[auth]
chain_id = {CHAIN_ID}

[logging]
level = "WARNING"

[plugins.rag]
enabled = true
abi_dir = "abi"

[plugins.memory]
enabled = true
agents = [{agents}]
""")
    return cfg


async def _seed_agents(base: str, dep: Deployment) -> dict[str, Any]:
    """Label the agents (loopback operator), sign the first in with SIWE and store memories with its token."""
    from monmouth.siwe import sign_in_with_key

    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        for addr, label in dep.agents.items():
            r = await http.post("/memory/agents", json={"address": addr, "label": label})
            if r.status_code not in (200, 201, 409):
                log.warning("registering %s: %s", addr, r.text)
        agent = next(iter(dep.agents))
        n = (await http.get("/auth/nonce")).json()
        msg, sig = sign_in_with_key(dev_key(1), n["nonce"], domain=n["domain"], chain_id=n["chain_id"])
        r = await http.post("/auth/siwe", json={"message": msg, "signature": sig})
        r.raise_for_status()
        token = r.json()["token"]
        auth = {"authorization": f"Bearer {token}"}
        pool = dep.pairs["DWETH/DUSD"]
        for kind, content, tags in (
            ("semantic", f"The DWETH/DUSD Uniswap V2 pool is at {pool}; it charges a 0.3% fee.", ["uniswap", "pool"]),
            ("procedural", "To swap on a V2 pair: transfer the input token to the pair, then call swap() with the "
                           "output amount from the constant-product formula.", ["uniswap", "howto"]),
            ("episodic", "Rebalanced DUSD into DWETH when the price dipped below 2,900.", ["trade"]),
        ):
            r = await http.post(f"/memory/agents/{agent}/items", json={"kind": kind, "content": content, "tags": tags},
                                headers=auth)
            r.raise_for_status()
    return {"agent": agent, "token": token}


def banner(base: str, cfg: Path, dep: Deployment, seeded: dict[str, Any]) -> str:
    a = seeded["agent"]
    other = list(dep.agents)[1]
    return f"""
Monmouth demo is running on a local anvil chain (Ctrl-C stops everything).

  dashboard   {base}/dashboard
  status      curl -s {base}/status
  OpenAPI     {base}/openapi.json
  MCP (HTTP)  {base}/mcp        MCP (stdio)  monmouth mcp --config {cfg}

Contracts: tokens {", ".join(f"{s} {t['address']}" for s, t in dep.tokens.items())}
           Uniswap V2 factory {dep.factory}; pools {", ".join(f"{n} {p}" for n, p in dep.pairs.items())}
Agents:    {", ".join(f"{addr} ({label})" for addr, label in dep.agents.items())}

Try (from this machine, no token needed on loopback):
  curl -s -X POST {base}/rag/search -H 'content-type: application/json' \\
       -d '{{"query": "swap DWETH for DUSD on Uniswap", "k": 3}}'
  curl -s -X POST {base}/rag/context -H 'content-type: application/json' \\
       -d '{{"query": "DGOV transfers between agents", "max_tokens": 400}}'
  curl -s {base}/memory/agents/{a}/items

As agent {a} (signed in with Ethereum; token valid one hour):
  export AGENT_TOKEN={seeded['token']}
  curl -s -X POST {base}/memory/agents/{a}/recall -H "authorization: Bearer $AGENT_TOKEN" \\
       -H 'content-type: application/json' -d '{{"query": "how do I swap on a V2 pair?"}}'
  curl -s {base}/memory/agents/{other}/items -H "authorization: Bearer $AGENT_TOKEN"   # 403: not its memory
""".rstrip() + "\n"


def run_demo(workdir: Path, port: int = 8080, duration: float | None = None, reorg_every: int = 30,
             rate: float = 4.0, out: Any = None) -> dict[str, Any]:
    """Run the demo until SIGINT/SIGTERM (or ``duration`` seconds), then stop traffic, the sidecar and anvil
    (gracefully, see :mod:`sidecar.shutdown`; call it on the main thread). Returns a summary."""
    from monmouth.shutdown import Stopped, graceful

    out = out or sys.stdout
    summary: dict[str, Any] = {}
    with graceful() as stopper, contextlib.suppress(Stopped):
        _run_demo(stopper, summary, workdir, port, duration, reorg_every, rate, out)
    return summary


def _run_demo(stopper: Any, summary: dict[str, Any], workdir: Path, port: int, duration: float | None,
              reorg_every: int, rate: float, out: Any) -> None:
    import anyio

    from monmouth.app import make_source, open_app
    from monmouth.runner import Runner

    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in workdir.glob("demo.sqlite*"):
        stale.unlink()
    shutil.rmtree(workdir / "memory-keys", ignore_errors=True)
    nm = node_modules()
    anvil_port = free_port()
    anvil_url = f"http://127.0.0.1:{anvil_port}"
    print(f"starting anvil on {anvil_url}", file=out, flush=True)
    anvil = subprocess.Popen([str(nm / ".bin" / "anvil"), "--port", str(anvil_port), "--host", "127.0.0.1",
                              "--accounts", "10", "--chain-id", str(CHAIN_ID)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    stopper.adopt(anvil)
    rpc = Rpc(anvil_url)
    app = None
    traffic: Traffic | None = None
    try:
        try:
            rpc.wait_answering(30, exited=anvil.poll, interval=0.1)
        except (TimeoutError, ChildProcessError):
            raise DemoError(f"anvil did not start on {anvil_url}") from None
        print("deploying OpenZeppelin ERC-20 tokens (npm solc) and Uniswap V2 core (npm artifacts)...", file=out,
              flush=True)
        dep = deploy(rpc, nm, workdir)
        rpc("evm_setIntervalMining", 1)  # from here on, a block a second
        cfg = write_config(workdir, anvil_url, port, dep)
        app = open_app(cfg)
        stopper.timeout = app.settings.engine.shutdown_timeout
        logging.getLogger("monmouth").setLevel(logging.WARNING)
        source = make_source(app.settings, app.metrics)
        runner = Runner(app, source, serve_http=True, watch_config=False)
        traffic = Traffic(Rpc(anvil_url), dep, reorg_every=reorg_every, rate=rate)

        def stop() -> None:
            assert traffic is not None
            traffic.stop.set()
            runner.request_stop()

        async def main() -> None:
            assert traffic is not None
            async with anyio.create_task_group() as tg:
                await tg.start(stopper.watch)
                stopper.on_stop(stop)

                async def sidecar() -> None:
                    try:
                        await runner.run()
                    finally:
                        await source.aclose()
                        tg.cancel_scope.cancel()  # the sidecar stopped (or failed): so does the rest

                tg.start_soon(sidecar)
                with anyio.fail_after(60):
                    while runner.http_port is None:
                        await anyio.sleep(0.05)
                base = f"http://127.0.0.1:{runner.http_port}"
                seeded = await _seed_agents(base, dep)
                summary.update(base=base, config=str(cfg), **seeded)
                tg.start_soon(lambda: anyio.to_thread.run_sync(traffic.run, abandon_on_cancel=True))
                print(banner(base, cfg, dep, seeded), file=out, flush=True)
                if duration is not None:
                    await anyio.sleep(duration)
                    stop()
                await anyio.sleep_forever()  # until the sidecar's task ends the group

        anyio.run(main)
        st = app.status()
        summary.update(head=st["head"]["number"] if st["head"] else None, reorgs=st["reorgs"],
                       notifications=st["notifications"], traffic=dict(traffic.counts),
                       anvil_reorgs=list(traffic.reorgs))
    finally:
        if traffic is not None:
            traffic.stop.set()
        rpc.close()
        anvil.terminate()  # first: a signal arriving during this clean-up must not leave anvil behind
        try:
            anvil.wait(10)
        except subprocess.TimeoutExpired:
            anvil.kill()
            anvil.wait(5)
        if app is not None:
            app.close()
        print("demo stopped: anvil and the sidecar are down"
              + (f" (head {summary.get('head')}, {summary.get('reorgs')} reorgs handled)" if summary else ""),
              file=out, flush=True)
