"""``monmouth storage copy --to postgresql://...``: move a SQLite deployment to PostgreSQL without reindexing.

What is copied, in **one PostgreSQL transaction** (a failure leaves the target as it was: empty):

* the engine's cursor (head, finalized, counters, source token) and ``monmouth_blocks`` (hash history);
* every enabled plugin's tables: its migrations run on the target (recorded with their digests, as at a start),
  then the rows of each table they create are copied from the SQLite table of the same name and columns; a plugin
  that implements ``monmouth_storage_copy`` (sidecar/hookspecs.py) copies its own part instead (backend-specific
  tables: FTS5, ``vec0``); ``monmouth_plugin_progress`` (each plugin's indexed range);
* **the undo data**, so the copy reverts exactly like the original on the next reorg: SQLite keeps one session
  changeset per revertible block, PostgreSQL row images in ``monmouth_undo`` (sidecar/backends/postgres.py). The
  conversion walks the revertible blocks newest first on the target, inside a savepoint: for each change of the
  block's changeset (apsw's changeset iterator gives each change's table, operation, primary key and old values)
  it undoes the change on the copied rows with one statement that returns the row as ``to_jsonb`` sees it (the
  image the trigger would have recorded); then it rolls the savepoint back (the rows are the head's again) and
  stores the images. The images are therefore exactly what PostgreSQL compares on a revert.

Invariants and refusals (nothing written to the target in every case):

1. The source is read in **one read transaction** (a WAL snapshot): a ``monmouth run`` may keep writing it; the
   copy holds the state of one commit, cursor and tables alike. Blocks committed after that snapshot are
   ingested again by the first ``monmouth run`` on the copy, from the copied cursor.
2. The target must be **empty** (no cursor, no block, no migration recorded, no table but the engine's): a copy
   never merges into existing data. Use a fresh database (``CREATE DATABASE``).
3. Every enabled plugin must run on PostgreSQL (``monmouth_backends``), and each of its tables must exist on both
   with the same columns, unless it implements ``monmouth_storage_copy``; a journaled table named by the undo
   data must exist on the target. Otherwise the copy is refused naming the plugin (or the table).
4. The target unreachable or refusing the login: :class:`~sidecar.errors.StorageError` naming the URL (without
   password).

Not copied (listed in the result): tables of plugins not enabled in the config, ``monmouth_audit`` (the audit log
starts over on the target).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apsw

from .backends.postgres import PgConnection, PgDatabase, _tables
from .config import Settings
from .errors import StorageError
from .plugins import call_one
from .progress import _SCHEMA as PROGRESS_SCHEMA
from .store import ENGINE_PREFIX, table_kinds

log = logging.getLogger(__name__)

#: Engine tables whose rows the copy writes itself, or the target computes itself (schema, migrations).
_ENGINE_COPIED = {"monmouth_cursor", "monmouth_blocks", "monmouth_plugin_progress", "monmouth_migrations",
                  "monmouth_migration_digests", "monmouth_schema", "monmouth_undo"}
_OPS = {apsw.SQLITE_INSERT: "I", apsw.SQLITE_UPDATE: "U", apsw.SQLITE_DELETE: "D"}


class CopyError(StorageError):
    """The copy was refused or failed; nothing was written to the target. The message names the cause (plugin,
    table, database)."""


@dataclass
class CopyResult:
    """What was copied: ``head`` (block number or ``None``), ``blocks`` (hash history rows), ``revertible``
    (blocks with undo data), ``undo_rows`` (row images written), ``tables`` (``{table: rows}``), ``not_copied``
    (SQLite tables left behind, with why)."""

    head: int | None = None
    blocks: int = 0
    revertible: int = 0
    undo_rows: int = 0
    tables: dict[str, int] = field(default_factory=dict)
    not_copied: dict[str, str] = field(default_factory=dict)


class _Savepoints(PgConnection):
    """The copy's connection as :func:`sidecar.store.migrate` sees it: ``with conn:`` is a savepoint inside the
    copy's one transaction, so the plugins' migrations commit (or vanish) with the data."""

    def __enter__(self) -> _Savepoints:
        self.execute("SAVEPOINT monmouth_copy_step")
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.execute("RELEASE SAVEPOINT monmouth_copy_step")
        else:
            self.execute("ROLLBACK TO SAVEPOINT monmouth_copy_step; RELEASE SAVEPOINT monmouth_copy_step")


def copy_to_postgres(settings: Settings, plugins: Mapping[str, object], target: PgDatabase) -> CopyResult:
    """Copy the SQLite deployment ``settings.storage`` names (with the ``plugins`` installed) into ``target``.

    Raises:
        CopyError: refused or failed (see the module docstring); nothing written to the target.
    """
    if settings.storage.is_postgres:
        raise CopyError(f"{settings.origin}: storage.url: the deployment is already on PostgreSQL "
                        f"({target.describe()}); storage copy moves a SQLite file")
    path = Path(settings.storage.sqlite_path)
    if not path.is_file():
        raise CopyError(f"{settings.origin}: storage.path: no SQLite database at {path}")
    enabled = {n: p for n, p in plugins.items() if settings.plugin_enabled(n)}
    for name, plugin in enabled.items():
        supported = tuple(call_one(plugin, "monmouth_backends") or ("sqlite",))
        if "postgres" not in supported:
            raise CopyError(f"plugin {name!r} does not support the postgres storage backend (it supports: "
                            f"{', '.join(supported)}), so its tables cannot be moved; disable it in "
                            f"{settings.origin} first (its data is then not copied) or wait for a version that "
                            "supports PostgreSQL; nothing was written")
    with _snapshot(path) as src, contextlib.closing(target.connect()) as raw:
        dst = _Savepoints(raw.raw)
        _check_empty(dst, target)
        dst.execute("BEGIN")
        try:
            result = _copy(src, dst, enabled, target)
        except BaseException:
            with contextlib.suppress(Exception):
                dst.execute("ROLLBACK")
            raise
        dst.execute("COMMIT")
    return result


@contextlib.contextmanager
def _snapshot(path: Path) -> Iterator[apsw.Connection]:
    """A read-only connection to ``path`` inside one read transaction (invariant 1)."""
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    conn.set_busy_timeout(5000)
    try:
        conn.execute("BEGIN")
        conn.execute("SELECT count(*) FROM monmouth_cursor").fetchall()  # the snapshot starts at the first read
        yield conn
    except apsw.SQLError as e:
        raise CopyError(f"{path}: not a Monmouth database ({e})") from None
    finally:
        with contextlib.suppress(apsw.Error):
            conn.execute("ROLLBACK")
        conn.close()


def _check_empty(dst: PgConnection, target: PgDatabase) -> None:
    found = []
    if _scalar(dst, "SELECT number FROM monmouth_cursor WHERE id = 1") is not None:
        found.append("a cursor")
    if n := _scalar(dst, "SELECT count(*) FROM monmouth_blocks"):
        found.append(f"{n} blocks")
    migrated = [r[0] for r in dst.execute("SELECT plugin FROM monmouth_migrations ORDER BY plugin").fetchall()]
    if migrated:
        found.append(f"migrations of {', '.join(migrated)}")
    others = sorted(t for t in _tables(dst) if not t.startswith(ENGINE_PREFIX))
    if others:
        found.append(f"tables {', '.join(others)}")
    if found:
        raise CopyError(f"storage copy: the target {target.describe()} (database {target.dbname!r}) is not empty: "
                        f"it holds {'; '.join(found)}; a copy never merges into existing data: copy into a fresh "
                        "database (CREATE DATABASE ... ; CREATE EXTENSION vector;); nothing was written")


def _columns_sqlite(src: apsw.Connection, table: str) -> list[str]:
    return [r[1] for r in src.execute(f'PRAGMA main.table_info("{table}")')]


def _columns_pg(dst: PgConnection, table: str) -> list[str]:
    return [r[0] for r in dst.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(?) AND attnum > 0 AND NOT attisdropped "
        "ORDER BY attnum", (f'"{table}"',)).fetchall()]


def _copy_rows(src: apsw.Connection, dst: PgConnection, table: str, columns: Sequence[str]) -> int:
    cols = ", ".join(f'"{c}"' for c in columns)
    insert = f'INSERT INTO "{table}" ({cols}) VALUES ({", ".join("?" * len(columns))})'
    n = 0
    cursor = src.execute(f'SELECT {cols} FROM "{table}"')
    while batch := list(itertools.islice(cursor, 1000)):
        dst.executemany(insert, batch)
        n += len(batch)
    return n


def _copy(src: apsw.Connection, dst: _Savepoints, plugins: Mapping[str, object], target: PgDatabase) -> CopyResult:
    result = CopyResult()
    row = src.execute("SELECT number, hash, finalized, notifications, reorgs, source_token, updated_at "
                      "FROM monmouth_cursor WHERE id = 1").fetchone()
    if row is not None:
        dst.execute("UPDATE monmouth_cursor SET number = ?, hash = ?, finalized = ?, notifications = ?, reorgs = ?, "
                    "source_token = ?, updated_at = ? WHERE id = 1", row)
        result.head = row[0]
    blocks = src.execute("SELECT number, hash, parent_hash, timestamp, CASE WHEN changeset IS NULL THEN NULL ELSE "
                         "x'' END, applied_at FROM monmouth_blocks ORDER BY number").fetchall()
    dst.executemany("INSERT INTO monmouth_blocks (number, hash, parent_hash, timestamp, changeset, applied_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)", blocks)
    result.blocks = len(blocks)
    source_kinds = table_kinds(src)
    if "monmouth_plugin_progress" in source_kinds:
        dst.execute(PROGRESS_SCHEMA)
        result.tables["monmouth_plugin_progress"] = _copy_rows(
            src, dst, "monmouth_plugin_progress", _columns_sqlite(src, "monmouth_plugin_progress"))

    claimed: set[str] = set()
    for name, plugin in plugins.items():
        before = set(_tables(dst))
        trimmed = set(call_one(plugin, "monmouth_trimmed_tables") or {})
        target.migrate(name, call_one(plugin, "monmouth_migrations") or [], trimmed, conn=dst)
        created = sorted(set(_tables(dst)) - before)
        if _has_hook(plugin):
            with dst:
                copied = list(call_one(plugin, "monmouth_storage_copy", src=src, dst=dst) or ())
            for table in copied:
                result.tables[table] = int(_scalar(dst, f'SELECT count(*) FROM "{table}"'))
            claimed.update(copied)
            continue
        for table in created:
            if source_kinds.get(table) != "table":
                raise CopyError(f"plugin {name!r}: its table {table!r} on PostgreSQL has no ordinary table of the "
                                "same name in the SQLite database, so its data cannot be copied row by row: the "
                                "plugin needs a monmouth_storage_copy hook (sidecar/hookspecs.py); nothing was "
                                "written")
            columns, theirs = _columns_pg(dst, table), _columns_sqlite(src, table)
            if sorted(columns) != sorted(theirs):
                raise CopyError(f"plugin {name!r}: table {table!r} has columns {', '.join(theirs)} on SQLite but "
                                f"{', '.join(columns)} on PostgreSQL: the plugin needs a monmouth_storage_copy hook; "
                                "nothing was written")
            result.tables[table] = _copy_rows(src, dst, table, columns)
            claimed.add(table)
    for table, kind in sorted(source_kinds.items()):
        if table in claimed or table in _ENGINE_COPIED or kind == "shadow":
            continue
        result.not_copied[table] = ("the audit log starts over on the target" if table == "monmouth_audit" else
                                    "not a table of a plugin enabled in the config")
    _convert_undo(src, dst, result)
    return result


def _has_hook(plugin: object) -> bool:
    from .plugins import hook_functions

    return "monmouth_storage_copy" in hook_functions(plugin)


def _convert_undo(src: apsw.Connection, dst: PgConnection, result: CopyResult) -> None:
    """Turn each revertible block's session changeset into ``monmouth_undo`` row images (module docstring)."""
    images: list[tuple[int, str, str, str | None, str | None]] = []
    columns: dict[str, list[str]] = {}
    dst.execute("SAVEPOINT monmouth_copy_undo")
    rows: list[tuple[int, bytes]] = src.execute(  # type: ignore[assignment]
        "SELECT number, changeset FROM monmouth_blocks WHERE changeset IS NOT NULL ORDER BY number DESC").fetchall()
    for number, changeset in rows:
        result.revertible += 1
        block: list[tuple[int, str, str, str | None, str | None]] = []
        for change in reversed([_read_change(c) for c in apsw.Changeset.iter(changeset)]):
            table, op, pk, old, new = change
            if table not in columns:
                columns[table] = _columns_pg(dst, table)
                if not columns[table]:
                    raise CopyError(f"block {number}: the undo data names table {table!r}, which does not exist on "
                                    "the target (its plugin is not enabled, or its tables differ between backends); "
                                    "nothing was written")
            names = _columns_sqlite(src, table)
            block.append((number, table, op, *_undo_one(dst, table, names, op, pk, old, new)))
        images.extend(reversed(block))  # stored oldest first: a revert replays them newest first
    dst.execute("ROLLBACK TO SAVEPOINT monmouth_copy_undo; RELEASE SAVEPOINT monmouth_copy_undo")
    images.sort(key=lambda r: r[0])  # stable: each block's own order is kept
    dst.executemany("INSERT INTO monmouth_undo (block, tbl, op, old, new) VALUES (?, ?, ?, ?::jsonb, ?::jsonb)",
                    images)
    result.undo_rows = len(images)


