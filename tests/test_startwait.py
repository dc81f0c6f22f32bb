"""``monmouth run`` started before its PostgreSQL: it waits with backoff, ``/ready`` answers 503 naming the database
and the fault, and it ingests by itself once the server is up (a real server started on that port meanwhile)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from monmouth.types import ChainCommitted
from tests.chains import chain, extend
from tests.conftest import make_engine
from tests.pg import PASSWORD, PgServer, free_port
from tests.plugins import ledger

ROOT = Path(__file__).resolve().parents[1]


def test_run_waits_for_an_unreachable_postgres_and_says_so_on_ready(tmp_path, pg_server):
    """(``pg_server``: skipped or failed as the other PostgreSQL tests when the binaries are missing.)"""
    from monmouth.replayfile import ReplayWriter

    bs = extend(None, 4, number=1, n_txs=2)
    with ReplayWriter(tmp_path / "h.mnr") as w:
        w.write(ChainCommitted(chain(bs)))
    pg_port, http_port = free_port(), free_port()
    url = f"postgresql://monmouth@127.0.0.1:{pg_port}/later"
    (tmp_path / "config.toml").write_text(f"""
[source]
kind = "replay"
path = "h.mnr"
max_backoff = 0.5
[storage]
url = "{url}"
[http]
port = {http_port}
[plugins.ledger]
enabled = true
module = "{ROOT / 'tests' / 'plugins' / 'ledger.py'}"
""")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MONMOUTH_PG_PASSWORD": PASSWORD}
    proc = subprocess.Popen([sys.executable, "-m", "monmouth", "run", "--config", "config.toml"], env=env,
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        ready = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{http_port}/ready", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert ready is not None, proc.stderr.read() if proc.poll() is not None else "no answer"
        assert ready.status_code == 503
        body = ready.json()
        assert body["ready"] is False and f"cannot connect to {url}" in body["detail"]
        assert httpx.get(f"http://127.0.0.1:{http_port}/health").json() == {"status": "starting"}
        time.sleep(1.5)
        assert proc.poll() is None  # still waiting, with backoff
        with PgServer(port=pg_port) as server:
            server.database(name="later")
            assert proc.wait(60) == 0, proc.stderr.read()
            log = proc.stderr.read()
            assert "next attempt in" in log and "database reachable" in log
            e = make_engine(url, {"ledger": ledger})
            assert e.head == bs[-1].ref
            assert e.conn.execute("SELECT count(*) FROM ledger_transfers").fetchone() == (8,)
            e.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
