"""Memory plugin benchmark (issue 5): store, get, recall, root and proof latencies, and block apply time.

Setup: ``--agents`` agents (default 10,000) x ``--items`` items (default 100) written through the plugin's batch
store and anchored by one block, plus one agent with ``--recall-items`` (default 1,000) items for recall.
Everything runs in-process on a real SQLite file (``--synchronous``, default NORMAL). The plugin's worker thread is
not started (it would embed every item); its WAL checkpoints are done between timed operations instead.

Measured (milliseconds, p50 and p99):

* ``store``: one API store (encrypt, commit, index, one write transaction);
* ``get``: one API get of a random item (read, decrypt);
* ``recall``: top 10 by meaning among the recall agent's items (the rag plugin's MiniLM embedder when it loads,
  query embedding included; FTS5 otherwise: see ``recall_mode``); ``query_embed`` is the embedder's share;
  ``recall_search`` repeats the same queries (their embeddings cached): the plugin's own share;
* ``root`` / ``proof``: an agent's root and an item's proof at the head right after a write was anchored. Roots
  are computed lazily (``plugins/memory/lattice.py``), so ``root`` includes settling that new block and computing
  its global root (the changed agent's root, then the global tree over every agent); ``root_warm`` asks again;
  ``first_global_root_s`` is the very first global root after loading (every agent's tree, once);
* ``block_200_agents``: applying one block (the whole engine: journal, commit) whose chain hook anchors writes of
  200 agents; ``block_200_agents_hook`` is the memory plugin's chain hook alone in it (it records the block:
  ``plugins/memory/ingest.py``); ``block_200_agents_settle``: settling that block afterwards (the leaves and marks
  of the 200 agents: the worker thread's job in the sidecar). ``episodes_200_agents``: one block of 200
  transactions each touching a different agent (``episodes_200_agents_hook``: the memory hook's share);
  ``episodes_200_agents_settle``: settling it (render, encrypt, the
  item and leaf rows of its 200 chain-derived memories); ``episodes_200_agents_index``: indexing them afterwards
  (tags, FTS5 and the embedding queue, in the plugin's own transaction: the worker thread's job too).
  ``ingest_blocks_per_s``: blocks of 20 transactions between unregistered addresses applied one by one with the
  memory plugin enabled (``ingest_block_hook``: the memory hook's share). As with the runner
  (``storage.checkpoint_pages``), the engine connection never checkpoints inline; the WAL is checkpointed
  between timed operations. Compared with the core ingest goal (300 blocks/s, i.e. 3.3 ms per block).

Usage: ``python bench/memory.py [--agents N] [--items N] [--quick]``. The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import apsw
from prometheus_client import CollectorRegistry

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monmouth.config import validate  # noqa: E402
from monmouth.engine import Engine  # noqa: E402
from monmouth.metrics import Metrics  # noqa: E402
from monmouth.plugins import PluginHost, config_models  # noqa: E402
from monmouth.store import Database  # noqa: E402
from monmouth.types import Block, Chain, ChainCommitted, Receipt, Transaction  # noqa: E402
from monmouth_memory.plugin import MemoryPlugin  # noqa: E402
from tests.chains import h  # noqa: E402

_TEXT = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa quebec "
         "romeo sierra tango uniform victor whiskey xray yankee zulu vault ledger bridge token swap pool stake "
         "reward oracle price feed governance vote proposal treasury grant audit risk hedge yield loan")
WORDS = _TEXT.split(" ")


class _Rag:
    """The rag plugin's embedder as the memory plugin looks it up (``ctx.host.get("rag").get_embedder()``)."""

    def __init__(self, emb: Any) -> None:
        self.emb = emb

    def get_embedder(self) -> Any:
        return self.emb


def load_embedder() -> Any:
    try:
        from monmouth_rag.config import RagConfig
        from monmouth_rag.embedder import load_embedder as load

        return load(RagConfig())
    except Exception as e:  # no model installed: recall falls back to FTS5
        print(f"rag embedder unavailable ({type(e).__name__}: {e}); recall uses FTS5", file=sys.stderr)
        return None


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))] * 1000


