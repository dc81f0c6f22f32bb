"""Waiting for the database at start: ``monmouth run`` keeps trying an unreachable PostgreSQL with backoff.

A sidecar started before its database server (a host boot, a compose file, a failover) should come up by itself
when the server does, and say meanwhile why it is not ready. :func:`open_when_reachable` calls ``open_app`` until it
stops raising :class:`~sidecar.errors.StorageUnavailableError` (exponential backoff, ``tenacity``, capped at
``source.max_backoff`` seconds), and while it waits serves ``/health`` (200, ``{"status": "starting"}``) and
``/ready`` (503, a problem document whose ``detail`` names the database URL without password and the fault) on
``[http]`` host and port, so supervisors and load balancers see the reason. Every other error is raised at once (a
bad login, pgvector missing, a newer schema, another engine: waiting would not fix them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from .config import Settings
from .errors import StorageUnavailableError

log = logging.getLogger(__name__)


def placeholder_api(reason: Callable[[], str]) -> Any:
    """The HTTP app served while waiting: ``/health`` 200 and ``/ready`` 503 with ``reason()``; 503 elsewhere."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from .problems import problem

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "starting"})

    async def ready(request: Request) -> JSONResponse:
        return problem(503, reason(), type="urn:monmouth:problem:not-ready", ready=False, reason=reason())

    async def other(request: Request) -> JSONResponse:
        return problem(503, f"starting: {reason()}", type="urn:monmouth:problem:not-ready")

    return Starlette(routes=[Route("/health", health), Route("/ready", ready),
                             Route("/{path:path}", other, methods=["GET", "POST", "PUT", "DELETE", "PATCH"])])


async def open_when_reachable(open_app: Callable[[], Any], settings: Settings, first: StorageUnavailableError) -> Any:
    """``open_app()`` (run on a worker thread) retried while it raises :class:`StorageUnavailableError`, serving the
    placeholder HTTP app meanwhile when ``http.enabled``; returns what ``open_app`` returned.

    Raises:
        MonmouthError: whatever else ``open_app`` raised (not retried).
    """
    import uvicorn

    from .runner import _server

    last: list[BaseException] = [first]

    def reason() -> str:
        return f"waiting for the database: {last[0]}"

    log.error("%s; retrying with backoff (up to %.0fs between attempts)", reason(), settings.source.max_backoff)
    server = None
    async with anyio.create_task_group() as tg:
        if settings.http.enabled:
            http = settings.http
            server = _server(uvicorn.Config(placeholder_api(reason), host=http.host, port=http.port,
                                            log_level="warning", lifespan="off", ssl_certfile=http.tls_cert or None,
                                            ssl_keyfile=http.tls_key or None))
            tg.start_soon(server.serve)

        def note(state: Any) -> None:
            error = state.outcome.exception()
            last[0] = error
            log.error("%s; next attempt in %.1fs", reason(), state.upcoming_sleep)

        try:
            async for attempt in AsyncRetrying(retry=retry_if_exception_type(StorageUnavailableError),
                                               wait=wait_exponential(multiplier=0.5, max=settings.source.max_backoff),
                                               before_sleep=note, reraise=True):
                with attempt:
                    app = await anyio.to_thread.run_sync(open_app)
        finally:
            if server is not None:
                server.should_exit = True
    log.warning("database reachable: %s", app.db.describe())
    return app
