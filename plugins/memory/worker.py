"""The memory plugin's worker thread, and how reads wait for it.

The worker (a :class:`monmouth.worker.BackgroundWorker`, woken after every committed notification and every API
write) settles and indexes each block after it commits (:class:`.ingest.ChainIngest`), embeds queued items,
checkpoints the WAL passively (API writes do not auto-checkpoint), computes the global root of the latest settled
block ahead of requests (at most once a second) and sweeps expired working memory (once a minute).

Reads never write. A read of the lattice tables (roots, proofs, changes, items) first waits, with
:meth:`MemoryWorker.settled` or :meth:`MemoryWorker.indexed`, until the worker has settled every block recorded
when the read began; the worker does not yield to the engine while a read waits. Without a running worker thread
(``workers=False``: tests, benchmarks, one-shot CLI commands) the waiting thread does the worker's step itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from monmouth.worker import BackgroundWorker

from . import dialect
from .ingest import INDEX_BATCH, ChainIngest
from .schema import scalar

log = logging.getLogger(__name__)

#: While blocks keep coming (one applied within ``ENGINE_BUSY_S`` seconds), the worker thread runs at most one
#: settle or index transaction every ``WORKER_YIELD_S`` seconds, leaving SQLite's write lock to the engine: a
#: backfill of blocks full of agents is not slowed by their settling (reads catch up by themselves).
ENGINE_BUSY_S = 0.05
WORKER_YIELD_S = 0.2
#: While the engine is idle and no read waits, a settle transaction takes pending blocks until this many seconds
#: passed (instead of :data:`.ingest.SETTLE_BUDGET_S`): a backlog left by a burst of blocks is worked off in
#: transactions of several blocks, whose pages (an agent's leaves and marks, the items' indexes) are written to
#: the WAL once per transaction instead of once per block (400 200-episode blocks settled and indexed on one
#: thread: 27-31 instead of 38 ms a block). An engine that resumes meanwhile waits for SQLite's write lock that long at
#: most, once; an API write does not: the transaction commits after its current block when one waits
#: (:meth:`.ingest.ChainIngest.writing`).
CATCH_UP_BUDGET_S = 0.25
#: Likewise, chain items indexed per transaction while the engine is idle and no read waits (instead of
#: :data:`.ingest.INDEX_BATCH`; ~8 % less time per item).
CATCH_UP_INDEX_BATCH = 1024
#: How often a waiting read looks at the backlog again, seconds (it is also woken after every worker step).
WAIT_POLL_S = 0.05


class MemoryWorker(BackgroundWorker):
    """The worker thread of one running memory plugin.

    Args:
        ingest: the chain work (settle, index) and the time of the last applied block.
        db: the sidecar database (reads; the periodic WAL checkpoint, :meth:`.dialect.Sqlite.checkpoint`).
        embed: embeds up to a batch of queued items, returns how many (``None``: embedding is off).
        warm: computes the global root of the latest settled block.
        sweep: deletes expired working memory, returns how many.
    """

    def __init__(self, ingest: ChainIngest, db: Any, embed: Callable[[], int] | None, warm: Callable[[], Any],
                 sweep: Callable[[], int]) -> None:
        super().__init__("memory-worker", idle_s=1.0)
        self.ingest = ingest
        self.db = db
        self.embed = embed
        self.warm = warm
        self.sweep = sweep
        self.thread: threading.Thread | None = None  # the worker's thread once it ran a step
        self._stepped = threading.Condition()
        self._readers = 0  # reads waiting for a step
        self._settle_readers = 0  # those of them waiting for settling only (roots, proofs, get: not indexing)
        self._reader_arrived = threading.Event()
        self._last_ckpt = self._last_sweep = self._last_warm = 0.0

    def step(self) -> int:
        """Catching up (the engine idle, no read waiting for settling): index what earlier steps left unindexed,
        then settle and index in one transaction. Otherwise settle only (index when there was nothing to settle).
        Then embed (unless quick with work done), and the periodic jobs."""
        self.thread = threading.current_thread()
        busy = time.monotonic() - self.ingest.last_applied < ENGINE_BUSY_S and not self._readers
        # Settling only while the engine or a read waits for it: a read of roots, proofs or items waits for settling,
        # not for indexing (~half of a 200-episode block's work), which the next step does.
        reads = self._settle_readers > 0
        quick = busy or reads
        try:
            # A settle transaction indexes the items it derives only when every item before them is indexed: items
            # left unindexed by quick steps are indexed first (from their ciphertexts, which costs more), or every
            # later settle would leave its items to index_episodes too (a 200-episode backlog settled and indexed
            # at 25-33 blocks/s instead of 40-45 on one thread).
            done = 0 if quick else self.ingest.index_episodes(CATCH_UP_INDEX_BATCH)
            # Indexing in the same transaction, unless someone waits; several blocks per transaction when no one does.
            settled = self.ingest.settle(index=not quick, budget=None if quick else CATCH_UP_BUDGET_S)
            done += settled
            if reads and settled and not self._behind(self.db.reader(), (1 << 63) - 1):
                # Settled up to the head: its global root (an agent's root answer holds it), before the reads go on;
                # computed here it does not compete with this thread's next step (indexing) for the interpreter.
                self._last_warm = time.monotonic()
                self.warm()
            if quick and not settled:
                done += self.ingest.index_episodes(INDEX_BATCH)
            if self.embed is not None and not (quick and done):
                done += self.embed()
            now = time.monotonic()
            if now - self._last_ckpt >= 2.0:
                self._last_ckpt = now
                dialect.of(self.db).checkpoint(self.db)
            if now - self._last_warm >= 1.0:
                self._last_warm = now
                self.warm()
            if now - self._last_sweep >= 60.0:
                self._last_sweep = now
                self.sweep()
        finally:
            with self._stepped:
                self._stepped.notify_all()
        if done and busy:
            self._reader_arrived.wait(WORKER_YIELD_S)  # a read arriving ends the yield
            self._reader_arrived.clear()
        return done

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (waits up to ``timeout`` seconds for the current step)."""
        self.stopping.set()
        self._reader_arrived.set()
        super().stop(timeout)

    def _behind(self, conn: Any, top: int) -> bool:
        return conn.execute("SELECT 1 FROM memory_pending WHERE block_number <= ? LIMIT 1", (top,)).fetchone() \
            is not None

    def settled(self, settling: bool = True) -> None:
        """Return once every block recorded so far (``memory_pending`` when called) is settled. One small read when
        up to date. Blocks applied meanwhile are left to the worker (a reader never chases a running engine).
        ``settling``: the read needs settling only, so the worker settles without indexing meanwhile (false from
        :meth:`indexed`, which needs both).

        Raises:
            what settling raised, when the worker's step failed meanwhile (the read runs the step to report it).
        """
        top = scalar(self.db.reader(), "SELECT max(block_number) FROM memory_pending")
        if top is None:
            return
        self._wait(lambda conn: self._behind(conn, top), lambda: self._settle_inline(top), settling=settling)

    def indexed(self) -> None:
        """:meth:`settled`, then return once every chain-derived item committed so far is indexed (tags, FTS5,
        embedding queue). Three small reads when up to date."""
        self.settled(settling=False)
        top = scalar(self.db.reader(), "SELECT max(n) FROM memory_items")

        def behind(conn: Any) -> bool:
            return top is not None and scalar(conn, "SELECT indexed_n FROM memory_state WHERE id = 1") < top

        def inline() -> None:
            while self.ingest.index_episodes():
                pass

        self._wait(behind, inline)

    def _settle_inline(self, top: int) -> None:
        while self.ingest.settle(until=top):
            pass

    def _wait(self, behind: Callable[[Any], bool], inline: Callable[[], None], settling: bool = False) -> None:
        """Wait until ``behind`` (asked on this thread's reader connection) is false, waking the worker (which does
        not yield to the engine meanwhile and, when ``settling`` (the read needs settling only), settles without
        indexing); ``inline``: the step run here instead when there is no worker thread."""
        conn = self.db.reader()
        if not behind(conn):
            return
        if not self.running or threading.current_thread() is self.thread:
            inline()  # no worker thread (or this is it): do its step here
            return
        errors = self.errors
        with self._stepped:
            self._readers += 1
            self._settle_readers += settling
        try:
            while behind(conn):
                if self.errors != errors or not self.running:
                    inline()  # the worker failed or stopped: run the step here, so its error reaches the read
                    return
                self._reader_arrived.set()
                self.wake()
                with self._stepped:
                    self._stepped.wait(WAIT_POLL_S)
        finally:
            with self._stepped:
                self._readers -= 1
                self._settle_readers -= settling
