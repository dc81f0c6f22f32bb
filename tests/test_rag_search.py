"""Search pieces: reciprocal rank fusion, keyword query words, the binary-prefilter vector index (recall against exact
search, filters, following SQLite), context packing, and document chunking."""

from __future__ import annotations

import numpy as np
import pytest

from monmouth.store import Database, migrate
from monmouth_rag.ann import VectorIndex, binary_codes, hamming, hamming_words, nearest_by_histogram
from monmouth_rag.config import RagConfig
from monmouth_rag.documents import chunk_text
from monmouth_rag.embedder import load_embedder
from monmouth_rag.search import Filters, Hit, build_context, query_words, rrf
from monmouth_rag.store import MIGRATIONS, OP_ADD, TRIMMED, PendingDoc, prune_changes, store_vectors


def test_rrf_matches_hand_computation():
    fused = rrf({"a": [1, 2, 3], "b": [3, 1]}, k=60)
    s = {d: sc for d, sc, _ in fused}
    assert s[1] == pytest.approx(1 / 61 + 1 / 62)
    assert s[3] == pytest.approx(1 / 63 + 1 / 61)
    assert s[2] == pytest.approx(1 / 62)
    assert [d for d, _, _ in fused] == [1, 3, 2]
    assert fused[0][2] == {"a": 1, "b": 2}


def test_query_words_keep_distinct_words_only_so_operators_are_inert():
    assert query_words('USDT "transfers" AND NOT * (x) USDT') == ["USDT", "transfers", "AND", "NOT", "x"]
    assert query_words("  ...  ") == []
    assert len(query_words(" ".join(f"w{i}" for i in range(100)))) == 64


def test_binary_codes_and_hamming():
    x = np.array([[1.0, -1.0] * 192, [-1.0, 1.0] * 192], np.float32)
    c = binary_codes(x)
    assert c.shape == (2, 6) and c.dtype == np.uint64
    assert hamming(c, c[0]).tolist() == [0, 384]
    assert hamming_words(np.ascontiguousarray(c.T), c[1], 2).tolist() == [384, 0]
    d = np.array([5, 1, 3, 1, 9, 2], np.uint16)
    assert sorted(nearest_by_histogram(d, 3, 384).tolist()) == [1, 3, 5]
    assert sorted(nearest_by_histogram(d, 2, 384).tolist()) == [1, 3]
    assert sorted(nearest_by_histogram(np.array([385, 1, 385], np.uint16), 2, 384).tolist()) == [1]


