"""SQLite access (apsw): connections with the project's pragmas, sqlite-vec loaded, and plugin migrations.

One database file holds everything: the engine's cursor and reorg journal (``monmouth_*`` tables) and
every plugin's tables. WAL mode lets the HTTP API read while the engine writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import apsw

from . import uint256
from .errors import MigrationChangedError, MigrationError, StorageError

if TYPE_CHECKING:
    from .backends import Connection

log = logging.getLogger(__name__)

ENGINE_PREFIX = "monmouth_"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS monmouth_cursor (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    number INTEGER,            -- head block number (NULL on an empty database)
    hash BLOB,                 -- head block hash (32 bytes)
    finalized INTEGER,         -- last finalized block number the source reported
    notifications INTEGER NOT NULL DEFAULT 0,
    reorgs INTEGER NOT NULL DEFAULT 0,
    source_token TEXT,         -- JSON: the source's position of the last notification committed (see Engine.apply)
    updated_at REAL
);
INSERT OR IGNORE INTO monmouth_cursor (id, number, hash) VALUES (1, NULL, NULL);
-- Recent canonical blocks and, while still revertible, their undo changeset (SQLite session
-- changeset of every journaled plugin table, recorded while the block was applied).
CREATE TABLE IF NOT EXISTS monmouth_blocks (
    number INTEGER PRIMARY KEY,
    hash BLOB NOT NULL,
    parent_hash BLOB NOT NULL,
    timestamp INTEGER NOT NULL,
    changeset BLOB,             -- NULL once pruned (finalized or outside the undo window)
    applied_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS monmouth_blocks_revertible ON monmouth_blocks (number) WHERE changeset IS NOT NULL;
CREATE TABLE IF NOT EXISTS monmouth_migrations (
    plugin TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    applied_at REAL NOT NULL
);
-- The text of each migration applied (sha256 of the script without its layout, migration_digest()): an applied
-- script that changed afterwards is refused (check_applied()).
CREATE TABLE IF NOT EXISTS monmouth_migration_digests (
    plugin TEXT NOT NULL,
    version INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (plugin, version)
);
"""


def _load_vec(conn: apsw.Connection) -> None:
    try:
        import sqlite_vec
    except ImportError:  # pragma: no cover - sqlite-vec is a core dependency
        return
    conn.enable_load_extension(True)
    conn.load_extension(sqlite_vec.loadable_path())
    conn.enable_load_extension(False)


#: SQLite faults of the environment, not of the data: they clear when the disk, the mount or the permissions are
#: fixed, and retrying the same transaction then succeeds.
ENVIRONMENT_FAULTS: tuple[type[apsw.Error], ...] = (
    apsw.FullError, apsw.ReadOnlyError, apsw.IOError, apsw.CantOpenError, apsw.BusyError, apsw.LockedError,
    apsw.ConnectionClosedError, apsw.PermissionsError, apsw.AuthError,
)


def environment_fault(error: BaseException | None) -> BaseException | None:
    """The SQLite fault of the environment behind ``error`` (itself, or its cause: what a plugin hit), if any."""
    while error is not None:
        if isinstance(error, ENVIRONMENT_FAULTS):
            return error
        error = error.__cause__
    return None


def describe_fault(e: BaseException) -> str:
    """A one-line description of a SQLite fault, with what usually causes it."""
    hints: dict[type[BaseException], str] = {
        apsw.FullError: "the disk (or the file system holding the database) is full",
        apsw.ReadOnlyError: "the file, its directory or its file system is read-only",
        apsw.CantOpenError: "the path is a directory, or the file or its directory is not writable: permissions or "
                            "a read-only file system",
        apsw.IOError: "an I/O error (the file system went away, was remounted, or is failing)",
        apsw.PermissionsError: "permission denied",
        apsw.BusyError: "another process holds the write lock",
        apsw.NotADBError: "the file is not a SQLite database",
        apsw.CorruptError: "the database file is damaged",
    }
    hint = hints.get(type(e))
    return f"{type(e).__name__}: {e}" + (f" ({hint})" if hint else "")


