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
            seen = 0
            while not settled(run, target):
                for s in (s1, s2):
                    shown = s.status()["head"]["number"]
                    assert shown <= run.status()["head"]["number"]  # the engine's head, read after: never behind
                    seen += 1
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
