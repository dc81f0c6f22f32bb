"""Agents registered and unregistered on chain: the chain-hook side of ``[[plugins.memory.registries]]``.

The event signatures and the log index they are matched with are :mod:`.registry`'s; what a registration writes
(``memory_registry``, journaled, and the ``source = 'registry'`` rows of ``memory_agents``, not journaled) and why is
told in :mod:`.registry` and :mod:`.schema`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import apsw
from eth_abi import decode as abi_decode
from eth_abi.exceptions import DecodingError

from .agents import Counters
from .config import MemoryConfig
from .crypto import KeyStore, MissingKeyError
from .registry import Matcher

log = logging.getLogger(__name__)


@dataclass
class Stats:
    """Counters of one running plugin (this process; reverted blocks are not subtracted)."""

    registered: int = 0          # registration events applied (for an agent not forgotten)
    unregistered: int = 0        # unregistration events that removed a registration
    ignored_forgotten: int = 0   # registration events for forgotten agents
    malformed: int = 0           # matching address and topic0 but undecodable


def _decode(m: Matcher, lg: Any) -> tuple[bytes, str | None] | None:
    """``(agent, label)`` from a log matching ``m``'s address and topic0, or ``None`` if it does not decode (another
    event with the same topic0 but other indexed parameters, or bad data)."""
    if len(lg.topics) != m.event.n_topics:
        return None
    values: tuple[Any, ...] = ()
    if m.agent_data is not None or m.label_data is not None:
        try:
            values = abi_decode(m.event.data_types, lg.data)
        except (DecodingError, ValueError, OverflowError):
            return None
    if m.agent_topic is not None:
        topic = lg.topics[m.agent_topic]
        if topic[:12] != bytes(12):
            return None
        agent = topic[12:]
    else:
        assert m.agent_data is not None
        agent = bytes.fromhex(values[m.agent_data][2:])  # eth-abi decodes an address to a 0x-hex string
    label = values[m.label_data] if m.label_data is not None else None
    return agent, label


class Registrations:
    """Agents registered and unregistered by on-chain registry events (``[[plugins.memory.registries]]``).

    Args:
        config: the ``[plugins.memory]`` section (``registries``, ``registry_index``).
        keys: the agents' keys (created for an agent registered on chain).
        counters: ``key_errors`` is counted there.
    """

    def __init__(self, config: MemoryConfig, keys: KeyStore, counters: Counters) -> None:
        self.config = config
        self.keys = keys
        self.counters = counters
        self.stats = Stats()

    def apply(self, conn: apsw.Connection, block: Any) -> None:
        """Register / unregister the agents named by configured registry events in ``block``, in log order.

        Called at the start of the memory plugin's ``monmouth_block_applied`` with the engine's connection (inside its
        transaction). Returns at once when no registry is configured; otherwise costs one dict lookup per log
        (address) and, for a known address, one on topic0. Writes ``memory_registry`` (journaled) and the
        ``source = 'registry'`` rows of ``memory_agents`` (not journaled; see the module doc) and creates key files.
        Never raises for a bad log (counted in :attr:`stats` ``malformed`` and logged).
        """
        cfg = self.config
        if not cfg.registries:  # a plain field: the cheapest test on the hot path
            return
        index = cfg.registry_index
        hits = []
        log_index = 0
        txs = block.transactions
        for i, rc in enumerate(block.receipts):
            for lg in rc.logs:
                by_topic = index.get(lg.address)
                if by_topic is not None and lg.topics:
                    m = by_topic.get(lg.topics[0])
                    if m is not None:
                        hits.append((m, lg, txs[i].hash if i < len(txs) else bytes(32), log_index))
                log_index += 1
        if not hits:
            return
        st = self.stats
        for m, lg, tx_hash, li in hits:
            decoded = _decode(m, lg)
            if decoded is None:
                st.malformed += 1
                log.warning("registry 0x%s: log %d of block %d matches %s but does not decode; ignored",
                            m.registry.hex(), li, block.number, m.event.canonical)
                continue
            agent, label = decoded
            if not m.register:
                if self._unregister(conn, m.registry, agent):
                    st.unregistered += 1
                continue
            row = conn.execute("SELECT forgotten_at FROM memory_agents WHERE address = ?", (agent,)).fetchone()
            if row is not None and row[0] is not None:
                st.ignored_forgotten += 1
                log.info("registry 0x%s: agent 0x%s was forgotten; %s in block %d ignored (forget is final)",
                         m.registry.hex(), agent.hex(), m.event.name, block.number)
                continue
            self._register(conn, m.registry, agent, label, block, tx_hash, li, exists=row is not None)
            st.registered += 1

    def _ensure_key(self, agent: bytes) -> None:
        try:
            self.keys.create(agent)
        except MissingKeyError as e:
            self.counters.key_errors += 1
            log.error("agent 0x%s registered on chain has no key; its episodes are skipped until it has one: %s",
                      agent.hex(), e)

    def _register(self, conn: apsw.Connection, registry: bytes, agent: bytes, label: str | None, block: Any,
                  tx_hash: bytes, log_index: int, exists: bool) -> None:
        conn.execute("INSERT INTO memory_registry (agent, registry, block_number, tx_hash, log_index, label, "
                     "registered_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                     (agent, registry, block.number, tx_hash, log_index, label, float(block.timestamp)))
        if not exists:
            self._ensure_key(agent)  # outside the database: idempotent, harmless if the block is reverted
            conn.execute("INSERT INTO memory_agents (address, label, source, created_at) VALUES (?, ?, 'registry', ?)",
                         (agent, label, float(block.timestamp)))

    @staticmethod
    def _unregister(conn: apsw.Connection, registry: bytes, agent: bytes) -> bool:
        """Drop ``agent``'s registration if ``registry`` made it; its ``memory_agents`` row goes too when the registry
        created it (config/API/CLI/import rows stay). The agent's memory and key are kept."""
        if not conn.execute("DELETE FROM memory_registry WHERE agent = ? AND registry = ? RETURNING agent",
                            (agent, registry)).fetchall():
            return False
        conn.execute("DELETE FROM memory_agents WHERE address = ? AND source = 'registry' AND forgotten_at IS NULL",
                     (agent,))
        return True

    def revert(self, conn: apsw.Connection, block: Any) -> None:
        """Put the ``source = 'registry'`` rows of ``memory_agents`` back in line with ``memory_registry`` after the
        journal undid ``block`` (``monmouth_block_reverted``; ``block`` may be header-only). Runs whether or not a
        registry is configured now (an earlier config may have registered agents); two indexed statements, no rows
        touched when nothing was registered."""
        conn.execute("DELETE FROM memory_agents WHERE source = 'registry' AND forgotten_at IS NULL AND NOT EXISTS "
                     "(SELECT 1 FROM memory_registry r WHERE r.agent = memory_agents.address)")
        back = conn.execute(
            "INSERT INTO memory_agents (address, label, source, created_at) SELECT agent, label, 'registry', "
            "registered_at FROM memory_registry r WHERE NOT EXISTS (SELECT 1 FROM memory_agents a WHERE "
            "a.address = r.agent) RETURNING address").fetchall()
        for (agent,) in back:
            self._ensure_key(bytes(agent))  # type: ignore[arg-type]  # a BLOB column

    def status(self, conn: apsw.Connection) -> dict[str, Any]:
        """``{"registries", "agents", "registered", "unregistered", "ignored_forgotten", "malformed"}``: configured
        registries, agents currently registered by one (not forgotten), and this process's counters."""
        st = self.stats
        row = conn.execute("SELECT count(*) FROM memory_registry r JOIN memory_agents a ON a.address = r.agent WHERE "
                           "a.forgotten_at IS NULL").fetchone()
        n = row[0] if row is not None else 0
        return {"registries": len(self.config.registries), "agents": n, "registered": st.registered,
                "unregistered": st.unregistered, "ignored_forgotten": st.ignored_forgotten, "malformed": st.malformed}
