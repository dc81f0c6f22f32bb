"""Checkpoints (apsw online backup): consistent while the engine runs; restore + re-delivery equals an
uninterrupted run; list/prune; automatic checkpoints from monmouth_notification_committed."""

from __future__ import annotations

import threading
import time

import apsw
import pytest

from monmouth.types import ChainCommitted, ChainReorged
from monmouth_memory import checkpoint
from monmouth_memory.schema import MIGRATIONS
from tests.chains import address, chain, extend
from tests.memory_helpers import close, make_memory_engine, settle

A1, A2 = address(1), address(2)
TABLES = ("memory_items", "memory_tags", "memory_ops", "memory_sync", "memory_leaves",
          "memory_global_roots", "memory_agents")


def dump(conn) -> dict:
    settle(conn)
    out = {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall()) for t in TABLES}
    # Stamps differ between runs by design (a per-database counter); everything else must be equal.
    out["marks"] = sorted(conn.execute("SELECT agent, block_number, count FROM memory_marks").fetchall())
    out["fts"] = sorted(conn.execute("SELECT rowid, tokens FROM memory_fts").fetchall())
    out["cursor"] = conn.execute("SELECT number, hash FROM monmouth_cursor").fetchone()
    out["blocks"] = conn.execute("SELECT number, hash FROM monmouth_blocks ORDER BY number").fetchall()
    return out


def cfg(tmp_path, **kw):
    c = {"key_dir": str(tmp_path / "keys"), "agents": ["0x" + A1.hex(), "0x" + A2.hex()],
         "checkpoint_dir": str(tmp_path / "ckpt")}
    c.update(kw)
    return c


@pytest.mark.parametrize("settled", [True, False], ids=["settled", "with-pending-blocks"])
def test_restore_then_redelivery_equals_uninterrupted_run(tmp_path, settled):
    live_db, other_db = tmp_path / "live.sqlite", tmp_path / "restored.sqlite"
    e, p = make_memory_engine(live_db, cfg(tmp_path))
    mem = p.memory
    bs = extend(None, 12, number=1, n_txs=3)
    e.apply(ChainCommitted(chain(bs[:3])))
    settle(e.conn)
    e.apply(ChainCommitted(chain(bs[3:5])))
    ids = [mem.store(A1, "semantic", f"fact {i}", tags=["f"])["id"] for i in range(3)]
    mem.store(A2, "working", "scratch", ttl_blocks=4)
    e.apply(ChainCommitted(chain(bs[5:6])))
    if settled:
        mem.update(A1, bytes.fromhex(ids[0][2:]), content="fact 0, revised")
    else:  # a checkpoint taken without the running plugin (`monmouth checkpoint create` from another process)
        mem.lattice.settler = None
    man = checkpoint.create(live_db, tmp_path / "ckpt", name="at6", config_hash="abc")
    mem.lattice.settler = mem.ensure_settled
    assert man["block"] == {"number": 6, "hash": "0x" + bs[5].hash.hex()}
    assert man["global_root"]["block"] == (6 if settled else 3) and man["config_hash"] == "abc"
    assert man["plugins"]["memory"]["schema"] == len(MIGRATIONS)
    # The live run goes on, through a reorg.
    e.apply(ChainCommitted(chain(bs[6:10])))
    fork = extend(bs[7], 4, salt="fork", n_txs=3)
    e.apply(ChainReorged(chain(bs[8:10]), chain(fork)))
    final = bs[:8] + fork
    expected = dump(e.conn)
    close(e)

    checkpoint.restore(other_db, tmp_path / "ckpt", "at6")
    pending = apsw.Connection(str(other_db)).execute("SELECT block_number FROM memory_pending").fetchall()
    assert pending == ([] if settled else [(4,), (5,), (6,)])
    r, _ = make_memory_engine(other_db, cfg(tmp_path))
    try:
        assert r.head == bs[5].ref
        # The source re-delivers the canonical blocks after the checkpoint's head.
        r.apply(ChainCommitted(chain(final[6:])))
        assert dump(r.conn) == expected
    finally:
        close(r)


