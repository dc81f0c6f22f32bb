"""Retrieval quality on BEIR SciFact (Wadden et al. 2020; Thakur et al. 2021), measured against MTEB's published
figure for all-MiniLM-L6-v2 (nDCG@10 = 0.64508, fp32 weights, ``title + " " + text``, cosine, exhaustive ranking).

The corpus (``../shared/data/scifact/corpus.jsonl``) goes in through the document path (``add_document``: token
chunking, FTS5, the embedding worker), the 300 test queries through the search code path of ``POST /rag/search``
(``monmouth_rag.plugin.search``). Chunk hits are folded into documents by their best chunk. nDCG@10 uses linear gains
and the ideal ranking of the qrels (as trec_eval / pytrec_eval, which MTEB uses).

Usage: ``python bench/retrieval_scifact.py [--chunk-tokens 254] [--overlap 32] [--limit-docs N]``.
The last line printed is JSON with ``ndcg_at_10`` (vector mode), ``ndcg_at_10_hybrid`` and ``ndcg_at_10_keyword``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "scifact"
MTEB_NDCG10 = 0.64508


def load(limit_docs: int | None, seed: int = 0) -> tuple[dict[str, str], dict[str, str], dict[str, dict[str, int]]]:
    qrels: dict[str, dict[str, int]] = {}
    for line in (DATA / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        q, d, s = line.split("\t")
        qrels.setdefault(q, {})[d] = int(s)
    queries = {}
    for line in (DATA / "queries.jsonl").read_text().splitlines():
        o = json.loads(line)
        if o["_id"] in qrels:
            queries[o["_id"]] = o["text"]
    corpus = {}
    for line in (DATA / "corpus.jsonl").read_text().splitlines():
        o = json.loads(line)
        corpus[o["_id"]] = (o.get("title") or "") + " " + (o.get("text") or "")
    if limit_docs and limit_docs < len(corpus):
        relevant = {d for r in qrels.values() for d in r}
        others = sorted(set(corpus) - relevant)
        random.Random(seed).shuffle(others)
        keep = relevant | set(others[:max(0, limit_docs - len(relevant))])
        corpus = {k: v for k, v in corpus.items() if k in keep}
    return corpus, queries, qrels


def ndcg_at_10(ranked: list[str], rels: dict[str, int]) -> float:
    dcg = sum(rels.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:10]))
    ideal = sorted(rels.values(), reverse=True)[:10]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunk-tokens", type=int, default=254, help="254 = the model's 256 minus [CLS]/[SEP], as MTEB")
    ap.add_argument("--overlap", type=int, default=32)
    ap.add_argument("--limit-docs", type=int, default=None, help="relevant documents plus random others (dev runs)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--keep", type=Path, default=None, help="keep the database at this directory")
    args = ap.parse_args()

    import monmouth_rag.plugin as rag
    from monmouth.app import open_app

    corpus, queries, qrels = load(args.limit_docs)
    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="scifact-")
    work = args.keep or Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    cfg = work / "config.toml"
    cfg.write_text(f'[storage]\npath = "db.sqlite"\nsynchronous = "NORMAL"\n\n[plugins.rag]\nenabled = true\n'
                   f"worker = false\nchunk_tokens = {args.chunk_tokens}\nchunk_overlap = {args.overlap}\n"
                   f"batch_size = {args.batch_size}\nworker_batch = 512\n")
    app = open_app(cfg)
    try:
        assert app.host.is_enabled("rag"), app.host.errors
        t0 = time.perf_counter()
        have = {r[0] for r in app.db.reader().execute("SELECT DISTINCT doc_id FROM rag_docs WHERE kind='document'")}
        chunks = 0
        for doc_id, text in corpus.items():
            if doc_id not in have:
                chunks += rag.add_document(doc_id, text)["chunks"]
        t_ingest = time.perf_counter() - t0
        t0 = time.perf_counter()
        rag.drain()
        t_embed = time.perf_counter() - t0
        n_chunks = app.db.reader().execute("SELECT count(*) FROM rag_docs").fetchone()[0]
        print(f"corpus: {len(corpus)} documents, {n_chunks} chunks; ingest {t_ingest:.1f} s, embed {t_embed:.1f} s "
              f"({(chunks or n_chunks) / max(t_embed, 1e-9):.1f} chunks/s)", flush=True)

        emb = rag.get_embedder()
        qids = sorted(queries)
        qvecs = emb.embed([queries[q] for q in qids])
        scores: dict[str, float] = {}
        lat: dict[str, list[float]] = {}
        for mode in ("vector", "hybrid", "keyword"):
            total = 0.0
            lat[mode] = []
            for i, q in enumerate(qids):
                t = time.perf_counter()
                if mode == "vector":  # the same code path, with the query vector computed in one batch above
                    hits = rag.state().searcher.search(queries[q], 50, mode, None, qvec=qvecs[i])
                else:
                    hits = rag.search(queries[q], 50, mode)
                lat[mode].append(time.perf_counter() - t)
                ranked: list[str] = []
                for h in hits:
                    d = h.provenance["doc_id"]
                    if d not in ranked:
                        ranked.append(d)
                total += ndcg_at_10(ranked, qrels[q])
            scores[mode] = total / len(qids)
            lat[mode].sort()
            print(f"{mode:8s} nDCG@10 = {scores[mode]:.5f}  (p50 {1000 * lat[mode][len(qids) // 2]:.1f} ms per "
                  "query)", flush=True)
        print(f"MTEB reference (fp32, truncation at 256 tokens): {MTEB_NDCG10}")
        print(json.dumps({
            "ndcg_at_10": round(scores["vector"], 5), "ndcg_at_10_hybrid": round(scores["hybrid"], 5),
            "ndcg_at_10_keyword": round(scores["keyword"], 5), "mteb_reference": MTEB_NDCG10,
            "queries": len(qids), "documents": len(corpus), "chunks": n_chunks, "chunk_tokens": args.chunk_tokens,
            "chunk_overlap": args.overlap, "embed_seconds": round(t_embed, 1),
            "p50_ms_vector": round(1000 * lat["vector"][len(qids) // 2], 2),
            "p50_ms_hybrid": round(1000 * lat["hybrid"][len(qids) // 2], 2),
        }))
    finally:
        app.close()
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
