"""A test plugin that exercises every kind of write the journal must undo: INSERT (transfers), UPDATE and
upsert (balances), DELETE (balances that reach zero are removed), and a trimmed table (block stats)."""

from __future__ import annotations

import apsw

from monmouth import hookimpl
from monmouth.types import Block

MIGRATIONS = [
    """
    CREATE TABLE ledger_transfers (tx_hash BLOB PRIMARY KEY, block_number INTEGER NOT NULL,
                                   sender BLOB NOT NULL, recipient BLOB, value TEXT NOT NULL);
    CREATE TABLE ledger_balances (account BLOB PRIMARY KEY, received INTEGER NOT NULL, count INTEGER NOT NULL);
    CREATE TABLE ledger_block_stats (block_number INTEGER NOT NULL, txs INTEGER NOT NULL);
    """,
]


@hookimpl
def monmouth_migrations():
    return MIGRATIONS


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
            "ON CONFLICT (account) DO UPDATE SET received = received + excluded.received, count = count + 1",
            (tx.to, amount),
        )
        # Every sender whose count is even loses its row: DELETEs must be undone too.
        conn.execute("DELETE FROM ledger_balances WHERE account = ? AND count % 2 = 0", (tx.sender,))
    conn.execute("INSERT INTO ledger_block_stats (block_number, txs) VALUES (?, ?)",
                 (block.number, len(block.transactions)))


@hookimpl
def monmouth_block_applied(conn, block, notification):
    index_block(conn, block)
