"""Catch-up: bring plugins that joined late up to the head from the source's history, beside the live stream.

The runner starts :meth:`CatchUp.run` next to its ingestion loop. For each plugin :mod:`sidecar.progress` marks
``catching_up`` it fetches the next blocks (up to ``batch`` at a time, never past the engine head) from the
source's history and applies them to that plugin alone with :meth:`Progress.step`, under the runner's lock and on
the engine's thread, so catch-up steps and live notifications interleave without overlapping. Live plugins keep
following the head; a catch-up step waits at most one live notification.

History, by source:

* ``rpc``: ``eth_getBlockByNumber`` and receipts from the node (:meth:`RpcSource.fetch_blocks`). A node that no
  longer serves the blocks (pruned) is reported in ``/status`` (``progress.error``) and retried.
* ``replay``: the replay file, read again: the canonical chain is found by walking parent hashes back from the
  engine head through every block the file holds (the whole file is indexed in memory).
* ``exex``: through the bridge (:class:`BridgeHistory`): ``history`` requests over the open session
  (:meth:`ExExSource.history`, ``docs/wire.md``), answered from Reth's database with the blocks, senders and
  receipts, beside the live stream; the bridge checks that the node's block at the engine head's height is the
  engine head. While the session is down, or the bridge refuses (pruned receipts, a block beyond the node's head),
  the step fails naming the blocks, is reported in ``/status`` and retried; nothing of it is applied. Only an older
  bridge that serves no history (its ``welcome`` has no ``history`` key) makes the catch-up use the node's JSON-RPC
  at ``source.rpc_url`` instead (:class:`NodeHistory`, checked like the ``rpc`` source's), when set. The default
  start is block 1 (the ExEx sends genesis only to a sidecar started at ``start_block = 0``).

``/status`` ``progress.<name>``: ``state``, ``first``, ``last``, ``remaining`` (blocks to the head),
``blocks_per_s`` and ``error`` (the last failure of a catch-up step, ``null`` when fine).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from .app import App
from .backoff import Backoff
from .errors import HistoryError, PluginError
from .progress import PluginRange, Progress, StaleHistoryError
from .replayfile import read_notifications
from .sources.base import Source
from .types import Block, BlockRef, ChainReverted

log = logging.getLogger(__name__)

History = Callable[[int, int, BlockRef], Awaitable[list[Block]]]


__all__ = ["BridgeHistory", "CatchUp", "HistoryError", "NodeHistory", "ReplayHistory", "history_of", "no_history"]


class ReplayHistory:
    """The canonical blocks of a replay file, by walking parent hashes back from a head."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._by_hash: dict[bytes, Block] = {}
        self._mtime = -1.0

    def _load(self) -> None:
        mtime = self.path.stat().st_mtime
        if mtime == self._mtime:
            return
        by_hash: dict[bytes, Block] = {}
        for _frame, n, _seq in read_notifications(self.path):
            if not isinstance(n, ChainReverted):
                for b in n.new.blocks:
                    by_hash[b.hash] = b
        self._by_hash, self._mtime = by_hash, mtime

    def first_block(self) -> int | None:
        """The lowest block number in the file (``None`` for an empty file)."""
        self._load()
        return min((b.number for b in self._by_hash.values()), default=None)

    def blocks(self, first: int, last: int, head: BlockRef) -> list[Block]:
        self._load()
        out: list[Block] = []
        b = self._by_hash.get(head.hash)
        while b is not None and b.number >= first:
            if b.number <= last:
                out.append(b)
            b = self._by_hash.get(b.parent_hash) if b.number > first else None
        if not out or out[-1].number != first:
            raise HistoryError(f"replay file {self.path} does not hold the canonical blocks {first}..{last} "
                               f"below the head {head}")
        return out[::-1]

    async def __call__(self, first: int, last: int, head: BlockRef) -> list[Block]:
        return await anyio.to_thread.run_sync(self.blocks, first, last, head)


class NodeHistory:
    """The ``exex`` source's history: blocks from the node's JSON-RPC (``source.rpc_url``), checked like the
    ``rpc`` source's (:meth:`RpcSource.fetch_blocks`: shapes, block hash, transactions and receipts roots), and
    on the engine's chain (the node's block at the engine head's height is the engine head).

    Args:
        url: the node's HTTP JSON-RPC endpoint.
        timeout: seconds per request (``source.timeout``).
    """

    #: The ExEx starts at block 1 (it delivers no genesis block): the first block a plugin catches up from.
    FIRST_BLOCK = 1

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        from .sources.rpc import RpcSource

        self.url = url
        self.node = RpcSource(url, timeout=timeout)

    async def __call__(self, first: int, last: int, head: BlockRef) -> list[Block]:
        """Blocks ``first..last`` (at or below ``head``, the engine head).

        Raises:
            HistoryError: the node does not answer or serve them (pruned, behind), answers badly, or follows
                another chain than the engine's; the message names ``source.rpc_url`` and the blocks.
        """
        what = f"source.rpc_url {self.url}"
        try:
            blocks = await self.node.fetch_blocks(first, last)
            at_head = await self.node.block_hash(head.number)
        except Exception as e:
            raise HistoryError(f"{what} does not serve blocks {first}..{last}: {type(e).__name__}: {e}") from e
        if at_head != head.hash:
            raise HistoryError(
                f"{what}: the node's block {head.number} is {'0x' + at_head.hex() if at_head else 'missing'}, the "
                f"indexed head is {head}: it is not the node the bridge follows (another chain), or it has not "
                "reached that block yet")
        return blocks

    async def aclose(self) -> None:
        await self.node.aclose()


