"""The memory plugin on PostgreSQL beside SQLite: the same roots and proofs byte for byte, forget leaving no copy in
the PostgreSQL database (undo rows included), and API writes racing the engine's block commits."""

from __future__ import annotations

import shutil
import threading

import pytest

from monmouth.types import ChainCommitted, ChainReorged, ChainReverted
from monmouth_memory import merkle
from monmouth_memory.errors import UnknownAgentError
from tests.chains import address, chain, extend
from tests.memory_helpers import close, make_memory_engine, settle

A1, A2 = address(1), address(2)


def _agents() -> list[str]:
    return ["0x" + A1.hex(), "0x" + A2.hex()]


def _answers(mem, blocks: range, agents=(A1, A2)) -> dict:
    """Every root, leaf set, inclusion proof and change list the API gives for ``blocks``, as JSON values."""
    out: dict = {}
    for b in blocks:
        out[("global", b)] = mem.global_root(b)
        for a in agents:
            try:
                out[("agent", a, b)] = mem.agent_root(a, b, with_global_proof=True)
            except UnknownAgentError as e:  # forgotten: refused the same way on both
                out[("agent", a, b)] = str(e)
                continue
            leaves = mem.leaves(a, b)
            out[("leaves", a, b)] = leaves
            for x in leaves["leaves"]:
                out[("proof", a, x["values"][0], b)] = mem.proof(a, bytes.fromhex(x["values"][0][2:]), b)
    for a in agents:
        try:
            out[("changes", a)] = mem.changes(a, 0, 1000)
        except UnknownAgentError as e:
            out[("changes", a)] = str(e)
    return out


def test_roots_and_proofs_are_byte_identical_on_sqlite_and_postgres(tmp_path, pg_url):
    """One sequence (chain blocks with episodes, API stores, an update, a delete, a TTL expiry, a reorg, a forget)
    through a SQLite and a PostgreSQL deployment with the same agent keys: every global root, agent root, global
    proof, leaf set, inclusion proof and change list is equal, at every block."""
    keys = tmp_path / "keys"
    lite, pl = make_memory_engine(tmp_path / "db.sqlite", {"key_dir": str(keys), "agents": _agents()})
    shutil.copytree(keys, tmp_path / "keys-pg")  # the same agent keys: the same commitments and ciphertexts
    pg, pp = make_memory_engine(pg_url, {"key_dir": str(tmp_path / "keys-pg"), "agents": _agents()})
    try:
        deployments = [(lite, pl.memory), (pg, pp.memory)]
        bs = extend(None, 3, number=1, n_txs=4)
        fork_base = extend(bs[-1], 2, salt="main", n_txs=4)
        fork = extend(fork_base[0], 3, salt="fork", n_txs=4)
        tail = extend(fork[-1], 2, salt="tail", n_txs=3)

        def both(step) -> None:
            for e, mem in deployments:
                step(e, mem)

        both(lambda e, m: e.apply(ChainCommitted(chain(bs))))
        ids = [bytes([i]) * 32 for i in range(1, 6)]
        both(lambda e, m: [m.store(A1, "semantic", f"fact number {i} about the vault", tags=["ops", f"t{i}"],
                                   key=f"k{i}", metadata={"i": i}, item_id=ids[i]) for i in range(3)])
        both(lambda e, m: m.store(A2, "working", "short-lived note", ttl_blocks=2, item_id=ids[3]))
        both(lambda e, m: m.store(A2, "procedural", b"\x00\x01 binary steps", item_id=ids[4]))
        both(lambda e, m: e.apply(ChainCommitted(chain(fork_base))))
        both(lambda e, m: m.update(A1, ids[0], content="fact number 0, version two", tags=["ops"]))
        both(lambda e, m: m.delete(A1, ids[1]))
        both(lambda e, m: e.apply(ChainReorged(chain(fork_base[1:]), chain(fork))))
        before = [_answers(m, range(1, 8)) for _e, m in deployments]
        assert before[0] == before[1]
        visible = {a: {x["values"][0]: x["values"][3] for x in before[0][("leaves", a, 7)]["leaves"]} for a in (A1, A2)}
        hexes = ["0x" + i.hex() for i in ids]
        assert visible[A1][hexes[0]] == 2 and hexes[2] in visible[A1] and hexes[1] not in visible[A1]  # deleted
        assert hexes[4] in visible[A2] and hexes[3] not in visible[A2]  # the TTL item expired
        both(lambda e, m: m.forget(A2))
        both(lambda e, m: e.apply(ChainCommitted(chain(tail))))
        after = [_answers(m, range(1, 10)) for _e, m in deployments]
        assert after[0] == after[1]
        # The forgotten agent's leaves still count in the global roots of the blocks applied before the forget.
        assert all(after[0][("global", b)]["root"] == before[0][("global", b)]["root"] for b in range(1, 8))
        # And a reorg after the forget reverts exactly, on both.
        both(lambda e, m: e.apply(ChainReverted(chain(tail))))
        again = [_answers(m, range(1, 8), agents=(A1,)) for _e, m in deployments]
        assert again[0] == again[1]
        assert {k: v for k, v in again[0].items() if k[0] != "changes"} == \
            {k: v for k, v in after[0].items() if k[0] != "changes" and k[-1] in range(1, 8) and A2 not in k}
    finally:
        close(lite)
        close(pg)


