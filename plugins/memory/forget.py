"""Forgetting an agent for good: its key, its rows, its changes in the engine's undo data, and its label in older
checkpoints.

Journaled tables and their agent column are listed in :data:`AGENT_COLUMN`: since schema 5 none holds an agent's
memory rows, but undo changesets written before may still, so they are rewritten without them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import apsw

from monmouth.chain import hx
from monmouth.journal import redact

from . import checkpoint, dialect
from .agents import Tombstones
from .crypto import KeyStore
from .errors import UnknownAgentError
from .lattice import Lattice
from .vectors import VectorCache

log = logging.getLogger(__name__)

#: Journaled tables and the column index of their agent (for scrubbing undo changesets on forget).
AGENT_COLUMN = {
    "memory_items": "agent", "memory_tags": "agent", "memory_ops": "agent", "memory_leaves": "agent",
    "memory_marks": "agent",
}


class Forget:
    """Forget agents.

    Args:
        db: the sidecar database.
        keys: the agents' keys (destroyed first).
        lattice: the roots (an agent's global leaves are kept, anonymously, for the blocks before the forget).
        tombstones: the forgotten addresses (re-purged if a restore brings one back).
        vectors: the decrypted-vector cache.
        checkpoint_dir: where the memory checkpoints are (scrubbed after the purge).
        checkpoint_lock: held by an automatic checkpoint; no checkpoint may start between purge and scrub.
        write: opens one of the plugin's write transactions (:func:`.txn.write`).
        settle_in: settles every recorded block inside a write transaction (no pending block may still name the
            agent or need its key).
    """

    def __init__(self, db: Any, keys: KeyStore, lattice: Lattice, tombstones: Tombstones, vectors: VectorCache,
                 checkpoint_dir: Path, checkpoint_lock: threading.Lock, write: Callable[[], Any],
                 settle_in: Callable[[apsw.Connection], None]) -> None:
        self.db = db
        self.keys = keys
        self.lattice = lattice
        self.tombstones = tombstones
        self.vectors = vectors
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_lock = checkpoint_lock
        self.write = write
        self.settle_in = settle_in

    def forget(self, agent: bytes) -> dict[str, Any]:
        """Forget an agent for good: destroy its key, delete its items, tags, FTS entries, vectors, op log, leaves
        and roots, and drop its changes from the engine's undo data (:func:`monmouth.journal.redact`: SQLite's
        changesets, PostgreSQL's row images); then remove the deleted rows' copies (SQLite: ``secure_delete`` on, the
        WAL checkpointed and truncated; PostgreSQL: the purged tables vacuumed, :meth:`.dialect.Postgres.after_purge`)
        and erase its label from every checkpoint taken before (:func:`.checkpoint.scrub_agent`).

        Raises:
            UnknownAgentError: never registered (404).

        A checkpoint that cannot be scrubbed does not fail the forget: the result's ``checkpoint_error`` names it.
        """
        row = self.db.reader().execute("SELECT 1 FROM memory_agents WHERE address = ?", (agent,)).fetchone()
        if row is None:
            raise UnknownAgentError("agent", f"0x{agent.hex()} is not a registered agent")
        # The key goes first: from this moment no copy of the data (checkpoints included) can be read.
        self.tombstones.add(agent)
        destroyed = self.keys.destroy(agent)
        with self.checkpoint_lock:  # no automatic checkpoint between the purge and the scrub of the older ones
            stats = self.purge(agent)
            try:
                stats["checkpoints_scrubbed"] = len(checkpoint.scrub_agent(self.checkpoint_dir, agent))
            except checkpoint.CheckpointError as e:  # the forget itself is done: say what is left, do not fail it
                log.error("forget 0x%s: %s", agent.hex(), e)
                stats["checkpoint_error"] = f"{e}; delete that checkpoint or run the forget again"
        stats.update({"agent": hx(agent), "forgotten": True, "key_destroyed": destroyed})
        if not destroyed:
            stats["warning"] = (f"the key comes from the environment: unset {self.keys.env_name(agent)} "
                                "so old checkpoints cannot be read")
        return stats

    def purge(self, agent: bytes) -> dict[str, Any]:
        """Delete every row of ``agent`` (see :meth:`forget`); returns ``{items, roots_kept, undo_records}``."""
        stats: dict[str, Any] = {}
        with self.write() as conn:
            self.settle_in(conn)  # no pending block may still name the agent or need its key
            sql = dialect.of(conn)
            ns = [r[0] for r in conn.execute("SELECT n FROM memory_items WHERE agent = ?", (agent,))]
            for i in range(0, len(ns), 500):
                chunk = ns[i:i + 500]
                sql.fts_remove(conn, chunk)
                params = ",".join("?" * len(chunk))
                conn.execute(f"DELETE FROM memory_embed_queue WHERE n IN ({params})", chunk)
                conn.execute(f"DELETE FROM memory_tags WHERE n IN ({params})", chunk)  # keyed by item (schema 6)
            stats["items"] = len(ns)
            conn.execute("DELETE FROM memory_vectors WHERE agent = ?", (agent,))
            stats["roots_kept"] = self.lattice.preserve_forgotten(conn, agent)
            for table in ("memory_items", "memory_ops", "memory_leaves", "memory_marks", "memory_root_cache"):
                conn.execute(f"DELETE FROM {table} WHERE agent = ?", (agent,))
            stats["undo_records"] = self._scrub_changesets(conn, agent)
            conn.execute("UPDATE memory_agents SET forgotten_at = ?, label = NULL WHERE address = ?",
                         (time.time(), agent))
            conn.execute("UPDATE memory_state SET forgot_stamp = stamp WHERE id = 1")
        dialect.of(self.db).after_purge(self.db)
        self.vectors.drop(agent)
        self.lattice.invalidate()
        return stats

    @staticmethod
    def _scrub_changesets(conn: apsw.Connection, agent: bytes) -> int:
        """Drop the changes to ``agent``'s rows from the engine's undo data (:func:`monmouth.journal.redact`); returns
        how many were dropped. Keeps later reverts conflict-free after the rows were deleted."""
        return redact(conn, AGENT_COLUMN, agent)
