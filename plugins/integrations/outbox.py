"""The durable outbox: work recorded inside the engine's transaction, delivered after commit.

Each integration ``<p>`` owns two tables (created by :func:`migration`):

``<p>_outbox`` — one row per job, **declared trimmed by ``block_number``** (not journaled):

* chain hooks ``INSERT`` rows inside the engine's transaction for the block being applied, so a job exists
  exactly when the notification that produced it committed (a plugin error rolls it back with everything else);
* reverting block ``n`` deletes every job with ``block_number >= n``: undelivered work of reverted blocks is
  cancelled exactly, whatever its state;
* the deliverer (a background thread) updates the row's delivery state (``state``, ``attempts``, ``next_at``,
  ``body``...) in short transactions of its own. Because the table is not journaled, those updates can never
  conflict with the journal's inverse changesets (see ``docs/plugins.md``).

``<p>_deliveries`` — the delivery log, keyed by delivery key, written by the deliverer only (trimmed ``None``:
never journaled, never trimmed, pruned by age). It outlives reverts: if a block that was reverted comes back
(same hash, so same key) its job is completed from the log instead of being sent twice.

Delivery keys are deterministic (integration, kind, block number and hash, or the checkpoint's name), so a
re-indexed database produces the same keys and a service that deduplicates by key sees each job once.

Delivery state machine: ``pending`` → (``sending`` → ``done`` | ``pending`` with ``next_at`` in the future |
``failed``). A job found ``sending`` when due was in flight when the process died or its answer was lost; it is
sent again under the same key (counted in ``monmouth_<p>_redeliveries_total``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import apsw


def migration(prefix: str) -> str:
    """SQL creating ``<prefix>_outbox`` and ``<prefix>_deliveries``."""
    p = prefix
    return f"""
    CREATE TABLE {p}_outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, even after a revert trims the newest rows
        key TEXT NOT NULL UNIQUE,              -- delivery key
        block_number INTEGER NOT NULL,         -- the block whose application produced the job (trimmed by it)
        block_hash BLOB NOT NULL,
        kind TEXT NOT NULL,
        payload TEXT NOT NULL,                 -- JSON, written by the chain hook
        body BLOB,                             -- the prepared request, persisted before the first send
        state TEXT NOT NULL DEFAULT 'pending', -- pending | sending | done | failed
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at REAL NOT NULL DEFAULT 0,       -- unix seconds
        last_error TEXT,
        result TEXT,                           -- JSON
        created_at REAL NOT NULL,
        done_at REAL
    );
    CREATE INDEX {p}_outbox_due ON {p}_outbox (state, next_at);
    CREATE TABLE {p}_deliveries (
        key TEXT PRIMARY KEY,
        block_number INTEGER NOT NULL,
        result TEXT,
        attempts INTEGER NOT NULL,
        delivered_at REAL NOT NULL
    );
    """


def trimmed(prefix: str) -> dict[str, str | None]:
    """The outbox's ``monmouth_trimmed_tables`` entries."""
    return {f"{prefix}_outbox": "block_number", f"{prefix}_deliveries": None}


@dataclass(frozen=True)
class Job:
    """One outbox row as the deliverer sees it."""

    id: int
    key: str
    block_number: int
    block_hash: bytes
    kind: str
    payload: dict[str, Any]
    body: bytes | None
    state: str
    attempts: int
    created_at: float


_COLS = "id, key, block_number, block_hash, kind, payload, body, state, attempts, created_at"


def _job(row: Any) -> Job:
    return Job(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]), row[6], row[7], row[8], row[9])


