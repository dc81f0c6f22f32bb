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
