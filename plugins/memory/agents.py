"""The agent directory: registered agents, their keys, and the tombstones of forgotten ones.

An agent is a 20-byte address with a row in ``memory_agents`` (``source``: config, api, cli, import or registry)
and a key in the :class:`~.crypto.KeyStore`. A forgotten agent keeps its row with ``forgotten_at`` set and no
label; its address is also written to the tombstone file ``<key_dir>/forgotten``, so that a restored checkpoint
taken before the forget is purged again at startup (:meth:`.core.Memory.start`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw

from monmouth.chain import hx

from . import merkle
from .config import MemoryConfig
from .crypto import AgentKey, KeyStore, MissingKeyError
from .errors import MemoryRequestError, UnknownAgentError
from .lattice import Lattice
from .schema import all_rows, scalar


@dataclass
class Counters:
    """Counters of one running plugin (this process), reported by ``monmouth_status``."""

    key_errors: int = 0  # keys missing or unreadable when an agent registered on chain or an episode was sealed
    embedded: int = 0    # items embedded


class Tombstones:
    """The addresses forgotten on this sidecar, one hex address a line in ``<key_dir>/forgotten`` (fsynced).

    Args:
        key_dir: the key directory (``plugins.memory.key_dir``, resolved).
    """

    def __init__(self, key_dir: Path) -> None:
        self.path = key_dir / "forgotten"

    def all(self) -> list[bytes]:
        """Every forgotten address (20 bytes), oldest first; empty when the file does not exist."""
        if not self.path.exists():
            return []
        return [bytes.fromhex(line.strip()) for line in self.path.read_text().splitlines() if line.strip()]

    def add(self, agent: bytes) -> None:
        """Record ``agent`` (idempotent; the line is on disk when this returns)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if agent not in self.all():
            with open(self.path, "a") as f:
                f.write(agent.hex() + "\n")
                f.flush()
                os.fsync(f.fileno())

    def remove(self, agent: bytes) -> None:
        """Drop ``agent`` (registered again with a fresh key)."""
        ts = self.all()
        if agent in ts:
            self.path.write_text("".join(a.hex() + "\n" for a in ts if a != agent))


class Agents:
    """Registered agents and their keys.

    Args:
        config: the ``[plugins.memory]`` section.
        db: the sidecar database (``monmouth.store.Database``): reads on ``db.reader()``.
        keys: the agents' keys.
        lattice: the roots (for :meth:`info`).
        tombstones: the forgotten addresses.
        write: opens one of the plugin's write transactions (:func:`.txn.write`).
        settled: brings the lattice tables up to the head before a read (see :meth:`.core.Memory.ensure_settled`).
    """

    def __init__(self, config: MemoryConfig, db: Any, keys: KeyStore, lattice: Lattice, tombstones: Tombstones,
                 write: Callable[[], Any], settled: Callable[[], None]) -> None:
        self.config = config
        self.db = db
        self.keys = keys
        self.lattice = lattice
        self.tombstones = tombstones
        self.write = write
        self.settled = settled
        #: (memory_state.agents_version, registered agents) as :meth:`registered` last loaded them.
        self._registered: tuple[int, frozenset[bytes]] | None = None

    def key(self, agent: bytes) -> AgentKey:
        """The agent's key.

        Raises:
            UnknownAgentError: not registered, forgotten, or its key is missing.
        """
        try:
            return self.keys.get(agent)
        except MissingKeyError as e:
            raise UnknownAgentError("agent", str(e)) from None

    def check(self, agent: bytes, conn: apsw.Connection | None = None) -> None:
        """Raises :class:`UnknownAgentError` (404, field ``agent``) unless ``agent`` is registered and not forgotten."""
        row = (conn or self.db.reader()).execute(
            "SELECT forgotten_at FROM memory_agents WHERE address = ?", (agent,)).fetchone()
        if row is None:
            raise UnknownAgentError("agent", f"0x{agent.hex()} is not a registered agent")
        if row[0] is not None:
            raise UnknownAgentError("agent", f"0x{agent.hex()} was forgotten")

    def register(self, agent: bytes, label: str | None = None, source: str = "api") -> dict[str, Any]:
        """Register an agent (idempotent) and create its key. A forgotten agent may be registered again: it gets
        a fresh key and an empty memory.

        Raises:
            MemoryRequestError: ``env`` key source and no key in the environment (field ``agent``).
        """
        try:
            self.keys.create(agent)
        except MissingKeyError as e:
            raise MemoryRequestError("agent", str(e)) from None
        with self.write() as conn:
            conn.execute(
                "INSERT INTO memory_agents (address, label, source, created_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (address) DO UPDATE SET forgotten_at = NULL, "
                "label = coalesce(excluded.label, memory_agents.label)",
                (agent, label, source, time.time()))
        if self.config.key_source == "file":
            self.tombstones.remove(agent)
        return self.info(agent)

    def info(self, agent: bytes) -> dict[str, Any]:
        """``{address, label, source, created_at, forgotten_at, items, root, visible, root_block}``: the agent's row,
        its item count, and its root at the latest settled block (``visible`` items under it).

        Raises:
            UnknownAgentError: never registered (404).
        """
        self.settled()
        conn = self.db.reader()
        row = conn.execute("SELECT label, source, created_at, forgotten_at FROM memory_agents WHERE address = ?",
                           (agent,)).fetchone()
        if row is None:
            raise UnknownAgentError("agent", f"0x{agent.hex()} is not a registered agent")
        items = scalar(conn, "SELECT count(*) FROM memory_items WHERE agent = ?", (agent,))
        m = self.lattice.mark_at(conn, agent, 1 << 62)
        h = (m[1], m[0]) if m is not None else None
        root = self.lattice.root_of_mark(conn, agent, *m) if m is not None else merkle.EMPTY_ROOT
        return {"address": hx(agent), "label": row[0], "source": row[1], "created_at": row[2],
                "forgotten_at": row[3], "items": items,
                "root": hx(root), "visible": h[0] if h else 0, "root_block": h[1] if h else None}

    def all(self) -> list[dict[str, Any]]:
        """:meth:`info` of every agent not forgotten, oldest registration first."""
        rows = all_rows(self.db.reader(),
                        "SELECT address FROM memory_agents WHERE forgotten_at IS NULL ORDER BY created_at, address")
        return [self.info(r[0]) for r in rows]

    @staticmethod
    def addresses(conn: apsw.Connection) -> list[bytes]:
        """Registered, not forgotten agents (20-byte addresses), read on ``conn``."""
        return [r[0] for r in conn.execute("SELECT address FROM memory_agents WHERE forgotten_at IS NULL")]

    def registered(self, conn: apsw.Connection) -> frozenset[bytes]:
        """Registered, not forgotten agents as of ``conn``'s transaction (the chain hook's). Kept in memory and
        loaded again when ``memory_state.agents_version`` (set to a random value by triggers on every change of
        ``memory_agents``) is not the one it was loaded at."""
        version = scalar(conn, "SELECT agents_version FROM memory_state WHERE id = 1")
        cached = self._registered
        if cached is None or cached[0] != version:
            cached = (version, frozenset(self.addresses(conn)))
            self._registered = cached
        return cached[1]
