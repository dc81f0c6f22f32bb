"""Vector search latency and recall at 100k and 1M vectors of 384 dimensions, with and without filters, beside an
ANN library and exact search in the same run.

What is measured, on the same vectors and queries, for each size:

* ``ivf`` (the default index) and ``hnsw``: the plugin's search path for large collections (``Searcher.vector``)
  with its IVF index (:mod:`monmouth_rag.ivf`) and its HNSW index (:mod:`monmouth_rag.hnsw`), each built from the
  ``rag_vec`` sqlite-vec table of a real SQLite file and persisted; the build time and then the load time of a fresh
  index from the persisted copy (a restart: nothing is re-embedded, nothing retrained or rebuilt) are reported;
* ``binary``: the same path with the binary-quantised index (:mod:`monmouth_rag.ann`: Hamming prefilter, exact float
  rerank; the path before the faiss indexes), loaded from ``rag_vec``;
* ``lib_ivf``, ``lib_hnsw``: the library alone, built by faiss straight from the numpy array with the same
  parameters: ``index_factory("IVF<nlist>,SQfp16")`` trained by its own ``train`` on as many rows as ours, same
  ``nprobe``; ``IndexHNSWSQ`` (float16, same ``M``/``efConstruction``/``efSearch``). Filters are passed as a bitmap
  selector with the same ``nprobe`` or beam (no widening, no exact fallback);
* the exact references: exhaustive float32 numpy search (the recall@10 ground truth, same filter) and sqlite-vec's
  exact KNN (latency).

Memory is the index's own size (arrays, graph and float16 vectors) and the process's resident-set growth while it
was built.

Data: the vectors are synthetic but shaped like the model's output. Real all-MiniLM-L6-v2 embeddings of SciFact titles
are the seeds; with ``--data clustered`` (default) each stored vector is ``normalise(0.7 * seed_i + 0.3 * seed_j +
noise)`` over 2,000 seeds, tight clusters of ~500 vectors per seed at 1M (a hard case for graph indexes: many
near-ties); with ``--data spread``, a random convex mixture of three of all 5,183 seeds plus more noise, no
clusters (a harder case for cell-based indexes). Both keep the model's anisotropy and topic structure. Queries are
real embeddings of SciFact test queries. Metadata columns get random kinds, intents (9 values) and block numbers.

* ``pgvector`` (``--storage postgres``): the plugin's search path on PostgreSQL (``Searcher.vector`` with the
  PostgreSQL statements of :mod:`monmouth_rag.dialect`), the same vectors copied into ``rag_vec``, with
  ``--pg-knn`` ``hnsw`` or ``ivfflat`` (pgvector's HNSW or IVFFlat index, built after the copy as the plugin's start
  builds it; its build time is reported), ``exact`` or ``sql`` (see ``plugins.rag.pg_knn``), printed beside the
  SQLite figures of the same run. The server is ``--pg-url`` (password in ``MONMOUTH_PG_PASSWORD``) or, without it,
  a throwaway one from tests/pg.py.

Usage: ``python bench/search.py [--quick] [--sizes 100000,1000000] [--queries 200] [--data clustered|spread]
[--indexes ivf,hnsw] [--lib ivf,hnsw] [--nprobe N] [--ef N] [--no-binary] [--storage postgres [--pg-knn
hnsw|ivfflat] [--pg-ef 100[,200,...]] [--pg-probes 20[,40,...]] [--pg-url URL]]`` (``--quick``: 100k vectors,
100 queries, a few minutes; ``--indexes ivf --lib ivf`` skips the HNSW builds, ~10 min at 1M). The last line
printed is JSON: per size tag (``100k``, ``1m``) and filter suffix (none, ``_intent``, ``_blocks``)
``{p50_ms,p99_ms,recall_at_10}_{ivf,hnsw,binary,lib_ivf,lib_hnsw}_<tag><suffix>``, and ``build_s_*``, ``load_s_*``,
``mem_mb_*``, ``sqlite_vec_exact_ms_<tag>``, ``p99_ratio_<ivf|hnsw>_vs_lib_<tag>``;
with ``--storage postgres`` also ``{p50_ms,p99_ms,recall_at_10}_pgvector[_ef<N>|_p<N>]_<tag><suffix>``,
``copy_s_pgvector_<tag>`` and ``build_s_pgvector_<tag>``.
"""

from __future__ import annotations

import argparse
import json
import os
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