def dumps(obj: Any) -> str:
    """Canonical JSON (sorted keys, no spaces)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


class Outbox:
    """Access to one integration's outbox.

    Args:
        db: the sidecar database (``monmouth.store.Database``): the deliverer uses ``db.reader()`` and
            ``db.write()`` on its own thread.
        prefix: the integration's name (table prefix).
    """

    def __init__(self, db: Any, prefix: str) -> None:
        self.db = db
        self.p = prefix

    # -- inside the engine's transaction ---------------------------------------------------------------------
    def enqueue(self, conn: apsw.Connection, key: str, block_number: int, block_hash: bytes, kind: str,
                payload: Mapping[str, Any]) -> bool:
        """Record a job on ``conn`` (the engine's connection in a chain hook, or a deliverer write transaction).
        Returns False if a job with ``key`` is already there."""
        conn.execute(
            f"INSERT OR IGNORE INTO {self.p}_outbox (key, block_number, block_hash, kind, payload, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)", (key, block_number, block_hash, kind, dumps(payload), time.time()))
        return bool(conn.changes())

    # -- deliverer ------------------------------------------------------------------------------------------
    def due(self, now: float, limit: int = 32) -> list[Job]:
        """Jobs to attempt now (pending or in flight, ``next_at <= now``), oldest first."""
        rows = self.db.reader().execute(
            f"SELECT {_COLS} FROM {self.p}_outbox WHERE state IN ('pending', 'sending') AND next_at <= ? "
            "ORDER BY id LIMIT ?", (now, limit)).fetchall()
        return [_job(r) for r in rows]

    def next_due_in(self, now: float) -> float | None:
        """Seconds until the next undelivered job is due (0 if one is due), ``None`` if there is none."""
        row = self.db.reader().execute(
            f"SELECT min(next_at) FROM {self.p}_outbox WHERE state IN ('pending', 'sending')").fetchone()
        return None if row is None or row[0] is None else max(0.0, row[0] - now)

    def get(self, job_id: int) -> Job | None:
        row = self.db.reader().execute(f"SELECT {_COLS} FROM {self.p}_outbox WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def logged(self, key: str) -> dict[str, Any] | None:
        """The delivery log's entry for ``key``: ``{"result": ..., "attempts": n}``, or ``None``."""
        row = self.db.reader().execute(f"SELECT result, attempts FROM {self.p}_deliveries WHERE key = ?",
                                       (key,)).fetchone()
        return None if row is None else {"result": json.loads(row[0]) if row[0] else None, "attempts": row[1]}

    def save_body(self, job: Job, body: bytes | None) -> bool:
        """Persist the prepared request (or clear it). False if the job is gone (its block was reverted)."""
        with self.db.write() as conn:
            conn.execute(f"UPDATE {self.p}_outbox SET body = ? WHERE id = ?", (body, job.id))
            return bool(conn.changes())

    def mark_sending(self, job: Job) -> bool:
        """Count an attempt and mark the job in flight, durably, before the request goes out. False if the job is
        gone (reverted meanwhile: do not send)."""
        with self.db.write() as conn:
            conn.execute(f"UPDATE {self.p}_outbox SET state = 'sending', attempts = attempts + 1 "
                         "WHERE id = ? AND state IN ('pending', 'sending')", (job.id,))
            return bool(conn.changes())

    def complete(self, job: Job, result: Any, attempts: int,
                 on_delivered: Callable[[apsw.Connection], None] | None = None) -> bool:
        """Record a delivery: the log entry (always) and, if the job still exists, its ``done`` state and
        ``on_delivered(conn)`` (integration results such as the EigenDA cert), all in one transaction.

        Returns False if the job's block was reverted while the request was in flight (nothing but the log is
        written, so no result of a reverted block survives).
        """
        now = time.time()
        res = dumps(result)
        with self.db.write() as conn:
            conn.execute(f"INSERT OR IGNORE INTO {self.p}_deliveries (key, block_number, result, attempts, "
                         "delivered_at) VALUES (?, ?, ?, ?, ?)", (job.key, job.block_number, res, attempts, now))
            conn.execute(f"UPDATE {self.p}_outbox SET state = 'done', result = ?, done_at = ?, last_error = NULL "
                         "WHERE id = ?", (res, now, job.id))
            exists = bool(conn.changes())
            if exists and on_delivered is not None:
                on_delivered(conn)
        return exists

    def retry(self, job: Job, delay: float, error: str | None) -> None:
        """Schedule the job again in ``delay`` seconds (state back to ``pending``), recording ``error``."""
        with self.db.write() as conn:
            conn.execute(f"UPDATE {self.p}_outbox SET state = 'pending', next_at = ?, "
                         "last_error = coalesce(?, last_error) WHERE id = ? AND state IN ('pending', 'sending')",
                         (time.time() + delay, error, job.id))

    def fail(self, job: Job, error: str) -> None:
        """Park the job as ``failed`` (a permanent error, or ``max_attempts`` reached)."""
        with self.db.write() as conn:
            conn.execute(f"UPDATE {self.p}_outbox SET state = 'failed', last_error = ? WHERE id = ?",
                         (error, job.id))

    def requeue_failed(self) -> int:
        """Put every failed job back to ``pending`` (operator action); returns how many."""
        with self.db.write() as conn:
            conn.execute(f"UPDATE {self.p}_outbox SET state = 'pending', next_at = 0 WHERE state = 'failed'")
            return conn.changes()

    def prune(self, keep_delivered_s: float, now: float | None = None) -> int:
        """Delete ``done`` jobs and log entries older than ``keep_delivered_s``; returns jobs deleted."""
        cutoff = (now or time.time()) - keep_delivered_s
        with self.db.write() as conn:
            conn.execute(f"DELETE FROM {self.p}_outbox WHERE state = 'done' AND done_at < ?", (cutoff,))
            n = conn.changes()
            conn.execute(f"DELETE FROM {self.p}_deliveries WHERE delivered_at < ?", (cutoff,))
        return n

    # -- status ---------------------------------------------------------------------------------------------
    def counts(self, conn: apsw.Connection | None = None) -> dict[str, int]:
        """``{state: jobs}`` for every state (zeros included)."""
        out = {"pending": 0, "sending": 0, "done": 0, "failed": 0}
        for state, n in (conn or self.db.reader()).execute(
                f"SELECT state, count(*) FROM {self.p}_outbox GROUP BY state"):
            out[state] = n
        return out

    def oldest_pending_age(self, now: float) -> float:
        row = self.db.reader().execute(
            f"SELECT min(created_at) FROM {self.p}_outbox WHERE state IN ('pending', 'sending')").fetchone()
        return 0.0 if row is None or row[0] is None else max(0.0, now - row[0])

    def last_error(self) -> str | None:
        row = self.db.reader().execute(
            f"SELECT last_error FROM {self.p}_outbox WHERE last_error IS NOT NULL AND state != 'done' "
            "ORDER BY id DESC LIMIT 1").fetchone()
        return row[0] if row else None
