"""Roots and proofs of agents' memory at a block: the global root, an agent's root, an item's inclusion proof, an
agent's leaves, and the leaf changes since a block (computed by :class:`.lattice.Lattice`).

Every answer is read only: it first waits until the worker settled every block up to the head it read
(:meth:`.worker.MemoryWorker.settled`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import apsw

from .agents import Agents
from .errors import InvalidRequestError
from .items import head
from .lattice import Lattice
from .schema import scalar


class Proofs:
    """The verifiable reads.

    Args:
        db: the sidecar database: reads on ``db.reader()``.
        lattice: computes and caches the roots.
        agents: the agent directory (checks).
        settled: waits until every recorded block is settled.
    """

    def __init__(self, db: Any, lattice: Lattice, agents: Agents, settled: Callable[[], None]) -> None:
        self.db = db
        self.lattice = lattice
        self.agents = agents
        self.settled = settled

    def _check_block(self, conn: apsw.Connection, block: int | None) -> tuple[int, bytes]:
        number = head(conn)[0]
        self.settled()  # every block up to the head read just now (the next statements on conn see them)
        return self.lattice.check_block(conn, block, number)

    def global_root(self, block: int | None = None) -> dict[str, Any]:
        """The global root at ``block`` (default: the head): ``{block, hash, root, agents, leaf_encoding}``.

        Raises:
            NotFoundError: not applied or no roots for it (404); GoneError: pruned (410); MemoryRequestError:
            not a block number (422). All name the field ``block``.
        """
        conn = self.db.reader()
        block, bhash = self._check_block(conn, block)
        return self.lattice.global_answer(conn, block, bhash)

    def agent_root(self, agent: bytes, block: int | None = None, with_global_proof: bool = False) -> dict[str, Any]:
        """The agent's root at ``block`` (default: the head), with the global root of that block and, optionally,
        the proof of the agent's global leaf ``(agent, root)`` under it.

        Raises:
            UnknownAgentError, NotFoundError (404), GoneError (410).
        """
        self.agents.check(agent)
        conn = self.db.reader()
        block, bhash = self._check_block(conn, block)
        return self.lattice.agent_answer(conn, agent, block, bhash, with_global_proof)

    def proof(self, agent: bytes, item_id: bytes, block: int | None = None) -> dict[str, Any]:
        """The inclusion proof of an item's leaf under the agent's root at ``block`` (default: the head).

        Raises:
            UnknownAgentError, NotFoundError: unknown agent, or the item was not visible at that block (404);
            GoneError: pruned (410).
        """
        self.agents.check(agent)
        conn = self.db.reader()
        block, bhash = self._check_block(conn, block)
        return self.lattice.proof_answer(conn, agent, item_id, block, bhash)

    def leaves(self, agent: bytes, block: int | None = None) -> dict[str, Any]:
        """Every leaf (values and hash, no content) of the agent's tree at ``block``: a verifier's starting set.

        Raises:
            UnknownAgentError, NotFoundError (404), GoneError (410).
        """
        self.agents.check(agent)
        conn = self.db.reader()
        block, bhash = self._check_block(conn, block)
        return self.lattice.leaves_answer(conn, agent, block, bhash)

    def changes(self, agent: bytes, since_block: int, limit: int = 100) -> dict[str, Any]:
        """The leaf changes of the agent after ``since_block``, block by block, each with the root after it, so a
        remote party holding the leaves at ``since_block`` (see :meth:`leaves`) can check every step.

        Raises:
            UnknownAgentError (404), MemoryRequestError (bad ``since_block``/``limit``), GoneError (410).
        """
        if isinstance(since_block, bool) or not isinstance(since_block, int) or since_block < 0:
            raise InvalidRequestError("since_block", "must be a block number")
        if not 1 <= limit <= 10_000:
            raise InvalidRequestError("limit", "must be between 1 and 10000")
        self.agents.check(agent)
        self.settled()
        conn = self.db.reader()
        return self.lattice.changes_answer(conn, agent, since_block, limit, head(conn)[0])

    def warm(self) -> bytes | None:
        """Compute (and cache) the global root of the latest settled block; returns it (``None``: no block)."""
        conn = self.db.reader()
        number = scalar(conn, "SELECT max(block_number) FROM memory_blocks")
        return None if number is None else self.lattice.global_root(conn, number)
