"""The engine's invariants, on real SQLite files and real PostgreSQL databases (``both_engine_factory`` runs a test on
each backend): exactly once, exact reverts, continuity, bounded undo."""

from __future__ import annotations

import apsw
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monmouth import hookimpl
from monmouth.engine import Cursor, canonical_hash, read_cursor
from monmouth.errors import ContinuityError, PluginError, ReorgTooDeepError
from monmouth.journal import JournalConflictError, RedactionError, redact
from monmouth.types import Block, ChainCommitted, ChainReorged, ChainReverted
from tests.chains import chain, extend
from tests.plugins import ledger

PLUGIN_TABLES = ("ledger_transfers", "ledger_balances", "ledger_block_stats")


class Tally:
    """Writes through ``executemany``: an upsert whose keys repeat within a block (each block gives key
    ``number % 3`` twice, so on PostgreSQL its runs of distinct keys go as one call of pg_batch's function, a row
    updated in several of its statements), then a ``DELETE`` of the keys counted past 6 (re-inserted later)."""

    monmouth_backends = hookimpl(lambda self: ("sqlite", "postgres"))
    monmouth_migrations = hookimpl(lambda self: [
        "CREATE TABLE tally_counts (k BIGINT PRIMARY KEY, n BIGINT NOT NULL, total BIGINT NOT NULL)"])

    @hookimpl
    def monmouth_block_applied(self, conn, block, notification):
        rows = [(tx.value % 3, tx.value % 1000) for tx in block.transactions]
        conn.executemany("INSERT INTO tally_counts (k, n, total) VALUES (?, 1, ?) ON CONFLICT (k) DO UPDATE SET "
                         "n = tally_counts.n + 1, total = tally_counts.total + excluded.total",
                         [(block.number % 3, 1), *rows, (block.number % 3, 2)])
        conn.execute("DELETE FROM tally_counts WHERE n > 6")


#: The property tests' plugins and the tables they compare.
PROPERTY_PLUGINS = {"ledger": ledger, "tally": Tally()}
PROPERTY_TABLES = (*PLUGIN_TABLES, "tally_counts")


def dump(conn, tables: tuple[str, ...] = PLUGIN_TABLES) -> dict[str, list[tuple]]:
    return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall()) for t in tables}


def reference(engine_factory, blocks: list[Block], name: str, plugins: dict[str, object] | None = None,
              tables: tuple[str, ...] = PLUGIN_TABLES) -> dict[str, list[tuple]]:
    """What applying only ``blocks`` (the final canonical chain) to an empty database produces."""
    ref = engine_factory(name, plugins=plugins)
    if blocks:
        ref.apply(ChainCommitted(chain(blocks)))
    return dump(ref.conn, tables)


# ------------------------------------------------------------------------------------------- property-based

op = st.one_of(
    st.tuples(st.just("commit"), st.integers(1, 4)),
    st.tuples(st.just("reorg"), st.integers(1, 6), st.integers(1, 6)),
    st.tuples(st.just("revert"), st.integers(1, 6)),
    st.tuples(st.just("redeliver")),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(op, min_size=1, max_size=14), txs=st.integers(0, 4))
