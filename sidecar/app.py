"""The assembled sidecar, without its event loop: settings, database, metrics, plugin host and engine.

:func:`open_app` is what the CLI, the runner, tests and plugin commands use to open a sidecar (online or
offline). Data flows one way: source -> engine -> plugins -> store -> API.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .backends import Backend
from .config import DEFAULT_CONFIG, Settings, StorageConfig, load_data, module_paths, validate
from .engine import Engine
from .metrics import Metrics
from .plugins import PluginHost, config_models, discover
from .sources.base import Source
from .store import Database
from .types import Block

log = logging.getLogger(__name__)


def default_config_path() -> Path | None:
    """``$MONMOUTH_CONFIG``, else ``./config.toml`` when it exists, else ``None`` (built-in defaults)."""
    env = os.environ.get("MONMOUTH_CONFIG")
    if env:
        return Path(env)
    p = Path(DEFAULT_CONFIG)
    return p if p.exists() else None


def load_settings(config_path: str | Path | None, extra_plugins: Mapping[str, object] | None = None,
                  environ: Mapping[str, str] | None = None) -> tuple[Settings, dict[str, object]]:
    """Read, override from the environment, and validate the config; discover the plugins it needs.

    Returns ``(settings, installed_plugins)``.

    Raises:
        ConfigError: invalid file, key or value, naming the file and the key.
    """
    data, origin, base = load_data(config_path, environ)
    plugins = discover(module_paths(data, base), extra_plugins)
    return validate(data, origin, config_models(plugins), base), plugins


#: ``[http]`` keys the listening socket is made from at start: a reload that changes them takes effect at the next
#: restart. Every other ``[http]`` key (limits, concurrency, ``ready_lag``) and ``[auth]`` are read per request.
LISTEN_KEYS = ("enabled", "host", "port", "tls_cert", "tls_key")


@dataclass
class App:
    """One sidecar's parts. Close with :meth:`close`. ``http_port``: a ``--port`` given on the command line
    (``monmouth serve``), kept over ``http.port`` across reloads."""

    settings: Settings
    config_path: Path | None
    plugins: dict[str, object]
    db: Backend
    metrics: Metrics
    host: PluginHost
    engine: Engine
    extra_plugins: dict[str, object] = field(default_factory=dict)
    http_port: int | None = None
    config_stamp: FileStamp | None = None  # the config file as last read, applied or rejected (:func:`file_stamp`)

    def reload(self, environ: Mapping[str, str] | None = None) -> Settings:
        """Re-read the config file; validate; apply plugin changes. Call only between notifications.

        Raises:
            ConfigError: the new config is invalid; the running config is kept unchanged.
        """
        self.config_stamp = file_stamp(self.config_path)  # before reading: a write after it shows as a change
        data, origin, base = load_data(self.config_path, environ)
        plugins = discover(module_paths(data, base), self.extra_plugins)
        settings = validate(data, origin, config_models(plugins), base)
        if self.http_port is not None:
            settings.http.port = self.http_port
        for name, p in plugins.items():
            if name not in self.host.installed:
                self.host.installed[name] = p
                self.host.states[name] = "disabled"
        changes = self.host.apply_settings(settings)
        self.engine.config = settings.engine
        for section in ("source", "storage"):
            if getattr(settings, section) != getattr(self.settings, section):
                log.warning("config: [%s] changed; it takes effect at the next restart", section)
        listen = [f"http.{k}" for k in LISTEN_KEYS if getattr(settings.http, k) != getattr(self.settings.http, k)]
        if listen:
            log.warning("config: %s changed; the HTTP server listens as it started until the next restart",
                        ", ".join(listen))
        self.settings = settings
        if changes:
            log.info("config reloaded: %s", ", ".join(changes))
        return settings

    def status(self, source: Source | None = None) -> dict[str, Any]:
        """The ``/status`` object: head, finalized, source head, lag, counters, source and plugin states."""
        head = self.engine.head
        source_head = source.source_head if source else None
        # What the sidecar treats as finalized (the engine's record); the node's claim is in source.status().
        finalized = self.engine.finalized
        lag = (source_head - head.number) if (source_head is not None and head is not None) else None
        return {
            "version": __version__,
            "head": head.to_json() if head else None,
            "finalized": finalized,
            "source_head": source_head,
            "lag": lag,
            "notifications": self.engine.notifications_seen,
            "reorgs": self.engine.reorgs_seen,
            "source": source.status() if source else {"kind": self.settings.source.kind, "state": "not running"},
            "plugins": self.host.status(),
            "config": {"path": str(self.config_path) if self.config_path else None, "digest": self.settings.digest()},
            # storage.read_url: the replica's head, its lag in blocks behind this head and its replay lag in seconds
            "replica": self.db.replica_status(head.number if head else None)  # type: ignore[attr-defined]
            if self.settings.storage.read_url else None,
        }

    def close(self) -> None:
        self.host.shutdown()
        self.engine.close()


class EngineView:
    """The engine's durable state as sources see it (:class:`~sidecar.sources.base.ChainView`)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def head(self):  # type: ignore[no-untyped-def]
        return self.engine.head

    def canonical(self, number: int) -> Block | None:
        # On this thread's read connection: committed blocks only, and still readable while the engine's own
        # connection is being replaced after a fault (Runner._reconnect).
        stored = self.engine.canonical(number, self.engine.db.reader())
        return stored.as_block() if stored else None

    def source_token(self) -> Any:
        return self.engine.source_token


