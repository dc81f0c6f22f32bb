"""Search: vector (cosine KNN), keyword (FTS5 BM25) and hybrid (reciprocal rank fusion), with filters; and context
packing under a token budget.

* Vector search ranks by cosine similarity of unit vectors. Small collections use exact sqlite-vec KNN on ``rag_vec``
  with its metadata columns as filters; large ones use the in-memory index (:mod:`monmouth_rag.ivf` by default,
  :mod:`monmouth_rag.hnsw`, or the binary one of :mod:`monmouth_rag.ann`), filters applied as a mask of allowed rows
  before ranking. Filters that only SQL can answer (address, token, document id) first select candidate ids, which
  join that mask; small candidate sets are ranked exactly.
* Keyword search is SQLite FTS5 with its BM25 ranking (Robertson & Zaragoza 2009; ``bm25()`` of
  https://sqlite.org/fts5.html), over the Porter-stemmed text; on PostgreSQL a ``tsvector`` GIN index ranked by the
  same BM25 formula and parameters over Porter-stemmed tokens split as FTS5 splits them (:mod:`monmouth_rag.dialect`).
  The query's words are OR-ed.
* On PostgreSQL vector search is pgvector's HNSW index (cosine distance, the same scores), with the same filters.
* Hybrid search fuses both rankings by reciprocal rank fusion: ``score(d) = sum over rankings of 1 / (k + rank(d))``
  with ``k = 60`` (Cormack, Clarke & Buettcher, "Reciprocal rank fusion outperforms Condorcet and individual rank
  learning methods", SIGIR 2009).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import apsw
import numpy as np

from monmouth.chain import hx
from monmouth.limits import check_json_value

from .ann import SyncedIndex
from .dialect import statements
from .store import NO_BLOCK, scalar, text_key

log = logging.getLogger(__name__)

MODES = ("vector", "keyword", "hybrid")
ROLES = ("sender", "recipient", "contract", "log", "transfer")
KINDS = ("tx", "document", "memory")


@dataclass
class Filters:
    """Search filters; every given one must hold.

    Attributes:
        block_from, block_to: inclusive block range (chain documents only).
        time_from, time_to: inclusive Unix time range, seconds.
        address: 20-byte address the document touches, in one of ``roles`` (default any role).
        intents: allowed intents.
        tokens: tokens (symbols like ``USDT`` or ``0x`` addresses, case-insensitive); any of them.
        kinds: ``tx``, ``document``, ``memory``.
        doc_id: one document.
    """

    block_from: int | None = None
    block_to: int | None = None
    time_from: int | None = None
    time_to: int | None = None
    address: bytes | None = None
    roles: tuple[str, ...] | None = None
    intents: tuple[str, ...] | None = None
    tokens: tuple[str, ...] | None = None
    kinds: tuple[str, ...] | None = None
    doc_id: str | None = None

    @property
    def needs_candidates(self) -> bool:
        """Whether the filter needs an SQL candidate set (it cannot run on vector metadata columns alone)."""
        return self.address is not None or self.tokens is not None or self.doc_id is not None

    @property
    def empty(self) -> bool:
        return all(getattr(self, f) is None for f in self.__dataclass_fields__)

    def norm_tokens(self) -> list[str]:
        return [t.lower() if t.lower().startswith("0x") else t.upper() for t in self.tokens or ()]

    def sql(self, alias: str = "d") -> tuple[list[str], list[Any]]:
        """WHERE clauses over ``rag_docs AS alias`` and their parameters."""
        c: list[str] = []
        p: list[Any] = []
        if self.block_from is not None:
            c.append(f"{alias}.block_number >= ?")
            p.append(self.block_from)
        if self.block_to is not None:
            c.append(f"{alias}.block_number <= ?")
            p.append(self.block_to)
        if self.time_from is not None:
            c.append(f"{alias}.timestamp >= ?")
            p.append(self.time_from)
        if self.time_to is not None:
            c.append(f"{alias}.timestamp <= ?")
            p.append(self.time_to)
        if self.kinds is not None:
            c.append(f"{alias}.kind IN ({','.join('?' * len(self.kinds))})")
            p += list(self.kinds)
        if self.intents is not None:
            c.append(f"{alias}.intent IN ({','.join('?' * len(self.intents))})")
            p += list(self.intents)
        if self.doc_id is not None:
            c.append(f"{alias}.doc_id = ?")
            p.append(self.doc_id)
        if self.address is not None:
            roles = self.roles or ROLES
            c.append(f"{alias}.id IN (SELECT doc FROM rag_addresses WHERE address = ? AND role IN "
                     f"({','.join('?' * len(roles))}))")
            p += [self.address, *roles]
        if self.tokens is not None:
            toks = self.norm_tokens()
            c.append(f"{alias}.id IN (SELECT doc FROM rag_tokens WHERE token IN ({','.join('?' * len(toks))}))")
            p += toks
        return c, p

    def vec0(self) -> tuple[list[str], list[Any]]:
        """Clauses on ``rag_vec``'s metadata columns (kind, intent, block, time)."""
        c: list[str] = []
        p: list[Any] = []
        if self.block_from is not None or self.block_to is not None:
            c.append("block_number >= ?")
            p.append(max(0, self.block_from or 0))
        if self.block_to is not None:
            c.append("block_number <= ?")
            p.append(self.block_to)
        if self.time_from is not None:
            c.append("timestamp >= ?")
            p.append(self.time_from)
        if self.time_to is not None:
            c.append("timestamp <= ?")
            p.append(self.time_to)
        if self.kinds is not None:
            c.append(f"kind IN ({','.join('?' * len(self.kinds))})")
            p += list(self.kinds)
        if self.intents is not None:
            c.append(f"intent IN ({','.join('?' * len(self.intents))})")
            p += list(self.intents)
        return c, p