def test_random_commits_reorgs_reverts_equal_fresh_index_of_final_chain(both_engine_factory, ops, txs):
    import uuid

    run = uuid.uuid4().hex
    engine = both_engine_factory(f"live-{run}.sqlite", plugins=PROPERTY_PLUGINS)
    canonical: list[Block] = extend(None, 3, number=1, salt=run, n_txs=txs)
    engine.apply(ChainCommitted(chain(canonical)))
    delivered: list = []
    for i, o in enumerate(ops):
        kind = o[0]
        if kind == "commit":
            new = extend(canonical[-1], o[1], salt=(run, i), n_txs=txs)
            n = ChainCommitted(chain(new))
            canonical += new
        elif kind in ("reorg", "revert"):
            depth = min(o[1], len(canonical) - 1)
            if depth < 1:
                continue
            old = canonical[-depth:]
            base = canonical[:-depth]
            if kind == "reorg":
                new = extend(base[-1], o[2], salt=(run, i, "fork"), n_txs=txs)
                n = ChainReorged(chain(old), chain(new))
                canonical = base + new
            else:
                n = ChainReverted(chain(old))
                canonical = base
        else:  # a source re-sends its newest notification (its ack was lost): skipped, nothing written
            if not delivered:
                continue
            before, head = dump(engine.conn, PROPERTY_TABLES), engine.head
            assert not engine.apply(delivered[-1]).applied
            assert dump(engine.conn, PROPERTY_TABLES) == before and engine.head == head
            continue
        res = engine.apply(n)
        assert res.applied
        delivered.append(n)
        assert engine.head == canonical[-1].ref
    assert dump(engine.conn, PROPERTY_TABLES) == reference(both_engine_factory, canonical, f"ref-{run}.sqlite",
                                                           PROPERTY_PLUGINS, PROPERTY_TABLES)
    # The engine's block table is exactly the canonical chain.
    stored = engine.conn.execute("SELECT number, hash FROM monmouth_blocks ORDER BY number").fetchall()
    assert stored == [(b.number, b.hash) for b in canonical]


def notifications_for(ops, txs: int, run: str) -> tuple[list, list[Block]]:
    """The notifications ``ops`` describe after three genesis-side blocks, and the final canonical chain."""
    canonical: list[Block] = extend(None, 3, number=1, salt=run, n_txs=txs)
    ns: list = [ChainCommitted(chain(canonical))]
    for i, o in enumerate(ops):
        kind = o[0]
        if kind == "commit":
            new = extend(canonical[-1], o[1], salt=(run, i), n_txs=txs)
            ns.append(ChainCommitted(chain(new)))
            canonical = canonical + new
        elif kind in ("reorg", "revert"):
            depth = min(o[1], len(canonical) - 1)
            if depth < 1:
                continue
            old, base = canonical[-depth:], canonical[:-depth]
            if kind == "reorg":
                new = extend(base[-1], o[2], salt=(run, i, "fork"), n_txs=txs)
                ns.append(ChainReorged(chain(old), chain(new)))
                canonical = base + new
            else:
                ns.append(ChainReverted(chain(old)))
                canonical = base
        else:
            ns.append(ns[-1])  # a re-delivery: skipped
    return ns, canonical


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(op, min_size=1, max_size=14), txs=st.integers(0, 3),
       cuts=st.lists(st.integers(1, 6), min_size=1, max_size=16))
