"""The memory plugin's MCP tools (``monmouth_mcp_tools``): the calling agent's memory. In-process each runs the
plugin's service directly (:meth:`monmouth.mcp_server.Caller.invoke`) under the access policy of its route under
``/memory/agents/{agent}/...`` (an agent touches only its own memory); across the network (``monmouth mcp --url``)
it calls that route. ``agent`` defaults to the signed-in agent's own address; an operator must name one."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError

from monmouth.mcp_server import Tool, caller

from .errors import InvalidRequestError
from .fields import parse_address, parse_id
from .http import INT64, ItemIn, RecallIn, recall_items, store_item

if TYPE_CHECKING:
    from .core import Memory


def tools_for(get_memory: Callable[[], Memory | None]) -> tuple[Tool, ...]:
    """The memory plugin's tools; ``get_memory()`` returns its running :class:`~monmouth_memory.core.Memory`, read at
    each call (``None`` while disabled: the tools answer 503)."""

    def memory() -> Memory:
        m = get_memory()
        if m is None:
            from monmouth.problems import ProblemError

            raise ProblemError(503, "the memory plugin is not enabled", field="plugins.memory.enabled")
        return m

    def at(block: int | None) -> int | None:
        if block is not None and not 0 <= block <= INT64:
            raise InvalidRequestError("block", "must be a block number between 0 and 2**63-1")
        return block

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
            return await c.invoke(  # type: ignore[no-any-return]
                "POST", "/memory/agents/{agent}/items", lambda: store_item(memory(), a, ItemIn.model_validate(body)),
                path_params={"agent": a}, json=body)

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
            return await c.invoke(  # type: ignore[no-any-return]
                "POST", "/memory/agents/{agent}/recall",
                lambda: recall_items(memory(), a, RecallIn.model_validate(body)), path_params={"agent": a}, json=body)

    async def forget(ctx: Context, item_id: str | None = None, everything: bool = False,
                     agent: str | None = None) -> dict[str, Any]:
        """Forget one memory item (item_id), or, with everything=true, all of the agent's memory (its key is
        destroyed: the data becomes unreadable for good)."""
        if not item_id and not everything:
            raise ToolError("item_id: required unless everything=true")
        async with caller(ctx) as c:
            a = await c.agent(agent)
            if everything:
                return await c.invoke(  # type: ignore[no-any-return]
                    "DELETE", "/memory/agents/{agent}", lambda: memory().forget(parse_address(a)),
                    path_params={"agent": a})
            return await c.invoke(  # type: ignore[no-any-return]
                "DELETE", "/memory/agents/{agent}/items/{item_id}",
                lambda: memory().delete(parse_address(a), parse_id(str(item_id))),
                path_params={"agent": a, "item_id": item_id})

    async def memory_root(ctx: Context, block: int | None = None, agent: str | None = None) -> dict[str, Any]:
        """The Merkle root committing to the agent's memory at a block (default: the head)."""
        async with caller(ctx) as c:
            a = await c.agent(agent)
            return await c.invoke(  # type: ignore[no-any-return]
                "GET", "/memory/agents/{agent}/root", lambda: memory().agent_root(parse_address(a), at(block), False),
                path_params={"agent": a}, params={"block": block})

    async def memory_proof(item_id: str, ctx: Context, block: int | None = None,
                           agent: str | None = None) -> dict[str, Any]:
        """A Merkle inclusion proof of one memory item against the agent's root (verifiable on chain with
        OpenZeppelin's MerkleProof)."""
        async with caller(ctx) as c:
            a = await c.agent(agent)
            return await c.invoke(  # type: ignore[no-any-return]
                "GET", "/memory/agents/{agent}/items/{item_id}/proof",
                lambda: memory().proof(parse_address(a), parse_id(item_id), at(block)),
                path_params={"agent": a, "item_id": item_id}, params={"block": block})

    return remember, recall, forget, memory_root, memory_proof
