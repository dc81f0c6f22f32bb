"""Graceful shutdown of the long-running commands (``monmouth run``, ``replay``, ``demo``, ``mcp``) on SIGTERM/SIGINT.

systemd, Docker and Kubernetes stop a service with SIGTERM, then SIGKILL once their own timeout has passed (systemd
``TimeoutStopSec``, 90 s by default; Docker ``--stop-timeout``, 10 s; Kubernetes ``terminationGracePeriodSeconds``,
30 s). On the first SIGTERM or SIGINT a command:

1. takes no new notification; the one in flight finishes: it commits and is acknowledged upstream, or (failing in
   a plugin) rolls back and is left for the next start;
2. stops accepting HTTP connections and drains the open ones (uvicorn's own shutdown, for at most half of the
   timeout);
3. stops its background tasks and plugin workers (``monmouth_shutdown``) and terminates its child processes (the
   demo's anvil);
4. exits 0.

Invariants:

- The whole stop is bounded: if it takes longer than ``engine.shutdown_timeout`` seconds, or a second signal arrives,
  the process kills its child processes and exits at once (status 1 after the timeout, 128 + the signal's number
  after a second signal). That loses nothing either: what was not committed rolls back, and the source delivers it
  again at the next start (the engine is crash-safe, see :mod:`sidecar.engine`).
- The command owns the signals: uvicorn's own handlers are not installed (:class:`sidecar.runner.Runner` runs its
  server without them), so a SIGTERM is never captured by the server and re-raised after the command's clean-up.

Three phases, one object: while the command starts (opening the database, the demo's deployment) a signal
raises :class:`Stopped` (a ``KeyboardInterrupt``, so ``except Exception`` does not swallow it) and the ``finally``
blocks clean up; inside the event loop, :meth:`Shutdown.watch` receives signals with anyio's
``open_signal_receiver`` and calls the stop callbacks on the loop's thread; once the event loop is over, the
clean-up under way (plugins' ``monmouth_shutdown``, closing the database) is the stop, and a first signal only
starts the clock.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from types import FrameType
from typing import Any, TypeVar

import anyio

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)
T = TypeVar("T")


class Stopped(KeyboardInterrupt):
    """Raised by a signal that arrives while the command runs synchronous code (before or after its event loop)."""


class Shutdown:
    """The signal handling of one command; make it with :func:`graceful`.

    Attributes:
        timeout: seconds from the first signal to the forced exit (``engine.shutdown_timeout``; settable once the
            config is read).
        signum: the first signal received, ``None`` until then.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.signum: int | None = None
        self._stops: list[Callable[[], None]] = []
        self._children: list[subprocess.Popen[Any]] = []
        self._timer: threading.Timer | None = None
        self._cleaning_up = False

    @property
    def requested(self) -> bool:
        """Whether a stop was asked for (a signal arrived)."""
        return self.signum is not None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def on_stop(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` (on the event loop's thread, without blocking) when the first signal arrives."""
        self._stops.append(fn)

    def adopt(self, proc: subprocess.Popen[Any]) -> None:
        """Kill ``proc`` if the process has to exit at once (the command still terminates it on a clean stop)."""
        self._children.append(proc)

    # ------------------------------------------------------------------------------------------------ signals
    def _first(self, signum: int) -> None:
        self.signum = signum
        log.warning("%s: stopping (at most %.0fs; send it again to exit at once)", self.signal_name, self.timeout)
        self._timer = threading.Timer(self.timeout, self.force, (1, f"not stopped within engine.shutdown_timeout = "
                                                                    f"{self.timeout:g}s"))
        self._timer.daemon = True
        self._timer.start()

    def request(self, signum: int) -> None:
        """Handle ``signum`` inside the event loop: the first call runs the stop callbacks, the second exits."""
        if self.signum is not None:
            self.force(128 + signum, f"second signal ({signal.Signals(signum).name})")
            return
        self._first(signum)
        for fn in self._stops:
            fn()

    def _sync_handler(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            self.force(128 + signum, f"second signal ({signal.Signals(signum).name})")
        self._first(signum)
        if not self._cleaning_up:
            raise Stopped(signal.Signals(signum).name)
        # after the event loop: the clean-up under way (closing plugins and the database) is the stop; let it finish

    def install(self) -> None:
        """Install the synchronous handlers (main thread only): a first signal raises :class:`Stopped`."""
        for s in SIGNALS:
            signal.signal(s, self._sync_handler)

    async def watch(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Receive SIGTERM and SIGINT inside the event loop until cancelled (run it in the command's task group).

        The synchronous handlers are put back when it ends (asyncio resets a signal to its default when its
        receiver closes).
        """
        try:
            with anyio.open_signal_receiver(*SIGNALS) as signals:
                task_status.started()
                async for signum in signals:
                    self.request(signum)
        finally:
            self._cleaning_up = True
            self.install()

    def force(self, code: int, why: str) -> None:
        """Kill the child processes and exit with ``code`` now (from any thread), without clean-up."""
        log.error("%s: exiting now with status %d", why, code)
        if code == 1:  # stuck: say where, for the operator's bug report
            with contextlib.suppress(Exception):
                faulthandler.dump_traceback(sys.stderr, all_threads=True)
        for proc in self._children:
            with contextlib.suppress(OSError):
                if os.getpgid(proc.pid) == proc.pid:  # its own process group (start_new_session): all of it, e.g.
                    os.killpg(proc.pid, signal.SIGKILL)  # npm's anvil wrapper and the anvil binary it runs
                else:
                    proc.kill()
        for pid in _child_pids():  # and any other child (e.g. a compiler the demo runs while deploying)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)

    def done(self) -> None:
        """The command stopped in time: cancel the forced exit."""
        if self._timer is not None:
            self._timer.cancel()


def _child_pids() -> list[int]:
    """This process's children, from ``/proc`` (Linux; elsewhere none)."""
    me, out = os.getpid(), []
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError), open(f"/proc/{entry.name}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == me:  # the field after the name is the parent
                        out.append(int(entry.name))
    return out


@contextlib.contextmanager
def graceful(timeout: float | None = None) -> Iterator[Shutdown]:
    """Own SIGTERM and SIGINT for the duration of a command (call it on the main thread).

    Args:
        timeout: seconds from the first signal to the forced exit (default: ``engine.shutdown_timeout``'s default;
            set ``Shutdown.timeout`` once the config is read).

    Yields the :class:`Shutdown`; on leaving, the previous handlers are restored and a pending forced exit is
    cancelled.
    """
    if timeout is None:
        from .config import EngineConfig

        timeout = EngineConfig().shutdown_timeout
    sd = Shutdown(timeout)
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    sd.install()
    try:
        yield sd
    finally:
        sd.done()
        for s, h in previous.items():
            signal.signal(s, h)


async def cancel_on_signal(shutdown: Shutdown, fn: Callable[..., Awaitable[T]], *args: Any) -> T | None:
    """Run ``fn(*args)`` until it returns (its result) or a signal cancels it (``None``): for the commands with no
    notification in flight to finish (``monmouth mcp``, ``record``); their ``finally`` blocks still run."""
    result: T | None = None
    async with anyio.create_task_group() as tg:
        await tg.start(shutdown.watch)
        shutdown.on_stop(tg.cancel_scope.cancel)
        result = await fn(*args)
        tg.cancel_scope.cancel()
    return result
