"""``monmouth serve`` (sidecar/serving.py): API processes without an engine beside the one ``monmouth run``, on a
real PostgreSQL (tests/pg.py) and a real anvil, all as subprocesses; ``storage.statement_timeout``."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

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


@pytest.mark.anvil
def test_one_run_and_two_serves_on_postgres_answer_alike_and_a_second_run_is_refused(tmp_path, anvil, pg_server):
    url = pg_server.database()
    port = free_port()
    cfg = serve_config(tmp_path / "config.toml", node=anvil.url, storage=f'url = "{url}"', port=port)
    anvil.traffic(5, txs_per_block=3)
    with Sidecar(cfg, port, env=PG_ENV) as run:
        run.wait(lambda: settled(run, anvil.head()[1]), what="run to reach anvil's head")
        p1, p2 = free_port(), free_port()
        with Sidecar(cfg, p1, ("serve", "--port", str(p1)), PG_ENV) as s1, \
                Sidecar(cfg, p2, ("serve", "--port", str(p2)), PG_ENV) as s2:
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
