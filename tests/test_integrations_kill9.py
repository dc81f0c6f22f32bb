"""``kill -9`` of a real ``monmouth run`` subprocess while it ingests a history with reorgs and delivers EigenDA
and Othentic jobs to fakes that fail 30% of requests: nothing is lost (every job of the final canonical chain
reaches its service), nothing is done twice (each delivery key has one effect: one dispersal, one task), and a
request is repeated on the wire only when a kill cut the sidecar off between the service's answer and the commit
that records it (at most one per kill per integration, and always under the same key)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from monmouth_integrations.eigenda.plugin import EigenDAPlugin
from monmouth_integrations.othentic.plugin import OthenticPlugin
from tests.fakes.eigenda_proxy import FakeEigenDAProxy
from tests.fakes.harness import DEV_KEY
from tests.fakes.othentic_aggregator import FakeOthenticAggregator
from tests.test_cli import long_history
from tests.test_integrations_outbox import drain

ROOT = Path(__file__).resolve().parents[1]
MONMOUTH = [sys.executable, "-m", "monmouth"]
EVERY = 3


def write_config(tmp_path: Path, eig_url: str, agg_url: str) -> Path:
    retry = ('timeout_s = 2.0\nbackoff_initial_s = 0.05\nbackoff_max_s = 0.2\npoll_interval_s = 0.05\n'
             'breaker_fail_max = 50\nbreaker_reset_s = 0.2\n')
    cfg = tmp_path / "config.toml"
    cfg.write_text(f"""
[source]
kind = "replay"
path = "history.mnr"

[storage]
path = "db.sqlite"
synchronous = "NORMAL"

[http]
enabled = false

[plugins.slow]
enabled = true
module = "{ROOT / 'tests' / 'fakes' / 'slow_plugin.py'}"

[plugins.eigenda]
enabled = true
url = "{eig_url}"
every_blocks = {EVERY}
{retry}
[plugins.othentic]
enabled = true
aggregator_url = "{agg_url}"
task_definition_id = 1
proof_of_task = "root"
every_blocks = {EVERY}
{retry}""")
    return cfg


def test_kill_9_loses_nothing_and_does_nothing_twice(tmp_path):
    notes, canonical = long_history(tmp_path / "history.mnr")
    with FakeEigenDAProxy(latency_s=0.01) as eig, FakeOthenticAggregator(latency_s=0.01) as agg:
        eig.fail("5xx", probability=0.3, seed=1)
        agg.fail("5xx", probability=0.3, seed=2)
        cfg = write_config(tmp_path, eig.url, agg.url)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OTHENTIC_PRIVATE_KEY": DEV_KEY,
               "MONMOUTH_TEST_BLOCK_DELAY": "0.03"}
        kills = 0
        with open(tmp_path / "runs.log", "wb") as logf:
            rng = random.Random(7)
            for _ in range(4):
                proc = subprocess.Popen([*MONMOUTH, "run", "--config", str(cfg)], env=env, cwd=tmp_path,
                                        stdout=subprocess.DEVNULL, stderr=logf)
                # Kill once this run has sent a few requests (start-up alone takes seconds on a busy machine),
                # at a random moment: mid-request, mid-commit, mid-notification.
                target = eig.count() + agg.count() + rng.randint(3, 9)
                deadline = time.monotonic() + 30
                while proc.poll() is None and eig.count() + agg.count() < target and time.monotonic() < deadline:
                    time.sleep(0.005)
                time.sleep(rng.uniform(0, 0.03))
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    kills += 1
                proc.wait(10)
            # One last run to the end of the history (it exits when the replay file is done).
            final = subprocess.run([*MONMOUTH, "run", "--config", str(cfg)], env=env, cwd=tmp_path,
                                   stdout=subprocess.DEVNULL, stderr=logf, timeout=180)
        assert final.returncode == 0, (tmp_path / "runs.log").read_text()[-3000:]
        assert kills >= 3
        sent_before_drain = (len(eig.received_keys), len(agg.received_keys))
        assert sent_before_drain[0] > 0 and sent_before_drain[1] > 0  # the kills landed while delivering

        # Drain what is left, in-process, from the same database.
        from monmouth.app import open_app

        os.environ["OTHENTIC_PRIVATE_KEY"] = DEV_KEY
        try:
            eig.heal()
            agg.heal()
            plugins = {"eigenda": EigenDAPlugin(workers=False), "othentic": OthenticPlugin(workers=False)}
            cwd = os.getcwd()
            os.chdir(tmp_path)
            try:
                app = open_app(cfg, extra_plugins={**plugins, "slow": _noop()})
            finally:
                os.chdir(cwd)
            assert app.engine.head == canonical[-1].ref
            drain(plugins["eigenda"].rt.deliverer, timeout=60)
            drain(plugins["othentic"].rt.deliverer, timeout=60)
            conn = app.engine.conn
            certs = dict(conn.execute("SELECT block_number, block_hash FROM eigenda_certs"))
            tasks = dict(conn.execute("SELECT block_number, block_hash FROM othentic_tasks"))
            app.close()
        finally:
            os.environ.pop("OTHENTIC_PRIVATE_KEY", None)

    expected = {b.number: b.hash for b in canonical if b.number % EVERY == 0}
    # Nothing lost: every job of the final canonical chain reached its service, and its result is stored.
    for prefix, fake in (("eigenda", eig), ("othentic", agg)):
        keys = {f"{prefix}:block:{n}:0x{h.hex()}" for n, h in expected.items()}
        assert keys <= set(fake.received_keys), sorted(keys - set(fake.received_keys))[:5]
    assert certs == expected and tasks == expected
    # Nothing done twice: one dispersal / one task per key.
    assert eig.dispersals == len(eig.certs_by_key) == len(set(eig.received_keys))
    assert len(agg.tasks) == len(set(agg.received_keys))
    # On the wire, a key repeats only when a kill struck between the answer and its commit.
    for fake in (eig, agg):
        repeats = len(fake.received_keys) - len(set(fake.received_keys))
        assert repeats <= kills, (repeats, kills)
    # Keys of blocks that are not canonical were delivered before their block was reverted (a reorg cannot
    # recall them); none was sent after its block was gone, since the outbox trims it on revert.
    canonical_hashes = {b.hash.hex() for b in canonical}
    stale = [k for k in eig.received_keys if k.rsplit(":0x", 1)[1] not in canonical_hashes]
    assert len(stale) <= len(notes) // 15 * 3  # at most the jobs of the reorged blocks


def _noop():
    class Noop:
        pass

    return Noop()
