"""What the memory plugin does differently on SQLite and on PostgreSQL: the only backend-specific code of the plugin.

Everything else (:mod:`.items`, :mod:`.ingest`, :mod:`.lattice`, ...) runs one set of portable SQL on both: ``?``
placeholders, ``INSERT ... ON CONFLICT``, ``RETURNING``, the same tables and columns (:data:`.schema.MIGRATIONS`
and :data:`.schema.PG_MIGRATIONS`). :func:`of` picks the dialect of a connection or a database; each dialect is
one class here:

==========================  ===================================  ==================================================
concern                     :class:`Sqlite`                      :class:`Postgres`
==========================  ===================================  ==================================================
keyed full-text index       FTS5 table ``memory_fts`` (rowid n)  ``memory_fts (n, tokens tsvector)`` + GIN index
recall keyword score        ``-bm25(memory_fts)``                ``ts_rank(tokens, query)``
the plugin's writers        SQLite's one write lock              the transaction advisory lock :data:`WRITE_LOCK`
                            (``BEGIN IMMEDIATE``)                taken first in each of them and in the chain hooks
deleted data on disk        ``secure_delete``, WAL truncated     ``VACUUM`` of the purged tables after a forget
derived rows without fsync  ``synchronous = NORMAL``             ``synchronous_commit = off`` (transaction-local)
lattice found from SQL      the file's real path                 ``host:port/dbname`` of the server
==========================  ===================================  ==================================================

Why one lock for the plugin's writers on PostgreSQL (docs/storage.md): every memory write (API, CLI, worker,
forget) and the engine's memory hooks run at ``READ COMMITTED`` and take :data:`WRITE_LOCK` with
``pg_advisory_xact_lock`` before their first statement, so they run one after the other exactly as under SQLite's
single write lock: an API update's read-modify-write of an item version, a settle deriving a block the engine is
reverting, the anchoring of the op log all see each other whole. Nothing waits on a serialization failure (no
``SERIALIZABLE``), so none reaches a client; the lock is released at commit or rollback. No deadlock: a writer
that holds the lock never waits on a row the engine locked before taking it. The engine's transaction takes it in
its first memory hook; before that, on a revert, it touches only the journaled ``memory_sync`` and
``memory_registry``, which chain hooks alone write, because the plugin's revert hook trims the memory tables the
engine would otherwise trim (:data:`.schema.REVERT_TRIMMED`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

from monmouth.backends import execute_later, executemany_later

#: ``pg_advisory_xact_lock`` key of the memory plugin's writers on PostgreSQL ("MM" + 0x0003).
WRITE_LOCK = 0x4D4D_0003
#: PostgreSQL keeps at most this position in a ``tsvector`` (larger ones are clamped).
_MAX_POS = 16383
#: SQLite's WAL file size kept after a restart of it (bytes).
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
#: Tables a forget deletes from (``monmouth_undo``: the row images :func:`monmouth.journal.redact` deleted);
#: PostgreSQL vacuums them afterwards so no dead row version keeps a ciphertext.
PURGED = ("memory_items", "memory_fts", "memory_vectors", "memory_embed_queue", "memory_tags", "memory_ops",
          "memory_leaves", "memory_marks", "memory_root_cache", "memory_agents", "memory_registry", "monmouth_undo")
#: Open leaves whose ``{column}`` is at or below a bound (``{hint}``: an index hint, or nothing).
_EXPIRING = ("SELECT agent, item_id, from_block FROM memory_leaves{hint} WHERE to_block IS NULL AND {column} IS NOT "
             "NULL AND {column} <= ?")


class Sqlite:
    """The SQLite side (apsw connections, :class:`monmouth.store.Database`)."""

    backend = "sqlite"

    @staticmethod
    def key(conn: Any) -> str:
        """Which database ``conn`` is on (the file's real path): finds the running lattice from SQL."""
        try:
            return os.path.realpath(conn.filename)
        except Exception:  # pragma: no cover - a connection without a file name
            return ""

    @staticmethod
    def chain_write(conn: Any) -> None:
        """Before the plugin writes in a transaction it did not open (the engine's): deletes zero the freed pages."""
        conn.pragma("secure_delete", 1)

    @staticmethod
    @contextlib.contextmanager
    def write(db: Any, durable: bool = True) -> Iterator[Any]:
        """See :func:`.txn.write`: ``secure_delete`` on, no WAL auto-checkpoint, ``synchronous = NORMAL`` for a
        non-durable transaction (restored afterwards)."""
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

    @staticmethod
    def fts_add(conn: Any, rows: Sequence[tuple[int, str]]) -> None:
        """Add the keyed full-text entries ``(n, space-separated tokens)``."""
        conn.executemany("INSERT INTO memory_fts (rowid, tokens) VALUES (?, ?)", rows)

    @staticmethod
    def fts_remove(conn: Any, ns: Sequence[int]) -> None:
        conn.execute(f"DELETE FROM memory_fts WHERE rowid IN ({','.join('?' * len(ns))})", tuple(ns))

    @staticmethod
    def fts_remove_from(conn: Any, lo: int) -> None:
        conn.execute("DELETE FROM memory_fts WHERE rowid >= ?", (lo,))

    @staticmethod
    def fts_search(conn: Any, agent: bytes, tokens: Sequence[str], limit: int) -> list[tuple[int, float]]:
        """``[(n, score)]`` of ``agent``'s items holding any of ``tokens``, best (highest score) first."""
        match = " OR ".join(f'"{t}"' for t in tokens)
        return [(n, -s) for n, s in conn.execute(
            "SELECT f.rowid, bm25(memory_fts) FROM memory_fts f JOIN memory_items i ON i.n = f.rowid "
            "WHERE memory_fts MATCH ? AND i.agent = ? ORDER BY rank LIMIT ?", (match, agent, limit))]

    #: Open leaves expiring at a block, and at a time (``INDEXED BY``: the planner took the wide primary key).
    EXPIRE_BLOCK = _EXPIRING.format(hint=" INDEXED BY memory_leaves_eb", column="expires_block")
    EXPIRE_TS = _EXPIRING.format(hint=" INDEXED BY memory_leaves_et", column="expires_ts")

    @staticmethod
    def checkpoint(db: Any) -> None:
        """The worker's periodic WAL checkpoint (passive: API writes do not auto-checkpoint, :func:`write`)."""
        db.checkpoint_wal()

    @staticmethod
    def after_purge(db: Any) -> None:
        """After a forget committed: merge the FTS5 segments (dropping deleted entries) and truncate the WAL, so no
        copy of a deleted row stays in the file."""
        import apsw

        conn = db.reader()
        conn.execute("INSERT INTO memory_fts (memory_fts) VALUES ('optimize')")
        conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)


