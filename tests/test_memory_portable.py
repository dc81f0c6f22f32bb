"""Export and import: a self-verifying archive moves an agent's memory to another sidecar; tampering is refused
naming the first bad item; the archive's tree loads in the npm package."""

from __future__ import annotations

import copy

import pytest

from monmouth.types import ChainCommitted
from monmouth_memory import merkle
from monmouth_memory.errors import ArchiveError
from monmouth_memory.portable import export_agent, import_archive, verify_archive
from tests.chains import address, chain, extend
from tests.memory_helpers import close, make_memory_engine
from tests.test_memory_merkle import oz

A1 = address(1)


@pytest.fixture(params=[("sqlite", "sqlite"), ("sqlite", "postgres"), ("postgres", "sqlite")],
                ids=["sqlite-to-sqlite", "sqlite-to-postgres", "postgres-to-sqlite"])
def two(request, tmp_path):
    """A source and a destination sidecar: an archive moves between backends as between two SQLite files."""
    def where(backend: str, name: str):
        return request.getfixturevalue("pg_server").database() if backend == "postgres" else tmp_path / name

    src, ps = make_memory_engine(where(request.param[0], "a.sqlite"), {"key_dir": str(tmp_path / "ka"),
                                                                       "agents": ["0x" + A1.hex()]})
    dst, pd = make_memory_engine(where(request.param[1], "b.sqlite"), {"key_dir": str(tmp_path / "kb")})
    yield src, ps.memory, dst, pd.memory
    close(src)
    close(dst)


def test_export_import_roundtrip(two):
    src, a, dst, b = two
    bs = extend(None, 3, number=1, n_txs=4)
    src.apply(ChainCommitted(chain(bs[:1])))
    a.store(A1, "semantic", "paris is the capital of france", tags=["geo"], key="capital", metadata={"src": "atlas"})
    a.store(A1, "procedural", b"\x01\x02\x03")
    a.store(A1, "working", "scratchpad", ttl_blocks=1000)
    src.apply(ChainCommitted(chain(bs[1:])))
    archive = export_agent(a, A1)
    assert archive["root"] == a.agent_root(A1)["root"] and not archive["withheld"]
    assert len(archive["items"]) == a.agent_root(A1)["count"]
    assert verify_archive(archive)["root"] == archive["root"]
    # The tree dump loads in @openzeppelin/merkle-tree.
    d = oz({"types": list(merkle.ITEM_LEAF_TYPES), "values": [], "dump": archive["tree"]})
    assert d["dump_ok"] and d["dump_root"] == archive["root"]

    dst.apply(ChainCommitted(chain(extend(None, 1, number=100, salt="other chain", n_txs=0))))
    rep = import_archive(b, archive)
    assert rep["imported"] == len(archive["items"]) and rep["verified"]
    got = {i["id"]: i for i in b.list(A1, limit=1000)}
    for it in archive["items"]:
        mine = got[it["id"]]
        assert mine["kind"] == it["kind"] and mine["tags"] == it["tags"] and mine["metadata"] == it["metadata"]
        assert mine.get("content", mine.get("content_b64")) == it.get("content", it.get("content_b64"))
        assert mine["origin"] == "import"
    # Importing twice skips what exists.
    assert import_archive(b, archive)["imported"] == 0
    # Once anchored on the other chain, the imported memory has its own root there, and an export from there
    # verifies too.
    dst.apply(ChainCommitted(chain(extend(_tip(dst), 1, salt="x", n_txs=0))))
    again = export_agent(b, A1)
    assert verify_archive(again) and len(again["items"]) == len(archive["items"])


def _tip(engine):
    from monmouth.types import Block

    sb = engine.canonical(engine.head.number)
    return Block(sb.number, sb.hash, sb.parent_hash, sb.timestamp, b"\x00" * 20, 0, 0)


def test_tampered_archives_are_refused_naming_the_first_bad_item(two):
    src, a, _, _ = two
    src.apply(ChainCommitted(chain(extend(None, 1, number=1, n_txs=0))))
    for i in range(4):
        a.store(A1, "semantic", f"memory number {i}")
    src.apply(ChainCommitted(chain(extend(_tip(src), 1, salt="s", n_txs=0))))
    archive = export_agent(a, A1)
    second = archive["items"][1]["id"]

    def refused(mutate, match):
        bad = copy.deepcopy(archive)
        mutate(bad)
        with pytest.raises(ArchiveError, match=match) as ei:
            verify_archive(bad)
        return ei.value

    e = refused(lambda x: x["items"][1].__setitem__("content", "memory number 9"), "commitment")
    assert e.item == second and second in str(e)
    e = refused(lambda x: x["items"][1]["tags"].append("extra"), "commitment")
    assert e.item == second
    e = refused(lambda x: x["items"][1].__setitem__("proof", list(reversed(x["items"][1]["proof"]))), "proof")
    assert e.item == second or len(archive["items"][1]["proof"]) < 2
    e = refused(lambda x: x["items"][1].__setitem__("anchor_block", 7), "leaf")
    assert e.item == second
    refused(lambda x: x["items"].pop(), "root")
    refused(lambda x: x.__setitem__("format", "zip"), "archive")
