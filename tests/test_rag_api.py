"""HTTP routes under /rag through the sidecar's real API app (monmouth.app.open_app + monmouth.api.create_api), on a
real SQLite file and on a real PostgreSQL database (every test runs on both: the same answers), with mainnet-shaped
blocks, documents, and the real model; /rag/answer against a fake OpenAI-compatible server."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

import monmouth_rag.plugin as rag
from monmouth.api import create_api
from monmouth.app import open_app
from monmouth.types import ChainCommitted
from tests.chains import chain, load_mainnet_blocks, mainnet_shaped
from tests.conftest import PG_ENV
from tests.fakes.openai_compat import FakeOpenAI
from tests.test_rag_support import PG_RAG

SQLITE = """
[storage]
path = "db.sqlite"
synchronous = "NORMAL"
"""

RAG = """
[plugins.rag]
enabled = true
worker = false
chunk_tokens = 64
chunk_overlap = 16
"""

DOC = """# Staking guide

Validators deposit 32 ETH into the beacon chain deposit contract to activate.

## Withdrawals

Since the Shanghai upgrade, validators can withdraw their stake and rewards automatically every few days.
"""


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def env(request, tmp_path_factory):
    d = tmp_path_factory.mktemp("api")
    cfg = d / "config.toml"
    if request.param == "postgres":
        config = f'[storage]\nurl = "{request.getfixturevalue("pg_server").database()}"\n' + RAG + "".join(
            f"{k} = {json.dumps(v)}\n" for k, v in PG_RAG.items())
        environ = PG_ENV
    else:
        config, environ = SQLITE + RAG, {}
    cfg.write_text(config)
    app = open_app(cfg, environ=environ)
    assert app.host.is_enabled("rag"), app.host.errors
    blocks = list(mainnet_shaped(load_mainnet_blocks()[-3:], 2, txs_per_block=25))
    app.engine.apply(ChainCommitted(chain(blocks)))
    client = TestClient(create_api(app))
    r = client.post("/rag/documents", json={"id": "staking-guide", "text": DOC, "title": "Staking guide",
                                            "format": "markdown"})
    assert r.status_code == 201, r.text
    rag.drain()
    yield {"app": app, "client": client, "blocks": blocks, "cfg": cfg, "config": config, "environ": environ}
    app.close()


def errors_name(resp, field: str) -> bool:
    return any(field in [str(x) for x in e["loc"]] for e in resp.json()["errors"])  # RFC 9457 problem details


def test_search_modes_return_cited_hits(env):
    c = env["client"]
    for mode in ("vector", "keyword", "hybrid"):
        r = c.post("/rag/search", json={"query": "USDT transfer", "k": 5, "mode": mode})
        assert r.status_code == 200, r.text
        hits = r.json()["hits"]
        assert 0 < len(hits) <= 5
        for h in hits:
            assert {"score", "text", "metadata", "provenance", "citation", "kind"} <= set(h)
            if h["kind"] == "tx":
                assert h["provenance"]["tx_hash"].startswith("0x") and h["provenance"]["block_number"]
    r = c.post("/rag/search", json={"query": "how do validators withdraw stake", "k": 3, "mode": "vector"})
    top = r.json()["hits"][0]
    assert top["kind"] == "document" and top["provenance"]["doc_id"] == "staking-guide"
    assert "Withdrawals" in top["text"] or "withdraw" in top["text"]


@pytest.mark.parametrize("body, field", [
    ({"query": "x", "k": 0}, "k"),
    ({"query": "x", "k": 101}, "k"),
    ({"query": "   "}, "query"),
    ({"query": "x", "filters": {"colour": "red"}}, "colour"),
    ({"query": "x", "filters": {"intent": "steal"}}, "intent"),
    ({"query": "x", "filters": {"address": "0x12"}}, "address"),
    ({"query": "x", "mode": "psychic"}, "mode"),
    ({"query": "x", "unknown_top_level": 1}, "unknown_top_level"),
    ({"query": "x", "filters": {"block_from": 10, "block_to": 5}}, "block_from"),
    ({"query": "x", "filters": {"role": "sender"}}, "role"),
])
def test_bad_search_requests_get_422_naming_the_field(env, body, field):
    r = env["client"].post("/rag/search", json=body)
    assert r.status_code == 422, r.text
    assert errors_name(r, field), r.json()


def test_filters_hold_on_every_hit(env):
    c = env["client"]
    b = env["blocks"]
    r = c.post("/rag/search", json={"query": "transfer", "k": 20, "filters": {"intent": "transfer",
                                                                               "token": "usdt"}})
    hits = r.json()["hits"]
    assert hits and all(h["metadata"]["intent"] == "transfer" and "USDT" in h["metadata"]["tokens"] for h in hits)
    r = c.post("/rag/search", json={"query": "swap", "k": 50, "mode": "vector",
                                    "filters": {"block_from": b[1].number, "block_to": b[1].number}})
    assert {h["provenance"]["block_number"] for h in r.json()["hits"]} == {b[1].number}
    sender = b[0].transactions[7].sender
    r = c.post("/rag/search", json={"query": "transaction", "k": 20, "filters": {"address": "0x" + sender.hex(),
                                                                                  "role": "sender"}})
    hits = r.json()["hits"]
    assert hits and all(h["metadata"]["from"] == "0x" + sender.hex() for h in hits)
    r = c.post("/rag/search", json={"query": "deposit", "k": 10, "filters": {"kind": "document"}})
    assert {h["kind"] for h in r.json()["hits"]} == {"document"}
    ts = b[0].timestamp
    r = c.post("/rag/search", json={"query": "swap", "k": 50, "filters": {"time_from": ts, "time_to": ts,
                                                                          "kind": ["tx"]}})
    assert {h["metadata"]["timestamp"] for h in r.json()["hits"]} == {ts}


def test_context_is_budgeted_deduplicated_and_cited(env):
    c = env["client"]
    # the same text under a second id must be packed once
    dup = c.post("/rag/documents", json={"id": "staking-copy", "text": DOC, "format": "markdown"})
    assert dup.status_code == 201
    rag.drain()
    r = c.post("/rag/context", json={"query": "validator withdrawals staking", "max_tokens": 200})
    assert r.status_code == 200, r.text
    ctx = r.json()
    assert 0 < ctx["used_tokens"] <= 200 and ctx["max_tokens"] == 200
    assert ctx["used_tokens"] == rag.state().count_tokens(ctx["context"])
    assert [ch["n"] for ch in ctx["chunks"]] == list(range(1, len(ctx["chunks"]) + 1))
    for ch in ctx["chunks"]:
        assert f"[{ch['n']}] {ch['citation']}" in ctx["context"]
    texts = [ch["text"] for ch in ctx["chunks"]]
    assert len(texts) == len(set(texts))
    reasons = {o["reason"] for o in ctx["omitted"]}
    assert "duplicate" in reasons and "budget" in reasons
    r = c.post("/rag/context", json={"query": "x", "max_tokens": 5})
    assert r.status_code == 422 and errors_name(r, "max_tokens")
    assert c.delete("/rag/documents/staking-copy").status_code == 200


def test_documents_replace_list_and_delete(env):
    c = env["client"]
    r = c.post("/rag/documents", json={"id": "notes/a.md", "text": "Alpha note about gas refunds."})
    assert r.json() == {"id": "notes/a.md", "chunks": 1, "replaced": 0}
    r = c.post("/rag/documents", json={"id": "notes/a.md", "text": "Alpha note, second version, about blobs."})
    assert r.json()["replaced"] == 1
    hits = c.post("/rag/search", json={"query": "blobs", "mode": "keyword",
                                       "filters": {"doc_id": "notes/a.md"}}).json()["hits"]
    assert len(hits) == 1 and "second version" in hits[0]["text"]
    listed = {d["id"]: d for d in c.get("/rag/documents").json()["documents"]}
    assert listed["notes/a.md"]["chunks"] == 1 and "staking-guide" in listed
    assert c.delete("/rag/documents/notes/a.md").json()["deleted_chunks"] == 1
    assert c.delete("/rag/documents/notes/a.md").status_code == 404
    assert c.post("/rag/documents", json={"text": ""}).status_code == 422
    assert c.post("/rag/documents", json={"text": "x", "kind": "block"}).status_code == 422


def test_tx_route(env):
    c = env["client"]
    tx = env["blocks"][0].transactions[2]
    r = c.get(f"/rag/tx/0x{tx.hash.hex()}")
    assert r.status_code == 200
    body = r.json()
    assert body["provenance"]["tx_hash"] == "0x" + tx.hash.hex() and body["embedded"] is True
    assert body["text"] == rag.render_transaction(env["blocks"][0], 2)
    assert c.get("/rag/tx/0x" + "00" * 32).status_code == 404
    assert c.get("/rag/tx/0x1234").status_code == 422


def test_graph_route(env):
    c = env["client"]
    sender = env["blocks"][0].transactions[0].sender
    r = c.get(f"/rag/graph/0x{sender.hex()}", params={"depth": 2})
    assert r.status_code == 200
    g = r.json()
    assert g["address"] == "0x" + sender.hex() and g["depth"] == 2 and g["edges"]
    e = g["edges"][0]
    assert {"from", "to", "asset", "count", "value", "first_block", "last_block"} <= set(e)
    assert c.get(f"/rag/graph/0x{sender.hex()}", params={"depth": 3}).status_code == 422
    assert c.get("/rag/graph/0xabc").status_code == 422


def test_status_shows_rag_backlog_and_rate(env):
    s = env["client"].get("/status").json()["plugins"]["rag"]
    assert s["state"] == "enabled" and s["backlog"] == 0 and "embeddings_per_s" in s and s["vectors"] > 0


def test_answer_is_off_by_default_then_uses_an_openai_compatible_endpoint(env):
    c = env["client"]
    r = c.post("/rag/answer", json={"query": "How do validators withdraw?"})
    assert r.status_code == 503 and "answer" in r.json()["detail"]
    app = env["app"]
    with FakeOpenAI() as fake:
        env["cfg"].write_text(env["config"] + f'\n[plugins.rag.answer]\nenabled = true\nurl = "{fake.url}"\n'
                                       'model = "fake-model"\napi_key_env = "RAG_TEST_KEY"\n')
        try:
            app.reload(environ=env["environ"])
            assert app.host.is_enabled("rag")
            r = c.post("/rag/answer", json={"query": "How do validators withdraw their stake?",
                                            "filters": {"kind": "document"}})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["model"] == "fake-model" and body["citations"]
            assert body["answer"].startswith(f"According to [{body['citations'][0]['n']}]")
            sent = fake.requests[-1]
            assert sent["model"] == "fake-model" and sent["messages"][0]["role"] == "system"
            assert "Question: How do validators withdraw their stake?" in sent["messages"][-1]["content"]
            fake.fail_with = 500
            r = c.post("/rag/answer", json={"query": "withdraw"})
            assert r.status_code == 502 and "500" in r.json()["detail"]
        finally:
            env["cfg"].write_text(env["config"])
            app.reload(environ=env["environ"])