def synth(seeds: np.ndarray, n: int, rng: np.random.Generator, data: str = "clustered") -> np.ndarray:
    """``n`` unit vectors from ``seeds``: ``clustered``, ``0.7 seed_i + 0.3 seed_j`` plus noise of 0.02 per dimension
    (about 500 vectors around each seed); ``spread``, random convex mixtures (Dirichlet(1, 1, 1)) of three seeds plus
    noise of 0.05, no two alike."""
    d = seeds.shape[1]
    if data == "spread":
        w = rng.dirichlet([1.0, 1.0, 1.0], n).astype(np.float32)
        x = np.einsum("nk,nkd->nd", w, seeds[rng.integers(0, len(seeds), (n, 3))])
        x += 0.05 * rng.standard_normal((n, d), dtype=np.float32)
    else:
        i = rng.integers(0, len(seeds), n)
        j = rng.integers(0, len(seeds), n)
        x = 0.7 * seeds[i] + 0.3 * seeds[j] + 0.02 * rng.standard_normal((n, d), dtype=np.float32)
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


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(search, queries: np.ndarray, truth: list[set[int]]) -> tuple[float, float, float]:
    """p50 and p99 latency (ms) and mean recall@10 of ``search(q) -> ids`` over ``queries``."""
    for q in queries[:10]:
        search(q)  # warm-up
    lat, rec = [], []
    for q, want in zip(queries, truth, strict=True):
        t = time.perf_counter()
        got = search(q)
        lat.append((time.perf_counter() - t) * 1000)
        rec.append(len(want & {int(d) for d in got}) / 10)
    lat.sort()
    return lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))], float(np.mean(rec))


