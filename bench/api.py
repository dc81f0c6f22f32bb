"""API benchmark: 64 concurrent loopback clients (search, recall, store, status) against a live sidecar while its
engine ingests, and the ingest rate under that load as a share of the idle rate.

The sidecar runs in this process (real runner, real HTTP on loopback, real SQLite file, the rag and memory plugins
on; the rag embedding worker off so ingest is measured alone); the clients run in a second process (asyncio +
httpx, keep-alive connections), so they do not share the sidecar's interpreter. Blocks are mainnet-shaped (the real
mainnet transactions and receipts of shared/data, re-chained), one ChainCommitted per block, fed as fast as the
engine takes them.

Phases: (1) idle: ingest ``--blocks`` blocks, no clients; (2) load: ingest ``--blocks`` more while the clients run;
(3) the clients go on for ``--api-only`` seconds with the engine caught up. While the engine ingests, the sidecar's
admission control (``http.busy_concurrency``, ``http.busy_share``) keeps the API to a share of the time: ingestion
comes first; once caught up the API runs at full concurrency (``http.max_concurrency``).
Client requests are operators from loopback (no token) and agents with SIWE tokens (each agent recalls and stores
its own memory; half the requests carry an agent token).

Run:  python bench/api.py [--clients 64] [--blocks 200] [--txs 50]
Prints its figures; the last line is JSON with requests_per_s, errors, ingest_share (and p50/p99 per route).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QUERIES = ["USDT transfer", "swap on uniswap", "large ETH transfer", "approve token spending", "contract creation",
           "WETH deposit", "token transfer to exchange", "failed transaction"]
ROUTES = ("search", "recall", "store", "status")


# ---------------------------------------------------------------------------------------------------------------------
# client process


async def _clients(base: str, n: int, agents: list[tuple[str, str]], stop: Any, go: Any, started: Any, seed: int,
                   weights: tuple[float, ...]) -> dict[str, Any]:
    import httpx

    samples: list[tuple[float, str, float, bool]] = []  # (end time, route, latency, ok)
    errors: dict[str, int] = {}
    # keep-alive shorter than uvicorn's (5 s): never reuse a connection the server is closing
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n, keepalive_expiry=3.0)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as http:

        async def one(i: int) -> None:
            rng = random.Random(seed * 1000 + i)
            addr, token = agents[i % len(agents)]
            as_agent = i % 2 == 0
            hdrs = {"authorization": f"Bearer {token}"} if as_agent else {}
            k = 0
            while not stop.is_set():
                if not go.is_set():  # paused while the idle ingest rate is measured
                    await asyncio.sleep(0.02)
                    continue
                route = rng.choices(ROUTES, weights)[0]
                k += 1
                t0 = time.perf_counter()
                try:
                    if route == "search":
                        body: dict[str, Any] = {"query": rng.choice(QUERIES), "k": 5}
                        if as_agent:
                            body["filters"] = {"kind": ["tx", "document"]}
                        r = await http.post("/rag/search", json=body, headers=hdrs)
                    elif route == "recall":
                        r = await http.post(f"/memory/agents/{addr}/recall", json={"query": rng.choice(QUERIES),
                                                                                   "k": 5}, headers=hdrs)
                    elif route == "store":
                        r = await http.post(f"/memory/agents/{addr}/items", headers=hdrs,
                                            json={"kind": "episodic", "content": f"client {i} note {k}: "
                                                  f"{rng.choice(QUERIES)} at {time.time():.3f}", "tags": ["bench"]})
                    else:
                        r = await http.get("/status", headers=hdrs)
                    ok = r.status_code < 400
                except httpx.HTTPError as e:
                    ok = False
                    r = None
                    errors[f"{route}: {type(e).__name__}"] = errors.get(f"{route}: {type(e).__name__}", 0) + 1
                dt = time.perf_counter() - t0
                samples.append((time.time(), route, dt, ok))
                if not ok and r is not None:
                    key = f"{route}: {r.status_code}"
                    errors[key] = errors.get(key, 0) + 1

        started.set()
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        elapsed = time.perf_counter() - t0
    return {"samples": samples, "errors": errors, "elapsed": elapsed}


def client_main(base: str, n: int, agents: list[tuple[str, str]], stop: Any, go: Any, started: Any, out: Any,
                weights: tuple[float, ...]) -> None:
    out.put(asyncio.run(_clients(base, n, agents, stop, go, started, 1, weights)))


# ---------------------------------------------------------------------------------------------------------------------
# sidecar (this process)


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    import anyio
    import httpx

    from monmouth.app import open_app
    from monmouth.runner import Runner
    from monmouth.siwe import sign_in_with_key
    from monmouth.types import ChainCommitted
    from tests.chains import chain, load_mainnet_blocks, mainnet_shaped
    from tests.test_api_support import QueueSource

    keys = [f"0x{i:064x}" for i in range(1, args.agents + 1)]
    from eth_account import Account

    addrs = [Account.from_key(k).address.lower() for k in keys]
    tmp = Path(tempfile.mkdtemp(prefix="monmouth-bench-api-"))
    (tmp / "config.toml").write_text(f"""
