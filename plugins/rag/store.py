"""The RAG plugin's tables, and every write to them: chain indexing (inside the engine's transaction), reverts,
document chunks, and the embedding worker's guarded vector inserts.

Layout (one row per searchable unit, a transaction or a document chunk, in ``rag_docs``; its id is the rowid of
``rag_fts``, ``rag_vec`` and ``rag_index``)::

    rag_docs        trimmed by block_number   text + structured metadata (kind tx | document | memory)
    rag_addresses   trimmed by block_number   (address, role, doc): sender, recipient, contract, log, transfer
    rag_tokens      trimmed by block_number   (token, doc): symbols (upper case) and 0x token addresses
    rag_pending     trimmed by block_number   documents waiting for a vector
    rag_index       self-managed              which ids have FTS/vector rows, and their block (for reverts)
    rag_fts         self-managed (FTS5)       BM25 keyword index, contentless with deletes
    rag_fts_stats   self-managed              PostgreSQL only: document count and total length for BM25 (dialect)
    rag_vec         self-managed (vec0)       float[dim] embeddings + metadata columns for filtered KNN
    rag_changes     self-managed              append-only log of vector adds/deletes (keeps in-memory indexes in sync)
    rag_meta        self-managed              key/value (embedding model identity)
    rag_edges       journaled                 address graph: (src, dst, token) → count, value, first/last block

Reorg safety: the engine deletes the trimmed tables' rows of a reverted block (even while the plugin is disabled)
and restores ``rag_edges`` exactly from its journal; :func:`revert_block` removes the FTS and vector rows of the
reverted block's documents via ``rag_index`` (on PostgreSQL ``rag_fts_stats`` with them, in the same
statement). ``rag_docs`` ids come from ``AUTOINCREMENT`` (an identity column on
PostgreSQL), so an id is never reused after a revert (``sqlite_sequence`` has no primary key and is not journaled;
a PostgreSQL sequence never goes back): a vector computed for a reverted
document can never be attached to a newer one. The embedding worker deletes the ``rag_pending`` row and inserts the
vector in one transaction, only if that row still existed (:func:`store_vectors`).

PostgreSQL: the same tables and the same SQL, except the keyword and vector tables (``tsvector`` and pgvector
columns instead of FTS5 and ``vec0``) and the statements on them, which live in :mod:`monmouth_rag.dialect`.
``MIGRATIONS`` is SQLite's schema, ``PG_MIGRATIONS`` PostgreSQL's.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import apsw
import numpy as np

from monmouth.backends import execute_later, executemany_later
from monmouth.types import Block

from .abi import Registry
from .decoded import ZERO, DecodedTx
from .decoder import decode_transaction
from .dialect import DIM as DIM
from .dialect import DOC_INDEXES, statements_of
from .dialect import PG_MIGRATIONS as PG_MIGRATIONS
from .render import embed_text, render

MIGRATIONS: tuple[str, ...] = (
    f"""
    CREATE TABLE rag_docs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,               -- tx | document | memory
        block_number INTEGER,             -- tx: its block; NULL for documents and memories (never trimmed)
        block_hash BLOB,
        timestamp INTEGER,                -- Unix seconds: block time, or ingest time for documents
        tx_hash BLOB,
        tx_index INTEGER,
        log_index INTEGER,                -- block-wide index of the transaction's first log
        doc_id TEXT,                      -- documents: the caller's id
        chunk INTEGER,                    -- documents: chunk number, from 0
        sender BLOB,
        recipient BLOB,
        contract BLOB,
        intent TEXT,
        token TEXT,
        title TEXT,
        text TEXT NOT NULL,
        meta TEXT NOT NULL DEFAULT '{{}}'   -- JSON
    );
    {DOC_INDEXES}
    CREATE TABLE rag_addresses (
        address BLOB NOT NULL, role TEXT NOT NULL, doc INTEGER NOT NULL, block_number INTEGER,
        PRIMARY KEY (address, role, doc)
    ) WITHOUT ROWID;
    CREATE INDEX rag_addresses_block ON rag_addresses (block_number);
    CREATE TABLE rag_tokens (
        token TEXT NOT NULL, doc INTEGER NOT NULL, block_number INTEGER, PRIMARY KEY (token, doc)
    ) WITHOUT ROWID;
    CREATE INDEX rag_tokens_block ON rag_tokens (block_number);
    CREATE TABLE rag_pending (doc INTEGER PRIMARY KEY, block_number INTEGER, length INTEGER NOT NULL);
    CREATE INDEX rag_pending_block ON rag_pending (block_number);
    CREATE TABLE rag_index (id INTEGER PRIMARY KEY, block_number INTEGER, has_vec INTEGER NOT NULL DEFAULT 0);
    CREATE INDEX rag_index_block ON rag_index (block_number);
    CREATE TABLE rag_changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, id INTEGER NOT NULL, op INTEGER NOT NULL);
    CREATE TABLE rag_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE VIRTUAL TABLE rag_fts USING fts5(text, content='', contentless_delete=1, tokenize='porter unicode61');
    CREATE VIRTUAL TABLE rag_vec USING vec0(
        embedding float[{DIM}] distance_metric=cosine,
        kind text, block_number integer, timestamp integer, intent text, token text
    );
    CREATE TABLE rag_edges (
        src BLOB NOT NULL, dst BLOB NOT NULL, token TEXT NOT NULL,
        count INTEGER NOT NULL, value TEXT NOT NULL, first_block INTEGER NOT NULL, last_block INTEGER NOT NULL,
        PRIMARY KEY (src, dst, token)
    ) WITHOUT ROWID;
    CREATE INDEX rag_edges_dst ON rag_edges (dst);
    """,
    # 2: a compact text for the embedding model (NULL: embed ``text``); see decoder.embed_text.
    """
    ALTER TABLE rag_docs ADD COLUMN embed_text TEXT;
    """,
)

#: ``monmouth_trimmed_tables``: ``None`` means this plugin removes the rows itself (see :func:`revert_block`).
TRIMMED: dict[str, str | None] = {
    "rag_docs": "block_number",
    "rag_addresses": "block_number",
    "rag_tokens": "block_number",
    "rag_pending": "block_number",
    "rag_index": None,
    "rag_changes": None,
    "rag_meta": None,
    "rag_fts": None,
    "rag_fts_stats": None,
    "rag_vec": None,
}

#: ``rag_changes.op`` values.
OP_ADD, OP_DEL = 1, -1
#: vec0 metadata columns refuse NULL: documents get block_number -1 and empty intent/token.
NO_BLOCK = -1


# ------------------------------------------------------------------------------------------------- reading rows
# apsw types a fetched value as the ``SQLiteValue`` union (and ``fetchone()`` as maybe ``None``); the schema above fixes
# each column's type, so these hand the rows on as ``Any`` (the same queries, no conversion).


def scalar(conn: apsw.Connection, sql: str, args: apsw.Bindings | None = None) -> Any:
    """The first column of the row of a query that always returns one (an aggregate, ``INSERT ... RETURNING``)."""
    rows = conn.execute(sql, args).fetchall()  # all: an INSERT's statement must run to its end
    assert rows, sql
    return rows[0][0]


def all_rows(conn: apsw.Connection, sql: str, args: apsw.Bindings | None = None) -> list[tuple[Any, ...]]:
    """``conn.execute(sql, args).fetchall()``."""
    return conn.execute(sql, args).fetchall()


# ------------------------------------------------------------------------------------------------- chain indexing


@dataclass
class ChainIndexer:
    """Turns blocks into documents inside the engine's transaction.

    Args:
        registry: ABI/contract tables for the decoder.
        scope: ``all`` or ``watched``.
        watched: addresses for ``watched`` scope (20-byte).
        graph: also maintain ``rag_edges``.
        labels: extra labels passed to the renderer.
    """

    registry: Registry
    scope: str = "all"
    watched: frozenset[bytes] = frozenset()
    graph: bool = True
    labels: Mapping[bytes | str, str] | None = None

    def in_scope(self, d: DecodedTx, extra_watched: frozenset[bytes] = frozenset()) -> bool:
        if self.scope == "all":
            return True
        watched = self.watched | extra_watched
        return any(a in watched for a in d.roles)

    def apply_block(self, conn: apsw.Connection, block: Block, extra_watched: frozenset[bytes] = frozenset()) -> int:
        """Index every in-scope transaction of ``block``; returns how many documents were recorded.

        ``extra_watched``: the agents known to the memory plugin; they are in the watched scope and are labelled
        ``agent`` (unless a configured label names them)."""
        labels: dict[bytes | str, str] = {a: "agent" for a in extra_watched}
        labels.update(self.labels or {})
        offset = 0
        docs: list[tuple[DecodedTx, str, str | None]] = []
        edges: dict[tuple[bytes, bytes, str], int] = {}
        for i, tx in enumerate(block.transactions):
            receipt_logs = len(block.receipts[i].logs) if i < len(block.receipts) else 0
            d = decode_transaction(block, i, registry=self.registry, first_log_index=offset)
            offset += receipt_logs
            if not self.in_scope(d, extra_watched):
                continue
            text = render(d, labels, self.registry)
            docs.append((d, text, embed_text(d, labels, self.registry)))
            if self.graph:
                if tx.to is not None and tx.value:
                    key = (tx.sender, tx.to, "ETH")
                    edges[key] = edges.get(key, 0) + tx.value
                elif tx.to is not None:
                    key = (tx.sender, tx.to, "CALL")
                    edges[key] = edges.get(key, 0)
                for t in d.transfers:
                    if t.sender == ZERO and t.recipient == ZERO:
                        continue
                    key = (t.sender, t.recipient, "0x" + t.token.hex())
                    edges[key] = edges.get(key, 0) + t.amount
        fts = list(zip(insert_tx_docs(conn, docs), (text for _, text, _ in docs), strict=True))
        # after the rag_pending inserts: PgStatements' lock order (rag_pending, then the keyword stats)
        statements_of(conn).insert_fts(conn, fts)
        if edges:
            add_edges(conn, block.number, edges)
        return len(fts)


#: Documents :func:`_insert_docs` inserts in one statement (at most 14 parameters each).
DOCS_PER_INSERT = 500


def insert_tx_docs(conn: apsw.Connection, docs: Sequence[tuple[DecodedTx, str, str | None]]) -> list[int]:
    """Record transaction documents ``(decoded, text, compact)`` (rows, addresses, tokens, pending) and return their
    ids, in order; the caller keyword-indexes each ``text`` (``insert_fts``, once per block). ``text`` is shown;
    ``compact`` (if not None) is what gets embedded. The ``rag_docs`` rows go in as :func:`_insert_docs` puts them
    (matched back by transaction index); the rest is queued (``execute_later``): on PostgreSQL a block's documents
    cost one round trip, not five per transaction."""
    ids = _insert_docs(
        conn, "kind, block_number, block_hash, timestamp, tx_hash, tx_index, log_index, sender, recipient, contract, "
        "intent, token, text, embed_text, meta", "('tx', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(d.block_number, d.block_hash, d.timestamp, d.hash, d.index, d.first_log_index if d.events else None,
          d.sender, d.to, d.contract, d.intent, d.token or "", text, compact,
          json.dumps(d.to_meta(), separators=(",", ":"))) for d, text, compact in docs],
        "tx_index", [d.index for d, _, _ in docs])
    for doc, (d, text, compact) in zip(ids, docs, strict=True):
        # the rest needs no answer: queued (execute_later), so on PostgreSQL it travels with the next statement
        execute_later(conn, "INSERT INTO rag_index (id, block_number) VALUES (?, ?)", (doc, d.block_number))
        executemany_later(
            conn,
            "INSERT INTO rag_addresses (address, role, doc, block_number) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [(a, role, doc, d.block_number) for a, roles in d.roles.items() for role in roles],
        )
        toks = {t.upper() if not t.startswith("0x") else t.lower() for t in d.tokens}
        executemany_later(conn, "INSERT INTO rag_tokens (token, doc, block_number) VALUES (?, ?, ?) "
                                "ON CONFLICT DO NOTHING", [(t, doc, d.block_number) for t in toks])
        execute_later(conn, "INSERT INTO rag_pending (doc, block_number, length) VALUES (?, ?, ?)",
                      (doc, d.block_number, len(compact or text)))
    return ids


def _insert_docs(conn: apsw.Connection, columns: str, values: str, rows: Sequence[Sequence[Any]], key: str,
                 keys: Sequence[int]) -> list[int]:
    """Insert ``rag_docs`` rows, one ``INSERT ... VALUES values, values, ... RETURNING id, key`` per
    :data:`DOCS_PER_INSERT` rows (``values``: one row's tuple with its placeholders, ``rows``: each row's parameters),
    and return their ids in the order of ``keys``, each row's value of the ``key`` column (unique among them): the
    order ``RETURNING`` gives is not relied on."""
    ids: list[int] = []
    for lo in range(0, len(rows), DOCS_PER_INSERT):
        part = rows[lo:lo + DOCS_PER_INSERT]
        got = all_rows(conn, f"INSERT INTO rag_docs ({columns}) VALUES " + ",".join([values] * len(part))
                       + f" RETURNING id, {key}", [x for row in part for x in row])
        by_key = {int(k): int(doc) for doc, k in got}
        ids += [by_key[k] for k in keys[lo:lo + len(part)]]
    return ids


#: Edges whose rows :func:`add_edges` reads in one statement (three parameters each: under SQLite's and
#: PostgreSQL's limits).
EDGES_PER_READ = 300


def add_edges(conn: apsw.Connection, block_number: int, edges: Mapping[tuple[bytes, bytes, str], int]) -> None:
    """Add one block's edges to ``rag_edges`` (count +1 per transaction or transfer, value summed as a decimal
    string because wei and token amounts exceed 64 bits). Journaled: a revert restores the previous rows exactly.
    The existing rows are read in one statement per :data:`EDGES_PER_READ` edges, the writes queued
    (``executemany_later``)."""
    keys = list(edges)
    found: dict[tuple[bytes, bytes, str], tuple[int, str]] = {}
    for i in range(0, len(keys), EDGES_PER_READ):
        chunk = keys[i:i + EDGES_PER_READ]
        for src, dst, token, count, value in all_rows(
                conn, "SELECT src, dst, token, count, value FROM rag_edges WHERE (src, dst, token) IN (VALUES "
                + ",".join(["(?, ?, ?)"] * len(chunk)) + ")", [x for k in chunk for x in k]):
            found[(bytes(src), bytes(dst), str(token))] = (int(count), str(value))
    new = [(src, dst, token, str(value), block_number, block_number)
           for (src, dst, token), value in edges.items() if (src, dst, token) not in found]
    changed = [(found[k][0] + 1, str(int(found[k][1]) + value), block_number, *k)
               for k, value in edges.items() if k in found]
    executemany_later(conn, "INSERT INTO rag_edges (src, dst, token, count, value, first_block, last_block) "
                            "VALUES (?, ?, ?, 1, ?, ?, ?)", new)
    executemany_later(conn, "UPDATE rag_edges SET count = ?, value = ?, last_block = ? WHERE src = ? AND dst = ? "
                            "AND token = ?", changed)


def revert_block(conn: apsw.Connection, number: int) -> int:
    """Remove the FTS and vector rows of documents of block ``number`` and above (the engine has already deleted
    their ``rag_docs``/``rag_pending`` rows). Returns the number of documents removed."""
    rows = all_rows(conn, "SELECT id, has_vec FROM rag_index WHERE block_number >= ?", (number,))
    _drop_index_rows(conn, rows)
    execute_later(conn, "DELETE FROM rag_index WHERE block_number >= ?", (number,))
    return len(rows)


def _drop_index_rows(conn: apsw.Connection, rows: Sequence[tuple[int, int]]) -> None:
    """Delete the keyword and vector rows of documents ``(id, has_vec)``; the vector deletes (and their change rows)
    are queued (``executemany_later``: on PostgreSQL with the next statement, not a round trip each)."""
    statements_of(conn).delete_fts(conn, [doc for doc, _ in rows])
    embedded = [(doc,) for doc, has_vec in rows if has_vec]
    executemany_later(conn, "DELETE FROM rag_vec WHERE rowid = ?", embedded)
    executemany_later(conn, "INSERT INTO rag_changes (id, op) VALUES (?, ?)", [(doc, OP_DEL) for (doc,) in embedded])


def reconcile(conn: apsw.Connection) -> int:
    """Remove FTS/vector rows whose chain document is gone (blocks reverted while the plugin was disabled: the engine
    trimmed ``rag_docs`` but could not call this plugin). Run in a write transaction at startup; returns the count."""
    statements_of(conn).lock_writes(conn)
    rows = all_rows(
        conn,
        "SELECT i.id, i.has_vec FROM rag_index i WHERE i.block_number IS NOT NULL "
        "AND NOT EXISTS (SELECT 1 FROM rag_docs d WHERE d.id = i.id)",
    )
    _drop_index_rows(conn, rows)
    executemany_later(conn, "DELETE FROM rag_index WHERE id = ?", [(r[0],) for r in rows])
    return len(rows)


# ------------------------------------------------------------------------------------------------- documents


def insert_chunks(conn: apsw.Connection, doc_id: str, chunks: Sequence[str], *, kind: str = "document",
                  title: str | None = None, meta: Mapping[str, Any] | None = None,
                  timestamp: int | None = None) -> list[int]:
    """Record the chunks of document ``doc_id`` (not tied to a block; reorgs never touch them). Returns row ids."""
    ts = int(time.time()) if timestamp is None else timestamp
    sql = statements_of(conn)
    sql.lock_writes(conn)
    meta_json = json.dumps(dict(meta or {}), separators=(",", ":"), default=str)
    ids = _insert_docs(conn, "kind, timestamp, doc_id, chunk, intent, token, title, text, meta",
                       "(?, ?, ?, ?, '', '', ?, ?, ?)",
                       [(kind, ts, doc_id, i, title, text, meta_json) for i, text in enumerate(chunks)],
                       "chunk", range(len(chunks)))
    executemany_later(conn, "INSERT INTO rag_index (id, block_number) VALUES (?, NULL)", [(doc,) for doc in ids])
    executemany_later(conn, "INSERT INTO rag_pending (doc, block_number, length) VALUES (?, NULL, ?)",
                      [(doc, len(text)) for doc, text in zip(ids, chunks, strict=True)])
    sql.insert_fts(conn, list(zip(ids, chunks, strict=True)))
    return ids


def delete_document(conn: apsw.Connection, doc_id: str, kind: str | None = None) -> int:
    """Delete every chunk of document ``doc_id`` (rows, FTS, vectors, pending). Returns the chunks removed."""
    sql = "SELECT d.id, coalesce(i.has_vec, 0) FROM rag_docs d LEFT JOIN rag_index i ON i.id = d.id " \
          "WHERE d.doc_id = ? AND d.block_number IS NULL"
    params: tuple[Any, ...] = (doc_id,)
    statements_of(conn).lock_writes(conn)
    if kind is not None:
        sql += " AND d.kind = ?"
        params += (kind,)
    rows = all_rows(conn, sql, params)
    _drop_index_rows(conn, rows)
    docs = [(doc,) for doc, _ in rows]
    for table, column in (("rag_index", "id"), ("rag_pending", "doc"), ("rag_docs", "id")):
        executemany_later(conn, f"DELETE FROM {table} WHERE {column} = ?", docs)
    return len(rows)


# ------------------------------------------------------------------------------------------------- vectors


@dataclass(frozen=True)
class PendingDoc:
    """A document waiting for its vector (what the worker needs to embed and store it); ``text`` is what gets
    embedded."""

    id: int
    text: str
    kind: str
    block_number: int | None
    timestamp: int
    intent: str
    token: str


def take_pending(conn: apsw.Connection, limit: int) -> list[PendingDoc]:
    """Up to ``limit`` pending documents: user documents and memories first (they were just sent by someone), then
    chain documents oldest first."""
    cols = ("SELECT d.id, coalesce(d.embed_text, d.text), d.kind, d.block_number, coalesce(d.timestamp, 0), "
            "coalesce(d.intent, ''), coalesce(d.token, '') FROM rag_pending p JOIN rag_docs d ON d.id = p.doc ")
    rows = all_rows(conn, cols + "WHERE p.block_number IS NULL ORDER BY p.doc LIMIT ?", (limit,))
    if len(rows) < limit:
        rows += all_rows(conn, cols + "WHERE p.block_number IS NOT NULL ORDER BY p.doc LIMIT ?",
                         (limit - len(rows),))
    return [PendingDoc(*r) for r in rows]


def store_vectors(conn: apsw.Connection, docs: Sequence[PendingDoc], vectors: np.ndarray) -> int:
    """Store vectors for ``docs`` (inside a write transaction). A document whose ``rag_pending`` row is gone (its
    block was reverted, or it was deleted or replaced, meanwhile) is skipped: the pending delete and the vector insert
    are one conditional step. Returns the number stored."""
    sql = statements_of(conn)
    sql.lock_writes(conn)
    if not docs:
        return 0
    # one conditional step for the batch: the rows still pending, deleted, decide which vectors are stored
    pending = {int(d) for (d,) in all_rows(
        conn, f"DELETE FROM rag_pending WHERE doc IN ({','.join('?' * len(docs))}) RETURNING doc",
        [doc.id for doc in docs])}
    kept = []
    for doc, vec in zip(docs, vectors, strict=True):
        if doc.id in pending:
            pending.discard(doc.id)  # a document given twice is stored once
            kept.append((doc, vec))
    sql.insert_vectors(conn, [(doc.id, vec, (doc.kind, NO_BLOCK if doc.block_number is None else doc.block_number,
                                             doc.timestamp, doc.intent, doc.token)) for doc, vec in kept])
    executemany_later(conn, "UPDATE rag_index SET has_vec = 1 WHERE id = ?", [(doc.id,) for doc, _ in kept])
    executemany_later(conn, "INSERT INTO rag_changes (id, op) VALUES (?, ?)", [(doc.id, OP_ADD) for doc, _ in kept])
    return len(kept)


def requeue_all(conn: apsw.Connection) -> int:
    """Drop every vector and queue every document again (after the embedding model changed). Returns the count."""
    statements_of(conn).lock_writes(conn)
    conn.execute("DELETE FROM rag_vec")
    conn.execute("INSERT INTO rag_changes (id, op) SELECT id, ? FROM rag_index WHERE has_vec = 1", (OP_DEL,))
    conn.execute("UPDATE rag_index SET has_vec = 0 WHERE has_vec = 1")
    conn.execute("INSERT INTO rag_pending (doc, block_number, length) "
                 "SELECT id, block_number, length(coalesce(embed_text, text)) FROM rag_docs WHERE true "
                 "ON CONFLICT DO NOTHING")  # WHERE: SQLite's parser needs it before an upsert clause
    return int(scalar(conn, "SELECT count(*) FROM rag_pending"))


def text_key(text: str) -> bytes:
    """Key of a text for de-duplication (sha1, 20 bytes)."""
    return hashlib.sha1(text.encode("utf-8")).digest()


def get_meta(conn: apsw.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM rag_meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def set_meta(conn: apsw.Connection, key: str, value: str) -> None:
    conn.execute("INSERT INTO rag_meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = "
                 "excluded.value", (key, value))


def counts(conn: apsw.Connection) -> dict[str, int]:
    """``{"documents": rows in rag_docs, "vectors": ..., "backlog": pending}``."""
    docs = scalar(conn, "SELECT count(*) FROM rag_docs")
    vecs = scalar(conn, "SELECT count(*) FROM rag_index WHERE has_vec = 1")
    backlog = scalar(conn, "SELECT count(*) FROM rag_pending")
    return {"documents": int(docs), "vectors": int(vecs), "backlog": int(backlog)}


def prune_changes(conn: apsw.Connection, keep: int = 1_000_000) -> int:
    """Drop the oldest ``rag_changes`` entries beyond ``keep`` (an in-memory index further behind reloads fully)."""
    top = scalar(conn, "SELECT max(seq) FROM rag_changes")
    if top is None or top <= keep:
        return 0
    return len(conn.execute("DELETE FROM rag_changes WHERE seq <= ? RETURNING seq", (top - keep,)).fetchall())
