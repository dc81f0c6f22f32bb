"""Export and import of one agent's memory as a self-verifying archive.

Archive (JSON, format ``monmouth-memory-export-v1``)::

    {"format", "agent", "block": {"number", "hash"}, "root", "global_root",
     "leaf_encoding": ITEM_LEAF_TYPES, "commitment_encoding": COMMITMENT_TYPES,
     "tree": <StandardMerkleTree.dump() of the agent's tree>,
     "items": [{"id", "kind", "origin", "version", "anchor_block", "commitment", "leaf", "proof",
                "salt", "content_type", "content" | "content_b64", "key", "tags", "metadata",
                "ttl_seconds", "ttl_blocks", "created_at"}],
     "withheld": [{"id", "leaf", "values"}]}

Each item carries its plaintext *and its salt*, so the importer recomputes the commitment, the leaf and the
proof, and finally the root over every leaf (items and withheld leaves, i.e. item versions whose content is no
longer held, such as a version superseded by a not yet anchored update). ``tree`` loads in the npm package with
``StandardMerkleTree.load``. An archive holds plaintext: protect it like the memory it carries.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from monmouth.chain import hx

from . import merkle
from .core import Memory
from .errors import ArchiveError, ConflictError
from .fields import parse_address, parse_id
from .items import COLUMNS, open_item
from .merkle import canonical_json
from .schema import KIND_NAMES, KINDS, ORIGINS

FORMAT = "monmouth-memory-export-v1"


def export_agent(mem: Memory, agent: bytes, block: int | None = None) -> dict[str, Any]:
    """The archive of ``agent``'s memory as visible at ``block`` (default: the head).

    Raises:
        UnknownAgentError, NotFoundError, GoneError: as :meth:`Memory.leaves`.
    """
    conn = mem.db.reader()
    lv = mem.leaves(agent, block)
    number = lv["block"]
    k = mem.key(agent)
    tree = merkle.Tree.of([bytes.fromhex(x["leaf"][2:]) for x in lv["leaves"]]) if lv["leaves"] else None
    items, withheld = [], []
    for x in lv["leaves"]:
        values = x["values"]
        item_id = bytes.fromhex(values[0][2:])
        leaf = bytes.fromhex(x["leaf"][2:])
        row = conn.execute(f"SELECT {COLUMNS} FROM memory_items WHERE id = ? AND agent = ?",
                           (item_id, agent)).fetchone()
        if row is None or row[5] != values[3]:
            withheld.append({"id": values[0], "leaf": x["leaf"], "values": values})
            continue
        p = open_item(k, row)
        item: dict[str, Any] = {
            "id": values[0], "kind": KIND_NAMES[values[2]], "origin": ORIGINS[row[4]], "version": values[3],
            "anchor_block": values[4], "commitment": values[5], "leaf": x["leaf"],
            "proof": [hx(q) for q in tree.proof(leaf)] if tree else [],
            "salt": hx(k.salt(item_id, values[3])), "content_type": "text" if p["t"] == 0 else "bytes",
            "key": p["k"], "tags": list(p["g"]), "metadata": json.loads(p["m"]),
            "ttl_seconds": row[10], "ttl_blocks": row[11], "created_at": row[13],
        }
        if p["t"] == 0:
            item["content"] = p["c"].decode()
        else:
            item["content_b64"] = base64.b64encode(p["c"]).decode()
        items.append(item)
    all_values = [x["values"] for x in lv["leaves"]]
    return {
        "format": FORMAT, "agent": hx(agent), "block": {"number": number, "hash": lv["hash"]}, "root": lv["root"],
        "global_root": mem.global_root(number)["root"], "exported_at": time.time(),
        "leaf_encoding": list(merkle.ITEM_LEAF_TYPES), "commitment_encoding": list(merkle.COMMITMENT_TYPES),
        "tree": merkle.dump(merkle.ITEM_LEAF_TYPES, all_values, tree,
                            [bytes.fromhex(x["leaf"][2:]) for x in lv["leaves"]]) if tree else None,
        "items": items, "withheld": withheld,
    }


def _b(value: Any, n: int, what: str, item: str | None) -> bytes:
    try:
        b = bytes.fromhex(str(value)[2:]) if str(value).startswith("0x") else b""
    except ValueError:
        b = b""
    if len(b) != n:
        raise ArchiveError(f"{what} is not {n} bytes of 0x-hex", item)
    return b


def verify_archive(archive: dict[str, Any]) -> dict[str, Any]:
    """Check an archive: every item's commitment (from its content and salt), leaf, and proof, then the root over
    all leaves. Returns ``{"agent", "root", "items", "withheld"}``.

    Raises:
        ArchiveError: the archive is malformed or tampered with; ``item`` names the first bad item.
    """
    if not isinstance(archive, dict) or archive.get("format") != FORMAT:
        raise ArchiveError(f"not a {FORMAT} archive")
    if list(archive.get("leaf_encoding") or []) != list(merkle.ITEM_LEAF_TYPES):
        raise ArchiveError("unsupported leaf encoding")
    try:
        agent = parse_address(str(archive.get("agent")), "agent")
    except Exception:
        raise ArchiveError("agent is not an address") from None
    root = _b(archive.get("root"), 32, "root", None)
    leaves: list[bytes] = []
    for item in archive.get("items") or []:
        iid = str(item.get("id"))
        item_id = _b(iid, 32, "id", iid)
        try:
            kind = KINDS[item["kind"]]
            version, anchor = int(item["version"]), int(item["anchor_block"])
            salt = _b(item["salt"], 32, "salt", iid)
            com = _b(item["commitment"], 32, "commitment", iid)
            leaf = _b(item["leaf"], 32, "leaf", iid)
            proof = [_b(p, 32, "proof node", iid) for p in item["proof"]]
            if item["content_type"] == "text":
                content, ctype = str(item["content"]).encode(), 0
            else:
                content, ctype = base64.b64decode(item["content_b64"], validate=True), 1
            again = merkle.commitment(salt, ctype, content, item.get("key") or "", list(item.get("tags") or []),
                                      canonical_json(item.get("metadata") or {}), int(item.get("ttl_seconds") or 0),
                                      int(item.get("ttl_blocks") or 0))
        except ArchiveError:
            raise
        except Exception as e:
            raise ArchiveError(f"malformed item ({type(e).__name__}: {e})", iid) from None
        if again != com:
            raise ArchiveError("content, key, tags, metadata or TTL do not match the commitment", iid)
        if merkle.item_leaf(item_id, agent, kind, version, anchor, com) != leaf:
            raise ArchiveError("leaf does not match the item's values", iid)
        if not merkle.verify(root, leaf, proof):
            raise ArchiveError("inclusion proof does not verify against the root", iid)
        leaves.append(leaf)
    for w in archive.get("withheld") or []:
        wid = str(w.get("id"))
        v = w.get("values") or []
        try:
            leaf = merkle.item_leaf(_b(v[0], 32, "id", wid), agent, int(v[2]), int(v[3]), int(v[4]),
                                    _b(v[5], 32, "commitment", wid))
        except ArchiveError:
            raise
        except Exception as e:
            raise ArchiveError(f"malformed withheld leaf ({e})", wid) from None
        if leaf != _b(w.get("leaf"), 32, "leaf", wid):
            raise ArchiveError("withheld leaf does not match its values", wid)
        leaves.append(leaf)
    if len(set(leaves)) != len(leaves):
        raise ArchiveError("duplicate leaves")
    if merkle.root_of(leaves) != root:
        raise ArchiveError("the leaves do not give the archive's root (an item was added or removed)")
    tree = archive.get("tree")
    if leaves and (not isinstance(tree, dict) or tree.get("tree", [None])[0] != hx(root)):
        raise ArchiveError("the tree dump does not match the root")
    return {"agent": hx(agent), "root": hx(root), "items": len(archive.get("items") or []),
            "withheld": len(archive.get("withheld") or [])}


def import_archive(mem: Memory, archive: dict[str, Any]) -> dict[str, Any]:
    """Verify ``archive`` and store its items into this sidecar as the agent's memory (registering the agent
    if needed). Items keep their ids, kinds, keys, tags, metadata and TTLs; they are re-encrypted under this
    sidecar's key for the agent and anchored on this chain at the next block. Items whose id already exists
    are skipped.

    Raises:
        ArchiveError: verification failed (nothing is imported).
    """
    report = verify_archive(archive)
    agent = parse_address(report["agent"])
    row = mem.db.reader().execute("SELECT forgotten_at FROM memory_agents WHERE address = ?", (agent,)).fetchone()
    if row is None or row[0] is not None:
        mem.register(agent, None, "import")
    imported, skipped = [], []
    for item in archive.get("items") or []:
        content: str | bytes = (item["content"] if item["content_type"] == "text"
                                else base64.b64decode(item["content_b64"]))
        try:
            mem.store(agent, item["kind"], content, key=item.get("key") or None, tags=item.get("tags") or [],
                      metadata=item.get("metadata") or {}, ttl_seconds=item.get("ttl_seconds") or None,
                      ttl_blocks=item.get("ttl_blocks") or None, item_id=parse_id(item["id"]), origin=2)
            imported.append(item["id"])
        except ConflictError:
            skipped.append(item["id"])
    report.update({"imported": len(imported), "skipped": skipped,
                   "source_block": archive.get("block"), "verified": True})
    return report