def summary(name: str, xs: list[float]) -> dict[str, float]:
    out = {f"{name}_p50_ms": round(pct(xs, 50), 3), f"{name}_p99_ms": round(pct(xs, 99), 3),
           f"{name}_mean_ms": round(statistics.fmean(xs) * 1000, 3), f"{name}_max_ms": round(max(xs) * 1000, 3)}
    print(f"{name:>22}: p50 {out[f'{name}_p50_ms']:8.3f} ms   p99 {out[f'{name}_p99_ms']:8.3f} ms   "
          f"max {out[f'{name}_max_ms']:8.1f} ms   (n={len(xs)})", flush=True)
    return out


def sentence(rng: random.Random, n: int = 12) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def addr(i: int) -> bytes:
    return h("bench-agent", i)[:20]


class Bench:
    def __init__(self, path: Path, synchronous: str, embedder: Any) -> None:
        self.plugin = MemoryPlugin(workers=False)
        plugins: dict[str, object] = {"memory": self.plugin}
        if embedder is not None:
            plugins["rag"] = _Rag(embedder)
        self.db = Database(path, synchronous=synchronous)
        metrics = Metrics(CollectorRegistry())
        self.host = PluginHost(plugins, self.db, metrics.registry)
        data = {"plugins": {n: {"enabled": True} for n in plugins}, "storage": {"synchronous": synchronous}}
        data["plugins"]["memory"].update({"key_dir": str(path.parent / "keys"), "embed": embedder is not None})
        settings = validate(data, "<bench>", config_models(plugins))
        self.host.apply_settings(settings)
        self.engine = Engine(self.db, self.host, settings.engine, metrics)
        # As the runner does (storage.checkpoint_pages): no inline checkpoints on the engine's connection; the
        # WAL is checkpointed between timed operations here, on the runner's thread in the sidecar.
        self.engine.conn.pragma("wal_autocheckpoint", 0)
        self.mem = self.plugin.memory
        self.parent: Block | None = None
        self.number = 1

    def block(self, txs: tuple[Transaction, ...] = (), receipts: tuple[Receipt, ...] = ()) -> float:
        ph = self.parent.hash if self.parent else b"\x00" * 32
        b = Block(self.number, h("bench-block", self.number), ph, 1_700_000_000 + 12 * self.number, b"\x00" * 20,
                  30_000_000, 0, 10**9, txs, receipts)
        t0 = time.perf_counter()
        self.engine.apply(ChainCommitted(Chain((b,))))
        dt = time.perf_counter() - t0
        self.parent, self.number = b, self.number + 1
        return dt

    def close(self) -> None:
        self.host.shutdown()
        self.engine.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agents", type=int, default=10_000)
    ap.add_argument("--items", type=int, default=100)
    ap.add_argument("--recall-items", type=int, default=1_000)
    ap.add_argument("--samples", type=int, default=1_000)
    ap.add_argument("--synchronous", choices=("NORMAL", "FULL"), default="NORMAL")
    ap.add_argument("--block-samples", type=int, default=100, help="200-agent blocks of each kind timed")
    ap.add_argument("--quick", action="store_true", help="1,000 agents x 100 items, fewer samples")
    ap.add_argument("--no-embedder", action="store_true", help="recall with FTS5 even if the rag model loads")
    args = ap.parse_args()
    if args.quick:
        args.agents, args.samples, args.block_samples = 1_000, 300, 30
    rng = random.Random(5)
    emb = None if args.no_embedder else load_embedder()
    with tempfile.TemporaryDirectory(prefix="monmouth-bench-memory-") as tmp:
        b = Bench(Path(tmp) / "db.sqlite", args.synchronous, emb)
        mem = b.mem
        b.block()
        agents = [addr(i) for i in range(args.agents)]
        t0 = time.perf_counter()
        with mem._write() as conn:
            for a in agents:
                mem.keys.create(a)
                conn.execute("INSERT INTO memory_agents (address, label, source, created_at) VALUES (?, NULL, "
                             "'bench', ?)", (a, time.time()))
        t_reg = time.perf_counter() - t0
        t0 = time.perf_counter()
        ids: list[tuple[bytes, bytes]] = []
        for i, a in enumerate(agents):
            n = args.recall_items if i == 0 else args.items
            out = mem.store_batch(a, [{"kind": "semantic", "content": sentence(rng), "tags": [rng.choice(WORDS)]}
                                      for _ in range(n)])
            ids.extend((a, bytes.fromhex(o["id"][2:])) for o in out)
            if (i + 1) % 1000 == 0:
                print(f"  loaded {i + 1}/{len(agents)} agents ({len(ids)} items, "
                      f"{len(ids) / (time.perf_counter() - t0):.0f} items/s)", file=sys.stderr)
        t_load = time.perf_counter() - t0
        t_anchor = b.block()
        t0 = time.perf_counter()
        mem.ensure_settled()  # the worker's job: the anchored items' leaves and marks
        t_anchor += time.perf_counter() - t0
        t0 = time.perf_counter()
        mem.global_root()
        t_first_root = time.perf_counter() - t0
        b.block()  # persists the roots just computed (memory_root_cache), as the next block always does
        print(f"first global root after loading (every agent's tree): {t_first_root:.1f} s")
        print(f"setup: {len(agents)} agents registered in {t_reg:.1f} s; {len(ids)} items stored in {t_load:.1f} s "
              f"({len(ids) / t_load:.0f}/s); anchored by one block in {t_anchor:.1f} s")
        mem._read().wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)  # as the plugin's worker would
        gc.collect()
        gc.freeze()  # the bench's own million ids are not the sidecar's: keep them out of timed GC passes
        db_mb = (Path(tmp) / "db.sqlite").stat().st_size / 2**20
        wal = Path(tmp) / "db.sqlite-wal"
        print(f"database: {db_mb:.0f} MiB (+ WAL {wal.stat().st_size / 2**20 if wal.exists() else 0:.0f} MiB)")
        if emb is not None:
            # Only the recall agent's items are embedded here (MiniLM on 2 cores embeds a few hundred texts/s).
            with mem._write() as conn:
                conn.execute("DELETE FROM memory_embed_queue WHERE n NOT IN (SELECT n FROM memory_items WHERE "
                             "agent = ?)", (agents[0],))
            t0 = time.perf_counter()
            while mem.embed_pending(256):
                pass
            print(f"embedded the recall agent's {args.recall_items} items in {time.perf_counter() - t0:.1f} s",
                  flush=True)
        res: dict[str, Any] = {"agents": len(agents), "items": len(ids), "synchronous": args.synchronous,
                               "load_items_per_s": round(len(ids) / t_load), "anchor_all_s": round(t_anchor, 2),
                               "first_global_root_s": round(t_first_root, 2)}

        stores = []
        for j in range(args.samples):
            if j % 200 == 0:  # the plugin's worker thread checkpoints the WAL every 2 s (not timed)
                mem.db.checkpoint_wal()
            a = rng.choice(agents)
            t0 = time.perf_counter()
            mem.store(a, "semantic", sentence(rng), tags=["bench"])
            stores.append(time.perf_counter() - t0)
        res.update(summary("store", stores))
        gets = []
        for _ in range(args.samples):
            a, i = rng.choice(ids)
            t0 = time.perf_counter()
            mem.get(a, i)
            gets.append(time.perf_counter() - t0)
        res.update(summary("get", gets))
        b.block()  # anchor the stores above

        recalls, qs = [], []
        for _ in range(min(args.samples, 300)):
            q = sentence(rng, 6)
            qs.append(q)
            t0 = time.perf_counter()
            r = mem.recall(agents[0], q, k=10)
            recalls.append(time.perf_counter() - t0)
        res["recall_mode"] = r["mode"]
        res.update(summary("recall", recalls))
        searches = []  # the last 200 queries again: their embeddings are cached (LRU of 256), so recall minus embedding
        for q in qs[-200:]:
            t0 = time.perf_counter()
            mem.recall(agents[0], q, k=10)
            searches.append(time.perf_counter() - t0)
        res.update(summary("recall_search", searches))
        if emb is not None:  # the rag embedder's share of recall: embedding the query alone
            embeds = []
            for _ in range(min(args.samples, 300)):
                q = sentence(rng, 6)
                t0 = time.perf_counter()
                emb.embed([q])
                embeds.append(time.perf_counter() - t0)
            res.update(summary("query_embed", embeds))

        roots, warm, proofs, applies = [], [], [], []
        for _ in range(min(args.samples, 200)):
            a = rng.choice(agents[1:])
            iid = bytes.fromhex(mem.store(a, "semantic", sentence(rng))["id"][2:])
            if len(applies) % 50 == 49:
                mem.db.checkpoint_wal()  # the runner's job (not timed)
            applies.append(b.block())
            t0 = time.perf_counter()
            mem.agent_root(a)
            roots.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            mem.agent_root(a)
            warm.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            mem.proof(a, iid)
            proofs.append(time.perf_counter() - t0)
        res.update(summary("root", roots))
        res.update(summary("root_warm", warm))
        res.update(summary("proof", proofs))
        res.update(summary("block_1_agent", applies))

        hook: list[float] = []
        apply_block = mem.apply_block

        def timed_hook(conn: Any, block: Any) -> None:
            t0 = time.perf_counter()
            apply_block(conn, block)
            hook.append(time.perf_counter() - t0)

        mem.apply_block = timed_hook  # type: ignore[method-assign]
        blocks, settles = [], []
        for _ in range(args.block_samples):
            for a in rng.sample(agents[1:], min(200, len(agents) - 1)):
                mem.store(a, "semantic", sentence(rng))
            mem.db.checkpoint_wal()  # the worker's job (not timed)
            hook.clear()
            blocks.append(b.block())
            hook_200 = hook[0] if hook else 0.0
            res.setdefault("_hook", []).append(hook_200)
            t0 = time.perf_counter()
            mem.ensure_settled()  # the worker's job after the block: leaves and marks of the 200 agents
            settles.append(time.perf_counter() - t0)
        res.update(summary("block_200_agents", blocks))
        res.update(summary("block_200_agents_hook", res.pop("_hook")))
        res.update(summary("block_200_agents_settle", settles))
        with mem._write() as conn:  # the store samples queued embeddings the recall agent does not need
            conn.execute("DELETE FROM memory_embed_queue")
        eps: list[float] = []
        eps_settle: list[float] = []
        idx: list[float] = []
        for _ in range(args.block_samples):
            sample = rng.sample(agents[1:], min(200, len(agents) - 1))
            txs = tuple(Transaction(h("bench-tx", b.number, i), 2, h("sender", i)[:20], a, 10**15, b"", i, 21_000,
                                    None, 10**10, 10**9, 1) for i, a in enumerate(sample))
            rcs = tuple(Receipt(1, 21_000 * (i + 1)) for i in range(len(txs)))
            mem.db.checkpoint_wal()  # the runner's job (not timed)
            hook.clear()
            eps.append(b.block(txs, rcs))
            res.setdefault("_ehook", []).append(hook[0] if hook else 0.0)
            t0 = time.perf_counter()
            mem.ensure_settled()  # the worker's job after the block: render, encrypt, item and leaf rows
            eps_settle.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            mem.ensure_indexed()  # the worker's job after the block: tags, FTS5 and embedding queue of its episodes
            idx.append(time.perf_counter() - t0)
        res.update(summary("episodes_200_agents", eps))
        res.update(summary("episodes_200_agents_hook", res.pop("_ehook")))
        res.update(summary("episodes_200_agents_settle", eps_settle))
        res.update(summary("episodes_200_agents_index", idx))
        plain = []
        mem.db.checkpoint_wal()  # the worker's job (not timed)
        hook.clear()
        for j in range(300):
            if j % 100 == 99:  # the worker's periodic passive checkpoint, on its own thread in the sidecar
                mem.db.checkpoint_wal()
            txs = tuple(Transaction(h("bench-tx2", b.number, i), 2, h("sender", i)[:20], h("to", i)[:20], 10**15,
                                    b"", i, 21_000, None, 10**10, 10**9, 1) for i in range(20))
            rcs = tuple(Receipt(1, 21_000 * (i + 1)) for i in range(len(txs)))
            plain.append(b.block(txs, rcs))
        mem.apply_block = apply_block  # type: ignore[method-assign]
        res["ingest_blocks_per_s"] = round(len(plain) / sum(plain))
        print(f"{'ingest':>22}: {res['ingest_blocks_per_s']} blocks/s (20 transactions each, no agent touched)")
        res.update(summary("ingest_block", plain))
        res.update(summary("ingest_block_hook", hook))
        res["core_goal_block_ms"] = round(1000 / 300, 2)
        b.close()
    print(json.dumps(res))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
