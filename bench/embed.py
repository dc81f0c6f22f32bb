"""Embedding throughput on decoded mainnet transactions: texts per second by batch size and onnxruntime thread count,
with the default model (int8 all-MiniLM-L6-v2, 256-token truncation).

Texts are the decoder's compact renderings (``embed_text``, what the plugin embeds) of the transactions of
``../shared/data/mainnet``; the full documents (``render``, truncated at 256 tokens) are measured too at the best
configuration.
Each configuration embeds the same ``--texts`` texts once after a warm-up run; the bucketing figure compares the
embedder (length-bucketed) with the same batches taken in arrival order.

The end-to-end part (issue 18, goal 4) compares, for each thread count and batch size, the rag plugin's embedding
worker with raw onnxruntime in the same run: ``--blocks`` mainnet-shaped blocks are applied by the engine with the
rag plugin (its worker off), then ``RagPlugin.drain()`` embeds and stores everything pending (take the pending rows,
tokenize, length-bucket, run, pool, normalise, write the vectors); the reference is the same model's
``InferenceSession.run`` alone (same session options) on the same distinct texts in the same batch shapes as the
worker formed (its rounds, its slices, its length buckets), the inputs padded before timing; the bench fails if the
worker ran other input shapes than the reference (as it did before the worker sorted its rounds shortest first, an
unfair comparison). The two run round by round in lockstep (the machine is shared). Both are counted in distinct
texts per second; the ratio is worker / raw. The worker's share of its time spent inside ``InferenceSession.run`` is
printed too: unlike the ratio, it does not depend on the load changing between the two sides.

Usage: ``python bench/embed.py [--texts 256] [--batch-sizes 8,32,64] [--threads 1,2] [--blocks 4]``.
The last line printed is JSON; ``texts_per_s`` is the best configuration's throughput, ``worker_texts_per_s`` /
``raw_texts_per_s`` / ``worker_ratio`` the end-to-end figures at the best end-to-end configuration, ``end_to_end``
every configuration's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def worker_shapes(texts: list[str], round_size: int, slice_size: int, batch_size: int,
                  lengths: dict[str, int]) -> list[list[list[str]]]:
    """The ONNX batches the rag worker forms from ``texts`` (pending order): rounds of ``round_size`` documents, each
    round's texts not embedded before, shortest first (characters), ``slice_size`` at a time (one ``Embedder.embed``
    call each), sorted by token count and cut into runs of ``batch_size``. One list of batches per round."""
    seen: set[str] = set()
    rounds: list[list[list[str]]] = []
    for r in range(0, len(texts), round_size):
        todo = sorted(dict.fromkeys(t for t in texts[r:r + round_size] if t not in seen), key=len)
        seen.update(todo)
        batches: list[list[str]] = []
        for s in range(0, len(todo), slice_size):
            part = sorted(todo[s:s + slice_size], key=lambda t: lengths[t])
            batches += [part[b:b + batch_size] for b in range(0, len(part), batch_size)]
        rounds.append(batches)
    return rounds


def end_to_end(blocks: list[object], batch_size: int, threads: int, tmp: Path) -> dict[str, float]:
    """The rag worker's distinct texts per second beside raw onnxruntime's on the same texts and batch shapes."""
    from monmouth.types import Chain, ChainCommitted
    from monmouth_rag.plugin import plugin as rag_plugin
    from monmouth_rag.store import take_pending
    from monmouth_rag.worker import STOP_CHECK_TEXTS
    from tests.test_rag_support import Rig

    rig = Rig(tmp / f"e2e-{batch_size}-{threads}.sqlite", worker=False, batch_size=batch_size, threads=threads)
    try:
        rig.engine.apply(ChainCommitted(Chain(tuple(blocks))))  # type: ignore[arg-type]
        state = rag_plugin.state()
        emb, cfg = state.embedder, state.cfg
        texts = [d.text for d in take_pending(rig.db.reader(), 1 << 30)]
        distinct = list(dict.fromkeys(texts))
        ids = {t: e.ids for t, e in zip(distinct, emb.tokenizer.encode_batch(distinct), strict=True)}
        rounds = worker_shapes(texts, cfg.worker_batch, STOP_CHECK_TEXTS, batch_size, {t: len(ids[t]) for t in ids})
        feeds: list[list[dict[str, np.ndarray]]] = []
        for batches in rounds:
            feeds.append([])
            for batch in batches:
                width = max(len(ids[t]) for t in batch)
                input_ids = np.zeros((len(batch), width), dtype=np.int64)
                for i, t in enumerate(batch):
                    input_ids[i, :len(ids[t])] = ids[t]
                feed = {"input_ids": input_ids, "attention_mask": (input_ids != 0).astype(np.int64)}
                if "token_type_ids" in emb._inputs:
                    feed["token_type_ids"] = np.zeros_like(input_ids)
                feeds[-1].append(feed)
        # Warm-up, not timed: onnxruntime's first run of each input shape allocates its buffers, a cost whichever
        # side met the shape first would pay (the worker's text cache is its own, so this does not help it).
        for round_feeds in feeds:
            for feed in round_feeds:
                emb.session.run(None, feed)

        def raw(i: int) -> None:
            for feed in feeds[i]:
                emb.session.run(None, feed)

        class Timed:
            """The embedder's session, timing its ``run`` calls: the worker's share of time in onnxruntime itself."""

            def __init__(self, session: Any) -> None:
                self.session, self.seconds = session, 0.0
                self.shapes: list[tuple[int, ...]] = []

            def run(self, *a: Any) -> Any:
                self.shapes.append(a[1]["input_ids"].shape)
                t = time.perf_counter()
                try:
                    return self.session.run(*a)
                finally:
                    self.seconds += time.perf_counter() - t

        timed = Timed(emb.session)

        def worker(i: int) -> None:
            emb.session = timed
            timed.shapes.clear()
            try:
                taken[0] += state.worker.step()
            finally:
                emb.session = timed.session
            # The reference is fair only if it runs what the worker ran: the same batch shapes, in the same order.
            expected = [feed["input_ids"].shape for feed in feeds[i]]
            if timed.shapes != expected:
                raise AssertionError(f"round {i}: the rag worker ran input shapes {timed.shapes}, the raw reference "
                                     f"{expected}; worker_shapes() no longer mirrors monmouth_rag.worker")

        # Round by round in lockstep (which goes first alternates), so both see the same load on a shared machine.
        taken = [0]
        took = {raw: 0.0, worker: 0.0}
        for i in range(len(rounds)):
            for side in (raw, worker) if i % 2 else (worker, raw):
                t = time.perf_counter()
                side(i)
                took[side] += time.perf_counter() - t
        raw_s, worker_s = took[raw], took[worker]
        assert taken[0] == len(texts) and state.worker.step() == 0, (taken, len(texts))
    finally:
        rig.close()
    out = {"batch_size": batch_size, "threads": threads, "texts": len(distinct),
           "raw_texts_per_s": round(len(distinct) / raw_s, 1), "worker_texts_per_s": round(len(distinct) / worker_s, 1),
           "worker_ratio": round(raw_s / worker_s, 3), "worker_onnx_share": round(timed.seconds / worker_s, 3)}
    print(f"end to end, batch {batch_size:3d} threads {threads}: rag worker {out['worker_texts_per_s']:7.1f} texts/s, "
          f"raw onnxruntime {out['raw_texts_per_s']:7.1f} texts/s (same {len(distinct)} texts, "
          f"{sum(map(len, rounds))} batches): ratio {out['worker_ratio']:.3f} (goal >= 0.9); "
          f"{out['worker_onnx_share']:.1%} of the worker's time in onnxruntime's run", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--texts", type=int, default=256)
    ap.add_argument("--batch-sizes", default="8,32,64")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--blocks", type=int, default=4, help="mainnet-shaped blocks of 200 transactions end to end")
    args = ap.parse_args()

    from monmouth_rag.config import RagConfig
    from monmouth_rag.decoder import decode_transaction, render_transaction
    from monmouth_rag.embedder import Embedder, locate_model
    from monmouth_rag.render import embed_text
    from tests.chains import load_mainnet_blocks

    blocks = load_mainnet_blocks()
    pairs = [(b, i) for b in blocks for i in range(len(b.transactions))][:args.texts]
    texts = [embed_text(decode_transaction(b, i)) for b, i in pairs]
    full = [render_transaction(b, i) for b, i in pairs]
    files = locate_model(RagConfig())
    e0 = Embedder(files.onnx, files.tokenizer)
    lens = [min(len(x.ids), 256) for x in e0.tokenizer.encode_batch(texts)]
    print(f"{len(texts)} decoded mainnet transactions, tokens per text (truncated at 256): mean {np.mean(lens):.0f}, "
          f"p50 {int(np.median(lens))}, max {max(lens)}; {os.cpu_count()} cores")
    results = []
    for threads in [int(x) for x in args.threads.split(",")]:
        for bs in [int(x) for x in args.batch_sizes.split(",")]:
            e = Embedder(files.onnx, files.tokenizer, batch_size=bs, threads=threads)
            e.embed(texts[:bs])  # warm-up
            t = time.perf_counter()
            e.embed(texts)
            dt = time.perf_counter() - t
            results.append({"batch_size": bs, "threads": threads, "texts_per_s": round(len(texts) / dt, 1)})
            print(f"batch {bs:3d} threads {threads}: {len(texts) / dt:7.1f} texts/s", flush=True)
    best = max(results, key=lambda r: r["texts_per_s"])
    # bucketing on/off at the best configuration
    e = Embedder(files.onnx, files.tokenizer, batch_size=best["batch_size"], threads=best["threads"])
    ids = [x.ids for x in e.tokenizer.encode_batch(texts)]
    t = time.perf_counter()
    for s in range(0, len(ids), e.batch_size):
        e._run(ids[s:s + e.batch_size])
    unbucketed = len(texts) / (time.perf_counter() - t)
    t = time.perf_counter()
    e.embed(texts)
    bucketed = len(texts) / (time.perf_counter() - t)
    t = time.perf_counter()
    e.embed(full)
    full_rate = len(full) / (time.perf_counter() - t)
    print(f"best: batch {best['batch_size']}, threads {best['threads']}; length-bucketed {bucketed:.1f} texts/s vs "
          f"arrival order {unbucketed:.1f} texts/s; full documents (256 tokens) {full_rate:.1f} texts/s")
    import tempfile

    from tests.chains import mainnet_shaped

    chain_blocks = list(mainnet_shaped(blocks, args.blocks, txs_per_block=200))
    e2e = []
    with tempfile.TemporaryDirectory(prefix="monmouth-bench-embed-") as tmp:
        for threads in [int(x) for x in args.threads.split(",")]:
            for bs in [int(x) for x in args.batch_sizes.split(",")]:
                e2e.append(end_to_end(chain_blocks, bs, threads, Path(tmp)))
    top = max(e2e, key=lambda r: r["worker_texts_per_s"])
    print(f"best end to end: batch {top['batch_size']}, threads {top['threads']}: rag worker "
          f"{top['worker_texts_per_s']} texts/s vs raw onnxruntime {top['raw_texts_per_s']} texts/s, ratio "
          f"{top['worker_ratio']}")
    print(json.dumps({"worker_texts_per_s": top["worker_texts_per_s"], "raw_texts_per_s": top["raw_texts_per_s"],
                      "worker_ratio": top["worker_ratio"], "worker_onnx_share": top["worker_onnx_share"],
                      "worker_best": {"batch_size": top["batch_size"],
                                                                           "threads": top["threads"]},
                      "end_to_end": e2e,
                      "texts_per_s": best["texts_per_s"], "best": best, "bucketed_texts_per_s": round(bucketed, 1),
                      "unbucketed_texts_per_s": round(unbucketed, 1), "full_text_texts_per_s": round(full_rate, 1),
                      "configs": results,
                      "mean_tokens": round(float(np.mean(lens)), 1), "texts": len(texts)}))


if __name__ == "__main__":
    main()