def _all_rows_as_text(conn) -> dict[str, str]:
    """``{table: every row of it as jsonb text}`` for every table of the database's schema (``bytea`` as ``\\x``
    hex), the engine's included."""
    tables = [r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE "
        "n.nspname = current_schema() AND c.relkind IN ('r', 'p')").fetchall()]
    return {t: "\n".join(r[0] for r in conn.execute(f'SELECT to_jsonb(t)::text FROM "{t}" t').fetchall())
            for t in tables}


def test_forget_on_postgres_leaves_no_copy_and_later_reorgs_revert_exactly(tmp_path, pg_url):
    keys = tmp_path / "keys"
    e, p = make_memory_engine(pg_url, {"key_dir": str(keys), "agents": _agents()})
    mem = p.memory
    try:
        bs = extend(None, 3, number=1, n_txs=4)
        e.apply(ChainCommitted(chain(bs[:2])))
        secret = "the launch code is swordfish-7741"
        r = mem.store(A2, "semantic", secret, key="launch", tags=["secret"])
        mem.update(A2, bytes.fromhex(r["id"][2:]), content=secret + " (rotated)")
        mem.register(A2, "agent two's label")
        e.apply(ChainCommitted(chain(bs[2:])))
        settle(e.conn)
        mem.ensure_indexed()
        key = (keys / f"{A2.hex()}.key").read_bytes()
        cts = [bytes(c).hex() for (c,) in e.conn.execute("SELECT ct FROM memory_items WHERE agent = ?", (A2,))]
        assert cts and any(ct in "".join(_all_rows_as_text(e.conn).values()) for ct in cts)
        a1_before = _answers(mem, range(1, 4), agents=(A1,))
        a1_before_roots = [(a1_before[("agent", A1, b)]["root"], a1_before[("leaves", A1, b)]["leaves"])
                           for b in range(1, 4)]

        out = mem.forget(A2)
        assert out["forgotten"] and out["key_destroyed"]
        dump = _all_rows_as_text(e.conn)
        needles = {"plaintext": secret, "plaintext word": "swordfish", "label": "agent two's label",
                   "key": key.hex(), **{f"ciphertext {i}": ct for i, ct in enumerate(cts)}}
        for table, text in dump.items():
            for what, needle in needles.items():
                assert needle not in text, f"{what} survives in {table}"
        assert "monmouth_undo" in dump and not (keys / f"{A2.hex()}.key").exists()
        # The other agent is untouched; a reorg of blocks applied before the forget reverts without conflict, and
        # one back to the first chain gives the other agent exactly its leaves and roots of before.
        assert _answers(mem, range(1, 4), agents=(A1,)) == a1_before

        def a1(blocks) -> list:
            return [(mem.agent_root(A1, b)["root"], mem.leaves(A1, b)["leaves"]) for b in blocks]

        fork = extend(bs[0], 3, salt="after-forget", n_txs=4)
        e.apply(ChainReorged(chain(bs[1:]), chain(fork)))
        assert a1(range(2, 4)) != a1_before_roots
        e.apply(ChainReorged(chain(fork), chain(bs[1:])))
        assert a1(range(1, 4)) == a1_before_roots
    finally:
        close(e)


