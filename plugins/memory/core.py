"""The memory runtime: agents, items, chain-derived episodes, anchoring, roots, proofs, recall and forget.

One :class:`Memory` exists per enabled plugin instance (per database). The chain hooks call
:meth:`Memory.apply_block` / :meth:`Memory.revert_block` with the engine's connection; everything else
(API, CLI, workers) runs outside the engine and writes only off-chain tables (see :mod:`.schema`).

Anchoring: an API write appends an op to ``memory_ops`` and is visible at once through get/list/recall, but it
enters the agent's Merkle root at the next applied block, whose chain hook anchors every pending op (the item's
*anchor* is that block). If that block is reverted, the journal rewinds ``memory_sync`` and the op is anchored
again by the next block of the new chain.
"""

from __future__ import annotations

import base64
import builtins
import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import apsw
import msgpack

from monmouth.engine import read_cursor
from monmouth.journal import redact
from monmouth.limits import check_json_value, check_text

from . import checkpoint, ingest, lattice, merkle
from . import recall as recall_
from .config import MemoryConfig
from .crypto import AgentKey, KeyStore, MissingKeyError, aad
from .errors import ConflictError, MemoryRequestError, NotFoundError, UnknownAgentError
from .merkle import canonical_json, hx
from .schema import (
    END_EXPIRED,
    KIND_NAMES,
    KINDS,
    OP_DELETE,
    OP_PUT,
    ORIGINS,
    all_rows,
    scalar,
)

log = logging.getLogger(__name__)

#: While blocks keep coming (one applied within ``ENGINE_BUSY_S`` seconds), the worker thread runs at most one
#: settle or index transaction every ``WORKER_YIELD_S`` seconds, leaving SQLite's write lock to the engine: a
#: backfill of blocks full of agents is not slowed by their settling (reads catch up by themselves).
ENGINE_BUSY_S = 0.05
WORKER_YIELD_S = 0.2

MAX_TAGS = 32
MAX_TAG_LEN = 64
MAX_KEY_LEN = 256

#: Journaled tables and the column of their agent (for redacting an agent from the undo data on forget).
AGENT_COLUMN = {
    "memory_items": "agent", "memory_tags": "agent", "memory_ops": "agent", "memory_leaves": "agent",
    "memory_marks": "agent",
}


# ---------------------------------------------------------------------------------------------------------------------
# helpers


def parse_address(value: str, field: str = "agent") -> bytes:
    """``0x``-prefixed 20-byte hex address to bytes.

    Raises:
        MemoryRequestError: malformed (400, naming ``field``).
    """
    v = value.strip()
    if v[:2].lower() == "0x":
        v = v[2:]
    if len(v) != 40:
        raise MemoryRequestError(field, f"{value!r} is not a 20-byte hex address")
    try:
        return bytes.fromhex(v)
    except ValueError:
        raise MemoryRequestError(field, f"{value!r} is not a 20-byte hex address") from None


def utf8(value: str, field: str) -> bytes:
    """``value`` in UTF-8.

    Raises:
        MemoryRequestError: 422 naming ``field`` when ``value`` holds a lone surrogate.
    """
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        try:
            check_text(value, "")
        except ValueError as e:
            raise MemoryRequestError(field, str(e), 422) from None
        raise


def parse_id(value: str, field: str = "id") -> bytes:
    """``0x``-prefixed 32-byte hex item id to bytes.

    Raises:
        MemoryRequestError: malformed (400 naming ``field``).
    """
    v = value[2:] if value[:2].lower() == "0x" else value
    try:
        b = bytes.fromhex(v)
    except ValueError:
        b = b""
    if len(b) != 32:
        raise MemoryRequestError(field, f"{value!r} is not a 32-byte hex id")
    return b




# ---------------------------------------------------------------------------------------------------------------------


