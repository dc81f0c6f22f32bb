"""The memory plugin's MCP tools (``monmouth_mcp_tools``): the calling agent's memory through ``/memory/agents/...``,
as the calling client (:func:`monmouth.mcp_server.caller`). ``agent`` defaults to the signed-in agent's own address;
an operator must name one."""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError

from monmouth.mcp_server import caller


async def remember(content: str, ctx: Context, kind: str = "semantic", key: str | None = None,
                   tags: list[str] | None = None, ttl_seconds: int | None = None,
                   agent: str | None = None) -> dict[str, Any]:
    """Store a memory item for the calling agent (kind: semantic, episodic, procedural or working; working
    items can expire with ttl_seconds). Returns the item with its id."""
    body: dict[str, Any] = {"kind": kind, "content": content}
    for k_, v in (("key", key), ("tags", tags), ("ttl_seconds", ttl_seconds)):
        if v is not None:
            body[k_] = v
    async with caller(ctx) as c:
        a = await c.agent(agent)
        return await c.call("POST", f"/memory/agents/{a}/items", json=body)  # type: ignore[no-any-return]


async def recall(query: str, ctx: Context, k: int = 5, kind: str | None = None, tags: list[str] | None = None,
                 agent: str | None = None) -> dict[str, Any]:
    """Recall the calling agent's memories most relevant to the query (by meaning when embeddings are on,
    else by keywords)."""
    body: dict[str, Any] = {"query": query, "k": k}
    if kind:
        body["kind"] = kind
    if tags:
        body["tags"] = tags
    async with caller(ctx) as c:
        a = await c.agent(agent)
        return await c.call("POST", f"/memory/agents/{a}/recall", json=body)  # type: ignore[no-any-return]


async def forget(ctx: Context, item_id: str | None = None, everything: bool = False,
                 agent: str | None = None) -> dict[str, Any]:
    """Forget one memory item (item_id), or, with everything=true, all of the agent's memory (its key is
    destroyed: the data becomes unreadable for good)."""
    if not item_id and not everything:
        raise ToolError("item_id: required unless everything=true")
    async with caller(ctx) as c:
        a = await c.agent(agent)
        if everything:
            return await c.call("DELETE", f"/memory/agents/{a}")  # type: ignore[no-any-return]
        return await c.call("DELETE", f"/memory/agents/{a}/items/{item_id}")  # type: ignore[no-any-return]


async def memory_root(ctx: Context, block: int | None = None, agent: str | None = None) -> dict[str, Any]:
    """The Merkle root committing to the agent's memory at a block (default: the head)."""
    async with caller(ctx) as c:
        a = await c.agent(agent)
        return await c.call("GET", f"/memory/agents/{a}/root", params={"block": block})  # type: ignore[no-any-return]


async def memory_proof(item_id: str, ctx: Context, block: int | None = None,
                       agent: str | None = None) -> dict[str, Any]:
    """A Merkle inclusion proof of one memory item against the agent's root (verifiable on chain with
    OpenZeppelin's MerkleProof)."""
    async with caller(ctx) as c:
        a = await c.agent(agent)
        return await c.call("GET", f"/memory/agents/{a}/items/{item_id}/proof",  # type: ignore[no-any-return]
                            params={"block": block})


TOOLS = (remember, recall, forget, memory_root, memory_proof)
