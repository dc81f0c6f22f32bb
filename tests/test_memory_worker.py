"""The memory plugin's worker (``plugins/memory/worker.py``): reads never write. With the worker thread running, a
read that finds blocks not yet settled waits for the worker, which settles them in its own transactions; the read's
own thread writes nothing, and the read sees every block recorded before it began."""

from __future__ import annotations

import threading
import time
from typing import Any

from monmouth.types import ChainCommitted
from tests.chains import address, chain, extend
from tests.memory_helpers import close, make_memory_engine

A1, A2 = address(1), address(2)


def test_reads_wait_for_the_worker_and_write_nothing(tmp_path, storage_of):
    cfg = {"key_dir": str(tmp_path / "keys"), "agents": ["0x" + A1.hex(), "0x" + A2.hex()], "embed": False}
    e, p = make_memory_engine(storage_of("db.sqlite"), cfg, workers=True)
    mem = p.memory
    assert mem is not None
    settled_on: list[tuple[str, int]] = []
    real_settle = mem.ingest.settle

    def spy(conn: Any = None, limit: int = 16, until: int | None = None, index: bool = True,
            budget: float | None = None) -> int:
        n = real_settle(conn, limit, until, index, budget)
        if n and conn is None:  # a settle in a transaction of its own (inside one, the outer call counts)
            settled_on.append((threading.current_thread().name, n))
        return n

    mem.ingest.settle = spy  # type: ignore[method-assign]
    try:
        mem.store(A1, "semantic", "a note")
        mem.worker.stop()  # blocks pile up unsettled while the worker is held
        e.apply(ChainCommitted(chain(extend(None, 6, number=1, n_txs=3))))
        assert e.host.status()["memory"]["settle_backlog"] == 6
        mem.worker.start()
        reader_threads = []
        for read in (lambda: mem.global_root(), lambda: mem.agent_root(A1), lambda: mem.changes(A1, 0),
                     lambda: mem.list(A1, tags=["chain"])):
            reader_threads.append(threading.current_thread().name)
            read()
        root = mem.global_root()
        assert root["block"] == 6
        assert mem.agent_root(A1)["root"] == mem.agent_info(A1)["root"]
        assert sum(n for _, n in settled_on) == 6
        assert {name for name, _ in settled_on} == {"memory-worker"}, settled_on  # never on the reading thread
        assert "memory-worker" not in reader_threads
        assert e.host.status()["memory"]["settle_backlog"] == 0
    finally:
        close(e)


def test_without_a_worker_thread_the_read_does_its_step(tmp_path, storage_of):
    cfg = {"key_dir": str(tmp_path / "keys"), "agents": ["0x" + A1.hex()], "embed": False}
    e, p = make_memory_engine(storage_of("db.sqlite"), cfg, workers=False)
    mem = p.memory
    assert mem is not None
    try:
        e.apply(ChainCommitted(chain(extend(None, 3, number=1, n_txs=2))))
        assert e.host.status()["memory"]["settle_backlog"] == 3
        assert mem.global_root()["block"] == 3
        assert e.host.status()["memory"]["settle_backlog"] == 0
    finally:
        close(e)


def test_settle_and_index_commit_without_fsync_and_api_writes_stay_durable(tmp_path, monkeypatch):
    """Settling and indexing write derived rows in transactions at ``synchronous = NORMAL`` (no fsync per commit; a
    power loss can only drop them whole, and they are derived again); the connection's own level (FULL) is back
    for the next transaction, so an API write on the same connection is still fsynced at its commit."""
    import monmouth_memory.ingest as ingest

    cfg = {"key_dir": str(tmp_path / "keys"), "agents": ["0x" + A1.hex()], "embed": False}
    e, p = make_memory_engine(tmp_path / "db.sqlite", cfg)
    mem = p.memory
    assert mem is not None
    levels: list[tuple[str, int]] = []
    conn = mem.db.reader()

    def level(what: str) -> None:
        levels.append((what, conn.execute("PRAGMA synchronous").fetchone()[0]))

    def spy(real: Any, what: str) -> Any:
        def call(c: Any, *a: Any) -> Any:
            assert c is conn
            if not levels or levels[-1][0] != what:
                level(what)
            return real(c, *a)
        return call

    monkeypatch.setattr(mem.ingest, "_settle_block", spy(mem.ingest._settle_block, "settle"))
    monkeypatch.setattr(ingest, "index_items", spy(ingest.index_items, "index"))
    try:
        e.apply(ChainCommitted(chain(extend(None, 2, number=1, n_txs=8))))
        mem.store(A1, "semantic", "a note")
        level("store")
        assert mem.ingest.settle() == 2 and mem.ingest.index_episodes() == 0  # settling indexed them
        level("store")
        mem.store(A1, "semantic", "another note")
        assert len(mem.list(A1)) > 2
    finally:
        close(e)
    assert levels == [("store", 2), ("settle", 1), ("index", 1), ("store", 2)]  # 2: FULL, 1: NORMAL


