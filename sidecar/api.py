"""The HTTP app (FastAPI): core routes, agent sign-in, the audit log, every plugin's routes, ``/mcp`` and
``/dashboard``.

* Core: ``/health`` and ``/ready`` (public), ``/status`` (read, agents), ``/metrics`` (read).
* Auth: ``GET /auth/nonce`` and ``POST /auth/siwe`` (agents sign in with Ethereum, EIP-4361), ``GET /auth/whoami``.
* ``GET /audit`` (admin): the audit log, newest first, paged with ``before``.
* Plugin routers (``monmouth_http_router``) are mounted for every installed plugin behind the default access
  policy (:func:`monmouth.auth.default_policy`) unless a route declares its own (``require(...)``); while a plugin is
  disabled its routes answer 503 naming the plugin, so a hot reload that enables it needs no restart.
* ``/mcp``: the MCP server (streamable HTTP), same auth. ``/dashboard``: the live dashboard (no CDN).

Every error is an RFC 9457 problem details object (:mod:`monmouth.problems`); request bodies are limited to
``http.max_body_bytes`` (413) and ``http.max_json_depth`` levels of nesting, checked before any parser runs, and a
request carries one ``Authorization`` header (400; :mod:`monmouth.limits`); rate limits answer 429 with
``Retry-After`` (:mod:`monmouth.ratelimit`).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Protocol

import anyio
import anyio.to_thread
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__, problems
from .audit import Audit, route_event
from .auth import AccessRule, Authenticator, Principal, check_bind, current_principal, default_policy, require
from .backends import serving_request
from .limits import RequestLimitMiddleware, Text
from .plugins import call_one
from .problems import ProblemError
from .ratelimit import RateLimitMiddleware

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .app import App
    from .stall import StallTracker

DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboard"
#: Header carrying a per-process secret on the MCP server's in-process calls (not rate-limited twice).
INTERNAL_HEADER = "x-monmouth-internal"


class BehindHeaders(Protocol):
    """How far behind a plugin's data is, as response headers (:meth:`sidecar.catchup.CatchUp.behind_headers`)."""

    def behind_headers(self, name: str) -> dict[str, str]: ...


class Runner(Protocol):
    """What the HTTP app reads from a running sidecar (implemented by :class:`monmouth.runner.Runner`, which builds
    the app; this module does not import it)."""

    lock: anyio.Lock
    stall: StallTracker

    @property
    def catchup(self) -> BehindHeaders:
        """Late plugins' catch-up (sidecar/catchup.py)."""

    def status(self) -> dict[str, Any]:
        """The ``/status`` object."""

    def ready(self) -> tuple[bool, str]:
        """``(ready, reason)`` for ``/ready``."""


def _plugin_guard(app: App, name: str, runner: Runner | None = None) -> Any:
    def guard(response: Response) -> None:
        if not app.host.is_enabled(name):
            raise ProblemError(503, f"plugin {name!r} is disabled (set plugins.{name}.enabled = true)",
                               field=f"plugins.{name}.enabled")
        if runner is not None:  # catching up (sidecar/catchup.py): say how far behind its data is
            response.headers.update(runner.catchup.behind_headers(name))

    return Depends(guard)


