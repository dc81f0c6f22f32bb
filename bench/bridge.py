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
   pace) through the engine; ack latency is the time from the bridge's send to its receipt of the ack
   (p50, p99), so it includes decoding and the engine's SQLite commit and fsync;
4. **transport latency**: the same without the engine (what the transport itself adds).

Between phases 3 and 4 it times the disk's own price of a durable write on the latency phase's database
directory: a bare ``fdatasync`` of a 4 kB append (``bench/fsync.py``; ``--fsync-count`` times, ``--fsync-pace``
seconds apart), and prints it beside the engine's ack latency with the goal ``ack p99 <= fsync p99 + 2 ms``
(``bench/reth.py`` reads the same way).

Prints a line per phase; the last line is JSON with ``notifications_per_s``, ``mb_per_s``, ``ack_p50_ms``,
``ack_p99_ms``, ``fsync_p50_ms`` and ``fsync_p99_ms`` (plus the other figures). Usage: ``python bench/bridge.py [--count N] [--latency-count N]``.
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
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from fsync import DEFAULT_COUNT, DEFAULT_PACE_S, describe, fsync_reference  # noqa: E402  # bench/fsync.py

from monmouth import hookimpl  # noqa: E402
from monmouth.app import App, open_app  # noqa: E402
from monmouth.replayfile import ReplayWriter  # noqa: E402
from monmouth.runner import Runner, tune_gc  # noqa: E402
from monmouth.sources.exex import ExExSource  # noqa: E402
from monmouth.types import ChainCommitted  # noqa: E402
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


async def run_phase(file: Path, endpoint: str, *, app: App | None, window: int, rate: float) -> dict[str, Any]:
    """Serve ``file`` with ``bridge-replay`` and consume it: through the sidecar's own :class:`Runner` (decode on
    the engine's thread, apply, commit, ack) when ``app`` is given, else decode and ack only. Returns the bridge's
    summary line."""
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

    job = Runner(app, src, serve_http=False, watch_config=False).run() if app is not None else transport_only()
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
    return next(x for x in lines if x.get("event") == "summary")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=1000, help="notifications in the throughput phases")
    ap.add_argument("--txs", type=int, default=200, help="transactions per block")
    ap.add_argument("--latency-count", type=int, default=60, help="notifications in each latency phase")
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
        tp = asyncio.run(run_phase(d / "bench.mnmrp", f"ipc://{d}/tp.sock", app=app, window=a.window, rate=0))
        app.close()
        print(f"throughput (engine, no-op plugin): {tp['notifications_per_s']:.0f} notifications/s, "
              f"{tp['mb_per_s']:.1f} MB/s, ack p50 {tp['ack_p50_ms']:.1f} ms p99 {tp['ack_p99_ms']:.1f} ms "
              f"(window {a.window})")

        settle()
        cpu0, kids0 = time.process_time(), resource.getrusage(resource.RUSAGE_CHILDREN)
        tr = asyncio.run(run_phase(d / "bench.mnmrp", f"ipc://{d}/tr.sock", app=None, window=a.window, rate=0))
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
        lat = asyncio.run(run_phase(lat_file, f"ipc://{d}/lat.sock", app=app, window=a.window, rate=a.rate))
        app.close()
        print(f"latency at {a.rate:g} block/s ({lat['acked']} blocks, engine): ack p50 {lat['ack_p50_ms']:.2f} ms, "
              f"p99 {lat['ack_p99_ms']:.2f} ms, max {lat['ack_max_ms']:.2f} ms")
        settle()
        fs = fsync_reference(d / "lat", a.fsync_count, a.fsync_pace)
        print(describe(fs, "the latency phase's database directory"))
        goal = fs["p99_ms"] + 2
        print(f"goal ack p99 <= fsync p99 + 2 ms: {lat['ack_p99_ms']:.2f} <= {goal:.2f} ms: "
              f"{'met' if lat['ack_p99_ms'] <= goal else 'NOT met'}")
        settle()
        tl = asyncio.run(run_phase(lat_file, f"ipc://{d}/tl.sock", app=None, window=a.window, rate=a.rate))
        print(f"transport latency at {a.rate:g} block/s ({tl['acked']} blocks, no engine): ack p50 "
              f"{tl['ack_p50_ms']:.2f} ms, p99 {tl['ack_p99_ms']:.2f} ms, max {tl['ack_max_ms']:.2f} ms")

    print(json.dumps({
        "notifications_per_s": round(tp["notifications_per_s"], 1),
        "mb_per_s": round(tp["mb_per_s"], 2),
        "ack_p50_ms": lat["ack_p50_ms"],
        "ack_p99_ms": lat["ack_p99_ms"],
        "fsync_p50_ms": fs["p50_ms"],
        "fsync_p99_ms": fs["p99_ms"],
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
    }))


if __name__ == "__main__":
    main()
