"""Embedding throughput on decoded mainnet transactions: texts per second by batch size and onnxruntime thread count,
with the default model (int8 all-MiniLM-L6-v2, 256-token truncation).

Texts are the decoder's compact renderings (``embed_text``, what the plugin embeds) of the transactions of
``../shared/data/mainnet``; the full documents (``render``, truncated at 256 tokens) are measured too at the best
configuration.
Each configuration embeds the same ``--texts`` texts once after a warm-up run; the bucketing figure compares the
embedder (length-bucketed) with the same batches taken in arrival order.

Usage: ``python bench/embed.py [--texts 256] [--batch-sizes 8,32,64] [--threads 1,2]``.
The last line printed is JSON; ``texts_per_s`` is the best configuration's throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--texts", type=int, default=256)
    ap.add_argument("--batch-sizes", default="8,32,64")
    ap.add_argument("--threads", default="1,2")
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
    print(json.dumps({"texts_per_s": best["texts_per_s"], "best": best, "bucketed_texts_per_s": round(bucketed, 1),
                      "unbucketed_texts_per_s": round(unbucketed, 1), "full_text_texts_per_s": round(full_rate, 1),
                      "configs": results,
                      "mean_tokens": round(float(np.mean(lens)), 1), "texts": len(texts)}))


if __name__ == "__main__":
    main()
