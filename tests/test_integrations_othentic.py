"""Othentic: ``sendTask`` in the documented shape, signed over the documented encoding (checked by the fake with
eth-abi + eth-keys, independently of the plugin's code), with the EigenDA cert as proof of task when the eigenda
plugin dispersed it (waiting for it), the memory global root otherwise; JSON-RPC errors classified; missing key
refused. The delivery tests run on SQLite and PostgreSQL (``storage_of``)."""

from __future__ import annotations

import json

from eth_abi import encode
from eth_hash.auto import keccak
from eth_keys import keys

from monmouth.types import ChainCommitted
from monmouth_integrations.eigenda.plugin import EigenDAPlugin
from monmouth_integrations.othentic.client import recover_performer, send_task_params, task_digest
from monmouth_integrations.othentic.plugin import OthenticPlugin
from monmouth_memory.plugin import MemoryPlugin
from tests.chains import address, chain, extend
from tests.fakes.eigenda_proxy import FakeEigenDAProxy
from tests.fakes.harness import DEV_ADDRESS, DEV_KEY, FAST, close, integration_engine, sample
from tests.fakes.othentic_aggregator import FakeOthenticAggregator
from tests.test_integrations_outbox import drain

AGENT = "0x" + address(1).hex()


def test_signature_encoding_matches_an_independent_computation():
    data = b'{"x":1}'
    params = send_task_params(DEV_KEY, "0xproof", data, 7)
    assert params[0] == "0xproof" and params[1] == "0x" + data.hex() and params[2] == 7 and params[3] == DEV_ADDRESS
    sig = bytes.fromhex(params[4][2:])
    assert len(sig) == 65 and sig[64] in (27, 28)
    # Re-derive with eth-abi and eth-keys: abi.encode(string, bytes, address, uint16), keccak256, raw digest
    # (no EIP-191 prefix).
    digest = keccak(encode(["string", "bytes", "address", "uint16"], ["0xproof", data, DEV_ADDRESS, 7]))
    assert digest == task_digest("0xproof", data, DEV_ADDRESS, 7)
    pk = keys.PrivateKey(bytes.fromhex(DEV_KEY[2:]))
    expected = pk.sign_msg_hash(digest)
    assert sig[:64] == expected.to_bytes()[:64] and sig[64] == expected.v + 27
    assert recover_performer(params) == DEV_ADDRESS


def setup(storage_of, monkeypatch, with_eigenda, eig_url=None, agg_url=None, **cfg):
    monkeypatch.setenv("OTHENTIC_PRIVATE_KEY", DEV_KEY)
    plugins: dict[str, object] = {"memory": MemoryPlugin(workers=False), "othentic": OthenticPlugin(workers=False)}
    conf = {"memory": {"agents": [AGENT], "embed": False},
            "othentic": {"aggregator_url": agg_url, "task_definition_id": 3, "every_blocks": 2, **FAST, **cfg}}
    if with_eigenda:
        plugins["eigenda"] = EigenDAPlugin(workers=False)
        conf["eigenda"] = {"url": eig_url, "every_blocks": 2, **FAST}
    engine = integration_engine(storage_of("db.sqlite"), plugins, conf)
    return engine, plugins


def root_at(plugins, number: int) -> str:
    """The memory plugin's global root at block ``number`` (hex), on either backend."""
    found = plugins["memory"].global_root_at(number)
    assert found is not None, number
    return "0x" + found[0].hex()


def test_proof_of_task_is_the_eigenda_cert_once_dispersed(storage_of, monkeypatch):
    with FakeEigenDAProxy() as eig_fake, FakeOthenticAggregator() as agg:
        engine, p = setup(storage_of, monkeypatch, True, eig_fake.url, agg.url)
        oth, eig = p["othentic"], p["eigenda"]
        bs = extend(None, 4, number=1)
        engine.apply(ChainCommitted(chain(bs)))
        oth.rt.deliverer.run_once()
        assert agg.count() == 0  # waiting for the certs: not sent, no attempt counted
        assert engine.conn.execute("SELECT max(attempts) FROM othentic_outbox").fetchone()[0] == 0
        drain(eig.rt.deliverer)
        drain(oth.rt.deliverer)
        certs = dict(engine.conn.execute("SELECT block_number, cert FROM eigenda_certs"))
        assert len(agg.tasks) == 2
        for key, task in agg.tasks.items():
            n = int(key.split(":")[2])
            assert task["proofOfTask"] == "0x" + certs[n].hex()
            assert task["taskDefinitionId"] == 3 and task["performer"] == DEV_ADDRESS
            data = json.loads(task["data"])
            assert data["block"] == n and data["hash"] == "0x" + bs[n - 1].hash.hex()
            assert data["eigenda_cert"] == task["proofOfTask"]
            assert data["global_root"] == root_at(p, n)
        rows = engine.conn.execute("SELECT block_number, proof_of_task FROM othentic_tasks ORDER BY 1").fetchall()
        assert rows == [(2, "0x" + certs[2].hex()), (4, "0x" + certs[4].hex())]
        assert oth.monmouth_status()["performer"] == DEV_ADDRESS
        close(engine)


def test_root_is_the_proof_without_eigenda_and_rpc_errors_are_classified(storage_of, monkeypatch):
    with FakeOthenticAggregator() as agg:
        engine, p = setup(storage_of, monkeypatch, False, agg_url=agg.url, every_blocks=1)
        oth = p["othentic"]
        engine.apply(ChainCommitted(chain(extend(None, 2, number=1))))
        agg.script("malformed", "5xx")  # a JSON-RPC answer with neither result nor error, then HTTP 500
        drain(oth.rt.deliverer)
        assert [r.outcome for r in agg.requests][:2] == ["malformed", "5xx"]
        assert sample(engine, "monmouth_othentic_attempts_total", {"outcome": "transient"}) == 2
        for key, task in agg.tasks.items():
            n = int(key.split(":")[2])
            assert task["proofOfTask"] == root_at(p, n)
        # An unknown task definition is refused by the aggregator with -32602: permanent, parked as failed.
        agg.task_definitions = {3}
        oth.rt.config.task_definition_id = 5
        engine.apply(ChainCommitted(chain(extend(engine.canonical(2).as_block(), 1))))
        drain(oth.rt.deliverer)
        assert engine.conn.execute("SELECT state FROM othentic_outbox WHERE block_number = 3").fetchone()[0] == "failed"
        close(engine)


def test_missing_private_key_is_refused_naming_the_variable(tmp_path, monkeypatch):
    from monmouth.config import validate
    from monmouth.metrics import Metrics
    from monmouth.plugins import PluginHost, config_models
    from monmouth.store import Database

    monkeypatch.delenv("OTHENTIC_PRIVATE_KEY", raising=False)
    plugins = {"othentic": OthenticPlugin(workers=False)}
    host = PluginHost(plugins, Database(tmp_path / "db.sqlite"), Metrics().registry)
    host.apply_settings(validate({"plugins": {"othentic": {"enabled": True}}}, "<test>", config_models(plugins)))
    assert host.states["othentic"] == "failed"
    assert "OTHENTIC_PRIVATE_KEY" in host.errors["othentic"]
