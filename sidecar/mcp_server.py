"""The MCP server (official ``mcp`` SDK): the sidecar's tools for any LLM agent runtime.

Tools: the core's ``status``, and those every installed plugin contributes through the ``monmouth_mcp_tools`` hook
(docs/plugins.md, "MCP tools"). A tool acts *as the calling client* (:func:`caller`), under exactly the rules of the
HTTP API:

* in-process (``/mcp`` on the sidecar, or ``monmouth mcp`` with no sidecar answering), a tool calls its plugin's
  services directly (:meth:`Caller.invoke`): the access policy of the route the service backs is decided by the same
  function as for HTTP (:func:`monmouth.auth.check_default_policy`, the plugin's access rules, a route's own
  ``require``), refusals are the same problems, and denials and the events routes declare (``audited``) are audited
  as for HTTP. The ``/mcp`` request that carries the call has passed authentication, request limits, the rate limit
  and admission control like any request;
* across the network (``monmouth mcp --url``), the same tool calls that route over HTTP.

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
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import anyio.to_thread
import httpx
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import Receive, Scope, Send

from . import __version__
from .audit import route_event
from .auth import check_default_policy, check_roles, declared_roles
from .plugins import call_one
from .problems import ProblemError, problem, problem_of

if TYPE_CHECKING:
    from .auth import Authenticator, Principal
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

T = TypeVar("T")


def fill(path: str, path_params: Mapping[str, Any] | None) -> str:
    """The route template ``path`` (``/x/agents/{agent}``) with ``path_params`` substituted, each URL-quoted.

    Raises:
        ToolError: a parameter of the template is missing.
    """
    try:
        return path.format(**{k: quote(str(v), safe="") for k, v in (path_params or {}).items()})
    except (KeyError, IndexError) as e:
        raise ToolError(f"{path}: path parameter {e} missing") from None


class Caller:
    """The client calling a tool: what ``async with caller(ctx) as c`` gives a plugin's tool.

    Attributes:
        remote: ``True`` when the sidecar is across the network (``monmouth mcp --url``): :meth:`invoke` then calls
            the route over HTTP; ``False`` in-process, where it runs the plugin's service directly.
        principal: who is calling, in-process (``None`` across the network, where the sidecar decides, and for an
            anonymous caller): what a service that needs the caller receives from the tool.
    """

    remote: bool
    principal: Principal | None = None

    async def call(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None) -> Any:
        """Call the sidecar's route ``method path`` (a concrete path) as this client, through the whole HTTP stack.

        Returns:
            The decoded JSON body.

        Raises:
            ToolError: ``"<status>: <detail>"`` for an error status.
        """
        raise NotImplementedError

    async def agent(self, agent: str | None) -> str:
        """``agent``, or the calling agent's own address.

        Raises:
            ToolError: no ``agent`` given and the caller is an operator, not a signed-in agent.
        """
        raise NotImplementedError

    async def invoke(self, method: str, path: str, local: Callable[[], T], *,
                     path_params: Mapping[str, Any] | None = None, json: Any = None,
                     params: dict[str, Any] | None = None) -> T | Any:
        """Run the plugin service behind the route ``method path`` (its template, as the plugin's router declares
        it: ``"/example/agents/{agent}/notes"``) as this client.

        In-process: decides the route's access policy for the caller (its own ``require``, or the default policy
        widened by the plugin's access rule, whose body check sees ``json``), answers 503 while the route's plugin is
        disabled, then runs ``local()`` (a blocking function: in a worker thread) and returns what it returns.
        Remote: calls the route (``path`` filled with ``path_params``, ``json`` body, ``params`` query) over HTTP
        and returns the decoded body. ``local()`` must return what the route answers, so both agree.

        Raises:
            ToolError: ``"<status>: <detail>"``: the refusal a route call would answer (403 of the access policy,
                404 for a route no plugin serves, 503 for a disabled plugin, and what ``local()`` raises:
                :func:`monmouth.problems.problem_of`); ``"500: ..."`` for anything else (logged with its traceback).
        """
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


def _tool_error(status: int, detail: Any) -> ToolError:
    return ToolError(f"{status}: {detail}")


class RemoteCaller(Caller):
    """A caller across the network: every call is an HTTP request to the sidecar with the caller's token."""

    remote = True

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
            raise _tool_error(r.status_code, detail)
        return r.json()

    async def agent(self, agent: str | None) -> str:
        if agent:
            return agent
        if self._whoami is None:
            self._whoami = await self.call("GET", "/auth/whoami")
        me = self._whoami.get("agent")
        if not me:
            raise ToolError("agent: required (the caller is an operator, not a signed-in agent)")
        return str(me)

    async def invoke(self, method: str, path: str, local: Callable[[], T], *,
                     path_params: Mapping[str, Any] | None = None, json: Any = None,
                     params: dict[str, Any] | None = None) -> T | Any:
        return await self.call(method, fill(path, path_params), json=json, params=params)

    async def aclose(self) -> None:
        await self.client.aclose()


