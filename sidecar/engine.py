"""The exactly-once, reorg-safe engine.

Invariants (each is tested; ``tests/test_engine.py`` checks them property-based with hypothesis):

1. **All of a notification or nothing.** :meth:`Engine.apply` opens one ``BEGIN IMMEDIATE`` transaction,
   reverts the old chain newest block first, applies the new chain oldest block first, moves the cursor,
   prunes undo data, and commits. A failure anywhere rolls everything back: nothing is half-applied and the
   cursor does not move. :meth:`Engine.apply_many` (group commit) does the same for each of several
   notifications inside one transaction, each in a savepoint, committing those before the first failure.
2. **Exact reverts.** Every change a plugin makes in ``monmouth_block_applied`` to a journaled table is
   undone exactly when that block is reverted (see :mod:`sidecar.journal`). Hence after any sequence of
   commits, reorgs and reverts, the plugin tables equal what applying only the final canonical chain to an
   empty database produces.
3. **Continuity.** A notification is applied only if it connects to the cursor: its reverted chain ends at
   the head, and its committed chain builds on the head (after the revert). Otherwise
   :class:`~sidecar.errors.ContinuityError` names both hashes and nothing is written.
4. **Idempotence.** A notification whose committed tip is already canonical (or, for a revert, whose blocks
   are already gone) is skipped without writing; a committed chain that overlaps the head is applied from
   the first new block.
5. **Bounded undo.** Undo data is kept for blocks above ``max(finalized, head - undo_window)``; a revert below
   that raises :class:`~sidecar.errors.ReorgTooDeepError` before anything is written.

The engine is synchronous; the runner calls it from a worker thread (``anyio.to_thread``). It runs unchanged on both
backends (:mod:`sidecar.backends`): a SQLite file, where the journal is SQLite's session extension, and PostgreSQL,
where it is row triggers (:mod:`sidecar.backends.postgres`) and an advisory lock makes this engine the only writer.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .backends import Backend, Connection, UndoJournal, execute_later
from .config import EngineConfig
from .errors import ContinuityError, PluginError, ReorgTooDeepError
from .journal import Journal, JournalConflictError
from .metrics import Metrics
from .plugins import PluginHost
from .types import Block, BlockRef, ChainCommitted, ChainReverted, Notification

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """Outcome of :meth:`Engine.apply`: ``applied`` is False when the notification was skipped as already
    applied; ``reverted``/``committed`` count blocks; ``head`` is the head afterwards."""

    applied: bool
    reverted: int
    committed: int
    head: BlockRef | None


@dataclass(frozen=True, slots=True)
class StoredBlock:
    """A canonical block as the engine remembers it (header fields only)."""

    number: int
    hash: bytes
    parent_hash: bytes
    timestamp: int
    revertible: bool

    @property
    def ref(self) -> BlockRef:
        return BlockRef(self.number, self.hash)

    def as_block(self) -> Block:
        """A header-only :class:`Block` (no transactions), as handed to revert hooks by the ``rpc`` source."""
        return Block(self.number, self.hash, self.parent_hash, self.timestamp, b"\x00" * 20, 0, 0)


@dataclass(frozen=True, slots=True)
class Cursor:
    """The engine's durable position, as the last committed notification left it.

    Attributes:
        head: the head block (number and hash), ``None`` on an empty database.
        finalized: the last finalized block number the source reported, or ``None``.
        notifications: notifications applied so far (skipped ones not counted).
        reorgs: of those, the ones that reverted blocks.
        source_token: the source's position of the last committed notification (a JSON value), or ``None``.
    """

    head: BlockRef | None
    finalized: int | None
    notifications: int
    reorgs: int
    source_token: object


def read_cursor(conn: Connection) -> Cursor:
    """The engine's cursor as seen by ``conn`` (committed data, or an open transaction's own changes on that
    connection): the public way for plugins, tools and backups to read it. Works on any database the sidecar wrote,
    a copy or a checkpoint included.

    Raises:
        apsw.SQLError: ``conn`` is not a Monmouth database (no ``monmouth_cursor`` table).
    """
    row = conn.execute(
        "SELECT number, hash, finalized, notifications, reorgs, source_token FROM monmouth_cursor WHERE id = 1"
    ).fetchone()
    if row is None:  # created with its row by Database(); an empty table is a database cut short
        return Cursor(None, None, 0, 0, None)
    return Cursor(BlockRef(row[0], row[1]) if row[0] is not None else None, row[2], row[3], row[4],
                  json.loads(row[5]) if row[5] else None)


def canonical_hash(conn: Connection, number: int) -> bytes | None:
    """The hash (32 bytes) of the canonical block at ``number`` as seen by ``conn``, or ``None`` when the engine
    holds no block there: not applied yet, reverted, or older than its hash history (``engine.history`` blocks
    below the head). The public way for plugins to ask whether a block they recorded (a job, a checkpoint, a
    certificate) is still on the canonical chain; on a chain hook's connection it sees that transaction's blocks.

    Raises:
        apsw.SQLError: ``conn`` is not a Monmouth database (no ``monmouth_blocks`` table).
    """
    row = conn.execute("SELECT hash FROM monmouth_blocks WHERE number = ?", (number,)).fetchone()
    return bytes(row[0]) if row else None


class Engine:
    """Applies notifications to the database exactly once.

    Args:
        db: the database.
        host: the plugin host (its enabled plugins receive chain hooks).
        config: ``[engine]`` settings (undo window and hash history, in blocks).
        metrics: core metrics, or ``None``.
    """

    def __init__(self, db: Backend, host: PluginHost, config: EngineConfig | None = None,
                 metrics: Metrics | None = None) -> None:
        self.db = db
        self.host = host
        self.config = config or EngineConfig()
        self.metrics = metrics
        self.conn = self._connect()
        self.journal = self._journal(self.conn)
        self._load_cursor()

    def _connect(self) -> Any:
        """The engine's write connection (on PostgreSQL it takes the ingestion lock)."""
        return self.db.engine_connection()

    def _journal(self, conn: Connection) -> UndoJournal:
        """The backend's journal (PostgreSQL: row triggers), else SQLite's session-extension :class:`Journal`."""
        trimmed = lambda: self.host.trimmed_tables  # noqa: E731 - read at each use: plugins come and go
        return self.db.journal(conn, trimmed) or Journal(conn, trimmed)  # type: ignore[arg-type]

    def _load_cursor(self) -> None:
        cursor = read_cursor(self.conn)
        self._head: BlockRef | None = cursor.head
        # The head inside an open transaction (apply_many moves it notification by notification); ``_head`` is the
        # committed one, the only one other threads see.
        self._working: BlockRef | None = self._head
        self.finalized: int | None = cursor.finalized
        self.notifications_seen: int = cursor.notifications
        self.reorgs_seen: int = cursor.reorgs
        self._token: object = cursor.source_token

    def reconnect(self) -> None:
        """Replace the write connection (closed, or broken by an I/O fault) with a new one and re-read the cursor
        from the database. Call only between notifications, on the engine's thread.

        Raises:
            apsw.Error: the database cannot be opened (yet); the engine keeps the old connection.
            StorageError: (PostgreSQL) the server cannot be reached yet, or another engine took the ingestion lock.
        """
        conn = self.db.engine_connection(replacing=self.conn)
        with contextlib.suppress(Exception):
            self.conn.close()
        self.conn = conn
        self.journal = self._journal(conn)
        self._load_cursor()

    # ------------------------------------------------------------------------------------------------ queries
    @property
    def head(self) -> BlockRef | None:
        """The durable head (block number and hash), ``None`` on an empty database."""
        return self._head

    @property
    def source_token(self) -> object:
        """The delivery token stored with the last committed notification (JSON value), or ``None``."""
        return self._token

    def canonical(self, number: int, conn: Connection | None = None) -> StoredBlock | None:
        """The canonical block at ``number`` if still in the hash history (``engine.history`` blocks), read on
        ``conn`` (default: the engine's own connection, which also sees an open transaction's changes)."""
        row = (conn or self.conn).execute(
            "SELECT number, hash, parent_hash, timestamp, changeset IS NOT NULL FROM monmouth_blocks WHERE number = ?",
            (number,),
        ).fetchone()
        return StoredBlock(row[0], row[1], row[2], row[3], bool(row[4])) if row else None

    def oldest_revertible(self) -> int | None:
        return self._scalar("SELECT min(number) FROM monmouth_blocks WHERE changeset IS NOT NULL")

    def _scalar(self, sql: str, params: tuple[object, ...] = ()) -> Any:
        row = self.conn.execute(sql, params).fetchone()
        return None if row is None else row[0]

    # ------------------------------------------------------------------------------------------------ apply
    def apply(self, notification: Notification, token: object = None) -> ApplyResult:
        """Apply one notification in one transaction.

        ``token`` is the source's position of this notification (a JSON-able value, e.g. the bridge's
        ``{"epoch": e, "seq": s}`` or a replay frame index). It is stored in the same transaction as the
        cursor, so a source can resume exactly after the last committed notification and drop stale
        re-deliveries without applying them (see :attr:`source_token`). A skipped notification still
        records its token.

        Raises:
            ContinuityError: it does not connect to the head (gap or unknown fork); nothing written.
            ReorgTooDeepError: it reverts a block whose undo data was pruned; nothing written.
            PluginError: a chain hook raised; everything rolled back.
            JournalConflictError: undo data did not match the tables; everything rolled back.
        """
        results, error = self.apply_many(((notification, token),))
        if error is not None:
            raise error
        return results[0]

    def apply_many(self, items: Iterable[tuple[Notification, object]]) -> tuple[list[ApplyResult], Exception | None]:
        """Apply notifications in order, in one transaction (group commit), each after the first inside its own
        savepoint.

        Exactly as if each ``(notification, token)`` were passed to :meth:`apply` in turn, except that they share
        one ``COMMIT`` (one WAL fsync) and one trip to the worker thread: the way to keep up with a backlog. The
        first item that fails is rolled back (to its savepoint, or the whole transaction if it is the first), the
        items before it are committed, and iteration stops there. ``items`` is consumed lazily, so it may decode as
        it goes; what it raises counts as that item's failure.

        Returns:
            ``(results, error)``: the results of the committed items, in order, and the exception that stopped
            the batch (``None`` if every item was applied or skipped). The error is one :meth:`apply` raises,
            or whatever ``items`` raised (e.g. :class:`~monmouth.errors.CodecError`).

        Raises:
            apsw.Error: the ``COMMIT`` itself failed (disk full, I/O error), or SQLite rolled the transaction back
                on such a fault: nothing of the batch is written.
        """
        conn = self.conn
        self.journal.refresh()
        token_after = self._token
        results: list[ApplyResult] = []
        done: list[tuple[Notification, ApplyResult, float]] = []
        error: Exception | None = None
        wrote = False
        rolled_back = False  # the first item failed and this method rolled the transaction back
        conn.execute("BEGIN IMMEDIATE")
        try:
            for notification, token in items:
                t0 = time.perf_counter()
                # The first item needs no savepoint: the transaction is its savepoint. An open savepoint makes SQLite
                # copy every page a statement changes into a statement journal first, which costs a third of a
                # 200-transaction block's apply (bench/ingest.py).
                savepoint = bool(done)
                if savepoint:
                    conn.execute("SAVEPOINT monmouth_notification")
                try:
                    result = self._apply(conn, notification)
                    if token is not None:
                        execute_later(conn, "UPDATE monmouth_cursor SET source_token = ? WHERE id = 1",
                                      (json.dumps(token),))
                except Exception as e:
                    if conn.in_transaction:  # SQLite may have rolled the whole transaction back (SQLITE_FULL, IOERR)
                        if savepoint:
                            conn.execute("ROLLBACK TO monmouth_notification")
                            conn.execute("RELEASE monmouth_notification")
                        else:
                            conn.execute("ROLLBACK")
                            rolled_back = True
                    self._count_error(e)
                    raise
                if savepoint:
                    conn.execute("RELEASE monmouth_notification")
                wrote = wrote or result.applied or token is not None
                if token is not None:
                    token_after = token
                if result.applied:
                    self._working = result.head
                results.append(result)
                done.append((notification, result, t0))
        except Exception as e:
            error = e
        except BaseException:
            conn.execute("ROLLBACK")
            self._working = self._head
            raise
        try:
            if rolled_back:
                return results, error
            if not conn.in_transaction:
                # SQLite rolled the whole transaction back on a fault (disk full, I/O error): nothing of the batch
                # is written, the notifications before the failing one included.
                assert error is not None
                raise error
            conn.execute("COMMIT" if wrote else "ROLLBACK")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._working = self._head
            raise
        # Published only now that it is durable.
        self._head, self._token = self._working, token_after
        for _, result, _ in done:
            if result.applied:
                self.notifications_seen += 1
                self.reorgs_seen += 1 if result.reverted else 0
        if self.metrics is not None:
            now = time.perf_counter()
            for notification, result, t0 in done:
                self._observe(notification, result, now - t0)
            if wrote:
                self.metrics.commit_notifications.observe(len(done))
        return results, error

    def _observe(self, notification: Notification, result: ApplyResult, seconds: float) -> None:
        m = self.metrics
        assert m is not None
        m.notifications.labels(notification.kind, "applied" if result.applied else "skipped").inc()
        m.notification_seconds.observe(seconds)
        if result.applied:
            m.blocks.labels("applied").inc(result.committed)
            if result.reverted:
                m.blocks.labels("reverted").inc(result.reverted)
                m.reorg_depth.observe(result.reverted)
            if result.head is not None:
                m.head.set(result.head.number)

    def _count_error(self, e: BaseException) -> None:
        if self.metrics is None:
            return
        kind = {
            ContinuityError: "continuity", ReorgTooDeepError: "reorg_too_deep", PluginError: "plugin",
            JournalConflictError: "journal_conflict",
        }.get(type(e), "engine")
        self.metrics.errors.labels(kind).inc()

    def _is_canonical(self, ref: BlockRef) -> bool:
        head = self._working
        if head is None or ref.number > head.number:
            return False
        row = self.conn.execute("SELECT hash FROM monmouth_blocks WHERE number = ?", (ref.number,)).fetchone()
        if row is None:
            # Older than the hash history: only a re-delivery of long-applied blocks can reach here.
            oldest = self._scalar("SELECT min(number) FROM monmouth_blocks")
            return oldest is not None and ref.number < oldest
        return bool(row[0] == ref.hash)

    def _apply(self, conn: Connection, n: Notification) -> ApplyResult:
        head = self._working
        old = None if isinstance(n, ChainCommitted) else n.old
        new = None if isinstance(n, ChainReverted) else n.new

        # Idempotence: already applied?
        if new is not None and self._is_canonical(new.tip.ref):
            return ApplyResult(False, 0, 0, head)
        if new is None and old is not None and head == old.fork_point and not self._is_canonical(old.first.ref):
            return ApplyResult(False, 0, 0, head)

        reverted = 0
        if old is not None and head != old.fork_point:
            if head is None or head != old.tip.ref:
                raise ContinuityError(
                    f"{n.kind} reverts up to {old.tip.ref} but the head is {head or 'empty'}; refusing an unknown fork",
                    expected=head, got=old.tip.ref,
                )
            rows = {
                r[0]: (r[1], r[2]) for r in conn.execute(
                    "SELECT number, hash, changeset FROM monmouth_blocks WHERE number BETWEEN ? AND ?",
                    (old.first.number, old.tip.number),
                )
            }
            for b in old.blocks:
                stored = rows.get(b.number)
                if stored is None or stored[1] is None:
                    oldest = self.oldest_revertible()
                    held = (f"undo data is held only from block {oldest}" if oldest is not None else
                            f"no undo data is held (every block up to the head {head.number} is finalized or "
                            "outside the undo window)")
                    raise ReorgTooDeepError(
                        f"{n.kind} of depth {len(old)} reverts block {b.ref}, but {held} (finalized "
                        f"{self.finalized}, undo_window {self.config.undo_window}); see "
                        "docs/faults.md (wait for the node to return to the indexed chain, or restore a backup "
                        f"older than block {old.first.number} or re-index)",
                        depth=len(old), block=b.ref,
                    )
                if stored[0] != b.hash:
                    raise ContinuityError(
                        f"{n.kind} reverts {b.ref} but the canonical block at that height is "
                        f"0x{stored[0].hex()}; refusing an unknown fork",
                        expected=BlockRef(b.number, stored[0]), got=b.ref,
                    )
            for b in reversed(old.blocks):
                self._revert_block(conn, b, rows[b.number][1], n)
            reverted = len(old)
            head = old.fork_point

        committed = 0
        if new is not None:
            blocks = new.blocks
            i = 0
            while i < len(blocks) and head is not None and blocks[i].number <= head.number and self._is_canonical(
                    blocks[i].ref):
                i += 1
            blocks = blocks[i:]
            first = blocks[0]
            if head is not None and first.parent != head:
                what = "gap" if first.number > head.number + 1 else "unknown fork"
                raise ContinuityError(
                    f"{n.kind} does not connect ({what}): its block {first.ref} builds on "
                    f"#{first.number - 1} 0x{first.parent_hash.hex()}, but the head is {head}",
                    expected=head, got=first.parent,
                )
            for b in blocks:
                self._apply_block(conn, b, n)
            committed = len(blocks)
            head = blocks[-1].ref

        now = time.time()
        execute_later(
            conn, "UPDATE monmouth_cursor SET number = ?, hash = ?, notifications = notifications + 1, "
            "reorgs = reorgs + ?, updated_at = ? WHERE id = 1",
            (head.number if head else None, head.hash if head else None, 1 if reverted else 0, now),
        )
        if head is not None:
            self._prune(conn, head.number, self.finalized)
        return ApplyResult(True, reverted, committed, head)

    def _apply_block(self, conn: Connection, b: Block, n: Notification) -> None:
        hook = self.host.hook.monmouth_block_applied

        def run() -> None:
            try:
                hook(conn=conn, block=b, notification=n)
            except Exception as e:
                raise self.host.blame(e, "monmouth_block_applied", b.ref) from e

        changeset = self.journal.record(run, b.number)
        execute_later(
            conn, "INSERT INTO monmouth_blocks (number, hash, parent_hash, timestamp, changeset, applied_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (b.number, b.hash, b.parent_hash, b.timestamp, changeset, time.time()),
        )

    def _revert_block(self, conn: Connection, b: Block, changeset: bytes, n: Notification) -> None:
        self.journal.undo(changeset, b.number)
        self.journal.trim(b.number)
        try:
            self.host.hook.monmouth_block_reverted(conn=conn, block=b, notification=n)
        except Exception as e:
            raise self.host.blame(e, "monmouth_block_reverted", b.ref) from e
        execute_later(conn, "DELETE FROM monmouth_blocks WHERE number = ?", (b.number,))

    def _prune(self, conn: Connection, head_number: int, finalized: int | None) -> None:
        horizon = head_number - self.config.undo_window
        if finalized is not None:
            horizon = max(horizon, min(finalized, head_number))
        # The partial index monmouth_blocks_revertible makes this touch only the rows it prunes.
        execute_later(
            conn, "UPDATE monmouth_blocks SET changeset = NULL WHERE changeset IS NOT NULL AND number <= ?", (horizon,)
        )
        self.journal.prune(horizon)
        execute_later(conn, "DELETE FROM monmouth_blocks WHERE number <= ?", (head_number - self.config.history,))

    # ------------------------------------------------------------------------------------------------ finalized
    def set_finalized(self, number: int) -> bool:
        """Record the source's finalized block, prune undo data at or below it, and call ``monmouth_finalized``
        in one transaction. Returns False (and writes nothing) unless ``number`` advanced.

        Raises:
            PluginError: a ``monmouth_finalized`` hook raised; nothing written.
        """
        if self.finalized is not None and number <= self.finalized:
            return False
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            if self._head is not None:
                self._prune(conn, self._head.number, number)
            # Executed after the prune, so it sends the prune's queued statements (execute_later) before the hooks.
            conn.execute("UPDATE monmouth_cursor SET finalized = ? WHERE id = 1", (number,))
            try:
                self.host.hook.monmouth_finalized(conn=conn, number=number)
            except Exception as e:
                raise self.host.blame(e, "monmouth_finalized") from e
        except BaseException as e:
            conn.execute("ROLLBACK")
            self._count_error(e)
            raise
        conn.execute("COMMIT")
        self.finalized = number
        if self.metrics is not None:
            self.metrics.finalized.set(number)
        return True

    def close(self) -> None:
        self.conn.close()
