"""The rag plugin's MCP tools (``monmouth_mcp_tools``): chain search and prompt context. In-process each runs the
plugin's search directly (:meth:`monmouth.mcp_server.Caller.invoke`) under the access policy of ``POST /rag/search``
and ``/rag/context``; across the network (``monmouth mcp --url``) it calls those routes. Both keep to chain data
(``filters.kind`` ``tx`` and ``document``), which is what an agent token may search (:mod:`.access`)."""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver import Context

from monmouth.mcp_server import Tool, caller

from .api import ContextRequest, SearchRequest, context_response, search_response

CHAIN_KINDS = ["tx", "document"]


def tools_for(plugin: Any) -> tuple[Tool, ...]:
    """The tools of the running rag plugin ``plugin`` (a :class:`~monmouth_rag.plugin.RagPlugin`)."""

    async def search_chain(query: str, ctx: Context, k: int = 10, mode: str | None = None,
                           address: str | None = None, block_from: int | None = None, block_to: int | None = None,
                           intent: str | None = None, token: str | None = None) -> dict[str, Any]:
        """Search indexed transactions and documents by meaning and keywords. Returns ranked hits with text,
        provenance (block, tx hash, log index) and a citation. Filters: address (0x...), block range, intent
        (transfer, swap, approve, mint, burn, deposit, withdraw, contract_creation, other), token (symbol or 0x)."""
        filters: dict[str, Any] = {"kind": list(CHAIN_KINDS)}
        for key, v in (("address", address), ("block_from", block_from), ("block_to", block_to),
                       ("intent", intent), ("token", token)):
            if v is not None:
                filters[key] = v
        body: dict[str, Any] = {"query": query, "k": k, "filters": filters}
        if mode:
            body["mode"] = mode
        async with caller(ctx) as c:
            return await c.invoke(  # type: ignore[no-any-return]
                "POST", "/rag/search", lambda: search_response(plugin, SearchRequest.model_validate(body)),
                json=body)

    async def get_context(query: str, ctx: Context, max_tokens: int = 1500,
                          order: str = "relevance") -> dict[str, Any]:
        """The best matching chain transactions and documents packed into a token budget, cited, ready to put in a
        prompt (order: relevance or chronological)."""
        body = {"query": query, "max_tokens": max_tokens, "order": order, "filters": {"kind": list(CHAIN_KINDS)}}
        async with caller(ctx) as c:
            return await c.invoke(  # type: ignore[no-any-return]
                "POST", "/rag/context", lambda: context_response(plugin, ContextRequest.model_validate(body)),
                json=body)

    return search_chain, get_context