def test_api_writes_while_the_engine_commits_blocks_on_postgres(tmp_path, pg_url):
    """Four API writer threads store and update items while the engine applies 30 blocks and a reorg (and the
    worker settles): no write fails, none is lost, and the final roots hold exactly every item's last version.
    (Without the plugin's write lock, .dialect.WRITE_LOCK, this fails: settles and reverts interleave.)"""
    e, p = make_memory_engine(pg_url, {"key_dir": str(tmp_path / "keys"), "agents": _agents()}, workers=True)
    mem = p.memory
    errors: list[BaseException] = []
    done = threading.Event()
    written: dict[bytes, tuple[bytes, int]] = {}
    lock = threading.Lock()

    def writer(w: int) -> None:
        agent = (A1, A2)[w % 2]
        try:
            for i in range(15):
                iid = bytes([w, i]) * 16
                mem.store(agent, "semantic", f"writer {w} item {i}", tags=[f"w{w}"], item_id=iid)
                up = mem.update(agent, iid, content=f"writer {w} item {i} v2")
                with lock:
                    written[iid] = (agent, up["version"])
        except BaseException as ex:
            errors.append(ex)

    try:
        bs = extend(None, 30, number=1, n_txs=2)
        threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        for i, b in enumerate(bs):
            e.apply(ChainCommitted(chain([b])))
            if i == 20:  # a reorg of the last three blocks while writes go on
                fork = extend(bs[17], 3, salt="race", n_txs=2)
                e.apply(ChainReorged(chain(bs[18:21]), chain(fork)))
                bs[18:21] = fork
                for j in range(21, 30):
                    bs[j] = extend(bs[j - 1], 1, salt=("race", j), n_txs=2)[0]
        for t in threads:
            t.join(timeout=120)
        done.set()
        assert not errors, errors
        last = extend(bs[-1], 1, salt="last", n_txs=0)
        e.apply(ChainCommitted(chain(last)))  # anchors whatever was written after the previous block
        settle(e.conn)
        head = 31
        assert len(written) == 60
        for agent in (A1, A2):
            leaves = mem.leaves(agent, head)["leaves"]
            api = {bytes.fromhex(x["values"][0][2:]): x["values"][3] for x in leaves}
            mine = {iid: v for iid, (a, v) in written.items() if a == agent}
            assert {iid: api[iid] for iid in mine} == mine  # every item, at its last version (2)
            root = mem.agent_root(agent, head)
            assert root["root"] == "0x" + merkle.root_of([bytes.fromhex(x["leaf"][2:]) for x in leaves]).hex()
        assert e.conn.execute("SELECT count(*) FROM memory_ops").fetchone()[0] == 120
    finally:
        done.set()
        close(e)


def test_automatic_checkpoints_are_refused_on_postgres_naming_the_key(tmp_path, pg_url):
    from monmouth.backends.postgres import PgDatabase
    from monmouth.errors import ConfigError
    from monmouth_memory.config import MemoryConfig
    from monmouth_memory.core import Memory
    from tests.pg import PASSWORD

    db = PgDatabase(pg_url, password=PASSWORD)
    with pytest.raises(ConfigError, match="plugins.memory.checkpoint_every: automatic checkpoints copy the SQLite"):
        Memory(MemoryConfig(checkpoint_every=10, key_dir=str(tmp_path / "keys")), db)


def test_global_root_at_is_what_the_sqlite_view_gives_on_both_backends(tmp_path, storage_of):
    e, p = make_memory_engine(storage_of("db.sqlite"), {"key_dir": str(tmp_path / "keys"), "agents": _agents()})
    try:
        bs = extend(None, 4, number=1, n_txs=4)
        e.apply(ChainCommitted(chain(bs)))
        for b in bs:
            root, agents = p.global_root_at(b.number, b.hash)
            answer = p.memory.global_root(b.number)
            assert ("0x" + root.hex(), agents) == (answer["root"], answer["agents"])
            if getattr(e.conn, "backend", "sqlite") == "sqlite":
                assert e.conn.execute("SELECT root, agents FROM memory_global_roots WHERE block_number = ?",
                                      (b.number,)).fetchone() == (root, agents)
        assert p.global_root_at(2, bytes(32)) is None and p.global_root_at(99) is None
    finally:
        close(e)
