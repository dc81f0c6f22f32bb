"""Each hook the integration plugins implement: entry points (installed, off by default), config models (unknown
keys and bad values refused naming them), migrations and trimmed tables, startup/shutdown of the deliverer (and
restart on a config change), the wake-up after each commit, and Lagrange's chain hooks on synthetic logs
(ours indexed, others ignored, a revert restores the tables exactly)."""

from __future__ import annotations

import time

import pytest
from eth_abi import encode

from monmouth.config import validate
from monmouth.errors import ConfigError
from monmouth.plugins import config_models, discover
from monmouth.types import Block, ChainCommitted, ChainReverted, Log, Receipt
from monmouth_integrations.eigenda.plugin import EigenDAPlugin
from monmouth_integrations.lagrange.abi import NEW_REQUEST_TOPIC, NEW_RESPONSE_TOPIC
from monmouth_integrations.lagrange.plugin import LagrangePlugin
from tests.chains import chain, extend
from tests.fakes.eigenda_proxy import FakeEigenDAProxy
from tests.fakes.harness import DEV_ADDRESS, DEV_KEY, FAST, close, integration_engine

NAMES = ("eigenda", "othentic", "lagrange", "composio")


def dump(conn):
    return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall()) for t in ("lagrange_requests", "lagrange_results")}


def test_registered_as_entry_points_and_off_by_default():
    installed = discover()
    for name in NAMES:
        assert name in installed
    settings = validate({}, "<test>", config_models(installed))
    assert not any(settings.plugin_enabled(n) for n in NAMES)


@pytest.mark.parametrize(("name", "section", "needle"), [
    ("eigenda", {"bogus": 1}, "bogus"),
    ("eigenda", {"every_blocks": 0}, "every_blocks"),
    ("othentic", {"task_definition_id": 70000}, "task_definition_id"),
    ("othentic", {"private_key_env": "not a name"}, "private_key_env"),
    ("lagrange", {"registry": "0x1234"}, "registry"),
    ("lagrange", {"placeholders": ["$nope"]}, "placeholders"),
    ("composio", {"api_key": "sk-secret"}, "api_key"),  # secrets never in the file: no such key
    ("composio", {"trigger": "blocks"}, "trigger"),
])
def test_config_refuses_bad_keys_naming_them(name, section, needle):
    installed = discover()
    with pytest.raises(ConfigError) as e:
        validate({"plugins": {name: {"enabled": True, **section}}}, "config.toml", config_models(installed))
    assert needle in str(e.value) and "config.toml" in str(e.value)


def test_migrations_create_tables_and_outboxes_are_trimmed_not_journaled(tmp_path):
    with FakeEigenDAProxy() as fake:
        plugin = EigenDAPlugin(workers=False)
        engine = integration_engine(tmp_path / "db.sqlite", {"eigenda": plugin}, {"eigenda": {"url": fake.url}})
        tables = {r[0] for r in engine.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"eigenda_outbox", "eigenda_deliveries", "eigenda_certs"} <= tables
        assert engine.host.trimmed_tables["eigenda_outbox"] == "block_number"
        assert engine.host.trimmed_tables["eigenda_deliveries"] is None
        engine.journal.refresh()
        assert not engine.journal._journaled("eigenda_outbox")
        close(engine)


def test_startup_starts_the_deliverer_shutdown_stops_it_and_a_config_change_restarts_it(tmp_path):
    with FakeEigenDAProxy() as fake:
        plugin = EigenDAPlugin()
        engine = integration_engine(tmp_path / "db.sqlite", {"eigenda": plugin},
                                    {"eigenda": {"url": fake.url, **FAST}})
        d = plugin.rt.deliverer
        assert d.running
        settings = validate({"plugins": {"eigenda": {"enabled": True, "url": fake.url, "every_blocks": 7}}}, "<test>",
                            config_models({"eigenda": plugin}))
        assert engine.host.apply_settings(settings) == ["reconfigured eigenda"]
        assert not d.running and plugin.rt.deliverer.running and plugin.rt.config.every_blocks == 7
        d2 = plugin.rt.deliverer
        close(engine)
        assert not d2.running and plugin.rt is None
        assert plugin.monmouth_status() is None


