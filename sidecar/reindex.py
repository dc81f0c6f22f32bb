"""``monmouth reindex PLUGIN [--from N]``: drop one plugin's tables and rebuild them from the source's history.

Runs on the database while the sidecar is stopped (refused while it answers on its HTTP port: its engine would go
on calling the plugin's live hooks). In order:

1. **Checks**, which leave every table as it was when one fails (:class:`ReindexError`, naming the plugin and the
   reason): the plugin is installed and enabled (or refused at start only because a migration applied to the
   database has changed since, :func:`sidecar.store.check_applied`: reindexing is the way out); no other reindex
   runs on the database (``<db>.reindex.lock``); the database has a head; ``N`` is at most the head; the source
   can serve history and holds block ``N`` (not a pruned node, not a replay file without it).
2. **Reset**, in one transaction: the plugin's tables (found by running its migrations on an empty in-memory
   database) are dropped, its changes are removed from the undo changesets the engine holds for revertible blocks
   (so a later reorg does not try to undo rows that no longer exist), its migration version is cleared and its
   range set to ``catching_up`` from ``N`` (default: ``[plugins.<name>] start_block``, else
   ``source.start_block``).
3. **Rebuild**: its migrations run again, then the catch-up (:mod:`sidecar.catchup`) applies blocks ``N`` up to
   the head, printing progress; the plugin is then live. Interrupted (Ctrl-C, ``kill -9``), the plugin stays
   ``catching_up`` from where it got to (its range is durable) and ``monmouth run`` finishes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator

import anyio
import apsw

from .app import App, EngineView, make_source
from .catchup import CatchUp, HistoryError, no_history
from .errors import MigrationChangedError, MonmouthError
from .plugins import call_one
from .sources.base import Source
from .store import ENGINE_PREFIX, Database, _load_vec, check_applied, migrate
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


@contextlib.contextmanager
def exclusive(app: App, name: str) -> Iterator[None]:
    """Hold ``<database>.reindex.lock`` (``flock``) for the reindex.

    Raises:
        ReindexError: another reindex holds it.
    """
    if not isinstance(app.db, Database):
        raise ReindexError(f"reindex {name!r}: not supported on PostgreSQL yet (docs/storage.md)")
    path = app.db.path.with_name(app.db.path.name + ".reindex.lock")
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise ReindexError(f"reindex {name!r}: another reindex is running on {app.db.path} "
                               f"({f.read().strip() or 'see ' + str(path)})") from None
        f.truncate(0)
        f.write(f"plugin {name}, pid {os.getpid()}")
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

        plugin = host.installed[name]
        tables = set(plugin_tables(plugin))
        echo(f"reindex {name}: dropping {', '.join(sorted(tables)) or 'no tables'}; rebuilding blocks "
             f"{start}..{head.number}")
        _reset(app, name, tables, start)
        if changed:  # refused at start for its changed migrations: start it now, on new tables
            host.apply_settings(app.settings)
            if name not in host.enabled:
                raise ReindexError(f"reindex {name!r}: the plugin failed to start on its rebuilt tables: "
                                   f"{host.errors.get(name)}")
            if host.pm.has_plugin(name):  # no live hooks: the catch-up registers it once at the head
                host.pm.unregister(name=name)
        else:
            conn = app.db.connect()
            try:
                migrate(conn, name, call_one(plugin, "monmouth_migrations", backend="sqlite") or [],
                        set(call_one(plugin, "monmouth_trimmed_tables") or {}))
            finally:
                conn.close()
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
        check_applied(conn, name, call_one(app.host.installed[name], "monmouth_migrations", backend="sqlite") or [])
    except MigrationChangedError:
        return True
    finally:
        conn.close()
    return False


def _reset(app: App, name: str, tables: set[str], start: int) -> None:
    conn = app.engine.conn
    parent = conn.execute("SELECT hash FROM monmouth_blocks WHERE number = ?", (start - 1,)).fetchone()
    with conn:
        for table in sorted(tables):
            if table.startswith(ENGINE_PREFIX):
                raise ReindexError(f"reindex {name!r}: its migrations create {table}, an engine table")
            conn.execute(f'DROP TABLE IF EXISTS "{table}"')
        rows = conn.execute("SELECT number, changeset FROM monmouth_blocks WHERE changeset IS NOT NULL").fetchall()
        for number, changeset in rows:
            if isinstance(changeset, bytes) and changeset:
                conn.execute("UPDATE monmouth_blocks SET changeset = ? WHERE number = ?",
                             (strip_tables(changeset, tables), number))
        conn.execute("DELETE FROM monmouth_migrations WHERE plugin = ?", (name,))
        conn.execute("DELETE FROM monmouth_migration_digests WHERE plugin = ?", (name,))
        conn.execute("INSERT OR REPLACE INTO monmouth_plugin_progress VALUES (?, 'catching_up', ?, ?, ?, ?)",
                     (name, start, start - 1, parent[0] if parent else None, time.time()))
    if app.host.pm.has_plugin(name):
        app.host.pm.unregister(name=name)
