"""A third-party plugin using the surface hooks the way an outside package would: an HTTP route, the access rules
that widen the default policy for it (``monmouth_access_rules``), and an MCP tool that calls it as the calling client
(``monmouth_mcp_tools``). Register it as ``{"notes": notes}`` and enable ``[plugins.notes]``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from mcp.server.mcpserver import Context
from pydantic import BaseModel, ConfigDict

from monmouth import hookimpl
from monmouth.auth import AccessRule, Principal, current_principal
from monmouth.mcp_server import caller
from monmouth.problems import ProblemError


class Search(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str
    scope: str = "public"


def public_only(body: Any) -> None:
    """Agents may search public notes only."""
    if isinstance(body, dict) and body.get("scope", "public") != "public":
        raise ProblemError(403, "an agent may search notes only with scope 'public'", field="scope")


@hookimpl
def monmouth_http_router() -> APIRouter:
    router = APIRouter(prefix="/notes")

    @router.post("/search")
    def search(body: Search, p: Annotated[Principal, Depends(current_principal)]) -> dict[str, Any]:
        return {"query": body.query, "scope": body.scope, "by": p.name}

    @router.post("/tidy")
    def tidy() -> dict[str, Any]:  # no rule: the default policy (admin only for a POST)
        return {"tidied": True}

    return router


@hookimpl
def monmouth_access_rules() -> list[AccessRule]:
    return [AccessRule("POST", "/notes/search", read=True, agent=True, agent_body=public_only)]


async def note_search(query: str, ctx: Context, scope: str = "public") -> dict[str, Any]:
    """Search the notes (scope: public or private)."""
    async with caller(ctx) as c:
        return await c.call("POST", "/notes/search", json={"query": query, "scope": scope})  # type: ignore[no-any-return]


@hookimpl
def monmouth_mcp_tools() -> list[Any]:
    return [note_search]
