"""The one interface every source implements: ``exex`` (ZeroMQ bridge), ``rpc`` (JSON-RPC polling)
and ``replay`` (a recorded file).

Data flows one way: a source yields :class:`Delivery` objects; the runner hands each to the engine,
which commits it, and only then calls :meth:`Source.ack` with the engine's new head. A source must
never assume a delivery was applied until it is acked: after a crash it is asked to resume from the
engine's durable head, and may re-deliver notifications the engine already has (the engine skips
them idempotently).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from ..types import Block, BlockRef, Notification


class ChainView(Protocol):
    """What a source may read of the engine's durable state (read again on every reconnection)."""

    def head(self) -> BlockRef | None:
        """The engine's durable head, ``None`` on an empty database."""

    def canonical(self, number: int) -> Block | None:
        """The engine's canonical block at ``number`` (header fields only), if still in its hash history."""

    def source_token(self) -> Any:
        """The ``Delivery.token`` stored with the last committed notification (JSON value), or ``None``.
        The ``exex`` source stores ``{"epoch": e, "seq": s}`` and drops re-sent ``seq <= s`` of the same epoch."""


@dataclass(slots=True)
class Delivery:
    """One notification from a source.

    Attributes:
        notification: the ``ChainCommitted`` / ``ChainReorged`` / ``ChainReverted`` to apply.
        token: the source's position of this notification, a JSON-able value the engine stores in the same
            transaction (``{"epoch": e, "seq": s}`` for ``exex``, ``{"file": ..., "frame": i}`` for ``replay``),
            or ``None``.
        size_bytes: encoded size when known (for throughput metrics), else 0.
    """

    notification: Notification
    token: Any = None
    size_bytes: int = 0
    received_at: float = field(default=0.0)


class Source(abc.ABC):
    """Base class of sources.

    Attributes a source keeps current, read by the runner for ``/status``, ``/ready`` and pruning:

    * ``source_head``: the newest block number the upstream knows (``None`` when unknown);
    * ``finalized``: the upstream's finalized block number (``None`` when unknown); the engine
      prunes undo data at or below it.
    """

    #: The ``source.kind`` value that selects this class.
    kind: ClassVar[str]

    source_head: int | None = None
    finalized: int | None = None

    @abc.abstractmethod
    def stream(self, view: ChainView) -> AsyncIterator[Delivery]:
        """Yield deliveries, in order, starting after ``view.head()`` / ``view.source_token()``: the engine's
        durable state, read again on every (re)connection. Runs until cancelled or, for finite sources,
        until the end.

        Raises:
            SourceError: a failure retrying cannot fix (unreadable file, protocol version mismatch).
        """

    async def ack(self, delivery: Delivery, head: BlockRef | None) -> None:  # noqa: B027 - optional hook
        """Called after the engine durably committed (or idempotently skipped) ``delivery``;
        ``head`` is the engine's head after it. The ``exex`` source forwards it upstream."""

    def status(self) -> dict[str, Any]:
        """A JSON-able summary for ``/status`` (connection state, counters)."""
        return {"kind": self.kind, "source_head": self.source_head, "finalized": self.finalized}

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release sockets and clients."""