@dataclass
class Hit:
    """One search result: ``id`` (row id), ``score`` (cosine similarity, BM25 score, or RRF score by mode), ``kind``,
    ``text``, ``metadata``, ``provenance`` (block, tx hash and log index; or document id and chunk) and a one-line
    ``citation``. ``ranks`` holds the rank in each fused ranking (hybrid)."""

    id: int
    score: float
    kind: str
    text: str
    metadata: dict[str, Any]
    provenance: dict[str, Any]
    citation: str
    ranks: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "score": round(float(self.score), 6), "kind": self.kind, "text": self.text,
                "metadata": self.metadata, "provenance": self.provenance, "citation": self.citation,
                **({"ranks": self.ranks} if self.ranks else {})}


_WORD = re.compile(r"[0-9A-Za-z_]+")


def query_words(text: str) -> list[str]:
    """The distinct words of ``text`` (letters, digits, ``_``), at most 64: the keyword search OR-s them (each one
    quoted for the backend, so query operators in user text are inert)."""
    words: list[str] = []
    for w in _WORD.findall(text):
        if w not in words:
            words.append(w)
    return words[:64]


def rrf(rankings: dict[str, Sequence[int]], k: int = 60) -> list[tuple[int, float, dict[str, int]]]:
    """Reciprocal rank fusion (Cormack et al. 2009): ``sum 1 / (k + rank)`` with ranks from 1. Returns
    ``(id, score, {ranking: rank})`` best first (ties broken by id for determinism)."""
    scores: dict[int, float] = {}
    ranks: dict[int, dict[str, int]] = {}
    for name, ids in rankings.items():
        for r, doc in enumerate(ids, start=1):
            scores[doc] = scores.get(doc, 0.0) + 1.0 / (k + r)
            ranks.setdefault(doc, {})[name] = r
    order = sorted(scores, key=lambda d: (-scores[d], d))
    return [(d, scores[d], ranks[d]) for d in order]