def test_group_commit_in_random_batches_equals_fresh_index(both_engine_factory, ops, txs, cuts):
    """``apply_many`` over any partition of the stream gives the same tables, head and tokens as one at a time."""
    import uuid

    run = uuid.uuid4().hex
    ns, canonical = notifications_for(ops, txs, run)
    engine = both_engine_factory(f"batch-{run}.sqlite", plugins=PROPERTY_PLUGINS)
    items = [(n, {"seq": i}) for i, n in enumerate(ns, 1)]
    i = 0
    for size in cuts * (len(items) // len(cuts) + 1):
        if i >= len(items):
            break
        results, error = engine.apply_many(items[i:i + size])
        assert error is None and len(results) == len(items[i:i + size])
        i += size
    assert engine.head == canonical[-1].ref and engine.source_token == {"seq": len(items)}
    assert dump(engine.conn, PROPERTY_TABLES) == reference(both_engine_factory, canonical, f"batch-ref-{run}.sqlite",
                                                           PROPERTY_PLUGINS, PROPERTY_TABLES)


def test_group_commit_commits_the_prefix_before_a_failure_and_stops(both_engine_factory, tmp_path):
    e = both_engine_factory("gc.sqlite")
    bs = extend(None, 6, number=1, n_txs=2)
    good = [ChainCommitted(chain(bs[:2])), ChainCommitted(chain(bs[2:3]))]
    gap = ChainCommitted(chain(bs[4:5]))
    results, error = e.apply_many([(good[0], 1), (good[1], 2), (gap, 3), (ChainCommitted(chain(bs[3:4])), 4)])
    assert [r.head for r in results] == [bs[1].ref, bs[2].ref]
    assert isinstance(error, ContinuityError) and e.head == bs[2].ref and e.source_token == 2
    assert dump(e.conn) == reference(both_engine_factory, bs[:3], "gc-ref.sqlite")

    def decoding():  # an iterator that fails while producing its second item, as a lazy decoder does
        yield ChainCommitted(chain(bs[3:4])), 4
        raise ValueError("body does not decode")

    results, error = e.apply_many(decoding())
    assert len(results) == 1 and isinstance(error, ValueError) and e.head == bs[3].ref
    e.close()
    reopened = both_engine_factory("gc.sqlite")  # the committed prefix is durable
    assert reopened.head == bs[3].ref and reopened.source_token == 4 and reopened.notifications_seen == 3


def test_head_and_token_are_published_only_after_the_commit(both_engine_factory):
    """Other threads (the API, a source reconnecting) read ``head``/``source_token``: never a state not yet durable."""
    seen: list = []

    class Peek:
        monmouth_backends = hookimpl(lambda self: ("sqlite", "postgres"))

        engine = None

        @hookimpl
        def monmouth_block_applied(self, conn, block, notification):
            seen.append((block.number, self.engine.head, self.engine.source_token))

    peek = Peek()
    e = both_engine_factory(plugins={"ledger": ledger, "peek": peek})
    peek.engine = e
    bs = extend(None, 3, number=1, n_txs=1)
    e.apply(ChainCommitted(chain(bs[:1])), "t1")
    results, error = e.apply_many([(ChainCommitted(chain(bs[1:2])), "t2"), (ChainCommitted(chain(bs[2:3])), "t3")])
    assert error is None and len(results) == 2
    assert seen == [(1, None, None), (2, bs[0].ref, "t1"), (3, bs[0].ref, "t1")]
    assert e.head == bs[2].ref and e.source_token == "t3" and e.notifications_seen == 3


# ------------------------------------------------------------------------------------------- examples


def test_redelivery_is_skipped_and_overlap_applies_only_new_blocks(both_engine_factory):
    e = both_engine_factory()
    bs = extend(None, 6, number=1, n_txs=3)
    assert e.apply(ChainCommitted(chain(bs[:4]))).committed == 4
    again = e.apply(ChainCommitted(chain(bs[:4])))
    assert not again.applied
    overlap = e.apply(ChainCommitted(chain(bs[2:])))
    assert overlap.applied and overlap.committed == 2
    assert e.conn.execute("SELECT count(*) FROM ledger_transfers").fetchone()[0] == 18
    assert e.notifications_seen == 2


def test_gap_is_refused_naming_both_hashes_and_nothing_moves(both_engine_factory):
    e = both_engine_factory()
    bs = extend(None, 5, number=1)
    e.apply(ChainCommitted(chain(bs[:2])))
    before = dump(e.conn)
    with pytest.raises(ContinuityError) as ei:
        e.apply(ChainCommitted(chain(bs[3:])))
    msg = str(ei.value)
    assert "gap" in msg and bs[1].hash.hex() in msg and bs[3].hash.hex() in msg and bs[2].hash.hex() in msg
    assert e.head == bs[1].ref and dump(e.conn) == before
    assert e.conn.execute("SELECT number, hash FROM monmouth_cursor").fetchone() == (2, bs[1].hash)


def test_unknown_fork_is_refused(both_engine_factory):
    e = both_engine_factory()
    bs = extend(None, 3, number=1)
    e.apply(ChainCommitted(chain(bs)))
    other = extend(bs[0], 3, salt="other")
    with pytest.raises(ContinuityError, match="unknown fork"):
        e.apply(ChainReorged(chain(other[:2]), chain(extend(bs[0], 1, salt="x"))))
    with pytest.raises(ContinuityError, match="unknown fork"):
        e.apply(ChainCommitted(chain(other[1:])))
    assert e.head == bs[-1].ref


def test_reorg_deeper_than_undo_window_is_refused_whole(both_engine_factory):
    e = both_engine_factory(undo_window=4)
    bs = extend(None, 12, number=1, n_txs=2)
    e.apply(ChainCommitted(chain(bs)))
    before = dump(e.conn)
    fork = extend(bs[5], 3, salt="deep")
    with pytest.raises(ReorgTooDeepError, match="undo data is held only from block 9"):
        e.apply(ChainReorged(chain(bs[6:]), chain(fork)))
    assert dump(e.conn) == before and e.head == bs[-1].ref
    # Within the window, it works.
    fork = extend(bs[8], 2, salt="ok")
    assert e.apply(ChainReorged(chain(bs[9:]), chain(fork))).reverted == 3


def test_reorg_below_everything_finalized_says_no_undo_data_is_held(both_engine_factory):
    """Everything up to the head finalized (a node that called its tip finalized): the refusal says so, instead of
    'held only from block None', and names the first block it cannot revert."""
    e = both_engine_factory()
    bs = extend(None, 6, number=1)
    e.apply(ChainCommitted(chain(bs)))
    e.set_finalized(6)
    with pytest.raises(ReorgTooDeepError, match="no undo data is held .every block up to the head 6") as err:
        e.apply(ChainReorged(chain(bs[3:]), chain(extend(bs[2], 4, salt="fake"))))
    assert err.value.depth == 3 and err.value.block == bs[3].ref and "None" not in str(err.value).split("(final")[0]
    assert e.head == bs[-1].ref


def test_finalized_prunes_undo_and_calls_hook(both_engine_factory, tmp_path):
    seen = []

    class Watcher:
        monmouth_backends = hookimpl(lambda self: ("sqlite", "postgres"))

        @hookimpl
        def monmouth_finalized(self, conn, number):
            seen.append(number)

    e = both_engine_factory(plugins={"ledger": ledger, "watcher": Watcher()})
    bs = extend(None, 10, number=1)
    e.apply(ChainCommitted(chain(bs)))
    assert e.set_finalized(6)
    assert not e.set_finalized(5)
    assert seen == [6]
    assert e.oldest_revertible() == 7
    with pytest.raises(ReorgTooDeepError):
        e.apply(ChainReverted(chain(bs[5:])))
    e.apply(ChainReverted(chain(bs[6:])))
    assert e.head == bs[5].ref


class Exploding:
    """Raises on a chosen block, after writing to its own table: the write must be rolled back too."""

    def __init__(self, at: int) -> None:
        self.at = at

    @hookimpl
    def monmouth_migrations(self):
        return ["CREATE TABLE boom_rows (n INTEGER PRIMARY KEY)"]

    @hookimpl
    def monmouth_backends(self):
        return ("sqlite", "postgres")

    @hookimpl
    def monmouth_block_applied(self, conn, block, notification):
        conn.execute("INSERT INTO boom_rows (n) VALUES (?)", (block.number,))
        if block.number == self.at:
            raise RuntimeError("kaboom")


def test_failing_plugin_rolls_back_every_plugin_and_is_named(both_engine_factory):
    e = both_engine_factory(plugins={"ledger": ledger, "boom": Exploding(at=3)})
    bs = extend(None, 4, number=1, n_txs=2)
    e.apply(ChainCommitted(chain(bs[:1])))
    before = dump(e.conn)
    with pytest.raises(PluginError) as ei:
        e.apply(ChainCommitted(chain(bs[1:])))
    assert ei.value.plugin == "boom" and "kaboom" in str(ei.value)
    assert dump(e.conn) == before
    assert e.conn.execute("SELECT count(*) FROM boom_rows").fetchone()[0] == 1
    assert e.head == bs[0].ref


def test_group_commit_rolls_back_a_failing_first_or_later_item_whole(both_engine_factory):
    """The first item of a batch runs without a savepoint (the transaction is its savepoint): when it fails after
    plugins wrote, the batch returns the error, writes nothing and leaves the engine usable; a later item that fails
    is rolled back to its savepoint and the items before it commit."""
    e = both_engine_factory(plugins={"ledger": ledger, "boom": Exploding(at=3)})
    bs = extend(None, 4, number=1, n_txs=2)
    e.apply(ChainCommitted(chain(bs[:1])), "t1")
    before = dump(e.conn)
    results, error = e.apply_many([(ChainCommitted(chain(bs[1:3])), "t2"), (ChainCommitted(chain(bs[3:4])), "t3")])
    assert results == [] and isinstance(error, PluginError) and error.plugin == "boom"
    assert not e.conn.in_transaction and dump(e.conn) == before and e.head == bs[0].ref and e.source_token == "t1"
    assert e.conn.execute("SELECT n FROM boom_rows").fetchall() == [(1,)]

    results, error = e.apply_many([(ChainCommitted(chain(bs[1:2])), "t2"), (ChainCommitted(chain(bs[2:4])), "t3")])
    assert [r.head for r in results] == [bs[1].ref] and isinstance(error, PluginError)
    assert dump(e.conn) == reference(both_engine_factory, bs[:2], "first-ref.sqlite")
    assert e.conn.execute("SELECT n FROM boom_rows").fetchall() == [(1,), (2,)]
    assert e.head == bs[1].ref and e.source_token == "t2" and read_cursor(e.conn).head == bs[1].ref


def test_revert_hook_sees_blocks_newest_first_after_journal_restore(both_engine_factory):
    order = []

    class Rev:
        monmouth_backends = hookimpl(lambda self: ("sqlite", "postgres"))

        @hookimpl
        def monmouth_block_reverted(self, conn, block, notification):
            n = conn.execute("SELECT count(*) FROM ledger_transfers WHERE block_number >= ?", (block.number,)).fetchone()
            order.append((block.number, n[0]))

    e = both_engine_factory(plugins={"ledger": ledger, "rev": Rev()})
    bs = extend(None, 5, number=1, n_txs=2)
    e.apply(ChainCommitted(chain(bs)))
    e.apply(ChainReverted(chain(bs[2:])))
    assert order == [(5, 0), (4, 0), (3, 0)]


def test_cursor_is_durable_across_reopen(engine_factory):
    e = engine_factory("durable.sqlite")
    bs = extend(None, 3, number=1)
    e.apply(ChainCommitted(chain(bs)))
    e2 = engine_factory("durable.sqlite")
    assert e2.head == bs[-1].ref and e2.notifications_seen == 1
    assert not e2.apply(ChainCommitted(chain(bs))).applied


# ------------------------------------------------------------------------------------------- public API for plugins


def recorded_senders(conn, backend: str) -> set[bytes]:
    """The senders of ledger transfers the undo data still records (SQLite changesets, PostgreSQL undo rows)."""
    if backend == "postgres":
        return {r[0] for r in conn.execute("SELECT DISTINCT (jsonb_populate_record(NULL::ledger_transfers, "
                                           "coalesce(new, old))).sender FROM monmouth_undo WHERE tbl = ?",
                                           ("ledger_transfers",))}
    return {ch.new[2] for (cs,) in conn.execute("SELECT changeset FROM monmouth_blocks WHERE changeset IS NOT NULL")
            for ch in apsw.Changeset.iter(cs) if ch.name == "ledger_transfers" and ch.new}


def undo_data(conn, backend: str) -> list[tuple]:
    """Every block's undo data, as stored."""
    if backend == "postgres":
        return conn.execute("SELECT block, seq, tbl, op, old::text, new::text FROM monmouth_undo ORDER BY seq").fetchall()
    return conn.execute("SELECT number, changeset FROM monmouth_blocks ORDER BY number").fetchall()


def _forget_sender(conn, sender: bytes, *, redacting: bool) -> int:
    """What a plugin's forget does: delete the rows in its own write transaction, and redact them from the undo
    data in the same transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("DELETE FROM ledger_transfers WHERE sender = ?", (sender,))
        dropped = redact(conn, {"ledger_transfers": "sender"}, sender) if redacting else 0
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return dropped


def _six_blocks(engine_factory, name: str):
    """An engine with six revertible blocks of ledger transfers, a second connection, and a sender of block 5."""
    e = engine_factory(name)
    bs = extend(None, 6, number=1, n_txs=3, salt="redact")
    e.apply(ChainCommitted(chain(bs)))
    conn = e.db.connect()
    sender = conn.execute("SELECT sender FROM ledger_transfers WHERE block_number = 5").fetchone()[0]
    return e, bs, conn, sender


def test_a_revert_after_redaction_restores_exactly_except_the_redacted_rows(both_engine_factory):
    e, bs, conn, sender = _six_blocks(both_engine_factory, "redacted.sqlite")
    recorded = conn.execute("SELECT count(*) FROM ledger_transfers WHERE sender = ?", (sender,)).fetchone()[0]
    assert recorded >= 1

    assert _forget_sender(conn, sender, redacting=True) == recorded  # every block is still revertible here
    assert sender not in recorded_senders(conn, both_engine_factory.backend)
    e.apply(ChainReverted(chain(bs[3:])))  # no conflict: the undo no longer names the deleted rows

    want = reference(both_engine_factory, bs[:3], "redacted-ref.sqlite")
    want["ledger_transfers"] = [r for r in want["ledger_transfers"] if r[2] != sender]
    assert dump(e.conn) == want
    assert e.conn.execute("SELECT count(*) FROM ledger_transfers WHERE sender = ?", (sender,)).fetchone()[0] == 0
    conn.close()


def test_without_redaction_the_same_revert_conflicts(both_engine_factory):
    """The control: rows deleted outside the chain hooks and left in the undo data make the revert refuse."""
    e, bs, conn, sender = _six_blocks(both_engine_factory, "unredacted.sqlite")
    _forget_sender(conn, sender, redacting=False)
    head = e.head
    with pytest.raises(JournalConflictError, match="ledger_transfers"):
        e.apply(ChainReverted(chain(bs[3:])))
    assert e.head == head
    conn.close()


def test_redact_refuses_what_it_cannot_redact_and_changes_nothing(both_engine_factory):
    e = both_engine_factory("refused.sqlite")
    bs = extend(None, 3, number=1, n_txs=2)
    e.apply(ChainCommitted(chain(bs)))
    conn = e.db.connect()
    before = undo_data(conn, both_engine_factory.backend)
    with pytest.raises(RedactionError, match="inside the write transaction"):
        redact(conn, {"ledger_transfers": "sender"}, b"x")
    conn.execute("BEGIN IMMEDIATE")
    for columns, message in (({"monmouth_blocks": "hash"}, "engine table"), ({"nope": "x"}, "no table 'nope'"),
                             ({"ledger_transfers": "agent"}, "has no column 'agent'")):
        with pytest.raises(RedactionError, match=message):
            redact(conn, columns, b"x")
    assert redact(conn, {"ledger_transfers": "sender"}, b"\x00" * 20) == 0  # matches nothing: nothing rewritten
    conn.execute("COMMIT")
    assert undo_data(conn, both_engine_factory.backend) == before
    conn.close()


def test_read_cursor_is_the_engines_durable_position(both_engine_factory):
    e = both_engine_factory("cursor.sqlite")
    conn = e.db.connect()
    assert read_cursor(conn) == Cursor(None, None, 0, 0, None)
    bs = extend(None, 4, number=1)
    e.apply(ChainCommitted(chain(bs[:3])), token={"epoch": 1, "seq": 7})
    e.apply(ChainReorged(chain(bs[2:3]), chain(extend(bs[1], 2, salt="fork"))))
    e.set_finalized(2)
    c = read_cursor(conn)
    assert c == Cursor(e.head, 2, 2, 1, {"epoch": 1, "seq": 7})
    assert c.head is not None and c.head.number == 4
    conn.close()


def test_canonical_hash_follows_reorgs(both_engine_factory):
    """``canonical_hash``: the plugins' way to ask whether a block they recorded is still canonical."""
    e = both_engine_factory("canonical.sqlite")
    conn = e.db.connect()
    assert canonical_hash(conn, 1) is None
    bs = extend(None, 3, number=1)
    e.apply(ChainCommitted(chain(bs)))
    assert [canonical_hash(conn, n) for n in (1, 2, 3, 4)] == [bs[0].hash, bs[1].hash, bs[2].hash, None]
    fork = extend(bs[0], 1, salt="fork")
    e.apply(ChainReorged(chain(bs[1:]), chain(fork)))
    assert [canonical_hash(conn, n) for n in (1, 2, 3)] == [bs[0].hash, fork[0].hash, None]
    conn.close()
