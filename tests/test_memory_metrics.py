"""The memory plugin's Prometheus gauges (``plugins/memory/metrics.py``): read from the database at each scrape, they
equal the backlogs ``/status`` reports, and they leave the registry with the plugin (a re-enabled plugin registers
them again)."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from monmouth.types import ChainCommitted
from tests.chains import address, chain, extend
from tests.memory_helpers import close, make_memory_engine, settle

A1 = address(1)


def scrape(registry) -> dict[str, float]:
    return {s.name: s.value for f in text_string_to_metric_families(generate_latest(registry).decode())
            for s in f.samples if s.name.startswith("monmouth_memory_")}


def test_backlog_gauges_follow_settling_and_leave_with_the_plugin(tmp_path, storage_of):
    cfg = {"key_dir": str(tmp_path / "keys"), "agents": ["0x" + A1.hex()], "embed": False}
    e, p = make_memory_engine(storage_of("db.sqlite"), cfg, workers=False)
    registry = e.metrics.registry
    try:
        assert scrape(registry) == {"monmouth_memory_settle_backlog": 0, "monmouth_memory_index_backlog": 0,
                                    "monmouth_memory_embed_backlog": 0}
        e.apply(ChainCommitted(chain(extend(None, 4, number=1, n_txs=2))))
        status = e.host.status()["memory"]
        got = scrape(registry)
        assert got["monmouth_memory_settle_backlog"] == status["settle_backlog"] > 0
        assert got["monmouth_memory_index_backlog"] == status["index_backlog"]
        settle(e.conn)
        assert scrape(registry)["monmouth_memory_settle_backlog"] == 0
        settings = e.host.settings
        off = settings.model_copy(deep=True)
        off.plugins["memory"].enabled = False
        assert e.host.apply_settings(off) == ["disabled memory"]
        assert scrape(registry) == {}  # unregistered with the plugin
        assert e.host.apply_settings(settings) == ["enabled memory"]  # registered again: no duplicate-name error
        assert scrape(registry)["monmouth_memory_settle_backlog"] == 0
    finally:
        close(e)
