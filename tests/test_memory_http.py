"""The memory plugin's HTTP routes (monmouth_http_router), on a FastAPI app with a real engine behind it."""

from __future__ import annotations

import base64

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from monmouth.types import ChainCommitted, ChainReorged
from monmouth_memory import merkle
from tests.chains import address, chain, extend
from tests.memory_helpers import close, make_memory_engine

A1 = "0x" + address(1).hex()


@pytest.fixture
def env(tmp_path, storage_of):
    e, plugin = make_memory_engine(storage_of("db.sqlite"), {"key_dir": str(tmp_path / "keys"), "agents": [A1],
                                                            "max_content_bytes": 1000})
    app = FastAPI()
    app.include_router(plugin.monmouth_http_router())
    client = TestClient(app, client=("127.0.0.1", 40000))
    yield e, plugin, client, app
    close(e)


def test_non_loopback_clients_are_refused(env):
    _, _, _, app = env
    far = TestClient(app, client=("203.0.113.9", 40000))
    r = far.get("/memory/agents")
    assert r.status_code == 403 and r.json()["detail"]["field"] == "client"
    assert TestClient(app, client=("::1", 1)).get("/memory/agents").status_code == 200
    # Once the sidecar's access control is installed, it (not the loopback rule) decides.
    app.state.auth = object()
    assert far.get("/memory/agents").status_code == 200


def test_crud_recall_roots_proofs_changes_over_http(env):
    e, plugin, c, _ = env
    bs = extend(None, 3, number=1, n_txs=0)
    e.apply(ChainCommitted(chain(bs[:1])))
    A2 = "0x" + address(2).hex()
    assert c.post("/memory/agents", json={"address": A2, "label": "second"}).status_code == 201
    assert {a["address"] for a in c.get("/memory/agents").json()["agents"]} == {A1, A2}
    r = c.post(f"/memory/agents/{A1}/items", json={"kind": "semantic", "content": "the red door opens at dawn",
                                                    "tags": ["door"], "metadata": {"k": 1}})
    assert r.status_code == 201, r.text
    iid = r.json()["id"]
    r2 = c.post(f"/memory/agents/{A1}/items", json={"kind": "procedural",
                                                     "content_b64": base64.b64encode(b"\x00\xff").decode()})
    assert r2.status_code == 201
    got = c.get(f"/memory/agents/{A1}/items/{iid}").json()
    assert got["content"] == "the red door opens at dawn" and got["pending"]
    assert [i["id"] for i in c.get(f"/memory/agents/{A1}/items", params={"tag": "door"}).json()["items"]] == [iid]
    rec = c.post(f"/memory/agents/{A1}/recall", json={"query": "when does the door open", "k": 3}).json()
    assert rec["mode"] == "fts" and rec["results"][0]["id"] == iid
    p = c.patch(f"/memory/agents/{A1}/items/{iid}", json={"content": "the red door opens at noon"})
    assert p.status_code == 200 and p.json()["version"] == 2
    assert c.get(f"/memory/agents/{A1}/items/{iid}/proof").status_code == 404  # not anchored yet
    e.apply(ChainCommitted(chain(bs[1:2])))
    root = c.get(f"/memory/agents/{A1}/root", params={"block": 2, "global_proof": True}).json()
    proof = c.get(f"/memory/agents/{A1}/items/{iid}/proof", params={"block": 2}).json()
    assert proof["root"] == root["root"] and proof["values"][3] == 2
    assert merkle.verify(bytes.fromhex(root["root"][2:]), bytes.fromhex(proof["leaf"][2:]),
                         [bytes.fromhex(x[2:]) for x in proof["proof"]])
    g = c.get("/memory/root", params={"block": 2}).json()
    assert g["root"] == root["global_root"]
    assert merkle.verify(bytes.fromhex(g["root"][2:]), bytes.fromhex(root["global_leaf"][2:]),
                         [bytes.fromhex(x[2:]) for x in root["global_proof"]])
    assert c.delete(f"/memory/agents/{A1}/items/{r2.json()['id']}").status_code == 200
    e.apply(ChainCommitted(chain(bs[2:])))
    # Incremental sync: start from the leaves at block 1, apply each step, check every root.
    leaves = {x["leaf"] for x in c.get(f"/memory/agents/{A1}/leaves", params={"block": 1}).json()["leaves"]}
    ch = c.get(f"/memory/agents/{A1}/changes", params={"since_block": 1}).json()
    assert [s["block"] for s in ch["changes"]] == [2, 3]
    for step in ch["changes"]:
        for op in step["ops"]:
            if op["op"] == "add":
                assert merkle.item_leaf(*(bytes.fromhex(v[2:]) if isinstance(v, str) else v
                                          for v in op["values"])).hex() == op["leaf"][2:]
                leaves.add(op["leaf"])
            else:
                leaves.remove(op["leaf"])
        assert "0x" + merkle.root_of([bytes.fromhex(x[2:]) for x in leaves]).hex() == step["root"]
    # A reorg of block 3 removes its roots; block 3 of the new chain has its own.
    fork = extend(bs[1], 1, salt="fork", n_txs=0)
    e.apply(ChainReorged(chain(bs[2:]), chain(fork)))
    assert c.get("/memory/root", params={"block": 3}).json()["hash"] == "0x" + fork[0].hash.hex()
    assert c.get("/memory/root", params={"block": 9}).status_code == 404


