"""EigenDA: blobs carry the memory plugin's global root (and optionally every agent's export), certs are stored
against the block, ``monmouth eigenda verify BLOCK`` fetches the blob back and checks it against the local roots,
the ``checkpoint`` trigger follows the memory plugin's checkpoints, and the cert route serves them."""

from __future__ import annotations

import json

import click
from click.testing import CliRunner

from monmouth.types import ChainCommitted, ChainReverted
from monmouth_integrations.eigenda.plugin import EigenDAPlugin
from monmouth_memory.plugin import MemoryPlugin
from tests.chains import address, chain, extend
from tests.fakes.eigenda_proxy import FakeEigenDAProxy
from tests.fakes.harness import FAST, close, integration_engine, loopback_client, open_test_app
from tests.test_integrations_outbox import drain

AGENT = "0x" + address(1).hex()


def setup(tmp_path, fake, memory=None, **cfg):
    mem, eig = MemoryPlugin(workers=False), EigenDAPlugin(workers=False)
    engine = integration_engine(
        tmp_path / "db.sqlite", {"memory": mem, "eigenda": eig},
        {"memory": {"agents": [AGENT], "embed": False, **(memory or {})},
         "eigenda": {"url": fake.url, "every_blocks": 2, **FAST, **cfg}})
    return engine, mem, eig


def local_root(engine, n):
    return "0x" + engine.conn.execute("SELECT root FROM memory_global_roots WHERE block_number = ?",
                                      (n,)).fetchone()[0].hex()


def verify(tmp_path, fake, block):
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[storage]\npath = "{tmp_path / "db.sqlite"}"\n[plugins.eigenda]\nenabled = true\n'
                   f'url = "{fake.url}"\n')
    group = click.Group()
    EigenDAPlugin().monmouth_register_commands(group)
    return CliRunner().invoke(group, ["eigenda", "verify", str(block), "--config", str(cfg)])


def test_blobs_carry_the_memory_root_and_verify_checks_them(tmp_path):
    with FakeEigenDAProxy() as fake:
        engine, mem, eig = setup(tmp_path, fake)
        bs = extend(None, 4, number=1, n_txs=3)
        engine.apply(ChainCommitted(chain(bs)))
        drain(eig.rt.deliverer)
        docs = {d["block"]["number"]: d for d in fake.blob_docs()}
        assert sorted(docs) == [2, 4]
        for n in (2, 4):
            assert docs[n]["format"] == "monmouth.eigenda.v1"
            assert docs[n]["block"]["hash"] == "0x" + bs[n - 1].hash.hex()
            assert docs[n]["global_root"] == local_root(engine, n)
            assert docs[n]["agents"] == 1
        r = verify(tmp_path, fake, 4)
        assert r.exit_code == 0, r.output
        report = json.loads(r.output)
        assert report["ok"] and all(c["ok"] for c in report["checks"].values())
        # A tampered blob (same cert, other content) is caught.
        cert = bytes.fromhex(report["cert"][2:])
        fake.tamper(cert, fake.blobs[cert].replace(docs[4]["global_root"][2:].encode(), b"00" * 32))
        r = verify(tmp_path, fake, 4)
        assert r.exit_code == 1
        bad = json.loads(r.output)["checks"]
        assert bad["blob_sha256"]["ok"] is False and bad["global_root"]["ok"] is False
        # No cert for a block that was not dispersed: exit 2 naming it.
        r = verify(tmp_path, fake, 3)
        assert r.exit_code == 2 and "block 3" in r.output
        close(engine)


def test_exports_are_included_and_verifiable(tmp_path):
    with FakeEigenDAProxy() as fake:
        engine, mem, eig = setup(tmp_path, fake, include_exports=True)
        m = mem.memory
        m.store(bytes.fromhex(AGENT[2:]), "semantic", "the agent prefers low-gas routes")
        engine.apply(ChainCommitted(chain(extend(None, 2, number=1))))
        drain(eig.rt.deliverer)
        (doc,) = fake.blob_docs()
        export = doc["exports"][AGENT]
        from monmouth_memory.portable import verify_archive

        checked = verify_archive(export)
        assert checked["root"] == m.agent_root(bytes.fromhex(AGENT[2:]), 2)["root"]
        close(engine)


def test_checkpoint_trigger_disperses_each_memory_checkpoint_of_a_canonical_block(tmp_path):
    from monmouth_memory import checkpoint

    with FakeEigenDAProxy() as fake:
        engine, mem, eig = setup(tmp_path, fake, trigger="checkpoint")
        bs = extend(None, 3, number=1)
        engine.apply(ChainCommitted(chain(bs)))
        m = mem.memory
        man = checkpoint.create(engine.db.path, m.checkpoint_dir, name="c3")
        assert man["block"]["number"] == 3
        drain(eig.rt.deliverer)
        (doc,) = fake.blob_docs()
        assert doc["checkpoint"]["name"] == "c3" and doc["checkpoint"]["sha256"] == man["sha256"]
        assert doc["global_root"] == local_root(engine, 3)
        # A checkpoint of a block that was then reverted is not dispersed; its cert would be trimmed anyway.
        checkpoint.create(engine.db.path, m.checkpoint_dir, name="c3b")
        engine.apply(ChainReverted(chain(bs[2:])))
        drain(eig.rt.deliverer)
        assert len(fake.blob_docs()) == 1
        assert engine.conn.execute("SELECT count(*) FROM eigenda_certs").fetchone()[0] == 0
        close(engine)


def test_cert_route(tmp_path):
    with FakeEigenDAProxy() as fake:
        eig = EigenDAPlugin(workers=False)
        app = open_test_app(tmp_path / "db.sqlite", {"eigenda": eig}, {"eigenda": {"url": fake.url, "every_blocks": 2,
                                                                                  **FAST}})
        app.engine.apply(ChainCommitted(chain(extend(None, 2, number=1))))
        drain(eig.rt.deliverer)
        client = loopback_client(app)
        r = client.get("/integrations/eigenda/certs/2")
        assert r.status_code == 200 and r.json()["cert"].startswith("0x02")
        assert r.json()["hash"] == "0x" + app.engine.head.hash.hex()
        assert client.get("/integrations/eigenda/certs/1").status_code == 404
        st = client.get("/status").json()["plugins"]["eigenda"]
        assert st["state"] == "enabled" and st["certs"] == 1 and st["outbox"]["done"] == 1 and st["breaker"] == "closed"
        app.close()
