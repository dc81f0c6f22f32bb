"""The memory lattice hash: per-agent and global roots, computed lazily from leaf validity ranges.

Ingest (:mod:`.ingest`) hashes nothing but the new leaves. Per applied block it records, in journaled tables,
each leaf's validity range (``memory_leaves.from_block`` / ``to_block``), one *mark* per agent whose visible set
changed (``memory_marks``: block, count after, the block's *stamp*) and one row per block (``memory_blocks``).
Roots are computed here when something asks for them (API, proofs, changes, export, checkpoints, the
``memory_global_roots`` view) and cached:

* in memory: per-agent roots keyed by ``(agent, mark block, stamp)``, per-agent trees (for proofs), global roots
  and trees keyed by ``(block, stamp)``, and the global leaf set of the last block asked for, advanced
  incrementally (only agents with a mark since then are looked up again);
* in the database: ``memory_root_cache`` and ``memory_global_cache`` (declared trimmed, so a revert of block
  ``b`` deletes their rows ``>= b``), written by the engine's connection at the next applied block after
  checking each row's stamp against the journaled mark (so a root computed from a reverted block is dropped).

A *stamp* is a per-database counter (``memory_state``, not journaled) incremented for every applied block, so a
block applied again after a revert never has the stamp of the reverted one. Results computed on a connection
inside a transaction (the engine's, while a block is applied) are not cached: that transaction may roll back.

Forgetting an agent keeps its contribution to the global roots of the blocks applied before the forget:
``memory_forgotten`` holds its global leaves (hashes of ``(agent, root)``, under a random id, with no address)
in force from each of its marks, applying to blocks whose stamp is at most the stamp current at the forget.

``memory_global_roots`` is a view: ``root`` calls the SQL function ``memory_global_root(block_number)``,
registered on every apsw connection created after this module is imported (``apsw.connection_hooks``), so that
other plugins reading the table with SQL get the same roots.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import apsw

from monmouth.chain import hx

from . import dialect, merkle
from .errors import GoneError, InvalidRequestError, NotFoundError
from .schema import END_NAMES, all_rows, scalar

#: Each agent's last mark in a block range (``{since}``: an optional lower bound) with its persisted root, if any.
#: A join on the grouped maximum rather than SQLite's bare columns beside ``max()``, which PostgreSQL refuses.
_LAST_MARKS = (
    "SELECT m.agent, m.block_number, m.count, m.stamp, c.root FROM memory_marks m JOIN (SELECT agent, "
    "max(block_number) AS b FROM memory_marks WHERE {since}block_number <= ? GROUP BY agent) x ON x.agent = m.agent "
    "AND x.b = m.block_number LEFT JOIN memory_root_cache c ON c.agent = m.agent AND "
    "c.block_number = m.block_number AND c.stamp = m.stamp")
#: Most cache rows persisted per applied block (the rest wait for the next blocks).
FLUSH_PER_BLOCK = 128
#: Most cache rows waiting to be persisted (more are only cached in memory).
MAX_PENDING = 100_000


class LRU(OrderedDict[Any, Any]):
    """A small thread-safe LRU mapping (``get_`` / ``put``)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.lock = threading.Lock()

    def get_(self, key: Any) -> Any:
        with self.lock:
            v = self.get(key)
            if v is not None:
                self.move_to_end(key)
            return v

    def put(self, key: Any, value: Any) -> None:
        with self.lock:
            self[key] = value
            self.move_to_end(key)
            while len(self) > self.size:
                self.popitem(last=False)


def leaf_values(agent: bytes, r: Sequence[Any]) -> list[Any]:
    """JSON values of a per-agent leaf in :data:`merkle.ITEM_LEAF_TYPES` order (as the npm package takes them),
    from a row ``(item_id, kind, version, from_block, commitment, ...)``."""
    return [hx(r[0]), hx(agent), r[1], r[2], r[3], hx(r[4])]


