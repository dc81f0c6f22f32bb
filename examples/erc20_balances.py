"""Example plugin: running ERC-20 balances from Transfer logs, exact to the wei in uint256 (docs/plugins.md).

No reorg code: the engine reverts these rows exactly. One set of SQL for SQLite and PostgreSQL (docs/plugins.md).
Balances are u256 blobs (32-byte big-endian), added and subtracted in SQL by the functions the engine provides on
both backends; ``GET /erc20_balances/{token}`` lists a token's
holders. Enable it from the block the tokens were deployed at (a sender whose balance this plugin never saw
credited fails the notification with ``u256_sub: underflow``, loudly, rather than keeping a wrong balance).
"""

from eth_hash.auto import keccak
from fastapi import APIRouter, HTTPException

from monmouth import hookimpl

TRANSFER = keccak(b"Transfer(address,address,uint256)")
MINT_OR_BURN = b"\x00" * 20
state = {}


@hookimpl
def monmouth_migrations():
    return ["""
    CREATE TABLE erc20_balances (token BYTEA, holder BYTEA, balance BYTEA NOT NULL, PRIMARY KEY (token, holder));
    CREATE TABLE erc20_block_transfers (number BIGINT PRIMARY KEY, transfers BIGINT NOT NULL);
    """]


@hookimpl
def monmouth_backends():
    return ("sqlite", "postgres")


@hookimpl
def monmouth_startup(ctx):
    state["db"] = ctx.db


@hookimpl
def monmouth_block_applied(conn, block, notification):
    count = 0
    for receipt in block.receipts:
        for log in receipt.logs:  # a failed transaction has no logs
            # ERC-721 Transfer has the same topic but 4 topics and no data.
            if len(log.topics) != 3 or log.topics[0] != TRANSFER or len(log.data) != 32:
                continue
            sender, recipient = log.topics[1][12:], log.topics[2][12:]
            debited = sender == MINT_OR_BURN or conn.execute(
                "UPDATE erc20_balances SET balance = u256_sub(balance, u256(?)) WHERE token = ? AND holder = ? "
                "RETURNING holder", (log.data, log.address, sender)).fetchall()
            if not debited:  # never credited here: refused unless the amount is 0
                conn.execute("INSERT INTO erc20_balances VALUES (?, ?, u256_sub(u256(0), u256(?)))",
                             (log.address, sender, log.data))
            if recipient != MINT_OR_BURN:
                conn.execute("INSERT INTO erc20_balances VALUES (?, ?, u256(?)) ON CONFLICT (token, holder) DO UPDATE "
                             "SET balance = u256_add(erc20_balances.balance, excluded.balance)",
                             (log.address, recipient, log.data))
            count += 1
    if count:
        conn.execute("INSERT INTO erc20_block_transfers VALUES (?, ?)", (block.number, count))


@hookimpl
def monmouth_http_router():
    router = APIRouter()

    @router.get("/erc20_balances/{token}")
    def balances(token: str):
        try:
            address = bytes.fromhex(token.removeprefix("0x"))
        except ValueError:
            address = b""
        if len(address) != 20:
            raise HTTPException(422, f"token: {token!r} is not a 0x-prefixed 20-byte hex address")
        rows = state["db"].reader().execute(
            "SELECT holder, u256_text(balance) FROM erc20_balances WHERE token = ? ORDER BY balance DESC",
            (address,))
        return {"0x" + bytes(h).hex(): b for h, b in rows}

    return router
