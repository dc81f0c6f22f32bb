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

    def record(self, fn: Callable[[], None]) -> bytes:
        """Run ``fn`` (the chain hooks of one block) under a session; return its changeset (``b""`` if nothing
        changed)."""
        session = apsw.Session(self.conn, "main")
        try:
            session.table_filter(self._journaled)
            session.attach()
            fn()
            return session.changeset()
        finally:
            session.close()

    def undo(self, changeset: bytes) -> None:
        """Apply the inverse of ``changeset``.

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

    def trim(self, number: int) -> None:
        """``DELETE`` rows at or above block ``number`` from every trimmed table that names its column."""
        for table, column in self._trimmed().items():
            if column and table in self._kinds:
                self.conn.execute(f'DELETE FROM "{table}" WHERE "{column}" >= ?', (number,))
