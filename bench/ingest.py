"""Ingest benchmark: blocks per second through decode -> engine -> no-op plugin -> commit -> ack, and the time
to revert a 64-block reorg.

Blocks are mainnet-shaped: the transactions and receipts of the 10 real blocks in ../shared/data/mainnet/,
re-chained into contiguous 200-transaction blocks. Each block travels as one msgpack ``notification`` frame
(the wire encoding) and is decoded in the timed loop.

A third phase replays the same blocks from a replay file through the sidecar's own runner (``monmouth replay``:
the replay source reads ahead, the runner group-commits what is at hand) with ``engine.group_commit`` 32 and 1
(``replay_runner_*``).

The journal's cost (issue 18, goal 1: at most 10 %) is measured against a reference in the same run: the same
plugin code (its migrations, then its ``monmouth_block_applied`` on each decoded block) on a plain apsw connection
of the same pragmas, one ``BEGIN IMMEDIATE ... COMMIT`` per block, with no engine and no journal. Two plugins: one
that INSERTs a row per transaction (``indexing``), one that keeps running balances per recipient (``balances``,
mostly UPDATEs of existing rows, so the undo data holds old and new values). Reference and engine alternate for
``--rounds`` rounds (the machine is shared); the medians and their ratio (engine / reference) are reported.

Run:  python bench/ingest.py [--blocks 600] [--txs 200] [--synchronous FULL] [--rounds 3]
Prints its figures; the last line is JSON with ``blocks_per_s`` and ``revert_64_s`` (no-op plugin), the same for
the indexing plugin (``indexing_*``), and for each journaled plugin its reference (``plain_<plugin>_blocks_per_s``)
and ``<plugin>_ratio``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prometheus_client import CollectorRegistry

from monmouth import hookimpl
from monmouth.codec import decode_notification, encode_notification
from monmouth.config import validate
from monmouth.engine import Engine
from monmouth.metrics import Metrics
from monmouth.plugins import PluginHost, config_models
from monmouth.replayfile import ReplayWriter
from monmouth.runner import Runner, tune_gc
from monmouth.sources.replay import ReplaySource
from monmouth.store import Database
from monmouth.testing import load_mainnet_blocks, mainnet_shaped
from monmouth.types import Chain, ChainCommitted, ChainReverted


class NoOp:
    """A plugin that is called for every block and does nothing."""

    @hookimpl
    def monmouth_block_applied(self, conn, block, notification):
        return None


class Indexer:
    """A plugin that writes one journaled row per transaction (so a revert has real undo work)."""

    @hookimpl
    def monmouth_migrations(self):
        return ["CREATE TABLE idx_txs (hash BLOB PRIMARY KEY, block INTEGER NOT NULL, sender BLOB, value TEXT)"]

    @hookimpl
    def monmouth_block_applied(self, conn, block, notification):
        conn.executemany(
            "INSERT INTO idx_txs (hash, block, sender, value) VALUES (?, ?, ?, ?)",
            [(t.hash, block.number, t.sender, str(t.value)) for t in block.transactions],
        )


class Balances:
    """A plugin that keeps a running balance (u256) and count per recipient: mostly UPDATEs of existing rows."""

    @hookimpl
    def monmouth_migrations(self):
        return ["CREATE TABLE bal_accounts (holder BLOB PRIMARY KEY, received BLOB NOT NULL, txs INTEGER NOT NULL)"]

    @hookimpl
    def monmouth_block_applied(self, conn, block, notification):
        conn.executemany(
            "INSERT INTO bal_accounts (holder, received, txs) VALUES (?, u256(?), 1) ON CONFLICT (holder) "
            "DO UPDATE SET received = u256_add(received, excluded.received), txs = txs + 1",
            [(t.to or bytes(20), t.value) for t in block.transactions],
        )


def make_engine(path: Path, plugin: object, synchronous: str) -> Engine:
    db = Database(path, synchronous=synchronous)
    metrics = Metrics(CollectorRegistry())
    host = PluginHost({"p": plugin}, db, metrics.registry)
    settings = validate({"plugins": {"p": {"enabled": True}}}, "<bench>", config_models({"p": plugin}))
    host.apply_settings(settings)
    return Engine(db, host, settings.engine, metrics)


def run(plugin: object, frames: list[bytes], synchronous: str, label: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as d:
        engine = make_engine(Path(d) / "bench.sqlite", plugin, synchronous)
        acked = []
        t0 = time.perf_counter()
        decode_s = 0.0
        for frame in frames:
            td = time.perf_counter()
            seq, n = decode_notification(frame)
            decode_s += time.perf_counter() - td
            res = engine.apply(n, {"seq": seq})
            acked.append(res.head)  # acknowledgement: what the exex source sends upstream
        elapsed = time.perf_counter() - t0
        bps = len(frames) / elapsed
        # Revert the newest 64 blocks (a 64-block reorg's revert half), headers only as the rpc source sends them.
        old = tuple(engine.canonical(n).as_block() for n in range(engine.head.number - 63, engine.head.number + 1))
        t1 = time.perf_counter()
        engine.apply(ChainReverted(Chain(old)))
        revert_s = time.perf_counter() - t1
        size = Path(d, "bench.sqlite").stat().st_size
        engine.close()
    print(f"[{label}] {len(frames)} blocks in {elapsed:.2f}s = {bps:.0f} blocks/s "
          f"(decode {decode_s / len(frames) * 1e3:.2f} ms/block); revert of 64 blocks {revert_s * 1e3:.1f} ms; "
          f"db {size / 1e6:.1f} MB")
    return {"blocks_per_s": round(bps, 1), "revert_64_s": round(revert_s, 4),
            "decode_ms_per_block": round(decode_s / len(frames) * 1e3, 3)}


def plain(plugin: object, frames: list[bytes], synchronous: str, label: str) -> dict[str, float]:
    """The reference: the same decode and the same plugin code on a plain apsw connection, one transaction per
    block, no engine, no journal."""
    with tempfile.TemporaryDirectory() as d:
        conn = Database(Path(d) / "plain.sqlite", synchronous=synchronous).connect()
        for script in plugin.monmouth_migrations():  # type: ignore[attr-defined]
            conn.execute(script)
        hook = plugin.monmouth_block_applied  # type: ignore[attr-defined]
        t0 = time.perf_counter()
        decode_s = 0.0
        for frame in frames:
            td = time.perf_counter()
            _seq, n = decode_notification(frame)
            decode_s += time.perf_counter() - td
            conn.execute("BEGIN IMMEDIATE")
            for block in n.new.blocks:  # type: ignore[union-attr]
                hook(conn=conn, block=block, notification=n)
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - t0
        conn.close()
    bps = len(frames) / elapsed
    print(f"[{label}, plain apsw] {len(frames)} blocks in {elapsed:.2f}s = {bps:.0f} blocks/s "
          f"(decode {decode_s / len(frames) * 1e3:.2f} ms/block)")
    return {"blocks_per_s": round(bps, 1), "decode_ms_per_block": round(decode_s / len(frames) * 1e3, 3)}


def journal_cost(make_plugin: type, frames: list[bytes], synchronous: str, label: str, rounds: int
                 ) -> tuple[dict[str, float], dict[str, float]]:
    """Reference and engine alternately, ``rounds`` times; their medians (blocks/s, decode ms/block) and revert."""
    refs, ours = [], []
    for _ in range(rounds):
        refs.append(plain(make_plugin(), frames, synchronous, label))
        ours.append(run(make_plugin(), frames, synchronous, label))

    def median(rows: list[dict[str, float]], key: str) -> float:
        return float(statistics.median(r[key] for r in rows))

    ref = {k: median(refs, k) for k in refs[0]}
    eng = {k: median(ours, k) for k in ours[0]}
    ratio = eng["blocks_per_s"] / ref["blocks_per_s"]
    print(f"[{label}] median of {rounds}: plain apsw {ref['blocks_per_s']:.0f} blocks/s, engine + journal "
          f"{eng['blocks_per_s']:.0f} blocks/s: ratio {ratio:.2f} (goal >= 0.9); decode {ref['decode_ms_per_block']:.2f}"
          f" vs {eng['decode_ms_per_block']:.2f} ms/block", flush=True)
    eng["ratio"] = round(ratio, 3)
    return ref, eng


def replay_runner(blocks: list[object], synchronous: str, group_commit: int) -> float:
    """Notifications per second of ``monmouth replay`` (file -> replay source -> runner -> engine -> no-op plugin)."""
    from bridge import make_app  # bench/bridge.py: a sidecar with only a no-op plugin

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "replay.mnmrp"
        with ReplayWriter(path) as w:
            for i, b in enumerate(blocks, 1):
                w.write(ChainCommitted(Chain((b,))), i)  # type: ignore[arg-type]
        os.environ["MONMOUTH_BENCH_SYNCHRONOUS"] = synchronous
        app = make_app(Path(d))
        app.settings.engine.group_commit = group_commit
        os.sync()  # the file's writeback must not stall the timed commits
        t0 = time.perf_counter()
        asyncio.run(Runner(app, ReplaySource(path), serve_http=False, watch_config=False).run())
        rate = app.engine.notifications_seen / (time.perf_counter() - t0)
        app.close()
    print(f"[replay through the runner, group_commit={group_commit}] {len(blocks)} blocks = {rate:.0f} blocks/s")
    return round(rate, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--blocks", type=int, default=600)
    ap.add_argument("--txs", type=int, default=200)
    ap.add_argument("--synchronous", choices=["FULL", "NORMAL"], default="FULL")
    ap.add_argument("--rounds", type=int, default=3, help="alternating reference/engine rounds (medians)")
    args = ap.parse_args()

    templates = load_mainnet_blocks()
    blocks = list(mainnet_shaped(templates, args.blocks, txs_per_block=args.txs))
    frames = [encode_notification(ChainCommitted(Chain((b,))), seq=i + 1) for i, b in enumerate(blocks)]
    mb = sum(map(len, frames)) / 1e6
    tune_gc()  # as `monmouth run` does
    print(f"{args.blocks} mainnet-shaped blocks of {args.txs} transactions, {mb:.1f} MB of msgpack "
          f"({mb * 1e3 / args.blocks:.0f} kB/block), synchronous={args.synchronous}")
    noop = run(NoOp(), frames, args.synchronous, "no-op plugin")
    plain_indexing, indexing = journal_cost(Indexer, frames, args.synchronous, "indexing plugin", args.rounds)
    plain_balances, balances = journal_cost(Balances, frames, args.synchronous, "balances plugin", args.rounds)
    grouped = replay_runner(blocks, args.synchronous, 32)
    single = replay_runner(blocks, args.synchronous, 1)
    print(json.dumps({
        "blocks_per_s": noop["blocks_per_s"], "revert_64_s": noop["revert_64_s"],
        "txs_per_block": args.txs, "blocks": args.blocks, "synchronous": args.synchronous,
        "decode_ms_per_block": noop["decode_ms_per_block"],
        "indexing_blocks_per_s": indexing["blocks_per_s"], "indexing_revert_64_s": indexing["revert_64_s"],
        "plain_indexing_blocks_per_s": plain_indexing["blocks_per_s"], "indexing_ratio": indexing["ratio"],
        "indexing_decode_ms_per_block": indexing["decode_ms_per_block"],
        "plain_indexing_decode_ms_per_block": plain_indexing["decode_ms_per_block"],
        "balances_blocks_per_s": balances["blocks_per_s"], "balances_revert_64_s": balances["revert_64_s"],
        "plain_balances_blocks_per_s": plain_balances["blocks_per_s"], "balances_ratio": balances["ratio"],
        "rounds": args.rounds,
        "replay_runner_blocks_per_s": grouped, "replay_runner_group_commit_1_blocks_per_s": single,
    }))


if __name__ == "__main__":
    main()