def test_checkpoints_are_consistent_while_the_engine_runs(tmp_path):
    db = tmp_path / "db.sqlite"
    e, p = make_memory_engine(db, cfg(tmp_path))
    bs = extend(None, 240, number=1, n_txs=3)
    e.apply(ChainCommitted(chain(bs[:1])))
    done = threading.Event()
    errors: list[BaseException] = []

    def ingest() -> None:
        try:
            for b in bs[1:]:
                e.apply(ChainCommitted(chain([b])))
                p.memory.store(A1, "semantic", f"note at {b.number}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            done.set()

    t = threading.Thread(target=ingest)
    t.start()
    mans = []
    # At least two, even when the ingest ends first (a loaded machine gave it the interpreter for the whole first
    # checkpoint once): each is checked whole below, whatever it overlapped.
    while len(mans) < 2 or (not done.is_set() and len(mans) < 15):
        mans.append(checkpoint.create(db, tmp_path / "ckpt"))
        time.sleep(0.005)
    t.join()
    close(e)
    assert not errors and len(mans) >= 2
    for m in mans:
        c = apsw.Connection(str(tmp_path / "ckpt" / m["file"]))
        head = c.execute("SELECT number, hash FROM monmouth_cursor").fetchone()
        g = c.execute("SELECT max(block_number) FROM memory_global_roots").fetchone()[0]
        # Blocks the engine applied while the copy was taken are still pending in it (settled after a restore):
        # every block up to the head is either settled or pending, and the manifest's root is the newest settled.
        pending = [r[0] for r in c.execute("SELECT block_number FROM memory_pending ORDER BY block_number")]
        assert pending == list(range(g + 1, g + 1 + len(pending)))
        blocks = c.execute("SELECT max(number) FROM monmouth_blocks").fetchone()[0]
        assert head[0] == (pending[-1] if pending else g) == blocks == m["block"]["number"]
        assert m["global_root"]["block"] == g
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        c.close()
    assert [m["name"] for m in checkpoint.list_checkpoints(tmp_path / "ckpt")][-1] == mans[-1]["name"]


def test_list_prune_verify_and_refuse_restore_while_in_use(tmp_path):
    db = tmp_path / "db.sqlite"
    e, _ = make_memory_engine(db, cfg(tmp_path))
    try:
        bs = extend(None, 3, number=1)
        names = []
        for b in bs:
            e.apply(ChainCommitted(chain([b])))
            names.append(checkpoint.create(db, tmp_path / "ckpt")["name"])
        assert [m["name"] for m in checkpoint.list_checkpoints(tmp_path / "ckpt")] == names
        with pytest.raises(checkpoint.CheckpointError, match="already exists"):
            checkpoint.create(db, tmp_path / "ckpt", name=names[0])
        with pytest.raises(checkpoint.CheckpointError, match="bad checkpoint name"):
            checkpoint.create(db, tmp_path / "ckpt", name="../evil")
        assert checkpoint.prune(tmp_path / "ckpt", 2) == names[:1]
        assert [m["name"] for m in checkpoint.list_checkpoints(tmp_path / "ckpt")] == names[1:]
        # A corrupted file is refused by its manifest's SHA-256.
        m = checkpoint.find(tmp_path / "ckpt", names[1])
        with open(tmp_path / "ckpt" / m["file"], "r+b") as f:
            f.seek(5000)
            f.write(b"\xff" * 16)
        with pytest.raises(checkpoint.CheckpointError, match="SHA-256"):
            checkpoint.restore(db, tmp_path / "ckpt", names[1])
        # The engine holds the database open inside a transaction: restore refuses.
        e.conn.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(checkpoint.CheckpointError, match="in use"):
                checkpoint.restore(db, tmp_path / "ckpt", "latest")
        finally:
            e.conn.execute("ROLLBACK")
    finally:
        close(e)


def test_automatic_checkpoints_every_n_blocks_with_retention(tmp_path):
    db = tmp_path / "db.sqlite"
    e, p = make_memory_engine(db, cfg(tmp_path, checkpoint_every=5, checkpoint_keep=2))
    try:
        bs = extend(None, 23, number=1, n_txs=1)
        for b in bs:
            res = e.apply(ChainCommitted(chain([b])))
            # What the runner does after each durable commit.
            e.host.committed(ChainCommitted(chain([b])), res.head)
            for t in list(p.memory._threads):
                if t.name == "memory-checkpoint":
                    t.join()
        cps = checkpoint.list_checkpoints(tmp_path / "ckpt")
        assert [m["block"]["number"] for m in cps] == [15, 20]
    finally:
        close(e)
