"""A third-party plugin using the surface hooks the way an outside package would: an HTTP route, the access rules
that widen the default policy for it (``monmouth_access_rules``), audit events its routes declare (``audited``), and MCP tools (``monmouth_mcp_tools``): one that runs
the route's service directly under the route's policy (``Caller.invoke``), one that calls a route through the HTTP
stack (``Caller.call``). Register it as ``{"notes": notes}`` and enable ``[plugins.notes]``.

``CALLS`` counts which way each search came: ``"route"`` (an HTTP request) or ``"service"`` (an in-process tool call
that never went through HTTP)."""

from __future__ import annotations

import collections
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from mcp.server.mcpserver import Context
from pydantic import BaseModel, ConfigDict

from monmouth import hookimpl
from monmouth.audit import audited
from monmouth.auth import AccessRule, Principal, current_principal
from monmouth.mcp_server import caller
from monmouth.problems import ProblemError

CALLS: collections.Counter[str] = collections.Counter()


class Search(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str
    scope: str = "public"


def public_only(body: Any) -> None:
    """Agents may search public notes only."""
    if isinstance(body, dict) and body.get("scope", "public") != "public":
        raise ProblemError(403, "an agent may search notes only with scope 'public'", field="scope")


def search_notes(body: Search, p: Principal | None) -> dict[str, Any]:
    """The service behind ``POST /notes/search``."""
    return {"query": body.query, "scope": body.scope, "by": p.name if p is not None else None}


@hookimpl
def monmouth_http_router() -> APIRouter:
    router = APIRouter(prefix="/notes")

    @router.post("/search", dependencies=[audited("notes_searched")])
    def search(body: Search, p: Annotated[Principal, Depends(current_principal)]) -> dict[str, Any]:
        CALLS["route"] += 1
        return search_notes(body, p)

    @router.post("/tidy", dependencies=[audited("notes_tidied")])
    def tidy() -> dict[str, Any]:  # no rule: the default policy (admin only for a POST)
        return {"tidied": True}

    return router


@hookimpl
def monmouth_access_rules() -> list[AccessRule]:
    return [AccessRule("POST", "/notes/search", read=True, agent=True, agent_body=public_only)]


async def note_search(query: str, ctx: Context, scope: str = "public") -> dict[str, Any]:
    """Search the notes (scope: public or private)."""
    body = {"query": query, "scope": scope}
    async with caller(ctx) as c:
        def service() -> dict[str, Any]:
            CALLS["service"] += 1
            return search_notes(Search.model_validate(body), c.principal)

        return await c.invoke("POST", "/notes/search", service, json=body)  # type: ignore[no-any-return]


async def note_tidy(ctx: Context) -> dict[str, Any]:
    """Tidy the notes (operators only), through the route itself."""
    async with caller(ctx) as c:
        return await c.call("POST", "/notes/tidy")  # type: ignore[no-any-return]


@hookimpl
def monmouth_mcp_tools() -> list[Any]:
    return [note_search, note_tidy]
