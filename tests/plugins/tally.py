"""A journaled test plugin that copies its own tables in ``monmouth storage copy`` (the ``monmouth_storage_copy``
hook): counts of transactions per sender parity, upserted (UPDATE) and deleted (DELETE) as blocks arrive. Portable
SQL, both backends. ``copies`` records each call of the hook (the tables it was given)."""

from __future__ import annotations

from typing import Any

from monmouth import hookimpl

copies: list[dict[str, Any]] = []


@hookimpl
def monmouth_migrations():
    return ["CREATE TABLE tally_counts (k TEXT PRIMARY KEY, n BIGINT NOT NULL, last_block BIGINT NOT NULL)"]


@hookimpl
def monmouth_backends():
    return ("sqlite", "postgres")


@hookimpl
def monmouth_block_applied(conn, block, notification):
    for tx in block.transactions:
        conn.execute("INSERT INTO tally_counts (k, n, last_block) VALUES (?, 1, ?) ON CONFLICT (k) DO UPDATE "
                     "SET n = tally_counts.n + 1, last_block = excluded.last_block",
                     (f"sender-{tx.sender[-1] % 4}", block.number))
    if block.number % 5 == 0:
        conn.execute("DELETE FROM tally_counts WHERE k = 'sender-0'")


@hookimpl
def monmouth_storage_copy(src, dst):
    rows = src.execute("SELECT k, n, last_block FROM tally_counts").fetchall()
    dst.executemany("INSERT INTO tally_counts (k, n, last_block) VALUES (?, ?, ?)", rows)
    copies.append({"rows": len(rows), "in_transaction": dst.in_transaction})
    return ["tally_counts"]
