"""Ingestion rate is unaffected while the services are down: a sidecar replaying 200 blocks with EigenDA and
Othentic jobs on every block ingests as fast when both services hang (every request times out) as when they
answer, and the work waits in the outbox, delivered once the services are back."""

from __future__ import annotations

import time
from functools import partial

import anyio
import pytest

from monmouth.replayfile import ReplayWriter
from monmouth.runner import Runner
from monmouth.sources.replay import ReplaySource
from monmouth.types import ChainCommitted
from monmouth_integrations.eigenda.plugin import EigenDAPlugin
from monmouth_integrations.othentic.plugin import OthenticPlugin
from tests.chains import chain, extend
from tests.fakes.eigenda_proxy import FakeEigenDAProxy
from tests.fakes.harness import DEV_KEY, open_test_app
from tests.fakes.othentic_aggregator import FakeOthenticAggregator
from tests.test_integrations_outbox import drain

pytestmark = pytest.mark.anyio
BLOCKS = 200


async def ingest(tmp_path, name, eig_url, agg_url):
    """Replay the history into a fresh sidecar; returns (seconds, app, plugins)."""
    plugins = {"eigenda": EigenDAPlugin(), "othentic": OthenticPlugin()}
    cfg = {"timeout_s": 0.5, "backoff_initial_s": 0.05, "backoff_max_s": 0.5, "poll_interval_s": 0.05,
           "every_blocks": 1, "breaker_fail_max": 5, "breaker_reset_s": 0.3}
    app = open_test_app(tmp_path / f"{name}.sqlite", plugins,
                        {"eigenda": {"url": eig_url, **cfg},
                         "othentic": {"aggregator_url": agg_url, "proof_of_task": "root", **cfg}})
    runner = Runner(app, ReplaySource(tmp_path / "h.mnr"), serve_http=False, watch_config=False)
    t0 = time.perf_counter()
    await runner.run()
    return time.perf_counter() - t0, app, plugins


async def test_ingestion_rate_unaffected_while_services_are_down(tmp_path, monkeypatch):
    monkeypatch.setenv("OTHENTIC_PRIVATE_KEY", DEV_KEY)
    with ReplayWriter(tmp_path / "h.mnr") as w:
        for b in extend(None, BLOCKS, number=1, n_txs=20):
            w.write(ChainCommitted(chain([b])))
    with FakeEigenDAProxy(hang_s=3.0) as eig, FakeOthenticAggregator(hang_s=3.0) as agg:
        up, down = [], []
        for i in range(2):  # interleaved, best of two: the machine is shared
            eig.heal()
            agg.heal()
            t, app, _ = await ingest(tmp_path, f"up{i}", eig.url, agg.url)
            up.append(t)
            app.close()
            eig.fail("timeout")
            agg.fail("timeout")
            t, app, plugins = await ingest(tmp_path, f"down{i}", eig.url, agg.url)
            down.append(t)
            assert app.engine.head.number == BLOCKS
            # Everything is still waiting in the outbox (nothing was delivered), and the breakers are open.
            eo = plugins["eigenda"].rt.outbox.counts()
            assert eo["done"] == 0 and eo["pending"] + eo["sending"] == BLOCKS
            if i == 0:
                # The services come back: the backlog drains.
                eig.heal()
                agg.heal()
                await anyio.sleep(0.35)
                for name in ("eigenda", "othentic"):
                    await anyio.to_thread.run_sync(partial(drain, plugins[name].rt.deliverer, timeout=60))
                assert plugins["eigenda"].rt.outbox.counts()["done"] == BLOCKS
                assert plugins["othentic"].rt.outbox.counts()["done"] == BLOCKS
            app.close()
        rate_up, rate_down = BLOCKS / min(up), BLOCKS / min(down)
        print(f"blocks/s with services up {rate_up:.0f}, down {rate_down:.0f}")
        assert rate_down >= 0.75 * rate_up, (up, down)
