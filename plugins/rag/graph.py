"""The address graph: directed edges ``src → dst`` per asset, from transactions (``ETH`` with value, ``CALL``
without) and token transfers (the token's ``0x`` address), with count, summed value (smallest unit, decimal string),
first and last block. Built inside the engine's transaction and journaled, so reorgs restore it exactly.
"""

from __future__ import annotations

from typing import Any

import apsw

from monmouth.chain import hx

from .abi import Registry
from .decoded import eth, scale

_COLS = "src, dst, token, count, value, first_block, last_block"


def _edge(row: tuple, registry: Registry | None) -> dict[str, Any]:
    src, dst, token, count, value, first, last = row
    symbol, shown = token, value
    if token == "ETH":
        shown = f"{eth(int(value))} ETH"
    elif token == "CALL":
        shown = ""
    elif registry is not None:
        c = registry.contract(bytes.fromhex(token[2:]))
        if c and c.symbol:
            symbol = c.symbol
            shown = f"{scale(int(value), c.decimals)} {c.symbol}" if c.decimals is not None else f"{value} {c.symbol}"
    return {"from": hx(src), "to": hx(dst), "asset": token, "symbol": symbol, "count": count, "value": value,
            "value_display": shown, "first_block": first, "last_block": last}


def neighbourhood(conn: apsw.Connection, address: bytes, *, depth: int = 1, limit: int = 50,
                  registry: Registry | None = None, max_nodes: int = 500) -> dict[str, Any]:
    """Edges within ``depth`` hops (1 or 2) of ``address``, both directions, busiest first (at most ``limit`` per
    node and direction, ``max_nodes`` nodes).

    Returns:
        ``{"address", "depth", "nodes": [{"address", "label", "hops"}], "edges": [...]}``.

    Raises:
        ValueError: depth not 1 or 2.
    """
    if depth not in (1, 2):
        raise ValueError(f"depth: must be 1 or 2 (got {depth})")
    hops = {address: 0}
    edges: dict[tuple[bytes, bytes, str], dict[str, Any]] = {}
    frontier = [address]
    for d in range(1, depth + 1):
        nxt: list[bytes] = []
        for a in frontier:
            for col in ("src", "dst"):
                for row in conn.execute(f"SELECT {_COLS} FROM rag_edges WHERE {col} = ? ORDER BY count DESC, "
                                        "last_block DESC LIMIT ?", (a, limit)):
                    key = (row[0], row[1], row[2])
                    if key not in edges:
                        edges[key] = _edge(row, registry)
                    other = row[1] if col == "src" else row[0]
                    if other not in hops and len(hops) < max_nodes:
                        hops[other] = d
                        nxt.append(other)
        frontier = nxt
    edges = {k: e for k, e in edges.items() if k[0] in hops and k[1] in hops}

    def label(a: bytes) -> str | None:
        return registry.label(a) if registry is not None else None

    nodes = [{"address": hx(a), "label": label(a), "hops": h} for a, h in sorted(hops.items(), key=lambda x: x[1])]
    return {"address": hx(address), "depth": depth, "nodes": nodes,
            "edges": sorted(edges.values(), key=lambda e: (-e["count"], e["from"], e["to"], e["asset"]))}
