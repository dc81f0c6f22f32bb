"""``config.toml``: loading, validation, ``MONMOUTH_`` environment overrides, and comment-preserving edits.

Layout (see the commented default ``config.toml`` at the repository root)::

    [source]   kind, url, path, confirmations, poll_interval, ...
    [storage]  path or url (SQLite path or postgresql://), password_env, synchronous
    [engine]   undo_window, history, ...
    [http]     enabled, host, port, ready_lag, max_body_bytes, max_json_depth
    [auth]     operator tokens (hashed), agent sign-in (SIWE), rate limits
    [logging]  level
    [plugins.<name>]  enabled, module (third-party plugins), and the plugin's own keys

Validation refuses unknown keys and bad types with a :class:`~sidecar.errors.ConfigError` that names the
file and the dotted key. Relative paths (``storage.path``, ``source.path``, plugin paths) are resolved
against the config file's directory.

Environment overrides: ``MONMOUTH_<SECTION>__<KEY>=value`` (double underscore between levels), e.g.
``MONMOUTH_SOURCE__URL=http://node:8545`` or ``MONMOUTH_PLUGINS__RAG__ENABLED=true``. The value is read as a
TOML literal when it parses as one (``true``, ``42``, ``"x"``, ``[1, 2]``), else as a plain string.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import tomlkit
import tomlkit.exceptions
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from .errors import ConfigError

ENV_PREFIX = "MONMOUTH_"
DEFAULT_CONFIG = "config.toml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SourceConfig(_Section):
    """``[source]``: where notifications come from."""

    kind: Literal["exex", "rpc", "replay"] = "rpc"
    #: rpc: the node's HTTP JSON-RPC endpoint; exex: the bridge's ZeroMQ endpoint.
    url: str = "http://127.0.0.1:8545"
    #: replay: the replay file to read.
    path: str = ""
    #: rpc: blocks to stay behind the node's latest block (0 follows the tip, reorgs included).
    confirmations: int = Field(0, ge=0, le=1024)
    #: rpc: seconds between polls when caught up.
    poll_interval: float = Field(1.0, gt=0, le=3600)
    #: rpc: blocks fetched per JSON-RPC batch while catching up; also the largest ChainCommitted emitted.
    batch_size: int = Field(16, ge=1, le=1000)
    #: rpc: first block to index on an empty database, or "latest".
    start_block: int | Literal["latest"] = 0
    #: rpc/exex: seconds of backoff cap when the node or bridge is unreachable.
    max_backoff: float = Field(30.0, gt=0, le=3600)
    #: rpc: seconds before an HTTP request is abandoned.
    timeout: float = Field(10.0, gt=0, le=600)
    #: rpc: check every block against its header (block hash, transactionsRoot, receiptsRoot) before indexing it.
    verify: bool = True
    #: exex: credit window, the most notifications un-acked at once.
    window: int = Field(64, ge=1, le=1024)
    #: exex: heartbeat interval, seconds.
    heartbeat: float = Field(1.0, gt=0, le=600)
    #: exex: the node's HTTP JSON-RPC endpoint (Reth's ``--http``), where plugins enabled late catch up from when
    #: the bridge is an older one that serves no history (sidecar/catchup.py); a current bridge serves it itself.
    rpc_url: str = ""

    @field_validator("rpc_url")
    @classmethod
    def _rpc_url(cls, v: str) -> str:
        if v and not re.fullmatch(r"https?://[^/\s:]+(:\d{1,5})?(/\S*)?", v):
            raise ValueError("must be an http:// or https:// URL with a host, such as http://127.0.0.1:8545")
        return v

    @model_validator(mode="after")
    def _rpc_url_for_exex(self) -> SourceConfig:
        if self.rpc_url and self.kind != "exex":
            raise ValueError(f"source.rpc_url is only used by the exex source (the {self.kind} source reads "
                             f"history from {'source.url' if self.kind == 'rpc' else 'source.path'}); remove it")
        return self


class StorageConfig(_Section):
    """``[storage]``: the database, a SQLite file (the default) or PostgreSQL (docs/storage.md)."""

    #: The SQLite file (when ``url`` is empty).
    path: str = "data/monmouth.sqlite"
    #: Where the data lives, taking precedence over ``path`` when set: a SQLite file path, or a PostgreSQL URL
    #: ``postgresql://user@host:port/dbname`` (pgvector required). No password in it: it comes from the environment
    #: variable named by ``password_env``.
    url: str = ""
    #: The environment variable holding the PostgreSQL password.
    password_env: str = Field("MONMOUTH_PG_PASSWORD", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    #: FULL survives power loss; NORMAL survives a process crash (kill -9) and is faster.
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    #: SQLite only: the page cache, in MiB, of each connection that writes (the engine's, plugin workers', an API
    #: thread's once it wrote); read-only connections keep SQLite's 2 MiB. Pages are allocated as they are read,
    #: so a connection holds at most this much or the database's size.
    cache_mib: int = Field(32, ge=2, le=65_536)
    #: WAL size, in pages, at which ``monmouth run`` checkpoints the WAL on a background thread (SQLite's own
    #: threshold is the same, but it checkpoints inside the commit that crosses it: on a large database that stalls
    #: a block for ~0.3 s). 0 leaves checkpoints to SQLite, inline.
    checkpoint_pages: int = Field(1000, ge=0, le=10_000_000)
    #: PostgreSQL only: a streaming replica of ``url`` (``postgresql://user@host:port/dbname``, same password
    #: variable) that the HTTP API's read-only requests (GET) read from; writes, the engine and workers stay on
    #: ``url``. ``/status`` reports the replica's head and lag (docs/storage.md).
    read_url: str = ""
    #: PostgreSQL only: seconds a statement run for an HTTP request (API, MCP, dashboard) may take before the server
    #: cancels it (``statement_timeout``; the request gets a 503 naming this key). The engine, plugin workers and
    #: start-up (migrations, index builds) have no statement timeout. 0: no limit.
    statement_timeout: float = Field(30.0, ge=0, le=86_400)
    #: PostgreSQL only: seconds a statement waits for a row or table lock before it is cancelled
    #: (``lock_timeout``), on every connection, the engine's included (its notification is then retried). 0: no
    #: limit.
    lock_timeout: float = Field(10.0, ge=0, le=86_400)

    @field_validator("url", "read_url")
    @classmethod
    def _url(cls, v: str, info: ValidationInfo) -> str:
        scheme = v.split("://", 1)[0].lower() if "://" in v else ""
        if scheme in ("postgresql", "postgres"):
            parts = urlsplit(v)
            if parts.password is not None:
                raise ValueError("must not contain a password (secrets never go in the file): remove ':<password>' "
                                 "and put it in the environment variable named by storage.password_env")
            if not parts.path.strip("/"):
                raise ValueError("names no database: postgresql://user@host:port/dbname")
        elif info.field_name == "read_url" and v:
            raise ValueError("must be a postgresql:// URL of a streaming replica of storage.url")
        elif scheme:
            raise ValueError(f"must be a SQLite file path or a postgresql:// URL (got a {scheme}:// URL)")
        return v

    @model_validator(mode="after")
    def _replica_of_postgres(self) -> StorageConfig:
        if self.read_url and not self.is_postgres:
            raise ValueError("storage.read_url: a read replica needs storage.url = \"postgresql://...\" (SQLite has "
                             "no replica); remove read_url or set storage.url")
        return self

    @property
    def is_postgres(self) -> bool:
        """Whether ``url`` names a PostgreSQL database."""
        return self.url.lower().startswith(("postgresql://", "postgres://"))

    @property
    def sqlite_path(self) -> str:
        """The SQLite file (``url`` if it is a path, else ``path``); meaningless when :attr:`is_postgres`."""
        return self.url or self.path


class EngineConfig(_Section):
    """``[engine]``: the exactly-once engine."""

    #: Blocks behind the head whose undo data is kept even when the source reports no finalized block.
    undo_window: int = Field(256, ge=1, le=1_000_000)
    #: Blocks behind the head never treated as finalized, whatever the source's finalized tag says: a node that
    #: calls a fake chain finalized cannot make the sidecar drop the undo data of these (0: trust the tag).
    finality_depth: int = Field(64, ge=0, le=1_000_000)
    #: Blocks behind the head whose hashes are kept for idempotent skipping of re-delivered notifications.
    history: int = Field(4096, ge=1, le=10_000_000)
    #: Seconds of backoff cap while a notification keeps failing in a plugin.
    retry_max_backoff: float = Field(30.0, gt=0, le=3600)
    #: Seconds between progress log lines while catching up.
    progress_interval: float = Field(5.0, gt=0)
    #: Most notifications applied in one SQLite transaction (group commit) when the source has several waiting
    #: (catching up, a backlog); each still commits or fails on its own. 1 turns group commit off.
    group_commit: int = Field(32, ge=1, le=1024)
    #: A single notification of at most this many encoded bytes is applied on the event loop's thread, so that
    #: nothing but decode, apply and COMMIT lies between its arrival and its ack (a hand-over to the engine's worker
    #: thread and back costs milliseconds at the tail on a busy machine); larger ones, batches and PostgreSQL go to
    #: the worker thread, so that the HTTP API is never held up by more than a small block. 0: always the worker.
    inline_apply_bytes: int = Field(65_536, ge=0, le=16 * 1024**2)
    #: Seconds from SIGTERM/SIGINT to a forced exit: the notification in flight commits (or rolls back), HTTP
    #: drains, workers and child processes stop, exit 0; past this, or on a second signal, exit at once
    #: (sidecar/shutdown.py). Keep it below the supervisor's own (systemd TimeoutStopSec; Docker --stop-timeout,
    #: 10 s by default: raise it).
    shutdown_timeout: float = Field(20.0, gt=0, le=3600)


class HttpConfig(_Section):
    """``[http]``: health, metrics, status and plugin routes."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    #: /ready answers 200 while the head is within this many blocks of the source head.
    ready_lag: int = Field(3, ge=0)
    #: Largest request body accepted, bytes (413 beyond).
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024, le=1024**3)
    #: Deepest nesting of arrays and objects accepted in a request body, levels (400 beyond; checked before parsing).
    max_json_depth: int = Field(64, ge=8, le=512)
    #: Requests handled at once (others wait their turn); while the engine is applying notifications (catching up,
    #: a burst of blocks) only busy_concurrency at once, for at most busy_share of the time: ingestion comes first.
    max_concurrency: int = Field(16, ge=1, le=10_000)
    busy_concurrency: int = Field(1, ge=1, le=10_000)
    #: While the engine is busy, the share of wall time request handling may take (the rest is the engine's).
    busy_share: float = Field(0.3, gt=0, le=1)
    #: Serve HTTPS with uvicorn's own TLS: PEM certificate (chain) and private key files; both or neither.
    tls_cert: str = ""
    tls_key: str = ""

    @model_validator(mode="after")
    def _tls_pair(self) -> HttpConfig:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key: set both (HTTPS) or neither")
        return self