def leaves_at(conn: apsw.Connection, agent: bytes, block: int) -> list[tuple[Any, ...]]:
    """Rows ``(item_id, kind, version, from_block, commitment, leaf)`` of the item versions visible to ``agent``
    at ``block``."""
    return conn.execute(
        "SELECT item_id, kind, version, from_block, commitment, leaf FROM memory_leaves WHERE agent = ? AND "
        "from_block <= ? AND (to_block IS NULL OR to_block > ?) ORDER BY item_id, from_block",
        (agent, block, block)).fetchall()


#: Agents whose leaves :func:`leaves_at_many` reads per statement (two parameters each).
LEAVES_CHUNK = 400
#: The statement of :func:`leaves_at_many`; ``{values}``: one ``(?, ?)`` (agent, block) per agent.
LEAVES_OF = ("WITH w (agent, b) AS (VALUES {values}) SELECT l.agent, l.item_id, l.kind, l.version, l.from_block, "
             "l.commitment, l.leaf FROM w CROSS JOIN memory_leaves l WHERE l.agent = w.agent AND l.from_block <= w.b "
             "AND (l.to_block IS NULL OR l.to_block > w.b)")


def leaves_at_many(conn: apsw.Connection, wanted: Sequence[tuple[bytes, int]]) -> dict[bytes, list[tuple[Any, ...]]]:
    """:func:`leaves_at` of many ``(agent, block)`` pairs (distinct agents), one statement per
    :data:`LEAVES_CHUNK` agents: ``{agent: rows}`` in the same order (agents without a visible leaf are absent).

    The statement seeks each agent's leaves by the primary key (``CROSS JOIN``: SQLite keeps the ``VALUES`` list as
    the outer loop). Joined with a plain ``JOIN``, its planner scanned the whole table through a Bloom filter of
    the agents instead: 9-12 ms for 200 agents' 6,000 leaves among 30,000, against 3.8 ms, and growing with the
    table rather than with the leaves asked for. The rows of each agent are sorted here, not by an ``ORDER BY``
    (which sorted all of them in a temporary B-tree)."""
    out: dict[bytes, list[tuple[Any, ...]]] = {}
    for i in range(0, len(wanted), LEAVES_CHUNK):
        chunk = wanted[i:i + LEAVES_CHUNK]
        rows: list[tuple[Any, ...]] = conn.execute(LEAVES_OF.format(values=",".join(["(?, ?)"] * len(chunk))),
                                                   [x for pair in chunk for x in pair]).fetchall()
        for r in rows:
            got = out.get(r[0])
            if got is None:
                out[r[0]] = got = []
            got.append(r[1:])
    for got in out.values():
        got.sort(key=_item_then_block)
    return out


def _item_then_block(row: tuple[Any, ...]) -> tuple[bytes, int]:
    return row[0], row[3]


