"""A real Reth for tests: ``monmouth-reth`` (Reth v2.5.1 with the Monmouth ExEx, built from ``bridge/reth-exex``).

Two ways to run it:

* ``dev=True``: ``--dev`` with Reth's own miner (``--dev.block-time``), the way a developer tries the ExEx;
* ``dev=False``: ``--chain dev`` with no miner, driven by :class:`Consensus` through the Engine API (JWT-authenticated,
  as a consensus client drives it), so that a test decides which branch is canonical: real reorgs.

Transactions are signed here (``eth-account``) with the dev chain's prefunded accounts (the ``test … junk`` mnemonic),
so no node-side signer is needed. The binary is found at ``$MONMOUTH_RETH_BIN`` or in the cargo target directory
``.ci/run`` builds it in (``$MONMOUTH_RETH_TARGET``, default ``~/.cache/monmouth/reth-target``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import jwt
from eth_account import Account
from eth_utils import to_checksum_address

from monmouth.chain import calldata
from monmouth.rpcclient import SyncJsonRpcClient
from monmouth_demo import dev_key
from tests.anvil import free_port

CHAIN_ID = 1337  # Reth's dev chain (crates/chainspec/res/genesis/dev.json)
GWEI = 10**9


def reth_binary() -> Path | None:
    """The ``monmouth-reth`` binary, if it was built."""
    explicit = os.environ.get("MONMOUTH_RETH_BIN")
    if explicit:
        return Path(explicit) if Path(explicit).exists() else None
    target = Path(os.environ.get("MONMOUTH_RETH_TARGET", Path.home() / ".cache" / "monmouth" / "reth-target"))
    for profile in ("release", "debug"):
        p = target / profile / "monmouth-reth"
        if p.exists():
            return p
    return None


class RpcError(RuntimeError):
    """The node refused what the harness asked (a forkchoice update, a payload); a JSON-RPC error answer is
    :class:`monmouth.rpcclient.RpcError`."""


class Reth:
    """A ``monmouth-reth`` node on free loopback ports, with its datadir, JSON-RPC and ExEx bridge endpoint.

    Args:
        datadir: Reth's data directory (kept across :meth:`stop`/:meth:`start`: a restart resumes from it).
        dev: run Reth's ``--dev`` miner (``block_time`` apart); else no miner (drive it with :class:`Consensus`).
        block_time: ``--dev.block-time``, e.g. ``"1s"`` or ``"200ms"``.
        finality_depth: ``--dev.finality-depth`` (blocks behind the head the dev miner calls finalized).
        extra: more ``reth node`` flags.
    """

    def __init__(self, datadir: Path, *, dev: bool = True, block_time: str = "1s", finality_depth: int = 64,
                 max_txs: int | None = None, extra: tuple[str, ...] = ()) -> None:
        binary = reth_binary()
        if binary is None:
            raise RuntimeError("monmouth-reth not built: see bridge/README.md (or run .ci/run)")
        self.binary = binary
        self.datadir = datadir
        self.dev = dev
        self.block_time = block_time
        self.finality_depth = finality_depth
        self.max_txs = max_txs
        self.extra = extra
        self.http_port, self.auth_port, self.p2p_port, self.bridge_port = (free_port() for _ in range(4))
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.bridge = f"tcp://127.0.0.1:{self.bridge_port}"
        self.log_path = datadir.parent / f"{datadir.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = SyncJsonRpcClient(self.url, timeout=30)

    # ------------------------------------------------------------------------------------------------ process
    def command(self) -> list[str]:
        cmd = [str(self.binary), "node", "--datadir", str(self.datadir), "--chain", "dev",
               "--http", "--http.addr", "127.0.0.1", "--http.port", str(self.http_port),
               "--http.api", "eth,net,web3,debug,txpool",
               "--authrpc.addr", "127.0.0.1", "--authrpc.port", str(self.auth_port),
               "--port", str(self.p2p_port), "--discovery.port", str(self.p2p_port), "--disable-discovery",
               "--ipcdisable", "--monmouth.endpoint", self.bridge, "--log.file.max-files", "0", "--color", "never"]
        if self.dev:
            cmd += ["--dev", "--dev.finality-depth", str(self.finality_depth)]
            if self.block_time:
                cmd += ["--dev.block-time", self.block_time]
            if self.max_txs:
                cmd += ["--dev.block-max-transactions", str(self.max_txs)]
        return cmd + list(self.extra)

    def start(self, timeout: float = 60) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        try:
            self.client.wait_answering(timeout, exited=self.proc.poll, interval=0.1)
        except ChildProcessError:
            raise RuntimeError(f"monmouth-reth exited with {self.proc.returncode}: {self.log_tail()}") from None
        except TimeoutError:
            raise RuntimeError(f"monmouth-reth did not answer on {self.url}: {self.log_tail()}") from None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int | None:
        """Stop Reth with ``sig`` (SIGKILL for ``kill -9``); its exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        code = self.proc.returncode
        self.proc = None
        return code

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def wal_notifications(self) -> int:
        """Notifications held in Reth's ExEx WAL (one file each)."""
        wal = self.datadir / "exex" / "wal"
        return sum(1 for _ in wal.glob("*.wal")) if wal.exists() else 0

    def wal_bytes(self) -> int:
        """Size of Reth's ExEx WAL on disk (bytes)."""
        wal = self.datadir / "exex" / "wal"
        return sum(p.stat().st_size for p in wal.rglob("*") if p.is_file()) if wal.exists() else 0

    def close(self) -> None:
        self.stop()
        self.client.close()

    def __enter__(self) -> Reth:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------ JSON-RPC
    def rpc(self, method: str, *params: Any) -> Any:
        return self.client.call(method, *params)

    def head(self) -> int:
        return int(self.rpc("eth_blockNumber"), 16)

    def block(self, number: int | str, full: bool = True) -> dict[str, Any]:
        tag = hex(number) if isinstance(number, int) else number
        return dict(self.rpc("eth_getBlockByNumber", tag, full))

    def wait_head(self, number: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.head() < number:
            if time.monotonic() > deadline:
                raise TimeoutError(f"Reth stayed at block {self.head()} (< {number}): {self.log_tail(1500)}")
            time.sleep(0.2)

    def receipt(self, tx_hash: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.rpc("eth_getTransactionReceipt", tx_hash)
            if r:
                return dict(r)
            time.sleep(0.1)
        raise TimeoutError(f"transaction {tx_hash} not mined after {timeout}s")


class Wallet:
    """The dev chain's prefunded accounts, signing EIP-1559 transactions locally (nonces tracked here)."""

    def __init__(self, node: Reth, accounts: int = 10, first: int = 0) -> None:
        self.node = node
        self.keys = [dev_key(first + i) for i in range(accounts)]
        self.addresses = [Account.from_key(k).address for k in self.keys]
        self.nonces = [int(node.rpc("eth_getTransactionCount", a, "pending"), 16) for a in self.addresses]

    def send(self, i: int, to: str | None, value: int = 0, data: str = "0x", gas: int = 100_000) -> str:
        tx: dict[str, Any] = {"chainId": CHAIN_ID, "nonce": self.nonces[i], "gas": gas, "value": value,
                              "maxFeePerGas": 50 * GWEI, "maxPriorityFeePerGas": GWEI, "data": data, "type": 2}
        if to is not None:
            tx["to"] = to_checksum_address(to)
        signed = Account.sign_transaction(tx, self.keys[i])
        tx_hash = self.node.rpc("eth_sendRawTransaction", "0x" + bytes(signed.raw_transaction).hex())
        self.nonces[i] += 1
        return str(tx_hash)

    def transfer(self, i: int, j: int, wei: int) -> str:
        return self.send(i, self.addresses[j], wei, gas=21_000)

    def deploy(self, i: int, bytecode: str, gas: int = 3_000_000) -> str:
        return self.send(i, None, 0, bytecode, gas)

    def call(self, i: int, to: str, sig: str, *args: Any, gas: int = 200_000) -> str:
        return self.send(i, to, 0, calldata(sig, *args), gas)


class Consensus:
    """Drives a ``dev=False`` :class:`Reth` as its consensus client would, through the Engine API (Osaka, as Reth's dev
    chain has every fork at genesis): ``engine_forkchoiceUpdatedV3`` with payload attributes starts a build on any
    block, ``engine_getPayloadV5`` takes it, ``engine_newPayloadV4`` imports it, and a final ``forkchoiceUpdated``
    makes a block the head. Authenticated with the JWT secret Reth writes to ``<datadir>/jwt.hex`` (EIP-3675 era
    engine API authentication: HS256, ``iat`` claim)."""

    ZERO = "0x" + "00" * 32

    def __init__(self, node: Reth) -> None:
        self.node = node
        self.url = f"http://127.0.0.1:{node.auth_port}"
        self.secret = bytes.fromhex((node.datadir / "jwt.hex").read_text().strip().removeprefix("0x"))
        self.client = SyncJsonRpcClient(self.url, timeout=30)
        self.counter = 0

    def call(self, method: str, *params: Any) -> Any:
        token = jwt.encode({"iat": int(time.time())}, self.secret, algorithm="HS256")
        return self.client.call(method, *params, headers={"Authorization": f"Bearer {token}"})

    def fcu(self, head: str, attrs: dict[str, Any] | None = None) -> dict[str, Any]:
        state = {"headBlockHash": head, "safeBlockHash": self.ZERO, "finalizedBlockHash": self.ZERO}
        out = self.call("engine_forkchoiceUpdatedV3", state, attrs)
        status = out["payloadStatus"]["status"]
        if status != "VALID":
            raise RpcError(f"forkchoiceUpdated to {head}: {out['payloadStatus']}")
        return dict(out)

    def build_on(self, parent: str, wait: float = 0.3) -> dict[str, Any]:
        """Build a block on ``parent`` with what the transaction pool holds, import it (not yet canonical)."""
        p = self.node.rpc("eth_getBlockByHash", parent, False)
        self.counter += 1
        attrs = {"timestamp": hex(int(p["timestamp"], 16) + 1), "prevRandao": "0x" + f"{self.counter:064x}",
                 "suggestedFeeRecipient": "0x" + f"{self.counter:040x}", "withdrawals": [],
                 "parentBeaconBlockRoot": self.ZERO}
        payload_id = self.fcu(parent, attrs)["payloadId"]
        if payload_id is None:
            raise RpcError(f"no payload build started on {parent}")
        time.sleep(wait)  # the builder keeps improving the payload: let it pick up the pool
        env = self.call("engine_getPayloadV5", payload_id)
        payload = env["executionPayload"]
        status = self.call("engine_newPayloadV4", payload, [], self.ZERO, env.get("executionRequests") or [])
        if status["status"] != "VALID":
            raise RpcError(f"newPayload {payload['blockHash']}: {status}")
        return dict(payload)

    def extend(self, parent: str, n: int, before_each: Any = None) -> list[str]:
        """Build and make canonical ``n`` blocks on ``parent``; ``before_each(i)`` may send transactions first."""
        hashes = []
        for i in range(n):
            if before_each is not None:
                before_each(i)
            block = self.build_on(parent)
            self.fcu(block["blockHash"])
            parent = block["blockHash"]
            hashes.append(parent)
        return hashes

    def close(self) -> None:
        self.client.close()


def terminate(proc: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    """Stop a child process and reap it."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