class PgSide:
    """The PostgreSQL half of the run: a database with the rag plugin's PostgreSQL schema, filled by COPY."""

    def __init__(self, url: str, knn: str) -> None:
        from monmouth.backends.postgres import PgDatabase
        from monmouth_rag.dialect import PgStatements
        from monmouth_rag.store import PG_MIGRATIONS, TRIMMED

        self.server = None
        password = os.environ.get("MONMOUTH_PG_PASSWORD")
        if not url:
            from tests import pgvector
            from tests.pg import PASSWORD, PgServer

            print(pgvector.describe(), flush=True)
            self.server = PgServer().__enter__()
            url, password = self.server.database(), PASSWORD
        self.db = PgDatabase(url, password=password)
        self.db.migrate("rag", PG_MIGRATIONS, set(TRIMMED))
        self.conn = self.db.connect()
        self.knn = knn
        self.sql = PgStatements()

    def add(self, base: int, vecs: np.ndarray, blocks: np.ndarray, intents: list[str]) -> tuple[float, float]:
        """Copy ``vecs`` in (ids ``base + 1``...), then (re)build the HNSW index; returns both times, seconds."""
        t = time.perf_counter()
        self.sql.vector_index(self.conn, "exact")  # drop: a bulk copy then one build is faster than inserts
        with self.conn.raw.cursor() as cur, cur.copy(
                "COPY rag_vec (rowid, embedding, kind, block_number, timestamp, intent, token) FROM STDIN") as cp:
            for i in range(len(vecs)):
                cp.write_row((base + i + 1, self.sql.vector_text(vecs[i]), "tx", int(blocks[i]),
                              1_600_000_000 + int(blocks[i]) * 12, intents[i], ""))
        copy_s = time.perf_counter() - t
        # what autovacuum would do to a freshly filled table, done now rather than during the measurements
        self.conn.execute("VACUUM (ANALYZE) rag_vec")
        t = time.perf_counter()
        # the graph in memory while it is built (pgvector warns and slows down past maintenance_work_mem), and one
        # parallel worker beside the leader on these 2 cores
        self.conn.execute("SET maintenance_work_mem = '4GB'")
        self.conn.execute("SET max_parallel_maintenance_workers = 1")
        self.sql.vector_index(self.conn, self.knn)
        build_s = time.perf_counter() - t
        # the index's pages written out now, not during the first measurements (the first setting measured after
        # an IVFFlat build still has a long p99 tail: docs/storage.md)
        self.conn.execute("CHECKPOINT")
        return copy_s, build_s

    def search_for(self, searcher_cls, index_cls, ef_search: int, probes: int = 20):
        searcher = searcher_cls(lambda: self.conn, lambda t: None, index_cls(384), backend="postgres",
                                pg_knn=self.knn, pg_ef_search=ef_search, pg_probes=probes)
        return lambda flt, allowed: (lambda q, flt=flt: [d for d, _ in searcher.vector(q, 10, flt)])

    def close(self) -> None:
        self.conn.close()
        if self.server is not None:
            self.server.__exit__(None, None, None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--seeds", type=int, default=0, help="SciFact titles used as seeds (default: 2000 clustered, "
                    "all 5,183 spread)")
    ap.add_argument("--data", choices=("clustered", "spread"), default="clustered", help="how vectors are made of "
                    "the seeds (see synth): tight clusters, or mixtures spread between them")
    ap.add_argument("--quick", action="store_true", help="100k vectors, 100 queries")
    ap.add_argument("--indexes", default="ivf,hnsw",
                    help="our persisted indexes to measure: ivf (the default index), hnsw (~10 min to build at 1M)")
    ap.add_argument("--lib", default="ivf,hnsw", help="which of them to build again with faiss alone beside ours")
    ap.add_argument("--nprobe", type=int, default=0, help="IVF cells probed, ours and the library's (default: ours)")
    ap.add_argument("--ef", type=int, default=0, help="HNSW efSearch, ours and the library's (default: ours)")
    ap.add_argument("--no-binary", action="store_true", help="skip the binary index (the path before HNSW)")
    ap.add_argument("--storage", choices=("sqlite", "postgres"), default="sqlite",
                    help="postgres: also measure pgvector, beside SQLite")
    ap.add_argument("--pg-knn", choices=("hnsw", "ivfflat", "exact", "sql"), default="hnsw",
                    help="plugins.rag.pg_knn")
    ap.add_argument("--pg-ef", default="100", help="plugins.rag.pg_ef_search (pgvector's hnsw.ef_search); a list "
                    "(100,200,400) measures each, the first under the name pgvector, the others as pgvector_ef<N>")
    ap.add_argument("--pg-probes", default="20", help="with --pg-knn ivfflat: plugins.rag.pg_probes (pgvector's "
                    "ivfflat.probes); a list measures each, the others named pgvector_p<N>")
    ap.add_argument("--pg-url", default="", help="PostgreSQL with pgvector (default: a throwaway tests/pg.py server)")
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.queries = "100000", 100

    import faiss

    from monmouth.store import Database, migrate
    from monmouth_rag.ann import SyncedIndex, VectorIndex
    from monmouth_rag.cells import nlist_for
    from monmouth_rag.decoded import INTENTS
    from monmouth_rag.hnsw import HnswIndex
    from monmouth_rag.ivf import IvfIndex
    from monmouth_rag.search import Filters, Searcher
    from monmouth_rag.store import MIGRATIONS, TRIMMED

    indexes = [i for i in args.indexes.split(",") if i]
    libs = [i for i in args.lib.split(",") if i]

    def ours(name: str, path: Path) -> HnswIndex | IvfIndex:
        if name == "hnsw":
            idx = HnswIndex(384, path)
            idx.ef_search = args.ef or idx.ef_search
            return idx
        return IvfIndex(384, path, nprobe=args.nprobe)

    def describe(idx: HnswIndex | IvfIndex, lib=None) -> str:
        if isinstance(idx, HnswIndex):
            return (f"IndexHNSWSQ fp16, M {idx.m}, efConstruction {idx.ef_construction}, efSearch {idx.ef_search}"
                    + ("" if lib is None else ", filters as a bitmap, same beam"))
        probes = idx.nprobe or idx.nlist // 16
        return (f"IVF{idx.nlist},SQfp16, nprobe {probes}"
                + (" (filtered: x n/allowed)" if lib is None else ", filters as a bitmap, same nprobe"))

    def library(name: str, idx: HnswIndex | IvfIndex, x: np.ndarray):
        """The same index built by faiss alone from the numpy array, and its search parameters."""
        if isinstance(idx, HnswIndex):
            lib = faiss.IndexHNSWSQ(384, faiss.ScalarQuantizer.QT_fp16, idx.m, faiss.METRIC_INNER_PRODUCT)
            lib.hnsw.efConstruction = idx.ef_construction
            lib.is_trained = True
            lib.add(x)

            def hnsw_params(ef=idx.ef_search):
                p = faiss.SearchParametersHNSW()
                p.efSearch = ef
                return p
            return lib, hnsw_params
        nlist = nlist_for(len(x))
        lib = faiss.index_factory(384, f"IVF{nlist},SQfp16", faiss.METRIC_INNER_PRODUCT)
        lib.train(x[np.random.default_rng(1).choice(len(x), min(len(x), 64 * nlist), replace=False)])
        lib.add(x)

        def ivf_params(nprobe=idx.nprobe or nlist // 16):
            p = faiss.SearchParametersIVF()
            p.nprobe = nprobe
            return p
        return lib, ivf_params

    rng = np.random.default_rng(7)
    t0 = time.perf_counter()
    seeds, queries = seeds_and_queries(args.seeds or (2000 if args.data == "clustered" else 10**6),
                                       args.queries)
    print(f"{len(seeds)} real seed embeddings, {len(queries)} real query embeddings ({time.perf_counter() - t0:.1f} s)")
    print(f"load average at start: {Path('/proc/loadavg').read_text().split()[:3]} on {os.cpu_count()} cores")
    sizes = [int(s) for s in args.sizes.split(",")]
    tmp = tempfile.TemporaryDirectory(prefix="rag-search-")  # removed at exit (1M vectors take ~3 GB)
    work = Path(tmp.name)
    db = Database(work / "db.sqlite", synchronous="NORMAL")
    conn = db.connect()
    migrate(conn, "rag", MIGRATIONS, set(TRIMMED))
    x = np.zeros((0, 384), np.float32)
    intents = np.zeros(0, np.int64)
    blocks = np.zeros(0, np.int64)
    result: dict[str, float | int | str] = {}
    swap = INTENTS.index("swap")
    pg = PgSide(args.pg_url, args.pg_knn) if args.storage == "postgres" else None
    for size in sizes:
        add = size - len(x)
        t = time.perf_counter()
        new = synth(seeds, add, rng, args.data)
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
        tag = "1m" if size == 1_000_000 else f"{size // 1000}k"
        scenarios = {
            "": (Filters(), None),
            "_intent": (Filters(intents=("swap",)), intents == swap),
            "_blocks": (Filters(block_from=100_000, block_to=199_999), (blocks >= 100_000) & (blocks <= 199_999)),
        }
        truths = {suffix: exact_topk(x, queries, 10, allowed) for suffix, (_f, allowed) in scenarios.items()}
        reader = db.connect()

        def run(name: str, search_for, scenarios=scenarios, truths=truths, tag=tag) -> None:
            for suffix, (flt, allowed) in scenarios.items():
                p50, p99, rec = measure(search_for(flt, allowed), queries, truths[suffix])
                fname = suffix.lstrip("_") or "none"
                print(f"  {name:6s} filter {fname:6s}: p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  recall@10 {rec:.3f}",
                      flush=True)
                result[f"p50_ms_{name}_{tag}{suffix}"] = round(p50, 2)
                result[f"p99_ms_{name}_{tag}{suffix}"] = round(p99, 2)
                result[f"recall_at_10_{name}_{tag}{suffix}"] = round(rec, 4)

        def plugin_path(index: SyncedIndex, reader=reader):
            searcher = Searcher(lambda: reader, lambda t: None, index, ann_min_vectors=0)
            return lambda flt, allowed: (lambda q, flt=flt: [d for d, _ in searcher.vector(q, 10, flt)])

        # -- ours: each persisted index, built from SQLite and saved, then read back as after a restart
        for name in indexes:
            path = work / f"db.sqlite.rag-{name}-{tag}.npz"
            rss = rss_mb()
            t = time.perf_counter()
            ours(name, path).load(reader)
            build_s = time.perf_counter() - t
            grew = rss_mb() - rss
            restarted = ours(name, path)
            t = time.perf_counter()
            restarted.load(reader)
            load_s = time.perf_counter() - t
            assert restarted.loaded_from == "file", restarted.loaded_from
            mem = path.stat().st_size / 2**20
            print(f"{name} (ours, {describe(restarted)}): built from SQLite + saved in {build_s:.1f} s "
                  f"(RSS +{grew:.0f} MB); after a restart read from its file in {load_s:.2f} s; {mem:.0f} MB",
                  flush=True)
            result.update({f"build_s_{name}_{tag}": round(build_s, 1), f"load_s_{name}_{tag}": round(load_s, 2),
                           f"mem_mb_{name}_{tag}": round(mem), f"rss_growth_mb_{name}_{tag}": round(grew)})
            run(name, plugin_path(restarted))

            # -- the library alone, same parameters
            if name in libs:
                faiss.omp_set_num_threads(os.cpu_count() or 1)
                rss = rss_mb()
                t = time.perf_counter()
                lib, lib_params = library(name, restarted, x)
                lib_build = time.perf_counter() - t
                grew = rss_mb() - rss
                lib_mem = faiss.serialize_index(lib).nbytes / 2**20
                faiss.omp_set_num_threads(1)
                print(f"lib_{name} (faiss alone: {describe(restarted, lib)}): built in {lib_build:.1f} s "
                      f"(RSS +{grew:.0f} MB); {lib_mem:.0f} MB", flush=True)
                result.update({f"build_s_lib_{name}_{tag}": round(lib_build, 1),
                               f"mem_mb_lib_{name}_{tag}": round(lib_mem),
                               f"rss_growth_mb_lib_{name}_{tag}": round(grew)})

                def lib_search(flt, allowed, lib=lib, lib_params=lib_params):
                    bits = None
                    params = lib_params()
                    if allowed is not None:
                        bits = np.packbits(allowed, bitorder="little")
                        params.sel = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))

                    def go(q, bits=bits):
                        rows = lib.search(q[None, :], 10, params=params)[1][0]
                        return rows[rows >= 0] + 1  # ids are row + 1
                    return go

                run(f"lib_{name}", lib_search)
                result[f"p99_ratio_{name}_vs_lib_{tag}"] = round(
                    float(result[f"p99_ms_{name}_{tag}"]) / float(result[f"p99_ms_lib_{name}_{tag}"]), 2)
                del lib
            del restarted

        # -- ours before: the binary index
        if not args.no_binary:
            index = VectorIndex(384)
            rss = rss_mb()
            t = time.perf_counter()
            index.load(reader)
            bin_load = time.perf_counter() - t
            grew = rss_mb() - rss
            bmem = (index.vecs.nbytes + index.codes.nbytes) / 2**20
            print(f"binary (before, in-memory, not persisted): loaded from SQLite in {bin_load:.1f} s "
                  f"(RSS +{grew:.0f} MB); {bmem:.0f} MB")
            result.update({f"load_s_binary_{tag}": round(bin_load, 1), f"mem_mb_binary_{tag}": round(bmem)})
            run("binary", plugin_path(index))
            del index

        # reference: exact sqlite-vec KNN (float, exhaustive) on a few queries
        t = time.perf_counter()
        for qv in queries[:3]:
            reader.execute("SELECT rowid FROM rag_vec WHERE embedding MATCH ? AND k = 10", (qv.tobytes(),)).fetchall()
        ref = (time.perf_counter() - t) / 3 * 1000
        print(f"reference: exact sqlite-vec float KNN {ref:.0f} ms per query")
        result[f"sqlite_vec_exact_ms_{tag}"] = round(ref, 1)
        reader.close()
        if pg is not None:
            copy_s, build_s = pg.add(base, new, new_blk, [INTENTS[i] for i in new_int])
            built = {"hnsw": "HNSW", "ivfflat": "IVFFlat"}.get(args.pg_knn)
            print(f"pgvector ({args.pg_knn}): {len(new)} vectors copied in {copy_s:.1f} s"
                  + (f", {built} index built in {build_s:.1f} s" if built else ""), flush=True)
            result.update({f"copy_s_pgvector_{tag}": round(copy_s, 1), f"build_s_pgvector_{tag}": round(build_s, 1)})
            if args.pg_knn == "ivfflat":
                for i, probes in enumerate(int(p) for p in args.pg_probes.split(",")):
                    print(f"pgvector ivfflat.probes {probes}:", flush=True)
                    run("pgvector" if i == 0 else f"pgvector_p{probes}",
                        pg.search_for(Searcher, VectorIndex, 400, probes))
            else:
                for i, ef in enumerate(int(e) for e in args.pg_ef.split(",")):
                    print(f"pgvector hnsw.ef_search {ef}:", flush=True)
                    run("pgvector" if i == 0 else f"pgvector_ef{ef}", pg.search_for(Searcher, VectorIndex, ef))
    if pg is not None:
        pg.close()
    conn.close()
    tmp.cleanup()
    result["data"] = f"synthetic mixtures of real MiniLM embeddings ({args.data}); real query embeddings"
    result["load_average_end"] = Path("/proc/loadavg").read_text().split()[0]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
