"""The disk's own price of a durable write: a bare ``os.fdatasync`` after a 4 kB append, on a given directory's
filesystem, timed ``count`` times ``pace`` seconds apart.

A sidecar acknowledges a notification only after SQLite's ``COMMIT`` (``synchronous = FULL``: the WAL is fsynced),
so on these VMs the disk, not the code, bounds the ack latency. The benches (``bench/bridge.py``, ``bench/reth.py``)
print this reference beside their ack latency, measured in the same run on the directory holding their database,
and their goal reads ``ack p99 <= fsync p99 + 2 ms``.

Each sample is one ``write(2)`` of 4,096 bytes to a file opened with ``O_APPEND`` (so the file grows and its size
must reach the journal, as a growing SQLite WAL's does) followed by ``fdatasync(2)``; the time is that of both, in
milliseconds (the write to the page cache takes microseconds). The file is removed afterwards.

Usage: ``python bench/fsync.py [DIRECTORY] [--count N] [--pace SECONDS]``; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

#: Bytes appended before each fdatasync (one page, one SQLite WAL frame of a 4 kB-page database is a bit more).
APPEND_BYTES = 4096
DEFAULT_COUNT = 200
DEFAULT_PACE_S = 0.1


def percentile(samples: list[float], q: float) -> float:
    """The ``q``-quantile (0 to 1) of ``samples``, nearest-rank (the value of a real sample, as a p99 of 100
    samples is their second largest). Raises ``ValueError`` on no samples."""
    if not samples:
        raise ValueError("percentile of no samples")
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * q // 1))  # ceil(n * q), at least 1
    return ordered[int(rank) - 1]


def summary_ms(samples_s: list[float]) -> dict[str, float]:
    """``{"p50_ms", "p99_ms", "max_ms", "mean_ms"}`` of durations in seconds, rounded to 0.01 ms."""
    return {"p50_ms": round(percentile(samples_s, 0.50) * 1000, 2),
            "p99_ms": round(percentile(samples_s, 0.99) * 1000, 2),
            "max_ms": round(max(samples_s) * 1000, 2),
            "mean_ms": round(statistics.fmean(samples_s) * 1000, 2)}


def timed_append(fd: int, block: bytes) -> float:
    """One sample: append ``block`` to ``fd`` (opened ``O_APPEND``) and ``os.fdatasync`` it; seconds taken."""
    t0 = time.perf_counter()
    os.write(fd, block)
    os.fdatasync(fd)
    return time.perf_counter() - t0


def fsync_reference(directory: str | Path, count: int = DEFAULT_COUNT, pace: float = DEFAULT_PACE_S) -> dict[str, float]:
    """Time ``count`` appends of 4 kB, each followed by ``os.fdatasync``, ``pace`` seconds apart, in a temporary file
    in ``directory`` (so on its filesystem).

    Returns:
        ``{"p50_ms", "p99_ms", "max_ms", "mean_ms", "count", "pace_s"}`` (milliseconds per append + fdatasync).

    Raises:
        ValueError: ``count`` below 1 or a negative ``pace``.
        OSError: ``directory`` is not writable.
    """
    if count < 1 or pace < 0:
        raise ValueError(f"fsync reference: count {count} must be at least 1 and pace {pace} not negative")
    block = os.urandom(APPEND_BYTES)
    samples: list[float] = []
    fd, name = tempfile.mkstemp(prefix="fsync-ref-", dir=directory)
    try:
        os.close(fd)
        fd = os.open(name, os.O_WRONLY | os.O_APPEND)
        try:
            for i in range(count):
                if i and pace:
                    time.sleep(pace)
                samples.append(timed_append(fd, block))
        finally:
            os.close(fd)
    finally:
        os.unlink(name)
    return {**summary_ms(samples), "count": count, "pace_s": pace}


def describe(ref: dict[str, float], where: str | Path) -> str:
    """One line for a bench's output."""
    return (f"fsync reference (4 kB append + fdatasync on {where}, {int(ref['count'])} x every {ref['pace_s']:g}s): "
            f"p50 {ref['p50_ms']:.2f} ms, p99 {ref['p99_ms']:.2f} ms, max {ref['max_ms']:.2f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("directory", nargs="?", default=tempfile.gettempdir(), help="a directory on the filesystem to time")
    ap.add_argument("--count", type=int, default=DEFAULT_COUNT, help="appends timed")
    ap.add_argument("--pace", type=float, default=DEFAULT_PACE_S, help="seconds between appends")
    a = ap.parse_args()
    ref = fsync_reference(a.directory, a.count, a.pace)
    print(describe(ref, a.directory))
    print(json.dumps({"fsync_p50_ms": ref["p50_ms"], "fsync_p99_ms": ref["p99_ms"], "fsync_max_ms": ref["max_ms"],
                      "count": a.count, "pace_s": a.pace, "load_avg_1m": round(os.getloadavg()[0], 2)}))


if __name__ == "__main__":
    main()
