"""The ``replay`` source: notifications read from a replay file (``monmouth record`` writes them)."""

from __future__ import annotations

import collections
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio

from ..errors import SourceError
from ..replayfile import ReplayFormatError, count_frames, read_notifications
from ..types import Notification
from .base import ChainView, Delivery, Source

#: Frames read ahead per worker-thread call when the replay is not paced (the runner's group commit takes at most
#: ``engine.group_commit`` of them at once).
READ_AHEAD = 32


def _read_chunk(frames: Iterator[tuple[int, Notification, int]],
                n: int) -> tuple[list[tuple[int, Notification, int]], ReplayFormatError | None]:
    """Up to ``n`` frames, and the format error that stopped the read early (frames before it are returned)."""
    items: list[tuple[int, Notification, int]] = []
    try:
        for _ in range(n):
            item = next(frames, None)
            if item is None:
                break
            items.append(item)
    except ReplayFormatError as e:
        return items, e
    return items, None


class ReplaySource(Source):
    """Deliver a replay file's notifications in order, then stop.

    Resuming: each delivery's token is ``{"file": <absolute path>, "frame": i}``. When the engine's stored
    token names the same file, frames up to and including that index are skipped, so a restart resumes after
    the last committed frame (stale frames of a replayed history never reach the engine).

    Args:
        path: the replay file.
        rate: notifications per second (0 = as fast as the engine goes).

    Raises (from :meth:`stream`):
        SourceError: the file is missing or damaged; the message names the frame and byte offset. Frames
            before the damaged one have been delivered.
    """

    kind = "replay"

    def __init__(self, path: str | Path, rate: float = 0.0) -> None:
        self.path = Path(path).resolve()
        self.rate = rate
        self.frames_delivered = 0
        self.total_frames: int | None = None
        self._ready: collections.deque[Delivery] = collections.deque()

    async def stream(self, view: ChainView) -> AsyncIterator[Delivery]:  # type: ignore[override]
        if not self.path.exists():
            raise SourceError(f"replay file {self.path} does not exist")
        token = view.source_token()
        skip_through = -1
        if isinstance(token, dict) and token.get("file") == str(self.path):
            skip_through = int(token.get("frame", -1))
        self.total_frames = await anyio.to_thread.run_sync(count_frames, self.path)
        interval = 1.0 / self.rate if self.rate > 0 else 0.0
        frames = read_notifications(self.path)
        # Unpaced, frames are read ahead in chunks on a worker thread; what is at hand when the runner asks
        # (take_ready) is group-committed with the frame just yielded.
        chunk = 1 if interval else READ_AHEAD
        ready = self._ready
        ready.clear()
        damaged: ReplayFormatError | None = None  # met while reading ahead; raised once the frames before it are out
        while True:
            if not ready:
                items, error = await anyio.to_thread.run_sync(_read_chunk, frames, chunk)
                for index, notification, size in items:
                    tip = notification.kind != "ChainReverted" and notification.new.tip.number  # type: ignore[union-attr]
                    if tip:
                        self.source_head = max(self.source_head or 0, tip)
                    if index > skip_through:
                        ready.append(Delivery(notification, {"file": str(self.path), "frame": index}, size,
                                              time.monotonic()))
                if not ready:
                    if error is not None:
                        raise SourceError(str(error)) from error
                    if not items:
                        return
                    continue
                damaged = error
            d = ready.popleft()
            self.frames_delivered += 1
            yield d
            if interval:
                await anyio.sleep(interval)
            if not ready and damaged is not None:
                # Frames before the damaged one were all delivered (and committed) first.
                raise SourceError(str(damaged)) from damaged

    def take_ready(self, limit: int) -> list[Delivery]:
        """Up to ``limit`` frames already read ahead (none when paced by ``rate``)."""
        out: list[Delivery] = []
        while self._ready and len(out) < limit:
            out.append(self._ready.popleft())
        self.frames_delivered += len(out)
        return out

    def status(self) -> dict[str, Any]:
        st = super().status()
        st.update(path=str(self.path), frames_delivered=self.frames_delivered,
                  size_bytes=os.path.getsize(self.path) if self.path.exists() else None)
        return st
