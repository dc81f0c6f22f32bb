"""Every hook a Monmouth plugin can implement.

A plugin is any object (usually a module) with functions decorated by ``@monmouth.hookimpl`` whose
names match the specs below. Plugins are found through the ``monmouth.plugins`` entry-point group
(the built-in ``rag``, ``memory`` and integration plugins are registered exactly that way) or through
``plugins.<name>.module = "package.module"`` in ``config.toml``. The plugin's *name* is its entry-point
name (or its config section name) and its config lives in ``[plugins.<name>]``.

Hook kinds:

* **Declaration hooks** (``monmouth_config_model``, ``monmouth_migrations``, ``monmouth_trimmed_tables``,
  ``monmouth_status``) are called by the host *for one plugin at a time*, so their results are
  attributed to that plugin.
* **Chain hooks** (``monmouth_block_applied``, ``monmouth_block_reverted``, ``monmouth_finalized``) run
  inside the engine's single write transaction for the notification. They must only write SQL through
  the ``conn`` they are given, must not commit, and must not keep state outside SQLite. If one raises,
  the whole notification is rolled back for every plugin, retried, and never half-applied.
* **Lifecycle hooks** (``monmouth_startup``, ``monmouth_shutdown``, ``monmouth_notification_committed``)
  run outside the transaction; exceptions there are logged and counted, never fatal to ingestion.
* **Surface hooks** (``monmouth_http_router``, ``monmouth_access_rules``, ``monmouth_mcp_tools``,
  ``monmouth_register_commands``) add HTTP routes and their access rules, MCP tools and CLI commands. The first three
  are called *for one plugin at a time*, like declaration hooks, so what they return is attributed to that plugin.

What the engine guarantees about plugin tables: every change a chain hook makes to an ordinary table
(one with a PRIMARY KEY) is recorded per block in the reorg journal (SQLite session changesets) and
inverted exactly when that block is reverted. Tables declared in ``monmouth_trimmed_tables`` are not
journaled; the engine deletes their rows by block number instead.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import apsw
    import click
    from fastapi import APIRouter
    from pydantic import BaseModel

    from .auth import AccessRule
    from .context import PluginContext
    from .types import Block, BlockRef, Notification

hookspec = pluggy.HookspecMarker("monmouth")


# ---------------------------------------------------------------------------------------------------------------------
# Declarations (called once per plugin)


@hookspec(firstresult=True)
def monmouth_config_model() -> type[BaseModel] | None:
    """Return the pydantic model of this plugin's ``[plugins.<name>]`` config section.

    Called once per plugin when the config is loaded or reloaded. The host validates the section
    against it (with ``extra="forbid"`` recommended, so that unknown keys are refused naming the key
    and the file). The ``enabled`` and ``module`` keys belong to the host and are removed before
    validation. Return ``None`` (or do not implement) for a plugin without settings.
    """


@hookspec(firstresult=True)
def monmouth_migrations(backend: str) -> Sequence[str] | None:
    """Return this plugin's schema migrations for ``backend`` (``"sqlite"`` or ``"postgres"``, see
    :func:`monmouth_backends`): an ordered list of SQL scripts. An implementation may leave ``backend`` out of its
    signature (portable SQL, or SQLite only); one whose schema differs by backend (FTS5 against ``tsvector``)
    returns each backend's own list, each with its own versions.

    Migration ``i`` (1-based) runs once, in its own transaction, when the plugin is first enabled on a
    database whose recorded version for the plugin is below ``i``. Append new scripts; never edit old
    ones: the engine keeps each applied script's sha256 (layout aside), and a plugin whose applied migration
    changed or was removed is refused with ``MigrationChangedError`` until it is reindexed
    (``monmouth reindex <plugin>``). Table names should start with the plugin's name (``rag_``, ``memory_``).

    Every ordinary table must have a PRIMARY KEY (the reorg journal needs one); every virtual table
    (FTS5, ``vec0``) must be named in :func:`monmouth_trimmed_tables`. Otherwise enabling the plugin
    fails with ``MigrationError`` naming the table.
    """


@hookspec(firstresult=True)
def monmouth_trimmed_tables() -> Mapping[str, str | None] | None:
    """Return ``{table: block_number_column}`` for bulky derived tables that are *not* journaled.

    On a revert of block ``n`` the engine runs ``DELETE FROM table WHERE column >= n``. A value of
    ``None`` means the plugin removes that table's rows itself in :func:`monmouth_block_reverted`
    (for example a ``vec0`` table keyed by rowid). Typical use: vectors, FTS indexes.
    """


@hookspec(firstresult=True)
def monmouth_backends() -> Sequence[str] | None:
    """Return the storage backends this plugin's SQL runs on: ``("sqlite",)``, ``("postgres",)`` or both.

    Not implemented (or ``None``): ``("sqlite",)``, the only backend plugins were written for before PostgreSQL.
    Enabling a plugin on a backend it does not list is refused (``/status`` shows the error naming the plugin and
    the backend); the other plugins run. Portable SQL (``?`` placeholders, ``ON CONFLICT``, types both accept such
    as ``BIGINT``, ``TEXT``, ``BYTEA``) runs on both: the connection a chain hook gets has the same ``execute`` on
    both backends (docs/storage.md).
    """


@hookspec(firstresult=True)
def monmouth_storage_copy(src: apsw.Connection, dst: Any) -> Sequence[str] | None:
    """Copy this plugin's tables from a SQLite deployment into PostgreSQL (``monmouth storage copy``,
    sidecar/storagecopy.py); return the names of the target tables it filled.

    Implement it when the plugin's tables differ between backends (FTS5 or ``vec0`` on SQLite, pgvector or
    ``tsvector`` on PostgreSQL); without it the copy moves each table the plugin's migrations create on the target
    row by row from the SQLite table of the same name and columns, and refuses the copy (naming the plugin) when
    there is none.

    Contract: called once, for an enabled plugin, after its migrations ran on the target. ``src`` is a read-only
    apsw connection inside the copy's read transaction (the snapshot the engine's cursor was read from: read only
    through it); ``dst`` is the target's connection (``execute``/``executemany`` with ``?`` placeholders) inside
    the copy's one transaction: write only this plugin's tables through it, never commit or roll back (raise to
    refuse: the whole copy rolls back and the target stays empty). The copy converts the undo data of journaled
    tables itself (a journaled table must have the same name and columns on both backends); derived tables
    (trimmed, vectors, indexes) are the hook's to fill or rebuild. Called for one plugin at a time. Helpers:
    :func:`monmouth.storagecopy.copy_table` (a table alike on both backends, by column name) and
    :func:`monmouth.storagecopy.restart_identity` (an identity column continues above SQLite's ``AUTOINCREMENT``).
    Examples: plugins/rag/storagecopy.py, plugins/memory/storagecopy.py.
    """


@hookspec(firstresult=True)
def monmouth_status() -> Mapping[str, Any] | None:
    """Return a JSON-able mapping shown under ``plugins.<name>`` in ``/status`` and ``monmouth status``.

    Called once per plugin, from the HTTP server's thread pool; keep it fast (it may read SQLite through
    ``ctx.db``). Example: ``{"backlog": 12, "embeddings_per_s": 310.5}``.
    """


# ---------------------------------------------------------------------------------------------------------------------
# Lifecycle


@hookspec
def monmouth_startup(ctx: PluginContext) -> None:
    """Called when the plugin is enabled: at start, or when a hot reload enables it; and again with a
    fresh ``ctx`` whenever a hot reload changes its settings (after ``monmouth_shutdown``).

    ``ctx`` carries the plugin's validated config (``ctx.config``), the whole settings (``ctx.settings``),
    the database (``ctx.db``), the metrics registry (``ctx.metrics``), the host (``ctx.host``, to look
    up other plugins) and ``ctx.stopping`` (set when background work must stop). Migrations have already run.

    ``ctx.role`` says which process this is (docs/storage.md, "Scale-out"): in ``"run"`` (``monmouth run``, the one
    ingesting process of a database) start the plugin's background workers (embedding, settling, outbox delivery);
    in ``"serve"`` (``monmouth serve``, ``monmouth status``: any number beside it) start none, only what reads and
    API writes need (config checks, caches, an in-memory index). A worker per serving process would run N copies
    of one queue's work.
    """


@hookspec
def monmouth_shutdown(ctx: PluginContext) -> None:
    """Called when the plugin is disabled, its settings change, or the sidecar stops. Stop background
    work started in :func:`monmouth_startup`."""


@hookspec
def monmouth_notification_committed(notification: Notification, head: BlockRef | None) -> None:
    """Called after a notification is durably committed (and before it is acknowledged upstream).

    ``head`` is the engine's head after it. Runs on the thread that applied it (the engine's worker thread, or
    the event loop's for a small notification, ``engine.inline_apply_bytes``): do only quick, non-blocking work
    here (wake a worker, enqueue a delivery), and never wait on the event loop. Exceptions are logged and counted;
    they do not undo the commit.
    """


# ---------------------------------------------------------------------------------------------------------------------
# Chain hooks (inside the engine's write transaction)


@hookspec
def monmouth_block_applied(conn: apsw.Connection, block: Block, notification: Notification) -> None:
    """Index ``block``: it has just become canonical. Called oldest block first, once per block, inside the
    engine's write transaction for ``notification``.

    Write with plain SQL through ``conn`` (never commit or roll back). Changes to journaled tables are
    recorded so that a later revert restores them exactly. Raising rolls the whole notification back.
    """


@hookspec
def monmouth_block_reverted(conn: apsw.Connection, block: Block, notification: Notification) -> None:
    """``block`` is leaving the canonical chain (a reorg or revert). Called newest block first, inside the
    engine's write transaction, *after* the engine restored the plugin's journaled tables to their state
    before the block and trimmed its declared trimmed tables.

    Use it only for state the engine cannot restore itself (rows of tables declared with ``None`` in
    :func:`monmouth_trimmed_tables`, pending work). ``block`` may carry only header fields (the ``rpc``
    source cannot fetch orphaned bodies): do not rely on ``block.transactions`` here.
    """


@hookspec
def monmouth_finalized(conn: apsw.Connection, number: int) -> None:
    """The source's finalized block advanced to ``number`` (blocks at or below it will not be reorged).

    Runs inside a write transaction between notifications; the engine prunes its own undo data in the same
    transaction. Use it to prune or compact plugin data.
    """


# ---------------------------------------------------------------------------------------------------------------------
# Surfaces


@hookspec
def monmouth_http_router() -> APIRouter | None:
    """Return a FastAPI ``APIRouter`` to mount on the sidecar's HTTP app (paths should start with
    ``/<name>/``). Requests to it answer 503 while the plugin is disabled."""


@hookspec(firstresult=True)
def monmouth_access_rules() -> Sequence[AccessRule] | None:
    """Return this plugin's exceptions to the default access policy, one :class:`monmouth.auth.AccessRule` per route.

    Called once per installed plugin when the HTTP app is built, after :func:`monmouth_http_router`. The default
    policy of a plugin route that declares none (``require(...)``) lets admin tokens call everything, read tokens
    ``GET``/``HEAD``, and agents only routes whose ``{agent}`` path parameter is their own address. A rule widens it
    for one ``(method, path)`` of this plugin's router: ``read=True`` for a ``POST`` that only reads; ``agent=True``
    for a route any signed-in agent may call, optionally with ``agent_body``, a check of the JSON body that raises
    ``ProblemError`` (403) to refuse. Example::

        AccessRule("POST", "/example/search", read=True, agent=True, agent_body=public_kinds_only)

    A rule for a route the plugin's router does not serve (or a hook that raises) is refused: logged, named in the
    plugin's ``/status`` ``error``, and that route keeps the default policy.
    """


@hookspec(firstresult=True)
def monmouth_mcp_tools() -> Sequence[Callable[..., Awaitable[Any]]] | None:
    """Return this plugin's MCP tools: async functions served by the sidecar's MCP server (``/mcp`` and
    ``monmouth mcp``) beside the core's ``status``.

    Called once per installed plugin, enabled or not, when the server is built (a disabled plugin's tools answer
    with its routes' 503). Each function's ``__name__`` is the tool's name, its docstring what the agent reads, its
    type-annotated parameters the input schema (the ``mcp`` SDK's rules). A parameter annotated
    ``mcp.server.mcpserver.Context`` receives the call's context: ``async with monmouth.mcp_server.caller(ctx) as c``
    gives the calling client (:class:`monmouth.mcp_server.Caller`):

    * ``await c.invoke("POST", "/example/search", lambda: service(body), json=body)`` runs the plugin's service
      *as that client* under the access policy of the route it backs (the route's own ``require``, or the default
      policy and this plugin's access rule with its body check), in a worker thread, in-process; across the network
      (``monmouth mcp --url``) it calls that route instead, so ``service`` must return what the route answers.
      ``c.principal`` is the caller, for a service that needs it;
    * ``await c.call("POST", "/example/search", json=...)`` calls a route through the HTTP stack;
    * ``await c.agent(agent)`` is ``agent`` or the signed-in agent's own address.

    A refusal raises ``ToolError("<status>: <detail>")`` with the status and detail the route would answer (and is
    audited as over HTTP). Return a JSON-able value.

    A tool that is not an async function, or whose name the core or an earlier plugin already serves, is left out
    (logged, and named in the plugin's ``/status`` ``error``); the plugin's other tools are served.
    """


@hookspec
def monmouth_register_commands(cli: click.Group) -> None:
    """Add commands to the ``monmouth`` CLI (for example ``cli.add_command(group, "rag")``). Called for every
    installed plugin, enabled or not, when the CLI starts."""
