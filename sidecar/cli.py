"""The ``monmouth`` command line (click). Thin: every command calls the library layer."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import click

from . import __version__
from .errors import MonmouthError, StorageUnavailableError

if TYPE_CHECKING:
    from .shutdown import Shutdown

CONFIG_OPTION = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="config.toml to use (default: $MONMOUTH_CONFIG, else ./config.toml, else built-in defaults).",
)


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "watchfiles"):  # one line per request or file event is noise at INFO
        logging.getLogger(noisy).setLevel(max(logging.WARNING, getattr(logging, level)))


def _fail(e: Exception) -> None:
    raise click.ClickException(str(e)) from e


@click.group()
@click.version_option(__version__, prog_name="monmouth")
def cli() -> None:
    """Monmouth: a reorg-safe knowledge base and memory for AI agents, fed by a Reth node."""


# ---------------------------------------------------------------------------------------------------- run


def _run(config_path: Path | None, source_override: Any = None, serve_http: bool | None = None) -> str | None:
    """Open the sidecar and run it until the source ends or SIGTERM/SIGINT stops it gracefully
    (:mod:`sidecar.shutdown`). Returns the name of the signal that stopped it, else ``None``."""
    from .app import make_source, open_app
    from .runner import run_sidecar
    from .shutdown import Stopped, graceful

    with graceful() as stopper:
        try:
            try:
                app = open_app(config_path)
            except StorageUnavailableError as e:  # the database server is not up (yet): wait for it
                from .app import default_config_path, load_settings
                from .startwait import open_when_reachable

                settings, _ = load_settings(config_path if config_path is not None else default_config_path())
                _setup_logging(settings.logging.level)
                app = anyio.run(open_when_reachable, lambda: open_app(config_path), settings, e)
        except MonmouthError as e:
            _fail(e)
        except Stopped:
            return stopper.signal_name
        stopper.timeout = app.settings.engine.shutdown_timeout
        _setup_logging(app.settings.logging.level)
        log = logging.getLogger("monmouth")
        try:
            source = source_override or make_source(app.settings, app.metrics)
        except MonmouthError as e:
            app.close()
            _fail(e)
        log.info("monmouth %s: source %s, database %s, head %s, plugins enabled: %s", __version__, source.kind,
                 app.db.describe(), app.engine.head or "empty", ", ".join(app.host.enabled) or "none")
        _loop_then_close(app, lambda: run_sidecar(app, source, serve_http=serve_http, shutdown=stopper))
        if stopper.requested:
            log.warning("%s: stopped cleanly at head %s", stopper.signal_name, app.engine.head or "empty")
        return stopper.signal_name or None


@cli.command()
@CONFIG_OPTION
def run(config_path: Path | None) -> None:
    """Run the sidecar: follow the configured source, serve HTTP, hot-reload config.toml."""
    _run(config_path)


@cli.command()
@CONFIG_OPTION
@click.option("--port", type=int, default=None, help="Override http.port (0: any free port).")
def serve(config_path: Path | None, port: int | None) -> None:
    """Serve the HTTP API, MCP and the dashboard on the database without ingesting: run any number of these beside
    the one `monmouth run` that owns ingestion (docs/storage.md, "Scale-out"). config.toml is hot-reloaded; the
    listening address, TLS and [storage] apply at restart (monmouth.serving)."""
    from .app import load_settings, open_app
    from .serving import serve as serve_http
    from .shutdown import Stopped, graceful

    with graceful() as stopper:
        try:
            settings, _ = load_settings(config_path)
            if port is not None:
                settings.http.port = port
            _setup_logging(settings.logging.level)
            stopper.timeout = settings.engine.shutdown_timeout
            app = open_app(config_path, settings=settings, serve=True)
            app.http_port = port
        except MonmouthError as e:
            _fail(e)
        except Stopped:
            return
        _loop_then_close(app, lambda: serve_http(app, stopper))


def _loop_then_close(app: Any, main: Any) -> None:
    """``anyio.run(main)``, then close ``app``: a signal (:class:`~sidecar.shutdown.Stopped`) or Ctrl-C before the
    loop took over ends it quietly; a :class:`MonmouthError` fails the command with its message."""
    try:
        anyio.run(main)
    except KeyboardInterrupt:  # Stopped included
        pass
    except MonmouthError as e:
        _fail(e)
    finally:
        app.close()


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@CONFIG_OPTION
@click.option("--rate", type=float, default=0.0, help="Notifications per second (0: as fast as possible).")
@click.option("--http/--no-http", "serve_http", default=False, help="Also serve the HTTP API while replaying.")
def replay(file: Path, config_path: Path | None, rate: float, serve_http: bool) -> None:
    """Apply the notifications recorded in FILE, then exit. Progress is logged every few seconds."""
    from .sources.replay import ReplaySource

    stopped = _run(config_path, ReplaySource(file, rate=rate), serve_http=serve_http)
    click.echo(f"stopped by {stopped} before the end of {file}" if stopped else f"replayed {file}")


@cli.command()
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@CONFIG_OPTION
@click.option("--count", type=int, default=None, help="Stop after this many notifications.")
@click.option("--until-block", type=int, default=None, help="Stop once the recorded head reaches this block.")
@click.option("--url", default=None, help="Override source.url.")
def record(out: Path, config_path: Path | None, count: int | None, until_block: int | None, url: str | None) -> None:
    """Record what the configured source delivers into a replay file OUT (appending)."""
    from .app import load_settings, make_source
    from .recorder import record_source
    from .shutdown import cancel_on_signal, graceful

    with graceful() as stopper:
        try:
            settings, _ = load_settings(config_path)
            if url:
                settings.source.url = url
            _setup_logging(settings.logging.level)
            source = make_source(settings)
            n = anyio.run(cancel_on_signal, stopper, lambda: record_source(source, out, count=count,
                                                                            until_block=until_block))
        except KeyboardInterrupt:  # a signal before the event loop ran
            return
        except MonmouthError as e:
            _fail(e)
    click.echo(f"stopped by {stopper.signal_name}: {out} holds every notification recorded" if n is None
               else f"recorded {n} notifications into {out}")


@cli.command()
@click.argument("plugin")
@click.option("--from", "from_block", type=int, default=None,
              help="First block to rebuild (default: [plugins.PLUGIN] start_block, else source.start_block).")
@CONFIG_OPTION
def reindex(plugin: str, from_block: int | None, config_path: Path | None) -> None:
    """Drop PLUGIN's tables and rebuild them from the source's history, from block --from up to the head, with
    progress (see monmouth.reindex). Stop the sidecar first; refused with nothing changed when it cannot run."""
    import httpx

    from .app import load_settings, open_app
    from .reindex import reindex as rebuild

    try:
        settings, _ = load_settings(config_path)
    except MonmouthError as e:
        _fail(e)
    if settings.http.enabled:
        host = "127.0.0.1" if settings.http.host in ("0.0.0.0", "::") else settings.http.host
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(f"http://{host}:{settings.http.port}/health", timeout=1.0)
            raise click.ClickException(f"reindex {plugin!r}: the sidecar is running (it answers on {host}:"
                                       f"{settings.http.port}); stop it first, nothing was changed")
    _setup_logging(settings.logging.level)
    try:  # on PostgreSQL, refused here while `monmouth run` or another reindex holds the ingestion lock
        app = open_app(config_path, settings=settings)
    except MonmouthError as e:
        raise click.ClickException(f"reindex {plugin!r}: {e}; nothing was changed") from e
    try:
        anyio.run(rebuild, app, plugin, from_block, click.echo)
    except MonmouthError as e:
        _fail(e)
    finally:
        app.close()


# ---------------------------------------------------------------------------------------------------- status


@cli.command()
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the /status object as JSON.")
def status(config_path: Path | None, as_json: bool) -> None:
    """Show head, finalized, source head, lag and plugin states (from the running sidecar if it answers,
    else from the database)."""
    import httpx

    from .app import load_settings, open_app

    try:
        settings, _ = load_settings(config_path)
    except MonmouthError as e:
        _fail(e)
    obj: dict[str, Any] | None = None
    if settings.http.enabled:
        host = "127.0.0.1" if settings.http.host in ("0.0.0.0", "::") else settings.http.host
        try:
            r = httpx.get(f"http://{host}:{settings.http.port}/status", timeout=2.0)
            if r.status_code == 200:
                obj = r.json()
        except httpx.HTTPError:
            obj = None
    if obj is None:
        try:  # a read: beside a running `monmouth run` too (no ingestion lock taken)
            app = open_app(config_path, settings=settings, serve=True)
        except MonmouthError as e:
            _fail(e)
        try:
            obj = app.status()
        finally:
            app.close()
    if as_json:
        click.echo(json.dumps(obj, indent=2))
        return
    head = obj["head"]
    click.echo(f"head:        {head['number']} {head['hash']}" if head else "head:        (empty)")
    click.echo(f"finalized:   {obj['finalized']}")
    click.echo(f"source head: {obj['source_head']}  lag: {obj['lag']}")
    click.echo(f"notifications: {obj['notifications']}  reorgs: {obj['reorgs']}")
    if stuck := obj.get("stuck"):
        block = stuck["block"]
        at = f"block {block['number']} {block['hash']}" if block else "a notification"
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stuck["since"]))
        click.echo(f"STUCK on {at} since {since} ({stuck['seconds']:.0f}s, {stuck['attempts']} attempts, "
                   f"next retry in {stuck['next_retry_in']:.0f}s): plugin {stuck['plugin']} in {stuck['hook']}: "
                   f"{stuck['error']}")
    for name, p in obj["plugins"].items():
        click.echo(f"plugin {name}: {p.get('state')}" + (f" ({p['error']})" if p.get("error") else ""))


@cli.group()
def storage() -> None:
    """Move a deployment between storage backends (docs/storage.md)."""


@storage.command("copy")
@CONFIG_OPTION
@click.option("--to", "to_url", required=True,
              help="The target PostgreSQL database, postgresql://user@host:port/dbname (empty; password from the "
                   "variable storage.password_env names).")
def storage_copy(config_path: Path | None, to_url: str) -> None:
    """Copy the SQLite deployment of the config (cursor, hash history, undo data, every enabled plugin's tables)
    into an empty PostgreSQL database, so `monmouth run` continues there without reindexing. Safe while `monmouth
    run` writes the file: the copy is one consistent snapshot; blocks after it are ingested again from the copy's
    cursor. Then set storage.url to the target."""
    import os

    from .app import load_settings
    from .backends.postgres import PgDatabase
    from .config import StorageConfig
    from .storagecopy import copy_to_postgres

    try:
        settings, installed = load_settings(config_path)
        _setup_logging(settings.logging.level)
        try:
            target_cfg = StorageConfig(url=to_url, password_env=settings.storage.password_env)
        except ValueError as e:
            raise click.ClickException(f"--to: {e}") from None
        if not target_cfg.is_postgres:
            raise click.ClickException(f"--to: must be a postgresql:// URL (got {to_url!r})")
        target = PgDatabase(to_url, password=os.environ.get(target_cfg.password_env) or None,
                            password_env=target_cfg.password_env)
        result = copy_to_postgres(settings, installed, target)
    except MonmouthError as e:
        _fail(e)
    click.echo(f"copied {settings.storage.sqlite_path} to {target.describe()}: head {result.head}, "
               f"{result.blocks} blocks ({result.revertible} revertible, {result.undo_rows} undo row images)")
    for table, n in result.tables.items():
        click.echo(f"  {table}: {n} rows")
    for table, why in result.not_copied.items():
        click.echo(f"  not copied: {table} ({why})")
    click.echo(f"now set storage.url = \"{target.describe()}\" in the config and start monmouth run")


@cli.command()
@CONFIG_OPTION
def plugins(config_path: Path | None) -> None:
    """List installed plugins, where they come from, and whether config.toml enables them."""
    import importlib.metadata

    from .app import load_settings

    try:
        settings, installed = load_settings(config_path)
    except MonmouthError as e:
        _fail(e)
    eps = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="monmouth.plugins")}
    for name in sorted(installed):
        origin = f"entry point {eps[name]}" if name in eps else f"module {settings.plugins[name].module}"
        state = "enabled" if settings.plugin_enabled(name) else "disabled"
        click.echo(f"{name:<16} {state:<9} {origin}")


# ---------------------------------------------------------------------------------------------------- config


@cli.group()
def config() -> None:
    """Read and edit config.toml (comments and layout are kept)."""


def _config_file(config_path: Path | None) -> Path:
    from .app import default_config_path

    p = config_path or default_config_path()
    if p is None:
        raise click.ClickException("no config file: pass --config PATH or create ./config.toml")
    return p


@config.command("get")
@click.argument("key")
@CONFIG_OPTION
def config_get(key: str, config_path: Path | None) -> None:
    """Print the value of KEY (dotted, e.g. source.url)."""
    from .config import get_value, read_document

    try:
        value = get_value(read_document(_config_file(config_path)), key)
    except MonmouthError as e:
        _fail(e)
    click.echo(json.dumps(value) if not isinstance(value, str) else value)


@config.command("set", context_settings={"ignore_unknown_options": True})
@click.argument("key")
@click.argument("value")
@CONFIG_OPTION
def config_set(key: str, value: str, config_path: Path | None) -> None:
    """Set KEY to VALUE (read as a TOML literal when it is one: true, 42, -1, "text"); refuses invalid configs.

    VALUE may start with ``-`` (``-1``, ``-0.5``, ``-x``): it is taken as the value, not as an option."""
    from .config import module_paths, parse_value, read_document, set_value, validate, write_document
    from .plugins import config_models, discover

    path = _config_file(config_path)
    try:
        doc = read_document(path)
        set_value(doc, key, parse_value(value))
        data = doc.unwrap()
        validate(data, str(path), config_models(discover(module_paths(data, path.resolve().parent))),
                 path.resolve().parent)
        write_document(path, doc)
    except MonmouthError as e:
        _fail(e)
    click.echo(f"{key} = {value}")


# ---------------------------------------------------------------------------------------------------- tokens


@cli.group()
def token() -> None:
    """Operator tokens: make one, or hash one for config.toml (auth.admin_tokens, auth.read_tokens)."""


@token.command("new")
def token_new() -> None:
    """Print a fresh operator token and its sha256 hash (only the hash goes in config.toml)."""
    from .auth import new_operator_token

    t, h = new_operator_token()
    click.echo(f"token: {t}\nhash:  {h}\n\nPut the hash in config.toml, e.g. auth.admin_tokens = [\"{h}\"], and give "
               "the token to the operator (it is not stored anywhere).")


@token.command("hash")
@click.argument("value")
def token_hash(value: str) -> None:
    """Print the sha256 hash of the operator token VALUE, as config.toml holds it."""
    from .auth import hash_token

    click.echo(hash_token(value))


# ---------------------------------------------------------------------------------------------------- mcp, demo


@cli.command()
@CONFIG_OPTION
@click.option("--url", default=None, help="The running sidecar (default: http.host and http.port of the config).")
@click.option("--token", envvar="MONMOUTH_TOKEN", default=None,
              help="Bearer token for the sidecar (operator or agent); env MONMOUTH_TOKEN.")
def mcp(config_path: Path | None, url: str | None, token: str | None) -> None:
    """Serve the MCP tools over stdio (for an LLM agent runtime). Uses the running sidecar when one answers,
    else opens the database in-process."""
    try:
        _serve_mcp_stdio(config_path, url, token)
    except MonmouthError as e:
        _fail(e)


def _serve_mcp_stdio(config_path: Path | None, url: str | None, token: str | None) -> None:
    """Serve the MCP tools over stdio: through the running sidecar at ``url`` (default: the config's
    ``http.host``/``http.port``) when it answers, else in-process on the database as the local operator. Returns
    when the client closes standard input or on SIGTERM/SIGINT (within ``engine.shutdown_timeout``,
    :mod:`sidecar.shutdown`); a signal while it starts returns too."""
    from .shutdown import graceful

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)  # stdout carries the protocol
    log = logging.getLogger("monmouth.mcp_server")
    with graceful() as stopper, contextlib.suppress(KeyboardInterrupt):  # Stopped: a signal outside the loop
        _serve_mcp_until_stopped(config_path, url, token, stopper)
    if stopper.requested:
        log.warning("monmouth mcp: %s: stopped cleanly", stopper.signal_name)


def _serve_mcp_until_stopped(config_path: Path | None, url: str | None, token: str | None, stopper: Shutdown) -> None:
    import httpx

    from .app import load_settings, open_app
    from .mcp_server import local_caller, plugin_tools, run_stdio, url_caller
    from .problems import ProblemError

    log = logging.getLogger("monmouth.mcp_server")
    settings, plugins = load_settings(config_path)
    stopper.timeout = settings.engine.shutdown_timeout
    if url is None and settings.http.enabled:
        host = "127.0.0.1" if settings.http.host in ("0.0.0.0", "::") else settings.http.host
        url = f"http://{host}:{settings.http.port}"
    if url is not None:
        try:
            if httpx.get(f"{url.rstrip('/')}/health", timeout=1.0).status_code == 200:
                log.warning("monmouth mcp: serving the sidecar at %s", url)
                anyio.run(run_stdio, url_caller(url, token), plugin_tools(plugins)[0], stopper)
                return
        except httpx.HTTPError:
            pass
    from .api import create_api

    app = open_app(config_path, settings=settings)
    api = None
    try:
        api = create_api(app)
        log.warning("monmouth mcp: no sidecar answers%s; serving %s in-process", f" at {url}" if url else "",
                    app.db.describe())
        try:
            client = local_caller(api, f"Bearer {token}" if token else None)
        except ProblemError as e:  # a malformed, unknown or expired token: one line, not a traceback
            raise click.ClickException(f"--token / MONMOUTH_TOKEN: {e.detail}") from None
        anyio.run(run_stdio, client, plugin_tools(app.host.installed)[0], stopper)
    finally:
        if api is not None:
            api.state.audit.close()
        app.close()


# ---------------------------------------------------------------------------------------------------- plugins' commands


def _register_plugin_commands() -> None:
    from .plugins import call_one, discover

    try:
        found = discover()
    except MonmouthError:
        return
    for name, plugin in found.items():
        try:
            call_one(plugin, "monmouth_register_commands", cli=cli)
        except Exception as e:  # a broken plugin must not break the CLI
            logging.getLogger(__name__).error("plugin %s: monmouth_register_commands failed: %s", name, e)


#: Entry-point group of commands that are not plugins: each names a function ``register(cli)`` that adds its click
#: commands to :func:`cli` (``demo = "monmouth_demo.command:register"``). Unlike a plugin's
#: ``monmouth_register_commands`` they are there whatever the config enables.
COMMANDS_GROUP = "monmouth.commands"


def _register_commands() -> None:
    import importlib.metadata

    for ep in importlib.metadata.entry_points(group=COMMANDS_GROUP):
        try:
            ep.load()(cli)
        except Exception as e:  # a broken command package must not break the CLI
            logging.getLogger(__name__).error("command %s (%s): registering failed: %s", ep.name, ep.value, e)


def main() -> None:
    _register_commands()
    _register_plugin_commands()
    start = time.monotonic()
    try:
        cli(standalone_mode=True)
    finally:
        logging.getLogger(__name__).debug("done in %.2fs", time.monotonic() - start)
