"""The HTTP app (FastAPI): ``/health``, ``/ready``, ``/status``, ``/metrics``, and every plugin's routes.

Plugin routers (``monmouth_http_router``) are mounted for every installed plugin; while a plugin is disabled
its routes answer 503 naming the plugin, so a hot reload that enables it needs no restart.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import __version__
from .plugins import declared

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .app import App
    from .runner import Runner


def _plugin_guard(app: App, name: str) -> Any:
    def guard() -> None:
        if not app.host.is_enabled(name):
            raise HTTPException(503, detail=f"plugin {name!r} is disabled (set plugins.{name}.enabled = true)")

    return Depends(guard)


def create_api(app: App, runner: Runner | None = None) -> FastAPI:
    """Build the ASGI app for a sidecar. ``runner`` supplies live source state (``None`` for offline use)."""
    api = FastAPI(title="Monmouth sidecar", version=__version__)
    api.state.monmouth = app
    api.state.runner = runner

    def status_obj() -> dict[str, Any]:
        return runner.status() if runner is not None else app.status()

    @api.get("/health", tags=["core"])
    def health() -> dict[str, str]:
        """Liveness: the process is up and serving."""
        return {"status": "ok"}

    @api.get("/ready", tags=["core"])
    def ready() -> JSONResponse:
        """200 while the head is within ``http.ready_lag`` blocks of the source head, else 503 with the reason."""
        ok, reason = runner.ready() if runner is not None else (False, "not running")
        return JSONResponse({"ready": ok, "reason": reason}, status_code=200 if ok else 503)

    @api.get("/status", tags=["core"])
    async def status() -> dict[str, Any]:
        """Head (number, hash), finalized, source head, lag (blocks), counters, source and plugin states."""
        return await anyio.to_thread.run_sync(status_obj)

    @api.get("/metrics", tags=["core"])
    def metrics() -> Response:
        """Prometheus text exposition of every ``monmouth_*`` metric."""
        if runner is not None:
            runner.status()  # refresh the lag gauge
        return Response(generate_latest(app.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    for name, plugin in app.host.installed.items():
        try:
            router = declared(plugin, "monmouth_http_router")
        except Exception as e:  # one plugin's broken routes must not take the API down
            log.error("plugin %s: monmouth_http_router failed, its routes are not served: %s", name, e)
            app.host.errors[name] = f"monmouth_http_router failed: {type(e).__name__}: {e}"
            continue
        if router is not None:
            api.include_router(router, dependencies=[_plugin_guard(app, name)])
    return api
