"""Searches while the IVF index retrains at fourfold growth (``plugins/rag/ivf.py``), beside the same retrain run the
way it ran before 2026-12-06 (holding the index's lock: every search waits for it), in the same run.

The index is filled with a quarter of ``--rows`` vectors (cells trained on them, as after a load), starts serving,
and then receives the other three quarters in batches of 50,000, as ``rag_changes`` would bring them. At four times
the rows it was trained on, the retrain starts beside it on a thread of its own; one thread searches without pause
(``--k`` neighbours, unfiltered, real queries) until the new index is swapped in. Printed: search p50 / p99 / max
before, while the adds run (each 50,000-row add holds the index's lock, rebuild or not), during the rest of the
rebuild, and after it, the rebuild's duration, and the reference: the same rebuild with the lock held
(the searches of that time waited for all of it: their maximum is its duration), and faiss alone training and
filling an ``IVF<nlist>,SQfp16`` index on the same rows.

Data: ``bench/search.py``'s synthetic vectors (real MiniLM SciFact title embeddings as seeds, ``--data``).
Usage: ``python bench/ivf_rebuild.py [--rows 1000000] [--data clustered|spread]``. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import search as search_bench  # noqa: E402  (bench/search.py: the data)

BATCH = 50_000


def _ms(xs: list[float], q: float) -> float:
    return round(1000 * float(np.quantile(xs, q)), 2) if xs else 0.0


def _fill(idx, x: np.ndarray, lo: int, hi: int, batch: int = BATCH) -> None:
    for s in range(lo, hi, batch):
        e = min(hi, s + batch)
        m = e - s
        idx.add(list(range(s + 1, e + 1)), x[s:e], ["tx"] * m, [0] * m, [0] * m, ["swap"] * m)


class Searching:
    """A thread searching ``idx`` without pause until :meth:`stop`; ``lat``: each search's seconds."""

    def __init__(self, idx, queries: np.ndarray, k: int) -> None:
        self.idx, self.queries, self.k = idx, queries, k
        self.lat: list[float] = []
        self.ends: list[float] = []  # perf_counter() at each search's end
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-searches")
        self._thread.start()

    def _loop(self) -> None:
        i = 0
        while not self._stop.is_set():
            t = time.perf_counter()
            self.idx.search(self.queries[i % len(self.queries)], self.k)
            now = time.perf_counter()
            self.lat.append(now - t)
            self.ends.append(now)
            i += 1

    def stop(self) -> list[float]:
        self._stop.set()
        self._thread.join()
        return self.lat


def run(x: np.ndarray, queries: np.ndarray, k: int, background: bool) -> dict[str, float]:
    from monmouth_rag.ivf import IvfIndex

    n = len(x)
    idx = IvfIndex(384, None)
    _fill(idx, x, 0, n // 4, n)  # one batch, not serving yet: trained on this thread, on a quarter of the rows
    assert idx.trained_n == n // 4, idx.trained_n
    idx.loaded = True  # serving from here on (as after a load): rebuilds run beside it
    before = []
    for i in range(200):
        t = time.perf_counter()
        idx.search(queries[i % len(queries)], k)
        before.append(time.perf_counter() - t)
    if not background:  # the way before: the rebuild holds the lock, searches wait
        def held(*, retrain: bool) -> None:
            with idx._lock:
                idx._rebuild(retrain=retrain)

        idx._start_rebuild = held  # type: ignore[method-assign]
    searching = Searching(idx, queries, k)
    t0 = time.perf_counter()
    _fill(idx, x, n // 4, n)  # the retrain becomes due at n rows
    adds = time.perf_counter() - t0
    if background:
        assert idx.rebuilding is not None
        idx.wait_rebuilt()
    rebuilt = time.perf_counter() - t0
    lat = searching.stop()
    # Searches that ended while the adds ran wait for them too (each 50,000-row add holds the lock, rebuild or
    # not); "during" is the rebuild alone, from the adds' return to the swap.
    during = [v for v, end in zip(lat, searching.ends, strict=True) if end > t0 + adds]
    while_adding = [v for v, end in zip(lat, searching.ends, strict=True) if end <= t0 + adds]
    assert idx.trained_n == n and idx.graph.ntotal == n, (idx.trained_n, idx.graph.ntotal)
    after = []
    for i in range(200):
        t = time.perf_counter()
        idx.search(queries[i % len(queries)], k)
        after.append(time.perf_counter() - t)
    return {"adds_s": round(adds, 1), "until_swapped_s": round(rebuilt, 1), "searches_during": len(during),
            "searches_while_adding": len(while_adding),
            "before_p50_ms": _ms(before, .5), "before_p99_ms": _ms(before, .99),
            "during_p50_ms": _ms(during, .5), "during_p99_ms": _ms(during, .99),
            "during_max_ms": round(1000 * max(during), 1) if during else 0.0,
            "while_adding_p50_ms": _ms(while_adding, .5), "while_adding_max_ms":
                round(1000 * max(while_adding), 1) if while_adding else 0.0,
            "after_p50_ms": _ms(after, .5), "after_p99_ms": _ms(after, .99), "nlist": idx.nlist}


def lib_build(x: np.ndarray, nlist: int) -> float:
    """Seconds for faiss alone to train ``IVF<nlist>,SQfp16`` on ``64 nlist`` rows and add every row."""
    import faiss

    t = time.perf_counter()
    ix = faiss.index_factory(x.shape[1], f"IVF{nlist},SQfp16", faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(1234)
    ix.train(x[np.sort(rng.choice(len(x), min(len(x), 64 * nlist), replace=False))])
    for s in range(0, len(x), BATCH):
        ix.add(x[s:s + BATCH])
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--data", choices=("clustered", "spread"), default="clustered")
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args()
    seeds, queries = search_bench.seeds_and_queries(2000 if args.data == "clustered" else 10**6, 200)
    x = search_bench.synth(seeds, args.rows, np.random.default_rng(7), args.data)
    out: dict[str, object] = {"rows": args.rows, "data": args.data}
    for name, background in (("beside", True), ("holding_the_lock", False)):
        r = run(x, queries, args.k, background)
        out.update({f"{k}_{name}": v for k, v in r.items()})
        print(f"{name:>16}: retrain at {args.rows:,} rows ({r['nlist']} cells) swapped in {r['until_swapped_s']} s "
              f"after the adds began (adds returned in {r['adds_s']} s); searches p50 / p99 / max, ms: before "
              f"{r['before_p50_ms']} / {r['before_p99_ms']}, while the adds ran {r['while_adding_p50_ms']} / max "
              f"{r['while_adding_max_ms']}, during the rest of the rebuild {r['during_p50_ms']} / "
              f"{r['during_p99_ms']} / {r['during_max_ms']} ({r['searches_during']} searches), after {r['after_p50_ms']} / "
              f"{r['after_p99_ms']}", flush=True)
    out["lib_build_s"] = round(lib_build(x, int(out["nlist_beside"])), 1)  # type: ignore[call-overload]
    print(f"{'faiss alone':>16}: IVF{out['nlist_beside']},SQfp16 trained and filled in {out['lib_build_s']} s",
          flush=True)
    out["max_wait_ratio"] = round(float(out["during_max_ms_beside"]) / max(1.0, float(  # type: ignore[arg-type]
        out["during_max_ms_holding_the_lock"])), 4)  # type: ignore[arg-type]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
