"""Recall by meaning (the rag plugin's embedder, looked up through ctx.host.get("rag")) and by words (FTS5 over
keyed tokens), filters, recency weighting, the embedding worker, and the lifecycle hooks."""

from __future__ import annotations

import re
import time

import numpy as np
from eth_hash.auto import keccak

from monmouth import hookimpl
from monmouth.types import ChainCommitted, ChainReverted
from tests.chains import address, chain, extend
from tests.memory_helpers import close, fts_rows_from, make_memory_engine

A1 = address(1)
SYNONYMS = {"automobile": "car", "vehicle": "car", "feline": "cat", "kitten": "cat"}


class FakeEmbedder:
    """Deterministic bag-of-words embedder (384 dims, L2-normalised) that maps a few synonyms together."""

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), 384), np.float32)
        for i, t in enumerate(texts):
            for w in re.findall(r"\w+", t.lower()):
                w = SYNONYMS.get(w, w)
                out[i, int.from_bytes(keccak(w.encode())[:4], "big") % 384] += 1.0
            n = np.linalg.norm(out[i])
            if n:
                out[i] /= n
        return out


class FakeRag:
    """Stands in for the rag plugin (``monmouth_rag.plugin``): only what the memory plugin uses."""

    def __init__(self) -> None:
        self.embedder = FakeEmbedder()

    @hookimpl
    def monmouth_backends(self):
        return ("sqlite", "postgres")  # no SQL of its own

    def get_embedder(self):
        return self.embedder

    def render_transaction(self, block, index):
        return f"decoded by rag: tx {index} of block {block.number}"


def engine(tmp_path, storage, rag: bool = True, **cfg):
    """A memory engine on ``storage("db")`` (the ``storage_of`` fixture: each backend in turn)."""
    c = {"key_dir": str(tmp_path / "keys"), "agents": ["0x" + A1.hex()], **cfg}
    return make_memory_engine(storage("db.sqlite"), c, extra={"rag": FakeRag()} if rag else None)


def test_vector_recall_filters_and_recency(tmp_path, storage_of):
    e, p = engine(tmp_path, storage_of)
    mem = p.memory
    try:
        ids = {}
        for text, kind, tags in [("my car is red", "semantic", ["car"]), ("the cat sleeps on the sofa", "semantic",
                                                                          ["pet"]),
                                 ("buy milk tomorrow", "working", []), ("the car needs new tyres", "procedural",
                                                                       ["car"])]:
            ids[text] = mem.store(A1, kind, text, tags=tags)["id"]
        assert mem.embed_pending() == 4
        r = mem.recall(A1, "automobile", k=2)
        assert r["mode"] == "vector"
        assert {x["id"] for x in r["results"]} == {ids["my car is red"], ids["the car needs new tyres"]}
        assert mem.recall(A1, "kitten", k=1)["results"][0]["id"] == ids["the cat sleeps on the sofa"]
        only = mem.recall(A1, "vehicle", kind="procedural")["results"]
        assert [x["id"] for x in only] == [ids["the car needs new tyres"]]
        assert {x["id"] for x in mem.recall(A1, "vehicle", tags=["car"], k=5)["results"]} == \
            {ids["my car is red"], ids["the car needs new tyres"]}
        # Recency: an old item loses to a new one with the same relevance once recency weighs in.
        old = mem.store(A1, "semantic", "my car is red")["id"]
        e.conn.execute("UPDATE memory_items SET created_at = ? WHERE id = ?", (time.time() - 30 * 86400,
                                                                              bytes.fromhex(old[2:])))
        mem.embed_pending()
        r = [x["id"] for x in mem.recall(A1, "car red", k=5, recency_weight=0.5, half_life_s=86400)["results"]]
        assert r[0] == ids["my car is red"] and r.index(old) > r.index(ids["the car needs new tyres"])
        # FTS mode on request.
        assert mem.recall(A1, "milk", mode="fts")["results"][0]["id"] == ids["buy milk tomorrow"]
        # Updated content is re-embedded.
        mem.update(A1, bytes.fromhex(ids["buy milk tomorrow"][2:]), content="feed the kitten")
        mem.embed_pending()
        assert mem.recall(A1, "cat", k=1)["results"][0]["id"] == ids["buy milk tomorrow"]
    finally:
        close(e)