def test_a_root_read_right_after_a_block_sees_that_block_and_waits_for_settling_only(tmp_path, storage_of):
    """With the worker thread running, an agent's root read right after a block (no pause, the engine idle) counts
    the episode that block gave it, at that block, with the root of the leaves it lists; while such a read waits,
    the worker's step settles without indexing (a root needs no tags or FTS5 rows), and the next step indexes."""
    cfg = {"key_dir": str(tmp_path / "keys"), "agents": ["0x" + A1.hex()], "embed": False}
    e, p = make_memory_engine(storage_of("db.sqlite"), cfg, workers=True)
    mem = p.memory
    assert mem is not None
    try:
        parent = None
        for _ in range(6):
            blocks = extend(parent, 1, number=1, n_txs=4)
            parent = blocks[-1]
            before = mem.agent_root(A1)["count"] if parent.number > 1 else 0
            e.apply(ChainCommitted(chain(blocks)))
            mem.wake()
            ans = mem.agent_root(A1)
            assert ans["block"] == parent.number
            gained = sum(1 for tx in parent.transactions if A1 in (tx.sender, tx.to)) + sum(
                1 for rc in parent.receipts for lg in rc.logs if A1 in (lg.topics[1][12:], lg.topics[2][12:]))
            assert ans["count"] == before + gained
            if gained:
                assert ans["since_block"] == parent.number
            leaves = mem.leaves(A1)
            assert ans["root"] == leaves["root"] and len(leaves["leaves"]) == ans["count"]
        mem.ensure_indexed()
        assert e.host.status()["memory"]["index_backlog"] == 0
    finally:
        close(e)


def test_while_a_read_waits_for_settling_the_worker_settles_without_indexing(tmp_path):
    """The worker's step (run here, on the test's thread) while one read waits for settling: it settles the pending
    blocks, computes the head's global root (which an agent's root answer holds) and leaves their items unindexed;
    once no read waits, the next step indexes them."""
    cfg = {"key_dir": str(tmp_path / "keys"), "agents": ["0x" + A1.hex(), "0x" + A2.hex()], "embed": False}
    e, p = make_memory_engine(tmp_path / "db.sqlite", cfg, workers=False)
    mem = p.memory
    assert mem is not None
    try:
        blocks = extend(None, 2, number=1, n_txs=8)
        e.apply(ChainCommitted(chain(blocks)))
        mem.ingest.last_applied = 0.0  # the engine is idle: only a waiting read makes the step settle only
        status = e.host.status()["memory"]
        assert status["settle_backlog"] == 2
        mem.worker._settle_readers = 1  # what MemoryWorker.settled() counts while a read waits
        mem.worker._last_warm = time.monotonic()  # the periodic warm-up (once a second) just ran
        mem.worker._readers = 1
        assert mem.worker.step() == 2
        stamp = e.conn.execute("SELECT stamp FROM memory_blocks WHERE block_number = 2").fetchone()[0]
        assert mem.lattice.globals.get_((2, stamp)) is not None  # the head's global root, ready for the read
        status = e.host.status()["memory"]  # (computes that root too: asked after the check above)
        assert status["settle_backlog"] == 0 and status["index_backlog"] > 0  # settled, not indexed
        mem.worker._settle_readers = mem.worker._readers = 0
        assert mem.worker.step() > 0
        assert e.host.status()["memory"]["index_backlog"] == 0
        # Which reads count as waiting for settling only: a root does; a read that needs the index too does not
        # (else the worker would settle without indexing, then index apart, while it waits).
        waits: list[bool] = []
        real_wait = mem.worker._wait

        def spy(behind: Any, inline: Any, settling: bool = False) -> None:
            waits.append(settling)
            real_wait(behind, inline, settling)

        mem.worker._wait = spy  # type: ignore[method-assign]
        blocks += extend(blocks[-1], 1, n_txs=8)
        e.apply(ChainCommitted(chain(blocks[-1:])))
        mem.ensure_indexed()
        e.apply(ChainCommitted(chain(extend(blocks[-1], 1, n_txs=8))))
        mem.agent_root(A1)
        assert waits == [False, False, True]
    finally:
        close(e)


def test_after_a_quick_step_the_next_step_indexes_the_backlog_first_so_settling_indexes_inline(tmp_path):
    """A step while the engine is busy settles without indexing. The next step, the engine idle, indexes those
    items first (from their ciphertexts); the blocks it then settles are indexed in their own settle transaction,
    from the plaintext, not left to ``index_episodes`` as well (which each later settle would do while indexing
    lags behind)."""
    cfg = {"key_dir": str(tmp_path / "keys"), "agents": ["0x" + A1.hex(), "0x" + A2.hex()], "embed": False}
    e, p = make_memory_engine(tmp_path / "db.sqlite", cfg, workers=False)
    mem = p.memory
    assert mem is not None
    indexed: list[int] = []  # items each index_episodes call went through
    real = mem.ingest.index_episodes

    def spy(limit: int = 128) -> int:
        indexed.append(real(limit))
        return indexed[-1]

    mem.ingest.index_episodes = spy  # type: ignore[method-assign]
    try:
        blocks = extend(None, 1, number=1, n_txs=8)
        e.apply(ChainCommitted(chain(blocks)))
        mem.ingest.last_applied = time.monotonic()  # the engine is busy: settle only
        assert mem.worker.step() == 1 and indexed == []
        backlog = e.host.status()["memory"]["index_backlog"]  # block 1's items
        assert backlog > 0
        more = extend(blocks[-1], 3, n_txs=8)
        e.apply(ChainCommitted(chain(more)))
        mem.ingest.last_applied = 0.0  # idle: catch up
        first = mem.worker.step()
        assert indexed and indexed[0] == backlog  # the quick step's items, first, and only those
        assert first == indexed[0] + 3  # then the three new blocks, settled ...
        status = e.host.status()["memory"]
        assert status["settle_backlog"] == 0 and status["index_backlog"] == 0  # ... and indexed in that transaction
        assert sum(indexed) == indexed[0]  # none of their items went through index_episodes
        n = e.conn.execute("SELECT count(*) FROM memory_items WHERE origin = 1").fetchone()[0]
        assert e.conn.execute("SELECT count(DISTINCT n) FROM memory_tags").fetchone()[0] == n  # every item's tags
    finally:
        close(e)
