"""The MCP server (official ``mcp`` SDK): the sidecar's tools for any LLM agent runtime.

Tools: the core's ``status``, and those every installed plugin contributes through the ``monmouth_mcp_tools`` hook
(docs/plugins.md, "MCP tools"). Each is a thin call to the sidecar's own HTTP routes, made *as the caller*
(:func:`caller`): the same bearer token, the same client address, so authentication, validation, rate limits, the
per-agent isolation and the audit log are exactly those of the HTTP API, in-process (``/mcp``) or across the network
(``monmouth mcp --url``).

Two transports:

* streamable HTTP at ``/mcp`` on the sidecar (stateless, JSON responses), behind the same
  auth: ``Authorization: Bearer <token>`` (or none from loopback while the server binds to loopback);
* stdio: ``monmouth mcp`` (calls the running sidecar at ``--url``, or, when none answers, opens the database
  in-process as a local operator).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import httpx
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import Receive, Scope, Send

from . import __version__
from .plugins import call_one
from .problems import ProblemError, problem

if TYPE_CHECKING:
    from .auth import Authenticator
    from .shutdown import Shutdown

log = logging.getLogger(__name__)

INSTRUCTIONS = (
    "Monmouth: a reorg-safe index of an Ethereum chain and what its plugins build from it (search, agent memory). "
    "status shows the head and lag."
)

#: The tools of the core itself; a plugin tool of the same name is refused.
CORE_TOOLS = ("status",)

#: A plugin's MCP tool: an async function (see the ``monmouth_mcp_tools`` hook).
Tool = Callable[..., Awaitable[Any]]


class Backend:
    """Calls the sidecar's HTTP routes as one caller."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self._whoami: dict[str, Any] | None = None

    async def call(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None) -> Any:
        params = {k: v for k, v in (params or {}).items() if v is not None}
        r = await self.client.request(method, path, json=json, params=params or None)
        if r.status_code >= 400:
            try:
                body = r.json()
                detail = body.get("detail") or body.get("title") or r.text
            except ValueError:
                detail = r.text
            raise ToolError(f"{r.status_code}: {detail}")
        return r.json()

    async def agent(self, agent: str | None) -> str:
        """``agent``, or the calling agent's own address."""
        if agent:
            return agent
        if self._whoami is None:
            self._whoami = await self.call("GET", "/auth/whoami")
        me = self._whoami.get("agent")
        if not me:
            raise ToolError("agent: required (the caller is an operator, not a signed-in agent)")
        return str(me)

    async def aclose(self) -> None:
        await self.client.aclose()


def asgi_backend(asgi_app: Any, *, authorization: str | None, client: tuple[str, int], internal_secret: str | None
                 ) -> Backend:
    """A backend calling ``asgi_app`` in-process as a caller with ``authorization`` from ``client``."""
    headers = {}
    if authorization:
        headers["authorization"] = authorization
    if internal_secret:
        headers["x-monmouth-internal"] = internal_secret
    transport = httpx.ASGITransport(app=asgi_app, client=client)
    return Backend(httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", headers=headers, timeout=60))


def url_backend(url: str, token: str | None) -> Backend:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return Backend(httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers, timeout=60))


class Server(MCPServer):
    """The MCP server of one sidecar: the core's tools and every installed plugin's (``monmouth_mcp_tools``).

    Attributes:
        backend_for: ``backend_for(ctx)`` is an async context manager yielding the calling client's
            :class:`Backend` (what :func:`caller` returns).
        tool_names: every tool served, core first, then by plugin.
    """

    def __init__(self, backend_for: Callable[[Context], AbstractAsyncContextManager[Backend]],
                 tools: Sequence[tuple[str, Tool]] = ()) -> None:
        names = ", ".join(fn.__name__ for _, fn in tools)
        super().__init__("monmouth", version=__version__, log_level="WARNING",
                         instructions=INSTRUCTIONS + (f" Tools: {names}." if names else ""))
        self.backend_for = backend_for
        self.tool_names: list[str] = list(CORE_TOOLS)

        @self.tool()
        async def status(ctx: Context) -> dict[str, Any]:
            """The sidecar's head, finalized block, source head, lag, counters and plugin states."""
            async with caller(ctx) as b:
                return await b.call("GET", "/status")  # type: ignore[no-any-return]

        for _plugin, fn in tools:
            self.add_tool(fn)
            self.tool_names.append(fn.__name__)


def caller(ctx: Context) -> AbstractAsyncContextManager[Backend]:
    """The client calling a tool, for the tools plugins contribute (``monmouth_mcp_tools``): ``async with
    caller(ctx) as c: await c.call("POST", "/example/search", json=...)`` calls the sidecar's routes as that client.

    Raises:
        ToolError: the tool runs on another MCP server than :class:`Server`.
    """
    server = ctx.mcp_server
    if not isinstance(server, Server):
        raise ToolError("this tool runs only on the Monmouth MCP server")
    return server.backend_for(ctx)


