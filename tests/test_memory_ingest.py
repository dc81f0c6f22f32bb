"""The memory plugin's chain hook records only the transactions that touch agents (``ingest.Recorded``); settling
renders them from the restored block exactly as from the whole block. Checked on the 10 real mainnet blocks with
the rag plugin's decoder and the plain rendering, and end to end: the chain items of a recorded-then-settled block
equal those of the same block settled from a record of every transaction."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monmouth.types import Chain, ChainCommitted, ChainReorged
from monmouth_memory import ingest, merkle
from monmouth_rag.plugin import render_transaction
from tests.chains import address, chain, extend, load_mainnet_blocks
from tests.memory_helpers import close, make_memory_engine, settle

BLOCKS = load_mainnet_blocks()  # ../shared/data/mainnet: 10 verified blocks with every receipt


def first_log_index(block, i: int) -> int:
    return sum(len(r.logs) for r in block.receipts[:i])


@pytest.mark.parametrize("block", BLOCKS, ids=[str(b.number) for b in BLOCKS])
def test_a_restored_block_renders_its_recorded_transactions_like_the_whole_block(block):
    rng = random.Random(block.number)
    n = len(block.transactions)
    for positions in ([0], [n - 1], sorted(rng.sample(range(n), min(n, 7))), list(range(n))):
        restored, kept = ingest.restore_block(ingest._record(block, positions))
        assert kept == set(positions)
        assert (restored.number, restored.hash, restored.timestamp) == (block.number, block.hash, block.timestamp)
        for p in positions:
            assert restored.transactions[p] == block.transactions[p]
            assert restored.receipts[p] == block.receipts[p]
            assert first_log_index(restored, p) == first_log_index(block, p)
            assert render_transaction(restored, p) == render_transaction(block, p)
            assert ingest.plain_render_tx(restored, p) == ingest.plain_render_tx(block, p)


def test_a_block_with_fewer_receipts_than_transactions_round_trips():
    block = BLOCKS[-1]
    short = type(block)(block.number, block.hash, block.parent_hash, block.timestamp, block.beneficiary,
                        block.gas_limit, block.gas_used, block.base_fee_per_gas, block.transactions,
                        block.receipts[:3])
    positions = [1, 5, len(block.transactions) - 1]
    restored, _ = ingest.restore_block(ingest._record(short, positions))
    assert restored.receipts[1] == block.receipts[1] and len(restored.receipts) == 3
    assert restored.transactions[5] == block.transactions[5]


def test_chain_items_of_a_mainnet_block_do_not_depend_on_what_else_was_recorded(tmp_path, monkeypatch, storage_of):
    """Agents are addresses that the block's transactions and ERC-20/721 transfers touch; the items (ids with
    block-wide log indexes, texts, commitments) must be those of the whole block."""
    block = max(BLOCKS, key=lambda b: len(b.transactions))
    senders = sorted({tx.sender for tx in block.transactions})
    agents = ["0x" + a.hex() for a in random.Random(1).sample(senders, 5)]
    rows = []
    for name, whole in (("sparse", False), ("whole", True)):
        e, p = make_memory_engine(storage_of(f"{name}.sqlite"), {"key_dir": str(tmp_path / "keys"), "agents": agents})
        try:
            with monkeypatch.context() as m:
                if whole:  # record every transaction, as if every one touched an agent
                    m.setattr(ingest, "_record", lambda b, _positions, real=ingest._record:
                              real(b, list(range(len(b.transactions)))))
                e.apply(ChainCommitted(Chain((block,))))
            rec = e.conn.execute("SELECT length(block) FROM memory_pending").fetchone()[0]
            settle(e.conn)
            rows.append((rec, e.conn.execute("SELECT n, id, agent, nonce, ct, commitment FROM memory_items "
                                             "ORDER BY n").fetchall()))
        finally:
            close(e)
    (sparse_bytes, sparse), (whole_bytes, whole_rows) = rows
    assert sparse and sparse == whole_rows
    assert sparse_bytes * 5 < whole_bytes  # a few transactions recorded, not the block


def test_settling_commits_after_its_time_budget_and_catches_up_in_order(tmp_path, monkeypatch, storage_of):
    e, p = make_memory_engine(storage_of("db.sqlite"), {"key_dir": str(tmp_path / "keys"),
                                                       "agents": ["0x" + bytes(19).hex() + "01"]})
    try:
        e.apply(ChainCommitted(chain(extend(None, 5, number=1, n_txs=4))))
        monkeypatch.setattr(ingest, "SETTLE_BUDGET_S", 0.0)  # every block takes longer than that
        assert ingest.settle(p.memory) == 1
        assert ingest.settle(p.memory, until=3) == 1
        assert ingest.settle(p.memory, until=2) == 0  # blocks 1 and 2 are settled
        assert [r[0] for r in e.conn.execute("SELECT block_number FROM memory_pending ORDER BY 1")] == [3, 4, 5]
        monkeypatch.setattr(ingest, "SETTLE_BUDGET_S", 10.0)
        assert ingest.settle(p.memory) == 3
        assert e.conn.execute("SELECT max(block_number) FROM memory_blocks").fetchone()[0] == 5
    finally:
        close(e)


def test_a_catch_up_settle_makes_way_for_a_waiting_api_write(tmp_path, monkeypatch, storage_of):
    """The worker's catch-up transactions (a long budget) commit after their current block while an API write waits
    for the write lock (``ChainIngest.writing``, around every durable write of the plugin), as a short one does."""
    e, p = make_memory_engine(storage_of("db.sqlite"), {"key_dir": str(tmp_path / "keys"),
                                                       "agents": ["0x" + bytes(19).hex() + "01"]})
    try:
        e.apply(ChainCommitted(chain(extend(None, 6, number=1, n_txs=4))))
        monkeypatch.setattr(ingest, "SETTLE_BUDGET_S", 0.0)
        mem = p.memory
        seen = []
        real = mem.ingest.writing

        def writing():
            seen.append(mem.ingest.writers)
            return real()

        monkeypatch.setattr(mem.ingest, "writing", writing)
        mem.store(bytes(19) + b"\x01", "semantic", "an API write", tags=["t"])
        assert seen == [0] and mem.ingest.writers == 0  # the store went through writing() once, and left the count
        with real():  # an API write waiting for the lock
            assert mem.ingest.settle(budget=10.0) == 1
            assert mem.ingest.settle(budget=10.0) == 1
        assert mem.ingest.settle(budget=10.0) == 4  # none waits: the whole backlog in one transaction
        assert e.conn.execute("SELECT max(block_number) FROM memory_blocks").fetchone()[0] == 6
    finally:
        close(e)


@settings(max_examples=300, deadline=None)
@given(meta=st.dictionaries(st.text(), st.one_of(st.text(), st.integers(-(2**63), 2**64 - 1), st.none())))
def test_episode_metadata_json_is_the_canonical_json_of_commitments(meta):
    """Settling encodes an episode's metadata (strings, integers, nulls) with msgspec: the bytes must be
    :func:`.merkle.canonical_json`'s, which commitments (and exports, verified on import) are computed over."""
    assert ingest._META_JSON.encode(meta).decode() == merkle.canonical_json(meta)


