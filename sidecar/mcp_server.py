"""The MCP server (official ``mcp`` SDK): chain search and agent memory as tools for any LLM agent runtime.

Tools: ``search_chain``, ``get_context``, ``remember``, ``recall``, ``forget``, ``memory_root``, ``memory_proof``,
``status``. Each is a thin call to the sidecar's own HTTP routes (``/rag/...``, ``/memory/...``, ``/status``), made
*as the caller*: the same bearer token, the same client address, so authentication, the per-agent isolation and the
audit log are exactly those of the HTTP API. An agent's ``remember``/``recall``/... default to its own address.

Two transports:

* streamable HTTP at ``/memory``'s sibling ``/mcp`` on the sidecar (stateless, JSON responses), behind the same
  auth: ``Authorization: Bearer <token>`` (or none from loopback while the server binds to loopback);
* stdio: ``monmouth mcp`` (calls the running sidecar at ``--url``, or, when none answers, opens the database
  in-process as a local operator).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import Receive, Scope, Send

from . import __version__
from .problems import ProblemError, problem

if TYPE_CHECKING:
    from .auth import Authenticator
    from .shutdown import Shutdown

log = logging.getLogger(__name__)

INSTRUCTIONS = (
    "Monmouth: a reorg-safe index of an Ethereum chain and a private, verifiable memory per AI agent. "
    "search_chain / get_context find transactions and documents (cited by block, tx hash and log index); "
    "remember / recall / forget manage the calling agent's memory; memory_root / memory_proof give its Merkle "
    "commitment and inclusion proofs; status shows the head and lag."
)


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


def build_server(backend_for: Callable[[Context], Any]) -> MCPServer:
    """The MCP server with its eight tools. ``backend_for(ctx)`` returns an async context manager yielding the
    :class:`Backend` of the calling client."""
    server = MCPServer("monmouth", version=__version__, instructions=INSTRUCTIONS, log_level="WARNING")

    @server.tool()
    async def search_chain(query: str, ctx: Context, k: int = 10, mode: str | None = None,
                           address: str | None = None, block_from: int | None = None, block_to: int | None = None,
                           intent: str | None = None, token: str | None = None) -> dict[str, Any]:
        """Search indexed transactions and documents by meaning and keywords. Returns ranked hits with text,
        provenance (block, tx hash, log index) and a citation. Filters: address (0x...), block range, intent
        (transfer, swap, approve, mint, burn, deposit, withdraw, contract_creation, other), token (symbol or 0x)."""
        filters: dict[str, Any] = {"kind": ["tx", "document"]}
        for key, v in (("address", address), ("block_from", block_from), ("block_to", block_to),
                       ("intent", intent), ("token", token)):
            if v is not None:
                filters[key] = v
        body: dict[str, Any] = {"query": query, "k": k, "filters": filters}
        if mode:
            body["mode"] = mode
        async with backend_for(ctx) as b:
            return await b.call("POST", "/rag/search", json=body)  # type: ignore[no-any-return]

    @server.tool()
    async def get_context(query: str, ctx: Context, max_tokens: int = 1500,
                          order: str = "relevance") -> dict[str, Any]:
        """The best matching chain transactions and documents packed into a token budget, cited, ready to put in a
        prompt (order: relevance or chronological)."""
        body = {"query": query, "max_tokens": max_tokens, "order": order, "filters": {"kind": ["tx", "document"]}}
        async with backend_for(ctx) as b:
            return await b.call("POST", "/rag/context", json=body)  # type: ignore[no-any-return]

    @server.tool()
    async def remember(content: str, ctx: Context, kind: str = "semantic", key: str | None = None,
                       tags: list[str] | None = None, ttl_seconds: int | None = None,
                       agent: str | None = None) -> dict[str, Any]:
        """Store a memory item for the calling agent (kind: semantic, episodic, procedural or working; working
        items can expire with ttl_seconds). Returns the item with its id."""
        body: dict[str, Any] = {"kind": kind, "content": content}
        for k_, v in (("key", key), ("tags", tags), ("ttl_seconds", ttl_seconds)):
            if v is not None:
                body[k_] = v
        async with backend_for(ctx) as b:
            a = await b.agent(agent)
            return await b.call("POST", f"/memory/agents/{a}/items", json=body)  # type: ignore[no-any-return]

    @server.tool()
    async def recall(query: str, ctx: Context, k: int = 5, kind: str | None = None, tags: list[str] | None = None,
                     agent: str | None = None) -> dict[str, Any]:
        """Recall the calling agent's memories most relevant to the query (by meaning when embeddings are on,
        else by keywords)."""
        body: dict[str, Any] = {"query": query, "k": k}
        if kind:
            body["kind"] = kind
        if tags:
            body["tags"] = tags
        async with backend_for(ctx) as b:
            a = await b.agent(agent)
            return await b.call("POST", f"/memory/agents/{a}/recall", json=body)  # type: ignore[no-any-return]

    @server.tool()
    async def forget(ctx: Context, item_id: str | None = None, everything: bool = False,
                     agent: str | None = None) -> dict[str, Any]:
        """Forget one memory item (item_id), or, with everything=true, all of the agent's memory (its key is
        destroyed: the data becomes unreadable for good)."""
        if not item_id and not everything:
            raise ToolError("item_id: required unless everything=true")
        async with backend_for(ctx) as b:
            a = await b.agent(agent)
            if everything:
                return await b.call("DELETE", f"/memory/agents/{a}")  # type: ignore[no-any-return]
            return await b.call("DELETE", f"/memory/agents/{a}/items/{item_id}")  # type: ignore[no-any-return]

    @server.tool()
    async def memory_root(ctx: Context, block: int | None = None, agent: str | None = None) -> dict[str, Any]:
        """The Merkle root committing to the agent's memory at a block (default: the head)."""
        async with backend_for(ctx) as b:
            a = await b.agent(agent)
            return await b.call("GET", f"/memory/agents/{a}/root", params={"block": block})  # type: ignore[no-any-return]

    @server.tool()
    async def memory_proof(item_id: str, ctx: Context, block: int | None = None,
                           agent: str | None = None) -> dict[str, Any]:
        """A Merkle inclusion proof of one memory item against the agent's root (verifiable on chain with
        OpenZeppelin's MerkleProof)."""
        async with backend_for(ctx) as b:
            a = await b.agent(agent)
            return await b.call("GET", f"/memory/agents/{a}/items/{item_id}/proof",  # type: ignore[no-any-return]
                                params={"block": block})

    @server.tool()
    async def status(ctx: Context) -> dict[str, Any]:
        """The sidecar's head, finalized block, source head, lag, counters and plugin states."""
        async with backend_for(ctx) as b:
            return await b.call("GET", "/status")  # type: ignore[no-any-return]

    return server


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


