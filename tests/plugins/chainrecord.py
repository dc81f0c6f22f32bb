"""A test plugin that records every field the sidecar receives (blocks, transactions, receipts, logs) in journaled
tables, so that a test can compare them, field by field, with what the node's JSON-RPC returns. Reorgs and reverts
are left to the engine's journal: the tables always hold exactly the canonical chain."""

from __future__ import annotations

from typing import Any

import apsw

from monmouth import hookimpl
from monmouth.types import Block

MIGRATIONS = [
    """
    CREATE TABLE rec_blocks (number INTEGER PRIMARY KEY, hash BLOB NOT NULL, parent_hash BLOB NOT NULL,
                             timestamp INTEGER NOT NULL, beneficiary BLOB NOT NULL, gas_limit INTEGER NOT NULL,
                             gas_used INTEGER NOT NULL, base_fee_per_gas TEXT, tx_count INTEGER NOT NULL);
    CREATE TABLE rec_txs (hash BLOB PRIMARY KEY, block_number INTEGER NOT NULL, idx INTEGER NOT NULL,
                          type INTEGER NOT NULL, sender BLOB NOT NULL, recipient BLOB, value TEXT NOT NULL,
                          input BLOB NOT NULL, nonce INTEGER NOT NULL, gas_limit INTEGER NOT NULL, gas_price TEXT,
                          max_fee_per_gas TEXT, max_priority_fee_per_gas TEXT, chain_id INTEGER,
                          status INTEGER, cumulative_gas_used INTEGER NOT NULL, contract_address BLOB);
    CREATE TABLE rec_logs (block_number INTEGER NOT NULL, tx_idx INTEGER NOT NULL, log_idx INTEGER NOT NULL,
                           address BLOB NOT NULL, topics BLOB NOT NULL, data BLOB NOT NULL,
                           PRIMARY KEY (block_number, tx_idx, log_idx));
    """,
]


def _s(v: int | None) -> str | None:
    return None if v is None else str(v)


@hookimpl
def monmouth_migrations() -> list[str]:
    return MIGRATIONS


@hookimpl
def monmouth_block_applied(conn: apsw.Connection, block: Block, notification: Any) -> None:
    conn.execute("INSERT INTO rec_blocks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (block.number, block.hash, block.parent_hash, block.timestamp, block.beneficiary, block.gas_limit,
                  block.gas_used, _s(block.base_fee_per_gas), len(block.transactions)))
    for i, (tx, r) in enumerate(zip(block.transactions, block.receipts, strict=True)):
        conn.execute("INSERT INTO rec_txs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (tx.hash, block.number, i, tx.type, tx.sender, tx.to, str(tx.value), tx.input, tx.nonce,
                      tx.gas_limit, _s(tx.gas_price), _s(tx.max_fee_per_gas), _s(tx.max_priority_fee_per_gas),
                      tx.chain_id, r.status, r.cumulative_gas_used, r.contract_address))
        for j, log in enumerate(r.logs):
            conn.execute("INSERT INTO rec_logs VALUES (?, ?, ?, ?, ?, ?)",
                         (block.number, i, j, log.address, b"".join(log.topics), log.data))