class RequestKindMiddleware:
    """Marks what a request does for the storage backend (:data:`sidecar.backends.REQUEST`): ``GET`` and ``HEAD``
    only read (on PostgreSQL they read the replica of ``storage.read_url`` when set), every other method may write
    (the primary); both run under ``storage.statement_timeout``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with serving_request("read" if scope["method"] in ("GET", "HEAD") else "request"):
            await self.app(scope, receive, send)


class AuditMiddleware:
    """Audits denials (401/403) and the successful calls of routes that declare an audit event
    (:func:`monmouth.audit.audited`)."""

    def __init__(self, app: ASGIApp, audit: Audit) -> None:
        self.app = app
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0

        async def watch(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        await self.app(scope, receive, watch)
        p = (scope.get("state") or {}).get("principal")
        who = p.name if p is not None else None
        client = scope.get("client")
        ip = client[0] if client else None
        if status in (401, 403):
            self.audit.denied(status, who, ip, scope["method"], scope["path"])
        elif status < 400:
            event = route_event(scope.get("route"))
            if event:
                self.audit.record(event, who, ip, path=scope["path"], status=status)


class AdmissionMiddleware:
    """Ingest first. At most ``http.max_concurrency`` requests are handled at once. While the engine is applying
    notifications (it applied one in the last ``BUSY_WINDOW`` seconds: catching up, a burst of blocks), at most
    ``http.busy_concurrency`` at once, and request handling may take only ``http.busy_share`` of wall time (a budget
    that refills at that rate), so ingestion keeps the CPU. Waiting requests queue in order on the event loop, using
    no CPU (only the head of the queue waits on a timer). ``/health``, ``/ready``, the dashboard's assets and
    ``/mcp`` itself (its tool calls come back through here) are never held."""

    BUSY_WINDOW = 0.5
    EXEMPT = ("/health", "/ready", "/mcp", "/dashboard/assets/")

    def __init__(self, app: ASGIApp, sidecar: App, runner: Runner | None) -> None:
        self.app = app
        self.sidecar = sidecar
        self.runner = runner
        self.inflight = 0
        self.waiting = 0
        self.held = 0  # requests that had to wait (for /status and the tests)
        self._seen = -1
        self._busy_at = 0.0
        self._debt = 0.0
        self._debt_t = 0.0
        self._gate: anyio.Lock | None = None
        self._released: anyio.Event | None = None

    def busy(self, now: float) -> bool:
        n = self.sidecar.engine.notifications_seen
        if n != self._seen or (self.runner is not None and self.runner.lock.locked()):
            self._seen = n
            self._busy_at = now
        return now - self._busy_at < self.BUSY_WINDOW

    def debt(self, now: float) -> float:
        share = self.sidecar.settings.http.busy_share
        self._debt = max(0.0, self._debt - (now - self._debt_t) * share)
        self._debt_t = now
        return self._debt

    async def _admit(self) -> None:
        http = self.sidecar.settings.http
        now = time.monotonic()
        if self._gate is None:
            self._gate, self._released = anyio.Lock(), anyio.Event()
        if not self.waiting and self.inflight < http.max_concurrency and not self.busy(now):
            self._debt = 0.0
            self.inflight += 1
            return
        self.waiting += 1
        self.held += 1
        try:
            async with self._gate:  # FIFO: only the head of the queue checks and sleeps
                while True:
                    now = time.monotonic()
                    busy = self.busy(now)
                    limit = http.busy_concurrency if busy else http.max_concurrency
                    debt = self.debt(now) if busy else 0.0
                    if self.inflight < limit and debt <= 0.0:
                        self.inflight += 1
                        return
                    wait = debt / http.busy_share if debt > 0 else self.BUSY_WINDOW
                    assert self._released is not None
                    released = self._released
                    with anyio.move_on_after(min(max(wait, 0.002), self.BUSY_WINDOW)):
                        await released.wait()
        finally:
            self.waiting -= 1

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.EXEMPT):
            await self.app(scope, receive, send)
            return
        await self._admit()
        t0 = time.monotonic()
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1
            now = time.monotonic()
            if self.busy(now):
                self.debt(now)
                self._debt += now - t0
            if self._released is not None:
                self._released.set()
                self._released = anyio.Event()


class ReorgLog:
    """Wraps ``metrics.reorg_depth`` to remember the last reorgs (time, depth, new head) for the dashboard."""

    def __init__(self, app: App, keep: int = 50) -> None:
        self.app = app
        self.inner = app.metrics.reorg_depth
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep)

    def observe(self, depth: float, *a: Any, **kw: Any) -> None:
        self.inner.observe(depth, *a, **kw)
        head = self.app.engine.head
        self.recent.appendleft({"at": time.time(), "depth": int(depth), "head": head.number if head else None})

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class SiweIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: Text = Field(..., min_length=1, max_length=4096, description="The EIP-4361 message, as signed.")
    signature: str = Field(..., pattern=r"^0x[0-9a-fA-F]{130}$", description="0x + 65-byte signature (hex).")


def _access_rules(app: App, name: str, plugin: object, router: Any) -> dict[tuple[str, str], AccessRule]:
    """Plugin ``name``'s ``monmouth_access_rules``, keyed by ``(method, path)``, for routes its own ``router`` serves.
    A rule naming any other route, or a hook that raises, is refused: logged and named in the plugin's ``/status``
    ``error``; the route keeps the default policy (the stricter one)."""
    try:
        rules = list(call_one(plugin, "monmouth_access_rules") or ())
    except Exception as e:
        _plugin_error(app, name, f"monmouth_access_rules failed: {type(e).__name__}: {e}")
        return {}
    served = {(m, r.path) for r in router.routes for m in (getattr(r, "methods", None) or ())}
    out: dict[tuple[str, str], AccessRule] = {}
    for rule in rules:
        if isinstance(rule, AccessRule) and rule.key in served:
            out[rule.key] = rule
            continue
        what = f"{rule.method} {rule.path}" if isinstance(rule, AccessRule) else repr(rule)
        _plugin_error(app, name, f"monmouth_access_rules: {what} is not an AccessRule for a route of this plugin")
    return out


def _plugin_error(app: App, name: str, error: str) -> None:
    """Log a refused contribution of plugin ``name`` and add it to the plugin's ``/status`` ``error``."""
    log.error("plugin %s: %s", name, error)
    old = app.host.errors.get(name)
    app.host.errors[name] = f"{old}; {error}" if old else error