class Lattice:
    """Lazily computed roots and proofs of one database (thread-safe).

    Args:
        path: the database's key (:func:`.dialect.Sqlite.key`: the file's real path; on PostgreSQL the server and
            database), used to find this instance from a connection (the SQL functions, tests).
    """

    _registry: dict[str, Lattice] = {}
    _registry_lock = threading.Lock()

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self.lock = threading.RLock()
        self.roots = LRU(200_000)      # (agent, mark, stamp) -> root
        self.trees = LRU(512)          # (agent, mark, stamp) -> (Tree | None, rows)
        self.globals = LRU(4096)       # (block, stamp) -> root
        self.gtrees = LRU(8)           # (block, stamp) -> Tree | None
        self._gstate: tuple[int, int, dict[bytes, bytes]] | None = None  # (block, stamp, agent -> global leaf)
        self._pending_roots: list[tuple[bytes, int, int, bytes]] = []
        self._pending_globals: list[tuple[int, int, bytes]] = []
        #: Settles every recorded block, inside the transaction of the connection given, if any (set by the memory
        #: plugin's runtime: ``Memory.ensure_settled``; called by the SQL function ``memory_settle()``).
        self.settler: Callable[[apsw.Connection | None], None] | None = None

    # ------------------------------------------------------------------------------------------------ registry
    def register(self) -> None:
        """Make this instance the one the SQL function uses for connections on :attr:`path`."""
        if self.path is not None:
            with Lattice._registry_lock:
                Lattice._registry[self.path] = self

    def unregister(self) -> None:
        if self.path is not None:
            with Lattice._registry_lock:
                if Lattice._registry.get(self.path) is self:
                    del Lattice._registry[self.path]

    @classmethod
    def for_connection(cls, conn: apsw.Connection) -> Lattice:
        """The registered instance for ``conn``'s database (:meth:`.dialect.Sqlite.key`), else a throwaway one (no
        shared cache)."""
        return cls._registry.get(dialect.of(conn).key(conn)) or cls(None)

    def invalidate(self) -> None:
        """Drop every in-memory cache (after a forget changed which leaves count)."""
        with self.lock:
            for c in (self.roots, self.trees, self.globals, self.gtrees):
                with c.lock:
                    c.clear()
            self._gstate = None

    # ------------------------------------------------------------------------------------------------ per agent
    @staticmethod
    def mark_at(conn: apsw.Connection, agent: bytes, block: int) -> tuple[int, int, int] | None:
        """``(mark block, count, stamp)`` of the agent's last change at or before ``block``, or ``None``."""
        row = conn.execute("SELECT block_number, count, stamp FROM memory_marks WHERE agent = ? AND "
                           "block_number <= ? ORDER BY block_number DESC LIMIT 1", (agent, block)).fetchone()
        return (row[0], row[1], row[2]) if row else None

    def root_of_mark(self, conn: apsw.Connection, agent: bytes, mark: int, count: int, stamp: int,
                     persisted: bytes | None = None) -> bytes:
        """The agent's root as changed at block ``mark`` (``count`` visible items, the block's ``stamp``);
        ``persisted``: its ``memory_root_cache`` row when already looked up (looked up here otherwise)."""
        if count and persisted is None and self.roots.get_((agent, mark, stamp)) is None:
            row = conn.execute("SELECT root FROM memory_root_cache WHERE agent = ? AND block_number = ? AND stamp = ?",
                               (agent, mark, stamp)).fetchone()
            persisted = row[0] if row else None
        return self.roots_of_marks(conn, [(agent, mark, count, stamp, persisted)])[agent]

    def roots_of_marks(self, conn: apsw.Connection,
                       marks: Sequence[tuple[bytes, int, int, int, bytes | None]]) -> dict[bytes, bytes]:
        """The roots of many agents' marks ``(agent, mark, count, stamp, persisted root or None)`` (distinct agents;
        ``persisted``: the ``memory_root_cache`` row already looked up, ``None`` when there is none): from the root
        cache, the persisted row or a cached tree, else built from the leaves, read in one statement per
        :data:`LEAVES_CHUNK` agents for all the roots to build (:func:`leaves_at_many`). Roots not persisted yet are
        queued for ``memory_root_cache``. Returns ``{agent: root}``."""
        out: dict[bytes, bytes] = {}
        fresh: list[tuple[bytes, int, int, bytes]] = []  # roots not persisted yet
        todo: list[tuple[bytes, int, int]] = []
        cacheable = not conn.in_transaction
        for agent, mark, count, stamp, persisted in marks:
            if count == 0:
                out[agent] = merkle.EMPTY_ROOT
                continue
            key = (agent, mark, stamp)
            root = self.roots.get_(key) or persisted
            if root is None:
                hit = self.trees.get_(key)
                if hit is None:
                    todo.append(key)
                    continue
                root = hit[0].root
                fresh.append((*key, root))
            out[agent] = root
            if cacheable:
                self.roots.put(key, root)
        if todo:
            rows_of = leaves_at_many(conn, [(agent, mark) for agent, mark, _ in todo])
            for key in todo:
                tree, _rows = self._tree_of(*key, rows_of.get(key[0], []), cacheable)
                out[key[0]] = root = tree.root  # type: ignore[union-attr]  # _tree_of put it in the root cache
                fresh.append((*key, root))
        if cacheable and fresh:
            with self.lock:
                self._pending_roots.extend(fresh[:max(0, MAX_PENDING - len(self._pending_roots))])
        return out

    def _build(self, conn: apsw.Connection, agent: bytes, mark: int, stamp: int,
               cacheable: bool) -> tuple[merkle.Tree | None, list[tuple[Any, ...]]]:
        hit = self.trees.get_((agent, mark, stamp))
        if hit is not None:
            return hit  # type: ignore[no-any-return]
        return self._tree_of(agent, mark, stamp, leaves_at(conn, agent, mark), cacheable)

    def _tree_of(self, agent: bytes, mark: int, stamp: int, rows: list[tuple[Any, ...]],
                 cacheable: bool) -> tuple[merkle.Tree | None, list[tuple[Any, ...]]]:
        key = (agent, mark, stamp)
        tree = merkle.Tree.of([r[5] for r in rows]) if rows else None
        if cacheable:
            self.trees.put(key, (tree, rows))
            if tree is not None:
                self.roots.put(key, tree.root)
        return tree, rows

    def agent_root_at(self, conn: apsw.Connection, agent: bytes, block: int) -> tuple[bytes, int, int | None]:
        """``(root, count, since)``: the agent's root at ``block``, its number of visible items, and the block of
        its last change (``None``: never held an item)."""
        m = self.mark_at(conn, agent, block)
        if m is None:
            return merkle.EMPTY_ROOT, 0, None
        return self.root_of_mark(conn, agent, *m), m[1], m[0]

    def tree_at(self, conn: apsw.Connection, agent: bytes,
                block: int) -> tuple[merkle.Tree | None, list[tuple[Any, ...]]]:
        """The agent's tree at ``block`` (``None`` when empty) and its leaf rows (see :func:`leaves_at`)."""
        m = self.mark_at(conn, agent, block)
        if m is None or m[1] == 0:
            return None, []
        return self._build(conn, agent, m[0], m[2], not conn.in_transaction)

    # ------------------------------------------------------------------------------------------------ global
    @staticmethod
    def block_row(conn: apsw.Connection, block: int) -> tuple[bytes, int, int] | None:
        """``(block hash, agents, stamp)`` of an applied, retained block, or ``None``."""
        row = conn.execute("SELECT block_hash, agents, stamp FROM memory_blocks WHERE block_number = ?",
                           (block,)).fetchone()
        return (row[0], row[1], row[2]) if row else None

    def global_root(self, conn: apsw.Connection, block: int) -> bytes | None:
        """The global root at ``block`` (``None`` when the block has no memory row)."""
        row = self.block_row(conn, block)
        if row is None:
            return None
        stamp = row[2]
        root = self.globals.get_((block, stamp))
        if root is not None:
            return root
        got = conn.execute("SELECT root FROM memory_global_cache WHERE block_number = ? AND stamp = ?",
                           (block, stamp)).fetchone()
        if got is not None:
            root = got[0]
        else:
            leaves = self.global_leaves(conn, block, stamp)
            tree = merkle.Tree.of(leaves) if leaves else None
            root = tree.root if tree is not None else merkle.EMPTY_ROOT
            if not conn.in_transaction:
                self.gtrees.put((block, stamp), tree)
                with self.lock:
                    if len(self._pending_globals) < MAX_PENDING:
                        self._pending_globals.append((block, stamp, root))
        if not conn.in_transaction:
            self.globals.put((block, stamp), root)
        return root  # type: ignore[no-any-return]

    def global_tree(self, conn: apsw.Connection, block: int) -> merkle.Tree | None:
        """The global tree at ``block`` (``None`` when no agent holds an item or the block is unknown)."""
        row = self.block_row(conn, block)
        if row is None:
            return None
        hit = self.gtrees.get_((block, row[2]))
        if hit is not None:
            return hit  # type: ignore[no-any-return]
        leaves = self.global_leaves(conn, block, row[2])
        tree = merkle.Tree.of(leaves) if leaves else None
        if not conn.in_transaction and tree is not None:
            self.gtrees.put((block, row[2]), tree)
        return tree

    def global_leaves(self, conn: apsw.Connection, block: int, stamp: int) -> list[bytes]:
        """Every global leaf at ``block``: ``(agent, root)`` of each agent holding items, plus the leaves that
        forgotten agents held at blocks applied before they were forgotten."""
        with self.lock:
            state = self._advance(conn, block, stamp)
        out = list(state.values())
        for _fid, _b, leaf, max_stamp in conn.execute(
                "SELECT f.fid, f.block_number, f.leaf, f.max_stamp FROM memory_forgotten f JOIN (SELECT fid, "
                "max(block_number) AS b FROM memory_forgotten WHERE block_number <= ? GROUP BY fid) x "
                "ON x.fid = f.fid AND x.b = f.block_number", (block,)):
            if leaf is not None and stamp <= max_stamp:
                out.append(leaf)
        return out

    def _advance(self, conn: apsw.Connection, block: int, stamp: int) -> dict[bytes, bytes]:
        """The live agents' global leaves at ``block``: the cached set of an earlier block advanced by the marks
        since, or built from every agent's last mark."""
        st = self._gstate
        if st is not None and st[0] <= block:
            row = self.block_row(conn, st[0])
            if row is None or row[2] != st[1]:
                st = None
        else:
            st = None
        if st is not None:
            if st[0] == block:
                return st[2]
            leaves = dict(st[2])
            rows = all_rows(conn, _LAST_MARKS.format(since="block_number > ? AND "), (st[0], block))
        else:
            leaves = {}
            rows = all_rows(conn, _LAST_MARKS.format(since=""), (block,))
        roots = self.roots_of_marks(conn, rows)
        for agent, _mark, count, _mstamp, _persisted in rows:
            if count == 0:
                leaves.pop(agent, None)
            else:
                leaves[agent] = merkle.agent_leaf(agent, roots[agent])
        if not conn.in_transaction and (self._gstate is None or self._gstate[0] <= block):
            self._gstate = (block, stamp, leaves)
        return leaves

    # ------------------------------------------------------------------------------------------------ persistence
    def flush(self, conn: apsw.Connection) -> int:
        """Persist cached roots computed since the last call (at most :data:`FLUSH_PER_BLOCK`), each only if its
        stamp is still the journaled one. Called by the chain hook on the engine's connection; returns how many
        rows were offered."""
        with self.lock:
            roots = self._pending_roots[:FLUSH_PER_BLOCK]
            del self._pending_roots[:FLUSH_PER_BLOCK]
            globs = self._pending_globals[:FLUSH_PER_BLOCK]
            del self._pending_globals[:FLUSH_PER_BLOCK]
        for agent, mark, stamp, root in roots:
            conn.execute(
                "INSERT INTO memory_root_cache (agent, block_number, stamp, root) SELECT ?, ?, ?, ? "
                "WHERE EXISTS (SELECT 1 FROM memory_marks WHERE agent = ? AND block_number = ? AND stamp = ?) "
                "ON CONFLICT (agent, block_number) DO UPDATE SET stamp = excluded.stamp, root = excluded.root",
                (agent, mark, stamp, root, agent, mark, stamp))
        for block, stamp, root in globs:
            conn.execute(
                "INSERT INTO memory_global_cache (block_number, stamp, root) SELECT ?, ?, ? "
                "WHERE EXISTS (SELECT 1 FROM memory_blocks WHERE block_number = ? AND stamp = ?) "
                "ON CONFLICT (block_number) DO UPDATE SET stamp = excluded.stamp, root = excluded.root",
                (block, stamp, root, block, stamp))
        return len(roots) + len(globs)

    # ------------------------------------------------------------------------------------------------ API answers
    def horizon(self, conn: apsw.Connection) -> int | None:
        """The oldest block whose roots are retained."""
        return scalar(conn, "SELECT min(block_number) FROM memory_blocks")  # type: ignore[no-any-return]

    def check_block(self, conn: apsw.Connection, block: int | None, head: int | None) -> tuple[int, bytes]:
        """``(block, hash)`` for a request naming ``block`` (default: ``head``).

        Raises:
            MemoryRequestError: not a block number (422); NotFoundError: not applied, or no memory row (404);
            GoneError: older than the retained roots (410). All name the field ``block``.
        """
        if block is None:
            if head is None:
                raise NotFoundError("block", "no block has been applied yet")
            block = head
        if isinstance(block, bool) or not isinstance(block, int) or block < 0:
            raise InvalidRequestError("block", f"must be a block number (got {block!r})")
        row = self.block_row(conn, block)
        if row is None:
            if head is None or block > head:
                raise NotFoundError("block", f"block {block} has not been applied (head is {head})")
            low = self.horizon(conn)
            if low is not None and block < low:
                raise GoneError("block", f"block {block} is older than the retained roots (from block {low})")
            raise NotFoundError("block", f"no memory roots for block {block} (the plugin was not enabled then)")
        return block, row[0]

    def global_answer(self, conn: apsw.Connection, block: int, bhash: bytes) -> dict[str, Any]:
        """The ``GET /memory/root`` answer for a checked block."""
        row = self.block_row(conn, block)
        assert row is not None
        return {"block": block, "hash": hx(bhash), "root": hx(self.global_root(conn, block)), "agents": row[1],
                "leaf_encoding": list(merkle.AGENT_LEAF_TYPES)}

    def agent_answer(self, conn: apsw.Connection, agent: bytes, block: int, bhash: bytes,
                     with_global_proof: bool) -> dict[str, Any]:
        """The ``GET /memory/agents/{a}/root`` answer for a checked block."""
        root, count, since = self.agent_root_at(conn, agent, block)
        groot = self.global_root(conn, block)
        out: dict[str, Any] = {"agent": hx(agent), "block": block, "hash": hx(bhash), "root": hx(root),
                               "count": count, "since_block": since, "global_root": hx(groot),
                               "leaf_encoding": list(merkle.ITEM_LEAF_TYPES)}
        if with_global_proof and count:
            tree = self.global_tree(conn, block)
            leaf = merkle.agent_leaf(agent, root)
            if tree is not None and tree.root == groot:
                out["global_leaf"] = hx(leaf)
                out["global_proof"] = [hx(p) for p in tree.proof(leaf)]
            else:  # pragma: no cover - only if the tables were edited by hand
                out["global_proof"] = None
                out["global_proof_error"] = "the agent roots of that block do not give its global root"
        return out

    def proof_answer(self, conn: apsw.Connection, agent: bytes, item_id: bytes, block: int,
                     bhash: bytes) -> dict[str, Any]:
        """The inclusion proof answer for a checked block.

        Raises:
            NotFoundError: the item was not visible at that block (404, ``id``).
        """
        tree, rows = self.tree_at(conn, agent, block)
        row = next((r for r in rows if r[0] == item_id), None)
        if row is None or tree is None:
            pending = conn.execute("SELECT 1 FROM memory_items WHERE id = ? AND agent = ?", (item_id, agent)).fetchone()
            why = "is not anchored yet (it enters the root at the next block)" if pending else "was not visible"
            raise NotFoundError("id", f"item {hx(item_id)} {why} at block {block}")
        return {"agent": hx(agent), "id": hx(item_id), "block": block, "hash": hx(bhash), "root": hx(tree.root),
                "leaf": hx(row[5]), "leaf_encoding": list(merkle.ITEM_LEAF_TYPES),
                "values": leaf_values(agent, row), "proof": [hx(p) for p in tree.proof(row[5])]}

    def leaves_answer(self, conn: apsw.Connection, agent: bytes, block: int, bhash: bytes) -> dict[str, Any]:
        """Every leaf of the agent's tree at a checked block."""
        tree, rows = self.tree_at(conn, agent, block)
        return {"agent": hx(agent), "block": block, "hash": hx(bhash),
                "root": hx(tree.root if tree is not None else merkle.EMPTY_ROOT),
                "leaf_encoding": list(merkle.ITEM_LEAF_TYPES),
                "leaves": [{"values": leaf_values(agent, r), "leaf": hx(r[5])} for r in rows]}

    def changes_answer(self, conn: apsw.Connection, agent: bytes, since_block: int, limit: int,
                       head: int | None) -> dict[str, Any]:
        """The agent's leaf changes after ``since_block``, block by block, each with the root after it.

        Raises:
            GoneError: ``since_block`` is older than the retained history (410).
        """
        low = self.horizon(conn)
        if low is not None and since_block < low - 1:
            raise GoneError("since_block", f"changes are retained only from block {low}")
        base_root, base_count, _ = self.agent_root_at(conn, agent, since_block)
        steps = []
        for b, count, stamp in all_rows(
                conn,
                "SELECT block_number, count, stamp FROM memory_marks WHERE agent = ? AND block_number > ? "
                "ORDER BY block_number LIMIT ?", (agent, since_block, limit)):
            row = self.block_row(conn, b)
            ops = []
            for r in conn.execute(
                    "SELECT item_id, kind, version, from_block, commitment, leaf, end_reason FROM memory_leaves "
                    "WHERE agent = ? AND to_block = ? ORDER BY item_id, from_block", (agent, b)):
                ops.append({"op": "remove", "reason": END_NAMES.get(r[6], "?"), "id": hx(r[0]), "leaf": hx(r[5]),
                            "values": leaf_values(agent, r)})
            for r in conn.execute(
                    "SELECT item_id, kind, version, from_block, commitment, leaf FROM memory_leaves WHERE agent = ? "
                    "AND from_block = ? ORDER BY item_id", (agent, b)):
                ops.append({"op": "add", "id": hx(r[0]), "leaf": hx(r[5]), "values": leaf_values(agent, r)})
            steps.append({"block": b, "hash": hx(row[0]) if row else None,
                          "root": hx(self.root_of_mark(conn, agent, b, count, stamp)), "count": count, "ops": ops})
        return {"agent": hx(agent), "since_block": since_block, "root_at_since": hx(base_root),
                "count_at_since": base_count, "head": head, "changes": steps, "complete": len(steps) < limit}

    # ------------------------------------------------------------------------------------------------ forget
    def preserve_forgotten(self, conn: apsw.Connection, agent: bytes) -> int:
        """Before ``agent``'s rows are deleted (inside the forget's write transaction): record its global leaf
        in force from each of its retained marks, for the blocks applied so far. Returns how many."""
        max_stamp = scalar(conn, "SELECT stamp FROM memory_state WHERE id = 1")
        fid = os.urandom(16)
        marks = all_rows(conn, "SELECT block_number, count, stamp FROM memory_marks WHERE agent = ? "
                               "ORDER BY block_number", (agent,))
        for mark, count, stamp in marks:
            leaf = merkle.agent_leaf(agent, self.root_of_mark(conn, agent, mark, count, stamp)) if count else None
            conn.execute("INSERT INTO memory_forgotten (fid, block_number, leaf, max_stamp) VALUES (?, ?, ?, ?)",
                         (fid, mark, leaf, max_stamp))
        return len(marks)


