"""Encryption at rest and crypto-shredding forget: after forget, a distinctive string stored as memory appears in
no byte of the database, its WAL, or any checkpoint file, and no key can open what old checkpoints hold."""

from __future__ import annotations

from pathlib import Path

import apsw
import msgpack
import pytest

from monmouth.types import ChainCommitted, ChainReverted
from monmouth_memory import checkpoint
from monmouth_memory.core import aad
from monmouth_memory.crypto import AgentKey
from monmouth_memory.errors import UnknownAgentError
from tests.chains import address, chain, extend
from tests.memory_helpers import close, make_memory_engine

A1, A2 = address(1), address(2)
SECRET = "ZEBRA-PLATYPUS-7731 the launch code is quartz"
NEEDLES = [b"ZEBRA-PLATYPUS-7731", b"zebra", b"platypus", b"quartz", "ZEBRA-PLATYPUS-7731".encode("utf-16-le")]


def files_of(db: Path, ckpt_dir: Path) -> list[Path]:
    out = [p for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")) if p.exists()]
    return out + sorted(ckpt_dir.glob("*"))


def assert_absent(paths: list[Path]) -> None:
    for p in paths:
        data = p.read_bytes()
        for n in NEEDLES:
            assert n not in data, f"{n!r} found in {p}"


def test_forget_shreds_key_rows_undo_records_and_leaves_no_plaintext(tmp_path):
    db = tmp_path / "db.sqlite"
    keys, ckpts = tmp_path / "keys", tmp_path / "ckpt"
    e, plugin = make_memory_engine(db, {"key_dir": str(keys), "agents": ["0x" + A1.hex(), "0x" + A2.hex()],
                                        "checkpoint_dir": str(ckpts)}, undo_window=64)
    mem = plugin.memory
    try:
        bs = extend(None, 6, number=1, n_txs=4)
        e.apply(ChainCommitted(chain(bs[:2])))
        r = mem.store(A1, "semantic", SECRET, key="zebra", tags=["platypus"], metadata={"quartz": SECRET})
        iid = bytes.fromhex(r["id"][2:])
        mem.store(A2, "semantic", "an unrelated memory of agent two")
        e.apply(ChainCommitted(chain(bs[2:4])))
        mem.update(A1, iid, content=SECRET + " (revised)")
        e.apply(ChainCommitted(chain(bs[4:5])))
        assert mem.get(A1, iid)["content"].startswith(SECRET)
        man = checkpoint.create(db, ckpts, name="before-forget")
        # Encrypted at rest: even before forget the plaintext is nowhere on disk ...
        assert_absent(files_of(db, ckpts))
        # ... but the checkpoint holds ciphertext that the agent's key opens.
        key_bytes = (keys / f"{A1.hex()}.key").read_bytes()
        ck = apsw.Connection(str(ckpts / man["file"]))
        row = ck.execute("SELECT agent, id, version, nonce, ct FROM memory_items WHERE id = ?", (iid,)).fetchone()
        ck.close()
        plain = msgpack.unpackb(AgentKey(key_bytes).decrypt(row[3], row[4], aad(row[0], row[1], row[2])))
        assert plain["c"].decode().startswith(SECRET)
        a1_episodes = e.conn.execute("SELECT count(*) FROM memory_items WHERE agent = ? AND origin = 1",
                                     (A1,)).fetchone()[0]
        assert a1_episodes > 0

        out = mem.forget(A1)
        # The blocks' undo data never held the agent's rows: its items, leaves and marks are derived after each
        # block's transaction (settled), not journaled in it. (Undo data written before schema 5 did; forget
        # still scrubs it.)
        assert out["forgotten"] and out["key_destroyed"] and out["undo_records"] == 0
        assert not (keys / f"{A1.hex()}.key").exists()
        for t in ("memory_items", "memory_tags", "memory_ops", "memory_leaves", "memory_marks",
                  "memory_root_cache", "memory_vectors"):
            assert e.conn.execute(f"SELECT count(*) FROM {t} WHERE agent = ?", (A1,)).fetchone()[0] == 0, t
        # No undo record mentions the agent any more.
        for (cs,) in e.conn.execute("SELECT changeset FROM monmouth_blocks WHERE changeset IS NOT NULL"):
            for ch in apsw.Changeset.iter(cs):
                assert A1 not in [v for v in (ch.new or ()) + (ch.old or ()) if isinstance(v, bytes)], ch.name
        with pytest.raises(UnknownAgentError):
            mem.get(A1, iid)
        # The agent's other sidecar data are gone, agent two is intact, and the key that would open the old
        # checkpoint no longer exists anywhere the sidecar knows.
        assert mem.list(A2)[0]["content"] == "an unrelated memory of agent two"
        assert_absent(files_of(db, ckpts))
        assert key_bytes not in b"".join(p.read_bytes() for p in files_of(db, ckpts) + sorted(keys.glob("*")))

        # Reverting blocks whose undo data once held the agent's rows works (no journal conflict), and the agent
        # does not come back; new blocks do not create memories for it.
        e.apply(ChainReverted(chain(bs[2:5])))
        assert e.conn.execute("SELECT count(*) FROM memory_items WHERE agent = ?", (A1,)).fetchone()[0] == 0
        e.apply(ChainCommitted(chain(bs[2:])))
        assert e.conn.execute("SELECT count(*) FROM memory_items WHERE agent = ?", (A1,)).fetchone()[0] == 0
        assert mem.agent_root(A2)["count"] > 0
        assert_absent(files_of(db, ckpts))
    finally:
        close(e)


def test_restoring_an_old_checkpoint_purges_a_forgotten_agent_again(tmp_path):
    db = tmp_path / "db.sqlite"
    keys, ckpts = tmp_path / "keys", tmp_path / "ckpt"
    cfg = {"key_dir": str(keys), "agents": ["0x" + A2.hex()], "checkpoint_dir": str(ckpts)}
    e, plugin = make_memory_engine(db, cfg)
    mem = plugin.memory
    mem.register(A1)
    e.apply(ChainCommitted(chain(extend(None, 2, number=1, n_txs=3))))
    mem.store(A1, "semantic", SECRET)
    checkpoint.create(db, ckpts, name="old")
    mem.forget(A1)
    close(e)
    checkpoint.restore(db, ckpts, "old")
    e, plugin = make_memory_engine(db, cfg)
    try:
        assert e.conn.execute("SELECT count(*) FROM memory_items WHERE agent = ?", (A1,)).fetchone()[0] == 0
        with pytest.raises(UnknownAgentError):
            plugin.memory.list(A1)
    finally:
        close(e)


def test_forget_erases_the_label_from_checkpoints_taken_before(tmp_path):
    """Issue 19, item 9: the label (plaintext, unlike content) was left in older checkpoints."""
    db = tmp_path / "db.sqlite"
    keys, ckpts = tmp_path / "keys", tmp_path / "ckpt"
    label = "Alice-LABEL-OSPREY-4471"
    cfg = {"key_dir": str(keys), "agents": ["0x" + A2.hex()], "checkpoint_dir": str(ckpts)}
    e, plugin = make_memory_engine(db, cfg)
    mem = plugin.memory
    try:
        mem.register(A1, label)
        mem.register(A2, "Bob-LABEL-HERON-9918")
        e.apply(ChainCommitted(chain(extend(None, 2, number=1, n_txs=3))))
        mem.store(A1, "semantic", SECRET)
        for name in ("one", "two"):
            checkpoint.create(db, ckpts, name=name)
        assert all(label.encode() in (ckpts / f"{n}.sqlite").read_bytes() for n in ("one", "two"))
        out = mem.forget(A1)
        assert out["checkpoints_scrubbed"] == 2 and "checkpoint_error" not in out
        for name in ("one", "two"):
            data = (ckpts / f"{name}.sqlite").read_bytes()
            assert label.encode() not in data and b"Bob-LABEL-HERON-9918" in data, name
            man = checkpoint.find(ckpts, name)
            assert checkpoint.verify(ckpts, man) and man["scrubbed_at"]  # the manifest matches the file again
        assert_absent(files_of(db, ckpts))
        assert label.encode() not in db.read_bytes()
        assert mem.forget(A2)["checkpoints_scrubbed"] == 2  # a second forget scrubs again, files stay valid
        assert checkpoint.verify(ckpts, checkpoint.find(ckpts, "one"))
    finally:
        close(e)
    checkpoint.restore(db, ckpts, "two")  # a scrubbed checkpoint restores, and the agent stays forgotten
    e, plugin = make_memory_engine(db, cfg)
    try:
        with pytest.raises(UnknownAgentError):
            plugin.memory.list(A1)
    finally:
        close(e)


def test_env_key_source(tmp_path, monkeypatch):
    import os

    monkeypatch.setenv("MONMOUTH_MEMORY_KEY_" + A1.hex().upper(), os.urandom(32).hex())
    e, plugin = make_memory_engine(tmp_path / "db.sqlite", {"key_source": "env", "agents": ["0x" + A1.hex()]})
    try:
        mem = plugin.memory
        r = mem.store(A1, "semantic", "from the environment")
        assert mem.get(A1, bytes.fromhex(r["id"][2:]))["content"] == "from the environment"
        with pytest.raises(Exception, match="MONMOUTH_MEMORY_KEY_"):
            mem.register(A2)
        out = mem.forget(A1)
        assert not out["key_destroyed"] and "unset MONMOUTH_MEMORY_KEY_" in out["warning"]
    finally:
        close(e)
