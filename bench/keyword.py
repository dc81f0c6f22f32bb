"""Keyword search latency at a larger size, SQLite's FTS5 ``bm25()`` beside PostgreSQL's BM25 (issue 15).

The documents are BEIR SciFact's abstracts (``../shared/data/scifact/corpus.jsonl``, ``title + " " + text``), repeated
until ``--docs`` (each repeat is another document: document frequencies grow with the collection, as in a real one
where the same topics recur). Each backend keyword-indexes them through the plugin's own statements
(:mod:`monmouth_rag.dialect`: FTS5 on a SQLite file; ``tsvector`` + ``rag_fts_stats`` on PostgreSQL, in batches of
1,000 as the document path does), then SciFact's 300 test queries run through ``keyword()`` (the search path without
hydrating the rows) for the top 50, the depth hybrid search asks. On PostgreSQL the ``ts_rank`` query that ranked
keywords before issue 15 runs on the same rows for comparison. Printed: p50 and p99 ms per query.

Usage: ``python bench/keyword.py [--docs 100000] [--pg-url URL]`` (an empty database; password in
``MONMOUTH_PG_PASSWORD``; without it a throwaway tests/pg.py server).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "scifact"

#: The keyword ranking before issue 15 (``PgStatements.keyword`` up to then), for comparison.
TS_RANK = ("SELECT f.rowid, ts_rank(f.tsv, q, 1) AS s FROM rag_fts f CROSS JOIN to_tsquery('rag_english', ?) q "
           "WHERE f.tsv @@ q ORDER BY s DESC, f.rowid LIMIT ?")


def texts(n: int) -> Iterator[tuple[int, str]]:
    """``(id, text)`` for ids 1..n: the corpus's abstracts, repeated."""
    corpus = [(o.get("title") or "") + " " + (o.get("text") or "")
              for o in map(json.loads, (DATA / "corpus.jsonl").read_text().splitlines())]
    return zip(range(1, n + 1), itertools.cycle(corpus), strict=False)


def timed(queries: list[str], run: Callable[[str], Any]) -> tuple[float, float]:
    run(queries[0])  # warm-up
    lat = []
    for q in queries:
        t = time.perf_counter()
        run(q)
        lat.append((time.perf_counter() - t) * 1000)
    lat.sort()
    return lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]


def fill(write: Callable[[], Any], insert: Callable[[Any, list[tuple[int, str]]], None], n: int) -> float:
    t = time.perf_counter()
    docs = texts(n)
    while batch := list(itertools.islice(docs, 1000)):
        with write() as conn:
            insert(conn, batch)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--pg-url", default="")
    args = ap.parse_args()

    from monmouth.backends.postgres import PgDatabase
    from monmouth.store import Database
    from monmouth_rag.dialect import PgStatements, SqliteStatements
    from monmouth_rag.search import query_words
    from monmouth_rag.store import MIGRATIONS, PG_MIGRATIONS, TRIMMED

    qrels = {line.split("\t")[0] for line in (DATA / "qrels" / "test.tsv").read_text().splitlines()[1:]}
    queries = [o["text"] for o in map(json.loads, (DATA / "queries.jsonl").read_text().splitlines())
               if o["_id"] in qrels]
    out: dict[str, Any] = {"docs": args.docs, "queries": len(queries)}
    with tempfile.TemporaryDirectory(prefix="keyword-") as tmp, contextlib.ExitStack() as stack:
        lite = Database(Path(tmp) / "db.sqlite")
        lite.migrate("rag", MIGRATIONS, set(TRIMMED))
        ls = SqliteStatements()
        out["sqlite_fill_s"] = round(fill(lite.write, ls.insert_fts, args.docs), 1)
        conn = lite.reader()
        out["sqlite_bm25_ms"] = timed(queries, lambda q: ls.keyword(conn, query_words(q), 50, [], []))
        print(f"SQLite FTS5 bm25(): {args.docs} documents indexed in {out['sqlite_fill_s']} s; p50/p99 "
              f"{out['sqlite_bm25_ms'][0]:.1f} / {out['sqlite_bm25_ms'][1]:.1f} ms", flush=True)

        url, password = args.pg_url, os.environ.get("MONMOUTH_PG_PASSWORD")
        if not url:
            from tests.pg import PASSWORD, PgServer

            url, password = stack.enter_context(PgServer()).database(), PASSWORD
        pg = PgDatabase(url, password=password)
        pg.migrate("rag", PG_MIGRATIONS, set(TRIMMED))
        ps = PgStatements()
        out["pg_fill_s"] = round(fill(pg.write, ps.insert_fts, args.docs), 1)
        pconn = pg.connect()
        pconn.execute("ANALYZE rag_fts")
        out["pg_bm25_ms"] = timed(queries, lambda q: ps.keyword(pconn, query_words(q), 50, [], []))
        out["pg_ts_rank_ms"] = timed(queries, lambda q: pconn.execute(
            TS_RANK, (" | ".join(f"'{w}'" for w in query_words(q)), 50)).fetchall())
        pconn.close()
        print(f"PostgreSQL BM25: indexed in {out['pg_fill_s']} s; p50/p99 {out['pg_bm25_ms'][0]:.1f} / "
              f"{out['pg_bm25_ms'][1]:.1f} ms (ts_rank before issue 15: {out['pg_ts_rank_ms'][0]:.1f} / "
              f"{out['pg_ts_rank_ms'][1]:.1f} ms)", flush=True)
    print(json.dumps({k: [round(x, 2) for x in v] if isinstance(v, tuple) else v for k, v in out.items()}))


if __name__ == "__main__":
    main()
