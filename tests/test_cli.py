"""The ``monmouth`` command as a real subprocess: kill -9 at arbitrary moments loses nothing and duplicates
nothing; ``status --json`` and ``plugins`` print what operators rely on; ``record`` captures a real node."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import apsw
import pytest

from monmouth.replayfile import ReplayWriter, read_notifications
from monmouth.types import ChainCommitted, ChainReorged
from tests.chains import chain, extend
from tests.conftest import make_engine
from tests.plugins import ledger
from tests.test_engine import dump

ROOT = Path(__file__).resolve().parents[1]
MONMOUTH = [sys.executable, "-m", "monmouth"]


def config(tmp_path: Path, source: str) -> Path:
    p = tmp_path / "config.toml"
    p.write_text(f"""
[source]
{source}

[storage]
path = "db.sqlite"

[http]
enabled = false

[engine]
progress_interval = 0.5

[plugins.ledger]
enabled = true
module = "{ROOT / 'tests' / 'plugins' / 'ledger.py'}"
""")
    return p


def long_history(path: Path):
    """120 notifications: 1-block commits with a reorg every 15."""
    canonical = extend(None, 1, number=1, n_txs=5)
    notes = [ChainCommitted(chain(canonical))]
    i = 0
    while len(notes) < 120:
        i += 1
        if i % 15 == 0:
            old = canonical[-3:]
            new = extend(canonical[-4], 4, salt=("r", i), n_txs=5)
            notes.append(ChainReorged(chain(old), chain(new)))
            canonical = canonical[:-3] + new
        else:
            b = extend(canonical[-1], 1, salt=i, n_txs=5)
            notes.append(ChainCommitted(chain(b)))
            canonical += b
    with ReplayWriter(path) as w:
        for n in notes:
            w.write(n)
    return notes, canonical


def kill_9_runs_then_finish(tmp_path: Path, cfg: Path, env: dict[str, str], delays: tuple[float, ...]) -> int:
    """``monmouth run`` killed with SIGKILL after each of ``delays`` seconds, then a ``monmouth replay`` to the end
    of history.mnr (must succeed); how many runs were killed while still running."""
    kills = 0
    for delay in delays:
        proc = subprocess.Popen([*MONMOUTH, "run", "--config", str(cfg)], env=env, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(10)
    final = subprocess.run([*MONMOUTH, "replay", str(tmp_path / "history.mnr"), "--config", str(cfg)], env=env,
                           cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr
    return kills


def test_kill_9_at_any_moment_loses_and_duplicates_nothing(tmp_path):
    notes, canonical = long_history(tmp_path / "history.mnr")
    cfg = config(tmp_path, 'kind = "replay"\npath = "history.mnr"')
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    assert kill_9_runs_then_finish(tmp_path, cfg, env, (0.9, 1.3, 1.1, 1.6, 1.2)) >= 2
    live = make_engine(tmp_path / "db.sqlite", {"ledger": ledger})
    ref = make_engine(tmp_path / "ref.sqlite", {"ledger": ledger})
    for n in notes:
        ref.apply(n)
    assert live.head == canonical[-1].ref
    assert dump(live.conn) == dump(ref.conn)
    assert live.notifications_seen == len(notes)  # each notification committed exactly once


def test_kill_9_at_any_moment_on_postgres_loses_and_duplicates_nothing(tmp_path, pg_server):
    """The same as on SQLite, with ``storage.url`` a real PostgreSQL database: each kill leaves the server to roll
    back the open transaction and release the ingestion lock, and the next run resumes after the last commit."""
    from tests.pg import PASSWORD

    url = pg_server.database()
    notes, canonical = long_history(tmp_path / "history.mnr")
    cfg = config(tmp_path, 'kind = "replay"\npath = "history.mnr"')
    cfg.write_text(cfg.read_text().replace('path = "db.sqlite"', f'url = "{url}"'))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MONMOUTH_PG_PASSWORD": PASSWORD}
    assert kill_9_runs_then_finish(tmp_path, cfg, env, (1.2, 1.5, 1.3, 1.8, 1.4)) >= 2
    live = make_engine(url, {"ledger": ledger})
    ref = make_engine(pg_server.database(), {"ledger": ledger})
    for n in notes:
        ref.apply(n)
    assert live.head == canonical[-1].ref
    assert dump(live.conn) == dump(ref.conn)
    assert live.notifications_seen == len(notes)  # each notification committed exactly once
    live.close()
    ref.close()


def test_status_json_and_plugins_offline(tmp_path):
    _, canonical = long_history(tmp_path / "history.mnr")
    cfg = config(tmp_path, 'kind = "replay"\npath = "history.mnr"')
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([*MONMOUTH, "replay", "history.mnr", "--config", str(cfg)], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    st = json.loads(subprocess.run([*MONMOUTH, "status", "--json", "--config", str(cfg)], env=env, cwd=tmp_path,
                                   capture_output=True, text=True, check=True).stdout)
    assert st["head"] == {"number": canonical[-1].number, "hash": "0x" + canonical[-1].hash.hex()}
    assert {"finalized", "source_head", "lag", "plugins"} <= set(st)
    assert st["plugins"]["ledger"]["state"] == "enabled"
    out = subprocess.run([*MONMOUTH, "plugins", "--config", str(cfg)], env=env, cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout
    assert "ledger" in out and "enabled" in out


def test_bad_config_is_refused_naming_key_and_file(tmp_path):
    p = tmp_path / "config.toml"
    p.write_text("[source]\nkind = 'smoke-signals'\n")
    r = subprocess.run([*MONMOUTH, "run", "--config", str(p)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "source.kind" in r.stderr and str(p) in r.stderr


@pytest.mark.anvil
def test_record_from_a_real_node_then_replay(tmp_path, anvil):
    anvil.traffic(6, txs_per_block=2)
    anvil.reorg(2, txs=1)
    cfg = config(tmp_path, f'kind = "rpc"\nurl = "{anvil.url}"\npoll_interval = 0.05\nbatch_size = 3')
    n, _ = anvil.head()
    r = subprocess.run([*MONMOUTH, "record", "rec.mnr", "--config", str(cfg), "--until-block", str(n)],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    notes = [x for _, x, _ in read_notifications(tmp_path / "rec.mnr")]
    assert notes[-1].new.tip.number == n and notes[0].new.first.number == 0
    r = subprocess.run([*MONMOUTH, "replay", "rec.mnr", "--config", str(cfg)], cwd=tmp_path, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    live = make_engine(tmp_path / "db.sqlite", {"ledger": ledger})
    assert live.head.number == n and "0x" + live.head.hash.hex() == anvil.head()[1]


SLOW_LEDGER = """
import time

