"""Per-plugin progress: each plugin's indexed range, and bringing a plugin that joins late up to the head.

The engine applies every live notification to the plugins that are *live*. A plugin enabled on a database whose
head is ahead of it (enabled for the first time, re-enabled after a while off) would miss the blocks in between;
instead it is *catching up*: it receives no live chain hooks, and :meth:`Progress.step` applies history blocks
(fetched from the source by :mod:`sidecar.catchup`) to it alone until it reaches the head, in the same
transaction that makes it live again. Invariants:

1. **Exactly once.** A plugin gets ``monmouth_block_applied`` for a canonical block either from the catch-up or
   live, never both and never neither: the catch-up and the live notifications are serialized (the runner's lock,
   one write transaction each), the catch-up applies only blocks at or below the engine head, and the transaction
   that applies the head block to it also makes it live. Its range is durable (``monmouth_plugin_progress``) and
   moves in the same transaction as its writes: ``kill -9`` anywhere resumes where it stopped.
2. **Reorg-exact.** A history block must be the engine's canonical block at its height (hash checked against the
   engine's hash history); its changes are appended to that block's undo changeset, so a later reorg reverts the
   plugin's writes with everyone else's, and moves the range of every plugin that is not live back to the fork
   point (in the same transaction, through the ``monmouth_block_reverted`` hook of :class:`_RangeKeeper`).
3. **Isolation.** A plugin failing while catching up rolls back only its catch-up step (retried with backoff,
   the error in ``/status``); live plugins are not held up.

States (``monmouth_plugin_progress.state``): ``live`` (range ends at the engine head), ``catching_up`` (range
ends at ``last``), ``off`` (disabled; ``last`` is the block it was last complete at). A plugin's start when it
first joins a database that already has a head: ``[plugins.<name>] start_block`` if set, else
``source.start_block``; ``"latest"`` joins at the head without history. On a database that predates this table,
plugins that already have tables are taken as live (or off) at the head, as they were.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import apsw

from . import hookimpl
from .config import Settings
from .engine import Engine
from .errors import MonmouthError
from .plugins import call_one
from .types import Block, BlockRef, Chain, ChainCommitted

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE monmouth_plugin_progress (
    plugin TEXT PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('live', 'catching_up', 'off')),
    first INTEGER,        -- first block of its indexed range (NULL: the database's first block)
    last INTEGER,         -- catching_up/off: last block applied to it (first - 1 before any); live: NULL (the head)
    last_hash BYTEA,      -- hash of block `last` (NULL when unknown: before its first block)
    updated_at DOUBLE PRECISION NOT NULL
)
"""


class StaleHistoryError(MonmouthError):
    """A history block is not the engine's canonical block at its height (a reorg happened since it was
    fetched) or does not follow the plugin's range; nothing was applied, fetch again."""

    retryable = True


@dataclass(frozen=True)
class PluginRange:
    """One plugin's row: ``state``, ``first``/``last`` block numbers (``last`` ``None`` while live)."""

    plugin: str
    state: str
    first: int | None
    last: int | None
    last_hash: bytes | None

    @property
    def next_block(self) -> int:
        return 0 if self.last is None else self.last + 1


class _RangeKeeper:
    """Registered with the plugin manager under ``monmouth.progress``: runs in every revert, inside the engine's
    transaction, and moves the range of plugins that are not live back to the fork point."""

    @hookimpl
    def monmouth_block_reverted(self, conn: apsw.Connection, block: Block, notification: Any) -> None:
        conn.execute("UPDATE monmouth_plugin_progress SET last = ?, last_hash = ?, updated_at = ? "
                     "WHERE state != 'live' AND last >= ?", (block.number - 1, block.parent_hash, time.time(),
                                                              block.number))