def _stored_meta(meta: str | None) -> dict[str, Any]:
    """A chunk's stored ``meta``; one stored before ingest checked it (too deep, NaN) is replaced by a note, so a
    search that returns the chunk still answers (the response encoder refuses such values)."""
    m = json.loads(meta or "{}")
    try:
        check_json_value(m, "meta")
    except ValueError as e:
        log.warning("rag: stored meta not served: %s", e)
        return {"meta_error": str(e)[:200]}
    return m if isinstance(m, dict) else {"meta": m}


def _compact_meta(kind: str, meta: dict[str, Any]) -> dict[str, Any]:
    if kind != "tx":
        return meta
    keep = ("block_number", "block_hash", "timestamp", "time", "tx_index", "tx_hash", "from", "to", "contract",
            "value_wei", "status", "intent", "token", "tokens", "summary", "log_indexes")
    out = {k: meta[k] for k in keep if k in meta}
    if meta.get("call"):
        out["function"] = meta["call"].get("name")
    out["addresses"] = meta.get("addresses", {})
    return out


class Searcher:
    """Runs searches on the plugin's tables.

    Args:
        reader: returns this thread's read connection (``Database.reader``).
        embed: text → unit vectors ``(n, dim)`` float32.
        index: the in-memory vector index (used at or above ``ann_min_vectors`` vectors, on SQLite only).
        ann_min_vectors, exact_max_candidates, rrf_k: see :class:`~monmouth_rag.config.RagConfig`.
        pg_knn, pg_ef_search, pg_probes: how PostgreSQL runs vector search, pgvector's ``hnsw.ef_search`` and
            ``ivfflat.probes`` (RagConfig).
        backend: ``sqlite`` or ``postgres``: whose statements (:mod:`monmouth_rag.dialect`) fetch the two candidate
            lists; filters and fusion are the same code on both.
    """

    def __init__(self, reader: Callable[[], apsw.Connection], embed: Callable[[list[str]], np.ndarray],
                 index: SyncedIndex, *, ann_min_vectors: int = 50_000, exact_max_candidates: int = 20_000,
                 rrf_k: int = 60, backend: str = "sqlite", pg_knn: str = "hnsw",
                 pg_ef_search: int = 400, pg_probes: int = 20) -> None:
        self.sql = statements(backend)
        self.pg_knn = pg_knn
        self.pg_ef_search = pg_ef_search
        self.pg_probes = pg_probes
        self.reader = reader
        self.embed = embed
        self.index = index
        self.ann_min_vectors = ann_min_vectors
        self.exact_max_candidates = exact_max_candidates
        self.rrf_k = rrf_k

    # ------------------------------------------------------------------------------------------------ pieces
    def vector_count(self, conn: apsw.Connection) -> int:
        if self.index.loaded:
            return len(self.index)
        return int(scalar(conn, "SELECT count(*) FROM rag_index WHERE has_vec = 1"))

    def use_index(self, conn: apsw.Connection) -> bool:
        """Whether the in-memory index serves vector search (never on PostgreSQL: pgvector's index does). Not while
        another thread loads it (the plugin's start, in the background: reading the persisted copy takes seconds,
        building it from ``rag_vec`` minutes at 1M): meanwhile searches are exact, in SQL, instead of waiting."""
        return self.sql.ann_in_memory and (self.index.loaded or self.vector_count(conn) >= self.ann_min_vectors) \
            and not self.index.loading_elsewhere()

    def candidates(self, conn: apsw.Connection, filters: Filters, limit: int) -> list[int]:
        clauses, params = filters.sql("d")
        where = " AND ".join(clauses) or "true"
        return [r[0] for r in conn.execute(f"SELECT d.id FROM rag_docs d WHERE {where} LIMIT ?", (*params, limit))]

    def vector(self, qvec: np.ndarray, k: int, filters: Filters | None = None) -> list[tuple[int, float]]:
        """Top ``k`` ``(id, cosine similarity)`` for the unit query vector ``qvec`` ``(dim,)``."""
        filters = filters or Filters()
        conn = self.reader()
        q = np.asarray(qvec, np.float32)
        cand: list[int] | None = None
        if filters.needs_candidates:
            cand = self.candidates(conn, filters, self.exact_max_candidates + 1)
            if not cand:
                return []
        if self.use_index(conn):
            self.index.sync(conn)
            kw: dict[str, Any] = dict(kinds=filters.kinds, intents=filters.intents, block_from=filters.block_from,
                                      block_to=filters.block_to, time_from=filters.time_from, time_to=filters.time_to)
            if cand is not None and len(cand) <= self.exact_max_candidates:
                mask: np.ndarray | None = self.index.mask(ids=cand, **kw)
                ids, scores = self.index.search(q, k, mask, exact=True)
            else:
                if cand is not None:  # every SQL candidate joins the mask: the index ranks allowed rows only
                    kw["ids"] = self.candidates(conn, filters, 10**9)
                mask = None if filters.empty else self.index.mask(**kw)
                ids, scores = self.index.search(q, k, mask)
            return [(int(d), float(s)) for d, s in zip(ids, scores, strict=True)]
        clauses, params = filters.vec0()
        if cand is not None and len(cand) > self.exact_max_candidates:
            cand = self.candidates(conn, filters, 10**9)
        return [(d, 1.0 - dist) for d, dist in self.sql.knn(conn, q, k, clauses, params, cand,
                                                                     self.pg_knn, self.pg_ef_search,
                                                                     self.pg_probes)]

    def keyword(self, query: str, k: int, filters: Filters | None = None) -> list[tuple[int, float]]:
        """Top ``k`` ``(id, score)``, higher is better: BM25 (k1 = 1.2, b = 0.75): FTS5's ``bm25()`` negated on
        SQLite, the same formula in SQL on PostgreSQL (:meth:`monmouth_rag.dialect.PgStatements.keyword`)."""
        filters = filters or Filters()
        words = query_words(query)
        if not words:
            return []
        clauses, params = filters.sql("d")
        return self.sql.keyword(self.reader(), words, k, clauses, params)

    def hydrate(self, ids: Sequence[int]) -> dict[int, Hit]:
        """Rows for ``ids`` as hits with score 0 (ids no longer in ``rag_docs`` are absent)."""
        if not ids:
            return {}
        conn = self.reader()
        out: dict[int, Hit] = {}
        for i in range(0, len(ids), 500):
            part = list(ids[i:i + 500])
            for row in conn.execute(
                "SELECT id, kind, block_number, block_hash, timestamp, tx_hash, tx_index, log_index, doc_id, chunk, "
                f"title, text, meta FROM rag_docs WHERE id IN ({','.join('?' * len(part))})", part
            ):
                (doc, kind, block, bhash, ts, txh, txi, logi, doc_id, chunk, title, text, meta) = row
                m = _stored_meta(meta)
                if kind == "tx":
                    prov = {"block_number": block, "block_hash": hx(bhash), "tx_hash": hx(txh), "tx_index": txi,
                            "log_index": logi}
                    cite = f"block {block}, tx {hx(txh)}" + (f", log {logi}" if logi is not None else "")
                else:
                    prov = {"doc_id": doc_id, "chunk": chunk}
                    cite = f"{kind} {doc_id!r}" + (f" ({title})" if title else "") + f", chunk {chunk}"
                    m = {"title": title, "timestamp": ts, **m}
                out[doc] = Hit(doc, 0.0, kind, text, _compact_meta(kind, m), prov, cite)
        return out

    # ------------------------------------------------------------------------------------------------ search
    def search(self, query: str, k: int = 10, mode: str = "hybrid", filters: Filters | None = None,
               qvec: np.ndarray | None = None) -> list[Hit]:
        """Search ``query``; ``mode`` is ``vector``, ``keyword`` or ``hybrid``.

        Raises:
            ValueError: unknown mode, or ``k`` below 1.
        """
        if mode not in MODES:
            raise ValueError(f"mode: must be one of {', '.join(MODES)} (got {mode!r})")
        if k < 1:
            raise ValueError(f"k: must be at least 1 (got {k})")
        filters = filters or Filters()
        if mode == "keyword":
            ranked = self.keyword(query, k, filters)
            return self._hits(ranked, {})
        if qvec is None:
            qvec = self.embed([query])[0]
        if mode == "vector":
            return self._hits(self.vector(qvec, k, filters), {})
        depth = min(max(50, 2 * k), 1000)
        vec = self.vector(qvec, depth, filters)
        kw = self.keyword(query, depth, filters)
        fused = rrf({"vector": [d for d, _ in vec], "keyword": [d for d, _ in kw]}, self.rrf_k)
        ranks = {d: r for d, _, r in fused}
        return self._hits([(d, s) for d, s, _ in fused], ranks, k)

    def _hits(self, ranked: Sequence[tuple[int, float]], ranks: dict[int, dict[str, int]],
              k: int | None = None) -> list[Hit]:
        rows = self.hydrate([d for d, _ in ranked])
        out = []
        for d, s in ranked:
            h = rows.get(d)
            if h is None:  # deleted since (a revert or a document delete)
                continue
            h.score = s
            h.ranks = ranks.get(d, {})
            out.append(h)
            if k is not None and len(out) >= k:
                break
        return out


