"""The ``exex`` source: a ZeroMQ DEALER client of the Reth ExEx bridge (``bridge/``), speaking the wire
protocol of ``docs/wire.md``.

One *session* per connection: a fresh DEALER socket connects, sends ``hello`` with the engine's durable
head and the credit window, and waits for ``welcome``. Then a background reader task receives frames
(heartbeats keep flowing while the engine is busy with a notification), and :meth:`ExExSource.stream`
yields each notification as a :class:`Delivery` whose token is ``{"epoch": e, "seq": s}``. The runner
stores that token with the commit and then calls :meth:`ExExSource.ack`, which sends ``ack``: nothing is
acknowledged before the engine committed it.

Failure handling:

* the bridge is silent for 3 heartbeat intervals, never answers ``hello``, says ``unexpected`` ("no
  session", "superseded"), or a ``seq`` is skipped (``gap``): the session is reset (socket closed, a new
  one opened, ``hello`` again) after an exponential backoff capped at ``max_backoff`` seconds. The bridge
  re-sends every un-acknowledged notification; those whose ``{epoch, seq}`` is at or below the engine's
  stored token are acknowledged without being applied again, others are skipped by the engine by hash;
* a malformed, truncated or oversized frame, or an unknown message type: logged with the problem,
  counted (``monmouth_bridge_frames_refused_total{code}``, ``monmouth_errors_total{kind="codec"}``, the
  ``on_error`` callback), answered with ``error``, and dropped. Nothing from it reaches the engine;
* the bridge ``refused`` to serve from where this sidecar asked (a ``start_block`` in the future or below
  the node's pruned history, a head on neither the node's chain nor its ExEx WAL): logged as an error naming
  the bridge's reason, kept in ``last_error`` and ``/status``, and asked again after the backoff (a start in
  the future becomes servable as the node advances; the others need the operator, see bridge/README.md);
* a newer protocol version on either side: :class:`~monmouth.errors.SourceError` (retrying cannot fix it).

On an empty database the ``hello`` carries ``start_block``: Reth backfills from that block through its ExEx
backfill machinery, then the stream continues live. While the node is far ahead, :meth:`ExExSource.status`
reports the progress under ``backfill``.

History beside the stream: :meth:`ExExSource.history` asks the bridge (``history`` requests, answered with
``history_blocks`` read from Reth's database) for the canonical blocks a plugin that joined late needs, one batch
at a time, over the open session. The answers take no ``seq`` and are never acknowledged; the live stream goes on
meanwhile. A bridge whose ``welcome`` has no ``history`` key serves none (an older bridge).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import zmq
import zmq.asyncio

from .. import __version__, wire
from ..backoff import Backoff
from ..errors import ConfigError, HistoryError, MonmouthError, SourceError
from ..types import Block, BlockRef, ChainReverted, Notification
from .base import ChainView, Delivery, Source

log = logging.getLogger("monmouth.sources.exex")

#: Callback for refused frames and bridge errors: ``(code, message)``.
ErrorCallback = Callable[[str, str], None]


class _Reset(MonmouthError):
    """The session must be torn down and opened again (after a backoff), logged once at ``level``."""

    retryable = True

    def __init__(self, message: str, level: int = logging.WARNING) -> None:
        super().__init__(message)
        self.level = level


def _tip(n: Notification) -> int | None:
    return None if isinstance(n, ChainReverted) else n.new.tip.number


class _BridgeMetrics:
    """The ``exex`` source's Prometheus series, registered once per registry."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        from ..metrics import LATENCY_BUCKETS

        self.connected = Gauge("monmouth_bridge_connected", "1 while a bridge session is open, else 0.",
                               registry=registry)
        self.frames = Counter("monmouth_bridge_frames", "Frames received from the bridge, by message type.",
                              ["type"], registry=registry)
        self.refused = Counter("monmouth_bridge_frames_refused",
                               "Frames from the bridge refused (never applied), by error code.", ["code"],
                               registry=registry)
        self.bytes = Counter("monmouth_bridge_notification_bytes", "Notification bytes received from the bridge.",
                             registry=registry)
        self.acks = Counter("monmouth_bridge_acks", "Acks sent to the bridge.", registry=registry)
        self.inflight = Gauge("monmouth_bridge_inflight", "Notifications received and not yet acknowledged.",
                              registry=registry)
        self.ack_seconds = Histogram("monmouth_bridge_ack_seconds",
                                     "Time from receiving a notification to acknowledging it, seconds.",
                                     buckets=LATENCY_BUCKETS, registry=registry)


