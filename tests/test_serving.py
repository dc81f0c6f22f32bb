"""``monmouth serve`` (sidecar/serving.py): API processes without an engine beside the one ``monmouth run``, on a
real PostgreSQL (tests/pg.py) and a real anvil, all as subprocesses; ``storage.statement_timeout``."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.anvil import free_port
from tests.pg import PASSWORD
from tests.running import MONMOUTH, ROOT, Sidecar

LEDGERAPI = ROOT / "tests" / "plugins" / "ledgerapi.py"
PG_ENV = {"MONMOUTH_PG_PASSWORD": PASSWORD}


def serve_config(path: Path, *, node: str, storage: str, port: int, extra: str = "") -> Path:
    """config.toml for an rpc sidecar on ``storage`` (``url = ...`` or ``path = ...``) with the ledgerapi plugin."""
    path.write_text(f"""
[source]
kind = "rpc"
url = "{node}"
poll_interval = 0.05
batch_size = 4
max_backoff = 0.5

[storage]
{storage}
{extra}

[http]
host = "127.0.0.1"
port = {port}

[engine]
progress_interval = 0.5
retry_max_backoff = 0.5

[plugins.ledgerapi]
enabled = true
module = "{LEDGERAPI}"
""")
    return path


def views(*sidecars: Sidecar) -> list[tuple[object, object]]:
    """Each process's ``/status`` head and ``/ledger/summary``."""
    return [(s.status()["head"], s.get("/ledger/summary").json()) for s in sidecars]


def settled(run: Sidecar, anvil_head: str) -> bool:
    head = run.status()["head"]
    return head is not None and head["hash"] == anvil_head


@contextlib.contextmanager
def one_run_two_serves(cfg: Path, port: int, anvil_head: Callable[[], str]) -> Iterator[tuple[Sidecar, ...]]:
    """``monmouth run`` on ``port``, once it reached ``anvil_head()``, then two ``monmouth serve`` on free ports:
    ``(run, serve 1, serve 2)``, all on the PostgreSQL database of ``cfg``."""
    with Sidecar(cfg, port, env=PG_ENV) as run:
        run.wait(lambda: settled(run, anvil_head()), what="run to reach anvil's head")
        p1, p2 = free_port(), free_port()
        with Sidecar(cfg, p1, ("serve", "--port", str(p1)), PG_ENV) as s1, \
                Sidecar(cfg, p2, ("serve", "--port", str(p2)), PG_ENV) as s2:
            yield run, s1, s2