class Memory:
    """The memory plugin's runtime for one database.

    Args:
        config: the validated ``[plugins.memory]`` section.
        db: the sidecar database (``monmouth.store.Database``).
        host: the plugin host (to find the rag plugin), or ``None``.
        settings: the whole settings (config hash in checkpoint manifests), or ``None``.
    """

    def __init__(self, config: MemoryConfig, db: Any, host: Any = None, settings: Any = None) -> None:
        self.config = config
        self.db = db
        self.host = host
        self.settings = settings
        base = Path(db.path).resolve().parent
        self.key_dir = self._resolve(base, config.key_dir)
        self.checkpoint_dir = self._resolve(base, config.checkpoint_dir)
        self.keys = KeyStore(config.key_source, self.key_dir, config.key_env_prefix)
        self.lattice = lattice.Lattice(str(Path(db.path).resolve()))
        self.lattice.settler = self.ensure_settled
        self.lattice.register()
        self._vec_cache = recall_.VectorCache(64)
        self._query_cache = lattice.LRU(256)
        self.stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._wake = threading.Event()
        self.embedded = 0
        self.key_errors = 0
        self._ckpt_lock = threading.Lock()
        self._last_auto_ckpt: int | None = None
        #: (memory_state.agents_version, registered agents) as the chain hook last loaded them (see .ingest).
        self._registered_agents: tuple[int, frozenset[bytes]] | None = None
        self._last_applied = 0.0  # time.monotonic() of the last chain hook call

    @staticmethod
    def _resolve(base: Path, p: str) -> Path:
        path = Path(p).expanduser()
        return path if path.is_absolute() else base / path

    # ------------------------------------------------------------------------------------------------ lifecycle
    def start(self, workers: bool = True) -> None:
        """Register config agents, re-apply forget tombstones, and start the embedding worker."""
        with self._write() as conn:
            for a in self.config.agents:
                agent = parse_address(a, "plugins.memory.agents")
                row = conn.execute("SELECT forgotten_at FROM memory_agents WHERE address = ?", (agent,)).fetchone()
                if row is None:
                    self.keys.create(agent)
                    conn.execute("INSERT INTO memory_agents (address, label, source, created_at) VALUES (?, ?, ?, ?)",
                                 (agent, None, "config", time.time()))
                elif row[0] is not None:
                    log.warning("agent 0x%s in config.toml was forgotten; not re-registering it", agent.hex())
        for agent in self.tombstones():
            row = self.db.reader().execute(
                "SELECT forgotten_at FROM memory_agents WHERE address = ?", (agent,)).fetchone()
            if row is not None and row[0] is None:
                log.warning("agent 0x%s was forgotten after this database was taken; purging it again", agent.hex())
                self._purge(agent)
        if workers:
            t = threading.Thread(target=self._worker_loop, name="memory-worker", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        """Stop background threads (waits up to 5 s each)."""
        self.stopping.set()
        self._wake.set()
        self.lattice.unregister()
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()

    @property
    def rag(self) -> Any:
        return self.host.get("rag") if self.host is not None else None

    # ------------------------------------------------------------------------------------------------ db helpers
    class _Write:
        def __init__(self, mem: Memory) -> None:
            self.mem = mem

        def __enter__(self) -> apsw.Connection:
            conn = self.mem.db.reader()
            conn.pragma("secure_delete", 1)
            # No WAL auto-checkpoint inside API writes (it made 1 write in 8 wait ~20 ms for an fsync of the
            # database): the engine's commits and this plugin's worker thread checkpoint instead.
            conn.wal_autocheckpoint(0)
            conn.pragma("journal_size_limit", 64 * 1024 * 1024)  # shrink the WAL file when it restarts
            conn.execute("BEGIN IMMEDIATE")
            self.conn = conn
            return conn

        def __exit__(self, et: Any, ev: Any, tb: Any) -> None:
            self.conn.execute("ROLLBACK" if et is not None else "COMMIT")

    def _write(self) -> Memory._Write:
        return Memory._Write(self)

    def _read(self) -> apsw.Connection:
        return self.db.reader()

    def head(self, conn: apsw.Connection | None = None) -> tuple[int | None, bytes | None]:
        """The engine's durable head ``(number, hash)``."""
        head = read_cursor(conn or self._read()).head
        return (head.number, head.hash) if head else (None, None)

    def key(self, agent: bytes) -> AgentKey:
        """The agent's key.

        Raises:
            UnknownAgentError: not registered, forgotten, or its key is missing.
        """
        try:
            return self.keys.get(agent)
        except MissingKeyError as e:
            raise UnknownAgentError("agent", str(e)) from None

    def check_agent(self, agent: bytes, conn: apsw.Connection | None = None) -> None:
        """Raises :class:`UnknownAgentError` (404, field ``agent``) unless ``agent`` is registered and not forgotten."""
        row = (conn or self._read()).execute(
            "SELECT forgotten_at FROM memory_agents WHERE address = ?", (agent,)).fetchone()
        if row is None:
            raise UnknownAgentError("agent", f"0x{agent.hex()} is not a registered agent")
        if row[0] is not None:
            raise UnknownAgentError("agent", f"0x{agent.hex()} was forgotten")

    # ------------------------------------------------------------------------------------------------ agents
    def register(self, agent: bytes, label: str | None = None, source: str = "api") -> dict[str, Any]:
        """Register an agent (idempotent) and create its key. A forgotten agent may be registered again: it gets
        a fresh key and an empty memory.

        Raises:
            MemoryRequestError: ``env`` key source and no key in the environment (field ``agent``).
        """
        try:
            self.keys.create(agent)
        except MissingKeyError as e:
            raise MemoryRequestError("agent", str(e)) from None
        with self._write() as conn:
            conn.execute(
                "INSERT INTO memory_agents (address, label, source, created_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (address) DO UPDATE SET forgotten_at = NULL, label = coalesce(excluded.label, label)",
                (agent, label, source, time.time()))
        if self.config.key_source == "file":
            self._untombstone(agent)
        return self.agent_info(agent)

    def agent_info(self, agent: bytes) -> dict[str, Any]:
        self.ensure_settled()
        conn = self._read()
        row = conn.execute("SELECT label, source, created_at, forgotten_at FROM memory_agents WHERE address = ?",
                           (agent,)).fetchone()
        if row is None:
            raise UnknownAgentError("agent", f"0x{agent.hex()} is not a registered agent")
        items = scalar(conn, "SELECT count(*) FROM memory_items WHERE agent = ?", (agent,))
        m = self.lattice.mark_at(conn, agent, 1 << 62)
        h = (m[1], m[0]) if m is not None else None
        root = self.lattice.root_of_mark(conn, agent, *m) if m is not None else merkle.EMPTY_ROOT
        return {"address": hx(agent), "label": row[0], "source": row[1], "created_at": row[2],
                "forgotten_at": row[3], "items": items,
                "root": hx(root), "visible": h[0] if h else 0, "root_block": h[1] if h else None}

    def agents(self) -> list[dict[str, Any]]:
        rows = all_rows(self._read(),
                        "SELECT address FROM memory_agents WHERE forgotten_at IS NULL ORDER BY created_at, address")
        return [self.agent_info(r[0]) for r in rows]

    # ------------------------------------------------------------------------------------------------ validation
    def _validate(self, kind: str | None, content: bytes | None, key: str | None, tags: Sequence[str] | None,
                  metadata: Any, ttl_seconds: int | None, ttl_blocks: int | None) -> None:
        c = self.config
        if kind is not None and kind not in KINDS:
            raise MemoryRequestError("kind", f"must be one of {', '.join(KINDS)} (got {kind!r})", 422)
        if content is not None and len(content) > c.max_content_bytes:
            raise MemoryRequestError("content", f"{len(content)} bytes exceeds the limit of {c.max_content_bytes}",
                                     413)
        if key is not None and len(key) > MAX_KEY_LEN:
            raise MemoryRequestError("key", f"longer than {MAX_KEY_LEN} characters", 422)
        if tags is not None:
            if not isinstance(tags, list | tuple) or not all(isinstance(t, str) for t in tags):
                raise MemoryRequestError("tags", "must be a list of strings", 422)
            if len(tags) > MAX_TAGS or any(len(t) > MAX_TAG_LEN or not t for t in tags):
                raise MemoryRequestError("tags", f"at most {MAX_TAGS} non-empty tags of up to {MAX_TAG_LEN} characters",
                                         422)
        if metadata is not None and not isinstance(metadata, dict):
            raise MemoryRequestError("metadata", "must be a JSON object", 422)
        try:  # valid Unicode, finite numbers, bounded nesting: what every reader of the item can encode again
            check_json_value({"key": key, "tags": list(tags or ()), "metadata": metadata}, "")
        except ValueError as e:
            field, _, msg = str(e).partition(": ")
            raise MemoryRequestError(field, msg, 422) from None
        if metadata is not None and len(canonical_json(metadata).encode()) > c.max_content_bytes:
            raise MemoryRequestError("metadata", f"larger than {c.max_content_bytes} bytes", 413)
        for name, v, mx in (("ttl_seconds", ttl_seconds, c.max_ttl_seconds), ("ttl_blocks", ttl_blocks,
                                                                              c.max_ttl_blocks)):
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0 or v > mx:
                raise MemoryRequestError(name, f"must be an integer between 1 and {mx} (got {v!r})", 422)
            if kind is not None and kind != "working":
                raise MemoryRequestError(name, "only working memory expires", 422)
        if ttl_seconds and ttl_blocks:
            raise MemoryRequestError("ttl_blocks", "give ttl_seconds or ttl_blocks, not both", 422)

    # ------------------------------------------------------------------------------------------------ items (API)
    def _seal(self, k: AgentKey, agent: bytes, item_id: bytes, version: int, content: bytes, ctype: int, key: str,
              tags: list[str], meta_json: str, ttl_s: int, ttl_b: int,
              nonce: bytes | None = None) -> tuple[bytes, bytes, bytes]:
        """``(commitment, nonce, ciphertext)`` of one item version."""
        com = merkle.commitment(k.salt(item_id, version), ctype, content, key, tags, meta_json, ttl_s, ttl_b)
        payload = msgpack.packb({"c": content, "t": ctype, "k": key, "g": tags, "m": meta_json})
        n, ct = k.encrypt(payload, aad(agent, item_id, version), nonce)
        return com, n, ct

    def _index(self, conn: apsw.Connection, k: AgentKey, agent: bytes, n: int, text: str | None,
               tags: Sequence[str]) -> None:
        for t in dict.fromkeys(tags):
            conn.execute("INSERT OR IGNORE INTO memory_tags (agent, tag, n) VALUES (?, ?, ?)",
                         (agent, k.tag_hash(t), n))
        if text:
            conn.execute("INSERT INTO memory_fts (rowid, tokens) VALUES (?, ?)", (n, k.tokens(text)))
        conn.execute("INSERT OR IGNORE INTO memory_embed_queue (n) VALUES (?)", (n,))

    def _unindex(self, conn: apsw.Connection, agent: bytes, n: int) -> None:
        conn.execute("DELETE FROM memory_tags WHERE n = ? AND agent = ?", (n, agent))
        conn.execute("DELETE FROM memory_fts WHERE rowid = ?", (n,))
        conn.execute("DELETE FROM memory_vectors WHERE n = ?", (n,))
        conn.execute("DELETE FROM memory_embed_queue WHERE n = ?", (n,))

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
        self.check_agent(agent)
        k = self.key(agent)
        prepared = []
        for idx, it in enumerate(items):
            content = it["content"]
            ctype = 0 if isinstance(content, str) else 1
            raw = utf8(content, "content") if isinstance(content, str) else bytes(content)
            tags = list(it.get("tags") or [])
            kind, key = it["kind"], it.get("key")
            ttl_seconds, ttl_blocks = it.get("ttl_seconds"), it.get("ttl_blocks")
            try:
                self._validate(kind, raw, key, tags, it.get("metadata"), ttl_seconds, ttl_blocks)
            except MemoryRequestError as e:
                if len(items) > 1:
                    e.message = f"item {idx}: {e.message}"
                raise
            item_id = it.get("item_id") or os.urandom(32)
            meta_json = canonical_json(it.get("metadata") or {})
            ttl_s, ttl_b = ttl_seconds or 0, ttl_blocks or 0
            com, nonce, ct = self._seal(k, agent, item_id, 1, raw, ctype, key or "", tags, meta_json, ttl_s, ttl_b)
            prepared.append((item_id, KINDS[kind], key, nonce, ct, com, ttl_s, ttl_b,
                             raw.decode() if ctype == 0 else None, tags))
        now = time.time()
        out = []
        with self._write() as conn:
            self.check_agent(agent, conn)
            number, bhash = self.head(conn)
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
                conn.execute(
                    "INSERT INTO memory_items (n, id, agent, kind, origin, version, key_hash, nonce, ct, commitment, "
                    "ttl_seconds, ttl_blocks, expires_at, created_at, updated_at, head_number, head_hash) "
                    "VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (n, item_id, agent, kind_i, origin, k.key_hash(key) if key else None, nonce, ct, com, ttl_s,
                     ttl_b, expires_at, now, now, number, bhash))
                self._index(conn, k, agent, n, text, tags)
                out.append({"id": hx(item_id), "agent": hx(agent), "kind": KIND_NAMES[kind_i], "version": 1,
                            "commitment": hx(com), "written_at_head": {"number": number, "hash": hx(bhash)},
                            "anchor": None})
        self._vec_cache.stale(agent)
        self._wake.set()
        return out

    _COLS = ("n, id, agent, kind, origin, version, key_hash, nonce, ct, commitment, ttl_seconds, ttl_blocks, "
             "expires_at, created_at, updated_at, head_number, head_hash")

    def _row(self, conn: apsw.Connection, agent: bytes, item_id: bytes) -> tuple[Any, ...]:
        row = conn.execute(f"SELECT {self._COLS} FROM memory_items WHERE id = ? AND agent = ?",
                           (item_id, agent)).fetchone()
        if row is None:
            raise NotFoundError("id", f"no item {hx(item_id)} for agent {hx(agent)}")
        return row

    def _open(self, k: AgentKey, row: Sequence[Any]) -> dict[str, Any]:
        payload = msgpack.unpackb(k.decrypt(row[7], row[8], aad(row[2], row[1], row[5])))
        return payload

    def _expired(self, conn: apsw.Connection, row: Sequence[Any], now: float) -> bool:
        if row[12] is not None and row[12] <= now:
            return True
        return bool(row[11]) and self._leaf_expired(conn, row[2], row[1])

    @staticmethod
    def _leaf_expired(conn: apsw.Connection, agent: bytes, item_id: bytes) -> bool:
        """Whether the item's last leaf ended by expiry (``ttl_blocks`` working memory)."""
        leaf = conn.execute("SELECT end_reason FROM memory_leaves WHERE agent = ? AND item_id = ? ORDER BY "
                            "from_block DESC LIMIT 1", (agent, item_id)).fetchone()
        return leaf is not None and leaf[0] == END_EXPIRED

    def _item_json(self, conn: apsw.Connection, k: AgentKey, row: Sequence[Any],
                   payload: dict[str, Any] | None = None) -> dict[str, Any]:
        p = payload or self._open(k, row)
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

    def get(self, agent: bytes, item_id: bytes) -> dict[str, Any]:
        """One item, decrypted.

        Raises:
            UnknownAgentError, NotFoundError: unknown agent or item (404); an expired working item is not found.
        """
        self.check_agent(agent)
        k = self.key(agent)
        self.ensure_settled()
        conn = self._read()
        row = self._row(conn, agent, item_id)
        if self._expired(conn, row, time.time()):
            raise NotFoundError("id", f"item {hx(item_id)} has expired")
        return self._item_json(conn, k, row)

    def list(self, agent: bytes, *, kind: str | None = None, tags: Sequence[str] | None = None,
             key: str | None = None, origin: str | None = None, from_block: int | None = None,
             to_block: int | None = None, since: float | None = None, until: float | None = None,
             limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        """Items of an agent, newest first, filtered by kind, tags (all must match), key, origin, block range
        (the item's block: its chain block, or the head when written) and time range (seconds since the epoch).

        Raises:
            UnknownAgentError, MemoryRequestError: unknown agent, bad filter (4xx naming the field).
        """
        self._validate(kind, None, key, list(tags) if tags else None, None, None, None)
        if not 1 <= limit <= 1000:
            raise MemoryRequestError("limit", "must be between 1 and 1000", 422)
        if offset < 0:
            raise MemoryRequestError("offset", "must be >= 0", 422)
        self.check_agent(agent)
        k = self.key(agent)
        where, args = self._filters(k, agent, kind, tags, from_block, to_block, since, until)
        if key is not None:
            where.append("i.key_hash = ?")
            args.append(k.key_hash(key))
        if origin is not None:
            inv = {v: k_ for k_, v in ORIGINS.items()}
            if origin not in inv:
                raise MemoryRequestError("origin", f"must be one of {', '.join(inv)}", 422)
            where.append("i.origin = ?")
            args.append(inv[origin])
        if tags:
            self.ensure_indexed()
        else:
            self.ensure_settled()
        conn = self._read()
        rows = conn.execute(
            f"SELECT {', '.join('i.' + c.strip() for c in self._COLS.split(','))} FROM memory_items i "
            f"WHERE {' AND '.join(where)} ORDER BY i.created_at DESC, i.n DESC LIMIT ? OFFSET ?",
            (*args, limit, offset)).fetchall()
        now = time.time()
        return [self._item_json(conn, k, r) for r in rows if not self._expired(conn, r, now)]

    def _filters(self, k: AgentKey, agent: bytes, kind: str | None, tags: Sequence[str] | None,
                 from_block: int | None, to_block: int | None, since: float | None,
                 until: float | None) -> tuple[builtins.list[str], builtins.list[Any]]:
        where = ["i.agent = ?"]
        args: list[Any] = [agent]
        if kind is not None:
            if kind not in KINDS:
                raise MemoryRequestError("kind", f"must be one of {', '.join(KINDS)} (got {kind!r})", 422)
            where.append("i.kind = ?")
            args.append(KINDS[kind])
        for t in tags or ():
            where.append("EXISTS (SELECT 1 FROM memory_tags t WHERE t.agent = i.agent AND t.tag = ? AND t.n = i.n)")
            args.append(k.tag_hash(t))
        if from_block is not None:
            where.append("i.head_number >= ?")
            args.append(from_block)
        if to_block is not None:
            where.append("i.head_number <= ?")
            args.append(to_block)
        if since is not None:
            where.append("i.created_at >= ?")
            args.append(since)
        if until is not None:
            where.append("i.created_at <= ?")
            args.append(until)
        return where, args

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
        self.check_agent(agent)
        k = self.key(agent)
        with self._write() as conn:
            self.ensure_settled(conn)
            row = self._row(conn, agent, item_id)
            if row[4] == 1:
                raise ConflictError("id", "chain-derived memories change only with the chain; use forget to erase")
            if self._expired(conn, row, time.time()):
                raise NotFoundError("id", f"item {hx(item_id)} has expired")
            kind = KIND_NAMES[row[3]]
            self._validate(kind, raw, key, list(tags) if tags is not None else None, metadata, ttl_seconds,
                           ttl_blocks)
            p = self._open(k, row)
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
            com, nonce, ct = self._seal(k, agent, item_id, version, new_raw, ctype, new_key, new_tags, meta_json,
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
            self._unindex(conn, agent, n)
            self._index(conn, k, agent, n, new_raw.decode() if ctype == 0 else None, new_tags)
            row2 = self._row(conn, agent, item_id)
            out = self._item_json(conn, k, row2)
        self._vec_cache.stale(agent)
        self._wake.set()
        return out

    def delete(self, agent: bytes, item_id: bytes) -> dict[str, Any]:
        """Delete an API-written item now; it leaves the agent's root at the next block.

        Raises:
            NotFoundError, UnknownAgentError: 404. ConflictError: chain-derived item (409).
        """
        self.check_agent(agent)
        with self._write() as conn:
            self.ensure_settled(conn)
            row = self._row(conn, agent, item_id)
            if row[4] == 1:
                raise ConflictError("id", "chain-derived memories change only with the chain; use forget to erase")
            conn.execute(
                "INSERT INTO memory_ops (agent, item_id, op, kind, version, commitment, ttl_blocks, expires_at, "
                "written_at) VALUES (?, ?, ?, ?, ?, NULL, 0, NULL, ?)",
                (agent, item_id, OP_DELETE, row[3], row[5], time.time()))
            self._unindex(conn, agent, row[0])
            conn.execute("DELETE FROM memory_items WHERE n = ?", (row[0],))
        self._vec_cache.stale(agent)
        return {"id": hx(item_id), "deleted": True}

    # ------------------------------------------------------------------------------------------------ recall
    def embedder(self) -> Any:
        """The rag plugin's embedder when that plugin is enabled (and ``embed`` is on), else ``None``."""
        return recall_.embedder(self)

    def recall(self, agent: bytes, query: str, *, k: int = 10, kind: str | None = None,
               tags: Sequence[str] | None = None, from_block: int | None = None, to_block: int | None = None,
               since: float | None = None, until: float | None = None, recency_weight: float = 0.0,
               half_life_s: float | None = None, mode: str | None = None) -> dict[str, Any]:
        """Recall the ``k`` items most related to ``query``: ``{"mode": "vector" | "fts", "results": [item + score,
        relevance]}``, best first.

        Scoring: relevance is the cosine similarity of the rag embedder's vectors when the rag plugin is enabled
        (``mode="vector"``), else FTS5 BM25 over keyed tokens (``mode="fts"``), scaled to [0, 1] by the best
        candidate. With ``recency_weight`` w in [0, 1] the score is ``(1 - w) * relevance + w * 0.5 ** (age /
        half_life)``, age in seconds since the item was written (chain items: the block time).

        Raises:
            UnknownAgentError, MemoryRequestError: unknown agent, bad parameter (4xx naming the field).
        """
        self.ensure_indexed()
        return recall_.recall(self, agent, query, k=k, kind=kind, tags=tags, from_block=from_block,
                              to_block=to_block, since=since, until=until, recency_weight=recency_weight,
                              half_life_s=half_life_s, mode=mode)

    def ensure_settled(self, conn: apsw.Connection | None = None) -> None:
        """Settle every block applied so far (:func:`.ingest.settle`) before a read of the lattice tables (leaves,
        marks, block rows, chain-derived items). One small read when up to date. Blocks applied meanwhile are left
        to the worker (a reader never chases a running engine). ``conn``: a connection holding SQLite's write
        lock, to settle inside its transaction."""
        top = scalar(conn or self._read(), "SELECT max(block_number) FROM memory_pending")
        while top is not None and ingest.settle(self, conn, until=top):
            pass

    def ensure_indexed(self) -> None:
        """Settle, then index every chain-derived item committed so far (tags, FTS5, embedding queue: see
        :func:`.ingest.index_episodes`) before a read that filters or searches by them. Three small reads when up
        to date."""
        self.ensure_settled()
        while ingest.index_episodes(self):
            pass

    def embed_pending(self, batch: int = 64) -> int:
        """Embed up to ``batch`` queued items with the rag embedder; returns how many were embedded (0 when no
        embedder). Vectors are encrypted like content. Safe against concurrent reverts: each vector is written only
        if its item still has the id and version that were embedded. Chain-derived items are indexed (queued) first."""
        self.ensure_indexed()
        return recall_.embed_pending(self, batch)

    def sweep(self) -> int:
        """Delete the rows of expired API-written working memories (their leaves were already closed by the
        chain hook, or will be at the next block); returns how many. Off-chain rows only."""
        now = time.time()
        with self._write() as conn:
            rows = all_rows(conn, "SELECT n, agent FROM memory_items WHERE expires_at IS NOT NULL AND expires_at <= ? "
                                  "AND origin != 1 LIMIT 1000", (now,))
            for n, agent in rows:
                self._unindex(conn, agent, n)
                conn.execute("DELETE FROM memory_items WHERE n = ?", (n,))
        return len(rows)

    def _worker_loop(self) -> None:
        """Background work: settling and indexing of each block after it commits, embeddings, passive WAL checkpoints
        (API writes do not auto-checkpoint), the global root of the head computed ahead of requests (at most once a
        second), and the sweep of expired working memory. Yields to the engine while blocks keep coming (see
        :data:`ENGINE_BUSY_S`)."""
        last_ckpt = last_sweep = last_warm = 0.0
        while not self.stopping.is_set():
            done = 0
            busy = time.monotonic() - self._last_applied < ENGINE_BUSY_S
            try:
                done = ingest.settle(self)
                if not (busy and done):
                    done += ingest.index_episodes(self)
                if self.config.embed and not (busy and done):
                    done += self.embed_pending()
                now = time.monotonic()
                if now - last_ckpt >= 2.0:
                    last_ckpt = now
                    self.db.checkpoint()
                if now - last_warm >= 1.0:
                    last_warm = now
                    self.warm()
                if now - last_sweep >= 60.0:
                    last_sweep = now
                    self.sweep()
            except Exception as e:
                log.warning("memory worker: %s", e)
                done = 0
            if done and busy:
                self.stopping.wait(WORKER_YIELD_S)
            elif not done:
                self._wake.wait(1.0)
                self._wake.clear()

    def warm(self) -> bytes | None:
        """Compute (and cache) the global root of the latest settled block; returns it (``None``: no block)."""
        conn = self._read()
        head = scalar(conn, "SELECT max(block_number) FROM memory_blocks")
        return None if head is None else self.lattice.global_root(conn, head)

    # ------------------------------------------------------------------------------------------------ chain hooks
    def apply_block(self, conn: apsw.Connection, block: Any) -> None:
        """The ``monmouth_block_applied`` work (see :func:`.ingest.apply_block`). Writes only through ``conn``."""
        self._last_applied = time.monotonic()
        ingest.apply_block(self, conn, block)

    def revert_block(self, conn: apsw.Connection, block: Any) -> None:
        """The ``monmouth_block_reverted`` work (see :func:`.ingest.revert_block`)."""
        ingest.revert_block(self, conn, block)

    # ------------------------------------------------------------------------------------------------ roots, proofs
    def _check_block(self, conn: apsw.Connection, block: int | None) -> tuple[int, bytes]:
        head = self.head(conn)[0]
        self.ensure_settled()  # every block up to the head read just now (the next statements on conn see them)
        return self.lattice.check_block(conn, block, head)

    def global_root(self, block: int | None = None) -> dict[str, Any]:
        """The global root at ``block`` (default: the head): ``{block, hash, root, agents, leaf_encoding}``.

        Raises:
            NotFoundError: not applied or no roots for it (404); GoneError: pruned (410); MemoryRequestError:
            not a block number (422). All name the field ``block``.
        """
        conn = self._read()
        block, bhash = self._check_block(conn, block)
        return self.lattice.global_answer(conn, block, bhash)

    def agent_root(self, agent: bytes, block: int | None = None, with_global_proof: bool = False) -> dict[str, Any]:
        """The agent's root at ``block`` (default: the head), with the global root of that block and, optionally,
        the proof of the agent's global leaf ``(agent, root)`` under it.

        Raises:
            UnknownAgentError, NotFoundError (404), GoneError (410).
        """
        self.check_agent(agent)
        conn = self._read()
        block, bhash = self._check_block(conn, block)
        return self.lattice.agent_answer(conn, agent, block, bhash, with_global_proof)

    @staticmethod
    def leaf_values(agent: bytes, r: Sequence[Any]) -> builtins.list[Any]:
        """JSON values of a per-agent leaf in :data:`merkle.ITEM_LEAF_TYPES` order (as the npm package takes)."""
        return lattice.leaf_values(agent, r)

    def proof(self, agent: bytes, item_id: bytes, block: int | None = None) -> dict[str, Any]:
        """The inclusion proof of an item's leaf under the agent's root at ``block`` (default: the head).

        Raises:
            UnknownAgentError, NotFoundError: unknown agent, or the item was not visible at that block (404);
            GoneError: pruned (410).
        """
        self.check_agent(agent)
        conn = self._read()
        block, bhash = self._check_block(conn, block)
        return self.lattice.proof_answer(conn, agent, item_id, block, bhash)

    def leaves(self, agent: bytes, block: int | None = None) -> dict[str, Any]:
        """Every leaf (values and hash, no content) of the agent's tree at ``block``: a verifier's starting set.

        Raises:
            UnknownAgentError, NotFoundError (404), GoneError (410).
        """
        self.check_agent(agent)
        conn = self._read()
        block, bhash = self._check_block(conn, block)
        return self.lattice.leaves_answer(conn, agent, block, bhash)

    def changes(self, agent: bytes, since_block: int, limit: int = 100) -> dict[str, Any]:
        """The leaf changes of the agent after ``since_block``, block by block, each with the root after it, so a
        remote party holding the leaves at ``since_block`` (see :meth:`leaves`) can check every step.

        Raises:
            UnknownAgentError (404), MemoryRequestError (bad ``since_block``/``limit``), GoneError (410).
        """
        if isinstance(since_block, bool) or not isinstance(since_block, int) or since_block < 0:
            raise MemoryRequestError("since_block", "must be a block number", 422)
        if not 1 <= limit <= 10_000:
            raise MemoryRequestError("limit", "must be between 1 and 10000", 422)
        self.check_agent(agent)
        self.ensure_settled()
        conn = self._read()
        return self.lattice.changes_answer(conn, agent, since_block, limit, self.head(conn)[0])

    # ------------------------------------------------------------------------------------------------ forget
    def tombstones(self) -> builtins.list[bytes]:
        """Agents forgotten on this sidecar (``<key_dir>/forgotten``), re-purged if a restore brings them back."""
        p = self.key_dir / "forgotten"
        if not p.exists():
            return []
        return [bytes.fromhex(line.strip()) for line in p.read_text().splitlines() if line.strip()]

    def _tombstone(self, agent: bytes) -> None:
        self.key_dir.mkdir(parents=True, exist_ok=True)
        if agent not in self.tombstones():
            with open(self.key_dir / "forgotten", "a") as f:
                f.write(agent.hex() + "\n")
                f.flush()
                os.fsync(f.fileno())

    def _untombstone(self, agent: bytes) -> None:
        ts = self.tombstones()
        if agent in ts:
            (self.key_dir / "forgotten").write_text("".join(a.hex() + "\n" for a in ts if a != agent))

    def forget(self, agent: bytes) -> dict[str, Any]:
        """Forget an agent for good: destroy its key, delete its items, tags, FTS entries, vectors, op log, leaves
        and roots, and drop its changes from the engine's undo changesets; with ``secure_delete`` on, and the WAL
        checkpointed and truncated afterwards; then erase its label from every checkpoint taken before
        (:func:`.checkpoint.scrub_agent`).

        Raises:
            UnknownAgentError: never registered (404).

        A checkpoint that cannot be scrubbed does not fail the forget: the result's ``checkpoint_error`` names it.
        """
        row = self._read().execute("SELECT 1 FROM memory_agents WHERE address = ?", (agent,)).fetchone()
        if row is None:
            raise UnknownAgentError("agent", f"0x{agent.hex()} is not a registered agent")
        # The key goes first: from this moment no copy of the data (checkpoints included) can be read.
        self._tombstone(agent)
        destroyed = self.keys.destroy(agent)
        with self._ckpt_lock:  # no automatic checkpoint between the purge and the scrub of the older ones
            stats = self._purge(agent)
            try:
                stats["checkpoints_scrubbed"] = len(checkpoint.scrub_agent(self.checkpoint_dir, agent))
            except checkpoint.CheckpointError as e:  # the forget itself is done: say what is left, do not fail it
                log.error("forget 0x%s: %s", agent.hex(), e)
                stats["checkpoint_error"] = f"{e}; delete that checkpoint or run the forget again"
        stats.update({"agent": hx(agent), "forgotten": True, "key_destroyed": destroyed})
        if not destroyed:
            stats["warning"] = (f"the key comes from the environment: unset {self.keys.env_name(agent)} "
                                "so old checkpoints cannot be read")
        return stats

    def _purge(self, agent: bytes) -> dict[str, Any]:
        stats: dict[str, Any] = {}
        with self._write() as conn:
            self.ensure_settled(conn)  # no pending block may still name the agent or need its key
            ns = [r[0] for r in conn.execute("SELECT n FROM memory_items WHERE agent = ?", (agent,))]
            for i in range(0, len(ns), 500):
                chunk = ns[i:i + 500]
                ph = ",".join("?" * len(chunk))
                conn.execute(f"DELETE FROM memory_fts WHERE rowid IN ({ph})", chunk)
                conn.execute(f"DELETE FROM memory_embed_queue WHERE n IN ({ph})", chunk)
            stats["items"] = len(ns)
            conn.execute("DELETE FROM memory_vectors WHERE agent = ?", (agent,))
            stats["roots_kept"] = self.lattice.preserve_forgotten(conn, agent)
            for table in ("memory_items", "memory_tags", "memory_ops", "memory_leaves", "memory_marks",
                          "memory_root_cache"):
                conn.execute(f"DELETE FROM {table} WHERE agent = ?", (agent,))
            stats["undo_records"] = self._scrub_changesets(conn, agent)
            conn.execute("UPDATE memory_agents SET forgotten_at = ?, label = NULL WHERE address = ?",
                         (time.time(), agent))
            conn.execute("UPDATE memory_state SET forgot_stamp = stamp WHERE id = 1")
        conn = self._read()
        conn.execute("INSERT INTO memory_fts (memory_fts) VALUES ('optimize')")
        conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
        self._vec_cache.drop(agent)
        self.lattice.invalidate()
        return stats

    @staticmethod
    def _scrub_changesets(conn: apsw.Connection, agent: bytes) -> int:
        """Drop the changes to ``agent``'s rows from the engine's undo data (:func:`monmouth.journal.redact`); returns
        how many were dropped. Keeps later reverts conflict-free after the rows were deleted."""
        return redact(conn, AGENT_COLUMN, agent)

    # ------------------------------------------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        conn = self._read()
        unsettled = scalar(conn, "SELECT count(*) FROM memory_pending")
        agents = scalar(conn, "SELECT count(*) FROM memory_agents WHERE forgotten_at IS NULL")
        items = scalar(conn, "SELECT count(*) FROM memory_items")
        queue = scalar(conn, "SELECT count(*) FROM memory_embed_queue")
        seq = scalar(conn, "SELECT ops_seq FROM memory_sync")
        pending = scalar(conn, "SELECT count(*) FROM memory_ops WHERE seq > ?", (seq,))
        g = scalar(conn, "SELECT max(block_number) FROM memory_blocks")
        mark = scalar(conn, "SELECT indexed_n FROM memory_state WHERE id = 1")
        unindexed = scalar(conn, "SELECT count(*) FROM memory_items WHERE n > ?", (mark,))
        return {"agents": agents, "items": items, "pending_ops": pending, "settle_backlog": unsettled,
                "index_backlog": unindexed,
                "embed_backlog": queue,
                "embedded": self.embedded, "key_errors": self.key_errors,
                "global_root": {"block": g, "root": hx(self.lattice.global_root(conn, g))} if g is not None else None}

