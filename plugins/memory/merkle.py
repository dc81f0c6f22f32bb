"""OpenZeppelin ``StandardMerkleTree`` in Python: roots, proofs and verification, byte-for-byte compatible.

The algorithm is the one of the npm package ``@openzeppelin/merkle-tree`` v1 (``src/core.ts``,
``src/hashes.ts``, ``src/merkletree.ts``) and of Solidity's ``MerkleProof.verify``:

* a leaf is ``keccak256(keccak256(abi.encode(types, values)))`` (double hashing prevents second-preimage
  attacks with 64-byte leaves);
* leaves are sorted ascending by hash (``sortLeaves: true``, the package's default);
* the tree is a complete binary tree in an array of ``2n - 1`` nodes: leaf ``i`` (in sorted order) sits at
  index ``2n - 2 - i``; node ``i`` is ``keccak256(sort(tree[2i+1], tree[2i+2]))`` (sorted pairs);
* a proof is the list of siblings from the leaf up to (not including) the root.

Hashing uses ``eth-hash`` (keccak256), with its ``pysha3`` backend when ``safe-pysha3`` is installed (the Merkle
trees hash a lot: a 1,000-leaf tree is 2,999 keccak calls); ABI encoding of static types is done by hand for speed and
cross-checked against ``eth-abi`` in the tests. The tests also compare roots and proofs with the npm
package itself, and verify proofs on chain with OpenZeppelin's ``MerkleProof.verify``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from eth_abi import encode as abi_encode

keccak: Callable[[bytes | bytearray], bytes]  # one of two backends, whose signatures differ in the argument's name
try:  # eth-hash's C backend (the ``safe-pysha3`` package): about 3x faster than pycryptodome through cffi
    from eth_hash.backends.pysha3 import keccak256 as keccak

    KECCAK_BACKEND = "pysha3"
except ImportError:  # pragma: no cover - depends on what is installed
    from eth_hash.auto import keccak

    KECCAK_BACKEND = "auto"

#: ``bytes32(0)``: the root this project reports for an empty set (the npm package refuses to build an empty tree).
EMPTY_ROOT = b"\x00" * 32


def leaf_hash(encoded: bytes) -> bytes:
    """``keccak256(keccak256(encoded))`` where ``encoded`` is ``abi.encode(values)``."""
    return keccak(keccak(encoded))


def standard_leaf_hash(types: Sequence[str], values: Sequence[Any]) -> bytes:
    """The StandardMerkleTree leaf hash of ``values`` ABI-encoded as ``types`` (uses eth-abi; slow path)."""
    return leaf_hash(abi_encode(list(types), list(values)))


def node_hash(a: bytes, b: bytes) -> bytes:
    """``keccak256`` of the two 32-byte children concatenated in ascending order (OpenZeppelin ``_hashPair``)."""
    return keccak(a + b) if a < b else keccak(b + a)


def build(leaves: Sequence[bytes]) -> list[bytes]:
    """The tree array (length ``2n - 1``) for leaf hashes **already sorted** ascending.

    Raises:
        ValueError: no leaves.
    """
    n = len(leaves)
    if n == 0:
        raise ValueError("a Merkle tree needs at least one leaf")
    size = 2 * n - 1
    tree: list[bytes] = [b""] * size
    for i, leaf in enumerate(leaves):
        tree[size - 1 - i] = leaf
    for i in range(size - 1 - n, -1, -1):
        a, b = tree[2 * i + 1], tree[2 * i + 2]
        tree[i] = keccak(a + b) if a < b else keccak(b + a)
    return tree


def root_of(leaves: Sequence[bytes]) -> bytes:
    """The root over leaf hashes in any order (sorted here); :data:`EMPTY_ROOT` for none."""
    if not leaves:
        return EMPTY_ROOT
    return build(sorted(leaves))[0]


def proof_at(tree: Sequence[bytes], index: int) -> list[bytes]:
    """Siblings from tree node ``index`` (a leaf) up to the root."""
    proof: list[bytes] = []
    while index > 0:
        sibling = index + 1 if index % 2 else index - 1
        proof.append(tree[sibling])
        index = (index - 1) // 2
    return proof


def process_proof(leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """Fold ``proof`` onto ``leaf`` (OpenZeppelin ``MerkleProof.processProof``)."""
    h = leaf
    for p in proof:
        h = node_hash(h, p)
    return h


def verify(root: bytes, leaf: bytes, proof: Sequence[bytes]) -> bool:
    """Whether ``proof`` proves ``leaf`` under ``root`` (OpenZeppelin ``MerkleProof.verify``)."""
    return process_proof(leaf, proof) == root


@dataclass(slots=True)
class Tree:
    """A built tree: ``leaves`` sorted ascending, ``nodes`` the ``2n - 1`` array, ``root``."""

    leaves: list[bytes]
    nodes: list[bytes]

    @classmethod
    def of(cls, leaves: Sequence[bytes]) -> Tree:
        """Build from leaf hashes in any order.

        Raises:
            ValueError: no leaves.
        """
        s = sorted(leaves)
        return cls(s, build(s))

    @property
    def root(self) -> bytes:
        return self.nodes[0]

    def tree_index(self, leaf: bytes) -> int:
        """The node index of ``leaf`` (``2n - 2 - position in sorted order``).

        Raises:
            KeyError: the leaf is not in the tree.
        """
        import bisect

        i = bisect.bisect_left(self.leaves, leaf)
        if i == len(self.leaves) or self.leaves[i] != leaf:
            raise KeyError("leaf not in tree")
        return len(self.nodes) - 1 - i

    def proof(self, leaf: bytes) -> list[bytes]:
        """The inclusion proof of ``leaf``.

        Raises:
            KeyError: the leaf is not in the tree.
        """
        return proof_at(self.nodes, self.tree_index(leaf))


# ---------------------------------------------------------------------------------------------------------------------
# The memory lattice's two leaf encodings (documented in docs/memory.md).

#: Per-agent tree leaf: ``(item id, agent, kind, version, anchor block, content commitment)``.
ITEM_LEAF_TYPES: tuple[str, ...] = ("bytes32", "address", "uint8", "uint32", "uint64", "bytes32")
#: Global tree leaf: ``(agent, agent root)``.
AGENT_LEAF_TYPES: tuple[str, ...] = ("address", "bytes32")
#: The content commitment: ``keccak256(abi.encode(COMMITMENT_TYPES, values))``.
COMMITMENT_TYPES: tuple[str, ...] = ("bytes32", "uint8", "bytes", "string", "string[]", "string", "uint64", "uint64")

_ADDRESS_PAD = b"\x00" * 12  # an address is right-aligned in its 32-byte ABI word


def _word(n: int) -> bytes:
    """An unsigned integer as one 32-byte big-endian ABI word."""
    return n.to_bytes(32, "big")


def item_leaf_encoded(item_id: bytes, agent: bytes, kind: int, version: int, anchor_block: int,
                      commitment: bytes) -> bytes:
    """``abi.encode(ITEM_LEAF_TYPES, values)`` (all static types: six 32-byte words)."""
    return item_id + _ADDRESS_PAD + agent + _word(kind) + _word(version) + _word(anchor_block) + commitment


def item_leaf(item_id: bytes, agent: bytes, kind: int, version: int, anchor_block: int, commitment: bytes) -> bytes:
    """The per-agent tree leaf hash of one visible item version."""
    return leaf_hash(item_leaf_encoded(item_id, agent, kind, version, anchor_block, commitment))


def agent_leaf(agent: bytes, root: bytes) -> bytes:
    """The global tree leaf hash of one agent's root."""
    return leaf_hash(_ADDRESS_PAD + agent + root)


