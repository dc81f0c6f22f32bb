"""``monmouth record``: write what a source delivers into a replay file, without an engine.

The source still needs a chain view (to resume and to find common ancestors on reorgs); :class:`MemoryView`
keeps one in memory by following the notifications it records.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .replayfile import ReplayWriter
from .sources.base import Source
from .types import Block, BlockRef, ChainCommitted, ChainReverted, Notification

log = logging.getLogger(__name__)


class MemoryView:
    """A chain view kept in memory: the canonical headers of everything recorded so far."""

    def __init__(self) -> None:
        self.blocks: dict[int, Block] = {}
        self._head: BlockRef | None = None

    def head(self) -> BlockRef | None:
        return self._head

    def canonical(self, number: int) -> Block | None:
        return self.blocks.get(number)

    def source_token(self) -> Any:
        return None

    def follow(self, n: Notification) -> None:
        """Apply ``n`` to the in-memory chain (headers only)."""
        if not isinstance(n, ChainCommitted):
            for b in n.old.blocks:
                self.blocks.pop(b.number, None)
            self._head = n.old.fork_point
        if not isinstance(n, ChainReverted):
            for b in n.new.blocks:
                self.blocks[b.number] = Block(b.number, b.hash, b.parent_hash, b.timestamp, b.beneficiary, 0, 0)
            self._head = n.new.tip.ref


async def record_source(source: Source, out: str | Path, *, count: int | None = None,
                        until_block: int | None = None) -> int:
    """Record deliveries from ``source`` into ``out`` until ``count`` notifications or ``until_block``.

    Returns the number of notifications written.
    """
    view = MemoryView()
    written = 0
    with ReplayWriter(out) as w:
        async for d in source.stream(view):
            w.write(d.notification, seq=written + 1)
            view.follow(d.notification)
            written += 1
            await source.ack(d, view.head())
            head = view.head()
            if written % 100 == 0:
                log.info("recorded %d notifications, head %s", written, head)
            if (count is not None and written >= count) or (
                    until_block is not None and head is not None and head.number >= until_block):
                break
    await source.aclose()
    return written
