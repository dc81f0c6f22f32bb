"""Memory items written through the API: store, get, list, update, delete, and the sweep of expired ones.

An API write appends an op to ``memory_ops`` and is visible at once through get/list/recall, but it enters the
agent's Merkle root at the next applied block, whose chain hook records the pending ops (the item's *anchor* is
that block; see :mod:`.ingest`). Chain-derived items (``origin`` chain) change only with the chain: update and
delete refuse them.

The module-level helpers (sealing, indexing, row decoding) are shared with :mod:`.ingest` and :mod:`.recall`.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import apsw
import msgpack

from monmouth.backends import execute_later, executemany_later
from monmouth.chain import hx
from monmouth.engine import read_cursor

from . import dialect, merkle
from .agents import Agents
from .config import MemoryConfig
from .crypto import AgentKey, aad
from .errors import ConflictError, InvalidRequestError, MemoryRequestError, NotFoundError
from .fields import utf8, validate_item_fields
from .merkle import canonical_json
from .schema import END_EXPIRED, KIND_NAMES, KINDS, OP_DELETE, OP_PUT, ORIGINS, all_rows, scalar
from .vectors import VectorCache

#: The columns of ``memory_items`` in the order the helpers below index rows by.
COLUMNS = ("n, id, agent, kind, origin, version, key_hash, nonce, ct, commitment, ttl_seconds, ttl_blocks, "
           "expires_at, created_at, updated_at, head_number, head_hash")


def seal(k: AgentKey, agent: bytes, item_id: bytes, version: int, content: bytes, ctype: int, key: str,
         tags: list[str], meta_json: str, ttl_s: int, ttl_b: int,
         nonce: bytes | None = None) -> tuple[bytes, bytes, bytes]:
    """``(commitment, nonce, ciphertext)`` of one item version (:func:`.merkle.commitment`; AES-GCM with
    :func:`.crypto.aad`). ``ctype``: 0 text, 1 bytes. ``nonce``: a fixed one (chain items), else random."""
    com = merkle.commitment(k.salt(item_id, version), ctype, content, key, tags, meta_json, ttl_s, ttl_b)
    payload = msgpack.packb({"c": content, "t": ctype, "k": key, "g": tags, "m": meta_json})
    n, ct = k.encrypt(payload, aad(agent, item_id, version), nonce)
    return com, n, ct


def index_item(conn: apsw.Connection, k: AgentKey, agent: bytes, n: int, text: str | None,
               tags: Sequence[str]) -> None:
    """Write item ``n``'s keyed tag hashes, FTS5 keyed tokens (text items) and embedding-queue row."""
    index_items(conn, [(k, agent, n, text, tags)])


#: One item to index: its agent's key, agent, row id ``n``, text (``None``: bytes content) and tags.
ToIndex = tuple[AgentKey, bytes, int, "str | None", Sequence[str]]


