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
from tests.conftest import PG_ENV, wait_for_sync
from tests.fakes.eigenda_proxy import FakeEigenDAProxy
from tests.fakes.harness import FAST, close, integration_engine, loopback_client, open_test_app
from tests.test_integrations_outbox import drain

AGENT = "0x" + address(1).hex()


def setup(target, fake, memory=None, **cfg):
    """``target``: a directory (a SQLite file in it) or a ``storage_of`` function (each backend in turn)."""
    mem, eig = MemoryPlugin(workers=False), EigenDAPlugin(workers=False)
    engine = integration_engine(
        target("db.sqlite") if callable(target) else target / "db.sqlite", {"memory": mem, "eigenda": eig},
        {"memory": {"agents": [AGENT], "embed": False, **(memory or {})},
         "eigenda": {"url": fake.url, "every_blocks": 2, **FAST, **cfg}})
    return engine, mem, eig


def local_root(mem, n):
    """The memory plugin's own answer for the global root at block ``n`` (its API, not the interface's)."""
    return mem.memory.global_root(n)["root"]


def verify(tmp_path, fake, block, storage, memory=True):
    """``monmouth eigenda verify BLOCK`` on a config naming ``storage`` (a SQLite file or a PostgreSQL URL), with the
    memory plugin enabled or not."""
    cfg = tmp_path / "config.toml"
    where = f'url = "{storage}"' if isinstance(storage, str) else f'path = "{storage}"'
    mem = (f'[plugins.memory]\nenabled = true\nagents = ["{AGENT}"]\nembed = false\n'
           f'key_dir = "{tmp_path / "keys"}"\n' if memory else "")
    cfg.write_text(f'[storage]\n{where}\n[http]\nenabled = false\n{mem}'
                   f'[plugins.eigenda]\nenabled = true\nurl = "{fake.url}"\n')
    group = click.Group()
    EigenDAPlugin().monmouth_register_commands(group)
    return CliRunner(env=PG_ENV).invoke(group, ["eigenda", "verify", str(block), "--config", str(cfg)])


def test_blobs_carry_the_memory_root_and_verify_checks_them(tmp_path, storage_of):
    """On SQLite and PostgreSQL alike: the root comes from the memory plugin's typed interface
    (``AgentMemory.global_root_at``), not from its tables."""
    with FakeEigenDAProxy() as fake:
        engine, mem, eig = setup(storage_of, fake, memory={"key_dir": str(tmp_path / "keys")})
        bs = extend(None, 4, number=1, n_txs=3)
        engine.apply(ChainCommitted(chain(bs)))
        drain(eig.rt.deliverer)
        docs = {d["block"]["number"]: d for d in fake.blob_docs()}
        assert sorted(docs) == [2, 4]
        for n in (2, 4):
            assert docs[n]["format"] == "monmouth.eigenda.v1"
            assert docs[n]["block"]["hash"] == "0x" + bs[n - 1].hash.hex()
            assert docs[n]["global_root"] == local_root(mem, n)
            assert docs[n]["global_root"].startswith("0x") and len(docs[n]["global_root"]) == 66
            assert docs[n]["agents"] == 1
        storage = storage_of("db.sqlite")
        r = verify(tmp_path, fake, 4, storage)
        assert r.exit_code == 0, r.output
        report = json.loads(r.output)
        assert report["ok"] and all(c["ok"] for c in report["checks"].values())
        # Without the memory plugin the root cannot be checked locally: said, not failed.
        r = verify(tmp_path, fake, 4, storage, memory=False)
        assert r.exit_code == 0, r.output
        assert json.loads(r.output)["checks"]["global_root"]["ok"] is None
        # A tampered blob (same cert, other content) is caught.
        cert = bytes.fromhex(report["cert"][2:])
        fake.tamper(cert, fake.blobs[cert].replace(docs[4]["global_root"][2:].encode(), b"00" * 32))
        r = verify(tmp_path, fake, 4, storage)
        assert r.exit_code == 1
        bad = json.loads(r.output)["checks"]
        assert bad["blob_sha256"]["ok"] is False and bad["global_root"]["ok"] is False
        # No cert for a block that was not dispersed: exit 2 naming it.
        r = verify(tmp_path, fake, 3, storage)
        assert r.exit_code == 2 and "block 3" in r.output
        close(engine)


def test_the_running_deliverer_reads_the_root_while_the_memory_worker_settles(tmp_path, storage_of):
    """``monmouth run``'s threads (the memory worker, the EigenDA deliverer), on SQLite and PostgreSQL: the
    deliverer's thread asks the memory for the root of each block it delivers, which waits for the worker to
    settle the block, and gets the memory's own answer."""
    with FakeEigenDAProxy() as fake:
        mem, eig = MemoryPlugin(), EigenDAPlugin()
        app = open_test_app(storage_of("db.sqlite"), {"memory": mem, "eigenda": eig},
                            {"memory": {"agents": [AGENT], "embed": False, "key_dir": str(tmp_path / "keys")},
                             "eigenda": {"url": fake.url, "every_blocks": 2, **FAST}})
        try:
            assert mem.memory.worker.running and eig.rt.deliverer.running
            app.engine.apply(ChainCommitted(chain(extend(None, 4, number=1, n_txs=3))))
            wait_for_sync(lambda: len(fake.blob_docs()) == 2, "two blobs dispersed by the deliverer thread")
            docs = {d["block"]["number"]: d for d in fake.blob_docs()}
            own = {n: mem.memory.global_root(n) for n in (2, 4)}
            assert {n: (d["global_root"], d["agents"]) for n, d in docs.items()} == {
                n: (g["root"], g["agents"]) for n, g in own.items()}
            assert own[4]["agents"] == 1 and own[4]["root"] != "0x" + "00" * 32
        finally:
            app.close()


def test_without_the_memory_plugin_blobs_carry_no_root(storage_of):
    with FakeEigenDAProxy() as fake:
        eig = EigenDAPlugin(workers=False)
        engine = integration_engine(storage_of("db.sqlite"), {"eigenda": eig},
                                    {"eigenda": {"url": fake.url, "every_blocks": 2, **FAST}})
        engine.apply(ChainCommitted(chain(extend(None, 2, number=1))))
        drain(eig.rt.deliverer)
        (doc,) = fake.blob_docs()
        assert doc["block"]["number"] == 2 and doc["global_root"] is None and doc["agents"] is None
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
        assert doc["global_root"] == local_root(mem, 3)
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