def open_database(storage: StorageConfig, environ: Mapping[str, str] | None = None) -> Backend:
    """The database ``[storage]`` names: ``storage.url`` ``postgresql://...`` (password from the environment
    variable ``storage.password_env``), else the SQLite file ``storage.url`` or ``storage.path``.

    Raises:
        sidecar.errors.StorageError: the database cannot be opened or is refused (see each backend).
    """
    if storage.is_postgres:
        from .backends.postgres import PgDatabase

        env = os.environ if environ is None else environ
        return PgDatabase(storage.url, password=env.get(storage.password_env) or None,
                          password_env=storage.password_env, read_url=storage.read_url,
                          statement_timeout=storage.statement_timeout, lock_timeout=storage.lock_timeout)
    return Database(storage.sqlite_path, synchronous=storage.synchronous, cache_mib=storage.cache_mib)


FileStamp = tuple[int, int, int, int]


def file_stamp(path: Path | None) -> FileStamp | None:
    """``(device, inode, size in bytes, mtime in ns)`` of ``path``, ``None`` if there is no file: what changes when
    the file is written or replaced by rename, compared by the config watcher (:func:`sidecar.runner.watch_config`)."""
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def open_app(config_path: str | Path | None = None, *, extra_plugins: Mapping[str, object] | None = None,
             settings: Settings | None = None, environ: Mapping[str, str] | None = None, serve: bool = False) -> App:
    """Open a sidecar: validate config, open the database, enable plugins (migrations, ``monmouth_startup``).

    Args:
        config_path: the config file (``None``: :func:`default_config_path`, else built-in defaults).
        extra_plugins: plugin objects registered in code (tests, embedding), ``{name: object}``.
        settings: already validated settings (skips reading the file).
        serve: open for reading beside a running engine (``monmouth serve``, ``monmouth status``): ``App.engine``
            is a :class:`sidecar.cursorreader.CursorReader`, which takes no ingestion lock and re-reads the head;
            plugins get ``ctx.role == "serve"`` and start no background worker.

    Raises:
        ConfigError: invalid configuration.
    """
    path = Path(config_path) if config_path is not None else default_config_path()
    stamp = file_stamp(path)  # before reading: a write after it shows as a change to the config watcher
    if settings is None:
        settings, plugins = load_settings(path, extra_plugins, environ)
    else:
        modules = {name: p.module for name, p in settings.plugins.items() if p.module}
        plugins = discover(modules, extra_plugins)
    db = open_database(settings.storage, environ)
    metrics = Metrics()
    host = PluginHost(plugins, db, metrics.registry, role="serve" if serve else "run")
    if serve:
        from .cursorreader import CursorReader

        engine: Engine = CursorReader(db, host, settings.engine, metrics)
    else:
        engine = Engine(db, host, settings.engine, metrics)
    host.apply_settings(settings)
    if engine.head is not None:
        metrics.head.set(engine.head.number)
    return App(settings, path, plugins, db, metrics, host, engine, dict(extra_plugins or {}), config_stamp=stamp)


def make_source(settings: Settings, metrics: Metrics | None = None) -> Source:
    """The source ``[source]`` selects.

    Raises:
        ConfigError: ``source.path`` missing for replay.
    """
    from .errors import ConfigError

    s = settings.source
    if s.kind == "rpc":
        from .sources.rpc import RpcSource

        return RpcSource(s.url, confirmations=s.confirmations, poll_interval=s.poll_interval,
                         batch_size=s.batch_size, start_block=s.start_block, max_backoff=s.max_backoff,
                         timeout=s.timeout, verify=s.verify, metrics=metrics)
    if s.kind == "replay":
        from .sources.replay import ReplaySource

        if not s.path:
            raise ConfigError(f"{settings.origin}: source.path: required when source.kind = 'replay'")
        return ReplaySource(s.path)
    from .sources.exex import ExExSource

    start = None if s.start_block == "latest" else int(s.start_block)
    return ExExSource(s.url, window=s.window, heartbeat_s=s.heartbeat, metrics=metrics, max_backoff=s.max_backoff,
                      start_block=start)
