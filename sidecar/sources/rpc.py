"""The ``rpc`` source: follows any Ethereum JSON-RPC node by polling.

Per poll: ``eth_blockNumber`` (the source head), the ``finalized`` block tag (for pruning undo data), then
full blocks (``eth_getBlockByNumber(n, true)``) and their receipts (``eth_getBlockReceipts``, falling back
to one ``eth_getTransactionReceipt`` per transaction on nodes without it), fetched in JSON-RPC batches.

Reorgs: when the next block's parent hash is not the engine's head hash (or, when caught up, the node's
block at the head's height has another hash), the source walks back height by height, comparing the node's
hashes with the engine's canonical hashes, to the common ancestor, and emits ``ChainReorged(old, new)`` with
the exact old and new segments (``ChainReverted(old)`` when the node's chain is now shorter). Orphaned
bodies cannot be fetched by number after a reorg, so the old segment carries header fields only (from the
engine's records); the engine reverts from its journal, not from the old bodies.

When the node is unreachable the source retries with exponential backoff (capped by ``max_backoff``
seconds), logging each failure and counting ``monmouth_source_reconnects_total{source="rpc"}``.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx

from ..errors import ChainError, CodecError
from ..jsonrpc import block_from_rpc, qty
from ..metrics import Metrics
from ..types import Block, BlockRef, Chain, ChainCommitted, ChainReorged, ChainReverted
from .base import ChainView, Delivery, Source

log = logging.getLogger(__name__)

METHOD_NOT_FOUND = -32601


class RpcError(Exception):
    """A JSON-RPC error object (``code``, ``message``) returned by the node."""

    def __init__(self, method: str, error: dict[str, Any]) -> None:
        super().__init__(f"{method}: JSON-RPC error {error.get('code')}: {error.get('message')}")
        self.code = error.get("code")


class TransientNodeError(Exception):
    """The node answered something unusable right now (inconsistent batch mid-reorg, missing block)."""


class JsonRpcClient:
    """A minimal async JSON-RPC 2.0 client over HTTP (httpx), with batching.

    Raises ``httpx.HTTPError`` on transport failures and :class:`RpcError` on error objects.
    """

    def __init__(self, url: str, timeout: float = 10.0, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = url
        self._client = httpx.AsyncClient(timeout=timeout, transport=transport)
        self._ids = itertools.count(1)

    async def call(self, method: str, *params: Any) -> Any:
        return (await self.batch([(method, list(params))]))[0]

    async def batch(self, calls: list[tuple[str, list[Any]]]) -> list[Any]:
        """Send calls as one batch; results in call order."""
        if not calls:
            return []
        ids = [next(self._ids) for _ in calls]
        payload = [{"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in zip(ids, calls, strict=True)]
        resp = await self._client.post(self.url, json=payload if len(payload) > 1 else payload[0])
        resp.raise_for_status()
        body = resp.json()
        items = body if isinstance(body, list) else [body]
        by_id = {item.get("id"): item for item in items if isinstance(item, dict)}
        out = []
        for i, (method, _) in zip(ids, calls, strict=True):
            item = by_id.get(i)
            if item is None:
                raise TransientNodeError(f"{method}: no response in the batch")
            if "error" in item and item["error"] is not None:
                raise RpcError(method, item["error"])
            out.append(item.get("result"))
        return out

    async def aclose(self) -> None:
        await self._client.aclose()


class RpcSource(Source):
    """Poll a JSON-RPC node for new blocks and reorgs.

    Args:
        url: HTTP JSON-RPC endpoint.
        confirmations: blocks to stay behind ``latest``.
        poll_interval: seconds between polls when caught up.
        batch_size: blocks per batch (and per ``ChainCommitted``) while catching up.
        start_block: first block on an empty database, or ``"latest"``.
        max_backoff: cap of the reconnect backoff, seconds.
        timeout: HTTP timeout, seconds.
        metrics: core metrics (reconnect counter, source head gauge), optional.
        transport: an httpx transport (default: real HTTP), e.g. to route through a proxy in tests.
    """

    kind = "rpc"

    def __init__(self, url: str, *, confirmations: int = 0, poll_interval: float = 1.0, batch_size: int = 16,
                 start_block: int | str = 0, max_backoff: float = 30.0, timeout: float = 10.0,
                 metrics: Metrics | None = None, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = url
        self.confirmations = confirmations
        self.poll_interval = poll_interval
        self.batch_size = batch_size
        self.start_block = start_block
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.metrics = metrics
        self.connected = False
        self.reconnects = 0
        self.last_error: str | None = None
        self.reorgs_detected = 0
        self._block_receipts: bool | None = None  # does the node support eth_getBlockReceipts?
        self.rpc = JsonRpcClient(url, timeout, transport)

    # ------------------------------------------------------------------------------------------------ fetching
    async def _receipts(self, blocks_raw: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        if self._block_receipts is not False:
            try:
                res = await self.rpc.batch([("eth_getBlockReceipts", [b["number"]]) for b in blocks_raw])
                if all(isinstance(r, list) for r in res):
                    self._block_receipts = True
                    return res
                raise TransientNodeError("eth_getBlockReceipts returned null")
            except RpcError as e:
                if e.code != METHOD_NOT_FOUND and self._block_receipts:
                    raise
                log.info("rpc: eth_getBlockReceipts unavailable (%s); using eth_getTransactionReceipt", e)
                self._block_receipts = False
        calls = [("eth_getTransactionReceipt", [t["hash"]]) for b in blocks_raw for t in b["transactions"]]
        flat = await self.rpc.batch(calls)
        out, k = [], 0
        for b in blocks_raw:
            n = len(b["transactions"])
            out.append(flat[k:k + n])
            k += n
        if any(r is None for rs in out for r in rs):
            raise TransientNodeError("a receipt is not available yet")
        return out

    async def fetch_blocks(self, first: int, last: int) -> list[Block]:
        """Full blocks ``first..last`` with receipts. Raises TransientNodeError if the node changed meanwhile."""
        raw = await self.rpc.batch([("eth_getBlockByNumber", [hex(n), True]) for n in range(first, last + 1)])
        if any(b is None for b in raw):
            raise TransientNodeError(f"blocks {first}..{last} not all available")
        receipts = await self._receipts(raw)
        try:
            return [block_from_rpc(b, r) for b, r in zip(raw, receipts, strict=True)]
        except CodecError as e:
            raise TransientNodeError(str(e)) from e

    async def block_hash(self, number: int) -> bytes | None:
        b = await self.rpc.call("eth_getBlockByNumber", hex(number), False)
        return bytes.fromhex(b["hash"][2:]) if b else None

    async def _poll_heads(self, check: int | None = None) -> tuple[int, bytes | None]:
        """One batch: latest block number, the finalized block, and (optionally) the node's hash at height
        ``check``. Returns ``(latest, hash_at_check)``."""
        calls: list[tuple[str, list[Any]]] = [("eth_blockNumber", []), ("eth_getBlockByNumber", ["finalized", False])]
        if check is not None:
            calls.append(("eth_getBlockByNumber", [hex(check), False]))
        res = await self.rpc.batch(calls)
        self.source_head = qty(res[0], "eth_blockNumber")
        fin = res[1]
        if isinstance(fin, dict) and fin.get("number"):
            self.finalized = qty(fin["number"], "finalized.number")
        if self.metrics is not None:
            self.metrics.source_head.set(self.source_head)
        checked = res[2] if check is not None else None
        return self.source_head, (bytes.fromhex(checked["hash"][2:]) if isinstance(checked, dict) else None)

    async def probe_head(self) -> int | None:
        """Poll the node's head (``eth_blockNumber``, finalized) out of band (see :meth:`Source.probe_head`)."""
        return (await self._poll_heads())[0]

    # ------------------------------------------------------------------------------------------------ stream
    async def stream(self, view: ChainView) -> AsyncIterator[Delivery]:  # type: ignore[override]
        backoff = min(0.5, self.max_backoff)
        while True:
            try:
                async for d in self._follow(view):
                    backoff = min(0.5, self.max_backoff)
                    yield d
            except (httpx.HTTPError, TransientNodeError, RpcError, ChainError, ValueError) as e:
                self.connected = False
                self.reconnects += 1
                self.last_error = f"{type(e).__name__}: {e}"
                if self.metrics is not None:
                    self.metrics.source_reconnects.labels("rpc").inc()
                log.warning("rpc: %s unavailable or inconsistent (%s); retrying in %.1fs", self.url, self.last_error,
                            backoff)
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)

    async def _follow(self, view: ChainView) -> AsyncIterator[Delivery]:
        while True:
            head = view.head()
            latest, node_hash = await self._poll_heads(head.number if head is not None else None)
            self.connected = True
            target = latest - self.confirmations
            if head is None:
                start = target if self.start_block == "latest" else int(self.start_block)
                if start > target:
                    await anyio.sleep(self.poll_interval)
                    continue
                blocks = await self.fetch_blocks(start, min(start + self.batch_size - 1, target))
                yield Delivery(ChainCommitted(Chain(tuple(blocks))), None, 0, time.monotonic())
                continue
            if node_hash != head.hash:
                # The node's block at our head's height changed (or vanished): a reorg.
                async for d in self._reorg(view, head, target):
                    yield d
                continue
            if head.number >= target:
                await anyio.sleep(self.poll_interval)
                continue
            last = min(head.number + self.batch_size, target)
            blocks = await self.fetch_blocks(head.number + 1, last)
            if blocks[0].parent_hash != head.hash:
                async for d in self._reorg(view, head, target):
                    yield d
                continue
            yield Delivery(ChainCommitted(Chain(tuple(blocks))), None, 0, time.monotonic())

    async def _reorg(self, view: ChainView, head: BlockRef, target: int) -> AsyncIterator[Delivery]:
        n = head.number
        while True:
            ours = view.canonical(n)
            if ours is None:
                raise TransientNodeError(
                    f"reorg below block {n + 1}: deeper than the engine's hash history; cannot find the common ancestor"
                )
            if await self.block_hash(n) == ours.hash:
                break
            n -= 1
        ancestor = n
        old_blocks = []
        for k in range(ancestor + 1, head.number + 1):
            stored = view.canonical(k)
            if stored is None:
                raise TransientNodeError(f"engine has no record of block {k}")
            old_blocks.append(stored)
        old = Chain(tuple(old_blocks))
        self.reorgs_detected += 1
        end = min(target, ancestor + max(self.batch_size, len(old_blocks)))
        log.info("rpc: reorg detected at block %d (depth %d, common ancestor %d)", head.number, len(old_blocks),
                 ancestor)
        if end <= ancestor:
            yield Delivery(ChainReverted(old), None, 0, time.monotonic())
            return
        new = await self.fetch_blocks(ancestor + 1, end)
        if new[0].parent_hash != old.fork_point.hash:
            raise TransientNodeError("node changed during reorg handling")
        yield Delivery(ChainReorged(old, Chain(tuple(new))), None, 0, time.monotonic())

    def status(self) -> dict[str, Any]:
        st = super().status()
        st.update(url=self.url, connected=self.connected, reconnects=self.reconnects, last_error=self.last_error,
                  reorgs_detected=self.reorgs_detected, block_receipts=self._block_receipts)
        return st

    async def aclose(self) -> None:
        await self.rpc.aclose()