def build_http_mcp(internal_secret: str) -> MCPServer:
    """The server for ``/mcp``: each tool call is made as the HTTP caller. Creates the session manager (stateless,
    JSON responses; DNS-rebinding protection is the sidecar's own loopback rule, see :mod:`monmouth.auth`)."""
    server = build_server(lambda ctx: _PerRequest(ctx, internal_secret))
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
            await problem(e.status, e.detail, headers=e.headers, **e.kw)(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = p
        try:
            await self.server.session_manager.handle_request(scope, receive, send)
        except RuntimeError as e:  # the session manager is not running (app served without its lifespan)
            await problem(503, f"the MCP server is not running: {e}")(scope, receive, send)


async def run_stdio(backend: Backend, shutdown: Shutdown | None = None) -> None:
    """Serve the tools over stdio with one fixed backend (``monmouth mcp``) until the client closes standard input
    or, with ``shutdown``, SIGTERM/SIGINT arrives: the signal ends standard input the same way
    (:mod:`sidecar.stdio`), so both take the SDK's end-of-file path and return normally."""
    import anyio

    from .stdio import relayed_stdin

    server = build_server(lambda _ctx: _Borrowed(backend))
    try:
        async with relayed_stdin() as stdin, anyio.create_task_group() as tg:
            if shutdown is not None:
                await tg.start(shutdown.watch)
                shutdown.on_stop(stdin.close)
            await server.run_stdio_async()
            tg.cancel_scope.cancel()
    finally:
        await backend.aclose()


def serve_stdio(config_path: Any, url: str | None, token: str | None) -> None:
    """``monmouth mcp``: serve the tools over stdio. Calls the running sidecar at ``url`` (default: the config's
    ``http.host``/``http.port``) when it answers, else opens the database in-process as the local operator.
    Returns when the client closes standard input or on SIGTERM/SIGINT (within ``engine.shutdown_timeout``,
    :mod:`sidecar.shutdown`); a signal while it starts returns too."""
    import sys

    from .shutdown import graceful

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)  # stdout carries the protocol
    with graceful() as stopper, contextlib.suppress(KeyboardInterrupt):  # Stopped: a signal outside the loop
        _serve_stdio(config_path, url, token, stopper)
    if stopper.requested:
        log.warning("monmouth mcp: %s: stopped cleanly", stopper.signal_name)


def _serve_stdio(config_path: Any, url: str | None, token: str | None, stopper: Shutdown) -> None:
    import anyio

    from .app import load_settings, open_app

    settings, _ = load_settings(config_path)
    stopper.timeout = settings.engine.shutdown_timeout
    if url is None and settings.http.enabled:
        host = "127.0.0.1" if settings.http.host in ("0.0.0.0", "::") else settings.http.host
        url = f"http://{host}:{settings.http.port}"
    if url is not None:
        try:
            if httpx.get(f"{url.rstrip('/')}/health", timeout=1.0).status_code == 200:
                log.warning("monmouth mcp: serving the sidecar at %s", url)
                anyio.run(run_stdio, url_backend(url, token), stopper)
                return
        except httpx.HTTPError:
            pass
    from .api import create_api

    app = open_app(config_path, settings=settings)
    api = None
    try:
        api = create_api(app)
        log.warning("monmouth mcp: no sidecar answers%s; serving %s in-process", f" at {url}" if url else "",
                    settings.storage.path)
        backend = asgi_backend(api, authorization=f"Bearer {token}" if token else None, client=("127.0.0.1", 0),
                               internal_secret=api.state.internal_secret)
        anyio.run(run_stdio, backend, stopper)
    finally:
        if api is not None:
            api.state.audit.close()
        app.close()