class BridgeHistory:
    """The ``exex`` source's history: blocks from Reth's database through the bridge (:meth:`ExExSource.history`),
    or, from an older bridge that serves no history, from the node's JSON-RPC at ``rpc_url`` when set
    (:class:`NodeHistory`).

    Args:
        source: the runner's ``exex`` source (its open session carries the requests).
        rpc_url: ``source.rpc_url`` (optional fallback for an older bridge), or ``""``.
        timeout: seconds per answer (``source.timeout``).
    """

    #: The ExEx starts at block 1 (it delivers genesis only from ``start_block = 0``): the default first block.
    FIRST_BLOCK = 1

    def __init__(self, source: Source, rpc_url: str = "", timeout: float = 10.0) -> None:
        self.source = source
        self.timeout = timeout
        self.fallback = NodeHistory(rpc_url, timeout) if rpc_url else None

    async def __call__(self, first: int, last: int, head: BlockRef) -> list[Block]:
        """Blocks ``first..last`` (at or below ``head``, the engine head).

        Raises:
            HistoryError: the bridge is not connected, refuses (naming the block), or serves no history and no
                ``source.rpc_url`` is set; the fallback's errors.
        """
        bridge = getattr(self.source, "bridge", None)
        if self.fallback is not None and bridge is not None and getattr(bridge, "history", None) is None:
            return await self.fallback(first, last, head)
        fetch = getattr(self.source, "history", None)
        if fetch is None:
            raise HistoryError(f"the {self.source.kind} source cannot serve history")
        try:
            return list(await fetch(first, last, head, timeout=max(self.timeout, 30.0)))
        except HistoryError as e:
            bridge = getattr(self.source, "bridge", None)
            if bridge is not None and getattr(bridge, "history", None) is None:
                raise HistoryError(f"{e}, or set source.rpc_url to the node's HTTP endpoint") from e
            raise

    async def aclose(self) -> None:
        if self.fallback is not None:
            await self.fallback.aclose()


def history_of(source: Source, rpc_url: str = "", timeout: float = 10.0) -> History | None:
    """The source's history, or ``None`` when it cannot serve one (``rpc_url``, ``timeout``: the ``exex``
    source's ``source.rpc_url`` and ``source.timeout``)."""
    fetch = getattr(source, "fetch_blocks", None)
    if fetch is not None:
        async def rpc(first: int, last: int, head: BlockRef) -> list[Block]:
            try:
                return list(await fetch(first, last))
            except Exception as e:
                raise HistoryError(f"the node does not serve blocks {first}..{last}: {type(e).__name__}: {e}") from e
        return rpc
    path = getattr(source, "path", None)
    if source.kind == "replay" and isinstance(path, Path):
        return ReplayHistory(path)
    if source.kind == "exex" and hasattr(source, "history"):
        return BridgeHistory(source, rpc_url, timeout)
    return None


def no_history(source: Source) -> str:
    """Why ``source`` serves no history, and what the operator can do (for the log and ``monmouth reindex``)."""
    return f"the {source.kind} source cannot serve history"


