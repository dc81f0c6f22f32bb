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

With ``--storage postgres`` (issue 15, docs/storage.md "Scale-out") the database is a real PostgreSQL server started
for the run (tests/pg.py, ``fsync`` on; rag with ``pg_knn = "sql"`` only where no pgvector runs here,
tests/pgvector.py) and the API is scaled out: this process is the one ``monmouth run`` (the same runner and
engine, no HTTP of its own), and for each N of ``--api-processes`` (default 1,2,4) N ``monmouth serve`` subprocesses
(sidecar/serving.py), each on its own loopback port, answer the clients, client i talking to port i mod N. They
share ``auth.secret``, so an agent signs in once (SIWE, through a serve) and its token is good on every serve; agent
memory writes go through whichever serve the client talks to (the memory plugin's advisory lock on the primary
serialises them with the engine's memory hooks). A serve has no admission control (nothing ingests there): the
engine and the N serves share the machine's cores. Each N runs the same phases on its own fresh blocks (the chain
goes on), so the figures of all N come from one run, on one database that grows as it goes. After each N the run
counts the API items in ``memory_items`` against the stores answered 2xx so far (seeds included): a write lost or
applied twice by a serve shows as a difference. ``--pg-rtt-ms R`` puts the server one network away: the engine and
the serves reach it through a loopback relay adding R ms a round trip (tests/pg.py's ``Relay``).

Run:  python bench/api.py [--clients 64] [--blocks 200] [--txs 50]
      python bench/api.py --storage postgres [--api-processes 1,2,4] [--blocks 40] [--pg-rtt-ms 0]
Prints its figures; the last line is JSON with requests_per_s, errors, ingest_share (and p50/p99 per route); with
``--storage postgres`` each of these is a map from N (API processes) to its figure, ``requests_per_s`` being the
rate with the engine caught up (the API alone) and ``requests_per_s_ingesting`` the rate while it ingests; and
``sqlite``: the reference run first, in the same process, on SQLite with the same arguments (one process, engine and
HTTP; ``synchronous = NORMAL``, as the SQLite mode always runs), printed beside PostgreSQL's
(``--no-sqlite-reference`` skips it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUERIES = ["USDT transfer", "swap on uniswap", "large ETH transfer", "approve token spending", "contract creation",
           "WETH deposit", "token transfer to exchange", "failed transaction"]
ROUTES = ("search", "recall", "store", "status")


# ---------------------------------------------------------------------------------------------------------------------
# client process


async def _clients(bases: list[str], n: int, agents: list[tuple[str, str]], stop: Any, go: Any, started: Any,
                   seed: int, weights: tuple[float, ...]) -> dict[str, Any]:
    import httpx

    samples: list[tuple[float, str, float, bool]] = []  # (end time, route, latency, ok)
    errors: dict[str, int] = {}
    # keep-alive shorter than uvicorn's (5 s): never reuse a connection the server is closing
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n, keepalive_expiry=3.0)
    async with contextlib.AsyncExitStack() as stack:
        https = [await stack.enter_async_context(httpx.AsyncClient(base_url=b, limits=limits, timeout=60))
                 for b in bases]

        async def one(i: int) -> None:
            http = https[i % len(https)]  # the clients spread over the API processes
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


def client_main(bases: list[str], n: int, agents: list[tuple[str, str]], stop: Any, go: Any, started: Any, out: Any,
                weights: tuple[float, ...]) -> None:
    out.put(asyncio.run(_clients(bases, n, agents, stop, go, started, 1, weights)))


class Clients:
    """The client process (spawned: its own interpreter) and its events: ``go`` clear pauses the clients,
    ``stop`` ends them; :meth:`finish` returns their samples, errors and elapsed seconds."""

    def __init__(self, bases: list[str], args: argparse.Namespace, agents: list[tuple[str, str]]) -> None:
        ctx = mp.get_context("spawn")
        self.stop, self.go, self.started, self.out = ctx.Event(), ctx.Event(), ctx.Event(), ctx.Queue()
        self.proc = ctx.Process(target=client_main, args=(bases, args.clients, agents, self.stop, self.go,
                                                          self.started, self.out,
                                                          tuple(float(w) for w in args.mix.split(","))))
        self.proc.start()

    async def wait_started(self) -> None:
        import anyio

        while not self.started.is_set():
            if not self.proc.is_alive():
                raise RuntimeError(f"the client process exited ({self.proc.exitcode}) before starting")
            await anyio.sleep(0.05)

    async def finish(self) -> dict[str, Any]:
        import anyio

        self.stop.set()
        stats: dict[str, Any] = await anyio.to_thread.run_sync(self.out.get)
        await anyio.to_thread.run_sync(self.proc.join)
        return stats


# ---------------------------------------------------------------------------------------------------------------------
# sidecar (this process)


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def agent_keys(n: int) -> tuple[list[str], list[str]]:
    """``n`` agents' private keys and their lower-case addresses."""
    from eth_account import Account

    keys = [f"0x{i:064x}" for i in range(1, n + 1)]
    return keys, [Account.from_key(k).address.lower() for k in keys]


def config_text(args: argparse.Namespace, addrs: list[str], storage: str, extra: str = "", rag: str = "") -> str:
    """The sidecar's config.toml: ``storage`` is the body of ``[storage]``, ``extra`` goes into ``[auth]``, ``rag``
    into ``[plugins.rag]``."""
    return f"""
[storage]
{storage}

[http]
port = 0
busy_concurrency = {args.busy_concurrency}
busy_share = {args.busy_share}

[auth]
chain_id = 31337
rate_token = 0
{extra}

[logging]
level = "WARNING"

[plugins.rag]
enabled = true
worker = false
threads = {args.onnx_threads}
{rag}

[plugins.memory]
enabled = true
embed = false
agents = [{", ".join(f'"{a}"' for a in addrs)}]
"""


async def sign_in(base: str, keys: list[str], addrs: list[str]) -> list[tuple[str, str]]:
    """Each agent signs in with Ethereum through ``base`` and stores 5 seed memories: ``[(address, token)]``."""
    import httpx

    from monmouth.siwe import sign_in_with_key

    agents = []
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        for k, a in zip(keys, addrs, strict=True):
            n = (await http.get("/auth/nonce")).json()
            msg, sig = sign_in_with_key(k, n["nonce"], domain=n["domain"], chain_id=n["chain_id"])
            agents.append((a, (await http.post("/auth/siwe", json={"message": msg, "signature": sig})).json()
                           ["token"]))
            for j in range(5):
                r = await http.post(f"/memory/agents/{a}/items", json={"kind": "semantic",
                                                                       "content": f"seed {j}: {QUERIES[j]}"})
                r.raise_for_status()
    return agents


async def alternate(args: argparse.Namespace, ingest: Callable[[list[Any]], Any], clients: Clients,
                    blocks: list[Any], seg: int) -> tuple[float, float, list[tuple[float, float]]]:
    """``args.rounds`` idle/loaded segment pairs of ``seg`` blocks each from ``blocks``, so both see the same
    background load of the machine: ``(idle blocks/s, loaded blocks/s, the loaded segments' time windows)``."""
    import anyio

    idle_t = load_t = 0.0
    windows = []
    for r in range(args.rounds):
        clients.go.clear()
        await anyio.sleep(2.0)  # requests already sent finish
        idle_t += await ingest(blocks[2 * r * seg:(2 * r + 1) * seg])
        clients.go.set()
        await anyio.sleep(args.warmup)
        t0 = time.time()
        load_t += await ingest(blocks[(2 * r + 1) * seg:(2 * r + 2) * seg])
        windows.append((t0, time.time()))
    return seg * args.rounds / idle_t, seg * args.rounds / load_t, windows


def summarize(stats: dict[str, Any], windows: list[tuple[float, float]], t_ingested: float, t_end: float,
              indent: str = "") -> dict[str, Any]:
    """Requests/s overall, while the engine ingests (in ``windows``) and once caught up (``t_ingested`` to
    ``t_end``), errors, and p50/p99 per route and phase of the successful requests; printed and returned."""
    samples = stats["samples"]
    errors = sum(stats["errors"].values())
    ok = [x for x in samples if x[3]]
    rps = len(samples) / stats["elapsed"]

    def in_windows(t: float) -> bool:
        return any(a <= t < b for a, b in windows)

    ingest_span = sum(b - a for a, b in windows)
    rps_ingesting = sum(1 for x in samples if in_windows(x[0])) / ingest_span
    rps_idle = sum(1 for x in samples if t_ingested <= x[0] < t_end) / (t_end - t_ingested)
    print(f"{indent}requests: {len(samples)} in {stats['elapsed']:.1f}s = {rps:.0f}/s overall; {rps_ingesting:.0f}/s "
          f"while the engine ingests, {rps_idle:.0f}/s once it is caught up; errors {errors} {stats['errors']}")
    per_route: dict[str, dict[str, dict[str, Any]]] = {}
    for phase in ("ingesting", "caught_up"):
        for r in ROUTES:
            xs = [x[2] for x in ok if x[1] == r and (in_windows(x[0]) if phase == "ingesting"
                                                      else t_ingested <= x[0] < t_end)]
            d = {"n": len(xs), "p50_ms": round(pct(xs, 50) * 1000, 1), "p99_ms": round(pct(xs, 99) * 1000, 1)}
            per_route.setdefault(r, {})[phase] = d
            print(f"{indent}  {phase:<9} {r:<7} n={len(xs):<6} p50 {d['p50_ms']:>8.1f} ms   "
                  f"p99 {d['p99_ms']:>8.1f} ms")
    return {"requests_per_s": round(rps, 1), "errors": errors, "error_kinds": stats["errors"],
            "requests_per_s_ingesting": round(rps_ingesting, 1), "requests_per_s_caught_up": round(rps_idle, 1),
            "routes": per_route}


class Ingest:
    """Feeds blocks to the engine of ``runner`` through its queue source, one ChainCommitted per block."""

    def __init__(self, runner: Any) -> None:
        self.runner, self.app, self.source = runner, runner.app, runner.source

    async def __call__(self, bs: list[Any]) -> float:
        """Seconds to ingest ``bs``, fed as fast as the engine takes them."""
        import anyio

        from monmouth.types import ChainCommitted
        from tests.chains import chain

        t0 = time.perf_counter()
        for b in bs:
            await self.source.push(ChainCommitted(chain([b])))
        while self.app.engine.head is None or self.app.engine.head.number < bs[-1].number:
            if time.perf_counter() - t0 > 600:
                raise RuntimeError(f"the engine did not reach block {bs[-1].number} in 600 s (head "
                                   f"{self.app.engine.head}): {self.runner.last_error or 'no error reported'}")
            await anyio.sleep(0.005)
        return time.perf_counter() - t0


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    import anyio

    from monmouth.app import open_app
    from monmouth.runner import Runner
    from tests.chains import load_mainnet_blocks, mainnet_shaped
    from tests.test_api_support import QueueSource

    keys, addrs = agent_keys(args.agents)
    tmp = Path(tempfile.mkdtemp(prefix="monmouth-bench-api-"))
    (tmp / "config.toml").write_text(config_text(args, addrs, 'path = "db.sqlite"\nsynchronous = "NORMAL"'))
    app = open_app(tmp / "config.toml")
    source = QueueSource()
    runner = Runner(app, source, serve_http=True, watch_config=False)
    seg = max(1, args.blocks // args.rounds)
    blocks = list(mainnet_shaped(load_mainnet_blocks(), 20 + 2 * seg * args.rounds, txs_per_block=args.txs))
    warm, rest = blocks[:20], blocks[20:]
    ingest = Ingest(runner)

    result: dict[str, Any] = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run)
        while runner.http_port is None:
            await anyio.sleep(0.02)
        base = f"http://127.0.0.1:{runner.http_port}"
        await ingest(warm)
        agents = await sign_in(base, keys, addrs)
        clients = Clients([base], args, agents)
        await clients.wait_started()
        idle, loaded, windows = await alternate(args, ingest, clients, rest, seg)
        print(f"idle: {idle:.1f} blocks/s ({args.txs} transactions each, rag + memory plugins; {args.rounds} rounds "
              f"of {seg} blocks idle, then {seg} under load)", flush=True)
        t_ingested = time.time()
        await anyio.sleep(args.api_only)  # the engine idle (caught up): the API at full speed
        t_end = time.time()
        stats = await clients.finish()
        tg.cancel_scope.cancel()
    app.close()

    print(f"under load: {loaded:.1f} blocks/s = {loaded / idle:.0%} of idle, with {args.clients} clients "
          f"(http.busy_concurrency {args.busy_concurrency}, http.busy_share {args.busy_share})")
    figures = summarize(stats, windows, t_ingested, t_end)
    result.update(requests_per_s=figures["requests_per_s"], errors=figures["errors"],
                  ingest_share=round(loaded / idle, 3),
                  requests_per_s_ingesting=figures["requests_per_s_ingesting"],
                  requests_per_s_caught_up=figures["requests_per_s_caught_up"],
                  idle_blocks_per_s=round(idle, 1), load_blocks_per_s=round(loaded, 1), clients=args.clients,
                  txs_per_block=args.txs, routes=figures["routes"])
    return result


# ---------------------------------------------------------------------------------------------------------------------
# PostgreSQL: one engine (this process) and N `monmouth serve` subprocesses


@contextlib.contextmanager
def serve_processes(config: Path, n: int, env: dict[str, str]) -> Iterator[list[str]]:
    """``n`` ``monmouth serve --port P`` subprocesses on ``config``, each on its own free loopback port, once each
    answers ``/health``: their base URLs. Stopped (SIGTERM, then SIGKILL after 15 s) on leaving.

    Raises:
        RuntimeError: a serve exited or did not answer within 120 s (its log's tail in the message).
    """
    import httpx

    from tests.anvil import free_port

    procs: list[tuple[subprocess.Popen[bytes], Path, str]] = []
    try:
        for i in range(n):
            port = free_port()
            log = config.parent / f"serve-{n}-{i}-{port}.log"
            with log.open("wb") as f:
                proc = subprocess.Popen([sys.executable, "-m", "monmouth", "serve", "--config", str(config),
                                         "--port", str(port)], cwd=config.parent, stdout=subprocess.DEVNULL,
                                        stderr=f, env={**os.environ, "PYTHONPATH": str(ROOT), **env})
            procs.append((proc, log, f"http://127.0.0.1:{port}"))
        for proc, log, base in procs:
            deadline = time.monotonic() + 120
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    state = f"exited ({proc.returncode})" if proc.returncode is not None else "did not answer"
                    raise RuntimeError(f"monmouth serve on {base} {state}:\n{log.read_text(errors='replace')[-3000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                        break
                time.sleep(0.1)
        yield [base for _, _, base in procs]
    finally:
        for proc, _, _ in procs:
            proc.terminate()
        for proc, _, _ in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def memory_rows(url: str) -> int:
    """The agent memory items written through the API (``memory_items.origin`` 0) in the database of ``url``."""
    import psycopg

    from tests.pg import PASSWORD

    with psycopg.connect(url, password=PASSWORD) as conn:
        row = conn.execute("SELECT count(*) FROM memory_items WHERE origin = 0").fetchone()
    return int(row[0]) if row else 0


async def bench_postgres(args: argparse.Namespace) -> dict[str, Any]:
    import anyio

    from monmouth.app import open_app
    from monmouth.runner import Runner
    from tests import pgvector
    from tests.chains import load_mainnet_blocks, mainnet_shaped
    from tests.pg import PASSWORD, PgServer, Relay
    from tests.test_api_support import QueueSource

    counts = [int(x) for x in args.api_processes.split(",")]
    keys, addrs = agent_keys(args.agents)
    seg = max(1, args.blocks // args.rounds)
    per_n = 2 * seg * args.rounds
    blocks = list(mainnet_shaped(load_mainnet_blocks(), 20 + per_n * len(counts), txs_per_block=args.txs))
    env = {"MONMOUTH_PG_PASSWORD": PASSWORD}
    by_n: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="monmouth-bench-api-") as d, PgServer(durable=True) as server:
        tmp = Path(d)
        url = server.database()
        print(f"PostgreSQL server {url} (fsync on, synchronous_commit on)", flush=True)
        relay = Relay("127.0.0.1", server.port, args.pg_rtt_ms / 2e3) if args.pg_rtt_ms else None
        if relay is not None:
            print(f"the engine and the serves reach it through a relay adding {args.pg_rtt_ms:g} ms a round trip",
                  flush=True)
        # One auth.secret for every process: a token signed in on one serve is good on all of them.
        knn = "" if pgvector.hnsw_runs() else 'pg_knn = "sql"'
        cfg = tmp / "config.toml"
        served = relay.url_of(url) if relay is not None else url
        cfg.write_text(config_text(args, addrs, f'url = "{served}"', f'secret = "{secrets.token_hex(32)}"', knn))
        app = open_app(cfg, environ={**os.environ, **env})
        source = QueueSource()
        runner = Runner(app, source, serve_http=False, watch_config=False)  # `monmouth run`; the serves answer
        ingest = Ingest(runner)
        agents: list[tuple[str, str]] = []
        answered = 5 * len(addrs)  # the seeds
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(runner.run)
                await ingest(blocks[:20])
                for k, n in enumerate(counts):
                    rest = blocks[20 + k * per_n:20 + (k + 1) * per_n]
                    with serve_processes(cfg, n, env) as bases:
                        if not agents:
                            agents = await sign_in(bases[0], keys, addrs)
                        clients = Clients(bases, args, agents)
                        try:
                            await clients.wait_started()
                            idle, loaded, windows = await alternate(args, ingest, clients, rest, seg)
                            t_ingested = time.time()
                            await anyio.sleep(args.api_only)  # the engine caught up: the serves at full speed
                            t_end = time.time()
                            stats = await clients.finish()
                        finally:
                            if clients.proc.is_alive():
                                clients.proc.terminate()
                    print(f"{n} API process{'es' if n > 1 else ''}: ingest idle {idle:.1f} blocks/s, under load "
                          f"{loaded:.1f} blocks/s = {loaded / idle:.0%} of idle ({args.rounds} rounds of {seg} "
                          f"blocks idle, then {seg} under load, {args.txs} transactions each)", flush=True)
                    figures = summarize(stats, windows, t_ingested, t_end, indent="  ")
                    answered += sum(1 for x in stats["samples"] if x[1] == "store" and x[3])
                    rows = memory_rows(url)
                    print(f"  memory: {answered} items stored through the serves so far (answered 2xx, seeds "
                          f"included), {rows} API items in memory_items", flush=True)
                    figures.update(idle_blocks_per_s=round(idle, 1), load_blocks_per_s=round(loaded, 1),
                                   ingest_share=round(loaded / idle, 3), memory_items_answered=answered,
                                   memory_items_stored=rows)
                    by_n[str(n)] = figures
                tg.cancel_scope.cancel()
        finally:
            app.close()
    print("API processes: " + ", ".join(f"{n}: {f['requests_per_s_caught_up']:.0f} requests/s caught up, "
                                        f"{f['requests_per_s_ingesting']:.0f}/s ingesting"
                                        for n, f in by_n.items()))

    def each(key: str) -> dict[str, Any]:
        return {n: f[key] for n, f in by_n.items()}

    return {"storage": "postgres", "pg_rtt_ms": args.pg_rtt_ms, "requests_per_s": each("requests_per_s_caught_up"),
            "requests_per_s_ingesting": each("requests_per_s_ingesting"),
            "requests_per_s_overall": each("requests_per_s"), "errors": each("errors"),
            "ingest_share": each("ingest_share"), "idle_blocks_per_s": each("idle_blocks_per_s"),
            "load_blocks_per_s": each("load_blocks_per_s"), "memory_items_answered": each("memory_items_answered"),
            "memory_items_stored": each("memory_items_stored"), "clients": args.clients, "txs_per_block": args.txs,
            "blocks_per_n": per_n, "routes": each("routes")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--blocks", type=int, default=None,
                   help="blocks ingested idle, and as many under load (with --storage postgres: for each N); "
                        "default 200 (SQLite), 40 (PostgreSQL)")
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
    p.add_argument("--storage", choices=["sqlite", "postgres"], default="sqlite",
                   help="postgres: one engine and N `monmouth serve` processes on a real PostgreSQL server")
    p.add_argument("--pg-rtt-ms", type=float, default=0.0,
                   help="with --storage postgres: the engine and the serves reach the server through a relay adding "
                        "this round-trip time (tests/pg.py's Relay), as when it is on another machine")
    p.add_argument("--api-processes", default="1,2,4",
                   help="with --storage postgres: the numbers N of `monmouth serve` processes to measure, in order")
    p.add_argument("--no-sqlite-reference", action="store_true",
                   help="with --storage postgres: skip the SQLite run printed beside PostgreSQL's")
    args = p.parse_args()
    if args.blocks is None:
        args.blocks = 40 if args.storage == "postgres" else 200
    if args.storage == "postgres":
        try:
            counts = [int(x) for x in args.api_processes.split(",")]
        except ValueError:
            counts = []
        if not counts or min(counts) < 1:
            p.error(f"--api-processes {args.api_processes!r}: give comma-separated counts of at least 1, e.g. 1,2,4")
    import anyio

    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    if args.storage != "postgres":
        result = anyio.run(bench, args)
    else:
        reference = None
        if not args.no_sqlite_reference:  # the reference, in the same run: SQLite, one process (engine + HTTP)
            print("SQLite reference: one `monmouth run` with its own HTTP API, same clients and blocks", flush=True)
            reference = anyio.run(bench, args)
        result = anyio.run(bench_postgres, args)
        if reference is not None:
            result["sqlite"] = {k: reference[k] for k in ("requests_per_s_caught_up", "requests_per_s_ingesting",
                                                          "errors", "ingest_share", "idle_blocks_per_s")}
            print(f"side by side: SQLite (1 process) {reference['requests_per_s_caught_up']:.0f} requests/s caught "
                  f"up, {reference['requests_per_s_ingesting']:.0f}/s ingesting, ingest idle "
                  f"{reference['idle_blocks_per_s']:.1f} blocks/s | PostgreSQL "
                  + ", ".join(f"{n} serve{'s' if n != '1' else ''} {v:.0f}/s caught up, "
                              f"{result['requests_per_s_ingesting'][n]:.0f}/s ingesting"
                              for n, v in result["requests_per_s"].items())
                  + f", ingest idle {max(result['idle_blocks_per_s'].values()):.1f} blocks/s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