from monmouth import hookimpl
from tests.plugins import ledger

monmouth_migrations = ledger.monmouth_migrations
monmouth_trimmed_tables = ledger.monmouth_trimmed_tables


@hookimpl
def monmouth_block_applied(conn, block, notification):
    time.sleep(0.05)  # slow enough for the kills to land inside the catch-up
    ledger.index_block(conn, block)
"""


def test_kill_9_during_a_late_plugins_catch_up_loses_and_duplicates_nothing(tmp_path):
    """A plugin enabled after the whole replay file was applied catches up from the file (re-read), killed -9
    several times along the way: its tables end equal to a fresh index of the final canonical chain."""
    notes, canonical = long_history(tmp_path / "history.mnr")
    (tmp_path / "slow.py").write_text(SLOW_LEDGER)
    cfg = config(tmp_path, 'kind = "replay"\npath = "history.mnr"')
    cfg.write_text(cfg.read_text().replace("[plugins.ledger]\nenabled = true", "[plugins.ledger]\nenabled = false")
                   + '\n[plugins.slow]\nenabled = false\nmodule = "slow.py"\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    replay = [*MONMOUTH, "replay", str(tmp_path / "history.mnr"), "--config", str(cfg)]
    first = subprocess.run(replay, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    cfg.write_text(cfg.read_text().replace("[plugins.slow]\nenabled = false", "[plugins.slow]\nenabled = true"))

    def slow_range() -> tuple[str, int] | None:
        try:
            with contextlib.closing(apsw.Connection(str(tmp_path / "db.sqlite"), flags=apsw.SQLITE_OPEN_READONLY)) as db:
                return db.execute("SELECT state, last FROM monmouth_plugin_progress WHERE plugin = 'slow'").fetchone()
        except apsw.Error:
            return None

    kills, seen = 0, []
    for _ in range(3):  # each run is killed as soon as it has moved the catch-up on
        before = slow_range()
        proc = subprocess.Popen(replay, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 90
        while proc.poll() is None and time.monotonic() < deadline:
            now = slow_range()
            if now is not None and now[0] == "catching_up" and now[1] >= 1 and now != before:
                proc.send_signal(signal.SIGKILL)
                kills += 1
                seen.append(now[1])
                break
            time.sleep(0.02)
        proc.wait(10)
    assert kills >= 2 and seen == sorted(seen) and seen[-1] < canonical[-1].number  # killed mid catch-up
    final = subprocess.run(replay, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr
    live = make_engine(tmp_path / "db.sqlite", {"slow": ledger, "ledger": ledger}, enabled=("slow",))
    ref = make_engine(tmp_path / "ref.sqlite", {"ledger": ledger})
    ref.apply(ChainCommitted(chain(canonical)))
    assert live.head == canonical[-1].ref
    assert dump(live.conn) == dump(ref.conn)
    state = live.conn.execute("SELECT state FROM monmouth_plugin_progress WHERE plugin = 'slow'").fetchone()
    assert state == ("live",)


def test_token_new_prints_a_token_whose_hash_is_the_one_printed(tmp_path):
    """``monmouth token new`` and ``monmouth token hash``: the hash of the printed token is the printed hash, and it
    is what the sidecar accepts in auth.admin_tokens."""
    from monmouth.auth import OPERATOR_TOKEN_PREFIX, hash_token

    out = subprocess.run([*MONMOUTH, "token", "new"], capture_output=True, text=True, timeout=60, check=True).stdout
    token = out.split("token: ")[1].split()[0]
    printed = out.split("hash:  ")[1].split()[0]
    assert token.startswith(OPERATOR_TOKEN_PREFIX) and printed == hash_token(token) and printed.startswith("sha256:")
    again = subprocess.run([*MONMOUTH, "token", "hash", token], capture_output=True, text=True, timeout=60,
                           check=True).stdout.strip()
    assert again == printed
    r = subprocess.run([*MONMOUTH, "token", "hash"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "VALUE" in r.stderr