_TOKEN_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")


def _token_entries(v: list[str]) -> list[str]:
    """Operator tokens as ``sha256:<hex>`` hashes; a plain token (>= 24 characters) is hashed at once."""
    out = []
    for t in v:
        if not isinstance(t, str) or not t.strip():
            raise ValueError("tokens must be non-empty strings")
        t = t.strip()
        if t.startswith("sha256:"):
            if not _TOKEN_HASH.match(t):
                raise ValueError("a hashed token is 'sha256:' followed by 64 lowercase hex digits")
            out.append(t)
        elif len(t) < 24:
            raise ValueError("a plain token must be at least 24 characters (prefer its sha256: hash)")
        else:
            out.append("sha256:" + hashlib.sha256(t.encode()).hexdigest())
    return out


class AuthConfig(_Section):
    """``[auth]``: operator tokens, agent sign-in (SIWE, EIP-4361) and rate limits (see docs/security.md)."""

    #: Operator tokens, stored as "sha256:<hex>" (``monmouth token new`` prints one and its hash).
    admin_tokens: list[str] = []
    read_tokens: list[str] = []
    #: Loopback clients without a token act as admin, but only while http.host is a loopback address.
    loopback_open: bool = True
    #: Agents sign in with Ethereum (GET /auth/nonce, POST /auth/siwe) and get a short-lived bearer token.
    siwe: bool = True
    #: The domain SIWE messages must name. "" (local development): the request's Host, only on a loopback bind and
    #: for a loopback Host; required to serve sign-in on any other address (``monmouth.auth.check_bind``).
    domain: str = ""
    #: The chain id SIWE messages must name.
    chain_id: int = Field(1, ge=1)
    #: Lifetime of an agent's bearer token and of a sign-in nonce, seconds.
    token_ttl: int = Field(3600, ge=30, le=7 * 86_400)
    nonce_ttl: int = Field(300, ge=10, le=86_400)
    #: HMAC key of agent tokens (hex, >= 32 bytes); "" = random at each start (tokens end with the process). Read on
    #: every check: rotating it by hot reload retires the tokens signed with the old key.
    secret: str = ""
    #: Token buckets: requests per second and burst, per client IP (loopback exempt when rate_exempt_loopback)
    #: and per bearer token. 0 disables that limit.
    rate_ip: float = Field(20.0, ge=0)
    burst_ip: int = Field(60, ge=1)
    rate_token: float = Field(50.0, ge=0)
    burst_token: int = Field(100, ge=1)
    rate_exempt_loopback: bool = True

    _hash_admin = field_validator("admin_tokens")(classmethod(lambda cls, v: _token_entries(v)))
    _hash_read = field_validator("read_tokens")(classmethod(lambda cls, v: _token_entries(v)))

    @field_validator("secret")
    @classmethod
    def _secret(cls, v: str) -> str:
        if v:
            try:
                raw = bytes.fromhex(v.removeprefix("0x"))
            except ValueError:
                raise ValueError("must be hex") from None
            if len(raw) < 32:
                raise ValueError("must be at least 32 bytes (64 hex digits)")
        return v

    @property
    def enabled(self) -> bool:
        """Whether anything but loopback can authenticate (an operator token is set)."""
        return bool(self.admin_tokens or self.read_tokens)


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class PluginSettings(BaseModel):
    """``[plugins.<name>]``: ``enabled``, ``module`` (third-party plugins loaded by module path or file),
    ``start_block`` (the first block it indexes when it joins a database that is already ahead; default
    ``source.start_block``, see :mod:`sidecar.progress`) and ``config``, the rest of the section validated by the
    plugin's own model."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    enabled: bool = False
    module: str | None = None
    start_block: int | None = None
    config: Any = None


class Settings(BaseModel):
    """The whole, validated configuration."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    source: SourceConfig = SourceConfig()
    storage: StorageConfig = StorageConfig()
    engine: EngineConfig = EngineConfig()
    http: HttpConfig = HttpConfig()
    auth: AuthConfig = AuthConfig()
    logging: LoggingConfig = LoggingConfig()
    plugins: dict[str, PluginSettings] = {}
    #: Where the settings came from (for messages and relative paths); not a config key.
    origin: str = Field("<defaults>", exclude=True)

    def plugin_enabled(self, name: str) -> bool:
        p = self.plugins.get(name)
        return bool(p and p.enabled)

    def digest(self) -> str:
        """sha256 of the settings as JSON: identifies a config in checkpoints and ``/status``."""
        dumped = self.model_dump(mode="json", exclude={"origin"})
        for name, p in self.plugins.items():
            cfg = p.config
            dumped["plugins"][name]["config"] = cfg.model_dump(mode="json") if isinstance(cfg, BaseModel) else cfg
        return hashlib.sha256(json.dumps(dumped, sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------------


def _fmt_errors(origin: str, prefix: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in (prefix, *e["loc"]) if p != "")
        if e["type"] == "extra_forbidden":
            lines.append(f"{origin}: unknown key {key!r}")
        elif "token" in key or "secret" in key:  # never echo a secret
            lines.append(f"{origin}: {key}: {e['msg']}"[:300])
        else:
            got = e.get("input")
            if isinstance(got, str):  # a URL's password (storage.url, storage.read_url) is never echoed either
                got = _URL_PASSWORD.sub(r"\1***@", got)
            lines.append(f"{origin}: {key}: {e['msg']} (got {got!r})"[:300])
    return "; ".join(lines)


_URL_PASSWORD = re.compile(r"(://[^/@:]*:)[^/@]*@")


def _env_value(raw: str) -> Any:
    try:
        return tomlkit.parse(f"v = {raw}").unwrap()["v"]
    except (tomlkit.exceptions.TOMLKitError, ValueError):
        return raw


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Nested mapping built from ``MONMOUTH_A__B=value`` variables (names without ``__`` are ignored)."""
    environ = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX):].split("__")]
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"environment {name}: {p!r} is both a value and a section")
        node[parts[-1]] = _env_value(raw)
    return out


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v
    return base


def read_document(path: str | Path) -> tomlkit.TOMLDocument:
    """Parse ``path`` with tomlkit (comments and layout kept).

    Raises:
        ConfigError: missing or unreadable file, bytes that are not UTF-8, or a TOML syntax error, naming the file
            and the line.
    """
    p = Path(path)
    try:
        return tomlkit.parse(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except UnicodeDecodeError as e:
        line = p.read_bytes()[:e.start].count(b"\n") + 1
        raise ConfigError(f"{p}: not UTF-8 text: byte 0x{e.object[e.start]:02x} at offset {e.start} (line {line})"
                          ) from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the config file: {e.strerror}") from None
    except tomlkit.exceptions.ParseError as e:
        raise ConfigError(f"{p}: invalid TOML: {e}") from None


def validate(
    data: Mapping[str, Any],
    origin: str,
    plugin_models: Mapping[str, type[BaseModel] | None],
    base_dir: Path | None = None,
) -> Settings:
    """Validate a plain mapping into :class:`Settings`.

    Args:
        data: the parsed TOML (plus overrides) as plain Python values.
        origin: the file name used in error messages.
        plugin_models: ``{plugin_name: config model or None}`` for every installed plugin.
        base_dir: directory that relative paths are resolved against (the config file's).

    Raises:
        ConfigError: unknown key, bad type or value, or a section for a plugin that is not installed.
    """
    data = dict(data)
    raw_plugins = data.pop("plugins", {}) or {}
    if not isinstance(raw_plugins, Mapping):
        raise ConfigError(f"{origin}: 'plugins' must be a table of [plugins.<name>] sections")
    try:
        settings = Settings(**data, origin=origin)
    except ValidationError as e:
        raise ConfigError(_fmt_errors(origin, "", e)) from None
    except TypeError as e:
        raise ConfigError(f"{origin}: {e}") from None

    plugins: dict[str, PluginSettings] = {}
    for name, section in raw_plugins.items():
        if not isinstance(section, Mapping):
            raise ConfigError(f"{origin}: plugins.{name} must be a table")
        section = dict(section)
        enabled = section.pop("enabled", False)
        module = section.pop("module", None)
        start_block = section.pop("start_block", None)
        if not isinstance(enabled, bool):
            raise ConfigError(f"{origin}: plugins.{name}.enabled: must be true or false (got {enabled!r})")
        if module is not None and not isinstance(module, str):
            raise ConfigError(f"{origin}: plugins.{name}.module: must be a string (got {module!r})")
        if start_block is not None and (type(start_block) is not int or start_block < 0):
            raise ConfigError(f"{origin}: plugins.{name}.start_block: must be a block number >= 0 "
                              f"(got {start_block!r})")
        if name not in plugin_models:
            known = ", ".join(sorted(plugin_models)) or "none"
            raise ConfigError(f"{origin}: plugins.{name}: no such plugin is installed (installed: {known})")
        model = plugin_models[name]
        if model is None:
            if section:
                raise ConfigError(f"{origin}: unknown key 'plugins.{name}.{next(iter(section))}'")
            cfg: Any = None
        else:
            try:
                cfg = model(**section)
            except ValidationError as e:
                raise ConfigError(_fmt_errors(origin, f"plugins.{name}", e)) from None
        plugins[name] = PluginSettings(enabled=enabled, module=module, start_block=start_block, config=cfg)
    for name, model in plugin_models.items():
        if name not in plugins:
            plugins[name] = PluginSettings(enabled=False, config=model() if model is not None else None)
    settings.plugins = plugins

    if base_dir is not None:
        if not settings.storage.url:
            settings.storage.path = str(_resolve(base_dir, settings.storage.path))
        elif not settings.storage.is_postgres:
            settings.storage.url = str(_resolve(base_dir, settings.storage.url))
        if settings.http.tls_cert:
            settings.http.tls_cert = str(_resolve(base_dir, settings.http.tls_cert))
            settings.http.tls_key = str(_resolve(base_dir, settings.http.tls_key))
        if settings.source.path:
            settings.source.path = str(_resolve(base_dir, settings.source.path))
        for p in settings.plugins.values():
            if p.module and (p.module.endswith(".py") or "/" in p.module):
                p.module = str(_resolve(base_dir, p.module))
    if settings.storage.url and not settings.storage.is_postgres:
        settings.storage.path = settings.storage.url  # one SQLite file, whichever key named it (plugins read path)
    return settings


def _resolve(base: Path, p: str) -> Path:
    path = Path(p).expanduser()
    return path if path.is_absolute() else (base / path)


def module_paths(data: Mapping[str, Any], base_dir: Path | None = None) -> dict[str, str]:
    """``{plugin_name: module}`` for sections that name a third-party plugin by module path or file (file paths
    resolved against ``base_dir``, the config file's directory)."""
    out: dict[str, str] = {}
    for name, section in (data.get("plugins") or {}).items():
        if isinstance(section, Mapping) and isinstance(section.get("module"), str):
            mod = section["module"]
            if base_dir is not None and (mod.endswith(".py") or "/" in mod):
                mod = str(_resolve(base_dir, mod))
            out[name] = mod
    return out


def load_data(path: str | Path | None, environ: Mapping[str, str] | None = None) -> tuple[dict[str, Any], str, Path]:
    """Read the config file (if any) and apply environment overrides; returns ``(data, origin, base_dir)``."""
    if path is None:
        data: dict[str, Any] = {}
        origin, base = "<defaults>", Path.cwd()
    else:
        p = Path(path)
        data = read_document(p).unwrap()
        origin, base = str(p), p.resolve().parent
    return _merge(data, env_overrides(environ)), origin, base


# ---------------------------------------------------------------------------------------------------------------------
# Editing (monmouth config get|set)


def _split_key(key: str) -> list[str]:
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise ConfigError(f"bad key {key!r}: use dotted names such as source.url or plugins.rag.enabled")
    return parts


def get_value(doc: Mapping[str, Any], key: str) -> Any:
    """The value at dotted ``key``. Raises ConfigError when absent."""
    node: Any = doc
    for p in _split_key(key):
        if not isinstance(node, Mapping) or p not in node:
            raise ConfigError(f"key {key!r} is not set in the config file")
        node = node[p]
    return node.unwrap() if hasattr(node, "unwrap") else node


def parse_value(raw: str) -> Any:
    """Read a command-line value as a TOML literal when it is one, else as a string."""
    return _env_value(raw)


def set_value(doc: tomlkit.TOMLDocument, key: str, value: Any) -> None:
    """Set dotted ``key`` in ``doc``, creating tables as needed and keeping comments and layout."""
    parts = _split_key(key)
    node: Any = doc
    for p in parts[:-1]:
        if p not in node:
            node[p] = tomlkit.table()
        node = node[p]
        if not isinstance(node, Mapping):
            raise ConfigError(f"cannot set {key!r}: {p!r} is a value, not a table")
    node[parts[-1]] = value


def write_document(path: str | Path, doc: tomlkit.TOMLDocument) -> None:
    """Write atomically (temporary file + rename), so a hot reload never sees half a file."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(tomlkit.dumps(doc), encoding="utf-8")
    os.replace(tmp, p)
