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

With ``--storage postgres`` (issue 15) the same phases also run on PostgreSQL, on a real server started for the run
(tests/pg.py, with ``fsync`` on, so that a ``COMMIT`` waits for its WAL flush as SQLite's ``synchronous = FULL``
does; ``--pg-url`` uses a running one instead, its password in ``MONMOUTH_PG_PASSWORD``). The journal-cost phases then
run four sides in lockstep: plain apsw, the engine on SQLite, plain psycopg (the same plugin through
:class:`~sidecar.backends.postgres.PgConnection`, no triggers) and the engine on PostgreSQL (the trigger journal),
and print PostgreSQL's engine against SQLite's (goal: at least 0.5). The plugins' SQL is one portable set for both
backends, except the u256 arithmetic of ``balances`` (SQLite's ``u256_add`` on 32-byte blobs, PostgreSQL's
``numeric``). The replay-through-the-runner phase runs on SQLite only. ``--pg-rtt-ms R`` puts a network between
the PostgreSQL sides and the server: every connection goes through a loopback relay that delays each chunk by R/2 ms
each way (tests/pg.py's ``Relay``; plain psycopg and the engine both pay it), to show what a notification's round trips cost
when the server is on another machine.

Run:  python bench/ingest.py [--blocks 600] [--txs 200] [--synchronous FULL] [--storage sqlite|postgres]
      [--balances per-transaction|summed] [--pg-rtt-ms 0]
Prints its figures; the last line is JSON with ``blocks_per_s`` and ``revert_64_s`` (no-op plugin), the same for
the indexing plugin (``indexing_*``), and for each journaled plugin its reference (``plain_<plugin>_blocks_per_s``)
and ``<plugin>_ratio``; with ``--storage postgres`` the same keys prefixed ``pg_`` and ``pg_<plugin>_vs_sqlite``
(PostgreSQL's engine blocks/s over SQLite's, same run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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
    def monmouth_backends(self):
        return ["sqlite", "postgres"]

    @hookimpl
    def monmouth_block_applied(self, conn, block, notification):
        return None


class Indexer:
    """A plugin that writes one journaled row per transaction (so a revert has real undo work). Its SQL is portable:
    ``BYTEA`` is a blob on SQLite (a blob is stored as given whatever the column's affinity) and ``bytea`` on
    PostgreSQL; ``BIGINT`` is an integer on both."""

    @hookimpl
    def monmouth_backends(self):
        return ["sqlite", "postgres"]

    @hookimpl
    def monmouth_migrations(self):
        return ["CREATE TABLE idx_txs (hash BYTEA PRIMARY KEY, block BIGINT NOT NULL, sender BYTEA, value TEXT)"]

    @hookimpl
    def monmouth_block_applied(self, conn, block, notification):
        conn.executemany(
            "INSERT INTO idx_txs (hash, block, sender, value) VALUES (?, ?, ?, ?)",
            [(t.hash, block.number, t.sender, str(t.value)) for t in block.transactions],
        )


class Balances:
    """A plugin that keeps a running balance (u256) and count per recipient: mostly UPDATEs of existing rows.
    The balance is a 32-byte big-endian blob added with ``u256_add`` on SQLite, ``numeric(78)`` on PostgreSQL.

    ``summed`` (``--balances summed``): the block's transfers are first summed per recipient in Python, then one
    upsert per recipient (about 113 rows of 200 on mainnet-shaped blocks, every key once, so one statement on
    PostgreSQL) instead of one per transaction (a recipient seen 30 times in a block is 30 upserts of its row, and
    on PostgreSQL as many statements). The same table afterwards; fewer row changes, so less undo data."""

    #: the upsert on PostgreSQL, of ``(recipient, wei, transfers)`` rows (bench/pg_ingest_profile.py uses it too)
    PG_UPSERT = ("INSERT INTO bal_accounts (holder, received, txs) VALUES (?, ?, ?) ON CONFLICT (holder) DO UPDATE "
                 "SET received = bal_accounts.received + excluded.received, txs = bal_accounts.txs + excluded.txs")

    def __init__(self, backend: str = "sqlite", summed: bool = False) -> None:
        self.backend = backend
        self.summed = summed

    @hookimpl
    def monmouth_backends(self):
        return [self.backend]

    @hookimpl
    def monmouth_migrations(self):
        received = "numeric(78) NOT NULL" if self.backend == "postgres" else "BYTEA NOT NULL"
        return [f"CREATE TABLE bal_accounts (holder BYTEA PRIMARY KEY, received {received}, txs BIGINT NOT NULL)"]

    def rows(self, block: Any) -> list[tuple[bytes, int, int]]:
        """The block's upsert rows ``(recipient, wei, transfers)``: one per transaction, or per recipient when
        ``summed``."""
        if not self.summed:
            return [(t.to or bytes(20), t.value, 1) for t in block.transactions]
        sums: dict[bytes, list[int]] = {}
        for t in block.transactions:
            s = sums.setdefault(t.to or bytes(20), [0, 0])
            s[0] += t.value
            s[1] += 1
        return [(holder, v, n) for holder, (v, n) in sums.items()]

    @hookimpl
    def monmouth_block_applied(self, conn, block, notification):
        rows = self.rows(block)
        if self.backend == "postgres":
            conn.executemany(self.PG_UPSERT, rows)
            return
        conn.executemany(
            "INSERT INTO bal_accounts (holder, received, txs) VALUES (?, u256(?), ?) ON CONFLICT (holder) "
            "DO UPDATE SET received = u256_add(received, excluded.received), txs = txs + excluded.txs",
            [(holder, to_u256(v), n) for holder, v, n in rows],
        )


#: Where a phase's database goes: a SQLite file, or a fresh database's URL on the run's PostgreSQL server.
Target = Path | str


def open_backend(target: Target, synchronous: str) -> Any:
    if isinstance(target, str):
        from monmouth.backends.postgres import PgDatabase
        from tests.pg import PASSWORD

        return PgDatabase(target, password=PASSWORD)
    return Database(target, synchronous=synchronous)


def make_engine(target: Target, plugin: object, synchronous: str) -> Engine:
    db = open_backend(target, synchronous)
    metrics = Metrics(CollectorRegistry())
    host = PluginHost({"p": plugin}, db, metrics.registry)
    settings = validate({"plugins": {"p": {"enabled": True}}}, "<bench>", config_models({"p": plugin}))
    host.apply_settings(settings)
    return Engine(db, host, settings.engine, metrics)


class Targets:
    """Fresh databases for each phase: SQLite files in ``directory``, and on ``server`` (tests/pg.py) when given,
    reached through ``relay`` (tests/pg.py's ``Relay``) when given."""

    def __init__(self, directory: Path, server: Any = None, relay: Any = None) -> None:
        self.directory, self.server, self.relay = directory, server, relay
        self._n = 0

    def new(self, backend: str) -> Target:
        self._n += 1
        if backend == "postgres":
            url: str = self.server.database()
            if self.relay is not None:
                url = self.relay.url_of(url)
            return url
        return self.directory / f"bench{self._n}.sqlite"


def revert_64(engine: Engine) -> float:
    """Seconds to revert the newest 64 blocks (a 64-block reorg's revert half), headers only as the rpc source
    sends them."""
    old = tuple(engine.canonical(n).as_block() for n in range(engine.head.number - 63, engine.head.number + 1))
    t = time.perf_counter()
    engine.apply(ChainReverted(Chain(old)))
    return time.perf_counter() - t


def run(plugin: object, frames: list[bytes], synchronous: str, label: str, target: Target) -> dict[str, float]:
    engine = make_engine(target, plugin, synchronous)
    t0 = time.perf_counter()
    decode_s = 0.0
    for frame in frames:
        td = time.perf_counter()
        seq, n = decode_notification(frame)
        decode_s += time.perf_counter() - td
        engine.apply(n, {"seq": seq})  # its result's head is what the exex source acknowledges upstream
    elapsed = time.perf_counter() - t0
    bps = len(frames) / elapsed
    revert_s = revert_64(engine)
    engine.close()
    size = f"; db {Path(target).stat().st_size / 1e6:.1f} MB" if isinstance(target, Path) else ""
    print(f"[{label}] {len(frames)} blocks in {elapsed:.2f}s = {bps:.0f} blocks/s "
          f"(decode {decode_s / len(frames) * 1e3:.2f} ms/block); revert of 64 blocks {revert_s * 1e3:.1f} ms{size}",
          flush=True)
    return {"blocks_per_s": round(bps, 1), "revert_64_s": round(revert_s, 4),
            "decode_ms_per_block": round(decode_s / len(frames) * 1e3, 3)}


def journal_cost(plugins: dict[str, tuple[object, object]], frames: list[bytes], synchronous: str, label: str,
                 targets: Targets) -> dict[str, tuple[dict[str, float], dict[str, float]]]:
    """For each backend in ``plugins`` (``{backend: (plugin, twin)}``), the engine with ``plugin`` beside a
    reference: ``twin`` (the same plugin class) on a plain connection of the same backend (apsw with the same pragmas,
    or psycopg), its migrations run, then per block the same decode and its ``monmouth_block_applied`` in one
    ``BEGIN IMMEDIATE ... COMMIT``, no engine, no journal. All sides run block by block in lockstep (the order rotates),
    so they see the same load on this shared machine; each side's time is summed.

    Returns:
        ``{backend: (reference, engine)}``: ``blocks_per_s`` and ``decode_ms_per_block`` each; the engine's also
        ``revert_64_s`` and ``ratio`` (engine / reference blocks per second).
    """
    engines: dict[str, Engine] = {}
    sides: list[tuple[str, str, Any]] = []  # (backend, "reference" | "engine", step)
    conns = []
    for backend, (plugin, twin) in plugins.items():
        engine = engines[backend] = make_engine(targets.new(backend), plugin, synchronous)
        ref_db = open_backend(targets.new(backend), synchronous)
        # SQLite: the engine's own kind of connection (its page cache, storage.cache_mib), without the engine
        conn = ref_db.engine_connection() if backend == "sqlite" else ref_db.connect()
        conns.append(conn)
        for script in twin.monmouth_migrations():  # type: ignore[attr-defined]
            conn.execute(script)

        def reference(frame: bytes, conn: Any = conn, hook: Any = twin.monmouth_block_applied) -> float:  # type: ignore[attr-defined]
            t = time.perf_counter()
            _seq, n = decode_notification(frame)
            decoded = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            for block in n.new.blocks:  # type: ignore[union-attr]
                hook(conn=conn, block=block, notification=n)
            conn.execute("COMMIT")
            return decoded - t

        def ours(frame: bytes, engine: Engine = engine) -> float:
            t = time.perf_counter()
            seq, n = decode_notification(frame)
            decoded = time.perf_counter()
            engine.apply(n, {"seq": seq})
            return decoded - t

        sides += [(backend, "reference", reference), (backend, "engine", ours)]

    took = [0.0] * len(sides)
    decode = [0.0] * len(sides)
    for i, frame in enumerate(frames):
        for k in range(len(sides)):
            j = (i + k) % len(sides)
            t = time.perf_counter()
            decode[j] += sides[j][2](frame)
            took[j] += time.perf_counter() - t
    out: dict[str, tuple[dict[str, float], dict[str, float]]] = {}
    for backend, engine in engines.items():
        r, e = (next(j for j, s in enumerate(sides) if s[:2] == (backend, kind)) for kind in ("reference", "engine"))
        revert_s = revert_64(engine)
        engine.close()
        ref = {"blocks_per_s": round(len(frames) / took[r], 1),
               "decode_ms_per_block": round(decode[r] / len(frames) * 1e3, 3)}
        eng = {"blocks_per_s": round(len(frames) / took[e], 1),
               "decode_ms_per_block": round(decode[e] / len(frames) * 1e3, 3), "revert_64_s": round(revert_s, 4),
               "ratio": round(took[r] / took[e], 3)}
        plain = "plain apsw" if backend == "sqlite" else "plain psycopg"
        journal = "journal" if backend == "sqlite" else "trigger journal"
        print(f"[{label}, {backend}] {plain} {ref['blocks_per_s']:.0f} blocks/s (decode "
              f"{ref['decode_ms_per_block']:.2f} ms/block), engine + {journal} {eng['blocks_per_s']:.0f} blocks/s "
              f"(decode {eng['decode_ms_per_block']:.2f} ms/block): ratio {eng['ratio']:.3f}"
              f"{' (goal >= 0.9)' if backend == 'sqlite' else ''}; revert of 64 blocks {revert_s * 1e3:.1f} ms",
              flush=True)
        out[backend] = (ref, eng)
    for conn in conns:
        conn.close()
    if "postgres" in out:
        vs = out["postgres"][1]["blocks_per_s"] / out["sqlite"][1]["blocks_per_s"]
        print(f"[{label}] engine on PostgreSQL / engine on SQLite, same run: {vs:.3f} (goal >= 0.5: "
              f"{'met' if vs >= 0.5 else 'NOT met'})", flush=True)
    return out


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
    ap.add_argument("--balances", choices=["per-transaction", "summed"], default="per-transaction",
                    help="the balances plugin's shape: one upsert per transaction (default), or the block's transfers "
                         "summed per recipient first, one upsert per recipient")
    ap.add_argument("--storage", choices=["sqlite", "postgres"], default="sqlite",
                    help="postgres: also run every engine phase on a real PostgreSQL server, beside SQLite")
    ap.add_argument("--pg-rtt-ms", type=float, default=0.0,
                    help="with --storage postgres: reach the server through a relay adding this round-trip time")
    args = ap.parse_args()
    if args.pg_rtt_ms < 0 or (args.pg_rtt_ms and args.storage != "postgres"):
        ap.error(f"--pg-rtt-ms {args.pg_rtt_ms}: a round-trip time of 0 ms or more, with --storage postgres")
    if args.blocks < 64:
        ap.error(f"--blocks {args.blocks}: at least 64 (each phase ends by reverting its last 64 blocks)")

    templates = load_mainnet_blocks()
    blocks = list(mainnet_shaped(templates, args.blocks, txs_per_block=args.txs))
    frames = [encode_notification(ChainCommitted(Chain((b,))), seq=i + 1) for i, b in enumerate(blocks)]
    mb = sum(map(len, frames)) / 1e6
    tune_gc()  # as `monmouth run` does
    print(f"{args.blocks} mainnet-shaped blocks of {args.txs} transactions, {mb:.1f} MB of msgpack "
          f"({mb * 1e3 / args.blocks:.0f} kB/block), synchronous={args.synchronous}", flush=True)
    with contextlib.ExitStack() as stack:
        server = None
        if args.storage == "postgres":
            from tests.pg import PgServer

            server = stack.enter_context(PgServer(durable=True))
            print(f"PostgreSQL server {server.url()} (fsync on, synchronous_commit on)", flush=True)
        relay = None
        if args.pg_rtt_ms and server is not None:
            from tests.pg import Relay

            relay = Relay("127.0.0.1", server.port, args.pg_rtt_ms / 2e3)
            stack.callback(relay.close)
            print(f"PostgreSQL reached through a relay adding {args.pg_rtt_ms:g} ms a round trip", flush=True)
        targets = Targets(Path(stack.enter_context(tempfile.TemporaryDirectory())), server, relay)
        backends = ["sqlite", "postgres"] if server is not None else ["sqlite"]
        noop = {b: run(NoOp(), frames, args.synchronous, f"no-op plugin, {b}", targets.new(b)) for b in backends}
        indexing = journal_cost({b: (Indexer(), Indexer()) for b in backends}, frames, args.synchronous,
                                "indexing plugin", targets)
        summed = args.balances == "summed"
        balances = journal_cost({b: (Balances(b, summed), Balances(b, summed)) for b in backends}, frames,
                                args.synchronous, f"balances plugin{', summed' if summed else ''}", targets)
    grouped = replay_runner(blocks, args.synchronous, 32)
    single = replay_runner(blocks, args.synchronous, 1)
    figures: dict[str, Any] = {
        "txs_per_block": args.txs, "blocks": args.blocks, "synchronous": args.synchronous, "balances": args.balances,
        "pg_rtt_ms": args.pg_rtt_ms,
        "replay_runner_blocks_per_s": grouped, "replay_runner_group_commit_1_blocks_per_s": single,
    }
    for b in backends:
        p = "" if b == "sqlite" else "pg_"
        (plain_i, idx), (plain_b, bal) = indexing[b], balances[b]
        figures.update({
            f"{p}blocks_per_s": noop[b]["blocks_per_s"], f"{p}revert_64_s": noop[b]["revert_64_s"],
            f"{p}decode_ms_per_block": noop[b]["decode_ms_per_block"],
            f"{p}indexing_blocks_per_s": idx["blocks_per_s"], f"{p}indexing_revert_64_s": idx["revert_64_s"],
            f"{p}plain_indexing_blocks_per_s": plain_i["blocks_per_s"], f"{p}indexing_ratio": idx["ratio"],
            f"{p}indexing_decode_ms_per_block": idx["decode_ms_per_block"],
            f"{p}plain_indexing_decode_ms_per_block": plain_i["decode_ms_per_block"],
            f"{p}balances_blocks_per_s": bal["blocks_per_s"], f"{p}balances_revert_64_s": bal["revert_64_s"],
            f"{p}plain_balances_blocks_per_s": plain_b["blocks_per_s"], f"{p}balances_ratio": bal["ratio"],
        })
    if server is not None:
        for name, phase in (("indexing", indexing), ("balances", balances)):
            figures[f"pg_{name}_vs_sqlite"] = round(phase["postgres"][1]["blocks_per_s"]
                                                    / phase["sqlite"][1]["blocks_per_s"], 3)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