# ---------------------------------------------------------------------------------------------------- context


def build_context(searcher: Searcher, count_tokens: Callable[[str], int], query: str, max_tokens: int, *,
                  filters: Filters | None = None, mode: str = "hybrid", candidates: int = 50,
                  order: str = "relevance") -> dict[str, Any]:
    """Pack the best chunks for ``query`` into ``max_tokens`` tokens (measured by ``count_tokens``).

    Greedy by relevance: each candidate, rendered as ``[n] citation`` + newline + text, is added if it fits in what is
    left; exact duplicates (same text) are dropped. The packed chunks are then numbered in ``order``: ``relevance``
    (best first) or ``chronological`` (by block, then time). Returns ``{"context", "chunks", "used_tokens",
    "max_tokens", "omitted"}``; ``omitted`` lists what was left out and why (``duplicate`` or ``budget``).
    """
    t0 = time.perf_counter()
    hits = searcher.search(query, candidates, mode, filters)
    seen: set[bytes] = set()
    picked: list[tuple[Hit, int]] = []
    omitted: list[dict[str, Any]] = []
    used = 0
    sep = "\n\n"
    sep_cost = count_tokens(sep)
    for h in hits:
        key = text_key(h.text)
        if key in seen:
            omitted.append({"citation": h.citation, "score": h.score, "reason": "duplicate"})
            continue
        seen.add(key)
        # "[NN] " prefix: counted with a two-digit placeholder so renumbering never exceeds the budget
        cost = count_tokens(f"[00] {h.citation}\n{h.text}") + (sep_cost if picked else 0)
        if used + cost > max_tokens:
            omitted.append({"citation": h.citation, "score": h.score, "reason": "budget", "tokens": cost})
            continue
        picked.append((h, cost))
        used += cost
    if order == "chronological":
        picked.sort(key=lambda x: (x[0].provenance.get("block_number") or NO_BLOCK,
                                   x[0].metadata.get("timestamp") or 0, x[0].id))
    parts, chunks = [], []
    for n, (h, _cost) in enumerate(picked, start=1):
        block = f"[{n}] {h.citation}\n{h.text}"
        parts.append(block)
        chunks.append({"n": n, "citation": h.citation, "score": h.score, "kind": h.kind, "provenance": h.provenance,
                       "text": h.text, "tokens": count_tokens(block)})
    context = sep.join(parts)
    used_tokens = count_tokens(context) if context else 0
    return {"query": query, "context": context, "chunks": chunks, "used_tokens": used_tokens,
            "max_tokens": max_tokens, "omitted": omitted, "took_ms": round((time.perf_counter() - t0) * 1000, 2)}
