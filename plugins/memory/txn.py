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
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import apsw

JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024


@contextlib.contextmanager
def write(db: Any, durable: bool = True) -> Iterator[apsw.Connection]:
    """A write transaction of the plugin on ``db`` (a ``monmouth.store.Database``); see the module docstring.
    ``durable=False``: derived rows only, committed without an fsync (``synchronous = NORMAL`` for this
    transaction; the connection's own level is restored afterwards).

    Raises:
        apsw.BusyError: SQLite's write lock was not free within the connection's busy timeout.
    """
    conn = db.reader()
    conn.pragma("secure_delete", 1)
    conn.wal_autocheckpoint(0)
    conn.pragma("journal_size_limit", JOURNAL_SIZE_LIMIT)
    if durable:
        with db.write() as w:
            yield w
        return
    conn.pragma("synchronous", "NORMAL")
    try:
        with db.write() as w:
            yield w
    finally:
        conn.pragma("synchronous", db.synchronous)