@pytest.mark.anvil
def test_one_run_and_two_serves_on_postgres_answer_alike_and_a_second_run_is_refused(tmp_path, anvil, pg_server):
    url = pg_server.database()
    port = free_port()
    cfg = serve_config(tmp_path / "config.toml", node=anvil.url, storage=f'url = "{url}"', port=port)
    anvil.traffic(5, txs_per_block=3)
    with one_run_two_serves(cfg, port, lambda: anvil.head()[1]) as (run, s1, s2):
        # Consistent at rest: every process shows the head and chain data the engine committed.
        first = views(run, s1, s2)
        assert first[0] == first[1] == first[2]
        assert first[0][1]["transfers"] == 15
        assert s1.status()["role"] == "serve" and s1.ready() == (200, "serving")
        # While blocks and a reorg arrive, a serving process never shows a head the engine has not committed.
        anvil.traffic(4, txs_per_block=2, seed=3)
        anvil.reorg(3, txs=2, seed=5)
        anvil.traffic(2, txs_per_block=1, seed=9)
        target = anvil.head()[1]
        while not settled(run, target):
            for s in (s1, s2):
                shown = s.status()["head"]["number"]
                assert shown <= run.status()["head"]["number"]  # the engine's head, read after: never behind
            time.sleep(0.02)
        for s in (s1, s2):
            s.wait(lambda s=s: s.status()["head"]["hash"] == target, what="serve to see the new head")
        after = views(run, s1, s2)
        assert after[0] == after[1] == after[2]
        assert after[0][0]["hash"] == target and after[0] != first[0]

        # A second `monmouth run` on the same database: refused, naming the database and the holder.
        other = free_port()
        r = subprocess.run([*MONMOUTH, "run", "--config", str(cfg)], cwd=tmp_path, capture_output=True,
                           text=True, timeout=60,
                           env={**os.environ, "PYTHONPATH": str(ROOT), **PG_ENV,
                                "MONMOUTH_HTTP__PORT": str(other)})
        assert r.returncode != 0
        dbname = url.rsplit("/", 1)[1]
        assert "another engine owns ingestion" in r.stderr and repr(dbname) in r.stderr, r.stderr
        assert f"monmouth run pid {run.proc.pid} on" in r.stderr, r.stderr
        assert run.alive and settled(run, target)

        # `monmouth status` reads the database beside the running engine (the ingestion lock is not taken).
        r = subprocess.run([*MONMOUTH, "status", "--json", "--config", str(cfg)], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PYTHONPATH": str(ROOT), **PG_ENV, "MONMOUTH_HTTP__ENABLED": "false"})
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["head"] == after[0][0]


def test_a_slow_read_is_cancelled_by_statement_timeout_with_a_503_naming_it(pg_server):
    """``storage.statement_timeout`` = 0.5 s: a route whose query runs 30 s answers 503 within a few seconds, naming
    the key; the engine's connection and the connections outside requests have no statement timeout."""
    from fastapi.testclient import TestClient

    from monmouth.api import create_api
    from monmouth.app import open_app
    from tests.conftest import settings_for
    from tests.plugins import ledgerapi

    plugins = {"ledgerapi": ledgerapi}
    settings = settings_for(pg_server.database(), plugins, enabled=("ledgerapi",),
                            storage={"statement_timeout": 0.5, "lock_timeout": 0.5})
    app = open_app(settings=settings, extra_plugins=plugins, environ=PG_ENV, serve=True)
    try:
        with TestClient(create_api(app), raise_server_exceptions=False) as client:
            assert client.get("/ledger/sleep", params={"seconds": 0.05}).json() == {"slept": 0.05}
            t0 = time.monotonic()
            r = client.get("/ledger/sleep", params={"seconds": 30})
            assert time.monotonic() - t0 < 10
            assert r.status_code == 503 and r.headers["retry-after"] == "5"
            assert "storage.statement_timeout" in r.json()["detail"], r.json()
            assert "canceling statement due to statement timeout" in r.json()["detail"]
            assert client.get("/ledger/summary").status_code == 200  # the connection is usable again
        # Outside a request (the engine, workers, start-up): no statement timeout, the lock timeout still.
        engine = app.db.engine_connection()
        assert engine.execute("SHOW statement_timeout").fetchone()[0] == "0"
        engine.close()
        assert app.db.reader().execute("SHOW statement_timeout").fetchone()[0] == "0"
        assert app.db.reader().execute("SHOW lock_timeout").fetchone()[0] == "500ms"
        assert app.db.reader().execute("SELECT pg_sleep(0.7)").fetchone() is not None
    finally:
        app.close()


@pytest.mark.parametrize(("storage", "key", "message"), [
    ({"path": "x.sqlite", "read_url": "postgresql://u@h/db"}, "storage.read_url", "needs storage.url"),
    ({"url": "postgresql://u@h/db", "read_url": "x.sqlite"}, "storage.read_url", "must be a postgresql:// URL"),
    ({"url": "postgresql://u@h/db", "read_url": "postgresql://u:secret@h/db"}, "storage.read_url",
     "must not contain a password"),
    ({"url": "postgresql://u@h/db", "statement_timeout": -1}, "storage.statement_timeout", "greater than or equal"),
    ({"url": "postgresql://u@h/db", "lock_timeout": "soon"}, "storage.lock_timeout", "number"),
])
def test_storage_settings_are_validated_naming_the_file_and_the_key(tmp_path, storage, key, message):
    from monmouth.config import validate
    from monmouth.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        validate({"storage": storage}, str(tmp_path / "config.toml"), {})
    assert str(tmp_path / "config.toml") in str(e.value) and key in str(e.value) and message in str(e.value)
    assert ":secret@" not in str(e.value)  # the password is never echoed


def test_get_requests_read_the_streaming_replica_and_status_reports_its_lag(pg_server):
    """``storage.read_url`` on a real hot standby (pg_basebackup -R): GET routes read it, /status gives its head,
    its lag in blocks behind the engine's cursor and its replay lag; while replay is paused the replica's data and
    head stay behind, a serving process's own head stays the primary's, and both catch up once replay resumes."""
    from fastapi.testclient import TestClient

    from monmouth.api import create_api
    from monmouth.app import open_app
    from monmouth.types import ChainCommitted
    from tests.chains import chain, extend
    from tests.conftest import settings_for, wait_for_sync
    from tests.plugins import ledgerapi

    plugins = {"ledgerapi": ledgerapi}
    url = pg_server.database()
    with pg_server.replica() as replica:
        settings = settings_for(url, plugins, enabled=("ledgerapi",),
                                storage={"read_url": replica.url(url.rsplit("/", 1)[1])})
        app = open_app(settings=settings, extra_plugins=plugins, environ=PG_ENV)
        server = open_app(settings=settings, extra_plugins=plugins, environ=PG_ENV, serve=True)
        try:
            blocks = extend(None, 4, n_txs=2)
            app.engine.apply(ChainCommitted(chain(blocks)))
            with TestClient(create_api(app), raise_server_exceptions=False) as client, \
                    TestClient(create_api(server), raise_server_exceptions=False) as serving:
                assert client.get("/ledger/server").json() == {"replica": True}
                assert client.post("/ledger/server").json() == {"replica": False}  # may write: the primary
                wait_for_sync(lambda: client.get("/status").json()["replica"]["lag_blocks"] == 0, "replica in sync")
                st = client.get("/status").json()
                assert st["replica"]["head"] == st["head"] and st["replica"]["replay_lag_s"] == 0
                assert client.get("/ledger/summary").json()["transfers"] == 8

                replica.pause()
                more = extend(blocks[-1], 3, n_txs=2, salt="more")
                app.engine.apply(ChainCommitted(chain(more)))
                time.sleep(0.3)
                wait_for_sync(lambda: client.get("/status").json()["replica"]["replay_lag_s"] > 0.2, "replay lag")
                st = client.get("/status").json()
                assert st["head"]["number"] == more[-1].number
                assert st["replica"]["lag_blocks"] == 3 and st["replica"]["head"]["number"] == blocks[-1].number
                assert "password" not in json.dumps(st) and PASSWORD not in json.dumps(st)
                assert client.get("/ledger/summary").json()["transfers"] == 8  # read on the paused replica
                assert serving.get("/status").json()["head"] == st["head"]  # the primary's cursor, not the replica's
                assert app.db.reader().execute("SELECT count(*) FROM ledger_transfers").fetchone()[0] == 14

                replica.pause(False)
                wait_for_sync(lambda: client.get("/status").json()["replica"]["lag_blocks"] == 0, "replay resumed")
                assert client.get("/ledger/summary").json()["transfers"] == 14
        finally:
            server.close()
            app.close()


@pytest.mark.anvil
def test_serve_beside_one_run_on_sqlite(tmp_path, anvil):
    """On SQLite: one ``monmouth serve`` beside the ``monmouth run`` on the same file (same machine, WAL)."""
    port, other = free_port(), free_port()
    cfg = serve_config(tmp_path / "config.toml", node=anvil.url, storage='path = "db.sqlite"', port=port)
    anvil.traffic(3, txs_per_block=2)
    with Sidecar(cfg, port) as run:
        run.wait(lambda: settled(run, anvil.head()[1]), what="run to reach anvil's head")
        with Sidecar(cfg, other, ("serve", "--port", str(other))) as serving:
            assert views(serving) == views(run)
            anvil.reorg(2, txs=1, seed=2)
            target = anvil.head()[1]
            run.wait(lambda: settled(run, target), what="run to follow the reorg")
            assert views(serving) == views(run) and serving.status()["head"]["hash"] == target
        assert serving.proc.returncode == 0, serving.logged()  # SIGTERM: drained and exited cleanly
        assert "monmouth serve: http://127.0.0.1:" in serving.logged()


#: Two agents that sign in with Ethereum (SIWE) and write memory through the serving processes.
AGENT_KEYS = ("0x" + "a1" * 32, "0x" + "b2" * 32)
#: The HMAC key of agent tokens, shared by every process: a token signed in on one serve is good on the other.
AUTH_SECRET = "5e" * 32


def memory_extra(agents: list[str]) -> str:
    """``[auth]``, memory and rag sections for :func:`serve_config` (after ``[storage]``)."""
    from tests import pgvector

    knn = "" if pgvector.hnsw_runs() else 'pg_knn = "sql"'  # tests.test_rag_support.PG_RAG
    quoted = ", ".join(f'"{a}"' for a in agents)
    return f"""
[auth]
secret = "{AUTH_SECRET}"
rate_token = 0  # the test's pace of requests per token is not what it checks

[plugins.memory]
enabled = true
embed = false
key_dir = "keys"
agents = [{quoted}]

[plugins.rag]
enabled = true
chunk_tokens = 64
chunk_overlap = 16
{knn}
"""


def sign_in(base: str, key: str) -> str:
    """An agent's bearer token: GET /auth/nonce, then POST /auth/siwe signed with ``key`` (EIP-4361)."""
    from monmouth.siwe import sign_in_with_key

    with httpx.Client(base_url=base, timeout=10) as c:
        n = c.get("/auth/nonce").json()
        msg, sig = sign_in_with_key(key, n["nonce"], domain=n["domain"], chain_id=n["chain_id"])
        r = c.post("/auth/siwe", json={"message": msg, "signature": sig})
        assert r.status_code == 200, r.text
        return str(r.json()["token"])


def workers_running(s: Sidecar) -> dict[str, bool]:
    """Whether the memory settle/index worker and the rag embedding worker run in this process (``/status``)."""
    plugins = s.status()["plugins"]
    return {"memory": plugins["memory"]["worker_running"], "rag": plugins["rag"]["worker_running"]}


@pytest.mark.anvil
def test_agents_write_memory_through_two_serves_while_run_ingests_blocks_and_reorgs(tmp_path, anvil, pg_server):
    """Issue 15's acceptance: one ``monmouth run`` and two ``monmouth serve`` on one PostgreSQL, memory and rag on;
    two agents signed in with SIWE write and read memory through BOTH serves concurrently while anvil mines blocks
    and reorgs. Only ``run`` runs the background workers; every write is present exactly once, both serves list the
    same items, and the memory global root the serves answer equals the one ``run``'s own ``/status`` reports."""
    from eth_account import Account

    agents = [Account.from_key(k).address.lower() for k in AGENT_KEYS]
    port = free_port()
    cfg = serve_config(tmp_path / "config.toml", node=anvil.url, storage=f'url = "{pg_server.database()}"',
                       port=port, extra=memory_extra(agents))
    anvil.traffic(3, txs_per_block=2)
    with one_run_two_serves(cfg, port, lambda: anvil.head()[1]) as (run, s1, s2):
        # The role: one set of background workers, `run`'s; none in a serving process.
        run.wait(lambda: workers_running(run) == {"memory": True, "rag": True}, what="run's workers")
        assert workers_running(s1) == workers_running(s2) == {"memory": False, "rag": False}
        serves = {"s1": f"http://127.0.0.1:{s1.port}", "s2": f"http://127.0.0.1:{s2.port}"}
        # Agent 0 signs in on s1, agent 1 on s2; each token is then used on both serves.
        tokens = [sign_in(serves["s1"], AGENT_KEYS[0]), sign_in(serves["s2"], AGENT_KEYS[1])]
        chain_done, errors = threading.Event(), []
        written: dict[str, list[str]] = {agent: [] for agent in agents}  # keys answered 201, per agent

        def writer(agent: str, token: str, via: str, other: str) -> None:
            """Write through ``via`` and read each item back through ``other`` until the chain is done
            moving (and at least 8 times)."""
            headers = {"authorization": f"Bearer {token}"}
            with httpx.Client(base_url=serves[via], headers=headers, timeout=30) as w, \
                    httpx.Client(base_url=serves[other], headers=headers, timeout=30) as r:
                i = 0
                while i < 8 or not chain_done.is_set():
                    key, content = f"{via}-{i}", f"note {i} via {via}"
                    made = w.post(f"/memory/agents/{agent}/items",
                                  json={"kind": "semantic", "content": content, "key": key})
                    if made.status_code != 201:
                        errors.append(f"POST {key} for {agent} via {via}: {made.status_code} {made.text}")
                        return
                    written[agent].append(key)
                    got = r.get(f"/memory/agents/{agent}/items/{made.json()['id']}")
                    if got.status_code != 200 or got.json()["content"] != content:
                        errors.append(f"GET {key} for {agent} via {other}: {got.status_code} {got.text}")
                        return
                    i += 1

        threads = [threading.Thread(target=writer, args=(agent, token, via, other))
                   for agent, token in zip(agents, tokens, strict=True)
                   for via, other in (("s1", "s2"), ("s2", "s1"))]
        for t in threads:
            t.start()
        # Meanwhile the chain moves and `run` ingests it: blocks, a reorg, more blocks.
        try:
            for step in (lambda: anvil.traffic(3, txs_per_block=2, seed=4), lambda: anvil.reorg(2, txs=2, seed=6),
                         lambda: anvil.traffic(2, txs_per_block=1, seed=8)):
                step()
                run.wait(lambda: settled(run, anvil.head()[1]), what="run to follow anvil")
        finally:
            chain_done.set()
            for t in threads:
                t.join(120)
        assert not errors, errors
        assert not any(t.is_alive() for t in threads)
        assert all(len(keys) >= 16 for keys in written.values()), written

        # One more block anchors the last writes; wait for `run` to ingest and settle it.
        anvil.mine()
        target = anvil.head()
        run.wait(lambda: settled(run, target[1]), what="run to reach anvil's head")

        def memory_settled() -> bool:
            m = run.status()["plugins"]["memory"]
            return m["pending_ops"] == 0 and m["settle_backlog"] == 0 and m["global_root"]["block"] == target[0]

        run.wait(memory_settled, what="run's memory worker to settle the last block")
        for agent in agents:
            lists = [s.get(f"/memory/agents/{agent}/items?limit=1000").json()["items"] for s in (s1, s2)]
            # (a loopback client without a token acts as operator: auth.loopback_open)
            assert lists[0] == lists[1]
            assert sorted(x["key"] for x in lists[0]) == sorted(written[agent])  # each write exactly once
            assert not any(x["pending"] for x in lists[0])  # all anchored in a block by now
            leaves = s1.get(f"/memory/agents/{agent}/leaves").json()["leaves"]
            assert len(leaves) == len(written[agent])  # and committed under the agent's root at the head
        mine = run.status()["plugins"]["memory"]["global_root"]
        roots = [s.get("/memory/root").json() for s in (s1, s2)]
        assert roots[0] == roots[1]
        assert roots[0]["block"] == mine["block"] == target[0] and roots[0]["root"] == mine["root"]
        assert workers_running(s1) == workers_running(s2) == {"memory": False, "rag": False}
        assert workers_running(run) == {"memory": True, "rag": True}


def test_plugins_start_their_background_workers_only_in_the_run_role(tmp_path):
    """``ctx.role``: the same config opened as ``monmouth run`` and as ``monmouth serve`` on one SQLite file; the
    memory worker and the integrations' outbox deliverer (EigenDA's, against its fake proxy) run in the first only,
    and each process's ``/status`` says so."""
    from monmouth.app import open_app
    from monmouth.config import validate
    from monmouth.plugins import config_models
    from monmouth_integrations.eigenda.plugin import EigenDAPlugin
    from monmouth_memory.plugin import MemoryPlugin
    from tests.fakes.eigenda_proxy import FakeEigenDAProxy
    from tests.fakes.harness import FAST

    with FakeEigenDAProxy() as fake:
        apps = {}
        try:
            for role in ("run", "serve"):
                plugins = {"memory": MemoryPlugin(), "eigenda": EigenDAPlugin()}
                sections = {"memory": {"enabled": True, "embed": False, "key_dir": str(tmp_path / "keys")},
                            "eigenda": {"enabled": True, "url": fake.url, **FAST}}
                settings = validate({"storage": {"path": str(tmp_path / "db.sqlite")}, "http": {"enabled": False},
                                     "plugins": sections}, "<test>", config_models(plugins))
                apps[role] = open_app(settings=settings, extra_plugins=plugins, serve=role == "serve")
                assert all(ctx.role == role for ctx in apps[role].host.enabled.values())
            seen = {role: app.status()["plugins"] for role, app in apps.items()}
            assert seen["run"]["memory"]["worker_running"] is True and seen["run"]["eigenda"]["deliverer"] == "running"
            assert seen["serve"]["memory"]["worker_running"] is False
            assert seen["serve"]["eigenda"]["deliverer"] == "stopped"
        finally:
            for app in apps.values():
                app.close()


def test_serve_hot_reloads_what_the_api_reads_and_keeps_the_last_good_config(tmp_path):
    """``monmouth serve`` reloads config.toml as ``monmouth run`` does (sidecar/serving.py, invariant 5): ``[auth]``,
    the ``[http]`` limits and the plugins apply at once; the listening socket and ``--port`` stay as started (the
    change is logged); an invalid file is rejected and the last good config keeps serving."""
    from monmouth.app import open_app

    port = free_port()
    admin = "serve-reload-admin-token-0123456789"
    cfg = serve_config(tmp_path / "config.toml", node="http://127.0.0.1:9", storage='path = "db.sqlite"', port=port)
    first = cfg.read_text()
    open_app(cfg).close()  # the database's tables, as a `monmouth run` would have made them
    with Sidecar(cfg, port, ("serve", "--port", str(port))) as s:
        pad = {"pad": "x" * 3000}
        assert s.http.post("/nosuch", json=pad).status_code == 404  # within max_body_bytes: routed
        assert s.get("/status").status_code == 200  # loopback, no token: admin
        assert s.get("/ledger/summary").status_code == 200

        cfg.write_text(first.replace(f'host = "127.0.0.1"\nport = {port}',
                                     f'host = "localhost"\nmax_body_bytes = 2048\nport = {free_port()}')
                       .replace("enabled = true\nmodule", "enabled = false\nmodule")
                       + f'\n[auth]\nloopback_open = false\nadmin_tokens = ["{admin}"]\n')
        s.wait(lambda: s.get("/status").status_code == 401, what="[auth] to be reloaded")
        s.http.headers["Authorization"] = f"Bearer {admin}"
        assert s.get("/status").status_code == 200
        assert s.http.post("/nosuch", json=pad).status_code == 413  # the new http.max_body_bytes
        r = s.get("/ledger/summary")
        assert r.status_code == 503 and "plugin 'ledgerapi' is disabled" in r.text, r.text
        assert s.metric("monmouth_config_reloads_total", 'outcome="applied"') >= 1
        logged = s.logged()
        assert "config: http.host changed; the HTTP server listens as it started until the next restart" in logged
        assert "http.port" not in logged  # --port is kept over the file's port

        cfg.write_text(first.replace("port = ", 'max_body_bytes = "lots"\nport = ', 1))  # invalid: rejected
        s.wait(lambda: s.metric("monmouth_config_reloads_total", 'outcome="rejected"') >= 1, what="a rejection")
        assert "config reload of" in s.logged() and "max_body_bytes" in s.logged()
        assert httpx.get(f"http://127.0.0.1:{port}/status").status_code == 401  # the last good config serves
        assert s.http.post("/nosuch", json=pad).status_code == 413
    assert s.proc.returncode == 0, s.logged()