def index_items(conn: apsw.Connection, items: Sequence[ToIndex]) -> None:
    """:func:`index_item` of many items, one statement per table (``executemany``): the same rows. Written with
    :func:`monmouth.backends.executemany_later`: on PostgreSQL they travel with the transaction's next statement
    (its ``COMMIT`` for an API write), not in round trips of their own."""
    executemany_later(conn, "INSERT INTO memory_tags (agent, tag, n) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                      [(agent, k.tag_hash(t), n) for k, agent, n, _, tags in items for t in dict.fromkeys(tags)])
    fts = [(n, k.tokens(text)) for k, _, n, text, _ in items if text]
    if fts:
        dialect.of(conn).fts_add(conn, fts)
    executemany_later(conn, "INSERT INTO memory_embed_queue (n) VALUES (?) ON CONFLICT DO NOTHING",
                      [(n,) for _, _, n, _, _ in items])


def unindex_item(conn: apsw.Connection, agent: bytes, n: int) -> None:
    """Delete what :func:`index_item` wrote for item ``n``, and its vector."""
    conn.execute("DELETE FROM memory_tags WHERE n = ? AND agent = ?", (n, agent))
    dialect.of(conn).fts_remove(conn, (n,))
    conn.execute("DELETE FROM memory_vectors WHERE n = ?", (n,))
    conn.execute("DELETE FROM memory_embed_queue WHERE n = ?", (n,))


def item_row(conn: apsw.Connection, agent: bytes, item_id: bytes) -> tuple[Any, ...]:
    """The item's :data:`COLUMNS`.

    Raises:
        NotFoundError: no such item for ``agent`` (404, ``id``).
    """
    row = conn.execute(f"SELECT {COLUMNS} FROM memory_items WHERE id = ? AND agent = ?", (item_id, agent)).fetchone()
    if row is None:
        raise NotFoundError("id", f"no item {hx(item_id)} for agent {hx(agent)}")
    return row  # type: ignore[no-any-return]


def open_item(k: AgentKey, row: Sequence[Any]) -> dict[str, Any]:
    """The decrypted payload of a :data:`COLUMNS` row: ``{"c": content, "t": 0 text | 1 bytes, "k": key,
    "g": tags, "m": metadata JSON}``.

    Raises:
        cryptography.exceptions.InvalidTag: the key does not open it.
    """
    return msgpack.unpackb(k.decrypt(row[7], row[8], aad(row[2], row[1], row[5])))  # type: ignore[no-any-return]


def leaf_expired(conn: apsw.Connection, agent: bytes, item_id: bytes) -> bool:
    """Whether the item's last leaf ended by expiry (``ttl_blocks`` working memory)."""
    leaf = conn.execute("SELECT end_reason FROM memory_leaves WHERE agent = ? AND item_id = ? ORDER BY "
                        "from_block DESC LIMIT 1", (agent, item_id)).fetchone()
    return leaf is not None and leaf[0] == END_EXPIRED


def expired(conn: apsw.Connection, row: Sequence[Any], now: float) -> bool:
    """Whether a :data:`COLUMNS` row has expired at ``now`` (seconds since the epoch) or by block count."""
    if row[12] is not None and row[12] <= now:
        return True
    return bool(row[11]) and leaf_expired(conn, row[2], row[1])


def item_json(conn: apsw.Connection, k: AgentKey, row: Sequence[Any],
              payload: dict[str, Any] | None = None) -> dict[str, Any]:
    """The API's JSON of a :data:`COLUMNS` row, decrypted with ``k`` (or from ``payload``), with its anchor."""
    p = payload or open_item(k, row)
    anchor = conn.execute(
        "SELECT from_block, anchor_hash, version FROM memory_leaves WHERE agent = ? AND item_id = ? "
        "AND to_block IS NULL", (row[2], row[1])).fetchone()
    content = p["c"]
    out: dict[str, Any] = {
        "id": hx(row[1]), "agent": hx(row[2]), "kind": KIND_NAMES[row[3]], "origin": ORIGINS[row[4]],
        "version": row[5], "key": p["k"] or None, "content_type": "text" if p["t"] == 0 else "bytes",
        "tags": list(p["g"]), "metadata": json.loads(p["m"]), "commitment": hx(row[9]),
        "ttl_seconds": row[10] or None, "ttl_blocks": row[11] or None, "expires_at": row[12],
        "created_at": row[13], "updated_at": row[14],
        "written_at_head": {"number": row[15], "hash": hx(row[16])},
        "anchor": ({"block": anchor[0], "hash": hx(anchor[1]), "version": anchor[2]} if anchor else None),
        "pending": anchor is None or anchor[2] != row[5],
    }
    if p["t"] == 0:
        out["content"] = content.decode()
    else:
        out["content_b64"] = base64.b64encode(content).decode()
    return out


def filters(k: AgentKey, agent: bytes, kind: str | None, tags: Sequence[str] | None, from_block: int | None,
            to_block: int | None, since: float | None, until: float | None) -> tuple[list[str], list[Any]]:
    """SQL conditions on ``memory_items i`` (and their arguments) for the list and recall filters.

    Raises:
        MemoryRequestError: an unknown kind (422).
    """
    where = ["i.agent = ?"]
    args: list[Any] = [agent]
    if kind is not None:
        if kind not in KINDS:
            raise InvalidRequestError("kind", f"must be one of {', '.join(KINDS)} (got {kind!r})")
        where.append("i.kind = ?")
        args.append(KINDS[kind])
    for t in tags or ():
        where.append("EXISTS (SELECT 1 FROM memory_tags t WHERE t.agent = i.agent AND t.tag = ? AND t.n = i.n)")
        args.append(k.tag_hash(t))
    for cond, v in (("i.head_number >= ?", from_block), ("i.head_number <= ?", to_block),
                    ("i.created_at >= ?", since), ("i.created_at <= ?", until)):
        if v is not None:
            where.append(cond)
            args.append(v)
    return where, args


def head(conn: apsw.Connection) -> tuple[int | None, bytes | None]:
    """The engine's durable head ``(number, hash)`` as ``conn`` sees it (``(None, None)`` before the first block)."""
    cursor_head = read_cursor(conn).head
    return (cursor_head.number, cursor_head.hash) if cursor_head else (None, None)


class Items:
    """Store, read, update and delete an agent's items.

    Args:
        config: the ``[plugins.memory]`` section.
        db: the sidecar database: reads on ``db.reader()``.
        agents: the agent directory (checks and keys).
        vectors: the decrypted-vector cache, marked stale on every write.
        write: opens one of the plugin's write transactions (:func:`.txn.write`).
        settled: a read's wait until the lattice tables hold every applied block.
        settle_in: settles inside a write transaction (``conn``) before a write that reads leaves.
        indexed: a read's wait until chain-derived items are indexed (tag filters).
        wake: wakes the worker (a write to embed).
    """

    def __init__(self, config: MemoryConfig, db: Any, agents: Agents, vectors: VectorCache,
                 write: Callable[[], Any], settled: Callable[[], None],
                 settle_in: Callable[[apsw.Connection], None], indexed: Callable[[], None],
                 wake: Callable[[], None]) -> None:
        self.config = config
        self.db = db
        self.agents = agents
        self.vectors = vectors
        self.write = write
        self.settled = settled
        self.settle_in = settle_in
        self.indexed = indexed
        self.wake = wake

    def validate(self, kind: str | None, content: bytes | None, key: str | None, tags: Sequence[str] | None,
                 metadata: Any, ttl_seconds: int | None, ttl_blocks: int | None) -> None:
        """:func:`.fields.validate_item_fields` with this plugin's limits."""
        validate_item_fields(self.config, kind, content, key, tags, metadata, ttl_seconds, ttl_blocks)

    def store(self, agent: bytes, kind: str, content: bytes | str, *, key: str | None = None,
              tags: Sequence[str] | None = None, metadata: dict[str, Any] | None = None,
              ttl_seconds: int | None = None, ttl_blocks: int | None = None, item_id: bytes | None = None,
              origin: int = 0) -> dict[str, Any]:
        """Store a new memory item (off-chain; anchored at the next block).

        Args:
            content: text (``str``) or bytes.
            item_id: keep a given id (imports); a random 32-byte id otherwise.

        Raises:
            UnknownAgentError: agent not registered (404, ``agent``).
            MemoryRequestError: bad kind, oversized content, bad tags/metadata/TTL (4xx naming the field).
            ConflictError: ``item_id`` already exists (409, ``id``).
        """
        return self.store_batch(agent, [{"kind": kind, "content": content, "key": key, "tags": tags,
                                         "metadata": metadata, "ttl_seconds": ttl_seconds, "ttl_blocks": ttl_blocks,
                                         "item_id": item_id}], origin=origin)[0]

    def store_batch(self, agent: bytes, items: Sequence[dict[str, Any]], origin: int = 0) -> list[dict[str, Any]]:
        """Store several items of one agent in one transaction (all or none). Each item is a mapping with the
        keyword arguments of :meth:`store` (``kind`` and ``content`` required).

        Raises:
            as :meth:`store`, naming the field (and, for batches, the item index in the message).
        """
        self.agents.check(agent)
        k = self.agents.key(agent)
        prepared = []
        for idx, it in enumerate(items):
            content = it["content"]
            ctype = 0 if isinstance(content, str) else 1
            raw = utf8(content, "content") if isinstance(content, str) else bytes(content)
            tags = list(it.get("tags") or [])
            kind, key = it["kind"], it.get("key")
            ttl_seconds, ttl_blocks = it.get("ttl_seconds"), it.get("ttl_blocks")
            try:
                self.validate(kind, raw, key, tags, it.get("metadata"), ttl_seconds, ttl_blocks)
            except MemoryRequestError as e:
                if len(items) > 1:
                    e.message = f"item {idx}: {e.message}"
                raise
            item_id = it.get("item_id") or os.urandom(32)
            meta_json = canonical_json(it.get("metadata") or {})
            ttl_s, ttl_b = ttl_seconds or 0, ttl_blocks or 0
            com, nonce, ct = seal(k, agent, item_id, 1, raw, ctype, key or "", tags, meta_json, ttl_s, ttl_b)
            prepared.append((item_id, KINDS[kind], key, nonce, ct, com, ttl_s, ttl_b,
                             raw.decode() if ctype == 0 else None, tags))
        now = time.time()
        out = []
        with self.write() as conn:
            self.agents.check(agent, conn)
            number, bhash = head(conn)
            for item_id, kind_i, key, nonce, ct, com, ttl_s, ttl_b, text, tags in prepared:
                if conn.execute("SELECT 1 FROM memory_items WHERE id = ?", (item_id,)).fetchone():
                    raise ConflictError("id", f"item {hx(item_id)} already exists")
                expires_at = now + ttl_s if ttl_s else None
                seq = scalar(
                    conn,
                    "INSERT INTO memory_ops (agent, item_id, op, kind, version, commitment, ttl_blocks, expires_at, "
                    "written_at) VALUES (?, ?, ?, ?, 1, ?, ?, ?, ?) RETURNING seq",
                    (agent, item_id, OP_PUT, kind_i, com, ttl_b, expires_at, now))
                n = -seq
                execute_later(  # with the next statement (on PostgreSQL; the COMMIT for the last item)
                    conn,
                    "INSERT INTO memory_items (n, id, agent, kind, origin, version, key_hash, nonce, ct, commitment, "
                    "ttl_seconds, ttl_blocks, expires_at, created_at, updated_at, head_number, head_hash) "
                    "VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (n, item_id, agent, kind_i, origin, k.key_hash(key) if key else None, nonce, ct, com, ttl_s,
                     ttl_b, expires_at, now, now, number, bhash))
                index_item(conn, k, agent, n, text, tags)
                out.append({"id": hx(item_id), "agent": hx(agent), "kind": KIND_NAMES[kind_i], "version": 1,
                            "commitment": hx(com), "written_at_head": {"number": number, "hash": hx(bhash)},
                            "anchor": None})
        self.vectors.stale(agent)
        self.wake()
        return out

    def get(self, agent: bytes, item_id: bytes) -> dict[str, Any]:
        """One item, decrypted.

        Raises:
            UnknownAgentError, NotFoundError: unknown agent or item (404); an expired working item is not found.
        """
        self.agents.check(agent)
        k = self.agents.key(agent)
        self.settled()
        conn = self.db.reader()
        row = item_row(conn, agent, item_id)
        if expired(conn, row, time.time()):
            raise NotFoundError("id", f"item {hx(item_id)} has expired")
        return item_json(conn, k, row)

    def list(self, agent: bytes, *, kind: str | None = None, tags: Sequence[str] | None = None,
             key: str | None = None, origin: str | None = None, from_block: int | None = None,
             to_block: int | None = None, since: float | None = None, until: float | None = None,
             limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        """Items of an agent, newest first, filtered by kind, tags (all must match), key, origin, block range
        (the item's block: its chain block, or the head when written) and time range (seconds since the epoch).

        Raises:
            UnknownAgentError, MemoryRequestError: unknown agent, bad filter (4xx naming the field).
        """
        self.validate(kind, None, key, list(tags) if tags else None, None, None, None)
        if not 1 <= limit <= 1000:
            raise InvalidRequestError("limit", "must be between 1 and 1000")
        if offset < 0:
            raise InvalidRequestError("offset", "must be >= 0")
        self.agents.check(agent)
        k = self.agents.key(agent)
        where, args = filters(k, agent, kind, tags, from_block, to_block, since, until)
        if key is not None:
            where.append("i.key_hash = ?")
            args.append(k.key_hash(key))
        if origin is not None:
            inv = {v: k_ for k_, v in ORIGINS.items()}
            if origin not in inv:
                raise InvalidRequestError("origin", f"must be one of {', '.join(inv)}")
            where.append("i.origin = ?")
            args.append(inv[origin])
        if tags:
            self.indexed()
        else:
            self.settled()
        conn = self.db.reader()
        rows = conn.execute(
            f"SELECT {', '.join('i.' + c.strip() for c in COLUMNS.split(','))} FROM memory_items i "
            f"WHERE {' AND '.join(where)} ORDER BY i.created_at DESC, i.n DESC LIMIT ? OFFSET ?",
            (*args, limit, offset)).fetchall()
        now = time.time()
        return [item_json(conn, k, r) for r in rows if not expired(conn, r, now)]

    def update(self, agent: bytes, item_id: bytes, *, content: bytes | str | None = None, key: str | None = None,
               tags: Sequence[str] | None = None, metadata: dict[str, Any] | None = None,
               ttl_seconds: int | None = None, ttl_blocks: int | None = None) -> dict[str, Any]:
        """Replace fields of an API-written item; its version increases and is anchored at the next block.

        Raises:
            NotFoundError, UnknownAgentError: 404.
            ConflictError: a chain-derived item (409, ``id``): those change only with the chain.
            MemoryRequestError: bad field (4xx naming it).
        """
        raw = None if content is None else (utf8(content, "content") if isinstance(content, str) else bytes(content))
        self.agents.check(agent)
        k = self.agents.key(agent)
        with self.write() as conn:
            self.settle_in(conn)
            row = item_row(conn, agent, item_id)
            if row[4] == 1:
                raise ConflictError("id", "chain-derived memories change only with the chain; use forget to erase")
            if expired(conn, row, time.time()):
                raise NotFoundError("id", f"item {hx(item_id)} has expired")
            kind = KIND_NAMES[row[3]]
            self.validate(kind, raw, key, list(tags) if tags is not None else None, metadata, ttl_seconds,
                          ttl_blocks)
            p = open_item(k, row)
            ctype = p["t"] if content is None else (0 if isinstance(content, str) else 1)
            new_raw = p["c"] if raw is None else raw
            new_key = p["k"] if key is None else key
            new_tags = list(p["g"]) if tags is None else list(tags)
            meta_json = p["m"] if metadata is None else canonical_json(metadata)
            ttl_s = row[10] if ttl_seconds is None else ttl_seconds
            ttl_b = row[11] if ttl_blocks is None else ttl_blocks
            if ttl_seconds is not None:
                ttl_b = 0
            if ttl_blocks is not None:
                ttl_s = 0
            version = row[5] + 1
            com, nonce, ct = seal(k, agent, item_id, version, new_raw, ctype, new_key, new_tags, meta_json,
                                  ttl_s, ttl_b)
            now = time.time()
            expires_at = (now + ttl_s if ttl_seconds is not None else row[12]) if ttl_s else None
            n = row[0]
            conn.execute(
                "INSERT INTO memory_ops (agent, item_id, op, kind, version, commitment, ttl_blocks, expires_at, "
                "written_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (agent, item_id, OP_PUT, row[3], version, com, ttl_b, expires_at, now))
            conn.execute(
                "UPDATE memory_items SET version = ?, key_hash = ?, nonce = ?, ct = ?, commitment = ?, "
                "ttl_seconds = ?, ttl_blocks = ?, expires_at = ?, updated_at = ? WHERE n = ?",
                (version, k.key_hash(new_key) if new_key else None, nonce, ct, com, ttl_s, ttl_b, expires_at, now, n))
            unindex_item(conn, agent, n)
            index_item(conn, k, agent, n, new_raw.decode() if ctype == 0 else None, new_tags)
            out = item_json(conn, k, item_row(conn, agent, item_id))
        self.vectors.stale(agent)
        self.wake()
        return out

    def delete(self, agent: bytes, item_id: bytes) -> dict[str, Any]:
        """Delete an API-written item now; it leaves the agent's root at the next block.

        Raises:
            NotFoundError, UnknownAgentError: 404. ConflictError: chain-derived item (409).
        """
        self.agents.check(agent)
        with self.write() as conn:
            self.settle_in(conn)
            row = item_row(conn, agent, item_id)
            if row[4] == 1:
                raise ConflictError("id", "chain-derived memories change only with the chain; use forget to erase")
            conn.execute(
                "INSERT INTO memory_ops (agent, item_id, op, kind, version, commitment, ttl_blocks, expires_at, "
                "written_at) VALUES (?, ?, ?, ?, ?, NULL, 0, NULL, ?)",
                (agent, item_id, OP_DELETE, row[3], row[5], time.time()))
            unindex_item(conn, agent, row[0])
            conn.execute("DELETE FROM memory_items WHERE n = ?", (row[0],))
        self.vectors.stale(agent)
        return {"id": hx(item_id), "deleted": True}

    def sweep(self) -> int:
        """Delete the rows of expired API-written working memories (their leaves were already closed by the
        chain hook, or will be at the next block); returns how many. Off-chain rows only."""
        now = time.time()
        with self.write() as conn:
            rows = all_rows(conn, "SELECT n, agent FROM memory_items WHERE expires_at IS NOT NULL AND expires_at <= ? "
                                  "AND origin != 1 LIMIT 1000", (now,))
            for n, agent in rows:
                unindex_item(conn, agent, n)
                conn.execute("DELETE FROM memory_items WHERE n = ?", (n,))
        return len(rows)
