"""The memory plugin's chain work: recording each block's memory input, then settling it into the lattice.

Two steps, so that applying a block costs the engine a few appended rows whatever the number of agents it touches:

* :func:`apply_block` runs inside the engine's transaction (the ``monmouth_block_applied`` hook): on-chain
  registrations (:mod:`.registry`) and one ``memory_pending`` row holding everything the block means for memory:
  its hash and timestamp, the range of API ops it anchors (``memory_sync`` moves with it, journaled), its stamp,
  and the registered agents its transactions touch, with those transactions (:class:`Recorded`);
* :func:`settle` derives, block by block in order, what the chain hook used to write in that transaction:
  chain-derived episodes (item and leaf rows), anchored API ops (leaves opened and closed), expiry, one *mark*
  (block, count, stamp) per agent whose visible set changed, the block's ``memory_blocks`` row, pruning. It
  runs on the plugin's worker thread right after the block commits, and from every read of those tables that
  finds it behind (:meth:`.core.Memory.ensure_settled`), so reads see each block whole. The derived rows are a
  deterministic function of the pending row, the op log and the rows before it: settling late gives exactly what
  settling in the block's transaction gave.

A revert removes the block's pending row (declared trimmed) or, when it was settled, what settling derived
(:func:`revert_block`). No Merkle tree is built here: the new leaves are hashed; roots are computed on demand by
:mod:`.lattice`. Chain-derived items are indexed (tags, FTS5, embedding queue) by the settle transaction when it is
the plugin's own and indexing is caught up (from the plaintext it just sealed), else later by
:func:`index_episodes` (from the stored ciphertexts): the same rows.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import apsw
import msgpack
import msgspec
from cryptography.exceptions import InvalidTag

from monmouth.backends import execute_later, executemany_later
from monmouth.chain import hx
from monmouth.interfaces import TransactionRenderer
from monmouth.types import Block, Log, Receipt, Transaction

from . import dialect, merkle
from .agents import Agents, Counters
from .config import MemoryConfig
from .crypto import KeyStore, MissingKeyError, aad
from .items import ToIndex, index_items, seal
from .lattice import Lattice
from .merkle import keccak
from .registrations import Registrations
from .schema import (
    END_DELETED,
    END_EXPIRED,
    END_SUPERSEDED,
    EPISODE_SHIFT,
    KINDS,
    OP_PUT,
    REVERT_TRIMMED,
    all_rows,
    scalar,
)
from .vectors import VectorCache

log = logging.getLogger(__name__)

TRANSFER_TOPIC = keccak(b"Transfer(address,address,uint256)")


def transfer_parties(lg: Any) -> tuple[bytes, bytes] | None:
    """``(from, to)`` of an ERC-20 (3 topics) or ERC-721 (4 topics) ``Transfer`` log, else ``None``."""
    if len(lg.topics) in (3, 4) and lg.topics[0] == TRANSFER_TOPIC:
        return lg.topics[1][12:], lg.topics[2][12:]
    return None
TX_LOG_INDEX = 0xFFFFFFFF


def episode_id(agent: bytes, tx_hash: bytes, log_index: int) -> bytes:
    """The stable id of a chain-derived episode: ``keccak256("monmouth.memory.episode.v1" || agent || tx hash ||
    uint32 log index)`` (log index ``0xffffffff`` for the transaction itself)."""
    return keccak(b"monmouth.memory.episode.v1" + agent + tx_hash + log_index.to_bytes(4, "big"))


def _eth(wei: int) -> str:
    whole, frac = divmod(wei, 10**18)
    s = f"{whole}.{frac:018d}".rstrip("0").rstrip(".")
    return f"{s} ETH"


def plain_render_tx(block: Any, index: int) -> str:
    """A plain, deterministic English rendering of transaction ``index`` of ``block`` (used when the rag
    plugin, which decodes calldata and events, is not enabled)."""
    tx = block.transactions[index]
    rc = block.receipts[index] if index < len(block.receipts) else None
    status = "unknown status" if rc is None or rc.status is None else ("succeeded" if rc.status else "failed")
    to = f"to 0x{tx.to.hex()}" if tx.to is not None else "creating a contract"
    sel = f"; calls selector 0x{tx.selector.hex()}" if tx.selector else ""
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(block.timestamp))
    return (f"Block {block.number} at {when}: transaction 0x{tx.hash.hex()} from 0x{tx.sender.hex()} {to}, "
            f"value {_eth(tx.value)}, nonce {tx.nonce}{sel}; it {status}.")


def render_transfer(block: Any, index: int, log_index: int, frm: bytes, to: bytes, lg: Any) -> str:
    """A plain rendering of an ERC-20 (3 topics) or ERC-721 (4 topics) ``Transfer`` event."""
    tx = block.transactions[index]
    if len(lg.topics) == 4:
        what = f"token id {int.from_bytes(lg.topics[3], 'big')} of collection 0x{lg.address.hex()}"
    else:
        amount = int.from_bytes(lg.data[:32], "big") if lg.data else 0
        what = f"{amount} base units of token 0x{lg.address.hex()}"
    return (f"Block {block.number}: token transfer (log {log_index} of transaction 0x{tx.hash.hex()}) of {what} "
            f"from 0x{frm.hex()} to 0x{to.hex()}.")


@dataclass(slots=True)
class Episode:
    agent: bytes
    item_id: bytes
    text: str
    tags: list[str]
    meta: dict[str, Any]


class Recorded(msgspec.Struct, frozen=True):
    """What the chain hook keeps of a block whose transactions touch registered agents (``memory_pending.block``,
    msgspec JSON): the header, and only the transactions that touch one, with their receipts and positions, plus
    the log count of every receipt before the last of them (so block-wide log indexes stay right)."""

    header: Block                        # without transactions and receipts
    positions: list[int]                 # ascending indexes in the block
    transactions: list[Transaction]
    receipts: list[Receipt | None]       # None: the source gave no receipt at that position
    log_counts: list[int]


_RECORD_JSON = msgspec.json.Encoder()
#: :func:`.merkle.canonical_json` of an episode's metadata (string, integer and null values: the same bytes, tested;
#: ~7x faster than ``json.dumps``).
_META_JSON = msgspec.json.Encoder(order="sorted")
_RECORD_DECODER = msgspec.json.Decoder(Recorded)
_FILLER_TX = Transaction(bytes(32), 0, bytes(20), None, 0, b"", 0, 0)
_FILLER_LOG = Log(bytes(20), (), b"")


def _record(block: Block, positions: list[int]) -> bytes:
    n = min(len(block.receipts), positions[-1] + 1)
    return _RECORD_JSON.encode(Recorded(
        msgspec.structs.replace(block, transactions=(), receipts=()), positions,
        [block.transactions[p] for p in positions],
        [block.receipts[p] if p < len(block.receipts) else None for p in positions],
        [len(r.logs) for r in block.receipts[:n]]))


def restore_block(blob: bytes) -> tuple[Block, set[int]]:
    """The block a :class:`Recorded` blob was made from, as far as its recorded positions go (other positions hold
    filler transactions and receipts with the right number of logs), and the set of recorded positions. Rendering
    a recorded position (``render_transaction(block, i)``, log indexes included) gives what the whole block gave."""
    rec = _RECORD_DECODER.decode(blob)
    txs = [_FILLER_TX] * (rec.positions[-1] + 1)
    rcs = [Receipt(None, 0, (_FILLER_LOG,) * c) for c in rec.log_counts]
    for p, tx, rc in zip(rec.positions, rec.transactions, rec.receipts, strict=True):
        txs[p] = tx
        if rc is not None:
            rcs[p] = rc
    return msgspec.structs.replace(rec.header, transactions=tuple(txs), receipts=tuple(rcs)), set(rec.positions)


#: Most pending blocks settled per write transaction, and the time after which it commits without taking the next
#: one (seconds): the engine waits for SQLite's write lock meanwhile, so one settle transaction holds it for about
#: one block's settling (10-60 ms for 200 agents at 10,000) at most. The worker passes a longer budget while the
#: engine is idle (:data:`.worker.CATCH_UP_BUDGET_S`).
SETTLE_BATCH = 16
SETTLE_BUDGET_S = 0.02


@dataclass(slots=True)
class _Pending:
    number: int
    hash: bytes
    timestamp: int
    ops_from: int
    ops_to: int
    stamp: int
    agents: bytes | None
    block: bytes | None


def _anchor(conn: apsw.Connection, block: _Pending, touched: dict[bytes, int]) -> None:
    if block.ops_to <= block.ops_from:
        return
    rows = all_rows(
        conn,
        "SELECT seq, agent, item_id, op, kind, version, commitment, ttl_blocks, expires_at FROM memory_ops "
        "WHERE seq > ? AND seq <= ? ORDER BY seq", (block.ops_from, block.ops_to))
    if not rows:
        return
    final: dict[tuple[bytes, bytes], tuple[Any, ...]] = {}
    for r in rows:
        final[(r[1], r[2])] = r
    number = block.number
    keys = list(final)
    open_: set[tuple[bytes, bytes]] = set()  # items with a visible version (closed below)
    for i in range(0, len(keys), 400):
        chunk = keys[i:i + 400]
        open_.update(all_rows(
            conn,
            "SELECT agent, item_id FROM memory_leaves WHERE to_block IS NULL AND (agent, item_id) IN (VALUES "
            + ",".join(["(?, ?)"] * len(chunk)) + ")", [x for k in chunk for x in k]))
    closes, adds = [], []
    for (agent, item_id), r in final.items():
        _seq, _a, _i, op, kind, version, com, ttl_b, expires_at = r
        delta = 0
        if (agent, item_id) in open_:
            closes.append((number, END_SUPERSEDED if op == OP_PUT else END_DELETED, agent, item_id))
            delta -= 1
        if op == OP_PUT:
            adds.append((agent, item_id, number, version, kind, com, block.hash,
                         merkle.item_leaf(item_id, agent, kind, version, number, com),
                         number + ttl_b if ttl_b else None, expires_at))
            delta += 1
        touched[agent] = touched.get(agent, 0) + delta
    executemany_later(conn, "UPDATE memory_leaves SET to_block = ?, end_reason = ? WHERE agent = ? AND item_id = ? "
                            "AND to_block IS NULL", closes)
    executemany_later(
        conn,
        "INSERT INTO memory_leaves (agent, item_id, from_block, to_block, version, kind, commitment, anchor_hash, "
        "leaf, expires_block, expires_ts, end_reason) VALUES (?, ?, ?, NULL, ?, ?, ?, ?, ?, ?, ?, NULL)", adds)


def _expire(conn: apsw.Connection, block: _Pending, touched: dict[bytes, int]) -> None:
    sql = dialect.of(conn)
    gone = all_rows(conn, sql.EXPIRE_BLOCK, (block.number,)) + all_rows(conn, sql.EXPIRE_TS, (block.timestamp,))
    for agent, item_id, fb in dict.fromkeys(gone):
        closed = all_rows(conn, "UPDATE memory_leaves SET to_block = ?, end_reason = ? WHERE agent = ? AND "
                                "item_id = ? AND from_block = ? AND to_block IS NULL RETURNING 1",
                          (block.number, END_EXPIRED, agent, item_id, fb))
        touched[agent] = touched.get(agent, 0) - len(closed)


def _prune(conn: apsw.Connection, horizon: int) -> None:
    """Drop block rows, marks, leaf history and cached roots older than ``horizon`` (keeping, per agent, the mark
    in force at it). Queued (execute_later)."""
    if horizon <= 0:
        return
    execute_later(conn, "DELETE FROM memory_blocks WHERE block_number < ?", (horizon,))
    execute_later(conn, "DELETE FROM memory_global_cache WHERE block_number < ?", (horizon,))
    execute_later(
        conn,
        "DELETE FROM memory_marks WHERE block_number < ? AND EXISTS (SELECT 1 FROM memory_marks r2 WHERE "
        "r2.agent = memory_marks.agent AND r2.block_number > memory_marks.block_number AND r2.block_number <= ?)",
        (horizon, horizon))
    execute_later(
        conn,
        "DELETE FROM memory_root_cache WHERE block_number < ? AND NOT EXISTS (SELECT 1 FROM memory_marks m WHERE "
        "m.agent = memory_root_cache.agent AND m.block_number = memory_root_cache.block_number)", (horizon,))
    execute_later(
        conn,
        "DELETE FROM memory_forgotten WHERE block_number < ? AND EXISTS (SELECT 1 FROM memory_forgotten f2 WHERE "
        "f2.fid = memory_forgotten.fid AND f2.block_number > memory_forgotten.block_number AND "
        "f2.block_number <= ?)", (horizon, horizon))
    execute_later(conn, "DELETE FROM memory_leaves WHERE to_block IS NOT NULL AND to_block <= ?", (horizon,))


#: Chain-derived items indexed per write transaction: the engine waits for SQLite's write lock meanwhile, so a
#: backlog is worked off in short transactions (~0.2 ms per item at 10,000 agents).
INDEX_BATCH = 128


class ChainIngest:
    """The memory plugin's chain work on one database.

    Args:
        config: the ``[plugins.memory]`` section.
        db: the sidecar database: reads on ``db.reader()``.
        keys: the agents' keys (episodes are sealed with them).
        lattice: the roots (its cache rows are flushed in each settle transaction).
        agents: the agent directory (registered set, as the chain hook sees it).
        registrations: on-chain registry events.
        vectors: the decrypted-vector cache (dropped on revert).
        find_renderer: the transaction renderer of the plugin that offers one
            (:class:`monmouth.interfaces.TransactionRenderer`), or ``None``; asked at each settle.
        write: opens one of the plugin's write transactions for derived rows (:func:`.txn.write`, not durable one
            by one: what it writes is derived again from the pending rows if a power loss drops it).
        counters: ``key_errors`` is counted there.
    """

    def __init__(self, config: MemoryConfig, db: Any, keys: KeyStore, lattice: Lattice, agents: Agents,
                 registrations: Registrations, vectors: VectorCache,
                 find_renderer: Callable[[], TransactionRenderer | None], write: Callable[[], Any],
                 counters: Counters) -> None:
        self.config = config
        self.db = db
        self.keys = keys
        self.lattice = lattice
        self.agents = agents
        self.registrations = registrations
        self.vectors = vectors
        self.find_renderer = find_renderer
        self.write = write
        self.counters = counters
        self.last_applied = 0.0  # time.monotonic() of the last chain hook call
        self.writers = 0  # the plugin's durable write transactions (API, CLI) waiting for the write lock or in one
        self._writers_lock = threading.Lock()

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Around a durable write transaction of the plugin: while it waits for SQLite's write lock (or holds it), a
        settle transaction commits after its current block, whatever its budget (see :meth:`settle`)."""
        with self._writers_lock:
            self.writers += 1
        try:
            yield
        finally:
            with self._writers_lock:
                self.writers -= 1

    def apply_block(self, conn: apsw.Connection, block: Any) -> None:
        """The ``monmouth_block_applied`` work, inside the engine's transaction: on-chain registrations, and the block's
        memory input recorded in one ``memory_pending`` row (its hash and time, the range of API ops it anchors, its
        stamp, and, when its transactions touch registered agents, those agents and those transactions). Nothing is
        hashed or encrypted here: :func:`settle` derives the leaves, marks, chain items and block row from that row
        afterwards. Writes only through ``conn``."""
        dialect.of(conn).chain_write(conn)  # SQLite: deletes (reverts) zero the freed pages; PostgreSQL: the lock
        self.last_applied = time.monotonic()
        stamp = scalar(conn, "UPDATE memory_state SET stamp = stamp + 1 WHERE id = 1 RETURNING stamp")
        self.registrations.apply(conn, block)  # first: the agent's own transactions in this block become episodes
        agents, positions = (self._involved(conn, block) if self.config.chain_episodes and block.transactions
                             else (set(), []))
        row = conn.execute("SELECT ops_seq, (SELECT coalesce(max(seq), 0) FROM memory_ops) FROM memory_sync "
                           "WHERE id = 1").fetchall()[0]
        seq0, seq1 = int(row[0]), int(row[1])  # type: ignore[arg-type]
        # the writes go with the engine's next statement on PostgreSQL (execute_later): no round trip of their own
        if seq1 > seq0:
            execute_later(conn, "UPDATE memory_sync SET ops_seq = ? WHERE id = 1", (seq1,))
        execute_later(
            conn,
            "INSERT INTO memory_pending (block_number, block_hash, ts, ops_from, ops_to, stamp, agents, block) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (block_number) DO UPDATE SET "
            "block_hash = excluded.block_hash, ts = excluded.ts, ops_from = excluded.ops_from, "
            "ops_to = excluded.ops_to, stamp = excluded.stamp, agents = excluded.agents, block = excluded.block",
            (block.number, block.hash, block.timestamp, seq0, max(seq0, seq1), stamp,
             b"".join(sorted(agents)) if agents else None, _record(block, positions) if agents else None))

    def _involved(self, conn: apsw.Connection, block: Any) -> tuple[set[bytes], list[int]]:
        """Registered, not forgotten agents that a transaction of ``block`` is from or to, or that a ``Transfer``
        event of it names, and the positions of those transactions (ascending), as ``conn`` (the chain hook's
        transaction) sees the agents (:meth:`.agents.Agents.registered`)."""
        registered = self.agents.registered(conn)
        out: set[bytes] = set()
        positions: list[int] = []
        if not registered:
            return out, positions
        for i, tx in enumerate(block.transactions):
            hit = [a for a in (tx.sender, tx.to) if a in registered]
            rc = block.receipts[i] if i < len(block.receipts) else None
            for lg in rc.logs if rc is not None else ():
                hit += [t for t in transfer_parties(lg) or () if t in registered]
            if hit:
                out.update(hit)  # type: ignore[arg-type]
                positions.append(i)
        return out, positions

    def settle(self, conn: apsw.Connection | None = None, limit: int = SETTLE_BATCH,
               until: int | None = None, index: bool = True, budget: float | None = None) -> int:
        """Derive the lattice rows of up to ``limit`` recorded blocks (``memory_pending``), oldest first, each exactly
        as the chain hook used to inside the block's transaction: chain-derived episodes (item and leaf rows), the
        anchoring of the API ops of its range, expiry, one mark per agent whose visible set changed, the block's row,
        periodic pruning; then delete the pending row. ``until``: settle no block above this number. Stops after the
        block that takes it past ``budget`` seconds (default :data:`SETTLE_BUDGET_S`; no longer than that while an API
        write waits, :meth:`writing`). Returns how many blocks were settled (0: up to date).

        Runs in one write transaction: ``conn``'s when given (the caller holds SQLite's write lock: a forget, or a
        chain hook of another plugin), else the plugin's own, which also indexes the new chain items
        (:func:`.items.index_items`) and moves the watermark ``memory_state.indexed_n`` to them, when every item
        before them was indexed (otherwise :meth:`index_episodes` catches up first) and ``index`` is true (the
        worker passes false while the engine is busy, keeping its transactions as short as settling alone). A
        revert of a block removes its pending row (the engine trims ``memory_pending``) or, once settled, what it
        derived (:func:`revert_block`); both take the write lock, so each sees the other whole.
        """
        top = (1 << 63) - 1 if until is None else until
        budget = SETTLE_BUDGET_S if budget is None else budget
        if conn is None:
            if self.db.reader().execute("SELECT 1 FROM memory_pending WHERE block_number <= ? LIMIT 1", (top,)
                                   ).fetchone() is None:
                return 0
            with self.write() as w:
                return self._settle(w, limit, top, index, budget)
        return self._settle(conn, limit, top, False, budget)

    def _settle(self, conn: apsw.Connection, limit: int, top: int, index: bool, budget: float) -> int:
        # The numbers first, each row when its turn comes: a short budget often settles one block of the batch.
        numbers = [r[0] for r in all_rows(conn, "SELECT block_number FROM memory_pending WHERE block_number <= ? "
                                                "ORDER BY block_number LIMIT ?", (top, limit))]
        if not numbers:
            return 0
        dialect.of(conn).chain_write(conn)
        self.lattice.flush(conn)
        if index:  # index the new chain items here too, unless indexing is behind (then index_episodes does)
            top_n = scalar(conn, "SELECT max(n) FROM memory_items")
            index = top_n is None or top_n <= scalar(conn, "SELECT indexed_n FROM memory_state WHERE id = 1")
        t0 = time.monotonic()
        done = 0
        new: list[ToIndex] = []
        for number in numbers:
            row = all_rows(conn, "SELECT block_number, block_hash, ts, ops_from, ops_to, stamp, agents, block FROM "
                                 "memory_pending WHERE block_number = ?", (number,))[0]
            new += self._settle_block(conn, _Pending(*row))
            done += 1
            if time.monotonic() - t0 > (min(budget, SETTLE_BUDGET_S) if self.writers else budget):
                break
        # the writes whose results nobody reads are queued (execute_later: on PostgreSQL they go with the next
        # statement or the COMMIT)
        execute_later(conn, "DELETE FROM memory_pending WHERE block_number <= ?", (numbers[done - 1],))
        if index and new:
            index_items(conn, new)
            execute_later(conn, "UPDATE memory_state SET indexed_n = ? WHERE id = 1", (new[-1][2],))
        return done

    def _settle_block(self, conn: apsw.Connection, p: _Pending) -> list[ToIndex]:
        """Settle one recorded block; returns its chain items as :func:`.items.index_items` takes them."""
        number, stamp = p.number, p.stamp
        forgot = scalar(conn, "SELECT forgot_stamp FROM memory_state WHERE id = 1")
        touched: dict[bytes, int] = {}  # agent -> change of its visible item count
        new: list[ToIndex] = []
        if p.agents and p.block:
            agents = {p.agents[i:i + 20] for i in range(0, len(p.agents), 20)}
            block, positions = restore_block(p.block)
            new = self._episodes(conn, block, agents, positions, touched)
        _anchor(conn, p, touched)
        _expire(conn, p, touched)
        prev = conn.execute("SELECT agents, stamp FROM memory_blocks ORDER BY block_number DESC LIMIT 1").fetchone()
        agents_n = prev[0] if prev is not None else 0
        order = sorted(touched)
        before: dict[bytes, int] = {}
        for i in range(0, len(order), 500):
            chunk = order[i:i + 500]
            before.update(all_rows(  # one index seek per agent (its last mark), whatever its history
                conn,
                "SELECT v.column1, coalesce((SELECT count FROM memory_marks WHERE agent = v.column1 ORDER BY "
                "block_number DESC LIMIT 1), 0) FROM (VALUES " + ",".join(["(?)"] * len(chunk)) + ") AS v", chunk))
        marks = []
        for agent in order:
            b0 = before.get(agent, 0)
            count = b0 + touched[agent]
            agents_n += (count > 0) - (b0 > 0)
            marks.append((agent, number, count, stamp))
        executemany_later(conn, "INSERT INTO memory_marks (agent, block_number, count, stamp) VALUES (?, ?, ?, ?) "
                                "ON CONFLICT (agent, block_number) DO UPDATE SET count = excluded.count, "
                                "stamp = excluded.stamp", marks)
        if prev is None or prev[1] <= forgot:  # the previous block counted an agent forgotten since
            agents_n = scalar(conn, "SELECT count(*) FROM memory_marks m JOIN (SELECT agent, max(block_number) AS b "
                                    "FROM memory_marks GROUP BY agent) x ON x.agent = m.agent AND "
                                    "x.b = m.block_number WHERE m.count > 0")
        execute_later(conn, "INSERT INTO memory_blocks (block_number, block_hash, agents, ops_seq, stamp) "
                            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (block_number) DO UPDATE SET "
                            "block_hash = excluded.block_hash, agents = excluded.agents, ops_seq = excluded.ops_seq, "
                            "stamp = excluded.stamp",
                            (number, p.hash, agents_n, p.ops_to, stamp))
        if number % self.config.prune_every == 0:
            _prune(conn, number - self.config.retention_blocks)
        return new

    def _episodes(self, conn: apsw.Connection, block: Any, agents: set[bytes], positions: set[int],
                  touched: dict[bytes, int]) -> list[ToIndex]:
        renderer = self.find_renderer()
        render = renderer.render_transaction if renderer is not None else None
        eps: list[Episode] = []
        log_index = 0
        for i, tx in enumerate(block.transactions):
            rc = block.receipts[i] if i < len(block.receipts) else None
            if i not in positions:  # a filler (see restore_block): only its log count matters
                log_index += len(rc.logs) if rc is not None else 0
                continue
            involved = [a for a in dict.fromkeys([tx.sender, tx.to]) if a in agents]
            if involved:
                text = None
                if render is not None:
                    try:
                        text = render(block, i)
                    except Exception as e:
                        log.warning("rag render_transaction failed for block %d tx %d: %s", block.number, i, e)
                text = text or plain_render_tx(block, i)
                for a in involved:
                    direction = "self" if tx.sender == tx.to else ("sent" if a == tx.sender else "received")
                    meta = {"type": "transaction", "tx": hx(tx.hash), "block": block.number, "index": i,
                            "direction": direction, "from": hx(tx.sender), "to": hx(tx.to), "value": str(tx.value)}
                    eps.append(Episode(a, episode_id(a, tx.hash, TX_LOG_INDEX), text,
                                       ["chain", "transaction", direction], meta))
            for lg in rc.logs if rc is not None else ():
                li = log_index
                log_index += 1
                parties = transfer_parties(lg)
                if parties is None:
                    continue
                frm, to = parties
                for a in dict.fromkeys([frm, to]):
                    if a not in agents:
                        continue
                    direction = "self" if frm == to else ("sent" if a == frm else "received")
                    meta = {"type": "transfer", "tx": hx(tx.hash), "block": block.number, "log_index": li,
                            "token": hx(lg.address), "from": hx(frm), "to": hx(to),
                            "amount": str(int.from_bytes(lg.data[:32], "big")) if len(lg.topics) == 3 and lg.data
                            else None,
                            "token_id": str(int.from_bytes(lg.topics[3], "big")) if len(lg.topics) == 4 else None}
                    eps.append(Episode(a, episode_id(a, tx.hash, li), render_transfer(block, i, li, frm, to, lg),
                                       ["chain", "transfer", direction], meta))
        base = block.number << EPISODE_SHIFT
        episodic = KINDS["episodic"]
        items, leaves = [], []
        new: list[ToIndex] = []
        for j, ep in enumerate(eps):
            try:
                k = self.keys.get(ep.agent)
            except MissingKeyError as e:
                self.counters.key_errors += 1
                log.error("no key for agent 0x%s, its episode in block %d is skipped: %s", ep.agent.hex(),
                          block.number, e)
                continue
            com, nonce, ct = seal(k, ep.agent, ep.item_id, 1, ep.text.encode(), 0, "", ep.tags,
                                  _META_JSON.encode(ep.meta).decode(), 0, 0, nonce=k.det_nonce(ep.item_id, 1))
            items.append((base | j, ep.item_id, ep.agent, episodic, nonce, ct, com, block.timestamp, block.timestamp,
                          block.number, block.hash))
            leaves.append((ep.agent, ep.item_id, block.number, episodic, com, block.hash,
                           merkle.item_leaf(ep.item_id, ep.agent, episodic, 1, block.number, com)))
            new.append((k, ep.agent, base | j, ep.text, ep.tags))
            touched[ep.agent] = touched.get(ep.agent, 0) + 1
        # Two rows per episode here; its tags, FTS5 entry and embedding-queue row are written by the caller.
        executemany_later(
            conn,
            "INSERT INTO memory_items (n, id, agent, kind, origin, version, key_hash, nonce, ct, commitment, "
            "ttl_seconds, ttl_blocks, expires_at, created_at, updated_at, head_number, head_hash) "
            "VALUES (?, ?, ?, ?, 1, 1, NULL, ?, ?, ?, 0, 0, NULL, ?, ?, ?, ?)", items)
        executemany_later(
            conn,
            "INSERT INTO memory_leaves (agent, item_id, from_block, to_block, version, kind, commitment, "
            "anchor_hash, leaf, expires_block, expires_ts, end_reason) VALUES (?, ?, ?, NULL, 1, ?, ?, ?, ?, "
            "NULL, NULL, NULL)", leaves)
        return new

    def revert_block(self, conn: apsw.Connection, block: Any) -> None:
        """The ``monmouth_block_reverted`` work. The journal already restored ``memory_sync`` and the registry. First
        (after :meth:`.dialect.Postgres.chain_write` took the plugin's write lock on PostgreSQL) the rows of
        :data:`.schema.REVERT_TRIMMED` at and above the block go. Blocks are reverted newest first, so what remains
        of the block is what :func:`settle` derived from it,
        if it was settled: delete the leaves it added, reopen the leaves it closed, delete its chain-derived items and
        their indexes (tags, FTS5 entries, vectors, embedding queue), and lower the indexing watermark below it."""
        sql = dialect.of(conn)
        sql.chain_write(conn)
        for table in REVERT_TRIMMED:
            conn.execute(f"DELETE FROM {table} WHERE block_number >= ?", (block.number,))
        conn.execute("DELETE FROM memory_leaves WHERE from_block >= ?", (block.number,))
        conn.execute("UPDATE memory_leaves SET to_block = NULL, end_reason = NULL WHERE to_block IS NOT NULL AND "
                     "to_block >= ?", (block.number,))
        lo = block.number << EPISODE_SHIFT
        conn.execute("UPDATE memory_state SET indexed_n = ? WHERE id = 1 AND indexed_n > ?", (lo - 1, lo - 1))
        conn.execute("DELETE FROM memory_items WHERE n >= ?", (lo,))
        conn.execute("DELETE FROM memory_tags WHERE n >= ?", (lo,))
        sql.fts_remove_from(conn, lo)
        conn.execute("DELETE FROM memory_vectors WHERE n >= ?", (lo,))
        conn.execute("DELETE FROM memory_embed_queue WHERE n >= ?", (lo,))
        self.vectors.drop()

    def index_episodes(self, limit: int = INDEX_BATCH) -> int:
        """Index up to ``limit`` chain-derived items committed since the watermark ``memory_state.indexed_n``: their
        tags, FTS5 keyed tokens and embedding-queue rows, in one write transaction of the plugin's own (not the
        engine's). Returns how many items it went through (0: up to date).

        Runs on the worker thread after every block, and from reads (:meth:`Memory.ensure_indexed`) that find it
        behind: only items settled inside another transaction (or before settling indexed them) are left to it. A
        revert of block ``b`` deletes these rows by row id range and lowers the watermark below ``b << 20`` in the
        engine's transaction; both take SQLite's write lock, so each sees the other whole. An item whose key is
        missing (or does not open it) is logged and passed over.
        """
        conn = self.db.reader()
        mark = scalar(conn, "SELECT indexed_n FROM memory_state WHERE id = 1")
        top = scalar(conn, "SELECT max(n) FROM memory_items")
        if top is None or top <= mark:
            return 0
        with self.write() as w:
            mark = scalar(w, "SELECT indexed_n FROM memory_state WHERE id = 1")
            rows = all_rows(w, "SELECT n, id, agent, version, nonce, ct FROM memory_items WHERE n > ? ORDER BY n "
                               "LIMIT ?", (mark, limit))
            todo: list[ToIndex] = []
            for n, item_id, agent, version, nonce, ct in rows:
                try:
                    k = self.keys.get(agent)
                    p = msgpack.unpackb(k.decrypt(nonce, ct, aad(agent, item_id, version)))
                except (MissingKeyError, InvalidTag) as e:
                    log.error("chain item %s of agent 0x%s not indexed: %s", hx(item_id), agent.hex(),
                              type(e).__name__)
                    continue
                todo.append((k, agent, n, p["c"].decode() if p["t"] == 0 else None, p["g"]))
            index_items(w, todo)
            if rows:
                execute_later(w, "UPDATE memory_state SET indexed_n = ? WHERE id = 1", (rows[-1][0],))
        return len(rows)


def settle(memory: Any, conn: apsw.Connection | None = None, limit: int = SETTLE_BATCH,
           until: int | None = None) -> int:
    """:meth:`ChainIngest.settle` of a running :class:`~.core.Memory` (``memory.ingest``): tests and benchmarks
    settle step by step with it."""
    return memory.ingest.settle(conn, limit, until)  # type: ignore[no-any-return]
