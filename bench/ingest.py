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
mostly UPDATEs of existing rows, so the undo data holds old and new values). Reference and engine run block by
block in lockstep (the machine is shared: both see the same load); the ratio is engine / reference blocks per
second.

Run:  python bench/ingest.py [--blocks 600] [--txs 200] [--synchronous FULL]
Prints its figures; the last line is JSON with ``blocks_per_s`` and ``revert_64_s`` (no-op plugin), the same for
the indexing plugin (``indexing_*``), and for each journaled plugin its reference (``plain_<plugin>_blocks_per_s``)
and ``<plugin>_ratio``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
from monmouth.types import Chain, ChainCommitted, ChainReverted
from monmouth.uint256 import to_u256
from tests.chains import load_mainnet_blocks, mainnet_shaped


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
            [(t.to or bytes(20), to_u256(t.value)) for t in block.transactions],
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


def journal_cost(plugin: object, twin: object, frames: list[bytes], synchronous: str, label: str
                 ) -> tuple[dict[str, float], dict[str, float]]:
    """The engine with ``plugin`` beside the reference: ``twin`` (the same plugin class) on a plain apsw connection
    of the same pragmas, its migrations run, then per block the same decode and its ``monmouth_block_applied`` in
    one ``BEGIN IMMEDIATE ... COMMIT``, no engine, no journal. The two run block by block in lockstep (which goes
    first alternates), so both see the same load on this shared machine; each side's time is summed.

    Returns:
        ``(reference, engine)``: ``blocks_per_s`` and ``decode_ms_per_block`` each; the engine's also
        ``revert_64_s`` and ``ratio`` (engine / reference blocks per second).
    """
    with tempfile.TemporaryDirectory() as d:
        engine = make_engine(Path(d) / "bench.sqlite", plugin, synchronous)
        conn = Database(Path(d) / "plain.sqlite", synchronous=synchronous).connect()
        for script in twin.monmouth_migrations():  # type: ignore[attr-defined]
            conn.execute(script)
        hook = twin.monmouth_block_applied  # type: ignore[attr-defined]

        def reference(frame: bytes) -> float:
            t = time.perf_counter()
            _seq, n = decode_notification(frame)
            decoded = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            for block in n.new.blocks:  # type: ignore[union-attr]
                hook(conn=conn, block=block, notification=n)
            conn.execute("COMMIT")
            return decoded - t

        def ours(frame: bytes) -> float:
            t = time.perf_counter()
            seq, n = decode_notification(frame)
            decoded = time.perf_counter()
            engine.apply(n, {"seq": seq})
            return decoded - t

        took = {reference: 0.0, ours: 0.0}
        decode = {reference: 0.0, ours: 0.0}
        for i, frame in enumerate(frames):
            for side in (reference, ours) if i % 2 else (ours, reference):
                t = time.perf_counter()
                decode[side] += side(frame)
                took[side] += time.perf_counter() - t
        # Revert the newest 64 blocks (a 64-block reorg's revert half), headers only as the rpc source sends them.
        old = tuple(engine.canonical(n).as_block() for n in range(engine.head.number - 63, engine.head.number + 1))
        t1 = time.perf_counter()
        engine.apply(ChainReverted(Chain(old)))
        revert_s = time.perf_counter() - t1
        engine.close()
        conn.close()
    ref = {"blocks_per_s": round(len(frames) / took[reference], 1),
           "decode_ms_per_block": round(decode[reference] / len(frames) * 1e3, 3)}
    eng = {"blocks_per_s": round(len(frames) / took[ours], 1),
           "decode_ms_per_block": round(decode[ours] / len(frames) * 1e3, 3), "revert_64_s": round(revert_s, 4),
           "ratio": round(took[reference] / took[ours], 3)}
    print(f"[{label}] plain apsw {ref['blocks_per_s']:.0f} blocks/s (decode {ref['decode_ms_per_block']:.2f} "
          f"ms/block), engine + journal {eng['blocks_per_s']:.0f} blocks/s (decode {eng['decode_ms_per_block']:.2f} "
          f"ms/block): ratio {eng['ratio']:.3f} (goal >= 0.9); revert of 64 blocks {revert_s * 1e3:.1f} ms",
          flush=True)
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
    args = ap.parse_args()

    templates = load_mainnet_blocks()
    blocks = list(mainnet_shaped(templates, args.blocks, txs_per_block=args.txs))
    frames = [encode_notification(ChainCommitted(Chain((b,))), seq=i + 1) for i, b in enumerate(blocks)]
    mb = sum(map(len, frames)) / 1e6
    tune_gc()  # as `monmouth run` does
    print(f"{args.blocks} mainnet-shaped blocks of {args.txs} transactions, {mb:.1f} MB of msgpack "
          f"({mb * 1e3 / args.blocks:.0f} kB/block), synchronous={args.synchronous}")
    noop = run(NoOp(), frames, args.synchronous, "no-op plugin")
    plain_indexing, indexing = journal_cost(Indexer(), Indexer(), frames, args.synchronous, "indexing plugin")
    plain_balances, balances = journal_cost(Balances(), Balances(), frames, args.synchronous, "balances plugin")
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
        "replay_runner_blocks_per_s": grouped, "replay_runner_group_commit_1_blocks_per_s": single,
    }))


if __name__ == "__main__":
    main()
