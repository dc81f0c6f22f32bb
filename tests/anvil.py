"""A real Ethereum node for tests: anvil, from the npm package ``@foundry-rs/anvil`` (``npm ci`` at the repo root)."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

from monmouth.rpcclient import SyncJsonRpcClient

ROOT = Path(__file__).resolve().parents[1]


def anvil_binary() -> str | None:
    local = ROOT / "node_modules" / ".bin" / "anvil"
    if local.exists():
        return str(local)
    return shutil.which("anvil")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Anvil:
    """An anvil process on a free loopback port, with JSON-RPC helpers. Blocks are mined on demand."""

    def __init__(self, port: int | None = None, *, slots_in_an_epoch: int = 32) -> None:
        binary = anvil_binary()
        if binary is None:
            raise RuntimeError("anvil not found: run `npm ci` at the repository root (package @foundry-rs/anvil)")
        self.binary = binary
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.slots_in_an_epoch = slots_in_an_epoch
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = SyncJsonRpcClient(self.url, timeout=10)
        self.start()
        self.accounts: list[str] = self.rpc("eth_accounts")

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--host", "127.0.0.1", "--accounts", "10",
             "--slots-in-an-epoch", str(self.slots_in_an_epoch), "--no-mining"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            self.client.wait_answering(20, exited=self.proc.poll)
        except (TimeoutError, ChildProcessError) as e:
            raise RuntimeError(f"anvil did not start on port {self.port}: {e}") from None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def rpc(self, method: str, *params: Any) -> Any:
        """``method``'s result; raises :class:`monmouth.rpcclient.RpcError` on an error answer."""
        return self.client.call(method, *params)

    # ------------------------------------------------------------------ chain helpers
    def send(self, sender: int, to: int, wei: int) -> str:
        """A real value transfer from dev account ``sender`` to ``to`` (pending until mined)."""
        return self.rpc("eth_sendTransaction", {"from": self.accounts[sender], "to": self.accounts[to],
                                                "value": hex(wei)})

    def mine(self, blocks: int = 1) -> None:
        self.rpc("anvil_mine", hex(blocks))

    def traffic(self, blocks: int, txs_per_block: int = 3, seed: int = 0) -> None:
        """Mine ``blocks`` blocks, each with ``txs_per_block`` transfers between several accounts."""
        for b in range(blocks):
            for t in range(txs_per_block):
                i = (seed + b * 7 + t * 3) % 10
                self.send(i, (i + 1 + t) % 10, 10**15 * (1 + b + t))
            self.mine()

    def reorg(self, depth: int, txs: int = 2, seed: int = 0) -> None:
        """``anvil_reorg``: replace the last ``depth`` blocks with new ones carrying ``txs`` new transfers."""
        tx_list = []
        for t in range(txs):
            i = (seed + t) % 10
            tx_list.append([{"from": self.accounts[i], "to": self.accounts[(i + 3) % 10],
                             "value": hex(7 * 10**14 * (t + 1) + seed)}, t % max(depth, 1)])
        self.rpc("anvil_reorg", depth, tx_list)

    def head(self) -> tuple[int, str]:
        b = self.rpc("eth_getBlockByNumber", "latest", False)
        return int(b["number"], 16), b["hash"]

    def block_hashes(self) -> list[tuple[int, bytes]]:
        n, _ = self.head()
        out = []
        for i in range(n + 1):
            b = self.rpc("eth_getBlockByNumber", hex(i), False)
            out.append((i, bytes.fromhex(b["hash"][2:])))
        return out

    def __enter__(self) -> Anvil:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.client.close()