def _sql_global_root(conn: apsw.Connection) -> Any:
    def fn(block: Any) -> bytes | None:
        if not isinstance(block, int):
            return None
        return Lattice.for_connection(conn).global_root(conn, block)

    return fn


def _sql_settle(conn: apsw.Connection) -> Any:
    def fn() -> int:
        lat = Lattice.for_connection(conn)
        state = conn.txn_state("main")
        if lat.settler is None or state == apsw.SQLITE_TXN_READ:
            return 0  # no running plugin; or a read snapshot, which would not see what a settle writes
        lat.settler(conn if state == apsw.SQLITE_TXN_WRITE else None)
        return 1

    return fn


def _connection_hook(conn: apsw.Connection) -> None:
    conn.create_scalar_function("memory_global_root", _sql_global_root(conn), 1)
    # memory_settle(): settle every recorded block, so that the statements that follow on this connection see
    # every applied block in memory_global_roots: inside this connection's transaction when it holds the write lock
    # (a chain hook of another plugin: settling writes only tables the journal does not record), else through the
    # plugin's own write transaction (autocommit: the next statement is a new snapshot). 1 when a running memory
    # plugin settled, 0 otherwise (none runs, or this connection is inside a read transaction).
    conn.create_scalar_function("memory_settle", _sql_settle(conn), 0)


if _connection_hook not in apsw.connection_hooks:
    apsw.connection_hooks.append(_connection_hook)


def install(conn: apsw.Connection) -> None:
    """Register ``memory_global_root`` on a connection opened before this module was imported."""
    _connection_hook(conn)