class CatchUp:
    """Runs the catch-up of late plugins for one runner.

    Args:
        app: the sidecar.
        source: the runner's source (its history).
        lock: the runner's lock (held by every engine transaction).
        limiter: the engine thread's limiter.
        batch: most blocks per catch-up step (one transaction).
    """

    def __init__(self, app: App, source: Source, lock: anyio.Lock, limiter: anyio.CapacityLimiter,
                 batch: int = 32) -> None:
        self.app = app
        self.source = source
        self.lock = lock
        self.limiter = limiter
        self.batch = batch
        self.progress = Progress(app.engine)
        self.history = history_of(source, app.settings.source.rpc_url, app.settings.source.timeout)
        self.errors: dict[str, str] = {}
        self._rates: dict[str, tuple[float, int, float]] = {}  # name -> (t0, blocks since t0, blocks/s)
        self.behind: dict[str, int | None] = {}  # plugins catching up -> the last block they hold
        self._logged = 0.0

    def sync(self) -> list[str]:
        """:meth:`Progress.sync` with the app's settings; without history, late plugins join at the head. On the
        engine's thread, under the runner's lock."""
        changes = self.progress.sync(self.app.settings, self.floor)
        if self.history is None:
            for name, r in self.progress.ranges().items():
                if r.state == "catching_up" and name in self.app.host.enabled:
                    self.progress.join_without_history(name, no_history(self.source))
        return changes

    def floor(self) -> int | None:
        """The first block the source's history holds, when it knows (a replay file; the ExEx's block 1), else
        ``None``."""
        if isinstance(self.history, ReplayHistory):
            return self.history.first_block()
        return BridgeHistory.FIRST_BLOCK if self.source.kind == "exex" else None

    async def aclose(self) -> None:
        """Release the history's client (the ``exex`` source's JSON-RPC fallback connection)."""
        if isinstance(self.history, NodeHistory | BridgeHistory):
            await self.history.aclose()

    def status(self) -> dict[str, dict[str, Any]]:
        """``{plugin: progress}`` for ``/status`` (see the module docstring)."""
        head = self.app.engine.head
        out: dict[str, dict[str, Any]] = {}
        for name, r in self.progress.ranges(self.app.db.reader()).items():
            last = head.number if r.state == "live" and head is not None else r.last
            remaining = (head.number - last if head is not None and last is not None else
                         (head.number - r.next_block + 1 if head is not None else 0))
            out[name] = {"state": r.state, "first": r.first, "last": last, "remaining": max(remaining, 0),
                         "blocks_per_s": round(self._rates.get(name, (0, 0, 0.0))[2], 1),
                         "error": self.errors.get(name)}
        return out

    def behind_headers(self, name: str) -> dict[str, str]:
        """Response headers for plugin ``name``'s HTTP routes while it catches up (none once live):
        ``X-Monmouth-Behind`` (blocks it lacks up to the engine head) and ``X-Monmouth-Indexed-Through`` (the last
        block its tables hold, ``-1`` before any)."""
        if name not in self.behind:
            return {}
        last, head = self.behind[name], self.app.engine.head
        held = -1 if last is None else last
        return {"X-Monmouth-Behind": str(max((head.number if head else held) - held, 0)),
                "X-Monmouth-Indexed-Through": str(held)}

    async def finish(self, poll: float = 0.1) -> None:
        """Return once no enabled plugin is catching up (for finite sources, before the runner returns)."""
        while any(r.state == "catching_up" and name in self.app.host.enabled
                  for name, r in self.progress.ranges(self.app.db.reader()).items()):
            await anyio.sleep(poll)

    async def run(self, idle: float = 0.1) -> None:
        """Forever: one catch-up step for each plugin catching up, in turn; sleep ``idle`` when none is."""
        backoff: dict[str, Backoff] = {}
        while True:
            pending = [r for name, r in self.progress.ranges(self.app.db.reader()).items()
                       if r.state == "catching_up" and name in self.app.host.enabled]
            self.behind = {r.plugin: r.last for r in pending}
            if not pending or self.history is None:
                await anyio.sleep(idle)
                continue
            for r in pending:
                try:
                    await self.step_once(r)
                    backoff.pop(r.plugin, None)
                except StaleHistoryError as e:
                    log.info("%s", e)
                except (HistoryError, PluginError) as e:
                    delay = backoff.setdefault(
                        r.plugin, Backoff(0.5, lambda: self.app.settings.engine.retry_max_backoff)).next()
                    self.errors[r.plugin] = str(e)
                    log.error("catch-up of plugin %s: %s; retrying in %.1fs", r.plugin, e, delay)
                    await anyio.sleep(delay)

    async def step_once(self, r: PluginRange) -> None:
        """Fetch and apply the next blocks (up to ``batch``) of plugin ``r.plugin``.

        Raises:
            HistoryError, StaleHistoryError, PluginError: nothing of the step was applied.
        """
        assert self.history is not None
        head = self.app.engine.head
        if head is None:
            return
        first = r.next_block
        last = min(head.number, first + self.batch - 1)
        blocks = await self.history(first, last, head) if first <= last else []
        async with self.lock:
            n, joined = await anyio.to_thread.run_sync(self.progress.step, r.plugin, blocks, limiter=self.limiter)
        self.errors.pop(r.plugin, None)
        now = time.monotonic()
        t0, count, rate = self._rates.get(r.plugin, (now, 0, 0.0))
        count += n
        if now - t0 >= 1.0:
            rate = count / (now - t0)
            t0, count = now, 0
        self._rates[r.plugin] = (t0, count, rate)
        if now - self._logged >= self.app.settings.engine.progress_interval and not joined:
            self._logged = now
            at = r.next_block - 1 + n
            log.info("catch-up: plugin %s at block %d of %d, %d remaining, %.1f blocks/s", r.plugin, at,
                     head.number, head.number - at, rate)
        if joined:
            self._rates.pop(r.plugin, None)
            self.behind.pop(r.plugin, None)