class Database:
    """The sidecar's SQLite file (the ``sqlite`` :class:`~sidecar.backends.Backend`).

    Args:
        path: file path; parent directories are created. ``":memory:"`` is refused (the engine and the
            API need to share the file).
        synchronous: SQLite ``synchronous`` pragma for writers, ``"FULL"`` (default: a commit survives
            power loss) or ``"NORMAL"`` (survives a process crash, ``kill -9`` included).
        busy_timeout_ms: how long a writer waits for another writer (milliseconds).
        cache_mib: the page cache of each connection that writes (the engine's, and a thread's connection once it
            opened a :meth:`write` transaction), MiB. Read-only use keeps SQLite's default of 2 MiB per connection:
            the HTTP API's threads each hold one.
    """

    def __init__(self, path: str | Path, synchronous: str = "FULL", busy_timeout_ms: int = 10_000,
                 cache_mib: int = 32) -> None:
        if str(path) == ":memory:":
            raise ValueError("storage.path must be a file, not ':memory:'")
        self.path = Path(path)
        self.synchronous = synchronous
        self.busy_timeout_ms = busy_timeout_ms
        self.cache_mib = cache_mib
        self._local = threading.local()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            what = "is not a directory" if self.path.parent.exists() else f"cannot be created: {e.strerror}"
            raise StorageError(f"storage.path: {self.path}: its directory {self.path.parent} {what}") from None
        try:
            with contextlib.closing(self.connect()) as conn:
                with conn:
                    conn.execute(_SCHEMA)
                # Opening succeeds on a read-only file; the first write would fail. Find out now.
                conn.execute("BEGIN IMMEDIATE; UPDATE monmouth_cursor SET id = 1 WHERE id = 1; ROLLBACK")
        except apsw.Error as e:
            raise StorageError(f"storage.path: cannot open {self.path.resolve()} for writing: {describe_fault(e)}"
                               ) from None

    backend = "sqlite"

    def describe(self) -> str:
        return str(self.path.resolve())

    def engine_connection(self, replacing: apsw.Connection | None = None) -> apsw.Connection:
        """The engine's write connection (SQLite's own write lock serialises writers; ``replacing`` stays open until
        the caller closes it)."""
        conn = self.connect()
        self._writer_cache(conn)
        return conn

    def _writer_cache(self, conn: apsw.Connection) -> None:
        """Give a connection that writes the page cache of ``cache_mib`` (``PRAGMA cache_size``, negative: KiB).
        A write touches the pages of every index on its path, spread over the file when keys are random (hashes,
        addresses); with SQLite's default 2 MiB each re-reads them from the OS. Settling 200-episode blocks of the
        memory plugin: 21-23 ms a block against 25-27 (``storage.cache_mib``)."""
        conn.pragma("cache_size", -1024 * self.cache_mib)

    def journal(self, conn: apsw.Connection, trimmed: Callable[[], Mapping[str, str | None]]) -> None:
        """``None``: the engine uses the session-extension journal (:class:`sidecar.journal.Journal`)."""
        return None

    def migrate(self, plugin: str, scripts: Sequence[str], trimmed: set[str]) -> int:
        """:func:`migrate` on a new connection."""
        with contextlib.closing(self.connect()) as conn:
            return migrate(conn, plugin, scripts, trimmed)

    def connect(self, readonly: bool = False) -> apsw.Connection:
        """A new connection with WAL, the busy timeout, sqlite-vec loaded and the uint256 SQL functions
        (:mod:`sidecar.uint256`) registered."""
        flags = apsw.SQLITE_OPEN_READONLY if readonly else apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
        conn = apsw.Connection(str(self.path), flags=flags)
        conn.set_busy_timeout(self.busy_timeout_ms)
        if not readonly:
            conn.pragma("journal_mode", "wal")
            conn.pragma("synchronous", self.synchronous)
        conn.pragma("foreign_keys", 1)
        _load_vec(conn)
        uint256.register(conn)
        return conn

    def reader(self) -> apsw.Connection:
        """A per-thread read connection, reused (for the HTTP API's worker threads)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self.connect()
            self._local.conn = conn
        return conn

    def checkpoint_wal(self) -> tuple[int, int]:
        """Copy committed WAL frames back into the database file (``PRAGMA wal_checkpoint(PASSIVE)``, on this
        thread's connection): never blocks the engine's writes or any reader, and stops at frames a reader
        still needs. Once every frame is copied, the next writer starts the WAL over, which keeps it bounded.

        Returns:
            ``(frames in the WAL, frames checkpointed)``.

        Raises:
            apsw.Error: the checkpoint failed (I/O error).
        """
        log_frames, done = self.reader().wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
        return int(log_frames), int(done)

    @contextlib.contextmanager
    def write(self) -> Iterator[apsw.Connection]:
        """A short ``BEGIN IMMEDIATE`` write transaction on a per-thread connection, for work outside the
        engine (background workers). It commits on success and rolls back on error."""
        conn = self.reader()
        if not getattr(self._local, "writes", False):
            self._writer_cache(conn)
            self._local.writes = True
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


def table_kinds(conn: apsw.Connection) -> dict[str, str]:
    """``{table_name: type}`` for the main schema, where type is ``table``, ``virtual`` or ``shadow``
    (``PRAGMA table_list``, SQLite >= 3.37)."""
    return {
        name: kind
        for _schema, name, kind, *_ in conn.execute("PRAGMA main.table_list")
        if not name.startswith("sqlite_")
    }


def has_primary_key(conn: apsw.Connection, table: str) -> bool:
    """Whether ``table`` declares a PRIMARY KEY (needed for the session extension to journal it)."""
    return any(row[5] for row in conn.execute(f'PRAGMA main.table_info("{table}")'))


def migration_version(conn: Connection, plugin: str) -> int:
    row = conn.execute("SELECT version FROM monmouth_migrations WHERE plugin = ?", (plugin,)).fetchone()
    return int(row[0]) if row else 0


def schema_versions(conn: Connection) -> dict[str, int]:
    """``{plugin: number of its migrations applied}`` for every plugin that ever migrated the database ``conn`` is
    on: the public way for plugins and tools (backups, checkpoints) to record which schemas a copy holds."""
    return {str(p): int(v) for p, v in conn.execute("SELECT plugin, version FROM monmouth_migrations")}


def migration_digest(script: str) -> str:
    """The sha256 (hex) of a migration script with its layout taken out (runs of whitespace collapsed, none kept
    around ``( ) , ;``): re-indenting or re-wrapping a script is not a change, anything else is."""
    text = re.sub(r"\s*([(),;])\s*", r"\1", " ".join(script.split()))
    return hashlib.sha256(text.encode()).hexdigest()


def check_applied(conn: Connection, plugin: str, scripts: Sequence[str]) -> None:
    """Refuse ``plugin`` if a migration already applied to this database differs from the plugin's script now
    (its tables were built by the old text), or was removed. Migrations applied before digests were recorded
    are recorded as they are now.

    Raises:
        MigrationChangedError: naming the plugin, the migration, the database and what to do.
    """
    current = migration_version(conn, plugin)
    if current == 0:
        return
    fix = (f"restore the plugin's migration as it was and add the change as migration {current + 1} (migrations "
           f"are append-only), or rebuild the plugin's tables with the new scripts: `monmouth reindex {plugin}`")
    if len(scripts) < current:
        raise MigrationChangedError(
            f"plugin {plugin!r}: the database has {current} of its migrations applied, but the plugin now has "
            f"{len(scripts)}: migration {len(scripts) + 1} was removed after it was applied; {fix}")
    stored: dict[int, str] = {int(v): str(d) for v, d in conn.execute(  # type: ignore[arg-type]
        "SELECT version, sha256 FROM monmouth_migration_digests WHERE plugin = ?", (plugin,))}
    missing = []
    for version, script in enumerate(scripts[:current], start=1):
        digest = migration_digest(script)
        if version not in stored:
            missing.append((plugin, version, digest))
        elif stored[version] != digest:
            raise MigrationChangedError(
                f"plugin {plugin!r}: migration {version} changed after it was applied to this database (sha256 "
                f"{stored[version][:12]}... then, {digest[:12]}... now), so its tables do not match the "
                f"plugin's code; the plugin is not started and its tables are left as they are. To fix: {fix}")
    if missing:  # applied before digests were kept: trust them as they are now
        with conn:  # portable SQL: check_applied also serves the PostgreSQL backend
            conn.executemany("INSERT INTO monmouth_migration_digests VALUES (?, ?, ?) ON CONFLICT DO NOTHING", missing)


def migrate(conn: Connection, plugin: str, scripts: Sequence[str], trimmed: set[str], *,
            kinds: Callable[[Any], dict[str, str]] = table_kinds,
            has_pk: Callable[[Any, str], bool] = has_primary_key,
            errors: tuple[type[BaseException], ...] = (apsw.Error,)) -> int:
    """Run ``plugin``'s pending migrations, each in its own transaction, and check the tables they create.
    First, the migrations already applied must be those the plugin has now (:func:`check_applied`). ``kinds``,
    ``has_pk`` and ``errors`` are the backend's catalog queries and driver errors (SQLite's by default; the
    PostgreSQL backend passes its own).

    Returns the plugin's schema version afterwards.

    Raises:
        MigrationChangedError: an applied migration changed or was removed; nothing was run.
        MigrationError: a script failed (its transaction is rolled back), or it created an ordinary table
            without a PRIMARY KEY, or a virtual table not declared in ``monmouth_trimmed_tables``.
    """
    check_applied(conn, plugin, scripts)
    current = migration_version(conn, plugin)
    for version, script in enumerate(scripts, start=1):
        if version <= current:
            continue
        before = set(kinds(conn))
        try:
            with conn:
                conn.execute(script)
                after = kinds(conn)
                for name in sorted(set(after) - before):
                    kind = after[name]
                    if name.startswith(ENGINE_PREFIX):
                        raise MigrationError(f"plugin {plugin!r} migration {version} created {name!r}: "
                                             f"the {ENGINE_PREFIX}* names belong to the engine")
                    if kind == "table" and name not in trimmed and not has_pk(conn, name):
                        raise MigrationError(
                            f"plugin {plugin!r} migration {version}: table {name!r} has no PRIMARY KEY, so the "
                            "reorg journal cannot restore it; add one or declare it in monmouth_trimmed_tables"
                        )
                    if kind == "virtual" and name not in trimmed:
                        raise MigrationError(
                            f"plugin {plugin!r} migration {version}: virtual table {name!r} must be declared in "
                            "monmouth_trimmed_tables (the reorg journal cannot record virtual tables)"
                        )
                conn.execute(
                    "INSERT INTO monmouth_migrations (plugin, version, applied_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (plugin) DO UPDATE SET version = excluded.version, applied_at = excluded.applied_at",
                    (plugin, version, time.time()),
                )
                conn.execute("INSERT INTO monmouth_migration_digests VALUES (?, ?, ?) ON CONFLICT (plugin, version) "
                             "DO UPDATE SET sha256 = excluded.sha256", (plugin, version, migration_digest(script)))
        except errors as e:
            raise MigrationError(f"plugin {plugin!r} migration {version} failed: {e}") from e
        log.info("plugin %s: applied migration %d", plugin, version)
        current = version
    return current
