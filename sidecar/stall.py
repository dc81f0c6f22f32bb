"""A stuck engine, told truthfully: which notification fails, on which block, in which plugin, since when.

When a plugin raises, the runner rolls the notification back and retries it with backoff (see
:mod:`sidecar.runner`). Until it goes through, the engine cannot advance, and everything that reports health must
say so. :class:`Stall` is that record, kept by the runner:

* ``/status`` ``stuck`` (``null`` while the engine advances)::

      {"plugin": "boom", "hook": "monmouth_block_applied", "block": {"number": 28, "hash": "0x..."},
       "error": "plugin 'boom' failed in monmouth_block_applied at block #28 0x...: RuntimeError: ...",
       "since": 1733328000.0, "seconds": 12.5, "attempts": 6, "next_retry_in": 4.0}

  ``since`` is the Unix time of the first failure, ``seconds`` how long ago that was, ``attempts`` how many times
  the notification has failed so far.
* ``/ready`` answers 503 with a problem document naming the plugin and the block.
* Metrics: ``monmouth_stuck_seconds`` (seconds since the failing notification first failed; 0 while the engine
  advances) and ``monmouth_notification_attempts`` (failed attempts of the notification being retried; 0 while
  the engine advances). Example alert: ``monmouth_stuck_seconds > 120``.
* The log: the first failure of a notification is logged with its traceback, later retries one line each with
  the attempt count; the message names the plugin, the hook and the block number and hash.

While stuck, :meth:`StallTracker.wait` keeps polling the node's head (``Source.probe_head``) so that the lag in
``/status`` is against the node's real head, and ends early when :meth:`StallTracker.retry_now` is called (a
config reload that fixes or disables the plugin is tried at once, not when the backoff would have expired).
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from prometheus_client import CollectorRegistry, Gauge

from .errors import PluginError

log = logging.getLogger(__name__)

_GAUGES: weakref.WeakKeyDictionary[CollectorRegistry, tuple[Gauge, Gauge]] = weakref.WeakKeyDictionary()


@dataclass
class Stall:
    """The notification the engine cannot get past.

    Attributes:
        plugin, hook: who raised (``?`` when the plugin could not be told).
        block: the block (``BlockRef``) the hook failed on, or ``None``.
        error: the last error's message.
        since: Unix time of the first failure.
        attempts: failed attempts so far.
        retry_at: Unix time of the next retry.
    """

    plugin: str
    hook: str
    block: Any
    error: str
    since: float
    attempts: int = 1
    retry_at: float = 0.0

    def same_place(self, e: PluginError) -> bool:
        return (self.plugin, self.hook, self.block) == (e.plugin, e.hook, e.block)

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        return {"plugin": self.plugin, "hook": self.hook,
                "block": self.block.to_json() if self.block is not None else None, "error": self.error,
                "since": round(self.since, 3), "seconds": round(now - self.since, 1), "attempts": self.attempts,
                "next_retry_in": round(max(self.retry_at - now, 0.0), 1)}

    def reason(self) -> str:
        where = f" on block {self.block}" if self.block is not None else ""
        return (f"stuck{where} for {time.time() - self.since:.0f}s: plugin {self.plugin!r} failed in {self.hook} "
                f"{self.attempts} times; last error: {self.error}")


class StallTracker:
    """The runner's record of a failing notification, its metrics and its retry wait.

    Args:
        registry: the sidecar's metrics registry (``monmouth_stuck_seconds``, ``monmouth_notification_attempts``).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.current: Stall | None = None
        self._retry = anyio.Event()
        if registry not in _GAUGES:  # one pair per registry, rebound to the newest tracker (one runner per app)
            _GAUGES[registry] = (
                Gauge("monmouth_stuck_seconds",
                      "Seconds since the notification being retried first failed (0 while advancing).",
                      registry=registry),
                Gauge("monmouth_notification_attempts",
                      "Failed attempts of the notification being retried (0 while advancing).", registry=registry))
        stuck_seconds, self.attempts = _GAUGES[registry]
        stuck_seconds.set_function(lambda: time.time() - self.current.since if self.current else 0.0)
        self.attempts.set(0)

    def failed(self, e: PluginError, retry_in: float) -> bool:
        """Record a failed attempt; returns True when it is the first failure of this notification (at this
        plugin, hook and block), for which the caller logs the traceback."""
        now = time.time()
        first = self.current is None or not self.current.same_place(e)
        if first:
            self.current = Stall(e.plugin, e.hook, e.block, str(e), now)
        else:
            assert self.current is not None
            self.current.attempts += 1
            self.current.error = str(e)
        self.current.retry_at = now + retry_in
        self.attempts.set(self.current.attempts)
        return first

    @property
    def attempts_so_far(self) -> int:
        """Failed attempts of the current notification (0 while the engine advances)."""
        return self.current.attempts if self.current is not None else 0

    def cleared(self) -> None:
        """The notification went through (or the engine moved on): log the recovery and reset."""
        if self.current is not None:
            log.info("recovered: the notification%s went through after %d failed attempts in %.1fs",
                     f" at block {self.current.block}" if self.current.block is not None else "",
                     self.current.attempts, time.time() - self.current.since)
            self.current = None
            self.attempts.set(0)
            self._retry = anyio.Event()

    def retry_now(self) -> None:
        """End the current retry wait at once (called after a config reload)."""
        self._retry.set()

    async def wait(self, delay: float, probe: Callable[[], Awaitable[object]] | None, every: float = 1.0) -> None:
        """Sleep ``delay`` seconds or until :meth:`retry_now`, calling ``probe`` (the source's head poll) every
        ``every`` seconds meanwhile. A failing probe is logged at DEBUG and tried again. Returns at once when
        :meth:`retry_now` was called since the last wait (a reload that landed during the failed attempt)."""
        if self._retry.is_set():
            self._retry = anyio.Event()
            return

        async def poll() -> None:
            while probe is not None:
                try:
                    await probe()
                except Exception as e:  # the node may be down too; the source reports that itself
                    log.debug("probing the node's head while stuck: %s", e)
                await anyio.sleep(every)

        with anyio.move_on_after(delay):
            async with anyio.create_task_group() as tg:
                tg.start_soon(poll)
                await self._retry.wait()
                tg.cancel_scope.cancel()
        self._retry = anyio.Event()