class Progress:
    """The plugins' ranges on the engine's database. Every method runs on the engine's thread, between
    notifications (the runner holds its lock).

    Args:
        engine: the engine (its connection, journal, head and plugin host).
    """

    KEEPER = "monmouth.progress"

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.host = engine.host
        conn = engine.conn
        exists = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'monmouth_plugin_progress'" if
                              engine.db.backend == "sqlite" else
                              "SELECT 1 WHERE to_regclass('monmouth_plugin_progress') IS NOT NULL").fetchone()
        if not exists:
            with conn:
                conn.execute(_SCHEMA)
                # A database from before per-plugin progress: plugins with tables indexed along with the head.
                head = engine.head
                for (name,) in conn.execute("SELECT plugin FROM monmouth_migrations").fetchall():
                    live = name in self.host.enabled
                    conn.execute("INSERT INTO monmouth_plugin_progress VALUES (?, ?, NULL, ?, ?, ?)",
                                 (name, "live" if live else "off", None if live or head is None else head.number,
                                  None if live or head is None else head.hash, time.time()))
        if not self.host.pm.has_plugin(self.KEEPER):
            self.host.pm.register(_RangeKeeper(), name=self.KEEPER)

    # ------------------------------------------------------------------------------------------------ queries
    def ranges(self, conn: apsw.Connection | None = None) -> dict[str, PluginRange]:
        """``{plugin: PluginRange}`` (``conn``: a reader on another thread; default the engine's)."""
        rows = (conn or self.engine.conn).execute(
            "SELECT plugin, state, first, last, last_hash FROM monmouth_plugin_progress").fetchall()
        return {str(r[0]): PluginRange(*r) for r in rows}  # type: ignore[arg-type]

    # ------------------------------------------------------------------------------------------------ sync
    def sync(self, settings: Settings, floor: Callable[[], int | None] | None = None) -> list[str]:
        """Match the ranges to the enabled plugins (at start-up and after every config reload): a plugin disabled
        becomes ``off`` at the head; one enabled behind the head becomes ``catching_up`` (and gets no live chain
        hooks); one enabled at the head, or on an empty database, is ``live``. ``floor()``: the first block the
        source holds, when it starts later than ``source.start_block`` (a replay file; called only when a plugin
        joins for the first time). Returns what changed."""
        conn, head, now = self.engine.conn, self.engine.head, time.time()
        ranges = self.ranges()
        changes: list[str] = []
        with conn:
            for name in self.host.installed:
                r = ranges.get(name)
                if name not in self.host.enabled:
                    if r is not None and r.state == "live":
                        conn.execute("UPDATE monmouth_plugin_progress SET state = 'off', last = ?, last_hash = ?, "
                                     "updated_at = ? WHERE plugin = ?",
                                     (head.number if head else None, head.hash if head else None, now, name))
                        changes.append(f"{name} off at {head}")
                    elif r is not None and r.state == "catching_up":
                        conn.execute("UPDATE monmouth_plugin_progress SET state = 'off', updated_at = ? "
                                     "WHERE plugin = ?", (now, name))
                        changes.append(f"{name} off at #{r.last}")
                    continue
                if r is None:
                    start = self.start_block(settings, name, floor() if floor is not None and head else None)
                    if head is None or start is None or (start > head.number):
                        conn.execute("INSERT INTO monmouth_plugin_progress VALUES (?, 'live', ?, NULL, NULL, ?)",
                                     (name, start if head is None else (head.number + 1 if start is None
                                                                        else start), now))
                        if head is not None:
                            log.warning("plugin %s joins at the head %s without history (start_block %s)", name,
                                        head, "latest" if start is None else start)
                        changes.append(f"{name} live")
                    else:
                        conn.execute("INSERT INTO monmouth_plugin_progress VALUES (?, 'catching_up', ?, ?, NULL, ?)",
                                     (name, start, start - 1, now))
                        changes.append(f"{name} catching up from block {start} to {head}")
                elif r.state == "off":
                    at_head = head is None or (r.last == head.number and r.last_hash == head.hash)
                    conn.execute("UPDATE monmouth_plugin_progress SET state = ?, last = ?, last_hash = ?, "
                                 "updated_at = ? WHERE plugin = ?",
                                 ("live" if at_head else "catching_up", None if at_head else r.last,
                                  None if at_head else r.last_hash, now, name))
                    changes.append(f"{name} live" if at_head else f"{name} catching up from block {r.next_block}")
        for name, r in self.ranges().items():
            if r.state == "catching_up" and name in self.host.enabled and self.host.pm.has_plugin(name):
                self.host.pm.unregister(name=name)  # no live chain hooks until it reaches the head
        for c in changes:
            log.info("progress: %s", c)
        return changes

    def join_without_history(self, name: str, why: str) -> None:
        """Make a plugin that is catching up live at the head without the blocks it misses (a source without
        history); its range then starts after the head (``first``), and the log says which blocks it lacks."""
        r, head = self.ranges()[name], self.engine.head
        if head is None:
            return
        with self.engine.conn as conn:
            conn.execute("UPDATE monmouth_plugin_progress SET state = 'live', first = ?, last = NULL, "
                         "last_hash = NULL, updated_at = ? WHERE plugin = ?", (head.number + 1, time.time(), name))
        if not self.host.pm.has_plugin(name):
            self.host.pm.register(self.host.installed[name], name=name)
        log.warning("plugin %s joins at the head %s WITHOUT blocks %d..%d: %s", name, head, r.next_block,
                    head.number, why)

    @staticmethod
    def start_block(settings: Settings, name: str, floor: int | None = None) -> int | None:
        """Where plugin ``name`` starts when it first joins: its own ``start_block``, else the source's
        (``None``: ``"latest"``, at the head)."""
        own = settings.plugins[name].start_block if name in settings.plugins else None
        if own is not None:
            return own
        start = settings.source.start_block
        if start == "latest":
            return None
        return int(start) if floor is None else max(int(start), floor)

    # ------------------------------------------------------------------------------------------------ catch-up
    def step(self, name: str, blocks: Sequence[Block]) -> tuple[int, bool]:
        """Apply history ``blocks`` (consecutive, from the plugin's next block) to plugin ``name`` alone, in one
        transaction, up to the engine head; joins it to the live stream when it reaches the head.

        Returns:
            ``(blocks applied, joined live)``.

        Raises:
            StaleHistoryError: a block is not canonical (reorged since fetched) or does not follow the range;
                nothing written.
            PluginError: the plugin raised; nothing written.
        """
        engine, conn = self.engine, self.engine.conn
        r = self.ranges().get(name)
        if r is None or r.state != "catching_up" or name not in self.host.enabled:
            return 0, False
        plugin = self.host.installed[name]
        head = engine.head
        engine.journal.refresh()
        number, parent = r.next_block, r.last_hash
        applied: list[Block] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for b in blocks:
                if head is None or b.number > head.number:
                    break
                if b.number != number or (parent is not None and b.parent_hash != parent):
                    raise StaleHistoryError(f"plugin {name!r}: history block {b.ref} does not follow its range "
                                            f"(next block #{number}, parent {'0x' + parent.hex() if parent else '?'})")
                stored = conn.execute("SELECT hash, changeset FROM monmouth_blocks WHERE number = ?",
                                      (b.number,)).fetchone()
                if stored is not None and stored[0] != b.hash:
                    raise StaleHistoryError(f"plugin {name!r}: history block {b.ref} is not canonical (the engine "
                                            f"has 0x{stored[0].hex()} at that height); fetching again")
                changeset = engine.journal.record(functools.partial(self._apply, plugin, name, conn, b), b.number)
                if changeset and stored is not None and stored[1] is not None:
                    conn.execute("UPDATE monmouth_blocks SET changeset = ? WHERE number = ?",
                                 (apsw.Changeset.concat(stored[1], changeset), b.number))
                applied.append(b)
                number, parent = b.number + 1, b.hash
            joined = head is not None and number == head.number + 1 and parent == head.hash
            conn.execute("UPDATE monmouth_plugin_progress SET state = ?, last = ?, last_hash = ?, updated_at = ? "
                         "WHERE plugin = ?", ("live" if joined else "catching_up", None if joined else number - 1,
                                              None if joined else parent, time.time(), name))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        if joined:
            self.host.pm.register(plugin, name=name)
            log.info("plugin %s caught up to %s and follows the head", name, head)
        if applied:
            try:
                call_one(plugin, "monmouth_notification_committed", notification=ChainCommitted(Chain(tuple(applied))),
                         head=BlockRef(number - 1, parent) if parent else None)
            except Exception as e:
                log.error("plugin %s: monmouth_notification_committed failed after catch-up: %s", name, e)
        return len(applied), joined

    def _apply(self, plugin: object, name: str, conn: apsw.Connection, b: Block) -> None:
        try:
            call_one(plugin, "monmouth_block_applied", conn=conn, block=b, notification=ChainCommitted(Chain((b,))))
        except Exception as e:
            raise self.host.blame(e, "monmouth_block_applied", b.ref) from e