class LocalCaller(Caller):
    """A caller in the sidecar's own process.

    Args:
        api: the sidecar's FastAPI app (:func:`monmouth.api.create_api`): its authenticator, access rules, plugin
            routes and audit log.
        principal: who is calling (``None``: anonymous, refused with 401).
        ip: the client's address, for the audit log.
        authorization: the client's ``Authorization`` header, for :meth:`call`.
    """

    remote = False

    def __init__(self, api: Any, principal: Principal | None, ip: str | None, authorization: str | None) -> None:
        self.api = api
        self.principal = principal
        self.ip = ip
        self.authorization = authorization
        self._client: httpx.AsyncClient | None = None

    async def call(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None) -> Any:
        if self._client is None:
            headers = {"x-monmouth-internal": self.api.state.internal_secret}
            if self.authorization:
                headers["authorization"] = self.authorization
            transport = httpx.ASGITransport(app=self.api, client=(self.ip or "127.0.0.1", 0))
            self._client = httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", headers=headers,
                                             timeout=60)
        return await RemoteCaller(self._client).call(method, path, json=json, params=params)

    def who(self) -> Principal:
        """The calling principal.

        Raises:
            ToolError: ``"401: ..."`` for an anonymous client (no token, and the loopback rule does not admit it).
        """
        if self.principal is None:
            raise _tool_error(401, "no token, and the loopback rule does not admit this client")
        return self.principal

    async def agent(self, agent: str | None) -> str:
        if agent:
            return agent
        me = self.who().agent
        if not me:
            raise ToolError("agent: required (the caller is an operator, not a signed-in agent)")
        return me

    async def invoke(self, method: str, path: str, local: Callable[[], T], *,
                     path_params: Mapping[str, Any] | None = None, json: Any = None,
                     params: dict[str, Any] | None = None) -> T | Any:
        state = self.api.state
        p = self.who()
        concrete = fill(path, path_params)
        owner = state.plugin_routes.get((method, path))
        if owner is None:
            raise _tool_error(404, f"no plugin route {method} {path}")
        plugin, route = owner
        try:
            roles = declared_roles(route)
            if roles is not None:
                check_roles(p, roles, method, concrete)
            else:
                body_check = check_default_policy(p, method, path, dict(path_params or {}),
                                                  state.access_rules.get((method, path)))
                if body_check is not None:
                    body_check(json)
            if not state.monmouth.host.is_enabled(plugin):
                raise ProblemError(503, f"plugin {plugin!r} is disabled (set plugins.{plugin}.enabled = true)")
            out = await anyio.to_thread.run_sync(local)
        except Exception as e:
            body = problem_of(e)
            if body is None:
                log.exception("MCP tool call %s %s: unhandled %s", method, concrete, type(e).__name__)
                raise _tool_error(500, f"internal error ({type(e).__name__}); see the sidecar's log") from None
            if body["status"] in (401, 403):
                state.audit.denied(body["status"], p.name, self.ip, method, concrete)
            raise _tool_error(body["status"], body["detail"]) from None
        event = route_event(route)
        if event:
            state.audit.record(event, p.name, self.ip, path=concrete, status=200, via="mcp")
        return out

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()


def url_caller(url: str, token: str | None) -> RemoteCaller:
    """The caller of ``monmouth mcp --url``: the sidecar at ``url``, with ``token`` (if any)."""
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return RemoteCaller(httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers, timeout=60))


def local_caller(api: Any, authorization: str | None) -> LocalCaller:
    """The caller of ``monmouth mcp`` with no sidecar answering: this process's ``api``, as a local client from
    loopback with ``authorization`` (if any), authenticated by the sidecar's own rules.

    Raises:
        ProblemError: 401 for a malformed, unknown or expired token.
    """
    principal = api.state.auth.authenticate(authorization, "127.0.0.1", "127.0.0.1")
    return LocalCaller(api, principal, "127.0.0.1", authorization)


