"""``monmouth serve``: the HTTP API, MCP and dashboard without an engine or a source, beside the one ``monmouth run``
that ingests into the same database (docs/storage.md, "Scale-out").

Invariants:

1. **Never a second writer of the chain tables.** A serving process has no engine connection: on PostgreSQL it
   never takes the ingestion lock, so any number of them run beside the one ``monmouth run`` (on as many machines
   as needed); :class:`CursorReader` refuses to apply a notification.
2. **The head is the database's.** Each read of the head re-reads ``monmouth_cursor`` (one primary-key lookup) on
   this thread's read connection, so ``/status`` and every route see what the engine last committed, never a head
   cached at start. The counters (finalized, notifications, reorgs) are read in the same statement as the head.
3. **Writes outside the chain hooks still work.** Agent memory writes, the audit log and plugin routes write through
   ``db.write()`` (their own short transactions on the primary), exactly as in ``monmouth run``.

On SQLite ``serve`` runs beside one ``monmouth run`` on the same machine (the same file in WAL mode; SQLite
serialises writers with its write lock and busy timeout): useful to split the API from ingestion, not to scale
past one host (a SQLite file must not be shared over a network file system).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import anyio

from .backends import replica_reads
from .engine import Engine
from .errors import ConfigError, StorageError
from .stall import StallTracker

if TYPE_CHECKING:
    from collections.abc import Iterable

    from .app import App
    from .backends import Backend
    from .config import EngineConfig
    from .metrics import Metrics
    from .plugins import PluginHost
    from .shutdown import Shutdown
    from .types import BlockRef, Notification

log = logging.getLogger(__name__)


class CursorReader(Engine):
    """The engine's read surface (head, finalized, counters, canonical blocks) without the engine: what a serving
    process shows, read from the database at each use (invariant 2). Same constructor as :class:`Engine`; it opens
    no write connection and takes no ingestion lock.

    Raises (from :meth:`apply_many`):
        StorageError: always; a serving process does not ingest.
    """

    def __init__(self, db: Backend, host: PluginHost, config: EngineConfig | None = None,
                 metrics: Metrics | None = None) -> None:
        from .config import EngineConfig

        self.db = db
        self.host = host
        self.config = config or EngineConfig()
        self.metrics = metrics
        self.conn = db.connect(readonly=True)
        self._read_cursor()

    def _read_cursor(self) -> None:
        from .engine import read_cursor

        # db.reader(): this thread's connection to the primary, which sees every commit (no snapshot held between
        # statements); never the read replica, whose head /status reports beside this one.
        with replica_reads(False):
            cursor = read_cursor(self.db.reader())
        self._head = self._working = cursor.head
        self.finalized = cursor.finalized
        self.notifications_seen = cursor.notifications
        self.reorgs_seen = cursor.reorgs
        self._token = cursor.source_token

    @property
    def head(self) -> BlockRef | None:
        """The head the engine last committed (block number and hash), re-read now; ``None`` on an empty
        database."""
        self._read_cursor()
        return self._head

    def reconnect(self) -> None:
        self.close()
        self.conn = self.db.connect(readonly=True)
        self._read_cursor()

    def apply_many(self, items: Iterable[tuple[Notification, object]]) -> tuple[list[Any], Exception | None]:
        raise StorageError("monmouth serve does not ingest: exactly one `monmouth run` applies notifications to "
                           f"{self.db.describe()}")


class Serving:
    """What the HTTP app reads from a serving process (the :class:`sidecar.api.Runner` protocol): ``/status`` is
    the database's view plus ``"role": "serve"``; ``/ready`` is 200 while the database answers and has a head.

    Args:
        app: the sidecar opened with ``open_app(..., serve=True)`` (its engine a :class:`CursorReader`).
    """

    def __init__(self, app: App) -> None:
        self.app = app
        self.lock = anyio.Lock()  # never held: no ingestion here to give way to
        self.stall = StallTracker(app.metrics.registry)
        self.catchup = _NotCatchingUp()
        self.started_at = time.time()
        self.http_port: int | None = None

    def status(self) -> dict[str, Any]:
        st = self.app.status()
        st["role"] = "serve"
        st["source"] = {"kind": self.app.settings.source.kind, "state": "ingested by monmouth run"}
        return st

    def ready(self) -> tuple[bool, str]:
        try:
            head = self.app.engine.head
        except Exception as e:  # the database does not answer: name it
            return False, f"database {self.app.db.describe()} does not answer: {e}"
        if head is None:
            return False, f"database {self.app.db.describe()} is empty: no `monmouth run` has committed a block yet"
        return True, "serving"


class _NotCatchingUp:
    """A serving process runs no catch-up (sidecar/catchup.py): plugin responses get no ``X-Monmouth-Behind``."""

    def behind_headers(self, name: str) -> dict[str, str]:
        return {}


async def serve(app: App, shutdown: Shutdown | None = None, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
    """Serve ``[http]`` for ``app`` until cancelled or, with ``shutdown``, until SIGTERM/SIGINT (open requests
    drain within ``engine.shutdown_timeout``). ``task_status.started(port)`` once it listens.

    Raises:
        ConfigError: a public ``http.host`` without operator tokens, unreadable TLS files, a port in use.
    """
    from .api import create_api
    from .auth import check_bind
    from .preflight import check_listen
    from .runner import http_server

    check_bind(app.settings)
    check_listen(app.settings)
    serving = Serving(app)
    api = create_api(app, serving)
    server = http_server(app, api)
    http = app.settings.http
    async with api.router.lifespan_context(api), anyio.create_task_group() as tg:

        async def until_drained() -> None:
            await server.serve()  # returns once should_exit is set and the open requests finished
            tg.cancel_scope.cancel()

        if shutdown is not None:
            await tg.start(shutdown.watch)
            shutdown.on_stop(lambda: setattr(server, "should_exit", True))
        tg.start_soon(until_drained)
        while not server.started:
            if server.should_exit:
                raise ConfigError(f"http.port: could not serve on {http.host}:{http.port}")
            await anyio.sleep(0.02)
        serving.http_port = server.servers[0].sockets[0].getsockname()[1]
        log.warning("monmouth serve: %s://%s:%s on %s (head %s)", "https" if http.tls_cert else "http", http.host,
                    serving.http_port, app.db.describe(), app.engine.head or "empty")
        task_status.started(serving.http_port)
