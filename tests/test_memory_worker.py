"""The memory plugin's worker (``plugins/memory/worker.py``): reads never write. With the worker thread running, a
read that finds blocks not yet settled waits for the worker, which settles them in its own transactions; the read's
own thread writes nothing, and the read sees every block recorded before it began."""

from __future__ import annotations

import threading
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

    def spy(conn: Any = None, limit: int = 16, until: int | None = None, index: bool = True) -> int:
        n = real_settle(conn, limit, until, index)
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