INDEX_TABLES = {"memory_tags": "SELECT agent, tag, n FROM memory_tags",
                "memory_fts": "SELECT n, tokens FROM memory_fts", "memory_embed_queue": "SELECT n FROM memory_embed_queue",
                "memory_state": "SELECT indexed_n FROM memory_state"}


def index_rows(conn) -> dict[str, list[tuple]]:
    fts = "SELECT n, tokens FROM memory_fts" if getattr(conn, "backend", "sqlite") == "postgres" else \
        "SELECT rowid, tokens FROM memory_fts"
    return {t: sorted(tuple(r) for r in conn.execute(fts if t == "memory_fts" else q).fetchall())
            for t, q in INDEX_TABLES.items()}


def test_settling_indexes_its_items_in_its_transaction_unless_indexing_is_behind(tmp_path, storage_of):
    """The plugin's own settle transaction writes its chain items' tags, keyed tokens and embedding-queue rows
    (the same rows ``index_episodes`` writes from the stored ciphertexts) and moves the watermark; settling inside
    another transaction (a write of the plugin, another plugin's chain hook), or the worker's while the engine is
    busy (``index=False``), leaves them to ``index_episodes``, and while that backlog lasts the plugin's settling
    does not index either (the watermark only moves up)."""
    agents = ["0x" + address(i).hex() for i in range(8)]  # every account of the synthetic blocks
    blocks = extend(None, 3, number=1, n_txs=4)
    result = []
    for name in ("inline", "other transaction", "engine busy"):
        e, p = make_memory_engine(storage_of(f"{name}.sqlite"), {"key_dir": str(tmp_path / "keys"), "agents": agents,
                                                                "embed": False})
        mem = p.memory
        try:
            e.apply(ChainCommitted(chain(blocks[:1])))
            if name == "inline":
                assert ingest.settle(mem) == 1
                assert index_rows(e.conn)["memory_fts"] and mem.ingest.index_episodes() == 0  # nothing left
                e.apply(ChainCommitted(chain(blocks[1:2])))
            else:
                if name == "engine busy":
                    assert mem.ingest.settle(index=False) == 1  # what the worker does while blocks keep coming
                else:
                    with mem.ingest.write() as w:  # as a write of the plugin settles first
                        mem.ensure_settled(w)
                assert not index_rows(e.conn)["memory_fts"]
                e.apply(ChainCommitted(chain(blocks[1:2])))
                assert ingest.settle(mem) == 1  # behind: block 2 is not indexed either
                assert not index_rows(e.conn)["memory_fts"]
                assert mem.ingest.index_episodes() > 0
            e.apply(ChainCommitted(chain(blocks[2:])))
            assert ingest.settle(mem) > 0
            assert mem.ingest.index_episodes() == 0  # caught up, so settling indexed the rest
            result.append(index_rows(e.conn))
        finally:
            close(e)
    inline_rows = result[0]
    assert result == [inline_rows] * 3
    n_items = len(inline_rows["memory_embed_queue"])
    assert n_items >= 24 and len(inline_rows["memory_fts"]) == n_items
    assert len(inline_rows["memory_tags"]) == 3 * n_items  # chain, transaction or transfer, the direction
    assert inline_rows["memory_state"] == [(max(r[0] for r in inline_rows["memory_embed_queue"]),)]


