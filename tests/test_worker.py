"""The plugin background worker: woken on demand, idles otherwise, backs off on errors, stops promptly."""

from __future__ import annotations

import threading
import time

from monmouth.worker import BackgroundWorker


class Counter(BackgroundWorker):
    def __init__(self) -> None:
        super().__init__("test-worker", idle_s=5.0, max_backoff_s=0.05)
        self.pending = 0
        self.done = 0
        self.fail = 0
        self.stepped = threading.Event()

    def step(self) -> int:
        self.stepped.set()
        if self.fail:
            self.fail -= 1
            raise RuntimeError("flaky")
        n, self.pending = self.pending, 0
        self.done += n
        return n


def wait(pred, timeout=5.0):
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end
        time.sleep(0.005)


def test_wake_backoff_and_stop():
    w = Counter()
    w.start()
    wait(lambda: w.stepped.is_set())
    w.pending = 3
    t0 = time.monotonic()
    w.wake()
    wait(lambda: w.done == 3)
    assert time.monotonic() - t0 < 1.0  # woken, not the 5 s idle wait
    w.fail = 2
    w.pending = 1
    w.wake()
    wait(lambda: w.done == 4)
    assert w.errors == 2 and w.last_error == "RuntimeError: flaky"
    t0 = time.monotonic()
    w.stop()
    assert not w.running and time.monotonic() - t0 < 1.0
