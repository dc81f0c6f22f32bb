"""What the memory plugin offers other plugins: :class:`monmouth.interfaces.AgentMemory` over a running
:class:`~.core.Memory` (the plugin object hands it out through ``get_agent_memory``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .checkpoint import list_checkpoints
from .core import Memory
from .portable import export_agent


class OfferedMemory:
    """:class:`monmouth.interfaces.AgentMemory` of one running :class:`~.core.Memory`."""

    def __init__(self, memory: Memory) -> None:
        self.memory = memory

    @property
    def max_content_bytes(self) -> int:
        return self.memory.config.max_content_bytes

    def agents(self) -> list[dict[str, Any]]:
        return self.memory.agents()

    def check_agent(self, agent: bytes) -> None:
        self.memory.check_agent(agent)

    def remember(self, agent: bytes, content: str, *, tags: Sequence[str] = (),
                 metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return self.memory.store(agent, "episodic", content, tags=list(tags),
                                 metadata=dict(metadata) if metadata is not None else None)

    def export_agent(self, agent: bytes, block: int | None = None) -> dict[str, Any]:
        return export_agent(self.memory, agent, block)

    def checkpoints(self) -> list[dict[str, Any]]:
        return list_checkpoints(self.memory.checkpoint_dir)

    def global_root_at(self, number: int, block_hash: bytes | None = None) -> tuple[bytes, int] | None:
        """``(global root, agents holding items)`` at block ``number``, read after the worker settled every block
        applied so far; ``None`` when the block has no retained memory row, or its hash is not ``block_hash`` (when
        given). What the SQL view ``memory_global_roots`` gives on SQLite, on both backends (PostgreSQL cannot call
        Python from SQL: docs/storage.md)."""
        mem = self.memory
        mem.ensure_settled()
        conn = mem.db.reader()
        row = mem.lattice.block_row(conn, number)
        if row is None or (block_hash is not None and row[0] != block_hash):
            return None
        root = mem.lattice.global_root(conn, number)
        return (root, row[1]) if root is not None else None