def clustered(n: int, dim: int = 384, centers: int = 200, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, dim)).astype(np.float32)
    x = c[rng.integers(0, centers, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_index_recall_against_exact_search_and_filters():
    both = clustered(20_050)  # queries come from the same distribution as the data, as real queries do
    x, q = both[:20_000], both[20_000:]
    idx = VectorIndex(384)
    kinds = ["tx" if i % 3 else "document" for i in range(len(x))]
    idx.add(list(range(1, len(x) + 1)), x, kinds, [i if k == "tx" else -1 for i, k in enumerate(kinds)],
            [1000 + i for i in range(len(x))], ["swap" if i % 2 else "transfer" for i in range(len(x))])
    recall = []
    for v in q:
        exact = set(np.argsort(-(x @ v))[:10] + 1)
        ids, scores = idx.search(v, 10)
        assert np.all(np.diff(scores) <= 1e-6)
        recall.append(len(exact & set(ids.tolist())) / 10)
    assert np.mean(recall) >= 0.95
    m = idx.mask(kinds=["tx"], intents=["swap"], block_from=100, block_to=5000)
    ids, _ = idx.search(q[0], 10, m)
    for d in ids:
        i = d - 1
        assert kinds[i] == "tx" and i % 2 == 1 and 100 <= i <= 5000
    ids, _ = idx.search(q[0], 5, idx.mask(ids=[7, 8, 9]))
    assert set(ids.tolist()) <= {7, 8, 9}
    assert idx.remove([int(ids[0])]) == 1
    assert int(ids[0]) not in idx.search(q[0], 5, idx.mask(ids=[7, 8, 9]))[0].tolist()


def pending_docs(conn, n: int) -> list[PendingDoc]:
    """``n`` documents queued for embedding (``rag_docs``, ``rag_index``, ``rag_pending`` rows)."""
    docs = []
    with conn:
        for i in range(n):
            conn.execute("INSERT INTO rag_docs (kind, timestamp, intent, token, text) VALUES ('document', ?, '', '', ?)",
                         (i, f"t{i}"))
            d = conn.last_insert_rowid()
            conn.execute("INSERT INTO rag_index (id) VALUES (?)", (d,))
            conn.execute("INSERT INTO rag_pending (doc, length) VALUES (?, 1)", (d,))
            docs.append(PendingDoc(d, f"t{i}", "document", None, i, "", ""))
    return docs


def test_index_follows_sqlite_adds_deletes_and_pruned_log(tmp_path):
    db = Database(tmp_path / "db.sqlite")
    conn = db.connect()
    migrate(conn, "rag", MIGRATIONS, {t for t in TRIMMED})
    x = clustered(30)
    docs = pending_docs(conn, 30)
    idx = VectorIndex(384)
    with conn:
        assert store_vectors(conn, docs[:20], x[:20]) == 20
    idx.sync(conn)
    assert len(idx) == 20
    with conn:
        store_vectors(conn, docs[20:], x[20:])
        conn.execute("DELETE FROM rag_vec WHERE rowid = ?", (docs[0].id,))
        conn.execute("INSERT INTO rag_changes (id, op) VALUES (?, -1)", (docs[0].id,))
    assert idx.sync(conn) == 11 and len(idx) == 29
    ids, scores = idx.search(x[5], 1)
    assert ids[0] == docs[5].id and scores[0] == pytest.approx(1.0, abs=1e-3)
    # entries the index never saw are pruned: it reloads from rag_vec
    with conn:
        conn.executemany("INSERT INTO rag_changes (id, op) VALUES (?, ?)", [(docs[1].id, OP_ADD)] * 5)
        prune_changes(conn, keep=2)
    idx.sync(conn)
    assert len(idx) == 29 and idx.seq == conn.execute("SELECT max(seq) FROM rag_changes").fetchone()[0]
    conn.close()


class FakeSearcher:
    def __init__(self, hits):
        self.hits = hits

    def search(self, query, k, mode, filters):
        return self.hits[:k]


def test_context_packs_greedily_within_budget_and_reports_omissions():
    emb = load_embedder(RagConfig())

    def count(t: str) -> int:
        return len(emb.counter.encode(t, add_special_tokens=False).ids)

    def hit(i: int, text: str, block: int) -> Hit:
        return Hit(i, 1.0 - i / 10, "tx", text, {"timestamp": block}, {"block_number": block}, f"block {block}")

    hits = [hit(1, "alpha " * 30, 9), hit(2, "alpha " * 30, 9), hit(3, "beta " * 200, 8), hit(4, "gamma delta", 7)]
    out = build_context(FakeSearcher(hits), count, "q", 60)
    assert [c["citation"] for c in out["chunks"]] == ["block 9", "block 7"]
    assert out["used_tokens"] == count(out["context"]) <= 60
    assert [(o["citation"], o["reason"]) for o in out["omitted"]] == [("block 9", "duplicate"), ("block 8", "budget")]
    chrono = build_context(FakeSearcher(hits), count, "q", 60, order="chronological")
    assert [c["citation"] for c in chrono["chunks"]] == ["block 7", "block 9"]
    assert chrono["context"].startswith("[1] block 7\ngamma delta")


def test_chunking_by_tokens_with_overlap_and_markdown_sections():
    tok = load_embedder(RagConfig()).counter
    words = " ".join(f"w{i}" for i in range(300))
    chunks = chunk_text(words, tok, chunk_tokens=50, overlap=10)
    lens = [len(tok.encode(c, add_special_tokens=False).ids) for c in chunks]
    assert all(n <= 50 for n in lens) and len(chunks) > 5
    # consecutive chunks share their boundary tokens
    a = tok.encode(chunks[0], add_special_tokens=False).ids
    b = tok.encode(chunks[1], add_special_tokens=False).ids
    assert a[-10:] == b[:10]
    assert chunks[0].startswith("w0") and chunks[-1].endswith("w299")
    md = "# One\n\nshort a\n\n# Two\n\nshort b\n\n# Three\n\n" + " ".join(["long"] * 120)
    parts = chunk_text(md, tok, chunk_tokens=40, overlap=5, markdown=True)
    assert parts[0].startswith("# One") and "# Two" in parts[0] and "# Three" not in parts[0]
    with pytest.raises(ValueError, match="chunk_overlap"):
        chunk_text("x", tok, 10, 10)
    assert chunk_text("   ", tok) == []


def test_filters_sql_and_vec0_clauses():
    f = Filters(block_from=5, block_to=9, intents=("swap",), tokens=("usdt", "0xAB"), address=b"\x01" * 20,
                roles=("sender",), kinds=("tx",))
    clauses, params = f.sql()
    assert "USDT" in params and "0xab" in params and b"\x01" * 20 in params and "sender" in params
    assert f.needs_candidates and not Filters().needs_candidates and Filters().empty
    c, p = Filters(block_to=9).vec0()
    assert c == ["block_number >= ?", "block_number <= ?"] and p == [0, 9], "documents (block -1) are excluded"


# ---------------------------------------------------------------------------------------------- BM25 on both backends

#: Words and the tokens FTS5's ``porter unicode61`` makes of them, which PostgreSQL's ``rag_english`` (the Porter
#: stemmer, ASCII punctuation as separators) makes too: plurals, stems where Porter and Snowball English differ
#: (``generously``, ``dying``), and punctuation that PostgreSQL's parser alone would keep in one token.
BM25_VOCAB = {"chain": ["chain"], "block": ["block"], "blocks": ["block"], "deposit": ["deposit"],
              "Rewards,": ["reward"], "swap": ["swap"], "pool.": ["pool"], "IL-6": ["il", "6"], "3.5": ["3", "5"],
              "T-cells": ["t", "cell"], "generously": ["gener"], "dying": ["dy"], "e.g.": ["e", "g"],
              "vault": ["vault"], "oracle": ["oracl"], "relay_bridge": ["relai", "bridg"]}
#: A query word's term (Porter's stem) where it is not the word in lower case.
BM25_TERMS = {"blocks": "block", "oracle": "oracl", "relay": "relai", "bridge": "bridg", "generously": "gener",
              "dying": "dy", "missing": "miss", "cells": "cell"}


def bm25_tokens(text: str) -> list[str]:
    return [t for w in text.split() for t in BM25_VOCAB.get(w, [w])]


def bm25_reference(docs: dict[str, str], query: list[str]) -> dict[str, float]:
    """FTS5's ``bm25()`` negated (https://sqlite.org/fts5.html, k1 = 1.2, b = 0.75), by hand over the tokens of
    :data:`BM25_VOCAB`: one term per query word, a document scoring if it holds any."""
    toks = {d: bm25_tokens(t) for d, t in docs.items()}
    n, avgdl = len(toks), sum(map(len, toks.values())) / len(toks)
    out: dict[str, float] = {}
    for d, ws in toks.items():
        score, hit = 0.0, False
        for q in (BM25_TERMS.get(w.lower(), w.lower()) for w in query):
            df = sum(q in other for other in toks.values())
            idf = np.log((n - df + 0.5) / (df + 0.5))
            tf = ws.count(q)
            hit |= tf > 0
            score += (idf if idf > 0 else 1e-6) * (tf * 2.2) / (tf + 1.2 * (1 - 0.75 + 0.75 * len(ws) / avgdl))
        if hit:
            out[d] = score
    return out


def test_bm25_on_postgresql_equals_fts5_bm25_and_follows_deletes(request, tmp_path):
    """Issue 15: keyword search on PostgreSQL ranks by FTS5's BM25 over the same tokens. The same documents (through
    the document path) and queries on both backends give the same hits in the same order with the same scores (to
    1e-6), equal to a hand computation of the formula; after deleting documents (the document delete API) still,
    with the collection statistics recounted exactly. The queries cover a term in every document (FTS5's idf
    floor), two words with one stem (counted twice, as FTS5 counts each phrase), upper case, Porter's own stems,
    words cut at punctuation, a top k that PostgreSQL finds among the documents holding the rarer terms only, and a
    filter (N and df stay the collection's)."""
    import random

    import monmouth_rag.plugin as rag
    from tests.test_rag_support import _rigs, fts_stats

    rng = random.Random(15)
    vocab = list(BM25_VOCAB)[1:]
    docs: dict[str, str] = {}
    for i, length in enumerate(rng.sample(range(3, 80), 30)):  # distinct lengths: no tied scores
        docs[f"d{i:02d}"] = " ".join(["chain", *rng.choices(vocab, [1 / (j + 1) for j in range(len(vocab))],
                                                           k=length - 1)])
    for d in ("d03", "d07", "d11", "d19", "d24"):  # a rare word: the only term below half the collection
        docs[d] += " zebra"
    queries = [["swap", "pool"], ["deposit", "reward", "vault"], ["block", "blocks"], ["oracle"], ["chain"],
               ["relay", "bridge", "generously", "cell"], ["Blocks", "SWAP"], ["vault", "missing"], ["IL", "6"],
               ["dying", "die"], ["e", "g", "3"], ["zebra", "chain"]]
    gone = sorted(docs)[::3]
    got: dict[str, list[object]] = {}
    for backend in ("sqlite", "postgres"):
        make = _rigs(request, tmp_path / backend, backend)
        r = next(make)("bm25.sqlite")
        for d, text in docs.items():
            rag.add_document(d, text)
        runs: list[object] = []
        for deleted in (False, True):
            if deleted:
                assert all(rag.delete_document(d) == 1 for d in gone)
            live = {d: t for d, t in docs.items() if not deleted or d not in gone}
            conn = r.db.reader()
            stats = fts_stats(conn)  # also checks the stored statistics against a recount
            assert stats in (None, (len(live), sum(len(bm25_tokens(t)) for t in live.values()))), stats
            for q in queries:
                ranked = [(h.provenance["doc_id"], h.score) for h in rag.search(" ".join(q), 100, mode="keyword")]
                ref = bm25_reference(live, q)
                assert sorted(d for d, _ in ranked) == sorted(ref), (backend, q)
                assert all(abs(s - ref[d]) < 1e-9 for d, s in ranked), (backend, q, ranked, ref)
                assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)
                runs.append(ranked)
            for q, k in ((["chain", "zebra"], 3), (["chain", "vault", "dying", "zebra", "relay"], 2)):
                # a top k that the rare word decides (its k-th score above what the other terms, each in half the
                # documents or more, can give together): PostgreSQL reads only the documents holding "zebra"
                ref = bm25_reference(live, q)
                top = sorted(ref, key=lambda d: (-ref[d], d))[:k]
                assert ref[top[-1]] > (len(q) - 1) * 2.2e-6
                ranked = [(h.provenance["doc_id"], h.score) for h in rag.search(" ".join(q), k, mode="keyword")]
                assert [d for d, _ in ranked] == top and all(abs(s - ref[d]) < 1e-9 for d, s in ranked), (q, ranked)
                runs.append(ranked)
            one = next(d for d in sorted(live) if "vault" in live[d])
            runs.append([(h.provenance["doc_id"], h.score) for h in rag.search(
                "swap vault", 10, mode="keyword", filters={"doc_id": one})])
            assert [d for d, _ in runs[-1]] == [one] and abs(runs[-1][0][1] - bm25_reference(live, ["swap", "vault"])[
                one]) < 1e-9, "a filter selects among the matches, scored over the whole collection"
        got[backend] = runs
        make.close()
    lite, pg = got["sqlite"], got["postgres"]
    assert len(lite) == len(pg) == 2 * (len(queries) + 3) and all(lite)
    for a, b in zip(lite, pg, strict=True):
        assert [d for d, _ in a] == [d for d, _ in b], "the same hits in the same order"
        assert np.allclose([s for _, s in a], [s for _, s in b], rtol=0, atol=1e-6), (a, b)


def test_a_postgresql_database_from_before_bm25_is_migrated_and_ranks_by_bm25(pg_server):
    """A rag database written before issue 15's BM25 (``tsvector``s of PostgreSQL's parser and the Snowball English
    stemmer, no lengths, no ``rag_fts_stats``): migration 2 rebuilds the ``tsvector``s with FTS5's tokens from
    ``rag_docs.text``, fills each document's length and the collection statistics, and keyword search then ranks
    by BM25 at once, as a hand computation of FTS5's formula."""
    from monmouth_rag.dialect import PG_MIGRATIONS
    from tests.test_rag_support import Rig, fts_stats, open_db

    url = pg_server.database()
    old = open_db(url)
    assert old.migrate("rag", PG_MIGRATIONS[:1], set(TRIMMED)) == 1
    docs = {"a": "swap pool swap chain", "b": "vault deposit chain generously", "c": "swap vault vault vault chain IL-6",
            "d": "oracle chain T-cells"}
    with old.write() as conn:  # what the plugin stored before: the row, its index row, the tsvector only
        for i, (doc_id, text) in enumerate(docs.items(), start=1):
            conn.execute("INSERT INTO rag_docs (id, kind, timestamp, doc_id, chunk, intent, token, text) "
                         "VALUES (?, 'document', 0, ?, 0, '', '', ?)", (i, doc_id, text))
            conn.execute("INSERT INTO rag_index (id, block_number) VALUES (?, NULL)", (i,))
            conn.execute("INSERT INTO rag_fts (rowid, tsv) VALUES (?, to_tsvector('rag_english', ?))", (i, text))
    r = Rig(url, worker=False)
    try:
        conn = r.db.reader()
        assert conn.execute("SELECT version FROM monmouth_migrations WHERE plugin = 'rag'").fetchall() == [(2,)]
        assert fts_stats(conn) == (4, 19)
        for q in ("swap vault", "chain", "oracle generously", "IL cells"):
            ranked = [(h.provenance["doc_id"], h.score) for h in rag_search(q)]
            ref = bm25_reference(docs, q.split())
            assert ref, q
            assert [d for d, _ in ranked] == sorted(ref, key=lambda d: -ref[d]), q
            assert all(abs(s - ref[d]) < 1e-9 for d, s in ranked), (q, ranked, ref)
    finally:
        r.close()


def rag_search(query: str):
    import monmouth_rag.plugin as rag

    return rag.search(query, 10, mode="keyword")