@pytest.mark.parametrize("body,field,status", [
    ({"kind": "semantic", "content": "x" * 1001}, "content", 413),
    ({"kind": "nightmare", "content": "x"}, "kind", 422),
    ({"kind": "semantic", "content": "x", "ttl_seconds": 10}, "ttl_seconds", 422),
    ({"kind": "working", "content": "x", "ttl_blocks": -3}, "ttl_blocks", 422),
    ({"kind": "working"}, "content", 422),
    ({"kind": "working", "content_b64": "@@@"}, "content_b64", 422),
])
def test_bad_requests_answer_4xx_naming_the_field(env, body, field, status):
    _, _, c, _ = env
    r = c.post(f"/memory/agents/{A1}/items", json=body)
    assert r.status_code == status and r.json()["detail"]["field"] == field, r.text


def test_unknown_agent_and_malformed_parameters(env):
    _, _, c, _ = env
    other = "0x" + address(6).hex()
    r = c.post(f"/memory/agents/{other}/items", json={"kind": "semantic", "content": "x"})
    assert r.status_code == 404 and r.json()["detail"]["field"] == "agent"
    r = c.get("/memory/agents/0x1234/items")
    assert r.status_code == 400 and r.json()["detail"]["field"] == "agent"
    r = c.get(f"/memory/agents/{A1}/items/0xzz")
    assert r.status_code == 400 and r.json()["detail"]["field"] == "id"
    r = c.post(f"/memory/agents/{A1}/items", json={"kind": "semantic", "content": "x", "colour": "red"})
    assert r.status_code == 422 and "colour" in r.text
    r = c.get(f"/memory/agents/{A1}/changes")
    assert r.status_code == 422 and "since_block" in r.text


def test_disabled_plugin_answers_503(env):
    _, plugin, _, _ = env
    from monmouth_memory.http import make_router

    app = FastAPI()
    app.include_router(make_router(lambda: None))
    r = TestClient(app, client=("127.0.0.1", 1)).get("/memory/agents")
    assert r.status_code == 503


def test_mounted_on_the_sidecar_api(tmp_path):
    """Through the sidecar's own FastAPI app (monmouth.api.create_api) with its default access policy."""
    from monmouth.api import create_api
    from monmouth.app import open_app

    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[storage]\npath = "{tmp_path / "db.sqlite"}"\n\n[plugins.memory]\nenabled = true\n'
                   f'agents = ["{A1}"]\nembed = false\n')
    app = open_app(cfg)
    try:
        c = TestClient(create_api(app), client=("127.0.0.1", 40000))
        r = c.post(f"/memory/agents/{A1}/items", json={"kind": "semantic", "content": "through the real API"})
        assert r.status_code == 201, r.text
        got = c.get(f"/memory/agents/{A1}/items/{r.json()['id']}")
        assert got.status_code == 200 and got.json()["content"] == "through the real API"
        bad = c.post(f"/memory/agents/{A1}/items", json={"kind": "dream", "content": "x"})
        assert bad.status_code == 422 and "kind" in bad.text
    finally:
        app.close()
