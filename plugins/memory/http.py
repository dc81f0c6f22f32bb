"""HTTP routes of the memory plugin (mounted by the sidecar's FastAPI app under ``/memory/...``).

Where the sidecar's access control is installed (``app.state.auth``, see ``monmouth.auth``) it guards these routes
with its default policy for plugin routes: operators see everything, a signed-in agent only routes whose
``{agent}`` is its own address. Without it these routes serve loopback clients only (``request.client.host`` in
127.0.0.0/8 or ``::1``); others get 403. Refused requests answer ``{"detail": {"field": ..., "error": ...}}`` with
a 4xx status naming the field (FastAPI's own 422 validation errors name it in ``loc``).
"""

import base64
import binascii
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from monmouth.audit import audited
from monmouth.auth import is_loopback
from monmouth.limits import JsonObject, Text
from monmouth.problems import status_of

from .core import Memory
from .errors import InvalidRequestError, MemoryRequestError
from .fields import parse_address, parse_id

#: Largest integer SQLite stores (64-bit signed): bounds block numbers, offsets and limits here so that a
#: number out of range is a 422 naming its field.
INT64 = 2**63 - 1
Int = Annotated[int, Field(ge=0, le=INT64)]
I64 = Annotated[int, Field(ge=-INT64 - 1, le=INT64)]
Seconds = Annotated[float, Field(ge=0, le=1e15, allow_inf_nan=False)]