def plugin_tools(plugins: Mapping[str, object]) -> tuple[list[tuple[str, Tool]], dict[str, str]]:
    """Every tool the ``plugins`` (``{name: plugin}``) contribute through ``monmouth_mcp_tools``, as
    ``[(plugin name, tool)]``, and ``{plugin name: error}`` for those refused: a hook that raised, a tool that is
    not an async function, or a name the core or an earlier plugin already serves (that tool is left out, the
    plugin's others are served; one plugin's errors are joined with ``"; "``)."""
    tools: list[tuple[str, Tool]] = []
    errors: dict[str, str] = {}
    owner = dict.fromkeys(CORE_TOOLS, "the core")
    for plugin, obj in plugins.items():
        try:
            contributed = list(call_one(obj, "monmouth_mcp_tools") or ())
        except Exception as e:  # one plugin's broken tools must not take the server down
            errors[plugin] = f"monmouth_mcp_tools failed: {type(e).__name__}: {e}"
            log.error("plugin %s: %s", plugin, errors[plugin])
            continue
        for fn in contributed:
            name = getattr(fn, "__name__", repr(fn))
            if not inspect.iscoroutinefunction(fn) or name == "<lambda>":
                problem_ = f"monmouth_mcp_tools: tool {name!r} is not an async function"
            elif name in owner:
                problem_ = f"monmouth_mcp_tools: tool {name!r} is already served by {owner[name]}"
            else:
                owner[name] = f"plugin {plugin!r}"
                tools.append((plugin, fn))
                continue
            errors[plugin] = f"{errors[plugin]}; {problem_}" if plugin in errors else problem_
            log.error("plugin %s: %s", plugin, problem_)
    return tools, errors


def build_server(backend_for: Callable[[Context], AbstractAsyncContextManager[Backend]],
                 tools: Sequence[tuple[str, Tool]] = ()) -> Server:
    """The MCP server with the core's tools and ``tools`` (from :func:`plugin_tools`). ``backend_for(ctx)`` returns
    an async context manager yielding the :class:`Backend` of the calling client."""
    return Server(backend_for, tools)


class _Borrowed:
    """An async context manager around a backend that must not be closed after each call."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    async def __aenter__(self) -> Backend:
        return self.backend

    async def __aexit__(self, *exc: object) -> None:
        return None


class _PerRequest:
    """An async context manager building the HTTP caller's backend from the MCP request's HTTP request."""

    def __init__(self, ctx: Context, internal_secret: str) -> None:
        self.ctx = ctx
        self.secret = internal_secret
        self.backend: Backend | None = None

    async def __aenter__(self) -> Backend:
        req = self.ctx.request_context.request
        scope = getattr(req, "scope", None)
        if scope is None:
            raise ToolError("no HTTP request behind this call")
        client = scope.get("client") or ("127.0.0.1", 0)
        headers = dict(getattr(req, "headers", {}) or {})
        self.backend = asgi_backend(scope["app"], authorization=headers.get("authorization"),
                                    client=(client[0], client[1]), internal_secret=self.secret)
        return self.backend

    async def __aexit__(self, *exc: object) -> None:
        if self.backend is not None:
            await self.backend.aclose()


def build_http_mcp(internal_secret: str, tools: Sequence[tuple[str, Tool]] = ()) -> Server:
    """The server for ``/mcp``: each tool call is made as the HTTP caller. Creates the session manager (stateless,
    JSON responses; DNS-rebinding protection is the sidecar's own loopback rule, see :mod:`monmouth.auth`)."""
    server = build_server(lambda ctx: _PerRequest(ctx, internal_secret), tools)
    server.streamable_http_app(stateless_http=True, json_response=True,
                               transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False))
    return server


class MCPEndpoint:
    """The ASGI endpoint at ``/mcp``: authenticates like every route (401 problem otherwise), then hands the
    request to the SDK's streamable HTTP session manager."""

    def __init__(self, server: MCPServer, auth: Authenticator) -> None:
        self.server = server
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        from .auth import current_principal_from_scope

        try:
            p = current_principal_from_scope(self.auth, scope)
        except ProblemError as e:
            await e.response()(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = p
        try:
            await self.server.session_manager.handle_request(scope, receive, send)
        except RuntimeError as e:  # the session manager is not running (app served without its lifespan)
            await problem(503, f"the MCP server is not running: {e}")(scope, receive, send)


async def run_stdio(backend: Backend, tools: Sequence[tuple[str, Tool]] = (), shutdown: Shutdown | None = None) -> None:
    """Serve the tools over stdio with one fixed backend (``monmouth mcp``) until the client closes standard input
    or, with ``shutdown``, SIGTERM/SIGINT arrives: the signal ends standard input the same way
    (:mod:`sidecar.stdio`), so both take the SDK's end-of-file path and return normally."""
    import anyio

    from .stdio import relayed_stdin

    server = build_server(lambda _ctx: _Borrowed(backend), tools)
    try:
        async with relayed_stdin() as stdin, anyio.create_task_group() as tg:
            if shutdown is not None:
                await tg.start(shutdown.watch)
                shutdown.on_stop(stdin.close)
            await server.run_stdio_async()
            tg.cancel_scope.cancel()
    finally:
        await backend.aclose()
