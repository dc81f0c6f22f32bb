"""Memory plugin under a sustained stream of 200-agent blocks, with its worker thread running (issue 5).

``bench/memory.py`` times one block at a time and settles it in between. Here blocks come back to back, as in a
backfill. The engine applies and commits each block, recording its memory input (``plugins/memory/ingest.py``),
while the plugin's worker settles and indexes the recorded blocks in its own transactions, competing for SQLite's
write lock. Two kinds of block, ``--blocks`` of each:

* ``episodes``: 200 transactions, each to a different registered agent (200 chain-derived memories per block);
* ``anchor``: 200 agents each store one memory through the API (not timed as engine time), then a block anchors
  the writes.

Printed per kind: the engine's rate (blocks applied per second of engine time, worker running: the reference the
worker must keep up with), the rate including the API stores, and the rate at which the worker had settled and
indexed everything (from the first block until a read waiting for it, ``Memory.ensure_indexed``, returns).

Then the read right after a block (``--reads`` more blocks of the same kind, on the same database): after each
block is applied (and the worker woken, as after a commit), one agent of that block asks for its root at the head
(``Memory.agent_root``: its root and the block's global root), which waits until the block is settled. Printed:
that read's p50/p99 in ms, beside the engine's own apply time per block in the same loop (the reference), and the
answer is checked to be at that block and to count the memory the block added (one more item than the same read
gave at the previous block, taken before the block).

A real SQLite file in a temporary directory, ``--agents`` registered agents (default 1,000), no embedder. Usage:
``python bench/memory_sustained.py [--agents N] [--blocks N] [--reads N]``. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monmouth.types import Block, Chain, ChainCommitted, Receipt, Transaction  # noqa: E402
from tests.chains import h  # noqa: E402
from tests.memory_helpers import close, make_memory_engine  # noqa: E402


def _p(xs: list[float], q: float) -> float:
    """The ``q`` quantile of ``xs`` in ms (nearest rank)."""
    s = sorted(xs)
    return round(1000 * s[min(len(s) - 1, int(q * len(s)))], 2)


def make_blocks(kind: str, agents: list[bytes], first: int, count: int, parent: bytes,
                rng: random.Random) -> list[tuple[Block, list[bytes]]]:
    """``count`` blocks of ``kind`` from number ``first`` on ``parent``, each with the 200 agents it touches."""
    blocks = []
    for number in range(first, first + count):
        sample = rng.sample(agents, min(200, len(agents)))
        txs = tuple(Transaction(h("tx", number, i), 2, h("sender", i)[:20], a, 10**15, b"", i, 21_000, None,
                                10**10, 10**9, 1) for i, a in enumerate(sample)) if kind == "episodes" else ()
        rcs = tuple(Receipt(1, 21_000 * (i + 1)) for i in range(len(txs)))
        bh = h("block", kind, number)
        blocks.append((Block(number, bh, parent, 1_700_000_000 + 12 * number, bytes(20), 30_000_000, 0, 10**9,
                             txs, rcs), sample))
        parent = bh
    return blocks


def run(kind: str, agents_n: int, blocks_n: int, reads_n: int, tmp: Path) -> dict[str, Any]:
    e, p = make_memory_engine(tmp / f"{kind}.sqlite", {"key_dir": str(tmp / "keys"), "embed": False}, workers=True)
    mem = p.memory
    assert mem is not None
    try:
        agents = [h("agent", i)[:20] for i in range(agents_n)]
        for a in agents:
            mem.register(a)
        rng = random.Random(1)
        blocks = make_blocks(kind, agents, 1, blocks_n, bytes(32), rng)
        engine = 0.0
        t0 = time.perf_counter()
        for b, sample in blocks:
            if kind == "anchor":
                for a in sample:
                    mem.store(a, "semantic", "a note to anchor")
            t = time.perf_counter()
            e.apply(ChainCommitted(Chain((b,))))
            engine += time.perf_counter() - t
            mem.wake()  # what monmouth_notification_committed does after each commit
        applied = time.perf_counter() - t0
        # A read that needs everything settled and indexed waits for the worker (the engine is done). Polling
        # /status instead (every 5 ms, as this benchmark did) computes the global root and counts every item each
        # time, competing with the worker for the CPU and the GIL: it cost the worker a third of its rate.
        mem.ensure_indexed()
        assert not e.host.status()["memory"]["settle_backlog"] and not e.host.status()["memory"]["index_backlog"]
        settled = time.perf_counter() - t0
        # The read right after each block: one agent the block touched asks for its root at the head.
        applies: list[float] = []
        reads: list[float] = []
        for b, sample in make_blocks(kind, agents, blocks_n + 1, reads_n, blocks[-1][0].hash, rng):
            before = mem.agent_root(sample[0])["count"]  # at the previous block (everything settled)
            if kind == "anchor":
                for a in sample:
                    mem.store(a, "semantic", "a note to anchor")
            t = time.perf_counter()
            e.apply(ChainCommitted(Chain((b,))))
            t1 = time.perf_counter()
            mem.wake()
            ans = mem.agent_root(sample[0])
            t2 = time.perf_counter()
            applies.append(t1 - t)
            reads.append(t2 - t1)
            assert ans["block"] == b.number and ans["since_block"] == b.number, ans
            assert ans["count"] == before + 1, (before, ans)  # it sees the memory this block added
    finally:
        close(e)
    out = {f"{kind}_engine_blocks_per_s": round(blocks_n / engine), f"{kind}_applied_blocks_per_s":
           round(blocks_n / applied, 1), f"{kind}_settled_blocks_per_s": round(blocks_n / settled, 1),
           f"{kind}_read_after_block_p50_ms": _p(reads, 0.5), f"{kind}_read_after_block_p99_ms": _p(reads, 0.99),
           f"{kind}_engine_apply_p50_ms": _p(applies, 0.5)}
    print(f"{kind:>9}: engine {out[f'{kind}_engine_blocks_per_s']} blocks/s (worker running; the reference); "
          f"{out[f'{kind}_applied_blocks_per_s']} blocks/s with the API stores; all settled and indexed at "
          f"{out[f'{kind}_settled_blocks_per_s']} blocks/s "
          f"({out[f'{kind}_settled_blocks_per_s'] / out[f'{kind}_engine_blocks_per_s']:.3f} of the engine's rate)",
          flush=True)
    print(f"{'':>9}  root read right after a block: p50 {out[f'{kind}_read_after_block_p50_ms']} ms, "
          f"p99 {out[f'{kind}_read_after_block_p99_ms']} ms (mean {1000 * statistics.fmean(reads):.2f}); "
          f"the engine's apply of that block: p50 {out[f'{kind}_engine_apply_p50_ms']} ms", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agents", type=int, default=1_000)
    ap.add_argument("--blocks", type=int, default=100)
    ap.add_argument("--reads", type=int, default=50, help="blocks each followed by a timed root read")
    args = ap.parse_args()
    res: dict[str, Any] = {"agents": args.agents, "blocks": args.blocks, "reads": args.reads,
                           "core_goal_blocks_per_s": 300, "goal_settled_blocks_per_s": 100,
                           "goal_read_after_block_p50_ms": 5}
    with tempfile.TemporaryDirectory(prefix="monmouth-bench-memory-sustained-") as tmp:
        for kind in ("episodes", "anchor"):
            res.update(run(kind, args.agents, args.blocks, args.reads, Path(tmp)))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