def test_commit_wakes_the_deliverer(tmp_path):
    with FakeEigenDAProxy() as fake:
        plugin = EigenDAPlugin()
        engine = integration_engine(tmp_path / "db.sqlite", {"eigenda": plugin},
                                    {"eigenda": {"url": fake.url, "every_blocks": 1, "poll_interval_s": 30}})
        time.sleep(0.2)  # the deliverer is idle, waiting up to 30 s
        note = ChainCommitted(chain(extend(None, 1, number=1)))
        res = engine.apply(note)
        t0 = time.monotonic()
        engine.host.committed(note, res.head)
        while not fake.received_keys and time.monotonic() - t0 < 10:
            time.sleep(0.01)
        assert fake.received_keys and time.monotonic() - t0 < 5
        close(engine)


def _event_block(parent: Block, logs: list[Log]) -> Block:
    b = extend(parent, 1, salt=("ev", len(logs)))[0]
    receipts = (Receipt(1, 21_000, tuple(logs)), *b.receipts[1:])
    return Block(b.number, b.hash, b.parent_hash, b.timestamp, b.beneficiary, b.gas_limit, b.gas_used,
                 b.base_fee_per_gas, b.transactions, receipts)


def test_lagrange_chain_hooks_index_our_events_and_revert_exactly(tmp_path, monkeypatch):
    monkeypatch.setenv("LAGRANGE_PRIVATE_KEY", DEV_KEY)
    registry = bytes.fromhex("5fbdb2315678afecb367f032d93f642f64180aa3")
    ours = b"\x00" * 12 + bytes.fromhex(DEV_ADDRESS[2:])
    theirs = b"\x00" * 12 + b"\x99" * 20
    plugin = LagrangePlugin(workers=False)
    engine = integration_engine(tmp_path / "db.sqlite", {"lagrange": plugin}, {"lagrange": {
        "registry": "0x" + registry.hex(), "query_hash": "0x" + "11" * 32, "every_blocks": 1000}})
    base = extend(None, 2, number=1)
    engine.apply(ChainCommitted(chain(base)))
    before = dump(engine.conn)

    def req(rid: int, client: bytes) -> Log:
        return Log(registry, (NEW_REQUEST_TOPIC, rid.to_bytes(32, "big"), b"\x11" * 32, client),
                   encode(["bytes32[]", "uint256", "uint256", "uint256", "uint256"], [[b"\x01" * 32], 1, 2, 10**16, 0]))

    def resp(rid: int, client: bytes) -> Log:
        return Log(registry, (NEW_RESPONSE_TOPIC, rid.to_bytes(32, "big"), client),
                   encode(["(uint256,bytes[],uint8)"], [(1, [b"\x05" * 32], 0)]))

    other_contract = Log(b"\x42" * 20, req(9, ours).topics, req(9, ours).data)
    b3 = _event_block(base[-1], [req(1, ours), req(2, theirs), other_contract])
    b4 = _event_block(b3, [resp(1, ours), resp(2, theirs), Log(registry, (NEW_RESPONSE_TOPIC,), b"junk")])
    engine.apply(ChainCommitted(chain([b3, b4])))
    assert [r[0] for r in engine.conn.execute("SELECT request_id FROM lagrange_requests")] == ["1"]
    row = engine.conn.execute("SELECT request_id, total_matched_rows, rows, error, block_number "
                              "FROM lagrange_results").fetchall()
    assert row == [("1", "1", '["0x' + "05" * 32 + '"]', 0, 4)]
    engine.apply(ChainReverted(chain([b3, b4])))
    assert dump(engine.conn) == before
    close(engine)