SCHEMA4 = Path(__file__).parent / "fixtures" / "memory_schema4"


def test_a_schema_4_database_upgrades_and_reverts_blocks_journaled_before_it(tmp_path):
    """Blocks applied before migration 5 carry undo data for the leaf, mark and block rows that are derived tables
    now; reverting them after the upgrade (journal inverse, engine trim, revert hook) must not conflict, and must
    leave what a fresh run of the final chain gives."""
    shutil.copytree(SCHEMA4, tmp_path / "old", ignore=shutil.ignore_patterns("*.md", "*.py"))
    shutil.copytree(SCHEMA4 / "keys", tmp_path / "keys")
    a1, a2 = address(1), address(2)
    cfg = {"key_dir": str(tmp_path / "keys"), "agents": ["0x" + a1.hex(), "0x" + a2.hex()]}
    bs = extend(None, 6, number=1, salt="schema4", n_txs=3)
    e, p = make_memory_engine(tmp_path / "old" / "db.sqlite", cfg)  # runs migration 5
    ref = None
    try:
        mem = p.memory
        assert e.head == bs[5].ref
        # Roots of blocks settled by the old code are unchanged (the value the schema-4 code computed).
        assert mem.global_root(6)["root"] == "0xdeb06f9e074c55aead9da53e2657f4aed5c5397f4ee240ef69a992a203959a34"
        kept = [i for i in mem.list(a1, origin="api") if i["content"] == "kept through the upgrade"]
        assert kept and kept[0]["anchor"]["block"] == 3
        fork = extend(bs[3], 3, salt="fork", n_txs=3)
        e.apply(ChainReorged(chain(bs[4:6]), chain(fork)))  # undo data written at schema 4
        e.apply(ChainCommitted(chain(extend(fork[-1], 1, salt="after", n_txs=0))))
        ref, _ = make_memory_engine(tmp_path / "ref.sqlite", cfg)
        ref.apply(ChainCommitted(chain(bs[:4] + fork)))
        chain_rows = ("SELECT n, id, agent, nonce, ct, commitment FROM memory_items WHERE origin = 1 ORDER BY n",
                      "SELECT l.* FROM memory_leaves l JOIN memory_items i ON i.id = l.item_id AND i.origin = 1 "
                      "ORDER BY 1, 2, 3")
        settle(e.conn)
        settle(ref.conn)
        for q in chain_rows:
            assert e.conn.execute(q).fetchall() == ref.conn.execute(q).fetchall(), q
        # API memories survive, anchored on the new chain; every root is that of its leaves.
        for agent in (a1, a2):
            for it in mem.list(agent, origin="api"):
                assert it["anchor"] is not None and not it["pending"]
                assert e.canonical(it["anchor"]["block"]).hash.hex() == it["anchor"]["hash"][2:]
            leaves = [bytes.fromhex(x["leaf"][2:]) for x in mem.leaves(agent)["leaves"]]
            assert mem.agent_root(agent)["root"] == "0x" + merkle.root_of(leaves).hex()
        assert not any(i["content"] == "deleted at block 6" for i in mem.list(a1))
    finally:
        close(e)
        if ref is not None:
            close(ref)
