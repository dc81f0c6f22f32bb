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
from typing import Any, ClassVar, Protocol

from ..errors import SourceError
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


class Delivery:
    """One notification from a source.

    Attributes:
        notification: the ``ChainCommitted`` / ``ChainReorged`` / ``ChainReverted`` to apply. A source may hand
            over a ``load`` callable instead, which decodes it on first access: the runner touches
            ``notification`` only on the engine's worker thread, so decoding a large block never stalls the
            event loop. Access then raises :class:`~monmouth.errors.CodecError` for a malformed body, and the
            runner hands the delivery back to the source with :meth:`Source.refuse`, applying nothing.
        token: the source's position of this notification, a JSON-able value the engine stores in the same
            transaction (``{"epoch": e, "seq": s}`` for ``exex``, ``{"file": ..., "frame": i}`` for ``replay``),
            or ``None``.
        size_bytes: encoded size when known (for throughput metrics), else 0.
        received_at: ``time.monotonic()`` when the source received it (seconds), else 0.
    """

    __slots__ = ("_load", "_notification", "received_at", "size_bytes", "token")

    def __init__(self, notification: Notification | None = None, token: Any = None, size_bytes: int = 0,
                 received_at: float = 0.0, *, load: Callable[[], Notification] | None = None) -> None:
        if (notification is None) == (load is None):
            raise TypeError("Delivery needs exactly one of notification and load")
        self._notification = notification
        self._load: Callable[[], Notification] | None = load
        self.token = token
        self.size_bytes = size_bytes
        self.received_at = received_at

    @property
    def notification(self) -> Notification:
        """The notification, decoded on first access when the source deferred it.

        Raises:
            CodecError: the deferred body is malformed (every access raises again; nothing is cached).
        """
        n = self._notification
        if n is None:
            if self._load is None:
                raise RuntimeError("the delivery's notification was released")
            n = self._notification = self._load()
        return n

    def release(self) -> None:
        """Drop the notification (and the frame it was decoded from), e.g. once committed: freeing a large block's
        objects is real work, which the runner does on the engine's thread rather than on the event loop."""
        self._notification = None
        self._load = None

    @property
    def loaded(self) -> bool:
        """Whether :attr:`notification` is decoded already."""
        return self._notification is not None

    def __repr__(self) -> str:
        what = self._notification.kind if self._notification is not None else "not yet decoded"
        return f"Delivery({what}, token={self.token!r}, size_bytes={self.size_bytes})"


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

    def take_ready(self, limit: int) -> list[Delivery]:
        """Up to ``limit`` deliveries that follow the one just yielded and are already at hand, removed from the
        stream without waiting. The runner applies them together with it in one transaction (group commit) when
        it is behind; a source that cannot tell returns none (the default)."""
        return []

    async def refuse(self, delivery: Delivery, error: Exception) -> None:
        """Called instead of :meth:`ack` when ``delivery``'s deferred notification fails to decode (nothing was
        applied). A source that defers decoding must report it upstream and re-deliver from there; the base
        implementation, for sources that never defer, gives up.

        Raises:
            SourceError: always, here.
        """
        raise SourceError(f"{self.kind} source delivered a malformed notification: {error}")

    async def ack(self, delivery: Delivery, head: BlockRef | None) -> None:  # noqa: B027 - optional hook
        """Called after the engine durably committed (or idempotently skipped) ``delivery``;
        ``head`` is the engine's head after it. The ``exex`` source forwards it upstream."""

    async def probe_head(self) -> int | None:
        """Refresh and return ``source_head`` out of band, while the runner is not consuming :meth:`stream` (it
        is retrying a failing notification), so that ``/status`` lags against the node's real head. The base
        returns ``source_head`` as is, for sources that keep it current by themselves.

        Raises:
            Exception: whatever reaching the upstream raises; the caller logs it and tries again later.
        """
        return self.source_head

    def status(self) -> dict[str, Any]:
        """A JSON-able summary for ``/status`` (connection state, counters)."""
        return {"kind": self.kind, "source_head": self.source_head, "finalized": self.finalized}

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release sockets and clients."""
