"""Retrieval quality on BEIR SciFact (Wadden et al. 2020; Thakur et al. 2021), measured against MTEB's published
figure for all-MiniLM-L6-v2 (nDCG@10 = 0.64508, fp32 weights, ``title + " " + text``, cosine, exhaustive ranking).

The corpus (``../shared/data/scifact/corpus.jsonl``) goes in through the document path (``add_document``: token
chunking, FTS5, the embedding worker), the 300 test queries through the search code path of ``POST /rag/search``
(``monmouth_rag.plugin.search``). Chunk hits are folded into documents by their best chunk. nDCG@10 uses linear gains
and the ideal ranking of the qrels (as trec_eval / pytrec_eval, which MTEB uses).

With ``--storage postgres`` (issue 15) the SQLite database is then moved to PostgreSQL with ``monmouth storage
copy``'s code (:func:`monmouth.storagecopy.copy_to_postgres`: the same float32 vectors into pgvector, the keyword
index rebuilt as ``tsvector``; re-embedding the corpus would take another quarter of an hour and give the same
vectors), the plugin starts on it (building pgvector's HNSW index with ``pg_knn = "hnsw"``, the default), the same
queries run through the same search code with the PostgreSQL statements (:mod:`monmouth_rag.dialect`: HNSW KNN,
BM25 for keywords), and SQLite's figures are printed beside PostgreSQL's with their differences. The server
is ``--pg-url`` (an empty database; password in ``MONMOUTH_PG_PASSWORD``) or, without it, a throwaway one from
tests/pg.py (with the pgvector of tests/pgvector.py when built).

Usage: ``python bench/retrieval_scifact.py [--chunk-tokens 254] [--overlap 32] [--limit-docs N] [--storage postgres
[--pg-knn hnsw] [--pg-ef 100] [--pg-url URL]]``.
The last line printed is JSON with ``ndcg_at_10`` (vector mode), ``ndcg_at_10_hybrid`` and ``ndcg_at_10_keyword``;
with ``--storage postgres`` also the same three with the suffix ``_postgres`` and ``delta_ndcg_at_10{,_hybrid,
_keyword}`` (PostgreSQL minus SQLite).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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


MODES = ("vector", "hybrid", "keyword")


def config(args: argparse.Namespace, work: Path, storage: str) -> Path:
    """``work/config.toml``: rag enabled without its background worker, the bench's chunking, ``storage``'s body."""
    cfg = work / "config.toml"
    cfg.write_text(f"[storage]\n{storage}\n\n[plugins.rag]\nenabled = true\n"
                   f"worker = false\nchunk_tokens = {args.chunk_tokens}\nchunk_overlap = {args.overlap}\n"
                   f"batch_size = {args.batch_size}\nworker_batch = 512\n"
                   f'pg_knn = "{args.pg_knn}"\npg_ef_search = {args.pg_ef}\n')
    return cfg


def ingest(app: Any, corpus: dict[str, str]) -> dict[str, Any]:
    """Every document of ``corpus`` not yet stored through ``add_document``, then the embedding worker's
    ``drain``: ``{"chunks", "embed_s"}``."""
    import monmouth_rag.plugin as rag

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
    return {"chunks": n_chunks, "embed_s": t_embed}


def rank(app: Any, queries: dict[str, str], qrels: dict[str, dict[str, int]]) -> dict[str, dict[str, float]]:
    """Each query's top 50 in each mode through the search code path, folded to documents:
    ``{"ndcg": {mode: mean nDCG@10}, "p50_ms": {mode: median ms per query}}``."""
    import monmouth_rag.plugin as rag

    emb = rag.get_embedder()
    qids = sorted(queries)
    qvecs = emb.embed([queries[q] for q in qids])
    scores: dict[str, float] = {}
    p50: dict[str, float] = {}
    for mode in MODES:
        total = 0.0
        lat = []
        for i, q in enumerate(qids):
            t = time.perf_counter()
            if mode == "vector":  # the same code path, with the query vector computed in one batch above
                hits = rag.state().searcher.search(queries[q], 50, mode, None, qvec=qvecs[i])
            else:
                hits = rag.search(queries[q], 50, mode)
            lat.append(time.perf_counter() - t)
            ranked: list[str] = []
            for h in hits:
                d = h.provenance["doc_id"]
                if d not in ranked:
                    ranked.append(d)
            total += ndcg_at_10(ranked, qrels[q])
        scores[mode] = total / len(qids)
        lat.sort()
        p50[mode] = 1000 * lat[len(qids) // 2]
        print(f"{app.db.backend:8s} {mode:8s} nDCG@10 = {scores[mode]:.5f}  (p50 {p50[mode]:.1f} ms per query)",
              flush=True)
    return {"ndcg": scores, "p50_ms": p50}


def on_postgres(args: argparse.Namespace, sqlite_cfg: Path, work: Path, queries: dict[str, str],
                qrels: dict[str, dict[str, int]]) -> dict[str, dict[str, float]]:
    """Copy the SQLite deployment of ``sqlite_cfg`` into ``--pg-url`` (or a fresh database of a throwaway
    tests/pg.py server), start the plugin on it and :func:`rank` there."""
    with contextlib.ExitStack() as stack:
        url, environ = args.pg_url, dict(os.environ)
        if not url:
            from tests import pgvector
            from tests.pg import PASSWORD, PgServer

            print(pgvector.describe(), flush=True)
            server = stack.enter_context(PgServer())
            url, environ = server.database(), {**environ, "MONMOUTH_PG_PASSWORD": PASSWORD}
        from monmouth.app import load_settings, open_app
        from monmouth.backends.postgres import PgDatabase
        from monmouth.storagecopy import copy_to_postgres

        settings, installed = load_settings(sqlite_cfg)
        t = time.perf_counter()
        copied = copy_to_postgres(settings, installed, PgDatabase(url, password=environ.get("MONMOUTH_PG_PASSWORD")))
        print(f"copied to PostgreSQL in {time.perf_counter() - t:.1f} s: {copied.tables.get('rag_vec')} vectors",
              flush=True)
        work.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        app = stack.enter_context(contextlib.closing(open_app(config(args, work, f'url = "{url}"'), environ=environ)))
        assert app.host.is_enabled("rag"), app.host.errors
        print(f"rag started on PostgreSQL (pg_knn {args.pg_knn}: index built) in {time.perf_counter() - t:.1f} s",
              flush=True)
        return rank(app, queries, qrels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunk-tokens", type=int, default=254, help="254 = the model's 256 minus [CLS]/[SEP], as MTEB")
    ap.add_argument("--overlap", type=int, default=32)
    ap.add_argument("--limit-docs", type=int, default=None, help="relevant documents plus random others (dev runs)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--keep", type=Path, default=None, help="keep the SQLite database at this directory")
    ap.add_argument("--storage", choices=("sqlite", "postgres"), default="sqlite",
                    help="postgres: also run on PostgreSQL (a copy of the SQLite database), beside SQLite")
    ap.add_argument("--pg-knn", choices=("hnsw", "exact", "sql"), default="hnsw", help="plugins.rag.pg_knn")
    ap.add_argument("--pg-ef", type=int, default=100, help="plugins.rag.pg_ef_search (pgvector's hnsw.ef_search)")
    ap.add_argument("--pg-url", default="", help="an empty PostgreSQL database with pgvector (default: a throwaway "
                    "tests/pg.py server)")
    args = ap.parse_args()

    from monmouth.app import open_app

    corpus, queries, qrels = load(args.limit_docs)
    tmp = tempfile.TemporaryDirectory(prefix="scifact-")
    work = args.keep or Path(tmp.name) / "sqlite"
    work.mkdir(parents=True, exist_ok=True)
    try:
        cfg = config(args, work, 'path = "db.sqlite"\nsynchronous = "NORMAL"')
        with contextlib.closing(open_app(cfg)) as app:
            assert app.host.is_enabled("rag"), app.host.errors
            stored = ingest(app, corpus)
            lite = rank(app, queries, qrels)
        pg = on_postgres(args, cfg, Path(tmp.name) / "postgres", queries, qrels) \
            if args.storage == "postgres" else None
    finally:
        tmp.cleanup()
    print(f"MTEB reference (fp32, truncation at 256 tokens): {MTEB_NDCG10}")
    result: dict[str, Any] = {
        "ndcg_at_10": round(lite["ndcg"]["vector"], 5), "ndcg_at_10_hybrid": round(lite["ndcg"]["hybrid"], 5),
        "ndcg_at_10_keyword": round(lite["ndcg"]["keyword"], 5), "mteb_reference": MTEB_NDCG10,
        "queries": len(queries), "documents": len(corpus), "chunks": stored["chunks"],
        "chunk_tokens": args.chunk_tokens, "chunk_overlap": args.overlap,
        "embed_seconds": round(stored["embed_s"], 1),
        "p50_ms_vector": round(lite["p50_ms"]["vector"], 2), "p50_ms_hybrid": round(lite["p50_ms"]["hybrid"], 2),
    }
    if pg is not None:
        print(f"nDCG@10    {'SQLite':>8s} {'PostgreSQL':>11s} {'delta':>9s}   (PostgreSQL: pg_knn {args.pg_knn}, "
              f"ef_search {args.pg_ef})")
        for mode in MODES:
            a, b = lite["ndcg"][mode], pg["ndcg"][mode]
            print(f"{mode:8s}   {a:8.5f} {b:11.5f} {b - a:+9.5f}")
            suffix = "" if mode == "vector" else f"_{mode}"
            result[f"ndcg_at_10{suffix}_postgres"] = round(b, 5)
            result[f"delta_ndcg_at_10{suffix}"] = round(b - a, 5)
        result.update({"pg_knn": args.pg_knn, "pg_ef_search": args.pg_ef,
                       "p50_ms_vector_postgres": round(pg["p50_ms"]["vector"], 2),
                       "p50_ms_hybrid_postgres": round(pg["p50_ms"]["hybrid"], 2)})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
