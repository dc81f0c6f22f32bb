"""The event loop: source -> engine -> ack, plus the HTTP server, config hot reload and progress reporting.

Ordering guarantees: a notification is acknowledged upstream only after the engine committed it (when the
source has several waiting, up to ``engine.group_commit`` of them share one transaction, each in its own
savepoint, see :meth:`Engine.apply_many`); config reloads are applied between transactions (they take the same
lock); a notification that fails in a plugin is retried, with backoff, until it succeeds (an operator can
disable the failing plugin in ``config.toml`` meanwhile: the reload is applied and the notification retried at
once). While it fails, ``/status`` ``stuck``, ``/ready`` and the metrics say so (:mod:`sidecar.stall`).

Faults pause ingestion instead of ending the process (``docs/faults.md``): a fault of the database's environment
(disk full, read-only, I/O error) retries the same notifications with backoff until they commit; a reorg deeper
than the undo data held restarts the source with backoff until the node's chain connects again. While paused,
``/ready`` answers 503 with the problem and the operator's action, ``monmouth_ingestion_paused`` is 1, and the
engine's cursor has not moved (nothing is half-applied).

Stopping (:meth:`Runner.request_stop`, on SIGTERM/SIGINT, see :mod:`sidecar.shutdown`): the batch in flight
finishes (commits and is acknowledged, or rolls back and is not retried), no new notification is taken, the HTTP
server drains, then the background tasks are cancelled.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import apsw

from .app import App, EngineView
from .backends import DRIVER_ERRORS, connection_lost
from .backoff import Backoff
from .catchup import CatchUp
from .engine import ApplyResult
from .errors import (
    CodecError,
    ContinuityError,
    MonmouthError,
    PluginError,
    ReorgTooDeepError,
    SourceError,
    StorageError,
)
from .sdnotify import Notifier
from .shutdown import Shutdown
from .sources.base import Delivery, Source
from .stall import StallTracker
from .store import Database, describe_fault, environment_fault

log = logging.getLogger(__name__)


def tune_gc() -> None:
    """Freeze start-up objects and raise the young-generation threshold of the cyclic GC.

    Decoding a 200-transaction block allocates ~1,000 short-lived, acyclic objects (freed by reference
    counting); with CPython's default threshold (700) the collector scans them over and over, which costs about
    a third of decode time. Long-lived start-up objects are moved out of its way with ``gc.freeze()``.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


