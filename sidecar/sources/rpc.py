"""The ``rpc`` source: follows any Ethereum JSON-RPC node by polling.

Per poll: ``eth_blockNumber`` (the source head), the ``finalized`` block tag (for pruning undo data), then
full blocks (``eth_getBlockByNumber(n, true)``) and their receipts (``eth_getBlockReceipts``, falling back
to one ``eth_getTransactionReceipt`` per transaction on nodes without it), fetched in JSON-RPC batches.

Reorgs: when the next block's parent hash is not the engine's head hash (or, when caught up, the node's
block at the head's height has another hash), the source walks back height by height, comparing the node's
hashes with the engine's canonical hashes, to the common ancestor, and emits ``ChainReorged(old, new)`` with
the exact old and new segments (``ChainReverted(old)`` when the node's new chain is not long enough yet).
A node whose whole chain is a prefix of the engine's is behind (lagging, resyncing), not reorged: the source
waits for it instead of reverting. Orphaned bodies cannot be fetched by number after a reorg, so the old
segment carries header fields only (from the engine's records); the engine reverts from its journal, not from
the old bodies.

Bad answers: every answer is checked (JSON-RPC shapes, and each block against its header's hash,
``transactionsRoot`` and ``receiptsRoot``) before anything is built from it; a malformed or unverifiable answer
is logged naming the node and the block, counted, and retried. When the node is unreachable or answers badly
the source retries with exponential backoff (tenacity, capped by ``max_backoff`` seconds), logging each failure
and counting ``monmouth_source_reconnects_total{source="rpc"}``; it never gives up. See ``docs/faults.md``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    retry_if_not_exception_type,
    wait_exponential,
)

from ..errors import ChainError, CodecError, ReorgTooDeepError
from ..jsonrpc import block_from_rpc, check_block, check_header, check_receipts, qty
from ..metrics import Metrics
from ..roots import verify_block
from ..rpcclient import BadAnswerError, JsonRpcClient, RpcError, TransientNodeError
from ..types import Block, BlockRef, Chain, ChainCommitted, ChainReorged, ChainReverted
from .base import ChainView, Delivery, Source

log = logging.getLogger(__name__)

METHOD_NOT_FOUND = -32601


#: What the source retries itself: any exception (never a cancellation), except a reorg it cannot follow.
_RETRIED = retry_if_exception_type(Exception) & retry_if_not_exception_type(ReorgTooDeepError)


def _hash(raw: str) -> bytes:
    return bytes.fromhex(raw[2:])


class RpcSource(Source):
    """Poll a JSON-RPC node for new blocks and reorgs.

    Every answer is checked before anything is built from it: JSON-RPC shapes (:mod:`sidecar.jsonrpc`), then,
    with ``verify``, each block against its own header (:func:`sidecar.roots.verify_block`: block hash,
    transaction hashes, ``transactionsRoot``, ``receiptsRoot``). A bad answer is logged naming the node and the
    block, counted (``bad_answers`` in ``/status``, ``monmouth_source_bad_answers_total{source="rpc", node}``)
    and retried with backoff like an unreachable node; the source never gives up.

    The node's ``finalized`` tag is believed only for a block the engine holds with the same hash (or one
    older than its hash history): a node cannot make the sidecar finalize a block it has not indexed, or one
    of another chain.

    Args:
        url: HTTP JSON-RPC endpoint.
        confirmations: blocks to stay behind ``latest``.
        poll_interval: seconds between polls when caught up.
        batch_size: blocks per batch (and per ``ChainCommitted``) while catching up.
        start_block: first block on an empty database, or ``"latest"``.
        max_backoff: cap of the retry backoff, seconds.
        timeout: HTTP timeout, seconds.
        verify: check blocks against their header's hash and roots (see above).
        metrics: core metrics (reconnect and bad-answer counters, source head gauge), optional.
        transport: an httpx transport (default: real HTTP), e.g. to route through a proxy in tests.
    """

    kind = "rpc"

    def __init__(self, url: str, *, confirmations: int = 0, poll_interval: float = 1.0, batch_size: int = 16,
                 start_block: int | str = 0, max_backoff: float = 30.0, timeout: float = 10.0, verify: bool = True,
                 metrics: Metrics | None = None, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = url
        self.confirmations = confirmations
        self.poll_interval = poll_interval
        self.batch_size = batch_size
        self.start_block = start_block
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.verify = verify
        self.metrics = metrics
        self.connected = False
        self.reconnects = 0
        self.last_error: str | None = None
        self.reorgs_detected = 0
        #: Bad answers (malformed or failing verification) per node URL.
        self.bad_answers: dict[str, int] = {}
        #: The node's ``finalized`` tag as last answered, ``(number, hash)``, believed or not.
        self.node_finalized: tuple[int, bytes] | None = None
        #: Blocks the node's head is behind the engine's while its chain is a prefix of the engine's (0: not).
        self.behind = 0
        self._block_receipts: bool | None = None  # does the node support eth_getBlockReceipts?
        self.rpc = JsonRpcClient(url, timeout, transport)

    # ------------------------------------------------------------------------------------------------ fetching
    async def _receipts(self, blocks_raw: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        if self._block_receipts is not False:
            try:
                res = await self.rpc.batch([("eth_getBlockReceipts", [b["number"]]) for b in blocks_raw])
                if all(r is not None for r in res):
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
        """Full blocks ``first..last`` with receipts, checked (see the class).

        Raises:
            TransientNodeError: the node changed meanwhile, or a block is not available yet.
            BadAnswerError: a malformed or unverifiable answer, naming the node and the block.
        """
        raw = await self.rpc.batch([("eth_getBlockByNumber", [hex(n), True]) for n in range(first, last + 1)])
        if any(b is None for b in raw):
            raise TransientNodeError(f"blocks {first}..{last} not all available")
        for n, b in enumerate(raw, first):
            what = f"eth_getBlockByNumber({n:#x}, true)"
            try:
                check_block(b, what)
                if qty(b["number"], what + ".number") != n:
                    raise CodecError(f"{what}: the node answered block {b['number']} {b['hash']}")
            except CodecError as e:
                raise BadAnswerError(str(e)) from None
        receipts = await self._receipts(raw)
        blocks = []
        for b, r in zip(raw, receipts, strict=True):
            what = f"block {int(b['number'], 16)} {b['hash']}"
            try:
                check_receipts(r, what + " receipts")
                if self.verify:
                    verify_block(b, r)
                blocks.append(block_from_rpc(b, r))
            except CodecError as e:
                raise BadAnswerError(str(e) if str(e).startswith("block ") else f"{what}: {e}") from None
        return blocks

    async def block_hash(self, number: int) -> bytes | None:
        b = await self.rpc.call("eth_getBlockByNumber", hex(number), False)
        if b is None:
            return None
        try:
            return _hash(check_header(b, f"eth_getBlockByNumber({number:#x}, false)").hash)
        except CodecError as e:
            raise BadAnswerError(str(e)) from None

    async def _poll_heads(self, check: int | None = None) -> tuple[int, bytes | None]:
        """One batch: latest block number, the finalized block, and (optionally) the node's hash at height
        ``check``. Returns ``(latest, hash_at_check)``."""
        calls: list[tuple[str, list[Any]]] = [("eth_blockNumber", []), ("eth_getBlockByNumber", ["finalized", False])]
        if check is not None:
            calls.append(("eth_getBlockByNumber", [hex(check), False]))
        res = await self.rpc.batch(calls)
        try:
            latest = qty(res[0], "eth_blockNumber")
            fin = check_header(res[1], "eth_getBlockByNumber(finalized)") if res[1] is not None else None
            checked = check_header(res[2], f"eth_getBlockByNumber({check:#x}, false)") if res[2:] and res[2] else None
            if fin is not None and qty(fin.number, "finalized.number") > latest:
                raise CodecError(f"the finalized block {fin.number} is above the latest block {latest:#x}")
        except CodecError as e:
            raise BadAnswerError(str(e)) from None
        self.source_head = latest
        self.node_finalized = (int(fin.number, 16), _hash(fin.hash)) if fin is not None else None
        if self.metrics is not None:
            self.metrics.source_head.set(self.source_head)
        return latest, (_hash(checked.hash) if checked is not None else None)

    def _justify_finalized(self, view: ChainView, head: BlockRef | None) -> None:
        """Believe the node's finalized tag only for a block of the engine's chain (see the class)."""
        if self.node_finalized is None or head is None:
            return
        number, hash_ = self.node_finalized
        if number > head.number or (self.finalized is not None and number <= self.finalized):
            return
        ours = view.canonical(number)
        if ours is not None and ours.hash != hash_:
            log.warning("rpc: %s calls block %d 0x%s finalized, but the indexed block %d is 0x%s; not believed",
                        self.url, number, hash_.hex(), number, ours.hash.hex())
            return
        self.finalized = number

    async def probe_head(self) -> int | None:
        """Poll the node's head (``eth_blockNumber``, finalized) out of band (see :meth:`Source.probe_head`)."""
        return (await self._poll_heads())[0]

    # ------------------------------------------------------------------------------------------------ stream
    def _before_sleep(self, state: RetryCallState) -> None:
        e = state.outcome.exception() if state.outcome is not None else None
        self.connected = False
        self.reconnects += 1
        self.last_error = f"{type(e).__name__}: {e}"
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        if isinstance(e, BadAnswerError):
            self.bad_answers[self.url] = self.bad_answers.get(self.url, 0) + 1
            if self.metrics is not None:
                self.metrics.source_bad_answers.labels("rpc", self.url).inc()
            log.error("rpc: bad answer from %s: %s; retrying in %.1fs", self.url, e, wait)
        elif isinstance(e, httpx.HTTPError | TransientNodeError | RpcError | ChainError):
            log.warning("rpc: %s unavailable or inconsistent (%s); retrying in %.1fs", self.url, self.last_error, wait)
        else:  # a defect here, not the node's: still never give up, but say where
            log.error("rpc: unexpected error following %s; retrying in %.1fs", self.url, wait, exc_info=e)
        if self.metrics is not None:
            self.metrics.source_reconnects.labels("rpc").inc()

    async def stream(self, view: ChainView) -> AsyncIterator[Delivery]:  # type: ignore[override]
        """Follow the node forever: each step (poll, fetch, check) is retried with exponential backoff (tenacity,
        from 0.5 s up to ``max_backoff``) until it succeeds; the backoff starts over after each delivery.

        Raises:
            ReorgTooDeepError: the node shares no block with the engine's hash history (the runner pauses).
        """
        while True:
            retrying = AsyncRetrying(retry=_RETRIED, before_sleep=self._before_sleep,
                                     wait=wait_exponential(multiplier=0.5, min=0.5, max=self.max_backoff))
            async for attempt in retrying:
                with attempt:
                    deliveries = await self._step(view)
            for d in deliveries:
                yield d

    async def _step(self, view: ChainView) -> list[Delivery]:
        """One poll: the deliveries it gives (none when caught up, after ``poll_interval``)."""
        head = view.head()
        latest, node_hash = await self._poll_heads(head.number if head is not None else None)
        self.connected = True
        if head is None or node_hash == head.hash or latest > head.number:
            self.behind = 0
        self._justify_finalized(view, head)
        target = latest - self.confirmations
        if head is None:
            start = target if self.start_block == "latest" else int(self.start_block)
            if start > target:
                await anyio.sleep(self.poll_interval)
                return []
            blocks = await self.fetch_blocks(start, min(start + self.batch_size - 1, target))
            return [Delivery(ChainCommitted(Chain(tuple(blocks))), None, 0, time.monotonic())]
        if node_hash != head.hash:
            # The node's block at our head's height changed (a reorg) or vanished (a reorg, or a node behind).
            return await self._reorg(view, head, latest, target)
        if head.number >= target:
            await anyio.sleep(self.poll_interval)
            return []
        last = min(head.number + self.batch_size, target)
        blocks = await self.fetch_blocks(head.number + 1, last)
        if blocks[0].parent_hash != head.hash:
            return await self._reorg(view, head, latest, target)
        return [Delivery(ChainCommitted(Chain(tuple(blocks))), None, 0, time.monotonic())]

    async def _reorg(self, view: ChainView, head: BlockRef, latest: int, target: int) -> list[Delivery]:
        """Walk back to the common ancestor of the node's chain and the engine's; the delivery that moves the
        engine onto the node's chain, or none when the node's whole chain is a prefix of the engine's: the node
        is behind (a lagging or resyncing node), not reorged, and the source waits for it (``behind`` in
        ``/status``) rather than revert blocks no other chain has replaced."""
        n = top = min(head.number, latest)
        while True:
            ours = view.canonical(n)
            if ours is None:
                # No common ancestor within the hash history: another chain, or a reorg deeper than anything the
                # engine can undo. Not retried here: the runner pauses ingestion and asks again with backoff.
                self.connected = True
                raise ReorgTooDeepError(
                    f"the node {self.url} shares no block with the indexed chain from block {n + 1} to {top} (head "
                    f"{head}): it follows another chain, or reorged deeper than the hash history held "
                    "(engine.history); see docs/faults.md (wait for the node to return to the indexed chain, or "
                    "restore a backup or re-index)", depth=head.number - n, block=head,
                )
            if await self.block_hash(n) == ours.hash:
                break
            n -= 1
        ancestor = n
        if ancestor >= latest:
            if not self.behind:
                log.warning("rpc: %s is behind: its head is block %d, the engine's is %d; waiting for it", self.url,
                            latest, head.number)
            self.behind = head.number - latest
            await anyio.sleep(self.poll_interval)
            return []
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
            return [Delivery(ChainReverted(old), None, 0, time.monotonic())]
        new = await self.fetch_blocks(ancestor + 1, end)
        if new[0].parent_hash != old.fork_point.hash:
            raise TransientNodeError("node changed during reorg handling")
        return [Delivery(ChainReorged(old, Chain(tuple(new))), None, 0, time.monotonic())]

    def status(self) -> dict[str, Any]:
        st = super().status()
        nf = self.node_finalized
        st.update(url=self.url, connected=self.connected, reconnects=self.reconnects, last_error=self.last_error,
                  reorgs_detected=self.reorgs_detected, block_receipts=self._block_receipts, verify=self.verify,
                  bad_answers=dict(self.bad_answers), behind=self.behind,
                  node_finalized={"number": nf[0], "hash": "0x" + nf[1].hex()} if nf else None)
        return st

    async def aclose(self) -> None:
        await self.rpc.aclose()