class Postgres:
    """The PostgreSQL side (:class:`monmouth.backends.postgres.PgConnection`, ``PgDatabase``)."""

    backend = "postgres"

    @staticmethod
    def key(conn: Any) -> str:
        info = conn.raw.info
        return f"postgres://{info.host}:{info.port}/{info.dbname}"

    @staticmethod
    def chain_write(conn: Any) -> None:
        """Before the plugin writes in the engine's transaction: take :data:`WRITE_LOCK` (module docstring). Queued
        (:func:`monmouth.backends.execute_later`): taken on the server before the plugin's next statement runs."""
        execute_later(conn, "SELECT pg_advisory_xact_lock(?)", (WRITE_LOCK,))

    @staticmethod
    @contextlib.contextmanager
    def write(db: Any, durable: bool = True) -> Iterator[Any]:
        """See :func:`.txn.write`: one ``READ COMMITTED`` transaction holding :data:`WRITE_LOCK`; a non-durable one
        commits without waiting for its WAL flush (``synchronous_commit = off``, this transaction only)."""
        with db.write() as w:
            # queued: they reach the server with the transaction's first statement, in its round trip
            execute_later(w, "SELECT pg_advisory_xact_lock(?)", (WRITE_LOCK,))
            if not durable:
                execute_later(w, "SET LOCAL synchronous_commit = off")
            yield w

    @staticmethod
    def tsvector(tokens: str) -> str:
        """The ``tsvector`` input of the keyed tokens ``tokens`` (space-separated hex): each a lexeme as it is (no
        text-search parser or stemmer), at its position (clamped at 16383)."""
        return " ".join(f"{t}:{min(i, _MAX_POS)}" for i, t in enumerate(tokens.split(), start=1))

    #: One keyword row: the item row id and :meth:`tsvector` of its tokens.
    INSERT_FTS = "INSERT INTO memory_fts (n, tokens) VALUES (?, ?::tsvector)"

    @staticmethod
    def fts_add(conn: Any, rows: Sequence[tuple[int, str]]) -> None:
        """Queued (:func:`monmouth.backends.executemany_later`): sent with the transaction's next statement."""
        executemany_later(conn, Postgres.INSERT_FTS, [(n, Postgres.tsvector(tokens)) for n, tokens in rows])

    @staticmethod
    def fts_remove(conn: Any, ns: Sequence[int]) -> None:
        conn.execute("DELETE FROM memory_fts WHERE n = ANY(?)", (list(ns),))

    @staticmethod
    def fts_remove_from(conn: Any, lo: int) -> None:
        conn.execute("DELETE FROM memory_fts WHERE n >= ?", (lo,))

    @staticmethod
    def fts_search(conn: Any, agent: bytes, tokens: Sequence[str], limit: int) -> list[tuple[int, float]]:
        """``[(n, score)]`` as :meth:`Sqlite.fts_search`, scored by ``ts_rank`` (term frequency; docs/storage.md)."""
        query = " | ".join(tokens)
        return [(n, float(s)) for n, s in conn.execute(
            "SELECT f.n, ts_rank(f.tokens, q) AS score FROM memory_fts f JOIN memory_items i ON i.n = f.n, "
            "CAST(? AS tsquery) q WHERE f.tokens @@ q AND i.agent = ? ORDER BY score DESC, f.n LIMIT ?",
            (query, agent, limit))]

    EXPIRE_BLOCK = _EXPIRING.format(hint="", column="expires_block")
    EXPIRE_TS = _EXPIRING.format(hint="", column="expires_ts")

    @staticmethod
    def checkpoint(db: Any) -> None:
        """Nothing: the server checkpoints its own WAL."""

    @staticmethod
    def after_purge(db: Any) -> None:
        """After a forget committed: ``VACUUM`` the tables it deleted from, so their dead row versions (which still
        hold the deleted ciphertexts until vacuumed) are removed now rather than at the next autovacuum."""
        conn = db.reader()
        conn.execute("VACUUM " + ", ".join(PURGED))


Dialect = type[Sqlite] | type[Postgres]


def of(target: Any) -> Dialect:
    """The dialect of a connection or a database (``backend`` attribute: ``"postgres"``; apsw connections have
    none and are SQLite)."""
    return Postgres if getattr(target, "backend", "sqlite") == "postgres" else Sqlite
