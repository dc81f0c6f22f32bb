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
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..types import BlockRef, Notification

HeadProvider = Callable[[], "BlockRef | None"]


@dataclass(slots=True)
class Delivery:
    """One notification from a source.

    Attributes:
        notification: the ``ChainCommitted`` / ``ChainReorged`` / ``ChainReverted`` to apply.
        token: source-specific acknowledgement handle (the wire ``seq`` for ``exex``, a frame index for
            ``replay``), opaque to the engine.
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
    def stream(self, head: HeadProvider) -> AsyncIterator[Delivery]:
        """Yield deliveries, in order, starting after ``head()``: the engine's durable head, read
        again on every (re)connection. Runs until cancelled or, for finite sources, until the end.

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
