"""The memory plugin (entry point ``memory = "monmouth_memory.plugin:plugin"``).

The plugin is an instance of :class:`MemoryPlugin` holding its running :class:`~monmouth_memory.core.Memory`,
registered with pluggy like any third-party plugin. :data:`plugin` is the instance the entry point names; tests and
embedders register further instances (one per database) with ``{"memory": MemoryPlugin()}``. The module's own
names (``monmouth_startup``, ``agent_addresses``, ...) are :data:`plugin`'s bound methods, so the module also works
as a plugin object (``[plugins.memory] module = "monmouth_memory.plugin"``).

It offers the other plugins an agent directory (:class:`monmouth.interfaces.AgentDirectory`) and the agents' memory
(:class:`monmouth.interfaces.AgentMemorySource`, :mod:`.offer`), and uses a
transaction renderer and an embedder when a plugin offers them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from monmouth import hookimpl
from monmouth.auth import AccessRule
from monmouth.plugins import hook_functions

from . import __version__
from .agents import Agents
from .config import MemoryConfig
from .core import Memory
from .metrics import MemoryCollector
from .offer import OfferedMemory
from .schema import MIGRATIONS, PG_MIGRATIONS, TRIMMED

log = logging.getLogger(__name__)

__all__ = ["MemoryPlugin", "__version__", "plugin"]

#: Recall only reads: a read token may call it (``monmouth_access_rules``). Every other route has an ``{agent}``
#: parameter, which the default policy already keeps to that agent.
ACCESS_RULES = (AccessRule("POST", "/memory/agents/{agent}/recall", read=True),)


class MemoryPlugin:
    """One memory plugin instance: hook implementations around a :class:`~monmouth_memory.core.Memory`.

    Args:
        workers: start the worker thread (off in tests and benchmarks that settle by themselves).
    """

    def __init__(self, workers: bool = True) -> None:
        self.memory: Memory | None = None
        self.workers = workers
        self._collector: tuple[Any, MemoryCollector] | None = None  # (registry, collector) while started

    # -- what it offers other plugins (monmouth.interfaces.AgentDirectory, AgentMemorySource)
    def get_agent_memory(self) -> OfferedMemory | None:
        """The running memory as :class:`monmouth.interfaces.AgentMemory`, or ``None`` while not started."""
        return OfferedMemory(self.memory) if self.memory is not None else None

    @staticmethod
    def agent_addresses(conn: Any) -> list[bytes]:
        """Registered, not forgotten agents (20-byte addresses), read on ``conn``."""
        return Agents.addresses(conn)

    def global_root_at(self, number: int, block_hash: bytes | None = None) -> tuple[bytes, int] | None:
        """:meth:`monmouth.interfaces.AgentMemory.global_root_at` of the running memory; ``None`` also while the
        plugin is not running."""
        offered = self.get_agent_memory()
        return offered.global_root_at(number, block_hash) if offered is not None else None

    # -- declarations
    @hookimpl
    def monmouth_config_model(self) -> type[MemoryConfig]:
        return MemoryConfig

    @hookimpl
    def monmouth_migrations(self, backend: str = "sqlite") -> Sequence[str]:
        return PG_MIGRATIONS if backend == "postgres" else MIGRATIONS

    @hookimpl
    def monmouth_backends(self) -> Sequence[str]:
        return ("sqlite", "postgres")

    @hookimpl
    def monmouth_trimmed_tables(self) -> Mapping[str, str | None]:
        return TRIMMED

    @hookimpl
    def monmouth_storage_copy(self, src: Any, dst: Any) -> Sequence[str]:
        from .storagecopy import copy

        return copy(src, dst)

    @hookimpl
    def monmouth_status(self) -> Mapping[str, Any] | None:
        return self.memory.status() if self.memory is not None else None

    # -- lifecycle
    @hookimpl
    def monmouth_startup(self, ctx: Any) -> None:
        mem = Memory(ctx.config or MemoryConfig(), ctx.db, ctx.host, ctx.settings)
        # The worker thread only in `monmouth run` (docs/storage.md, "Scale-out"); a serving process's reads settle
        # what they need themselves, under the plugin's write lock (.worker.MemoryWorker.settled).
        mem.start(workers=self.workers and getattr(ctx, "role", "run") == "run")
        self.memory = mem
        if ctx.metrics is not None:
            collector = MemoryCollector(ctx.db.reader)
            ctx.metrics.register(collector)
            self._collector = (ctx.metrics, collector)

    @hookimpl
    def monmouth_shutdown(self, ctx: Any) -> None:
        if self._collector is not None:
            registry, collector = self._collector
            registry.unregister(collector)
            self._collector = None
        if self.memory is not None:
            self.memory.stop()
            self.memory = None

    @hookimpl
    def monmouth_notification_committed(self, notification: Any, head: Any) -> None:
        mem = self.memory
        if mem is not None and head is not None:
            mem.wake()  # the worker settles and indexes the block's chain-derived items now
            mem.checkpoints.after_commit(head.number)

    # -- chain hooks
    @hookimpl(tryfirst=True)
    def monmouth_block_applied(self, conn: Any, block: Any, notification: Any) -> None:
        """First of all plugins (``tryfirst``): agents registered on chain in ``block`` are in the directory when
        other plugins read it for the same block (see :mod:`monmouth.interfaces`)."""
        if self.memory is None:
            raise RuntimeError("memory plugin not started")
        self.memory.apply_block(conn, block)

    @hookimpl(tryfirst=True)
    def monmouth_block_reverted(self, conn: Any, block: Any, notification: Any) -> None:
        """First of all plugins (``tryfirst``): the memory rows derived from ``block`` are gone (and on PostgreSQL
        the plugin's write lock is held) before other plugins' revert hooks read memory tables, as when the engine
        trimmed them itself."""
        if self.memory is None:
            raise RuntimeError("memory plugin not started")
        self.memory.revert_block(conn, block)

    # -- surfaces
    @hookimpl
    def monmouth_http_router(self) -> Any:
        from .http import make_router

        return make_router(lambda: self.memory)

    @hookimpl
    def monmouth_access_rules(self) -> Sequence[AccessRule]:
        return ACCESS_RULES

    @hookimpl
    def monmouth_mcp_tools(self) -> Sequence[Any]:
        from .mcp_tools import tools_for

        return tools_for(lambda: self.memory)

    @hookimpl
    def monmouth_register_commands(self, cli: Any) -> None:
        from .cli import register

        register(cli)


#: The instance the ``monmouth.plugins`` entry point names.
plugin = MemoryPlugin()

# The module as a plugin object: the same hooks, bound to ``plugin``.
globals().update(hook_functions(plugin))
agent_addresses = plugin.agent_addresses
get_agent_memory = plugin.get_agent_memory
global_root_at = plugin.global_root_at


def memory() -> Memory | None:
    """:data:`plugin`'s runtime (``None`` while the plugin is disabled)."""
    return plugin.memory