def _document_mcp(api: FastAPI, tools: list[str]) -> None:
    """Add ``/mcp`` (an ASGI endpoint, not a FastAPI route) to the OpenAPI spec, so it covers every route."""
    base = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            spec = base()
            problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
            op = {
                "tags": ["mcp"], "security": [{"HTTPBearer": []}, {}],
                "responses": {"200": {"description": "JSON-RPC response",
                                      "content": {"application/json": {"schema": {"type": "object"}}}},
                              "202": {"description": "Accepted (notification)"},
                              **{str(c): {"description": d, "content": problem}
                                 for c, d in ((401, "Unauthorized"), (429, "Too Many Requests"))}},
            }
            spec["paths"]["/mcp"] = {"post": {
                **op, "summary": "MCP (streamable HTTP)", "operationId": "mcp_post",
                "description": "The Model Context Protocol endpoint (stateless, JSON responses): tools "
                               f"{', '.join(tools)}. Send "
                               "JSON-RPC 2.0 with `Accept: application/json, text/event-stream`. Same auth as "
                               "every route; each tool acts as the caller.",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}}}
            api.openapi_schema = spec
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]


def create_api(app: App, runner: Runner | None = None) -> FastAPI:
    """Build the ASGI app for a sidecar. ``runner`` supplies live source state (``None`` for offline use).

    Raises:
        ConfigError: serving (``runner`` given) on a non-loopback ``http.host`` with no operator token.
    """
    if runner is not None:
        check_bind(app.settings)
    auth = Authenticator(lambda: app.settings, app.settings.http.host)
    audit = Audit(app)
    auth.on_token_use = audit.token_use
    if not isinstance(app.metrics.reorg_depth, ReorgLog):
        app.metrics.reorg_depth = ReorgLog(app)  # type: ignore[assignment]
    reorgs: ReorgLog = app.metrics.reorg_depth  # type: ignore[assignment]
    internal_secret = secrets.token_hex(16)

    mcp_server = None
    try:
        from .mcp_server import build_http_mcp, plugin_tools
    except ImportError:  # the mcp package is a core dependency; keep the API up without it
        build_http_mcp = None  # type: ignore[assignment]
    if build_http_mcp is not None:
        tools, refused = plugin_tools(app.host.installed)
        for name, error in refused.items():
            _plugin_error(app, name, error)
        mcp_server = build_http_mcp(tools)

    @contextlib.asynccontextmanager
    async def lifespan(_api: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            if mcp_server is not None:
                await stack.enter_async_context(mcp_server.session_manager.run())
            yield
        audit.flush()

    api = FastAPI(
        title="Monmouth sidecar", version=__version__, lifespan=lifespan,
        description="A reorg-safe knowledge base and memory for AI agents, fed by an Ethereum node. Errors are RFC "
                    "9457 problem details. Authenticate with `Authorization: Bearer <token>`: an operator token "
                    "(admin or read) or an agent token from `POST /auth/siwe`. The MCP server (streamable HTTP) is "
                    "at `/mcp`, the dashboard at `/dashboard`.",
        responses=problems.responses(401, 403, 413, 422, 429),
    )
    api.state.monmouth = app
    api.state.runner = runner
    api.state.auth = auth
    api.state.audit = audit
    api.state.reorgs = reorgs
    api.state.policy_cache = {}
    api.state.access_rules = {}
    api.state.plugin_routes = {}  # (method, path template) -> (plugin name, route): in-process tool calls
    api.state.internal_secret = internal_secret
    problems.install(api)

    def status_obj() -> dict[str, Any]:
        return runner.status() if runner is not None else app.status()

    api.state.status = status_obj  # what GET /status answers (the MCP status tool, in-process)

    # ------------------------------------------------------------------------------------------------ core
    @api.get("/health", tags=["core"])
    def health() -> dict[str, str]:
        """Liveness: the process is up and serving."""
        return {"status": "ok"}

    @api.get("/ready", tags=["core"], responses=problems.responses(503))
    def ready() -> JSONResponse:
        """200 while the head is within ``http.ready_lag`` blocks of the source head, else 503: a problem document
        whose ``detail`` (and ``reason``) says why; while a notification keeps failing it names the plugin and the
        block, and ``stuck`` holds the ``/status`` object of that name (:mod:`sidecar.stall`)."""
        ok, reason = runner.ready() if runner is not None else (False, "not running")
        if ok:
            return JSONResponse({"ready": ok, "reason": reason})
        stuck = runner.stall.current if runner is not None else None
        return problems.problem(503, reason, type="urn:monmouth:problem:not-ready", ready=False, reason=reason,
                                stuck=stuck.to_json() if stuck is not None else None)

    @api.get("/status", tags=["core"], dependencies=[require("read", "agent")])
    async def status() -> dict[str, Any]:
        """Head (number, hash), finalized, source head, lag (blocks), counters, source and plugin states."""
        return await anyio.to_thread.run_sync(status_obj)

    @api.get("/metrics", tags=["core"], dependencies=[require("read")],
             responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}})
    def metrics() -> Response:
        """Prometheus text exposition of every ``monmouth_*`` metric."""
        if runner is not None:
            runner.status()  # refresh the lag gauge
        return Response(generate_latest(app.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # ------------------------------------------------------------------------------------------------ auth
    @api.get("/auth/nonce", tags=["auth"])
    def nonce(request: Request) -> dict[str, Any]:
        """A fresh sign-in nonce (used once, valid ``auth.nonce_ttl`` seconds; a client's oldest is retired beyond
        a few outstanding) and what the EIP-4361 message must name: domain and chain id. 403 naming
        ``auth.domain`` when it is unset and the request is not local development (docs/security.md)."""
        domain = auth.siwe_domain(request.headers.get("host"))
        n, exp = auth.new_nonce(request.client.host if request.client else None)
        cfg = app.settings.auth
        from .siwe import iso

        return {"nonce": n, "expires_at": iso(exp), "domain": domain, "chain_id": cfg.chain_id,
                "uri": f"{request.url.scheme}://{domain}"}

    @api.post("/auth/siwe", tags=["auth"])
    def siwe(body: SiweIn, request: Request) -> dict[str, Any]:
        """Sign in with Ethereum: send the signed EIP-4361 message; get a short-lived bearer token scoped to the
        signing address. 401 (naming the part) for a forged, expired, replayed or mismatched message."""
        ip = request.client.host if request.client else None
        try:
            out = auth.sign_in(body.message, body.signature, request.headers.get("host"))
        except ProblemError as e:
            audit.record("sign_in", None, ip, outcome="failed", reason=str(e.detail)[:200])
            raise
        audit.record("sign_in", f"agent:{out['agent']}", ip, outcome="ok", expires_at=out["expires_at"])
        return out

    @api.get("/auth/whoami", tags=["auth"])
    def whoami(p: Annotated[Principal, Depends(current_principal)]) -> dict[str, Any]:
        """The caller: role (admin, read, agent), agent address, how it authenticated."""
        return {"principal": p.name, "role": p.role, "agent": p.agent, "via": p.via}

    @api.get("/audit", tags=["auth"], dependencies=[require()])
    def audit_log(limit: int = Query(50, ge=1, le=500), before: int | None = Query(None, ge=1, le=2**63 - 1),
                  event: str | None = Query(None, pattern=r"^[a-z_]{1,32}$")) -> dict[str, Any]:
        """The audit log (admin), newest first; pass ``next_before`` back as ``before`` for the next page."""
        rows = audit.query(limit, before, event)
        return {"events": rows, "next_before": rows[-1]["id"] if len(rows) == limit else None}

    # ------------------------------------------------------------------------------------------------ dashboard
    @api.get("/dashboard", tags=["dashboard"], include_in_schema=True,
             responses={200: {"content": {"text/html": {"schema": {"type": "string"}}}}})
    def dashboard() -> FileResponse:
        """The live dashboard (HTML; it calls the API with the caller's token, or none from loopback)."""
        return FileResponse(DASHBOARD_DIR / "index.html", media_type="text/html")

    @api.get("/dashboard/assets/{name}", tags=["dashboard"],
             responses={200: {"content": {"application/javascript": {"schema": {"type": "string"}},
                                          "text/css": {"schema": {"type": "string"}}}}, 404: {}})
    def dashboard_asset(name: str) -> FileResponse:
        """The dashboard's scripts and styles."""
        f = DASHBOARD_DIR / name
        if "/" in name or name.startswith(".") or not f.is_file() or f.suffix not in (".js", ".css", ".svg"):
            raise ProblemError(404, f"no dashboard asset {name!r}", field="path.name")
        media = {".js": "application/javascript", ".css": "text/css", ".svg": "image/svg+xml"}[f.suffix]
        return FileResponse(f, media_type=media)

    @api.get("/dashboard/summary", tags=["dashboard"], dependencies=[require("read")])
    async def dashboard_summary() -> dict[str, Any]:
        """What the dashboard shows: the ``/status`` object, recent reorgs with their depth, and the embedding
        backlog of the plugins that report one."""
        st = await anyio.to_thread.run_sync(status_obj)
        backlog = {n: p["backlog"] for n, p in st.get("plugins", {}).items() if isinstance(p, dict) and "backlog" in p}
        return {"status": st, "reorgs": list(reorgs.recent), "backlog": backlog, "time": time.time()}

    # ------------------------------------------------------------------------------------------------ plugins
    for name, plugin in app.host.installed.items():
        try:
            router = call_one(plugin, "monmouth_http_router")
        except Exception as e:  # one plugin's broken routes must not take the API down
            log.error("plugin %s: monmouth_http_router failed, its routes are not served: %s", name, e)
            app.host.errors[name] = f"monmouth_http_router failed: {type(e).__name__}: {e}"
            continue
        if router is not None:
            api.include_router(router, dependencies=[Depends(default_policy), _plugin_guard(app, name, runner)],
                               responses=problems.responses(400, 401, 403, 404, 409, 410, 503))
            for route in router.routes:
                for method in getattr(route, "methods", None) or ():
                    api.state.plugin_routes[(method, route.path)] = (name, route)
            api.state.access_rules.update(_access_rules(app, name, plugin, router))

    # ------------------------------------------------------------------------------------------------ mcp
    if mcp_server is not None:
        from .mcp_server import MCPEndpoint

        api.router.add_route("/mcp", MCPEndpoint(mcp_server, auth),  # type: ignore[arg-type]  # an ASGI app
                             methods=["GET", "POST", "DELETE"], include_in_schema=False)

    _document_mcp(api, mcp_server.tool_names if mcp_server is not None else [])

    # Outermost last: problems -> audit -> request limits -> rate limit -> admission -> app.
    api.add_middleware(RequestKindMiddleware)
    api.add_middleware(AdmissionMiddleware, sidecar=app, runner=runner)
    api.add_middleware(RateLimitMiddleware, get_settings=lambda: app.settings, internal_secret=internal_secret,
                       on_limited=lambda path, ip: audit.denied(429, None, ip, "*", path))
    api.add_middleware(RequestLimitMiddleware,
                       limits=lambda: (app.settings.http.max_body_bytes, app.settings.http.max_json_depth))
    api.add_middleware(AuditMiddleware, audit=audit)
    api.add_middleware(problems.ProblemMiddleware)
    return api