class Runner:
    """Runs one sidecar.

    Args:
        app: the opened sidecar (:func:`sidecar.app.open_app`).
        source: the source to follow.
        serve_http: start the HTTP server (``[http]``).
        watch_config: hot-reload ``config.toml`` with watchfiles.
    """

    def __init__(self, app: App, source: Source, *, serve_http: bool | None = None, watch_config: bool = True) -> None:
        self.app = app
        self.source = source
        self.serve_http = app.settings.http.enabled if serve_http is None else serve_http
        self.watch_config = watch_config and app.config_path is not None
        self.lock = anyio.Lock()
        self.last_error: str | None = None
        self.started_at = time.time()
        self.blocks_done = 0
        self.done = False
        self.http_port: int | None = None
        self._rate = 0.0
        # The engine's own worker thread: HTTP requests (FastAPI's sync endpoints use anyio's default limiter) must
        # never make a notification wait for a free thread.
        self._engine_limiter = anyio.CapacityLimiter(1)
        self._wal_pages = 0
        #: Why ingestion is paused (``{"title", "detail", "action"}``), ``None`` while it runs.
        self.paused: dict[str, str] | None = None
        self.stopping = False
        self._ingest_scope: anyio.CancelScope | None = None
        self._stop_event: anyio.Event | None = None
        self._http_server: Any = None
        self._http_done: anyio.Event | None = None
        self.stall = StallTracker(app.metrics.registry)  # a notification that keeps failing (sidecar/stall.py)
        self.catchup = CatchUp(app, source, self.lock, self._engine_limiter)  # late plugins (sidecar/catchup.py)
        self.systemd = Notifier.from_environ()  # under a Type=notify unit (sidecar/sdnotify.py)

    # ------------------------------------------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        st = self.app.status(self.source)
        st["last_error"] = self.last_error
        st["stuck"] = self.stall.current.to_json() if self.stall.current else None
        st["progress"] = self.catchup.status()  # each plugin's indexed range (sidecar/catchup.py)
        st["blocks_per_s"] = round(self._rate, 1)
        m = self.app.metrics
        if st["lag"] is not None:
            m.lag.set(st["lag"])
        m.source_connected.labels(self.source.kind).set(0 if getattr(self.source, "connected", True) is False else 1)
        m.undo_window.set(self.app.settings.engine.undo_window)
        return st

    def ready(self) -> tuple[bool, str]:
        if self.paused is not None:
            p = self.paused
            return False, f"ingestion paused, {p['title']}: {p['detail']}. {p['action']}"
        if getattr(self.source, "behind", 0):
            return False, f"the node is {self.source.behind} blocks behind the indexed head; waiting for it"  # type: ignore[attr-defined]
        if getattr(self.source, "connected", True) is False:
            return False, f"source disconnected: {getattr(self.source, 'last_error', None)}"
        if self.stall.current is not None:
            return False, self.stall.current.reason()
        st = self.app.status(self.source)
        if st["lag"] is None:
            return False, "source head unknown"
        if st["lag"] > self.app.settings.http.ready_lag:
            return False, f"lagging {st['lag']} blocks behind the source (ready_lag {self.app.settings.http.ready_lag})"
        return True, "caught up"

    # ------------------------------------------------------------------------------------------------ main
    def request_stop(self) -> None:
        """Stop gracefully (call on the event loop's thread): the batch in flight commits and is acknowledged or
        rolls back, no new notification is taken, then HTTP drains and :meth:`run` returns. Idempotent."""
        if not self.stopping and self.systemd is not None:
            self.systemd.notify("STOPPING=1", "STATUS=stopping")
        self.stopping = True
        self.stall.retry_now()
        if self._stop_event is not None:
            self._stop_event.set()
        if self._ingest_scope is not None:
            self._ingest_scope.cancel()

    async def run(self) -> None:
        """Run until the source ends (replay), :meth:`request_stop` is called, or the task is cancelled.

        Raises:
            SourceError: the source failed for good (damaged replay file, protocol mismatch).
            ReorgTooDeepError: a reorg reached below the undo data held.
            ContinuityError: a finite source delivered a notification that does not connect.
        """
        error: Exception | None = None
        if self.serve_http:
            from .auth import check_bind
            from .preflight import check_listen

            check_bind(self.app.settings)  # refuse a public bind without auth before starting anything
            check_listen(self.app.settings)  # TLS files and the port, named in one line, not a traceback later
        tune_gc()
        self._stop_event = anyio.Event()
        self._ingest_scope = anyio.CancelScope()
        if self.stopping:
            self._ingest_scope.cancel()
        async with anyio.create_task_group() as tg:
            if self.serve_http:
                await tg.start(self._serve_http)
            if self.watch_config:
                tg.start_soon(self._watch_config)
            tg.start_soon(self._progress)
            if self.systemd is not None:
                tg.start_soon(self._tell_systemd, self.systemd)
            async with self.lock:
                await anyio.to_thread.run_sync(self.catchup.sync, limiter=self._engine_limiter)
            tg.start_soon(self.catchup.run)
            if self.app.settings.storage.checkpoint_pages > 0 and self.app.db.backend == "sqlite":
                # Checkpoints move off the engine's commits onto a background thread. The WAL hook replaces SQLite's
                # automatic checkpoint (itself a WAL hook) on the engine's connection and only records the size.
                self.app.engine.conn.set_wal_hook(self._on_wal_commit)
                tg.start_soon(self._checkpoint_wal, self.app.settings.storage.checkpoint_pages)
            try:
                with self._ingest_scope:
                    await self._ingest()
                if not self.stopping:
                    await self.catchup.finish()  # a finite source (replay): late plugins catch up before returning
            except Exception as e:  # re-raised below, unwrapped from the task group's ExceptionGroup
                error = e
            finally:
                self.done = True
                if self.stopping:
                    with anyio.CancelScope(shield=True):
                        await self._drain_http()
                tg.cancel_scope.cancel()
        if error is not None:
            raise error

    async def _ingest(self) -> None:
        view = EngineView(self.app.engine)
        backoff = Backoff(0.5, lambda: self.app.settings.source.max_backoff)
        while True:
            try:
                async for delivery in self.source.stream(view):
                    more = self.source.take_ready(self.app.settings.engine.group_commit - 1)
                    # A stop waits for the batch in flight: it commits and is acknowledged, or rolls back.
                    with anyio.CancelScope(shield=True):
                        await self._handle([delivery, *more])
                    if self.stopping:
                        return
                    backoff.reset()
                return
            except ContinuityError as e:
                self.last_error = str(e)
                if self.source.kind == "replay":
                    raise
                delay = backoff.next()
                log.error("%s; restarting the %s source from the engine head in %.1fs", e, self.source.kind, delay)
                await anyio.sleep(delay)
            except ReorgTooDeepError as e:
                if self.source.kind == "replay":
                    raise
                self.last_error = str(e)
                self._pause("reorg deeper than the undo data held", str(e),
                            "Ingestion resumes by itself if the node returns to the indexed chain; otherwise stop the "
                            "sidecar and restore a backup older than the fork, or re-index (docs/faults.md)")
                delay = backoff.next()
                log.error("%s; ingestion paused, asking the node again in %.1fs", e, delay)
                await anyio.sleep(delay)
            except SourceError as e:
                self.last_error = str(e)
                self.app.metrics.errors.labels("source").inc()
                log.error("%s", e)
                raise

    def _pause(self, title: str, detail: str, action: str) -> None:
        if self.paused is None:
            self.app.metrics.ingestion_paused.set(1)
        self.paused = {"title": title, "detail": detail, "action": action}

    def _resume(self) -> None:
        if self.paused is not None:
            log.warning("ingestion resumed (was paused: %s)", self.paused["title"])
            self.paused = None
            self.app.metrics.ingestion_paused.set(0)

    async def _reconnect(self) -> None:
        """A new engine connection after it was dropped or broke (the old one may never work again)."""
        def reconnect() -> None:
            self.app.engine.reconnect()
            if self.app.settings.storage.checkpoint_pages > 0 and self.app.db.backend == "sqlite":
                self.app.engine.conn.set_wal_hook(self._on_wal_commit)

        async with self.lock:
            try:
                await anyio.to_thread.run_sync(reconnect, limiter=self._engine_limiter)
                log.warning("database: reconnected to %s", self.app.db.describe())
            except (apsw.Error, StorageError) as e:
                log.error("database: cannot reconnect to %s yet: %s", self.app.db.describe(), describe_fault(e))

    def _apply(self, batch: list[Delivery]) -> tuple[list[ApplyResult], Exception | None]:
        """On the engine's worker thread, or the event loop's for a small notification (:meth:`_inline`): decode (a
        source may defer it to the first access of ``d.notification``), apply and commit, and call
        ``monmouth_notification_committed`` (documented to run on the thread that applied).
        """
        results, error = self.app.engine.apply_many(self._until_stopped(batch))
        for d, res in zip(batch, results, strict=False):
            if res.applied:
                self.app.host.committed(d.notification, res.head)
        return results, error

    def _inline(self, batch: list[Delivery]) -> bool:
        """Whether ``batch`` is applied on the event loop's thread rather than the engine's worker thread: one
        notification of known size within ``engine.inline_apply_bytes``, on SQLite (a PostgreSQL round trip can wait
        on a lock or the network, which must not hold up the HTTP API)."""
        limit = self.app.settings.engine.inline_apply_bytes
        return len(batch) == 1 and 0 < batch[0].size_bytes <= limit and self.app.db.backend == "sqlite"

    def _until_stopped(self, batch: list[Delivery]) -> Iterator[tuple[Any, Any]]:
        # Read lazily by the group commit: once a stop is requested no further notification of the batch starts
        # (the one being applied finishes); the rest is not acknowledged, so the source delivers it again later.
        for d in batch:
            if self.stopping:
                return
            yield d.notification, d.token

    @staticmethod
    def _release(done: list[Delivery]) -> None:
        for d in done:
            d.release()

    async def _handle(self, batch: list[Delivery]) -> None:
        """Apply ``batch`` (in order, group-committed), acknowledging each delivery once committed."""
        engine = self.app.engine
        backoff = Backoff(0.5, lambda: self.app.settings.engine.retry_max_backoff)
        head = None
        while batch:
            inline = self._inline(batch)
            async with self.lock:
                try:
                    if inline:  # between arrival and ack only decode, apply and COMMIT (engine.inline_apply_bytes)
                        results, error = self._apply(batch)
                    else:
                        results, error = await anyio.to_thread.run_sync(self._apply, batch,
                                                                        limiter=self._engine_limiter)
                except Exception as e:  # the COMMIT failed, or the database rolled back: nothing of it written
                    if not (isinstance(e, DRIVER_ERRORS) or connection_lost(e)):
                        raise
                    results, error = [], e
            done, batch = batch[:len(results)], batch[len(results):]
            for d, res in zip(done, results, strict=True):
                self.blocks_done += res.committed
                await self.source.ack(d, res.head)
                head = res.head
            if done and inline:
                self._release(done)  # a small notification's objects: nothing worth a thread
            elif done:
                # Freeing a large block's objects is real work (~0.2 ms for 200 transactions): done on the engine's
                # thread rather than the event loop, and after the acks went out, so that at a block every few
                # seconds it is off the path from a notification's arrival to its ack.
                await anyio.to_thread.run_sync(self._release, done, limiter=self._engine_limiter)
            if error is None:
                self.last_error = None
                self._resume()
                self.stall.cleared()
                break  # all of the batch applied, or a stop cut it short
            self.last_error = str(error)
            fault = environment_fault(error) or connection_lost(error)
            if fault is not None or isinstance(error, DRIVER_ERRORS):
                self.app.metrics.errors.labels("storage").inc()
                detail = f"{self.app.db.describe()}: {describe_fault(fault or error)}"
                self._pause("the database cannot be written", detail, "Ingestion resumes by itself once the fault "
                            "clears (free disk space, remount read-write, fix permissions); nothing was half-applied")
                delay = backoff.next()
                log.error("database fault: %s; nothing applied, retrying in %.1fs", detail, delay)
                await anyio.sleep(delay)
                if isinstance(fault, apsw.ConnectionClosedError | apsw.IOError) or connection_lost(fault):
                    await self._reconnect()
                continue
            if isinstance(error, CodecError):
                # A deferred body that does not decode: nothing of it was applied, the cursor did not move. The
                # source counts it, reports it upstream and re-delivers from there; the rest of the batch is dropped.
                log.error("%s; refused, nothing applied", error)
                await self.source.refuse(batch[0], error)
                return
            if not isinstance(error, PluginError):
                raise error
            if self.stopping:
                log.error("%s; the notification was rolled back and is left for the next start", error)
                return
            delay = backoff.next()
            if self.stall.failed(error, delay):  # the first failure with its traceback, later ones one line
                log.error("%s; the notification was rolled back and will be retried in %.1fs", error, delay,
                          exc_info=error)
            else:
                log.error("%s; attempt %d failed, retrying in %.1fs", error, self.stall.attempts_so_far, delay)
            await self.stall.wait(delay, self.source.probe_head)  # a config reload ends it at once, a stop cancels it
        # What the sidecar treats as finalized: the source's finalized block, never within engine.finality_depth
        # blocks of the head (so a node calling a fake chain finalized cannot take away that much undo data).
        fin, depth = self.source.finalized, self.app.settings.engine.finality_depth
        if (fin is not None and head is not None and min(fin, head.number - depth) >= 0
                and (engine.finalized is None or min(fin, head.number - depth) > engine.finalized)):
            async with self.lock:
                try:
                    await anyio.to_thread.run_sync(engine.set_finalized, min(fin, head.number - depth),
                                                   limiter=self._engine_limiter)
                except (PluginError, apsw.Error) as e:
                    log.error("%s (finalized %d not recorded; will retry)", e, fin)

    # ------------------------------------------------------------------------------------------------ helpers
    async def reload_config(self) -> bool:
        """Re-read config.toml and apply it between notifications (:func:`apply_reload`, under the runner's lock;
        then plugins it enabled start catching up). Returns False if the new file is invalid."""
        async with self.lock:
            if not await apply_reload(self.app):
                return False
            try:  # plugins enabled by this reload start catching up (sidecar/catchup.py)
                await anyio.to_thread.run_sync(self.catchup.sync, limiter=self._engine_limiter)
            except Exception as e:
                log.error("config reload of %s applied, but late plugins could not be set up: %s",
                          self.app.config_path, e if isinstance(e, MonmouthError) else f"{type(e).__name__}: {e}")
        self.stall.retry_now()  # a failing notification is retried at once under the new config
        return True

    async def _watch_config(self) -> None:
        await watch_config(Path(self.app.config_path), self.reload_config,  # type: ignore[arg-type]
                           lambda: self.app.config_stamp)

    async def _progress(self) -> None:
        interval = self.app.settings.engine.progress_interval
        last_t, last_blocks = time.monotonic(), self.blocks_done
        while True:
            await anyio.sleep(interval)
            now = time.monotonic()
            self._rate = (self.blocks_done - last_blocks) / (now - last_t)
            last_t, last_blocks = now, self.blocks_done
            head = self.app.engine.head
            sh = self.source.source_head
            total = getattr(self.source, "total_frames", None)
            if total:
                done = getattr(self.source, "frames_delivered", 0)
                log.info("replay: %d of %d notifications, %d remaining, %.1f blocks/s", done, total, total - done,
                         self._rate)
            elif head is not None and sh is not None and sh - head.number > 0:
                remaining = sh - head.number
                eta = remaining / self._rate if self._rate > 0 else float("inf")
                log.info("catching up: head %d, source head %d, %d blocks remaining, %.1f blocks/s, eta %.0fs",
                         head.number, sh, remaining, self._rate, eta)

    async def _tell_systemd(self, systemd: Notifier) -> None:
        """``READY=1`` the first time :meth:`ready` holds, ``STATUS=`` when its reason changes, ``WATCHDOG=1`` every
        half watchdog interval (at most every second) while the event loop runs (:mod:`sidecar.sdnotify`)."""
        period = min(systemd.watchdog / 2, 1.0) if systemd.watchdog else 1.0
        told_ready, last_status = False, ""
        try:
            while not self.stopping:
                ok, reason = self.ready()
                head = self.app.engine.head
                status = f"STATUS={'ready' if ok else 'not ready'}: {reason}; head {head.number if head else 'none'}"
                fields = ["READY=1"] if ok and not told_ready else []
                if status != last_status:
                    fields.append(status)
                if systemd.watchdog:
                    fields.append("WATCHDOG=1")
                if fields and systemd.notify(*fields):
                    told_ready, last_status = told_ready or ok, status
                await anyio.sleep(period)
        finally:
            systemd.close()

    def _on_wal_commit(self, conn: apsw.Connection, name: str, pages: int) -> int:
        # On the engine's thread, after each commit: only note the WAL's size (pages).
        self._wal_pages = pages
        return apsw.SQLITE_OK

    async def _checkpoint_wal(self, threshold: int) -> None:
        db, m = self.app.db, self.app.metrics
        assert isinstance(db, Database)  # started on SQLite only
        limiter = anyio.CapacityLimiter(1)  # its own thread: never waits behind the engine or HTTP handlers
        while True:
            await anyio.sleep(0.1)
            if self._wal_pages < threshold:
                continue
            self._wal_pages = 0
            t0 = time.perf_counter()
            try:
                frames, done = await anyio.to_thread.run_sync(db.checkpoint_wal, limiter=limiter)
            except apsw.Error as e:
                log.warning("WAL checkpoint failed (will retry): %s", e)
                continue
            m.wal_checkpoint_seconds.observe(time.perf_counter() - t0)
            m.wal_pending_frames.set(max(frames - done, 0))

    async def _serve_http(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        from .api import create_api

        http = self.app.settings.http
        api = create_api(self.app, self)
        server = http_server(self.app, api)
        self._http_server, self._http_done = server, anyio.Event()
        try:
            # The app's lifespan (the MCP session manager) runs here, inside the runner's task group, not in uvicorn.
            async with api.router.lifespan_context(api), anyio.create_task_group() as tg:
                tg.start_soon(server.serve)
                self.http_port = await listening(server, http)
                log.info("http: serving on %s://%s:%s", "https" if http.tls_cert else "http", http.host,
                         self.http_port)
                task_status.started()
        finally:
            self._http_done.set()

    async def _drain_http(self) -> None:
        """Stop accepting connections and let the open ones finish (uvicorn's shutdown, bounded by its
        ``timeout_graceful_shutdown``)."""
        if self._http_server is None or self._http_done is None:
            return
        self._http_server.should_exit = True
        with anyio.move_on_after(self.app.settings.engine.shutdown_timeout):
            await self._http_done.wait()


async def apply_reload(app: App) -> bool:
    """Re-read ``app``'s config file and apply it (:meth:`App.reload`, in a worker thread). Returns False if it is
    invalid: the last good config keeps running, the reason is logged and ``monmouth_config_reloads_total
    {outcome="rejected"}`` counted; else ``{outcome="applied"}``. Never raises for the file's content."""
    try:
        await anyio.to_thread.run_sync(app.reload)
    except Exception as e:  # any file content, any failure: the running config stays (never a crash)
        app.metrics.config_reloads.labels("rejected").inc()
        app.metrics.errors.labels("config").inc()
        log.error("config reload of %s rejected, keeping the last good config: %s", app.config_path,
                  e if isinstance(e, MonmouthError) else f"{type(e).__name__}: {e}")
        return False
    app.metrics.config_reloads.labels("applied").inc()
    return True


async def watch_config(path: Path, on_change: Callable[[], Awaitable[object]],
                       last_read: Callable[[], object] | None = None) -> None:
    """Call ``on_change`` after each change of the file ``path`` (watchfiles, 200 ms debounce; its directory is
    watched, so an editor's replace-by-rename is seen), until cancelled.

    A write between the app reading its config and the watch being armed raises no event. So once armed (at its
    first wake-up, within a second), the file's :func:`sidecar.app.file_stamp` is compared with ``last_read()``, the
    stamp of the content the app last read, and a difference counts as a change."""
    import watchfiles

    from .app import file_stamp

    path = path.resolve()
    armed = False
    async for changes in watchfiles.awatch(path.parent, debounce=200, step=50, rust_timeout=1000,
                                           yield_on_timeout=True,
                                           watch_filter=lambda _c, p: Path(p).name == path.name):
        missed = not armed and last_read is not None and file_stamp(path) != last_read()
        armed = True
        if (changes or missed) and path.exists():
            log.info("config: %s changed%s; reloading", path, "" if changes else " while the watch started")
            await on_change()


def http_server(app: App, api: Any) -> Any:
    """A server (:func:`_server`) for ``api`` on ``[http]`` (TLS, graceful shutdown within half of
    ``engine.shutdown_timeout``), counting requests into the app's metrics. Its lifespan is off: the caller runs
    ``api.router.lifespan_context``."""
    import uvicorn

    from .httpmetrics import RequestMetrics

    http = app.settings.http
    return _server(uvicorn.Config(RequestMetrics(api, app.metrics), host=http.host, port=http.port,
                                  log_level="warning", lifespan="off",
                                  ssl_certfile=http.tls_cert or None, ssl_keyfile=http.tls_key or None,
                                  timeout_graceful_shutdown=max(int(app.settings.engine.shutdown_timeout / 2), 1)))


async def listening(server: Any, http: Any) -> int:
    """Wait until ``server`` (serving, started in a task) listens; its port.

    Raises:
        SourceError: it stopped before listening (``http.host``:``http.port`` refused).
    """
    while not server.started:
        if server.should_exit:
            raise SourceError(f"http: could not serve on {http.host}:{http.port}")
        await anyio.sleep(0.02)
    return int(server.servers[0].sockets[0].getsockname()[1])


def _server(config: Any) -> Any:
    """A ``uvicorn.Server`` that installs no signal handlers: the command owns SIGTERM and SIGINT
    (:mod:`sidecar.shutdown`), where uvicorn's would capture them while serving and re-raise them afterwards."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return Server(config)


async def run_sidecar(app: App, source: Source, *, shutdown: Shutdown | None = None, **kw: Any) -> Runner:
    """Run a :class:`Runner` (keywords go to it) and close the source; with ``shutdown``, SIGTERM and SIGINT stop
    it gracefully (:meth:`Runner.request_stop`)."""
    runner = Runner(app, source, **kw)
    error: Exception | None = None
    try:
        async with anyio.create_task_group() as tg:
            if shutdown is not None:
                await tg.start(shutdown.watch)
                shutdown.on_stop(runner.request_stop)
            try:
                await runner.run()
            except Exception as e:  # re-raised below, unwrapped from the task group's ExceptionGroup
                error = e
            finally:
                tg.cancel_scope.cancel()
    finally:
        await runner.catchup.aclose()
        await source.aclose()
    if error is not None:
        raise error
    return runner
