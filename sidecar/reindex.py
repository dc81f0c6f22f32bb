"""``monmouth reindex PLUGIN [--from N]``: drop one plugin's tables and rebuild them from the source's history.

Runs on the database while the sidecar is stopped (refused while it answers on its HTTP port: its engine would go
on calling the plugin's live hooks). In order:

1. **Checks**, which leave every table as it was when one fails (:class:`ReindexError`, naming the plugin and the
   reason): the plugin is installed and enabled (or refused at start only because a migration applied to the
   database has changed since, :func:`sidecar.store.check_applied`: reindexing is the way out); no other reindex
   runs on the database (SQLite: ``<db>.reindex.lock``; PostgreSQL: the ingestion lock, which the reindex's engine
   connection holds under the ``application_name`` ``monmouth reindex PLUGIN pid N on HOST``, so a second reindex
   or a ``monmouth run`` is refused naming it); the database has a head; ``N`` is at most the head; the source
   can serve history and holds block ``N`` (not a pruned node, not a replay file without it).
2. **Reset**, in one transaction: the plugin's tables are dropped (found by running its migrations on an empty
   in-memory database; on PostgreSQL in a scratch schema rolled back after, which also finds its views,
   functions, types and text search objects, dropped too), its changes are removed from the undo data the engine
   holds for revertible blocks (SQLite: the changesets; PostgreSQL: its rows of ``monmouth_undo``), so a later
   reorg does not try to undo rows that no longer exist, its migration version is cleared and its range set to
   ``catching_up`` from ``N`` (default: ``[plugins.<name>] start_block``, else ``source.start_block``).
3. **Rebuild**: its migrations run again, then the catch-up (:mod:`sidecar.catchup`) applies blocks ``N`` up to
   the head, printing progress; the plugin is then live. Interrupted (Ctrl-C, ``kill -9``), the plugin stays
   ``catching_up`` from where it got to (its range is durable) and ``monmouth run`` finishes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator

import anyio
import apsw

from .app import App, EngineView, make_source
from .backends import DRIVER_ERRORS
from .catchup import CatchUp, HistoryError, no_history
from .errors import MigrationChangedError, MonmouthError, StorageError
from .plugins import call_one
from .sources.base import Source
from .store import ENGINE_PREFIX, Database, _load_vec, check_applied
from .uint256 import register as register_uint256


class ReindexError(MonmouthError):
    """A reindex was refused; nothing was changed. The message names the plugin and the reason."""


def plugin_tables(plugin: object) -> list[str]:
    """The tables (virtual ones included, not their shadow tables) that ``plugin``'s migrations create, found by
    running them on an empty in-memory database."""
    scratch = apsw.Connection(":memory:")
    try:
        _load_vec(scratch)
        register_uint256(scratch)
        for script in call_one(plugin, "monmouth_migrations", backend="sqlite") or []:
            scratch.execute(script)
        kinds = {name: kind for _s, name, kind, *_ in scratch.execute("PRAGMA main.table_list")}
        return sorted(n for n, k in kinds.items() if k in ("table", "virtual") and not n.startswith("sqlite_"))
    finally:
        scratch.close()


def strip_tables(changeset: bytes, tables: set[str]) -> bytes:
    """``changeset`` without the changes to ``tables``."""
    builder = apsw.ChangesetBuilder()
    try:
        for change in apsw.Changeset.iter(changeset):
            if change.name not in tables:
                builder.add_change(change)
        return builder.output()
    finally:
        builder.close()


def _scripts(app: App, name: str) -> list[str]:
    """Plugin ``name``'s migrations for the database's backend."""
    return list(call_one(app.host.installed[name], "monmouth_migrations", backend=app.db.backend) or [])


def plugin_objects(app: App, name: str) -> list[tuple[str, str, str]]:
    """What plugin ``name``'s migrations create in the database, as ``(kind, identifier, name)`` in the order to
    drop them (:func:`sidecar.backends.pg_objects.created_objects`); on SQLite its tables (:func:`plugin_tables`).

    Raises:
        ReindexError: its migrations fail on an empty schema, or create an engine (``monmouth_*``) object.
    """
    if isinstance(app.db, Database):
        found = [("TABLE", f'"{t}"', t) for t in plugin_tables(app.host.installed[name])]
    else:
        from .backends.pg_objects import created_objects

        try:
            found = created_objects(app.db, _scripts(app, name))  # type: ignore[arg-type]
        except StorageError as e:
            raise ReindexError(f"reindex {name!r}: {e}") from None
    for kind, _ident, obj in found:
        if obj.startswith(ENGINE_PREFIX):
            raise ReindexError(f"reindex {name!r}: its migrations create {obj}, an engine {kind.lower()}")
    return found


@contextlib.contextmanager
def exclusive(app: App, name: str) -> Iterator[None]:
    """Make this the one reindex of the database for its duration.

    SQLite: hold ``<database>.reindex.lock`` (``flock``). PostgreSQL: the engine's connection already holds the
    ingestion lock (so ``monmouth run`` and another reindex were refused at :func:`sidecar.app.open_app`); it is
    renamed ``monmouth reindex PLUGIN pid N on HOST`` (``application_name``), which their refusal names.

    Raises:
        ReindexError: another reindex holds the lock file.
    """
    holder = f"monmouth reindex {name} pid {os.getpid()} on {socket.gethostname()}"
    if not isinstance(app.db, Database):
        app.engine.conn.execute("SELECT set_config('application_name', ?, false)", (holder,))
        yield
        return
    path = app.db.path.with_name(app.db.path.name + ".reindex.lock")
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise ReindexError(f"reindex {name!r}: another reindex is running on {app.db.path} "
                               f"({f.read().strip() or 'see ' + str(path)})") from None
        f.truncate(0)
        f.write(holder)
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)
            fcntl.flock(f, fcntl.LOCK_UN)


async def reindex(app: App, name: str, from_block: int | None, echo: Callable[[str], None]) -> int:
    """Check, reset and rebuild plugin ``name`` from block ``from_block`` (see the module docstring).

    Returns:
        the number of blocks applied to the plugin.

    Raises:
        ReindexError: refused before anything changed.
        HistoryError, PluginError: the rebuild failed midway; the plugin stays ``catching_up`` from where it got
            to, and ``monmouth run`` (or another ``monmouth reindex``) resumes it.
    """
    host = app.host
    if name not in host.installed:
        raise ReindexError(f"reindex: no such plugin {name!r} (installed: {', '.join(sorted(host.installed))})")
    changed = name not in host.enabled and app.settings.plugin_enabled(name) and _migrations_changed(app, name)
    if name not in host.enabled and not changed:
        raise ReindexError(f"reindex {name!r}: the plugin is not enabled in {app.settings.origin} "
                           f"({host.errors.get(name) or 'enabled = false'}); enable it first")
    source = make_source(app.settings, app.metrics)
    catchup = CatchUp(app, source, anyio.Lock(), anyio.CapacityLimiter(1))
    try:
        async with _session_for_history(source, EngineView(app.engine)):
            return await _reindex(app, name, from_block, echo, source, catchup, changed)
    finally:
        with contextlib.suppress(Exception):
            await catchup.aclose()
        with contextlib.suppress(Exception):
            await source.aclose()


@contextlib.asynccontextmanager
async def _session_for_history(source: Source, view: EngineView, wait: float = 10.0) -> AsyncIterator[None]:
    """For the ``exex`` source, whose history travels over a bridge session: open one (its notifications are
    received and dropped, never acknowledged, so the bridge re-sends them to the sidecar's next session) and wait
    up to ``wait`` seconds for it; other sources need none."""
    if source.kind != "exex":
        yield
        return

    async def drain() -> None:
        async for _delivery in source.stream(view):
            pass

    async with anyio.create_task_group() as tg:
        tg.start_soon(drain)
        with anyio.move_on_after(wait):
            while getattr(source, "state", None) != "streaming":
                await anyio.sleep(0.05)
        try:
            yield
        finally:
            tg.cancel_scope.cancel()


async def _reindex(app: App, name: str, from_block: int | None, echo: Callable[[str], None], source: Source,
                   catchup: CatchUp, changed: bool) -> int:
    host, engine, progress = app.host, app.engine, catchup.progress
    with exclusive(app, name):
        head = engine.head
        if head is None:
            raise ReindexError(f"reindex {name!r}: the database has no head yet; there is nothing to reindex")
        start = from_block if from_block is not None else progress.start_block(app.settings, name, catchup.floor())
        start = head.number if start is None else start
        if not 0 <= start <= head.number:
            raise ReindexError(f"reindex {name!r}: --from {start} is not a block number at or below the head "
                               f"{head}")
        if catchup.history is None:
            raise ReindexError(f"reindex {name!r}: {no_history(source)}")
        try:
            await catchup.history(start, start, head)
        except HistoryError as e:
            raise ReindexError(f"reindex {name!r} from block {start}: {e}") from e

        objects = plugin_objects(app, name)
        tables = {obj for kind, _ident, obj in objects if kind == "TABLE"}
        echo(f"reindex {name}: dropping {', '.join(sorted(tables)) or 'no tables'}; rebuilding blocks "
             f"{start}..{head.number}")
        _reset(app, name, objects, start)
        if changed:  # refused at start for its changed migrations: start it now, on new tables
            host.apply_settings(app.settings)
            if name not in host.enabled:
                raise ReindexError(f"reindex {name!r}: the plugin failed to start on its rebuilt tables: "
                                   f"{host.errors.get(name)}")
            if host.pm.has_plugin(name):  # no live hooks: the catch-up registers it once at the head
                host.pm.unregister(name=name)
        else:
            app.db.migrate(name, _scripts(app, name), set(call_one(host.installed[name], "monmouth_trimmed_tables")
                                                           or {}))
        t0 = shown = time.monotonic()
        while (r := progress.ranges()[name]).state == "catching_up":
            await catchup.step_once(r)
            now = time.monotonic()
            if now - shown >= 1.0:
                shown = now
                last = progress.ranges()[name].last or start
                echo(f"reindex {name}: block {last} of {head.number}, {head.number - last} remaining, "
                     f"{(last - start + 1) / (now - t0):.1f} blocks/s")
        done = head.number - start + 1
        echo(f"reindex {name}: done, {done} blocks ({start}..{head.number}) in {time.monotonic() - t0:.1f}s; "
             "it follows the head")
        return done


def _migrations_changed(app: App, name: str) -> bool:
    """Whether plugin ``name`` was refused because a migration applied to the database has changed since."""
    conn = app.db.connect()
    try:
        check_applied(conn, name, _scripts(app, name))
    except MigrationChangedError:
        return True
    finally:
        conn.close()
    return False


def _reset(app: App, name: str, objects: list[tuple[str, str, str]], start: int) -> None:
    """Step 2 of the module docstring, in one transaction on the engine's connection.

    Raises:
        ReindexError: the database refused a ``DROP`` (PostgreSQL: another plugin's view or foreign key depends
            on one of the plugin's tables); nothing changed.
    """
    conn = app.engine.conn
    tables = sorted(obj for kind, _ident, obj in objects if kind == "TABLE")
    parent = conn.execute("SELECT hash FROM monmouth_blocks WHERE number = ?", (start - 1,)).fetchone()
    try:
        with conn:
            if isinstance(app.db, Database):
                for table in tables:
                    conn.execute(f'DROP TABLE IF EXISTS "{table}"')
                rows = conn.execute(
                    "SELECT number, changeset FROM monmouth_blocks WHERE changeset IS NOT NULL").fetchall()
                for number, changeset in rows:
                    if isinstance(changeset, bytes) and changeset:
                        conn.execute("UPDATE monmouth_blocks SET changeset = ? WHERE number = ?",
                                     (strip_tables(changeset, set(tables)), number))
            else:  # one DROP TABLE for all: foreign keys between the plugin's own tables do not stop it
                for statement in _pg_drops(objects):
                    conn.execute(statement)
                conn.execute("DELETE FROM monmouth_undo WHERE tbl = ANY(?)", (tables,))
            conn.execute("DELETE FROM monmouth_migrations WHERE plugin = ?", (name,))
            conn.execute("DELETE FROM monmouth_migration_digests WHERE plugin = ?", (name,))
            conn.execute("INSERT INTO monmouth_plugin_progress VALUES (?, 'catching_up', ?, ?, ?, ?) "
                         "ON CONFLICT (plugin) DO UPDATE SET state = excluded.state, first = excluded.first, "
                         "last = excluded.last, last_hash = excluded.last_hash, updated_at = excluded.updated_at",
                         (name, start, start - 1, parent[0] if parent else None, time.time()))
    except DRIVER_ERRORS as e:
        diag = getattr(e, "diag", None)  # PostgreSQL's detail names the dependent object
        detail = f" ({diag.message_detail})" if diag is not None and diag.message_detail else ""
        raise ReindexError(f"reindex {name!r}: dropping its objects failed, nothing was changed: "
                           f"{str(e).strip().splitlines()[0]}{detail}") from e
    if app.host.pm.has_plugin(name):
        app.host.pm.unregister(name=name)


def _pg_drops(objects: list[tuple[str, str, str]]) -> list[str]:
    """The PostgreSQL ``DROP`` statements for ``objects`` (in :func:`plugin_objects`' order), the tables in one."""
    out: list[str] = []
    for kind, ident, _obj in objects:
        if kind != "TABLE":
            out.append(f"DROP {kind} IF EXISTS {ident}")
        elif not out or not out[-1].startswith("DROP TABLE "):
            out.append(f"DROP TABLE IF EXISTS {ident}")
        else:
            out[-1] += f", {ident}"
    return out
