"""``monmouth serve``: the HTTP API, MCP and dashboard without an engine or a source, beside the one ``monmouth run``
that ingests into the same database (docs/storage.md, "Scale-out").

Invariants:

1. **Never a second writer of the chain tables.** A serving process has no engine connection: on PostgreSQL it
   never takes the ingestion lock, so any number of them run beside the one ``monmouth run`` (on as many machines
   as needed); its engine is a :class:`~sidecar.cursorreader.CursorReader`, which refuses to apply a notification.
2. **The head is the database's.** Each read of the head re-reads ``monmouth_cursor`` on the primary
   (:mod:`sidecar.cursorreader`), so ``/status`` and every route see what the engine last committed, never a head
   cached at start.
3. **Writes outside the chain hooks still work.** Agent memory writes, the audit log and plugin routes write through
   ``db.write()`` (their own short transactions on the primary), exactly as in ``monmouth run``.
4. **No background workers.** Plugins start here with ``ctx.role == "serve"`` (:class:`sidecar.context.PluginContext`)
   and start none (embedding, settling, outbox delivery): the one ``monmouth run`` runs them, so N serving
   processes never run N copies of a queue's work.
5. **config.toml is hot-reloaded as in ``monmouth run``** (watchfiles; :func:`sidecar.runner.apply_reload`): an
   invalid file is rejected and the last good config keeps serving. What the API reads per request applies at
   once: ``[auth]`` (tokens, ``loopback_open``, SIWE, rate limits, the token secret), the ``[http]`` limits
   (``max_body_bytes``, ``max_json_depth``, ``max_concurrency``, ``busy_*``, ``ready_lag``), plugins enabled or
   disabled and their config sections (a disabled plugin's routes answer 503). What is bound at start is logged
   and waits for a restart: the listening socket (``http.host``, ``http.port``, TLS files, ``http.enabled``;
   ``--port`` stays over ``http.port``), ``[storage]`` (open connections, their ``statement_timeout`` and
   ``lock_timeout``, ``read_url``) and ``engine.shutdown_timeout`` (uvicorn's drain time). ``[source]`` and the
   rest of ``[engine]`` do not apply to a serving process.

On SQLite ``serve`` runs beside one ``monmouth run`` on the same machine (the same file in WAL mode; SQLite
serialises writers with its write lock and busy timeout): useful to split the API from ingestion, not to scale
past one host (a SQLite file must not be shared over a network file system).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import anyio

from .stall import StallTracker

if TYPE_CHECKING:
    from .app import App
    from .shutdown import Shutdown

log = logging.getLogger(__name__)


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


async def serve(app: App, shutdown: Shutdown | None = None, *, watch_config: bool = True,
                task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
    """Serve ``[http]`` for ``app`` until cancelled or, with ``shutdown``, until SIGTERM/SIGINT (open requests
    drain within ``engine.shutdown_timeout``), hot-reloading its config file (invariant 5) unless ``watch_config``
    is False. ``task_status.started(port)`` once it listens.

    Raises:
        ConfigError: a public ``http.host`` without operator tokens, unreadable TLS files, a port in use.
        SourceError: the server stopped before listening.
    """
    from .api import create_api
    from .auth import check_bind
    from .preflight import check_listen
    from .runner import apply_reload, http_server, listening
    from .runner import watch_config as watch

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
        serving.http_port = await listening(server, http)
        if watch_config and app.config_path is not None:
            tg.start_soon(watch, app.config_path, lambda: apply_reload(app), lambda: app.config_stamp)
        log.warning("monmouth serve: %s://%s:%s on %s (head %s)", "https" if http.tls_cert else "http", http.host,
                    serving.http_port, app.db.describe(), app.engine.head or "empty")
        task_status.started(serving.http_port)
