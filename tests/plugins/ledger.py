"""A test plugin that exercises every kind of write the journal must undo: INSERT (transfers), UPDATE and
upsert (balances), DELETE (balances that reach zero are removed), and a trimmed table (block stats).

Its SQL is portable: the same migrations and statements run on SQLite and PostgreSQL (``BYTEA``/``BIGINT``/``TEXT``,
``?`` placeholders, ``ON CONFLICT`` with the target table named), so it declares both backends."""

from __future__ import annotations

import apsw

from monmouth import hookimpl
from monmouth.types import Block

MIGRATIONS = [
    """
    CREATE TABLE ledger_transfers (tx_hash BYTEA PRIMARY KEY, block_number BIGINT NOT NULL,
                                   sender BYTEA NOT NULL, recipient BYTEA, value TEXT NOT NULL);
    CREATE TABLE ledger_balances (account BYTEA PRIMARY KEY, received BIGINT NOT NULL, count BIGINT NOT NULL);
    CREATE TABLE ledger_block_stats (block_number BIGINT NOT NULL, txs BIGINT NOT NULL);
    """,
]


@hookimpl
def monmouth_migrations():
    return MIGRATIONS


@hookimpl
def monmouth_backends():
    return ("sqlite", "postgres")


@hookimpl
def monmouth_trimmed_tables():
    return {"ledger_block_stats": "block_number"}


def index_block(conn: apsw.Connection, block: Block) -> None:
    for tx in block.transactions:
        conn.execute(
            "INSERT INTO ledger_transfers (tx_hash, block_number, sender, recipient, value) VALUES (?, ?, ?, ?, ?)",
            (tx.hash, block.number, tx.sender, tx.to, str(tx.value)),
        )
        amount = tx.value % 1000
        conn.execute(
            "INSERT INTO ledger_balances (account, received, count) VALUES (?, ?, 1) "
            "ON CONFLICT (account) DO UPDATE SET received = ledger_balances.received + excluded.received, "
            "count = ledger_balances.count + 1",
            (tx.to, amount),
        )
        # Every sender whose count is even loses its row: DELETEs must be undone too.
        conn.execute("DELETE FROM ledger_balances WHERE account = ? AND count % 2 = 0", (tx.sender,))
    conn.execute("INSERT INTO ledger_block_stats (block_number, txs) VALUES (?, ?)",
                 (block.number, len(block.transactions)))


@hookimpl
def monmouth_block_applied(conn, block, notification):
    index_block(conn, block)
