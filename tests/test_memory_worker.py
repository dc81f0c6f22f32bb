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


def test_reads_wait_for_the_worker_and_write_nothing(tmp_path):
    cfg = {"key_dir": str(tmp_path / "keys"), "agents": ["0x" + A1.hex(), "0x" + A2.hex()], "embed": False}
    e, p = make_memory_engine(tmp_path / "db.sqlite", cfg, workers=True)
    mem = p.memory
    assert mem is not None
    settled_on: list[tuple[str, int]] = []
    real_settle = mem.ingest.settle

    def spy(conn: Any = None, limit: int = 16, until: int | None = None) -> int:
        n = real_settle(conn, limit, until)
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


def test_without_a_worker_thread_the_read_does_its_step(tmp_path):
    cfg = {"key_dir": str(tmp_path / "keys"), "agents": ["0x" + A1.hex()], "embed": False}
    e, p = make_memory_engine(tmp_path / "db.sqlite", cfg, workers=False)
    mem = p.memory
    assert mem is not None
    try:
        e.apply(ChainCommitted(chain(extend(None, 3, number=1, n_txs=2))))
        assert e.host.status()["memory"]["settle_backlog"] == 3
        assert mem.global_root()["block"] == 3
        assert e.host.status()["memory"]["settle_backlog"] == 0
    finally:
        close(e)
