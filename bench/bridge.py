"""Bridge transport benchmark: ``bridge-replay`` → ZeroMQ → ``exex`` source → runner → engine (no-op plugin) → ack.

Blocks are mainnet-shaped (200 transactions each, taken in rotation from the real blocks in
``../shared/data/mainnet/`` and re-chained), one ``ChainCommitted`` per block. The sidecar side is the real
one: :class:`monmouth.runner.Runner` with an ``exex`` source, so each notification's body is decoded on the
engine's worker thread, notifications already received are group-committed (``engine.group_commit``), and each
is acknowledged only after its ``COMMIT`` (``synchronous = FULL``: the WAL is fsynced).

Phases:

1. **throughput**: the bridge serves ``--count`` notifications as fast as the credit window (64) allows;
   notifications/s and MB/s are acked notifications and payload bytes over the time from the first send to
   the last ack, as measured by the bridge;
2. **transport only**: the same, but the sidecar decodes and acks on its event loop, without the engine (the
   transport's own ceiling);
3. **latency**: ``--latency-count`` notifications at ``--rate`` per second (1 by default, a mainnet-like
   pace) through the engine; ack latency is the time from a notification's arrival on the sidecar's source to
   its ack being sent (the goal's figure, as in ``bench/reth.py``), and from the bridge's send to its receipt of
   the ack (p50, p99), so it includes decoding and the engine's SQLite commit and fsync;
4. **transport latency**: the same without the engine (what the transport itself adds).

In phase 3 the disk's own price of a durable write is timed in the same session (``AckProbe.watch``): each
batch is drawn at random, 1 in 2, to time a bare ``fdatasync`` of a 4 kB append (``bench/fsync.py``'s sample) in the
database's directory as its ``COMMIT`` starts, instead of being an ack sample; the sidecar's ack latency of the
other notifications (arrival on the source to ack sent) is printed beside it with the goal ``ack p99 <= fsync p99 +
2 ms``, exactly as ``bench/reth.py`` reads it. The bridge's own view (send to ack received, every notification,
reference batches included) and a paced fsync (``--fsync-count`` samples ``--fsync-pace`` seconds apart, after the
phase) are printed too.

Prints a line per phase; the last line is JSON with ``notifications_per_s``, ``mb_per_s``, ``ack_p50_ms``,
``ack_p99_ms`` (the sidecar's view), ``fsync_p50_ms`` and ``fsync_p99_ms`` (the reference at COMMIT time),
``ack_goal_met``, ``bridge_ack_*``, ``fsync_uniform_*`` (plus the other figures). Usage: ``python bench/bridge.py [--count N] [--latency-count N]``.
Needs ``bridge/target/release/bridge-replay`` (built with ``cargo build --release`` in ``bridge/`` if missing; or
set ``MONMOUTH_BRIDGE_REPLAY`` to a built one).
Set ``MONMOUTH_BENCH_SYNCHRONOUS=NORMAL`` to see what the per-commit fsync costs. Before each phase the page cache
is flushed (``os.sync()``) and the disk left quiet for 2 s, so that no phase pays for an earlier one's writes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from fsync import (  # noqa: E402  # bench/fsync.py
    APPEND_BYTES,
    DEFAULT_COUNT,
    DEFAULT_PACE_S,
    describe,
    fsync_reference,
    summary_ms,
    timed_append,
)

from monmouth import hookimpl  # noqa: E402
from monmouth.app import App, open_app  # noqa: E402
from monmouth.replayfile import ReplayWriter  # noqa: E402
from monmouth.runner import Runner, tune_gc  # noqa: E402
from monmouth.sources.base import Delivery  # noqa: E402
from monmouth.sources.exex import ExExSource  # noqa: E402
from monmouth.types import ChainCommitted, ChainReverted  # noqa: E402
from tests.chains import chain, load_mainnet_blocks, mainnet_shaped  # noqa: E402

#: ``$MONMOUTH_BRIDGE_REPLAY`` overrides it (a ``bridge-replay`` built elsewhere).
BINARY = Path(os.environ.get("MONMOUTH_BRIDGE_REPLAY") or ROOT / "bridge" / "target" / "release" / "bridge-replay")


class NoopPlugin:
    """Implements the per-block hooks and does nothing (hook dispatch is part of the cost measured)."""

    @hookimpl
    def monmouth_block_applied(self, conn: Any, block: Any, notification: Any) -> None:
        return None

    @hookimpl
    def monmouth_block_reverted(self, conn: Any, block: Any, notification: Any) -> None:
        return None


def make_app(directory: Path, extra_toml: str = "") -> App:
    """A sidecar with only the no-op plugin enabled (plus what ``extra_toml`` adds to its ``config.toml``), its
    database in ``directory``."""
    cfg = directory / "config.toml"
    cfg.write_text(f"""
