"""Prometheus metrics of the HTTP API, as an ASGI middleware around the whole application (rate-limited and
refused requests included): ``monmouth_http_requests_total{method, route, status}`` and
``monmouth_http_request_seconds{method, route}`` (see :class:`sidecar.metrics.Metrics`).

``route`` is the matched route's template (``/memory/agents/{address}/items``), never the raw path, so that the
label's values stay few; requests to mounted applications (``/mcp``, static files) and to unknown paths count
as ``other``.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import Metrics


class RequestMetrics:
    """Wrap ``app`` (an ASGI application) and count its HTTP requests into ``metrics``.

    A request whose handler raised before answering counts with status 500 (what the server sends).
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "other"  # FastAPI puts the matched route here
            method = scope["method"]
            self.metrics.http_requests.labels(method, route, str(status)).inc()
            self.metrics.http_request_seconds.labels(method, route).observe(time.perf_counter() - t0)