def _read_change(c: Any) -> tuple[str, str, tuple[bool, ...], tuple[Any, ...] | None, tuple[Any, ...] | None]:
    """``(table, I/U/D, primary-key flags, old values, new values)`` copied out of an apsw ``TableChange``."""
    pk = set(c.pk_columns)
    return c.name, _OPS[c.opcode], tuple(i in pk for i in range(c.column_count)), c.old, c.new


def _undo_one(dst: PgConnection, table: str, names: Sequence[str], op: str, pk: tuple[bool, ...],
              old: tuple[Any, ...] | None, new: tuple[Any, ...] | None) -> tuple[str | None, str | None]:
    """Undo one change on the target's rows; returns ``(old, new)`` as ``to_jsonb`` text, the trigger's images."""
    keys = [i for i, is_pk in enumerate(pk) if is_pk]
    values = new if op == "I" else old
    assert values is not None
    where = " AND ".join(f'"{names[i]}" = ?' for i in keys)
    key = tuple(values[i] for i in keys)
    if op == "I":
        row = dst.execute(f'DELETE FROM "{table}" t WHERE {where} RETURNING to_jsonb(t.*)::text', key).fetchone()
        return None, _found(row, table, key)
    if op == "D":
        assert old is not None
        cols = ", ".join(f'"{n}"' for n in names)
        row = dst.execute(f'INSERT INTO "{table}" AS t ({cols}) VALUES ({", ".join("?" * len(names))}) '
                          "RETURNING to_jsonb(t.*)::text", old).fetchone()
        return _found(row, table, key), None
    assert old is not None
    after = dst.execute(f'SELECT to_jsonb(t.*)::text FROM "{table}" t WHERE {where}', key).fetchone()
    changed = [i for i in range(len(names)) if i not in keys and old[i] is not apsw.no_change]
    if not changed:
        return _found(after, table, key), _found(after, table, key)
    sets = ", ".join(f'"{names[i]}" = ?' for i in changed)
    before = dst.execute(f'UPDATE "{table}" t SET {sets} WHERE {where} RETURNING to_jsonb(t.*)::text',
                         (*(old[i] for i in changed), *key)).fetchone()
    return _found(before, table, key), _found(after, table, key)


def _scalar(conn: PgConnection, sql: str) -> Any:
    row = conn.execute(sql).fetchone()
    return None if row is None else row[0]


def _found(row: Any, table: str, key: tuple[Any, ...]) -> str:
    if row is None:
        raise CopyError(f"the undo data does not match the tables: table {table!r} has no row with primary key "
                        f"{key!r} where a revertible block changed one; nothing was written")
    return str(row[0])