[storage]
path = "db.sqlite"
synchronous = "{os.environ.get("MONMOUTH_BENCH_SYNCHRONOUS", "FULL")}"
[http]
enabled = false
[plugins.noop]
enabled = true
{extra_toml}""")
    return open_app(cfg, extra_plugins={"noop": NoopPlugin()})


def build_file(path: Path, count: int, txs: int) -> int:
    templates = load_mainnet_blocks()
    size = 0
    with ReplayWriter(path) as w:
        for i, b in enumerate(mainnet_shaped(templates, count, txs_per_block=txs), 1):
            size += w.write(ChainCommitted(chain([b])), i) or 0
    return path.stat().st_size


def settle() -> None:
    """Flush the page cache's dirty data and let the disk go quiet before a timed phase: what an earlier phase
    wrote (databases, replay files), written back during the next one, makes its fsyncs wait (ext4 flushes
    ordered data at journal commits) and would be measured as ack latency."""
    os.sync()
    time.sleep(2)


def ensure_binary() -> Path:
    if not BINARY.exists():
        subprocess.run(["cargo", "build", "--release", "--bin", "bridge-replay"], cwd=ROOT / "bridge", check=True)
    return BINARY


class AckProbe:
    """Wraps a source's ``ack``: for each acknowledged notification, ``(ack time, arrival-to-ack seconds, tip block
    number, blocks, transactions)`` in :attr:`records`, or in :attr:`reference_records` when its batch carried a
    disk reference sample (:meth:`watch`); :attr:`reached` is set once a tip reaches :attr:`target` or
    :attr:`records` holds :attr:`count`."""

    def __init__(self, source: Any, target: int | None = None, count: int | None = None) -> None:
        self.records: list[tuple[float, float, int, int, int]] = []
        #: Notifications whose batch paid a reference fdatasync inside its COMMIT: not ack samples.
        self.reference_records: list[tuple[float, float, int, int, int]] = []
        #: Per acknowledged notification, the three legs of its arrival-to-ack time, seconds: (arrival to the
        #: engine's thread starting its batch, the batch's decode + apply + COMMIT on that thread, the thread's end
        #: to the ack being sent on the event loop). Filled when :meth:`watch` wrapped the runner.
        self.legs: list[tuple[float, float, float]] = []
        self._marks: dict[int, tuple[float, float]] = {}
        #: Per acknowledged notification, from its ``COMMIT`` starting (SQLite's commit hook) to the apply's end:
        #: the WAL write and fsync, seconds; the end of the second leg.
        self.commit_s: list[float] = []
        self._commits: dict[int, float] = {}
        #: Per ack sample, the engine thread's time over that COMMIT (Linux schedstat), seconds: (on a CPU, waiting
        #: for one in the run queue); the rest of the COMMIT's wall time the thread was blocked (the disk).
        self.commit_sched_s: list[tuple[float, float]] = []
        self._scheds: dict[int, tuple[float, float]] = {}
        #: Bare 4 kB append + fdatasync samples taken at the start of a COMMIT (:meth:`watch`), seconds.
        self.reference_fsync_s: list[float] = []
        self._reference: set[int] = set()
        self.target = target
        self.count = count
        self.reached = asyncio.Event()
        inner = source.ack

        async def ack(d: Delivery, head: Any) -> None:
            now = time.monotonic()
            n = d.notification
            if not isinstance(n, ChainReverted):
                blocks = n.new.blocks
                record = (now, now - d.received_at, blocks[-1].number, len(blocks),
                          sum(len(b.transactions) for b in blocks))
                start, end = self._marks.pop(id(d), (now, now))
                commit = self._commits.pop(id(d), 0.0)
                sched = self._scheds.pop(id(d), (0.0, 0.0))
                if id(d) in self._reference:
                    self._reference.discard(id(d))
                    self.reference_records.append(record)
                else:
                    self.records.append(record)
                    self.legs.append((start - d.received_at, end - start, now - end))
                    self.commit_s.append(commit)
                    self.commit_sched_s.append(sched)
                if ((self.target is not None and blocks[-1].number >= self.target)
                        or (self.count is not None and len(self.records) >= self.count)):
                    self.reached.set()
            await inner(d, head)

        source.ack = ack

    def watch(self, runner: Runner, reference_dir: Path | None = None, seed: int = 13) -> None:
        """Wrap ``runner._apply`` (run on the engine's thread) to time the legs of each notification's path.

        With ``reference_dir``, each batch is, with probability 1/2 (a seeded draw, so that no periodic behaviour of
        the node, such as Reth persisting every few blocks, lines up with the choice), a **reference batch**: when
        its ``COMMIT`` starts (SQLite's commit hook, before the WAL write), a bare 4 kB append + ``fdatasync``
        (:func:`fsync.timed_append`) is timed in ``reference_dir`` first, into :attr:`reference_fsync_s`. That is
        the disk's price of a durable write at the very moment our COMMIT writes, on the same disk, in the same
        session, with whatever the node does at that moment (Reth writing the block beside it). A reference batch's
        notifications pay both, so they go to :attr:`reference_records` and not into the ack samples."""
        inner = runner._apply
        commits: list[float] = []
        draw = random.Random(seed)
        block = os.urandom(APPEND_BYTES)
        fd = (os.open(reference_dir / "fsync-at-commit", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
              if reference_dir is not None else None)
        reference = [False]
        sched: list[tuple[int, int]] = []

        def on_commit() -> bool:  # SQLite's commit hook: the COMMIT starts (before its WAL write and fsync)
            if reference[0] and fd is not None:
                reference[0] = False  # one sample per batch
                self.reference_fsync_s.append(timed_append(fd, block))
            commits.append(time.monotonic())
            sched.append(thread_schedstat())
            return False  # go on with the commit

        runner.app.engine.conn.set_commit_hook(on_commit)

        def apply(batch: list[Delivery]) -> Any:
            commits.clear()
            sched.clear()
            reference[0] = fd is not None and draw.random() < 0.5
            if reference[0]:
                self._reference.update(id(d) for d in batch)
            start = time.monotonic()
            try:
                return inner(batch)
            finally:
                end = time.monotonic()
                run, wait = thread_schedstat()
                reference[0] = False
                for d in batch:
                    if sched:
                        self._scheds[id(d)] = ((run - sched[-1][0]) / 1e9, (wait - sched[-1][1]) / 1e9)
                    self._marks[id(d)] = (start, end)
                    self._commits[id(d)] = end - commits[-1] if commits else 0.0

        runner._apply = apply  # type: ignore[method-assign]


def thread_schedstat() -> tuple[int, int]:
    """This thread's nanoseconds on a CPU and waiting in a run queue (``/proc/thread-self/schedstat``; zeros where
    the kernel does not keep it)."""
    try:
        run, wait = Path("/proc/thread-self/schedstat").read_text().split()[:2]
    except (OSError, ValueError):
        return 0, 0
    return int(run), int(wait)


async def run_phase(file: Path, endpoint: str, *, app: App | None, window: int, rate: float,
                    probe_dir: Path | None = None) -> tuple[dict[str, Any], AckProbe | None]:
    """Serve ``file`` with ``bridge-replay`` and consume it: through the sidecar's own :class:`Runner` (decode on
    the engine's thread, apply, commit, ack) when ``app`` is given, else decode and ack only. Returns the bridge's
    summary line, and with ``probe_dir`` (and ``app``) an :class:`AckProbe` that timed every notification and took
    the disk reference at COMMIT time in ``probe_dir`` (:meth:`AckProbe.watch`)."""
    args = [str(ensure_binary()), "--file", str(file), "--endpoint", endpoint, "--exit-when-acked",
            "--log-level", "warn"]
    if rate:
        args += ["--rate", str(rate)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    json.loads(proc.stdout.readline())
    src = ExExSource(endpoint, window=window)

    class NullView:
        head_ref = None

        def head(self) -> Any:
            return self.head_ref

        def canonical(self, number: int) -> None:
            return None

        def source_token(self) -> None:
            return None

    async def transport_only() -> None:
        view = NullView()
        async for d in src.stream(view):  # type: ignore[arg-type]
            head = d.notification.new.tip.ref  # type: ignore[union-attr]  # decodes the body, on this loop
            view.head_ref = head
            await src.ack(d, head)

    probe = None
    if app is not None:
        runner = Runner(app, src, serve_http=False, watch_config=False)
        if probe_dir is not None:
            probe = AckProbe(src)
            probe.watch(runner, probe_dir)
        job = runner.run()
    else:
        job = transport_only()
    task = asyncio.get_running_loop().create_task(job)
    while proc.poll() is None:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await src.aclose()
    lines = [json.loads(x) for x in proc.stdout.read().splitlines() if x.strip()]
    return next(x for x in lines if x.get("event") == "summary"), probe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=1000, help="notifications in the throughput phases")
    ap.add_argument("--txs", type=int, default=200, help="transactions per block")
    ap.add_argument("--latency-count", type=int, default=120,
                    help="notifications in each latency phase (about half are disk reference samples)")
    ap.add_argument("--rate", type=float, default=1.0, help="notifications per second in the latency phase")
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--fsync-count", type=int, default=DEFAULT_COUNT, help="fdatasync samples of the disk reference")
    ap.add_argument("--fsync-pace", type=float, default=DEFAULT_PACE_S, help="seconds between fdatasync samples")
    a = ap.parse_args()
    tune_gc()
    with tempfile.TemporaryDirectory(prefix="monmouth-bench-") as tmp:
        d = Path(tmp)
        t0 = time.perf_counter()
        size = build_file(d / "bench.mnmrp", a.count, a.txs)
        took = time.perf_counter() - t0
        print(f"built {a.count} blocks x {a.txs} txs: {size / 1e6:.1f} MB replay file in {took:.1f}s")

        (d / "tp").mkdir()
        app = make_app(d / "tp")
        settle()
        tp, _ = asyncio.run(run_phase(d / "bench.mnmrp", f"ipc://{d}/tp.sock", app=app, window=a.window, rate=0))
        app.close()
        print(f"throughput (engine, no-op plugin): {tp['notifications_per_s']:.0f} notifications/s, "
              f"{tp['mb_per_s']:.1f} MB/s, ack p50 {tp['ack_p50_ms']:.1f} ms p99 {tp['ack_p99_ms']:.1f} ms "
              f"(window {a.window})")

        settle()
        cpu0, kids0 = time.process_time(), resource.getrusage(resource.RUSAGE_CHILDREN)
        tr, _ = asyncio.run(run_phase(d / "bench.mnmrp", f"ipc://{d}/tr.sock", app=None, window=a.window, rate=0))
        kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        side_ms = (time.process_time() - cpu0) / a.count * 1000
        bridge_ms = ((kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)) / a.count * 1000
        print(f"transport only (decode + ack, no engine): {tr['notifications_per_s']:.0f} notifications/s, "
              f"{tr['mb_per_s']:.1f} MB/s; CPU per notification: sidecar {side_ms:.2f} ms, bridge {bridge_ms:.2f} ms "
              f"(ceiling on idle cores ~{1000 / max(side_ms, bridge_ms):.0f}/s)")

        lat_file = d / "lat.mnmrp"
        build_file(lat_file, a.latency_count, a.txs)
        (d / "lat").mkdir()
        app = make_app(d / "lat")
        settle()
        lat, probe = asyncio.run(run_phase(lat_file, f"ipc://{d}/lat.sock", app=app, window=a.window, rate=a.rate,
                                           probe_dir=d / "lat"))
        app.close()
        assert probe is not None
        side = summary_ms([r[1] for r in probe.records])
        ref = summary_ms(probe.reference_fsync_s)
        print(f"latency at {a.rate:g} block/s ({lat['acked']} blocks, engine), as the bridge sees it (send to ack "
              f"received; the reference batches included): ack p50 {lat['ack_p50_ms']:.2f} ms, "
              f"p99 {lat['ack_p99_ms']:.2f} ms, max {lat['ack_max_ms']:.2f} ms")
        print(f"  as the sidecar sees it (arrival to ack sent, {len(probe.records)} ack samples): p50 "
              f"{side['p50_ms']:.2f} ms, p99 {side['p99_ms']:.2f} ms, max {side['max_ms']:.2f} ms")
        print(f"fsync reference at COMMIT time (a bare 4 kB append + fdatasync as the COMMIT of "
              f"{len(probe.reference_fsync_s)} other notifications of the same session starts, drawn at random, "
              f"1 in 2): p50 {ref['p50_ms']:.2f} ms, p99 {ref['p99_ms']:.2f} ms, max {ref['max_ms']:.2f} ms")
        goal = ref["p99_ms"] + 2
        print(f"goal ack p99 <= fsync p99 + 2 ms: {side['p99_ms']:.2f} <= {goal:.2f} ms: "
              f"{'met' if side['p99_ms'] <= goal else 'NOT met'}")
        settle()
        fs = fsync_reference(d / "lat", a.fsync_count, a.fsync_pace)
        print(describe(fs, "the latency phase's database directory, paced; not the goal's reference"))
        settle()
        tl, _ = asyncio.run(run_phase(lat_file, f"ipc://{d}/tl.sock", app=None, window=a.window, rate=a.rate))
        print(f"transport latency at {a.rate:g} block/s ({tl['acked']} blocks, no engine): ack p50 "
              f"{tl['ack_p50_ms']:.2f} ms, p99 {tl['ack_p99_ms']:.2f} ms, max {tl['ack_max_ms']:.2f} ms")

    print(json.dumps({
        "notifications_per_s": round(tp["notifications_per_s"], 1),
        "mb_per_s": round(tp["mb_per_s"], 2),
        "ack_p50_ms": side["p50_ms"],
        "ack_p99_ms": side["p99_ms"],
        "fsync_p50_ms": ref["p50_ms"],
        "fsync_p99_ms": ref["p99_ms"],
        "ack_goal_met": side["p99_ms"] <= goal,
        "bridge_ack_p50_ms": lat["ack_p50_ms"],
        "bridge_ack_p99_ms": lat["ack_p99_ms"],
        "fsync_uniform_p50_ms": fs["p50_ms"],
        "fsync_uniform_p99_ms": fs["p99_ms"],
        "transport_only_notifications_per_s": round(tr["notifications_per_s"], 1),
        "transport_only_mb_per_s": round(tr["mb_per_s"], 2),
        "sidecar_cpu_ms_per_notification": round(side_ms, 3),
        "bridge_cpu_ms_per_notification": round(bridge_ms, 3),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "throughput_ack_p99_ms": tp["ack_p99_ms"],
        "transport_ack_p50_ms": tl["ack_p50_ms"],
        "transport_ack_p99_ms": tl["ack_p99_ms"],
        "txs_per_block": a.txs,
        "count": a.count,
        "latency_rate_per_s": a.rate,
        "latency_count": lat["acked"],
        "ack_samples": len(probe.records),
        "fsync_count": len(probe.reference_fsync_s),
    }))


if __name__ == "__main__":
    main()
