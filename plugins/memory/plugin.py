"""The memory plugin's hooks (entry point ``memory = "monmouth_memory.plugin"``).

The module itself is the plugin object the host registers: its hook functions delegate to a default
:class:`MemoryPlugin` instance. Tests and embedders can register further instances (one per database) with
``{"memory": MemoryPlugin()}``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from monmouth import hookimpl
from monmouth.auth import AccessRule

from . import registry
from .config import MemoryConfig
from .core import Memory
from .schema import MIGRATIONS, TRIMMED

log = logging.getLogger(__name__)

__version__ = "0.1.0"

#: Recall only reads: a read token may call it (``monmouth_access_rules``). Every other route has an ``{agent}``
#: parameter, which the default policy already keeps to that agent.
ACCESS_RULES = (AccessRule("POST", "/memory/agents/{agent}/recall", read=True),)


class MemoryPlugin:
    """One memory plugin instance: hook implementations around a :class:`~monmouth_memory.core.Memory`."""

    def __init__(self, workers: bool = True) -> None:
        self.memory: Memory | None = None
        self.workers = workers

    @staticmethod
    def agent_addresses(conn: Any) -> list[bytes]:
        """Registered, not forgotten agents (20-byte addresses), read on ``conn``."""
        return [r[0] for r in conn.execute("SELECT address FROM memory_agents WHERE forgotten_at IS NULL")]

    # -- declarations
    @hookimpl
    def monmouth_config_model(self) -> type[MemoryConfig]:
        return MemoryConfig

    @hookimpl
    def monmouth_migrations(self) -> Sequence[str]:
        return MIGRATIONS

    @hookimpl
    def monmouth_trimmed_tables(self) -> Mapping[str, str | None]:
        return TRIMMED

    @hookimpl
    def monmouth_status(self) -> Mapping[str, Any] | None:
        mem = self.memory
        if mem is None:
            return None
        st = mem.status()
        if mem.config.registries:
            st["registry"] = registry.status(mem, mem._read())
        return st

    # -- lifecycle
    @hookimpl
    def monmouth_startup(self, ctx: Any) -> None:
        mem = Memory(ctx.config or MemoryConfig(), ctx.db, ctx.host, ctx.settings)
        mem.start(workers=self.workers)
        self.memory = mem

    @hookimpl
    def monmouth_shutdown(self, ctx: Any) -> None:
        if self.memory is not None:
            self.memory.stop()
            self.memory = None

    @hookimpl
    def monmouth_notification_committed(self, notification: Any, head: Any) -> None:
        mem = self.memory
        if mem is not None and head is not None:
            from .checkpoint import maybe_auto_checkpoint

            mem._wake.set()  # the worker indexes the block's chain-derived items now

            maybe_auto_checkpoint(mem, head.number)

    # -- chain hooks
    @hookimpl
    def monmouth_block_applied(self, conn: Any, block: Any, notification: Any) -> None:
        if self.memory is None:
            raise RuntimeError("memory plugin not started")
        self.memory.apply_block(conn, block)

    @hookimpl
    def monmouth_block_reverted(self, conn: Any, block: Any, notification: Any) -> None:
        if self.memory is None:
            raise RuntimeError("memory plugin not started")
        self.memory.revert_block(conn, block)
        registry.revert(self.memory, conn, block)  # memory_agents' registry rows follow memory_registry

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
        from .mcp_tools import TOOLS

        return TOOLS

    @hookimpl
    def monmouth_register_commands(self, cli: Any) -> None:
        from .cli import register

        register(cli)


_default = MemoryPlugin()


# Module-level hooks (pluggy reads the argument names, so each is a thin wrapper with the hook's signature).
@hookimpl
def monmouth_config_model() -> type[MemoryConfig]:
    return MemoryConfig


@hookimpl
def monmouth_migrations() -> Sequence[str]:
    return MIGRATIONS


@hookimpl
def monmouth_trimmed_tables() -> Mapping[str, str | None]:
    return TRIMMED


@hookimpl
def monmouth_status() -> Mapping[str, Any] | None:
    return _default.monmouth_status()


@hookimpl
def monmouth_startup(ctx: Any) -> None:
    _default.monmouth_startup(ctx)


@hookimpl
def monmouth_shutdown(ctx: Any) -> None:
    _default.monmouth_shutdown(ctx)


@hookimpl
def monmouth_notification_committed(notification: Any, head: Any) -> None:
    _default.monmouth_notification_committed(notification, head)


@hookimpl
def monmouth_block_applied(conn: Any, block: Any, notification: Any) -> None:
    _default.monmouth_block_applied(conn, block, notification)


@hookimpl
def monmouth_block_reverted(conn: Any, block: Any, notification: Any) -> None:
    _default.monmouth_block_reverted(conn, block, notification)


@hookimpl
def monmouth_http_router() -> Any:
    return _default.monmouth_http_router()


@hookimpl
def monmouth_access_rules() -> Sequence[AccessRule]:
    return _default.monmouth_access_rules()


@hookimpl
def monmouth_mcp_tools() -> Sequence[Any]:
    return _default.monmouth_mcp_tools()


@hookimpl
def monmouth_register_commands(cli: Any) -> None:
    _default.monmouth_register_commands(cli)


def agent_addresses(conn: Any) -> list[bytes]:
    """Registered, not forgotten agents (20-byte addresses), read on ``conn`` (the rag plugin labels them)."""
    return MemoryPlugin.agent_addresses(conn)


def memory() -> Memory | None:
    """The default instance's runtime (``None`` while the plugin is disabled)."""
    return _default.memory
