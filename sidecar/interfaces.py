"""What one plugin offers another: typed interfaces (``typing.Protocol``), found on the enabled plugins.

Plugins do not import each other. A plugin that offers a service implements one of the protocols below on its
plugin object (the instance registered with pluggy); a plugin that uses it asks :func:`provider` for the first
enabled plugin that implements it, at the time it needs it (plugins are enabled and disabled while the sidecar
runs), and works without it when there is none.

Offered today (see ``docs/plugins.md``):

=========================  ====================  =========================================================
protocol                   offered by            used by
=========================  ====================  =========================================================
:class:`EmbedderSource`    ``rag``               ``memory`` (vector recall, embedding of items)
:class:`TransactionRenderer`  ``rag``            ``memory`` (the text of chain-derived episodes)
:class:`AgentDirectory`    ``memory``            ``rag`` (labels and watches registered agents)
:class:`AgentMemorySource` ``memory``            the integrations (EigenDA exports, Composio episodes,
                                                 checkpoint triggers)
=========================  ====================  =========================================================

Order: the ``memory`` plugin's ``monmouth_block_applied`` runs first (``tryfirst``), so agents registered on
chain in a block are in its directory when the ``rag`` plugin's hook reads it for that same block, whatever the
order the plugins were registered in. The memory plugin renders transactions after the block committed (its
worker), so the renderer has no order to keep.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    import apsw
    import numpy as np

    from .types import Block

T = TypeVar("T")


@runtime_checkable
class Embedder(Protocol):
    """A text embedding model: ``embed(texts)`` gives a float32 array of shape ``(len(texts), dim)`` with unit
    rows."""

    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


@runtime_checkable
class EmbedderSource(Protocol):
    """A plugin with an embedding model."""

    def get_embedder(self) -> Embedder | None:
        """The model, or ``None`` while the plugin is not started."""
        ...


@runtime_checkable
class TransactionRenderer(Protocol):
    """A plugin that renders a transaction as plain English text."""

    def render_transaction(self, block: Block, index: int, labels: Mapping[bytes | str, str] | None = None) -> str:
        """The text of transaction ``index`` of ``block`` with its logs.

        Raises:
            IndexError: ``index`` is out of range.
        """
        ...


@runtime_checkable
class AgentDirectory(Protocol):
    """A plugin that knows the AI agents' addresses."""

    def agent_addresses(self, conn: apsw.Connection) -> list[bytes]:
        """Registered agents (20-byte addresses), read on ``conn`` (a chain hook's: its transaction's view)."""
        ...


@runtime_checkable
class AgentMemory(Protocol):
    """The AI agents' memory as another plugin uses it (a running memory plugin's; see
    :class:`AgentMemorySource`). Agents are 20-byte addresses.

    A refused call raises a :class:`monmouth.errors.RequestError` naming the field (an unknown or forgotten agent
    is a :class:`~monmouth.errors.NotFoundError`, a pruned block a :class:`~monmouth.errors.GoneError`);
    :func:`monmouth.problems.status_of` gives its HTTP status.
    """

    @property
    def max_content_bytes(self) -> int:
        """The largest content :meth:`remember` accepts, in bytes (``plugins.memory.max_content_bytes``)."""
        ...

    def agents(self) -> list[dict[str, Any]]:
        """Every agent not forgotten, oldest registration first: ``{"address": "0x...", ...}`` each."""
        ...

    def check_agent(self, agent: bytes) -> None:
        """Returns when ``agent`` is registered and not forgotten.

        Raises:
            monmouth.errors.NotFoundError: it is not (field ``agent``).
        """
        ...

    def remember(self, agent: bytes, content: str, *, tags: Sequence[str] = (),
                 metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Store ``content`` (UTF-8 text) as one of ``agent``'s episodic memories; returns the item
        (``{"id": "0x...", ...}``).

        Raises:
            monmouth.errors.RequestError: unknown agent, content over :attr:`max_content_bytes`, bad tags or metadata.
        """
        ...

    def export_agent(self, agent: bytes, block: int | None = None) -> dict[str, Any]:
        """The portable archive of ``agent``'s memory as visible at ``block`` (default: the head), with the proofs
        that tie each item to the agent's root (``docs/memory.md``, "Export").

        Raises:
            monmouth.errors.RequestError: unknown agent, a block not applied (not found) or pruned (gone).
        """
        ...

    def checkpoints(self) -> list[dict[str, Any]]:
        """The manifests of the memory checkpoints on disk, oldest first (by block, then creation time): ``{"name",
        "block": {"number", "hash"}, "global_root", "sha256", "file", "created_at", ...}`` each."""
        ...

    def global_root_at(self, number: int, block_hash: bytes | None = None) -> tuple[bytes, int] | None:
        """``(global root, agents holding items)`` at block ``number``: the 32-byte root of every agent's memory
        as the block left it, once every block applied so far is settled (``docs/memory.md``), the same on both
        storage backends; ``None`` when the block has no retained memory row (not applied, or pruned), or its hash
        is not ``block_hash`` (when given)."""
        ...


@runtime_checkable
class AgentMemorySource(Protocol):
    """A plugin with the agents' memory."""

    def get_agent_memory(self) -> AgentMemory | None:
        """The memory, or ``None`` while the plugin is not started."""
        ...


def provider(host: Any, protocol: type[T]) -> T | None:
    """The first enabled plugin of ``host`` (a ``monmouth.plugins.PluginHost``, or ``None``) that implements
    ``protocol``, in the order the plugins were enabled; ``None`` when there is none."""
    if host is None:
        return None
    for name in list(host.enabled):
        plugin = host.get(name)
        if isinstance(plugin, protocol):  # type: ignore[misc]
            return plugin  # type: ignore[return-value]
    return None