class Server(MCPServer):
    """The MCP server of one sidecar: the core's tools and every installed plugin's (``monmouth_mcp_tools``).

    Attributes:
        caller_for: ``caller_for(ctx)`` is an async context manager yielding the calling client's :class:`Caller`
            (what :func:`caller` returns).
        tool_names: every tool served, core first, then by plugin.
    """

    def __init__(self, caller_for: Callable[[Context], AbstractAsyncContextManager[Caller]],
                 tools: Sequence[tuple[str, Tool]] = ()) -> None:
        names = ", ".join(fn.__name__ for _, fn in tools)
        super().__init__("monmouth", version=__version__, log_level="WARNING",
                         instructions=INSTRUCTIONS + (f" Tools: {names}." if names else ""))
        self.caller_for = caller_for
        self.tool_names: list[str] = list(CORE_TOOLS)

        @self.tool()
        async def status(ctx: Context) -> dict[str, Any]:
            """The sidecar's head, finalized block, source head, lag, counters and plugin states."""
            async with caller(ctx) as c:
                if isinstance(c, LocalCaller):  # the core's own service: what GET /status answers, as its policy says
                    route = next(r for r in c.api.routes if getattr(r, "path", None) == "/status")
                    try:
                        check_roles(c.who(), declared_roles(route) or frozenset({"admin"}), "GET", "/status")
                    except ProblemError as e:
                        raise _tool_error(e.status, e.detail) from None
                    return await anyio.to_thread.run_sync(c.api.state.status)  # type: ignore[no-any-return]
                return await c.call("GET", "/status")  # type: ignore[no-any-return]

        for _plugin, fn in tools:
            self.add_tool(fn)
            self.tool_names.append(fn.__name__)


def caller(ctx: Context) -> AbstractAsyncContextManager[Caller]:
    """The client calling a tool, for the tools plugins contribute (``monmouth_mcp_tools``)::

        async with caller(ctx) as c:
            return await c.invoke("POST", "/example/search", lambda: plugin.search(body), json=body)

    runs the plugin's service as that client (:meth:`Caller.invoke`); ``await c.call("POST", "/example/search",
    json=body)`` calls the route itself through the HTTP stack.

    Raises:
        ToolError: the tool runs on another MCP server than :class:`Server`.
    """
    server = ctx.mcp_server
    if not isinstance(server, Server):
        raise ToolError("this tool runs only on the Monmouth MCP server")
    return server.caller_for(ctx)


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


def build_server(caller_for: Callable[[Context], AbstractAsyncContextManager[Caller]],
                 tools: Sequence[tuple[str, Tool]] = ()) -> Server:
    """The MCP server with the core's tools and ``tools`` (from :func:`plugin_tools`). ``caller_for(ctx)`` returns
    an async context manager yielding the :class:`Caller` of the calling client."""
    return Server(caller_for, tools)


class _Borrowed:
    """An async context manager around a caller that must not be closed after each call (stdio: one client)."""

    def __init__(self, caller: Caller) -> None:
        self.caller = caller

    async def __aenter__(self) -> Caller:
        return self.caller

    async def __aexit__(self, *exc: object) -> None:
        return None


class _PerRequest:
    """An async context manager building the HTTP caller's :class:`LocalCaller` from the MCP request's HTTP request
    (its principal was authenticated by :class:`MCPEndpoint`)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.caller: LocalCaller | None = None

    async def __aenter__(self) -> Caller:
        req = self.ctx.request_context.request
        scope = getattr(req, "scope", None)
        if scope is None:
            raise ToolError("no HTTP request behind this call")
        client = scope.get("client") or ("127.0.0.1", 0)
        headers = dict(getattr(req, "headers", {}) or {})
        principal = (scope.get("state") or {}).get("principal")
        self.caller = LocalCaller(scope["app"], principal, client[0], headers.get("authorization"))
        return self.caller

    async def __aexit__(self, *exc: object) -> None:
        if self.caller is not None:
            await self.caller.aclose()


def build_http_mcp(tools: Sequence[tuple[str, Tool]] = ()) -> Server:
    """The server for ``/mcp``: each tool call is made as the HTTP caller. Creates the session manager (stateless,
    JSON responses; DNS-rebinding protection is the sidecar's own loopback rule, see :mod:`monmouth.auth`)."""
    server = build_server(_PerRequest, tools)
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


async def run_stdio(client: Caller, tools: Sequence[tuple[str, Tool]] = (), shutdown: Shutdown | None = None) -> None:
    """Serve the tools over stdio for one fixed caller (``monmouth mcp``) until the client closes standard input
    or, with ``shutdown``, SIGTERM/SIGINT arrives: the signal ends standard input the same way
    (:mod:`sidecar.stdio`), so both take the SDK's end-of-file path and return normally."""
    import anyio

    from .stdio import relayed_stdin

    server = build_server(lambda _ctx: _Borrowed(client), tools)
    try:
        async with relayed_stdin() as stdin, anyio.create_task_group() as tg:
            if shutdown is not None:
                await tg.start(shutdown.watch)
                shutdown.on_stop(stdin.close)
            await server.run_stdio_async()
            tg.cancel_scope.cancel()
    finally:
        await client.aclose()
