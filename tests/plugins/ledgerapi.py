"""The ledger test plugin (tests/plugins/ledger.py) with read routes, for processes that serve the API: the chain
data it indexed (``GET /ledger/summary``), which server answered (``GET`` or ``POST /ledger/server``: a replica or the primary)
and a read that takes ``seconds`` on PostgreSQL (``GET /ledger/sleep``). Module state holds the database handle, so
load it once per process (``[plugins.ledgerapi] module = ...``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from monmouth import hookimpl
from tests.plugins import ledger

monmouth_migrations = ledger.monmouth_migrations
monmouth_backends = ledger.monmouth_backends
monmouth_trimmed_tables = ledger.monmouth_trimmed_tables
monmouth_block_applied = ledger.monmouth_block_applied

state: dict[str, Any] = {}


@hookimpl
def monmouth_startup(ctx: Any) -> None:
    state["db"] = ctx.db


@hookimpl
def monmouth_http_router() -> APIRouter:
    router = APIRouter(prefix="/ledger")

    @router.get("/summary")
    def summary() -> dict[str, Any]:
        conn = state["db"].reader()
        transfers, last = conn.execute("SELECT count(*), max(block_number) FROM ledger_transfers").fetchone()
        rows = conn.execute("SELECT account, received, count FROM ledger_balances ORDER BY account").fetchall()
        return {"transfers": transfers, "last_block": last,
                "balances": [["0x" + bytes(a).hex(), r, c] for a, r, c in rows]}

    @router.get("/server")
    @router.post("/server")
    def server() -> dict[str, Any]:
        return {"replica": bool(state["db"].reader().execute("SELECT pg_is_in_recovery()").fetchone()[0])}

    @router.get("/sleep")
    def sleep(seconds: float) -> dict[str, Any]:
        state["db"].reader().execute("SELECT pg_sleep(?)", (seconds,)).fetchall()
        return {"slept": seconds}

    return router