def _dynamic_tail(b: bytes) -> bytes:
    """ABI tail of ``bytes``/``string``: length word, then the data right-padded to 32 bytes."""
    return _word(len(b)) + b + b"\x00" * (-len(b) % 32)


@functools.lru_cache(maxsize=1024)
def _tags_tail(tags: tuple[str, ...]) -> bytes:
    """ABI tail of ``string[]`` (cached: chain episodes have a few distinct tag lists)."""
    elems = [_dynamic_tail(t.encode()) for t in tags]
    offsets, off = [], 32 * len(elems)
    for e in elems:
        offsets.append(_word(off))
        off += len(e)
    return _word(len(elems)) + b"".join(offsets) + b"".join(elems)


def commitment_encoded(salt: bytes, content_type: int, content: bytes, key: str, tags: Sequence[str],
                       metadata_json: str, ttl_seconds: int, ttl_blocks: int) -> bytes:
    """``abi.encode(COMMITMENT_TYPES, values)``, by hand (eth-abi is ~100 us per call; the tests compare both).

    Raises:
        ValueError: ``salt`` is not 32 bytes, or an integer is out of its type's range.
    """
    if len(salt) != 32 or not 0 <= content_type < 256 or not 0 <= ttl_seconds < 2**64 or not 0 <= ttl_blocks < 2**64:
        raise ValueError("commitment value out of range")
    t_content, t_key = _dynamic_tail(content), _dynamic_tail(key.encode())
    t_meta = _dynamic_tail(metadata_json.encode())
    t_tags = _tags_tail(tuple(tags))
    o_content = 32 * 8
    o_key = o_content + len(t_content)
    o_tags = o_key + len(t_key)
    o_meta = o_tags + len(t_tags)
    return (salt + _word(content_type) + _word(o_content) + _word(o_key) + _word(o_tags) + _word(o_meta)
            + _word(ttl_seconds) + _word(ttl_blocks) + t_content + t_key + t_tags + t_meta)


def canonical_json(value: Any) -> str:
    """Canonical JSON (sorted keys, no spaces, UTF-8 kept): the metadata encoding inside commitments."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def commitment(salt: bytes, content_type: int, content: bytes, key: str, tags: Sequence[str], metadata_json: str,
               ttl_seconds: int, ttl_blocks: int) -> bytes:
    """The salted content commitment of one item version (see :data:`COMMITMENT_TYPES`)."""
    return keccak(commitment_encoded(salt, content_type, content, key, tags, metadata_json, ttl_seconds, ttl_blocks))


def dump(types: Sequence[str], values: Sequence[Sequence[Any]], tree: Tree, leaf_of: Sequence[bytes]) -> dict[str, Any]:
    """The ``StandardMerkleTree.dump()`` JSON (format ``standard-v1``) that ``StandardMerkleTree.load`` accepts.

    Args:
        types: the leaf encoding.
        values: JSON-ready leaf values (hex strings for bytes, decimal strings or ints for integers).
        tree: the built tree.
        leaf_of: the leaf hash of each value, same order as ``values``.
    """
    return {
        "format": "standard-v1",
        "leafEncoding": list(types),
        "tree": ["0x" + n.hex() for n in tree.nodes],
        "values": [{"value": list(v), "treeIndex": tree.tree_index(h)} for v, h in zip(values, leaf_of, strict=True)],
    }
