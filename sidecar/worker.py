"""A background worker thread for plugins: work off the commit path (embedding, outbox delivery), woken after
each committed notification, idle-polling otherwise, backing off on errors.

Subclass :class:`BackgroundWorker` and implement :meth:`~BackgroundWorker.step`; start it in
``monmouth_startup``, call :meth:`~BackgroundWorker.wake` from ``monmouth_notification_committed``, and stop it
in ``monmouth_shutdown``.
"""

from __future__ import annotations

import logging
import threading
import time

from .backoff import Backoff

log = logging.getLogger(__name__)


class BackgroundWorker:
    """A daemon thread that calls :meth:`step` until stopped.

    Args:
        name: thread name (shown in logs).
        idle_s: seconds to wait for a :meth:`wake` when a step did no work.
        max_backoff_s: cap of the exponential backoff after a failing step, seconds.

    Attributes:
        errors: failing steps so far; ``last_error`` the latest one's text.
        stopping: set by :meth:`stop`; long steps should check it.
    """

    def __init__(self, name: str, *, idle_s: float = 1.0, max_backoff_s: float = 30.0) -> None:
        self.name = name
        self.idle_s = idle_s
        self.max_backoff_s = max_backoff_s
        self.stopping = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0
        self.last_error: str | None = None
        self.last_step_at: float | None = None

    def step(self) -> int:
        """Do one unit of work; return how many items it handled (0 means idle: wait for a wake-up).

        Exceptions are logged and counted, and the worker backs off before trying again.
        """
        raise NotImplementedError

    def start(self) -> None:
        self.stopping.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """End the idle wait now (cheap; call it after each committed notification)."""
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the thread to stop and wait up to ``timeout`` seconds for the current step to finish."""
        self.stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        backoff = Backoff(0.5, lambda: self.max_backoff_s)
        while not self.stopping.is_set():
            try:
                done = self.step()
                self.last_step_at = time.time()
                backoff.reset()
            except Exception as e:
                self.errors += 1
                self.last_error = f"{type(e).__name__}: {e}"
                delay = backoff.next()
                log.error("%s: %s; retrying in %.1fs", self.name, self.last_error, delay)
                self.stopping.wait(delay)
                continue
            if not done:
                self._wake.wait(self.idle_s)
                self._wake.clear()