def _bridge_metrics(metrics: Any) -> _BridgeMetrics | None:
    if metrics is None or getattr(metrics, "registry", None) is None:
        return None
    bm = getattr(metrics, "_exex_bridge_metrics", None)
    if bm is None:
        bm = _BridgeMetrics(metrics.registry)
        metrics._exex_bridge_metrics = bm
    return bm


class ExExSource(Source):
    """Follow the ExEx bridge at ``url``.

    Args:
        url: the bridge's ZeroMQ endpoint, e.g. ``tcp://127.0.0.1:5555`` or ``ipc:///run/monmouth.sock``.
        window: credit window sent in ``hello``: the most notifications un-acknowledged at once (1 to 1024).
        heartbeat_s: heartbeat interval in seconds until the bridge's ``welcome`` sets its own.
        max_frame_bytes: largest frame accepted (bytes); larger ones are refused with ``frame_too_large``.
        metrics: the core's :class:`~monmouth.metrics.Metrics` (optional).
        max_backoff: cap of the reconnection backoff, seconds.
        on_error: called with ``(code, message)`` for every refused frame and every ``error`` from the bridge.
        client: the ``client`` text of ``hello``.
        handshake_timeout_s: how long to wait for ``welcome`` (default: 3 heartbeat intervals, at least 2 s).
        start_block: the first block wanted on an empty database (block number; Reth backfills from it), or
            ``None`` to follow from the node's head.

    Raises:
        ConfigError: ``window`` outside 1 to 1024, or a non-positive interval or size.
    """

    kind = "exex"

    def __init__(self, url: str, window: int = 64, heartbeat_s: float = 1.0,
                 max_frame_bytes: int = wire.MAX_FRAME_BYTES, metrics: Any = None, *, max_backoff: float = 30.0,
                 on_error: ErrorCallback | None = None, client: str | None = None,
                 handshake_timeout_s: float | None = None, start_block: int | None = None) -> None:
        if not wire.WINDOW_MIN <= window <= wire.WINDOW_MAX:
            raise ConfigError(f"source.window: {window} is outside {wire.WINDOW_MIN} to {wire.WINDOW_MAX}")
        if heartbeat_s <= 0 or max_frame_bytes <= 0 or max_backoff <= 0:
            raise ConfigError("source.heartbeat, max_frame_bytes and max_backoff must be positive")
        if start_block is not None and start_block < 0:
            raise ConfigError(f"source.start_block: {start_block} is not a block number")
        self.url = url
        self.start_block = start_block
        self.window = window
        self.heartbeat_s = heartbeat_s
        self.max_frame_bytes = max_frame_bytes
        self.max_backoff = max_backoff
        self.handshake_timeout_s = handshake_timeout_s or max(3 * heartbeat_s, 2.0)
        self.client = client or f"monmouth/{__version__}"
        self.metrics = metrics
        self.on_error = on_error
        self._bm = _bridge_metrics(metrics)
        self._ctx: zmq.asyncio.Context | None = None
        self._sock: zmq.asyncio.Socket | None = None
        self._reader: asyncio.Task[None] | None = None
        self._inflight: dict[int, Delivery] = {}
        # Received, not yet yielded: deliveries in seq order, or the exception that ends the session.
        self._pending: collections.deque[Delivery | BaseException] = collections.deque()
        self._wake = asyncio.Event()
        self._closed = False
        #: Connection state: ``idle``, ``connecting``, ``streaming``, ``backoff`` or ``closed``.
        self.state = "idle"
        #: The bridge's last ``welcome``.
        self.bridge: wire.Welcome | None = None
        self.sessions = 0
        self.reconnects = 0
        self.received = 0
        self.received_bytes = 0
        self.acks_sent = 0
        self.resends_acked = 0
        self.last_seq: int | None = None
        #: The node's newest block number as the bridge last announced it (``welcome``/``heartbeat``), if it did.
        self.node_head: int | None = None
        self.refused: dict[str, int] = {}
        self.bridge_errors: dict[str, int] = {}
        self.last_error: str | None = None
        self._last_heard: float | None = None
        # (monotonic time, head block number) after recent acknowledged commits, for the backfill progress and rate.
        self._progress: collections.deque[tuple[float, int]] = collections.deque(maxlen=64)
        # History requests: one at a time (the flow control), answered by id.
        self._history_ids = itertools.count(1)
        self._history_lock = asyncio.Lock()
        self._history_waiters: dict[int, asyncio.Future[wire.HistoryBlocks]] = {}
        #: Blocks received through history requests.
        self.history_blocks = 0

    # -------------------------------------------------------------------------------------------- stream
    async def stream(self, view: ChainView) -> AsyncIterator[Delivery]:  # type: ignore[override]
        """Yield the bridge's notifications, reconnecting as needed; runs until cancelled.

        Raises:
            SourceError: the bridge speaks another protocol version.
        """
        self._closed = False
        backoff = Backoff(0.1, lambda: self.max_backoff)
        first = True
        while not self._closed:
            if not first:
                self.reconnects += 1
                if self.metrics is not None:
                    self.metrics.source_reconnects.labels("exex").inc()
            first = False
            delay = None
            try:
                async for item in self._session(view):
                    backoff.reset()
                    yield item
            except _Reset as e:
                self.last_error = str(e)
                delay = backoff.next()
                log.log(e.level, "bridge session at %s reset: %s; reconnecting in %.1fs", self.url, e, delay)
            finally:
                self._close_session()
            if self._closed:
                break
            self.state = "backoff"
            await asyncio.sleep(backoff.next() if delay is None else delay)

    async def _session(self, view: ChainView) -> AsyncIterator[Delivery]:
        if self._ctx is None:
            self._ctx = zmq.asyncio.Context()
        self.state = "connecting"
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.url)
        self._sock = sock
        self._inflight.clear()
        self._set_inflight_gauge()
        head = view.head()
        start = self.start_block if head is None else None
        await sock.send(wire.encode(wire.Hello(wire.PROTOCOL_VERSION, head, self.window, self.client, start)))
        welcome = await self._handshake(sock)
        self.bridge = welcome
        self._node_head(welcome.node_head)
        self.sessions += 1
        self.state = "streaming"
        self._last_heard = time.monotonic()
        if self._bm:
            self._bm.connected.set(1)
        log.info("bridge session open at %s: %s, chain %d, epoch %d, head %s, window %d", self.url, welcome.node,
                 welcome.chain_id, welcome.epoch, head, self.window)
        hb = welcome.heartbeat_ms / 1000 if welcome.heartbeat_ms > 0 else self.heartbeat_s
        pending = self._pending = collections.deque()
        self._wake = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read(sock, hb, view, welcome.epoch))
        while True:
            while not pending:
                self._wake.clear()
                await self._wake.wait()
            item = pending.popleft()
            if isinstance(item, BaseException):
                raise item
            yield item

    async def _handshake(self, sock: zmq.asyncio.Socket) -> wire.Welcome:
        deadline = time.monotonic() + self.handshake_timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not await sock.poll(int(left * 1000) + 1):
                raise _Reset(f"no welcome from the bridge within {self.handshake_timeout_s:.1f}s")
            parts = await sock.recv_multipart()
            msg = await self._decode(sock, parts)
            if isinstance(msg, wire.Welcome):
                try:
                    wire.check_version(msg.version)
                except wire.UnsupportedVersionError as e:
                    await self._send(sock, wire.Error(e.code, str(e)))
                    self._count_error(e.code, str(e), refused=False)
                    raise SourceError(str(e)) from None
                return msg
            if isinstance(msg, wire.Error):
                self._on_bridge_error(msg)
            elif msg is not None and not isinstance(msg, wire.Heartbeat):
                await self._refuse(sock, "unexpected", f"{type(msg).__name__.lower()} before welcome")

    # -------------------------------------------------------------------------------------------- reader
    def _put(self, item: Delivery | BaseException) -> None:
        self._pending.append(item)
        self._wake.set()

    async def _read(self, sock: zmq.asyncio.Socket, hb: float,
                    view: ChainView, epoch: int) -> None:
        try:
            await self._read_loop(sock, hb, view, epoch)
        except asyncio.CancelledError:
            raise
        except (_Reset, SourceError) as e:
            self._put(e)
        except zmq.ZMQError as e:
            self._put(_Reset(f"socket error: {e}"))
        except Exception as e:  # a bug here must not hang the stream
            log.exception("bridge reader failed")
            self._put(_Reset(f"reader failed: {type(e).__name__}: {e}"))

    async def _read_loop(self, sock: zmq.asyncio.Socket, hb: float,
                         view: ChainView, epoch: int) -> None:
        last_beat = time.monotonic()
        last_seq: int | None = None
        while True:
            now = time.monotonic()
            heard = self._last_heard or now
            wait = min(last_beat + hb - now, heard + 3 * hb - now)
            events = await sock.poll(max(0, int(wait * 1000)) + 1)  # flags default to POLLIN
            if events:
                for _ in range(1024):
                    try:
                        # copy=False: notifications are large; decode straight from libzmq's buffer.
                        frames = await sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                        parts = [f.buffer for f in frames]
                    except zmq.Again:
                        break
                    self._last_heard = time.monotonic()
                    last_seq = await self._on_frame(sock, parts, view, epoch, last_seq)
            now = time.monotonic()
            if now - (self._last_heard or now) > 3 * hb:
                raise _Reset(f"bridge silent for {now - (self._last_heard or now):.1f}s (3 heartbeat intervals)")
            if now - last_beat >= hb:
                await self._send(sock, wire.Heartbeat(wire.now_ms()))
                last_beat = now

    async def _on_frame(self, sock: zmq.asyncio.Socket, parts: list[memoryview],
                        view: ChainView, epoch: int,
                        last_seq: int | None) -> int | None:
        # Notification bodies are decoded later, by the runner on the engine's worker thread (Delivery.load):
        # only the envelope is read on this loop.
        msg = await self._decode(sock, parts, defer=True)
        if msg is None:
            return last_seq
        if isinstance(msg, wire.NotificationMsg | wire.PendingNotification):
            seq = msg.seq
            if last_seq is not None and seq <= last_seq:
                log.debug("duplicate notification seq %d ignored", seq)
                return last_seq
            if last_seq is not None and seq != last_seq + 1:
                text = f"expected seq {last_seq + 1}, got seq {seq}"
                await self._send(sock, wire.Error("gap", text))
                self._count_error("gap", text, refused=False)
                raise _Reset(f"sequence gap: {text}")
            size = len(parts[0])
            self.received += 1
            self.received_bytes += size
            self.last_seq = seq
            if self._bm:
                self._bm.bytes.inc(size)
            tip = msg.tip if isinstance(msg, wire.PendingNotification) else _tip(msg.notification)
            if tip is not None:
                self.source_head = max(self.source_head or 0, tip)
            token = view.source_token()
            if (epoch and isinstance(token, dict) and token.get("epoch") == epoch
                    and isinstance(token.get("seq"), int) and seq <= token["seq"]):
                # Committed before a reconnect whose ack was lost: acknowledge, do not apply again.
                self.resends_acked += 1
                await self._send_ack(sock, seq, view.head())
                return seq
            token = {"epoch": epoch, "seq": seq}
            if isinstance(msg, wire.PendingNotification):
                d = Delivery(None, token, size, time.monotonic(), load=msg.load)
            else:
                d = Delivery(msg.notification, token, size, time.monotonic())
            self._inflight[seq] = d
            self._set_inflight_gauge()
            self._put(d)
            return seq
        if isinstance(msg, wire.Heartbeat):
            self._node_head(msg.node_head)
            return last_seq
        if isinstance(msg, wire.HistoryBlocks):
            waiter = self._history_waiters.pop(msg.id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(msg)
            else:
                log.debug("history answer %d dropped: nobody waits for it", msg.id)
            return last_seq
        if isinstance(msg, wire.Error):
            self._on_bridge_error(msg)
            return last_seq
        await self._refuse(sock, "unexpected", f"the bridge may not send {type(msg).__name__.lower()} now")
        return last_seq

    async def _decode(self, sock: zmq.asyncio.Socket, parts: list[bytes] | list[memoryview], *,
                      defer: bool = False) -> wire.Message | wire.PendingNotification | None:
        """Decode one ZeroMQ message; refuse (and return ``None`` for) anything that is not one valid frame.
        With ``defer``, a notification's blocks are left for :meth:`wire.PendingNotification.load`."""
        if self._bm:
            self._bm.frames.labels("raw").inc()
        if len(parts) != 1:
            await self._refuse(sock, "malformed", f"message has {len(parts)} frames, expected 1")
            return None
        try:
            msg = wire.decode(parts[0], self.max_frame_bytes, defer=defer)
        except wire.WireError as e:
            await self._refuse(sock, e.code, str(e))
            return None
        if self._bm:
            kind = wire.NotificationMsg if isinstance(msg, wire.PendingNotification) else type(msg)
            self._bm.frames.labels(kind.__name__.lower()).inc()
        return msg

    def _node_head(self, number: int | None) -> None:
        """The bridge announced the node's newest block: lag is measured against it (while Reth backfills this
        sidecar, the newest notification received is far behind the node)."""
        if number is not None:
            self.node_head = number
            self.source_head = max(self.source_head or 0, number)

    def _on_bridge_error(self, msg: wire.Error) -> None:
        self._count_error(msg.code, msg.message, refused=False)
        self.bridge_errors[msg.code] = self.bridge_errors.get(msg.code, 0) + 1
        if msg.code == "unsupported_version":
            raise SourceError(f"the bridge refused this sidecar: {msg.message}")
        if msg.code == "unexpected":
            raise _Reset(f"the bridge says: {msg.message}")
        if msg.code == "refused":
            raise _Reset(f"the bridge refused to serve this sidecar: {msg.message}", logging.ERROR)
        log.warning("the bridge reported an error (%s): %s", msg.code, msg.message)

    async def _refuse(self, sock: zmq.asyncio.Socket, code: str, message: str) -> None:
        log.warning("refused a frame from the bridge (%s): %s", code, message)
        self._count_error(code, message, refused=True)
        await self._send(sock, wire.Error(code, message[:500]))

    def _count_error(self, code: str, message: str, *, refused: bool) -> None:
        self.last_error = f"{code}: {message}"
        if refused:
            self.refused[code] = self.refused.get(code, 0) + 1
            if self._bm:
                self._bm.refused.labels(code).inc()
            if self.metrics is not None:
                self.metrics.errors.labels("codec").inc()
        if self.on_error is not None:
            try:
                self.on_error(code, message)
            except Exception:
                log.exception("on_error callback failed")

    async def _send(self, sock: zmq.asyncio.Socket, msg: wire.Message) -> None:
        with contextlib.suppress(zmq.ZMQError):
            await sock.send(wire.encode(msg), flags=zmq.NOBLOCK)

    async def _send_ack(self, sock: zmq.asyncio.Socket, seq: int, head: BlockRef | None) -> None:
        await self._send(sock, wire.Ack(seq, head))
        self.acks_sent += 1
        if self._bm:
            self._bm.acks.inc()

    def _set_inflight_gauge(self) -> None:
        if self._bm:
            self._bm.inflight.set(len(self._inflight))

    def _close_session(self) -> None:
        for rid, waiter in self._history_waiters.items():
            if not waiter.done():
                waiter.set_exception(HistoryError(f"history request {rid}: the bridge session at {self.url} ended "
                                                  "before the answer came"))
        self._history_waiters.clear()
        if self._reader is not None:
            self._reader.cancel()
            self._reader = None
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        self._inflight.clear()
        self._set_inflight_gauge()
        if self._bm:
            self._bm.connected.set(0)

    # -------------------------------------------------------------------------------------------- ack
    def take_ready(self, limit: int) -> list[Delivery]:
        """Up to ``limit`` further deliveries already received, in order, without waiting (for group commit)."""
        out: list[Delivery] = []
        pending = self._pending
        while pending and len(out) < limit and isinstance(pending[0], Delivery):
            out.append(pending.popleft())  # type: ignore[arg-type]
        return out

    async def refuse(self, delivery: Delivery, error: Exception) -> None:
        """``delivery``'s notification did not decode (the runner applied nothing): answer ``error`` (code
        ``malformed``), count it like any refused frame, and reset the session so that nothing after it is
        applied; the bridge re-sends from the first un-acknowledged notification."""
        token = delivery.token
        seq = token.get("seq") if isinstance(token, dict) else None
        if not isinstance(seq, int) or self._inflight.get(seq) is not delivery or self._sock is None:
            log.debug("refusal of seq %s not sent: its session is gone", seq)
            return
        await self._refuse(self._sock, getattr(error, "code", "malformed"), str(error))
        self._inflight.clear()
        self._set_inflight_gauge()
        if self._reader is not None:
            self._reader.cancel()
            self._reader = None
        self._pending.clear()
        self._put(_Reset(f"notification seq {seq} refused: {error}"))

    async def ack(self, delivery: Delivery, head: BlockRef | None) -> None:
        """Send ``ack`` for ``delivery`` (the engine committed or skipped it; ``head`` is its head after).

        A delivery of an earlier session is not acknowledged here: the bridge re-sends it to the new
        session, which acknowledges it without applying it again.
        """
        token = delivery.token
        seq = token.get("seq") if isinstance(token, dict) else None
        if not isinstance(seq, int) or self._inflight.get(seq) is not delivery or self._sock is None:
            log.debug("ack for seq %s not sent: its session is gone", seq)
            return
        del self._inflight[seq]
        self._set_inflight_gauge()
        if head is not None:
            self._progress.append((time.monotonic(), head.number))
        if self._bm and delivery.received_at:
            self._bm.ack_seconds.observe(time.monotonic() - delivery.received_at)
        await self._send_ack(self._sock, seq, head)

    # -------------------------------------------------------------------------------------------- history
    async def history(self, first: int, last: int, head: BlockRef | None, timeout: float = 30.0) -> list[Block]:
        """The node's canonical blocks ``first..last`` (block numbers, inclusive), with senders and receipts, read
        by the bridge from Reth's database: ``history`` requests over the open session, one at a time, each
        answered with at most ``welcome.history`` blocks (the next request starts after the last block received).
        ``head`` (the engine head): the bridge checks that the node's block at its height is it, so the blocks are
        its ancestors. ``timeout``: seconds per answer.

        Raises:
            HistoryError: no session is open within one handshake timeout (naming the connection state), the
                bridge serves no history (an older bridge), the bridge's error (beyond the node's head, pruned
                history, another chain: naming the block), no answer within ``timeout``, the session ending
                meanwhile, or an answer that is not the blocks asked for.
        """
        out: list[Block] = []
        nxt = first
        async with self._history_lock:
            while nxt <= last:
                # A session being opened (at start, after a reset) is waited for, up to one handshake.
                deadline = time.monotonic() + min(timeout, self.handshake_timeout_s)
                while self.state != "streaming" and not self._closed and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                sock, bridge = self._sock, self.bridge
                if sock is None or self.state != "streaming" or bridge is None:
                    raise HistoryError(f"history blocks {nxt}..{last}: the bridge at {self.url} is not connected "
                                       f"(state {self.state}); asked again once the session is open")
                if bridge.history is None:
                    raise HistoryError(f"history blocks {nxt}..{last}: the bridge at {self.url} ({bridge.node}) "
                                       "serves no history (an older monmouth-reth); upgrade it")
                rid = next(self._history_ids)
                waiter: asyncio.Future[wire.HistoryBlocks] = asyncio.get_running_loop().create_future()
                self._history_waiters[rid] = waiter
                await self._send(sock, wire.HistoryRequest(rid, nxt, last, head))
                try:
                    answer = await asyncio.wait_for(waiter, timeout)
                except TimeoutError:
                    raise HistoryError(f"history request {rid} (blocks {nxt}..{last}): no answer from the bridge at "
                                       f"{self.url} within {timeout:.0f}s") from None
                finally:
                    self._history_waiters.pop(rid, None)
                if answer.error is not None:
                    raise HistoryError(f"the bridge at {self.url}: {answer.error}")
                blocks = answer.blocks or ()
                if not blocks or blocks[0].number != nxt or blocks[-1].number > last:
                    got = f"{blocks[0].number}..{blocks[-1].number}" if blocks else "none"
                    raise HistoryError(f"history request {rid}: asked for blocks {nxt}..{last}, the bridge at "
                                       f"{self.url} answered blocks {got}")
                out.extend(blocks)
                self.history_blocks += len(blocks)
                nxt = blocks[-1].number + 1
        return out

    # -------------------------------------------------------------------------------------------- status
    def status(self) -> dict[str, Any]:
        """Connection state, the bridge's ``welcome``, and counters (JSON-able)."""
        st = super().status()
        b = self.bridge
        heard = self._last_heard
        st.update(
            url=self.url,
            state=self.state,
            connected=self.state == "streaming",
            window=self.window,
            bridge=None if b is None else {"version": b.version, "chain_id": b.chain_id, "node": b.node,
                                           "heartbeat_ms": b.heartbeat_ms, "epoch": b.epoch, "history": b.history},
            last_heard_s_ago=None if heard is None else round(time.monotonic() - heard, 3),
            sessions=self.sessions,
            reconnects=self.reconnects,
            last_seq=self.last_seq,
            node_head=self.node_head,
            inflight=len(self._inflight),
            received=self.received,
            received_bytes=self.received_bytes,
            acks_sent=self.acks_sent,
            resends_acked=self.resends_acked,
            history_blocks=self.history_blocks,
            backfill=self.backfill(),
            refused=dict(self.refused),
            bridge_errors=dict(self.bridge_errors),
            last_error=self.last_error,
        )
        return st

    def backfill(self) -> dict[str, Any] | None:
        """Progress while the node is more than one block ahead of what this sidecar committed (Reth backfilling
        it, or a sidecar catching up): ``{"block", "blocks_remaining", "blocks_per_s"}`` (block numbers, blocks
        per second over the last 64 acknowledged commits), else ``None``."""
        if not self._progress or self.node_head is None:
            return None
        t1, block = self._progress[-1]
        remaining = self.node_head - block
        if remaining <= 1:
            return None
        t0, first = self._progress[0]
        rate = (block - first) / (t1 - t0) if t1 > t0 else None
        return {"block": block, "blocks_remaining": remaining,
                "blocks_per_s": None if rate is None else round(rate, 1)}

    async def aclose(self) -> None:
        """Close the socket and the ZeroMQ context."""
        self._closed = True
        self._close_session()
        self.state = "closed"
        if self._ctx is not None:
            self._ctx.destroy(linger=0)
            self._ctx = None
