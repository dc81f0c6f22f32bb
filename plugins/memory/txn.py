"""The memory plugin's own write transactions, outside the engine's (API writes, settling, indexing, forget).

:func:`write` is the core's :meth:`monmouth.store.Database.write` (``BEGIN IMMEDIATE`` on the calling thread's
connection, commit or roll back) on a connection set up for this plugin: ``secure_delete`` on (deleted memory is
zeroed on disk), no WAL auto-checkpoint (it made 1 API write in 8 wait ~20 ms for an fsync of the database: the
engine's commits and the plugin's worker checkpoint instead), and the WAL file shrunk to 64 MiB when it restarts.

Settling and indexing (:mod:`.ingest`) write only what they derive from committed rows, so their transactions are
not made durable one by one (``durable=False``: ``synchronous = NORMAL`` for that transaction, no fsync at its
commit). In WAL mode such a commit is still atomic and ordered: a crash of the process loses nothing, and a power
loss can drop only those committed since the last fsync of the WAL (every engine commit and API write fsyncs it),
each whole; the pending rows they consumed are then still there and are settled again, deriving the same rows.
The fsync per settle or index transaction was a third of the worker's time.

On PostgreSQL (:class:`.dialect.Postgres`) the same transaction is one ``READ COMMITTED`` transaction that takes the
plugin's advisory write lock first, and ``durable=False`` is ``synchronous_commit = off`` for it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from . import dialect


def write(db: Any, durable: bool = True) -> AbstractContextManager[Any]:
    """A write transaction of the plugin on ``db`` (a ``monmouth.store.Database`` or ``PgDatabase``); see the
    module docstring. ``durable=False``: derived rows only, committed without an fsync.

    Raises:
        apsw.BusyError: SQLite's write lock was not free within the connection's busy timeout.
    """
    return dialect.of(db).write(db, durable)


__all__ = ["write"]
