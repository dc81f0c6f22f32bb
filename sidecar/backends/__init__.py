"""The storage seam: what the engine and the plugin host need from a database, whichever it is.

Two backends implement :class:`Backend`:

==========  ====================================  ==================================================================
name        class                                 undo data (the reorg journal)
==========  ====================================  ==================================================================
``sqlite``  :class:`sidecar.store.Database`        SQLite session changesets per block (:mod:`sidecar.journal`)
``postgres``  :class:`sidecar.backends.postgres.PgDatabase`  old and new row images per block, recorded by row
                                                  triggers (:mod:`sidecar.backends.postgres`; docs/storage.md)
==========  ====================================  ==================================================================

Both hand out connections with the same small surface (:class:`Connection`: apsw's ``execute`` with ``?``
placeholders, ``in_transaction``, ``close``), so the engine's SQL and a plugin's portable SQL run unchanged on both.
:func:`sidecar.app.open_database` picks the backend from ``[storage]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from typing import Any, Protocol

import apsw

try:
    import psycopg

    _PG_ERRORS: tuple[type[BaseException], ...] = (psycopg.Error,)
    _PG_LOST: tuple[type[BaseException], ...] = (psycopg.OperationalError,)
    _PG_CANCELED: tuple[type[BaseException], ...] = (psycopg.errors.QueryCanceled,)
    _PG_LOCK_TIMEOUT: tuple[type[BaseException], ...] = (psycopg.errors.LockNotAvailable,)
except ImportError:  # pragma: no cover - psycopg is only needed for storage.url = "postgresql://..."
    _PG_ERRORS = _PG_LOST = _PG_CANCELED = _PG_LOCK_TIMEOUT = ()

#: What either driver raises for a database error (a failed ``COMMIT`` included).
DRIVER_ERRORS: tuple[type[BaseException], ...] = (apsw.Error, *_PG_ERRORS)


#: What the current task or thread is doing for the HTTP API (a context variable: the worker threads of sync routes
#: inherit it): ``"read"`` inside a request that only reads (``GET``, ``HEAD``), ``"request"`` inside any other,
#: ``None`` elsewhere (the engine, plugin workers, start-up). PostgreSQL reads it to pick a connection: requests get
#: ``storage.statement_timeout`` (a slow query is cancelled, not left hanging), ``"read"`` requests read the replica
#: of ``storage.read_url``; the engine and workers run without a statement timeout, on the primary.
REQUEST: ContextVar[str | None] = ContextVar("monmouth_request", default=None)


@contextmanager
def serving_request(kind: str | None) -> Iterator[None]:
    """Within the block, :data:`REQUEST` is ``kind`` (``"read"``, ``"request"`` or ``None``: none, e.g. a read
    that must see the primary's latest commit)."""
    token = REQUEST.set(kind)
    try:
        yield
    finally:
        REQUEST.reset(token)


def timeout_fault(error: BaseException | None) -> str | None:
    """A one-line description naming the ``[storage]`` key when ``error`` (or a cause) is PostgreSQL cancelling a
    statement for ``statement_timeout`` (SQLSTATE 57014) or ``lock_timeout`` (55P03), else ``None``."""
    while error is not None:
        diag = getattr(getattr(error, "diag", None), "message_primary", None) or str(error)
        if isinstance(error, _PG_CANCELED):
            return f"storage.statement_timeout: the database cancelled a statement that ran too long ({diag})"
        if isinstance(error, _PG_LOCK_TIMEOUT):
            return f"storage.lock_timeout: a statement waited too long for a lock ({diag})"
        error = error.__cause__
    return None


def connection_lost(error: BaseException | None) -> BaseException | None:
    """The PostgreSQL connection fault behind ``error`` (itself or a cause: what a plugin hit), if any: the server
    went away, restarted or ended the session. The engine reconnects and applies the notification again."""
    while error is not None:
        if isinstance(error, _PG_LOST):
            return error
        error = error.__cause__
    return None


class Connection(Protocol):
    """A database connection as the engine and chain hooks use it (apsw's surface).

    ``execute(sql, params)`` runs one statement with ``?`` placeholders (several ``;``-separated statements without
    parameters) and returns a cursor with ``fetchone``/``fetchall`` and iteration over row tuples. ``BEGIN
    IMMEDIATE``, ``SAVEPOINT``, ``ROLLBACK TO``, ``RELEASE``, ``COMMIT`` and ``ROLLBACK`` control transactions.
    """

    def execute(self, statements: str, bindings: Any = None) -> Any: ...

    def executemany(self, statements: str, sequenceofbindings: Any) -> Any: ...

    def __enter__(self) -> Any:
        """``with conn:`` is one transaction: committed on success, rolled back on an exception."""

    def __exit__(self, *exc: Any) -> Any: ...

    @property
    def in_transaction(self) -> bool: ...

    def close(self) -> None: ...


def execute_later(conn: Connection, statements: str, bindings: Any = None) -> None:
    """Run one statement whose result nobody reads (a write), inside an open transaction: at once on SQLite (in
    process, nothing to save); on PostgreSQL queued and sent with the connection's next statement (its ``COMMIT``
    included, and before anything run on ``conn.raw``), in one round trip
    (:meth:`sidecar.backends.postgres.PgConnection.defer`). The engine's bookkeeping goes this way, and so may a
    plugin's writes: over a network each round trip saved is the network's round-trip time.

    Contract: a queued statement that fails fails the whole transaction on PostgreSQL: it is rolled back at once and
    the error is raised from the statement that sent it (``COMMIT`` included), so do not queue a statement whose
    failure the code would handle (a savepoint it rolls back to). ``ROLLBACK`` (whole or to a savepoint) drops what
    is queued."""
    defer = getattr(conn, "defer", None)
    if defer is None:
        conn.execute(statements, bindings)
    else:
        defer(statements, bindings)


def executemany_later(conn: Connection, statements: str, sequenceofbindings: Any) -> None:
    """:func:`execute_later` of ``conn.executemany(statements, sequenceofbindings)``: the same statements (on
    PostgreSQL batched as ``executemany`` batches them, :mod:`sidecar.backends.pg_batch`), queued; the same
    contract."""
    defer = getattr(conn, "defer_many", None)
    if defer is None:
        conn.executemany(statements, sequenceofbindings)
    else:
        defer(statements, sequenceofbindings)


class UndoJournal(Protocol):
    """Per-block undo data of the journaled plugin tables (see :class:`sidecar.journal.Journal`)."""

    def refresh(self) -> None:
        """Re-read the schema (a plugin migration ran, a table became trimmed); outside a transaction."""

    def record(self, fn: Callable[[], None], number: int | None = None) -> bytes:
        """Run ``fn`` (block ``number``'s chain hooks) recording its changes; the value to store in
        ``monmouth_blocks.changeset`` (never ``None``: ``None`` there means pruned)."""
        ...

    def undo(self, changeset: bytes, number: int | None = None) -> None:
        """Restore every journaled table to its state before block ``number``.

        Raises:
            sidecar.journal.JournalConflictError: the rows differ from what was recorded.
        """

    def trim(self, number: int) -> None:
        """Delete rows at or above block ``number`` from the trimmed tables that name their column."""

    def prune(self, horizon: int) -> None:
        """Drop undo data kept outside ``monmouth_blocks`` for blocks at or below ``horizon``."""


class Backend(Protocol):
    """A Monmouth database (SQLite file or PostgreSQL database)."""

    #: ``"sqlite"`` or ``"postgres"``: what plugins name in ``monmouth_backends``.
    backend: str

    def connect(self, readonly: bool = False) -> Any: ...

    def reader(self) -> Any: ...

    def write(self) -> AbstractContextManager[Any]: ...

    def engine_connection(self, replacing: Any = None) -> Any:
        """The ingestion connection of the one engine (on PostgreSQL it holds the database's ingestion lock).
        ``replacing`` is the engine's previous connection, closed first where the lock needs it.

        Raises:
            sidecar.errors.StorageError: another engine owns ingestion of this database.
        """

    def journal(self, conn: Any, trimmed: Callable[[], Mapping[str, str | None]]) -> UndoJournal | None:
        """The backend's own reorg journal on ``conn``, or ``None`` for SQLite's session-extension journal
        (:class:`sidecar.journal.Journal`, which the engine makes itself: it builds on :mod:`sidecar.store`)."""

    def migrate(self, plugin: str, scripts: Sequence[str], trimmed: set[str]) -> int: ...

    def describe(self) -> str:
        """Where the data lives, for logs and errors (a path, or a URL without password)."""
        ...

