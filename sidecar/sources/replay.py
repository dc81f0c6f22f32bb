"""The ``replay`` source: notifications read from a replay file (``monmouth record`` writes them)."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio

from ..errors import SourceError
from ..replayfile import ReplayFormatError, count_frames, read_notifications
from .base import ChainView, Delivery, Source


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
        while True:
            try:
                item = await anyio.to_thread.run_sync(next, frames, None)
            except ReplayFormatError as e:
                raise SourceError(str(e)) from e
            if item is None:
                return
            index, notification, size = item
            tip = notification.kind != "ChainReverted" and notification.new.tip.number  # type: ignore[union-attr]
            if tip:
                self.source_head = max(self.source_head or 0, tip)
            if index <= skip_through:
                continue
            yield Delivery(notification, {"file": str(self.path), "frame": index}, size, time.monotonic())
            self.frames_delivered += 1
            if interval:
                await anyio.sleep(interval)

    def status(self) -> dict[str, Any]:
        st = super().status()
        st.update(path=str(self.path), frames_delivered=self.frames_delivered,
                  size_bytes=os.path.getsize(self.path) if self.path.exists() else None)
        return st