[storage]
path = "db.sqlite"
synchronous = "NORMAL"

[http]
port = 0
busy_concurrency = {args.busy_concurrency}
busy_share = {args.busy_share}

[auth]
chain_id = 31337
rate_token = 0

[logging]
level = "WARNING"

[plugins.rag]
enabled = true
worker = false
threads = {args.onnx_threads}

[plugins.memory]
enabled = true
embed = false
agents = [{", ".join(f'"{a}"' for a in addrs)}]
""")
    app = open_app(tmp / "config.toml")
    source = QueueSource()
    runner = Runner(app, source, serve_http=True, watch_config=False)
    seg = max(1, args.blocks // args.rounds)
    blocks = list(mainnet_shaped(load_mainnet_blocks(), 20 + 2 * seg * args.rounds, txs_per_block=args.txs))
    warm, rest = blocks[:20], blocks[20:]

    async def ingest(bs: list[Any]) -> float:
        """Seconds to ingest ``bs``, fed as fast as the engine takes them."""
        t0 = time.perf_counter()
        for b in bs:
            await source.push(ChainCommitted(chain([b])))
        while app.engine.head is None or app.engine.head.number < bs[-1].number:
            await anyio.sleep(0.005)
        return time.perf_counter() - t0

    result: dict[str, Any] = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run)
        while runner.http_port is None:
            await anyio.sleep(0.02)
        base = f"http://127.0.0.1:{runner.http_port}"
        await ingest(warm)
        agents = []
        async with httpx.AsyncClient(base_url=base) as http:
            for k, a in zip(keys, addrs, strict=True):
                n = (await http.get("/auth/nonce")).json()
                msg, sig = sign_in_with_key(k, n["nonce"], domain=n["domain"], chain_id=n["chain_id"])
                agents.append((a, (await http.post("/auth/siwe", json={"message": msg, "signature": sig})).json()
                               ["token"]))
                for j in range(5):
                    await http.post(f"/memory/agents/{a}/items", json={"kind": "semantic",
                                                                       "content": f"seed {j}: {QUERIES[j]}"})
        ctx = mp.get_context("spawn")
        stop, go, started, out = ctx.Event(), ctx.Event(), ctx.Event(), ctx.Queue()
        proc = ctx.Process(target=client_main, args=(base, args.clients, agents, stop, go, started, out,
                                                     tuple(float(w) for w in args.mix.split(","))))
        proc.start()
        while not started.is_set():
            await anyio.sleep(0.05)
        # Alternate idle and loaded segments, so both see the same background load of the machine.
        idle_t = load_t = 0.0
        windows = []
        for r in range(args.rounds):
            go.clear()
            await anyio.sleep(2.0)  # requests already sent finish
            idle_t += await ingest(rest[2 * r * seg:(2 * r + 1) * seg])
            go.set()
            await anyio.sleep(args.warmup)
            t0 = time.time()
            load_t += await ingest(rest[(2 * r + 1) * seg:(2 * r + 2) * seg])
            windows.append((t0, time.time()))
        idle, loaded = seg * args.rounds / idle_t, seg * args.rounds / load_t
        print(f"idle: {idle:.1f} blocks/s ({args.txs} transactions each, rag + memory plugins; {args.rounds} rounds "
              f"of {seg} blocks idle, then {seg} under load)", flush=True)
        t_ingested = time.time()
        await anyio.sleep(args.api_only)  # the engine idle (caught up): the API at full speed
        t_end = time.time()
        stop.set()
        stats = await anyio.to_thread.run_sync(out.get)
        await anyio.to_thread.run_sync(proc.join)
        tg.cancel_scope.cancel()
    app.close()

    samples = stats["samples"]
    errors = sum(stats["errors"].values())
    ok = [x for x in samples if x[3]]
    rps = len(samples) / stats["elapsed"]

    def in_windows(t: float) -> bool:
        return any(a <= t < b for a, b in windows)

    ingest_span = sum(b - a for a, b in windows)
    rps_ingesting = sum(1 for x in samples if in_windows(x[0])) / ingest_span
    rps_idle = sum(1 for x in samples if t_ingested <= x[0] < t_end) / (t_end - t_ingested)
    print(f"under load: {loaded:.1f} blocks/s = {loaded / idle:.0%} of idle, with {args.clients} clients "
          f"(http.busy_concurrency {args.busy_concurrency}, http.busy_share {args.busy_share})")
    print(f"requests: {len(samples)} in {stats['elapsed']:.1f}s = {rps:.0f}/s overall; {rps_ingesting:.0f}/s while "
          f"the engine ingests, {rps_idle:.0f}/s once it is caught up; errors {errors} {stats['errors']}")
    per_route = {}
    for phase in ("ingesting", "caught_up"):
        for r in ROUTES:
            xs = [x[2] for x in ok if x[1] == r and (in_windows(x[0]) if phase == "ingesting"
                                                      else t_ingested <= x[0] < t_end)]
            d = {"n": len(xs), "p50_ms": round(pct(xs, 50) * 1000, 1), "p99_ms": round(pct(xs, 99) * 1000, 1)}
            per_route.setdefault(r, {})[phase] = d
            print(f"  {phase:<9} {r:<7} n={len(xs):<6} p50 {d['p50_ms']:>8.1f} ms   p99 {d['p99_ms']:>8.1f} ms")
    result.update(requests_per_s=round(rps, 1), errors=errors, ingest_share=round(loaded / idle, 3),
                  requests_per_s_ingesting=round(rps_ingesting, 1), requests_per_s_caught_up=round(rps_idle, 1),
                  idle_blocks_per_s=round(idle, 1), load_blocks_per_s=round(loaded, 1), clients=args.clients,
                  txs_per_block=args.txs, routes=per_route)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--blocks", type=int, default=200, help="blocks ingested idle, and as many under load")
    p.add_argument("--txs", type=int, default=50, help="transactions per block")
    p.add_argument("--agents", type=int, default=8)
    p.add_argument("--warmup", type=float, default=0.5, help="seconds of load before timing ingest")
    p.add_argument("--rounds", type=int, default=4, help="idle/loaded segment pairs")
    p.add_argument("--api-only", type=float, default=8.0, help="seconds of load after the engine caught up")
    p.add_argument("--onnx-threads", type=int, default=1, help="plugins.rag.threads (ONNX intra-op threads)")
    p.add_argument("--mix", default="3,3,2,2", help="weights of search,recall,store,status")
    p.add_argument("--switch-interval", type=float, default=0.0)
    p.add_argument("--busy-concurrency", type=int, default=1, help="http.busy_concurrency of the sidecar")
    p.add_argument("--busy-share", type=float, default=0.3, help="http.busy_share of the sidecar")
    args = p.parse_args()
    import anyio

    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    result = anyio.run(bench, args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