def test_chain_episodes_use_rag_rendering_and_revert_drops_their_vectors(tmp_path, storage_of):
    e, p = engine(tmp_path, storage_of)
    mem = p.memory
    try:
        bs = extend(None, 4, number=1, n_txs=4)
        e.apply(ChainCommitted(chain(bs)))
        txs = [i for i in mem.list(A1, limit=1000) if i["metadata"]["type"] == "transaction"]
        assert txs and all(i["content"].startswith("decoded by rag:") for i in txs)
        mem.embed_pending(1000)
        n_vec = e.conn.execute("SELECT count(*) FROM memory_vectors").fetchone()[0]
        assert n_vec == e.conn.execute("SELECT count(*) FROM memory_items").fetchone()[0]
        e.apply(ChainReverted(chain(bs[2:])))
        left = e.conn.execute("SELECT count(*) FROM memory_items").fetchone()[0]
        assert e.conn.execute("SELECT count(*) FROM memory_vectors").fetchone()[0] == left
        assert e.conn.execute("SELECT count(*) FROM memory_fts").fetchone()[0] == left
        res = mem.recall(A1, "decoded by rag block 4", k=50)["results"]
        assert all(r["metadata"]["block"] <= 2 for r in res)
    finally:
        close(e)


def test_fts_recall_without_rag(tmp_path, storage_of):
    e, p = engine(tmp_path, storage_of, rag=False)
    mem = p.memory
    try:
        a = mem.store(A1, "semantic", "the harbour master keeps the ledger")["id"]
        mem.store(A1, "semantic", "lunch is at noon")
        r = mem.recall(A1, "who keeps the ledger?")
        assert r["mode"] == "fts" and r["results"][0]["id"] == a
        assert mem.embed_pending() == 0
        # FTS holds keyed tokens, not words.
        assert b"ledger" not in b"".join(t.encode() for (t,) in e.conn.execute("SELECT tokens FROM memory_fts"))
    finally:
        close(e)


def test_lifecycle_hooks_status_and_worker(tmp_path, storage_of):
    e, p = make_memory_engine(storage_of("db.sqlite"), {"key_dir": str(tmp_path / "keys"),
                                                       "agents": ["0x" + A1.hex()]},
                              extra={"rag": FakeRag()}, workers=True)
    mem = p.memory
    try:
        mem.store(A1, "semantic", "background embedding")
        deadline = time.time() + 10
        while time.time() < deadline and e.conn.execute("SELECT count(*) FROM memory_vectors").fetchone()[0] == 0:
            time.sleep(0.05)
        st = e.host.status()["memory"]
        assert st["embedded"] >= 1 and st["embed_backlog"] == 0 and st["agents"] == 1 and st["pending_ops"] == 1
        # Chain episodes are settled (item and leaf rows), then indexed (tags, FTS5, embedding queue) by the worker
        # after their block, with no read.
        e.apply(ChainCommitted(chain(extend(None, 2, number=1, n_txs=3))))
        deadline = time.time() + 10
        while time.time() < deadline and (e.host.status()["memory"]["settle_backlog"]
                                          or e.host.status()["memory"]["index_backlog"]):
            time.sleep(0.05)
        st = e.host.status()["memory"]
        assert st["settle_backlog"] == 0 and st["index_backlog"] == 0
        assert st["pending_ops"] == 0 and st["global_root"]["block"] == 2
        chain_items = e.conn.execute("SELECT count(*) FROM memory_items WHERE n > 0").fetchone()[0]
        assert chain_items > 0
        assert fts_rows_from(e.conn, 1) == chain_items
        threads = list(mem._threads)
        assert threads and all(t.is_alive() for t in threads)
    finally:
        close(e)
    assert p.memory is None and not any(t.is_alive() for t in threads)
