"""Vector search latency and recall at 100k and 1M vectors of 384 dimensions, with and without filters.

What is measured is the plugin's search path for large collections (``Searcher.vector``): the in-memory index
(:mod:`monmouth_rag.ann`) loaded from the ``rag_vec`` sqlite-vec table of a real SQLite file (so the load time after a
restart is reported too: nothing is re-embedded), binary-quantised Hamming prefilter, exact float rerank. Recall@10 is
measured against exact (exhaustive float32) search with the same filter.

Data: the vectors are synthetic but shaped like the model's output. Real all-MiniLM-L6-v2 embeddings of SciFact titles
are the seeds; each stored vector is ``normalise(0.7 * seed_i + 0.3 * seed_j + noise)``, so the collection keeps the
model's anisotropy and topic structure. Queries are real embeddings of SciFact test queries. Metadata columns get
random kinds, intents (9 values) and block numbers.

Usage: ``python bench/search.py [--sizes 100000,1000000] [--queries 200]``. The last line printed is JSON with
``p50_ms_1m``, ``p99_ms_1m``, ``recall_at_10_1m``, ``p99_ms_100k``, ``recall_at_10_100k`` and the filtered variants.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SCIFACT = ROOT.parent / "shared" / "data" / "scifact"


def seeds_and_queries(n_seeds: int, n_queries: int) -> tuple[np.ndarray, np.ndarray]:
    from monmouth_rag.config import RagConfig
    from monmouth_rag.embedder import load_embedder

    emb = load_embedder(RagConfig())
    titles = []
    for line in (SCIFACT / "corpus.jsonl").read_text().splitlines()[:n_seeds]:
        titles.append(json.loads(line)["title"])
    qids = {line.split("\t")[0] for line in (SCIFACT / "qrels" / "test.tsv").read_text().splitlines()[1:]}
    queries = [json.loads(x)["text"] for x in (SCIFACT / "queries.jsonl").read_text().splitlines()
               if json.loads(x)["_id"] in qids][:n_queries]
    return emb.embed(titles), emb.embed(queries)


def synth(seeds: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    i = rng.integers(0, len(seeds), n)
    j = rng.integers(0, len(seeds), n)
    x = 0.7 * seeds[i] + 0.3 * seeds[j] + 0.02 * rng.standard_normal((n, seeds.shape[1]), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def exact_topk(x: np.ndarray, q: np.ndarray, k: int, allowed: np.ndarray | None) -> list[set[int]]:
    out = []
    for s in range(0, len(q), 32):
        sims = q[s:s + 32] @ x.T
        if allowed is not None:
            sims[:, ~allowed] = -np.inf
        top = np.argpartition(-sims, k, axis=1)[:, :k]
        out += [set((t + 1).tolist()) for t in top]  # ids are row + 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--seeds", type=int, default=2000)
    args = ap.parse_args()

    from monmouth.store import Database, migrate
    from monmouth_rag.ann import VectorIndex
    from monmouth_rag.decoder import INTENTS
    from monmouth_rag.search import Filters, Searcher
    from monmouth_rag.store import MIGRATIONS, TRIMMED

    rng = np.random.default_rng(7)
    t0 = time.perf_counter()
    seeds, queries = seeds_and_queries(args.seeds, args.queries)
    print(f"{len(seeds)} real seed embeddings, {len(queries)} real query embeddings ({time.perf_counter() - t0:.1f} s)")
    sizes = [int(s) for s in args.sizes.split(",")]
    tmp = tempfile.TemporaryDirectory(prefix="rag-search-")  # removed at exit (1M vectors take ~1.6 GB)
    work = Path(tmp.name)
    db = Database(work / "db.sqlite", synchronous="NORMAL")
    conn = db.connect()
    migrate(conn, "rag", MIGRATIONS, set(TRIMMED))
    x = np.zeros((0, 384), np.float32)
    intents = np.zeros(0, np.int64)
    blocks = np.zeros(0, np.int64)
    result: dict[str, float | int | str] = {}
    for size in sizes:
        add = size - len(x)
        t = time.perf_counter()
        new = synth(seeds, add, rng)
        new_int = rng.integers(0, len(INTENTS), add)
        new_blk = rng.integers(0, 1_000_000, add)
        base = len(x)
        with conn:
            conn.executemany(
                "INSERT INTO rag_vec (rowid, embedding, kind, block_number, timestamp, intent, token) "
                "VALUES (?, ?, 'tx', ?, ?, ?, '')",
                ((base + i + 1, new[i].tobytes(), int(new_blk[i]), 1_600_000_000 + int(new_blk[i]) * 12,
                  INTENTS[new_int[i]]) for i in range(add)))
        x = np.concatenate([x, new])
        intents = np.concatenate([intents, new_int])
        blocks = np.concatenate([blocks, new_blk])
        print(f"\n== {size} vectors (generated and written to sqlite-vec in {time.perf_counter() - t:.1f} s)",
              flush=True)
        index = VectorIndex(384)
        t = time.perf_counter()
        index.load(conn)
        load_s = time.perf_counter() - t
        print(f"in-memory index loaded from SQLite in {load_s:.1f} s ({len(index)} vectors)")
        reader = db.connect()
        searcher = Searcher(lambda r=reader: r, lambda t: None, index, ann_min_vectors=0)
        tag = "1m" if size == 1_000_000 else f"{size // 1000}k"
        swap = INTENTS.index("swap")
        scenarios = {
            "": (Filters(), None),
            "_intent": (Filters(intents=("swap",)), intents == swap),
            "_blocks": (Filters(block_from=100_000, block_to=199_999), (blocks >= 100_000) & (blocks <= 199_999)),
        }
        for suffix, (flt, allowed) in scenarios.items():
            truth = exact_topk(x, queries, 10, allowed)
            for q in queries[:10]:
                searcher.vector(q, 10, flt)  # warm-up
            lat, rec = [], []
            for q, want in zip(queries, truth, strict=True):
                t = time.perf_counter()
                got = searcher.vector(q, 10, flt)
                lat.append((time.perf_counter() - t) * 1000)
                rec.append(len(want & {d for d, _ in got}) / 10)
            lat.sort()
            p50, p99 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]
            name = suffix.lstrip("_") or "none"
            print(f"filter {name:7s}: p50 {p50:6.1f} ms  p99 {p99:6.1f} ms  recall@10 {np.mean(rec):.3f}", flush=True)
            result[f"p50_ms_{tag}{suffix}"] = round(p50, 2)
            result[f"p99_ms_{tag}{suffix}"] = round(p99, 2)
            result[f"recall_at_10_{tag}{suffix}"] = round(float(np.mean(rec)), 4)
        result[f"load_s_{tag}"] = round(load_s, 2)
        # reference: exact sqlite-vec KNN (float, exhaustive) on a few queries
        t = time.perf_counter()
        for q in queries[:3]:
            reader.execute("SELECT rowid FROM rag_vec WHERE embedding MATCH ? AND k = 10", (q.tobytes(),)).fetchall()
        ref = (time.perf_counter() - t) / 3 * 1000
        print(f"reference: exact sqlite-vec float KNN {ref:.0f} ms per query")
        result[f"sqlite_vec_exact_ms_{tag}"] = round(ref, 1)
        reader.close()
        del index
    conn.close()
    tmp.cleanup()
    result["data"] = "synthetic mixtures of real MiniLM embeddings; real query embeddings"
    print(json.dumps(result))


if __name__ == "__main__":
    main()