class _Body(BaseModel):
    """Request bodies: no unknown fields, no NaN or Infinity, text that is valid Unicode (``monmouth.limits``)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class AgentIn(_Body):
    address: Text
    label: Text | None = None


class ItemPatch(_Body):
    content: Text | None = None
    content_b64: Text | None = None
    key: Text | None = None
    tags: list[Text] | None = None
    metadata: JsonObject | None = None
    ttl_seconds: I64 | None = None
    ttl_blocks: I64 | None = None


class ItemIn(ItemPatch):
    kind: Text


class RecallIn(_Body):
    query: Text
    k: int = Field(10, ge=1, le=1000)
    kind: Text | None = None
    tags: list[Text] | None = None
    from_block: Int | None = None
    to_block: Int | None = None
    since: Seconds | None = None
    until: Seconds | None = None
    recency_weight: float = Field(0.0, ge=0.0, le=1.0, allow_inf_nan=False)
    #: Seconds over which recency halves (default ``plugins.memory.recency_half_life_s``).
    half_life_s: float | None = Field(None, ge=1.0, le=1e12, allow_inf_nan=False)
    mode: Text | None = None


def _content(body: ItemIn | ItemPatch) -> str | bytes | None:
    if body.content is not None and body.content_b64 is not None:
        raise InvalidRequestError("content_b64", "give content or content_b64, not both")
    if body.content_b64 is not None:
        try:
            return base64.b64decode(body.content_b64, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequestError("content_b64", "is not valid base64") from None
    return body.content


def store_item(m: Memory, agent: str, body: ItemIn) -> dict[str, Any]:
    """What ``POST /memory/agents/{agent}/items`` answers (the route and the MCP tool ``remember``): the stored item.

    Raises:
        MemoryRequestError: the field at fault (no content, bad base64, an unknown agent, a kind not served, ...).
    """
    content = _content(body)
    if content is None:
        raise InvalidRequestError("content", "is required (or content_b64)")
    return m.store(parse_address(agent), body.kind, content, key=body.key, tags=body.tags,  # type: ignore[no-any-return]
                   metadata=body.metadata, ttl_seconds=body.ttl_seconds, ttl_blocks=body.ttl_blocks)


def recall_items(m: Memory, agent: str, body: RecallIn) -> dict[str, Any]:
    """What ``POST /memory/agents/{agent}/recall`` answers (the route and the MCP tool ``recall``).

    Raises:
        MemoryRequestError: the field at fault.
    """
    return m.recall(parse_address(agent), body.query, k=body.k, kind=body.kind,  # type: ignore[no-any-return]
                    tags=body.tags, from_block=body.from_block, to_block=body.to_block, since=body.since,
                    until=body.until, recency_weight=body.recency_weight, half_life_s=body.half_life_s,
                    mode=body.mode)


def make_router(get_memory: Callable[[], Memory | None]) -> APIRouter:
    """The ``/memory`` router; ``get_memory`` returns the running :class:`Memory` (``None`` while disabled)."""

    def loopback(request: Request) -> None:
        if getattr(request.app.state, "auth", None) is not None:
            return  # the sidecar's access control (monmouth.auth) guards plugin routes: agents see only their own
        host = request.client.host if request.client else None
        if not is_loopback(host):
            raise HTTPException(403, {"field": "client", "error": "memory routes serve loopback clients only "
                                                                  "until authentication is configured"})

    def mem() -> Memory:
        m = get_memory()
        if m is None:
            raise HTTPException(503, {"field": "plugin", "error": "the memory plugin is not enabled"})
        return m

    router = APIRouter(prefix="/memory", tags=["memory"], dependencies=[Depends(loopback)])
    M = Annotated[Memory, Depends(mem)]

    def call(fn: Callable[[], Any], status: int = 200) -> Any:
        try:
            out = fn()
        except MemoryRequestError as e:
            return JSONResponse({"detail": e.to_json()}, status_code=status_of(e))
        return JSONResponse(out, status_code=status)

    # -- agents
    @router.get("/agents")
    def list_agents(m: M) -> Any:
        return call(lambda: {"agents": m.agents()})

    @router.post("/agents")
    def register_agent(body: AgentIn, m: M) -> Any:
        return call(lambda: m.register(parse_address(body.address, "address"), body.label, "api"), 201)

    @router.get("/agents/{agent}")
    def agent_info(agent: str, m: M) -> Any:
        return call(lambda: m.agent_info(parse_address(agent)))

    @router.delete("/agents/{agent}", dependencies=[audited("forget")])
    def forget(agent: str, m: M) -> Any:
        return call(lambda: m.forget(parse_address(agent)))

    # -- items
    @router.post("/agents/{agent}/items")
    def store(agent: str, body: ItemIn, m: M) -> Any:
        return call(lambda: store_item(m, agent, body), 201)

    @router.get("/agents/{agent}/items")
    def list_items(agent: str, m: M, kind: str | None = None,
                   tag: Annotated[list[str] | None, Query()] = None, key: str | None = None, origin: str | None = None,
                   from_block: Annotated[Int | None, Query()] = None, to_block: Annotated[Int | None, Query()] = None,
                   since: Annotated[Seconds | None, Query()] = None, until: Annotated[Seconds | None, Query()] = None,
                   limit: Annotated[int, Query(ge=1, le=1000)] = 50, offset: Annotated[Int, Query()] = 0) -> Any:
        return call(lambda: {"items": m.list(parse_address(agent), kind=kind, tags=tag, key=key, origin=origin,
                                             from_block=from_block, to_block=to_block, since=since, until=until,
                                             limit=limit, offset=offset)})

    @router.get("/agents/{agent}/items/{item_id}")
    def get_item(agent: str, item_id: str, m: M) -> Any:
        return call(lambda: m.get(parse_address(agent), parse_id(item_id)))

    @router.patch("/agents/{agent}/items/{item_id}")
    def update_item(agent: str, item_id: str, body: ItemPatch, m: M) -> Any:
        return call(lambda: m.update(parse_address(agent), parse_id(item_id), content=_content(body), key=body.key,
                                     tags=body.tags, metadata=body.metadata, ttl_seconds=body.ttl_seconds,
                                     ttl_blocks=body.ttl_blocks))

    @router.delete("/agents/{agent}/items/{item_id}")
    def delete_item(agent: str, item_id: str, m: M) -> Any:
        return call(lambda: m.delete(parse_address(agent), parse_id(item_id)))

    @router.post("/agents/{agent}/recall")
    def recall(agent: str, body: RecallIn, m: M) -> Any:
        return call(lambda: recall_items(m, agent, body))

    # -- commitments
    @router.get("/root")
    def global_root(m: M, block: Annotated[Int | None, Query()] = None) -> Any:
        return call(lambda: m.global_root(block))

    @router.get("/agents/{agent}/root")
    def agent_root(agent: str, m: M, block: Annotated[Int | None, Query()] = None, global_proof: bool = False) -> Any:
        return call(lambda: m.agent_root(parse_address(agent), block, global_proof))

    @router.get("/agents/{agent}/items/{item_id}/proof")
    def proof(agent: str, item_id: str, m: M, block: Annotated[Int | None, Query()] = None) -> Any:
        return call(lambda: m.proof(parse_address(agent), parse_id(item_id), block))

    @router.get("/agents/{agent}/leaves")
    def leaves(agent: str, m: M, block: Annotated[Int | None, Query()] = None) -> Any:
        return call(lambda: m.leaves(parse_address(agent), block))

    @router.get("/agents/{agent}/changes")
    def changes(agent: str, since_block: Annotated[Int, Query()], m: M,
                limit: Annotated[int, Query(ge=1, le=10_000)] = 100) -> Any:
        return call(lambda: m.changes(parse_address(agent), since_block, limit))

    @router.get("/agents/{agent}/export", dependencies=[audited("export")])
    def export(agent: str, m: M) -> Any:
        from .portable import export_agent

        return call(lambda: export_agent(m, parse_address(agent)))

    return router
