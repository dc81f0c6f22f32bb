"""The reorg journal: per-block undo data for every plugin table, recorded with SQLite's session extension.

While block ``n`` is applied, an ``apsw.Session`` records every row change the chain hooks make to journaled
tables. Its changeset is stored with the block in ``monmouth_blocks``. Reverting ``n`` applies the
inverted changeset (``sqlite3changeset_invert``), which restores every journaled table to exactly its state
before ``n``, whatever SQL the plugins ran. See https://sqlite.org/sessionintro.html.

Journaled tables are the ordinary tables of the main schema except the engine's own (``monmouth_*``),
virtual and shadow tables (FTS5, ``vec0``), and tables a plugin declared as *trimmed*. The session extension
needs a PRIMARY KEY; :func:`sidecar.store.migrate` refuses plugin tables without one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import apsw

from .errors import MonmouthError
from .store import ENGINE_PREFIX, table_kinds


class JournalConflictError(MonmouthError):
    """An inverted changeset did not match the current rows: a journaled table was changed outside the
    engine's chain hooks. The revert is rolled back."""


class RedactionError(MonmouthError, ValueError):
    """:func:`redact` was called on something it cannot redact (an engine table, an unknown table or column) or
    outside a write transaction. The message names it; nothing was changed."""


class Journal:
    """Records and inverts per-block changesets on one connection.

    Args:
        conn: the engine's write connection.
        trimmed: ``{table: block_number_column or None}`` of tables not to journal.
    """

    def __init__(self, conn: apsw.Connection, trimmed: Callable[[], Mapping[str, str | None]]) -> None:
        self.conn = conn
        self._trimmed = trimmed
        self._schema_version = -1
        self._excluded: frozenset[str] = frozenset()
        self._kinds: dict[str, str] = {}

    def refresh(self) -> None:
        """Re-read the schema if it changed (a plugin migration ran)."""
        version = int(self.conn.execute("PRAGMA schema_version").fetchall()[0][0])  # type: ignore[arg-type]
        trimmed = self._trimmed()
        if version == self._schema_version and set(trimmed) <= self._excluded:
            return
        self._kinds = table_kinds(self.conn)
        self._excluded = frozenset(
            name for name, kind in self._kinds.items()
            if kind != "table" or name.startswith(ENGINE_PREFIX)
        ) | frozenset(trimmed)
        self._schema_version = version

    def _journaled(self, table: str) -> bool:
        return table not in self._excluded

    def record(self, fn: Callable[[], None], number: int | None = None) -> bytes:
        """Run ``fn`` (the chain hooks of one block, ``number``) under a session; return its changeset (``b""`` if
        nothing changed)."""
        session = apsw.Session(self.conn, "main")
        try:
            session.table_filter(self._journaled)
            session.attach()
            fn()
            return session.changeset()
        finally:
            session.close()

    def undo(self, changeset: bytes, number: int | None = None) -> None:
        """Apply the inverse of ``changeset`` (block ``number``'s).

        Raises:
            JournalConflictError: the current rows differ from what the changeset recorded.
        """
        if not changeset:
            return
        conflicts: list[str] = []

        def on_conflict(reason: int, change: apsw.TableChange) -> int:
            conflicts.append(f"{change.name}: {apsw.mapping_session_conflict.get(reason, reason)}")
            return apsw.SQLITE_CHANGESET_ABORT

        try:
            apsw.Changeset.apply(apsw.Changeset.invert(changeset), self.conn, conflict=on_conflict)
        except apsw.AbortError as e:
            raise JournalConflictError(
                "undo conflict (a journaled table was changed outside the chain hooks): " + "; ".join(conflicts)
            ) from e

    def prune(self, horizon: int) -> None:
        """Nothing to do: the changesets live in ``monmouth_blocks`` (the engine clears them)."""

    def trim(self, number: int) -> None:
        """``DELETE`` rows at or above block ``number`` from every trimmed table that names its column."""
        for table, column in self._trimmed().items():
            if column and table in self._kinds:
                self.conn.execute(f'DELETE FROM "{table}" WHERE "{column}" >= ?', (number,))


def redact(conn: apsw.Connection, columns: Mapping[str, str], value: object) -> int:
    """Remove a value from the undo data: drop, from every block's stored changeset, each recorded change to a row of
    ``table`` whose column ``columns[table]`` equals ``value`` (for example every change to one agent's rows). The
    way to honour a right to be forgotten on journaled tables without leaving copies in the journal.

    Contract: call it inside the write transaction (``BEGIN IMMEDIATE`` on ``conn``, committed by the caller) that
    also deletes those rows. A later revert then restores every journaled table exactly as before, except the
    redacted rows, which it no longer touches (they stay deleted). A row is matched on the values the change
    recorded: an ``INSERT``'s new values, a ``DELETE``'s old ones, an ``UPDATE``'s old or new (an ``UPDATE`` records
    the primary key and the changed columns only, so redact by a primary-key column to match every ``UPDATE``).
    Changesets already pruned (finalized blocks) hold nothing to redact. On PostgreSQL (``conn`` from its backend)
    the undo rows recorded for ``value`` are deleted instead (every recorded image is a whole row there).

    Args:
        conn: a connection to the sidecar's database, inside a write transaction.
        columns: ``{table: column}``: the journaled tables to redact, each with the column that holds ``value``.
        value: the value to match (compared with ``==``, so ``bytes`` for a ``BLOB``).

    Returns:
        How many recorded changes were dropped.

    Raises:
        RedactionError: ``conn`` is not in a transaction, or a table is an engine table (``monmouth_*``), unknown,
            or has no such column. Nothing is changed.
    """
    own = getattr(conn, "redact", None)
    if own is not None:  # a PostgreSQL connection: its undo data is rows of monmouth_undo (sidecar.backends.postgres)
        return int(own(columns, value))
    if not conn.in_transaction:
        raise RedactionError("redact: call it inside the write transaction that deletes the redacted rows")
    index: dict[str, int] = {}
    for table, column in columns.items():
        if table.startswith(ENGINE_PREFIX):
            raise RedactionError(f"redact: {table!r} is an engine table, not a journaled plugin table")
        names = [row[1] for row in conn.execute(f'PRAGMA main.table_info("{table}")')]
        if not names:
            raise RedactionError(f"redact: no table {table!r}")
        if column not in names:
            raise RedactionError(f"redact: table {table!r} has no column {column!r} (it has {', '.join(names)})")
        index[table] = names.index(column)

    def matches(change: apsw.TableChange) -> bool:
        i = index.get(change.name)
        if i is None:
            return False
        recorded = (change.new,) if change.op == "INSERT" else (change.old,) if change.op == "DELETE" else (
            change.old, change.new)
        return any(vals is not None and i < len(vals) and vals[i] == value for vals in recorded)

    dropped = 0
    for number, changeset in conn.execute(
            f"SELECT number, changeset FROM {ENGINE_PREFIX}blocks WHERE changeset IS NOT NULL AND length(changeset) > 0"
    ).fetchall():
        builder = apsw.ChangesetBuilder()
        try:
            hits = 0
            for change in apsw.Changeset.iter(changeset):
                if matches(change):
                    hits += 1
                else:
                    builder.add_change(change)
            if hits:
                conn.execute(f"UPDATE {ENGINE_PREFIX}blocks SET changeset = ? WHERE number = ?",
                             (builder.output(), number))
                dropped += hits
        finally:
            builder.close()
    return dropped
