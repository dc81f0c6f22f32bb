"""Example plugin: remember every transfer of at least 1 ETH (enable it in config.toml, see README)."""

from fastapi import APIRouter

from monmouth import hookimpl

state = {}


@hookimpl
def monmouth_migrations():  # one SQL for both backends: types both accept, ? placeholders
    return ["CREATE TABLE big_transfers (tx_hash BYTEA PRIMARY KEY, block BIGINT, wei TEXT)"]


@hookimpl
def monmouth_backends():
    return ("sqlite", "postgres")


@hookimpl
def monmouth_startup(ctx):
    state["db"] = ctx.db


@hookimpl
def monmouth_block_applied(conn, block, notification):
    for tx in block.transactions:
        if tx.value >= 10**18:
            conn.execute("INSERT INTO big_transfers VALUES (?, ?, ?)", (tx.hash, block.number, str(tx.value)))


@hookimpl
def monmouth_http_router():
    router = APIRouter()

    @router.get("/big_transfers")
    def big_transfers():
        rows = state["db"].reader().execute("SELECT tx_hash, block, wei FROM big_transfers ORDER BY block")
        return [{"tx": "0x" + bytes(h).hex(), "block": b, "wei": w} for h, b, w in rows]

    return router
