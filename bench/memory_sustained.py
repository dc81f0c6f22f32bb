"""Memory plugin under a sustained stream of 200-agent blocks, with its worker thread running (issue 5).

``bench/memory.py`` times one block at a time and settles it in between. Here blocks come back to back, as in a
backfill. The engine applies and commits each block, recording its memory input (``plugins/memory/ingest.py``),
while the plugin's worker settles and indexes the recorded blocks in its own transactions, competing for SQLite's
write lock. Two kinds of block, ``--blocks`` of each:

* ``episodes``: 200 transactions, each to a different registered agent (200 chain-derived memories per block);
* ``anchor``: 200 agents each store one memory through the API (not timed as engine time), then a block anchors
  the writes.

Printed per kind: the engine's rate (blocks applied per second of engine time, worker running), the rate including
the API stores, and the rate at which the worker had settled and indexed everything (from the first block until a
read waiting for it, ``Memory.ensure_indexed``, returns). A real SQLite file in a temporary directory, ``--agents`` registered agents (default
1,000), no embedder. Usage: ``python bench/memory_sustained.py [--agents N] [--blocks N]``. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import random
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


def run(kind: str, agents_n: int, blocks_n: int, tmp: Path) -> dict[str, Any]:
    e, p = make_memory_engine(tmp / f"{kind}.sqlite", {"key_dir": str(tmp / "keys"), "embed": False}, workers=True)
    mem = p.memory
    assert mem is not None
    try:
        agents = [h("agent", i)[:20] for i in range(agents_n)]
        for a in agents:
            mem.register(a)
        rng = random.Random(1)
        parent = bytes(32)
        blocks = []
        for number in range(1, blocks_n + 1):
            sample = rng.sample(agents, min(200, agents_n))
            txs = tuple(Transaction(h("tx", number, i), 2, h("sender", i)[:20], a, 10**15, b"", i, 21_000, None,
                                    10**10, 10**9, 1) for i, a in enumerate(sample)) if kind == "episodes" else ()
            rcs = tuple(Receipt(1, 21_000 * (i + 1)) for i in range(len(txs)))
            bh = h("block", kind, number)
            blocks.append((Block(number, bh, parent, 1_700_000_000 + 12 * number, bytes(20), 30_000_000, 0, 10**9,
                                 txs, rcs), sample))
            parent = bh
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
    finally:
        close(e)
    out = {f"{kind}_engine_blocks_per_s": round(blocks_n / engine), f"{kind}_applied_blocks_per_s":
           round(blocks_n / applied, 1), f"{kind}_settled_blocks_per_s": round(blocks_n / settled, 1)}
    print(f"{kind:>9}: engine {out[f'{kind}_engine_blocks_per_s']} blocks/s (worker running); "
          f"{out[f'{kind}_applied_blocks_per_s']} blocks/s with the API stores; all settled and indexed at "
          f"{out[f'{kind}_settled_blocks_per_s']} blocks/s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agents", type=int, default=1_000)
    ap.add_argument("--blocks", type=int, default=100)
    args = ap.parse_args()
    res: dict[str, Any] = {"agents": args.agents, "blocks": args.blocks, "core_goal_blocks_per_s": 300}
    with tempfile.TemporaryDirectory(prefix="monmouth-bench-memory-sustained-") as tmp:
        for kind in ("episodes", "anchor"):
            res.update(run(kind, args.agents, args.blocks, Path(tmp)))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
