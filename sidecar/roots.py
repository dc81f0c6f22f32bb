"""What a block header commits to, recomputed from JSON-RPC objects: the block hash (keccak of the RLP header),
every transaction hash, and the ``transactionsRoot`` and ``receiptsRoot`` (Merkle-Patricia trie roots).

A node that alters a transaction, a receipt's status or a log, drops or reorders them, or serves a header
whose fields do not hash to its ``hash`` is caught here: :func:`verify_block` raises
:class:`VerificationError` naming the block number and hash and what did not match.

Encodings (RLP via the ``rlp`` package, keccak via ``eth-hash``):

* header: the Yellow Paper's 15 fields, then, when the node returns them, ``baseFeePerGas`` (EIP-1559),
  ``withdrawalsRoot`` (EIP-4895), ``blobGasUsed`` and ``excessBlobGas`` (EIP-4844), ``parentBeaconBlockRoot``
  (EIP-4788), ``requestsHash`` (EIP-7685), in that order;
* transactions: legacy RLP lists, or EIP-2718 envelopes ``type || rlp(payload)`` for types 1 (EIP-2930),
  2 (EIP-1559), 3 (EIP-4844, the network form without blobs) and 4 (EIP-7702);
* receipts: ``rlp([status or post-state root, cumulativeGasUsed, logsBloom, logs])``, EIP-2718 typed the same way;
* both roots: the ordered trie, key ``rlp(index)``, value the encoding above (Yellow Paper, appendix D).

Not covered by any root: a transaction's ``from`` (it is the signer, recovered from ``v, r, s``; not checked
here) and a receipt's ``contractAddress`` (derived from ``from`` and ``nonce``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import rlp
from eth_hash.auto import keccak

from .errors import CodecError
from .jsonrpc import opt_data, qty

#: keccak(rlp(b"")): the root of an empty trie (a block without transactions or receipts).
EMPTY_ROOT = keccak(rlp.encode(b""))

_HEADER = ("parentHash", "sha3Uncles", "miner", "stateRoot", "transactionsRoot", "receiptsRoot", "logsBloom",
           "difficulty", "number", "gasLimit", "gasUsed", "timestamp", "extraData", "mixHash", "nonce")
#: Fields appended by later forks, in header order; each is present from its fork on.
_HEADER_LATER = ("baseFeePerGas", "withdrawalsRoot", "blobGasUsed", "excessBlobGas", "parentBeaconBlockRoot",
                 "requestsHash")
#: Data fields (bytes); every other header field is a quantity (int).
_HEADER_DATA = {"parentHash", "sha3Uncles", "miner", "stateRoot", "transactionsRoot", "receiptsRoot", "logsBloom",
                "extraData", "mixHash", "nonce", "withdrawalsRoot", "parentBeaconBlockRoot", "requestsHash"}

#: EIP-2718 payload fields by transaction type ("accessList", "authorizationList", "blobVersionedHashes" and the
#: signature are special-cased below).
_TX_FIELDS: dict[int, tuple[str, ...]] = {
    1: ("chainId", "nonce", "gasPrice", "gas", "to", "value", "input", "accessList", "yParity", "r", "s"),
    2: ("chainId", "nonce", "maxPriorityFeePerGas", "maxFeePerGas", "gas", "to", "value", "input", "accessList",
        "yParity", "r", "s"),
    3: ("chainId", "nonce", "maxPriorityFeePerGas", "maxFeePerGas", "gas", "to", "value", "input", "accessList",
        "maxFeePerBlobGas", "blobVersionedHashes", "yParity", "r", "s"),
    4: ("chainId", "nonce", "maxPriorityFeePerGas", "maxFeePerGas", "gas", "to", "value", "input", "accessList",
        "authorizationList", "yParity", "r", "s"),
}
_LEGACY_FIELDS = ("nonce", "gasPrice", "gas", "to", "value", "input", "v", "r", "s")
_TX_DATA = {"to", "input"}


class VerificationError(CodecError):
    """A block's transactions, receipts or header do not match what its header commits to.

    Attributes:
        number: the block number, as the node gave it (``None`` when unreadable).
        block_hash: the block hash, ``0x``-hex, as the node gave it.
    """

    def __init__(self, message: str, number: int | None = None, block_hash: str | None = None) -> None:
        super().__init__(message)
        self.number = number
        self.block_hash = block_hash


_q = qty


def _b(raw: Any, field: str) -> bytes:
    """0x-hex data as bytes; ``None`` (a contract creation's ``to``) as empty bytes, as RLP encodes it."""
    return opt_data(raw, field) or b""


def _field(raw: Mapping[str, Any], name: str, path: str) -> Any:
    if name == "input":
        value = raw.get("input", raw.get("data"))
    elif name == "yParity":
        value = raw.get("yParity", raw.get("v"))
    else:
        value = raw.get(name)
    if value is None and name != "to":
        raise CodecError(f"{path}: missing field {name!r}")
    return value


def _access_list(raw: Any, path: str) -> list[list[Any]]:
    if not isinstance(raw, list):
        raise CodecError(f"{path}: expected a list, got {type(raw).__name__}")
    out = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("storageKeys"), list):
            raise CodecError(f"{path}[{i}]: expected {{address, storageKeys}}")
        out.append([_b(entry.get("address"), f"{path}[{i}].address"),
                    [_b(k, f"{path}[{i}].storageKeys[{j}]") for j, k in enumerate(entry["storageKeys"])]])
    return out


def _authorizations(raw: Any, path: str) -> list[list[Any]]:
    if not isinstance(raw, list):
        raise CodecError(f"{path}: expected a list, got {type(raw).__name__}")
    out = []
    for i, a in enumerate(raw):
        if not isinstance(a, Mapping):
            raise CodecError(f"{path}[{i}]: expected an authorization object")
        p = f"{path}[{i}]"
        out.append([_q(a.get("chainId"), p + ".chainId"), _b(a.get("address"), p + ".address"),
                    _q(a.get("nonce"), p + ".nonce"), _q(a.get("yParity", a.get("v")), p + ".yParity"),
                    _q(a.get("r"), p + ".r"), _q(a.get("s"), p + ".s")])
    return out


def tx_encoding(raw: Mapping[str, Any], path: str = "transaction") -> bytes:
    """The consensus encoding of a full JSON-RPC transaction: what its hash is the keccak of, and the value
    stored under its index in the transactions trie.

    Raises:
        CodecError: a field is missing or malformed, or the type is not one of 0-4 (named with ``path``).
    """
    type_ = _q(raw.get("type", "0x0"), path + ".type")
    fields = _LEGACY_FIELDS if type_ == 0 else _TX_FIELDS.get(type_)
    if fields is None:
        raise CodecError(f"{path}: transaction type {type_:#x} is not one this sidecar can verify (0-4)")
    items: list[Any] = []
    for name in fields:
        value = _field(raw, name, path)
        if name == "accessList":
            items.append(_access_list(value, f"{path}.accessList"))
        elif name == "authorizationList":
            items.append(_authorizations(value, f"{path}.authorizationList"))
        elif name == "blobVersionedHashes":
            if not isinstance(value, list):
                raise CodecError(f"{path}.blobVersionedHashes: expected a list")
            items.append([_b(v, f"{path}.blobVersionedHashes[{i}]") for i, v in enumerate(value)])
        elif name in _TX_DATA:
            items.append(_b(value, f"{path}.{name}"))
        else:
            items.append(_q(value, f"{path}.{name}"))
    body = rlp.encode(items)
    return body if type_ == 0 else bytes([type_]) + body


def receipt_encoding(raw: Mapping[str, Any], path: str = "receipt") -> bytes:
    """The consensus encoding of a JSON-RPC receipt (the value under its index in the receipts trie).

    Raises:
        CodecError: a field is missing or malformed (named with ``path``).
    """
    type_ = _q(raw.get("type", "0x0"), path + ".type")
    if raw.get("status") is not None:
        first: Any = _q(raw["status"], path + ".status")
    elif raw.get("root") is not None:
        first = _b(raw["root"], path + ".root")  # before Byzantium (EIP-658): the post-transaction state root
    else:
        raise CodecError(f"{path}: neither status nor root")
    logs = raw.get("logs")
    if not isinstance(logs, list):
        raise CodecError(f"{path}.logs: expected a list")
    enc_logs = []
    for i, lg in enumerate(logs):
        p = f"{path}.logs[{i}]"
        if not isinstance(lg, Mapping) or not isinstance(lg.get("topics"), list):
            raise CodecError(f"{p}: expected {{address, topics, data}}")
        topics = [_b(t, f"{p}.topics[{j}]") for j, t in enumerate(lg["topics"])]
        enc_logs.append([_b(lg.get("address"), p + ".address"), topics, _b(lg.get("data"), p + ".data")])
    body = rlp.encode([first, _q(raw.get("cumulativeGasUsed"), path + ".cumulativeGasUsed"),
                       _b(_field(raw, "logsBloom", path), path + ".logsBloom"), enc_logs])
    return body if type_ == 0 else bytes([type_]) + body


def header_hash(raw: Mapping[str, Any], path: str = "block") -> bytes:
    """keccak of the RLP header rebuilt from a JSON-RPC block's fields: equals the block hash of a genuine block.

    Raises:
        CodecError: a header field is missing or malformed.
    """
    fields = list(_HEADER) + [f for f in _HEADER_LATER if raw.get(f) is not None]
    items = [(_b if f in _HEADER_DATA else _q)(_field(raw, f, path), f"{path}.{f}") for f in fields]
    return keccak(rlp.encode(items))


# ---------------------------------------------------------------------------------------------------- ordered trie


def _nibbles(key: bytes) -> tuple[int, ...]:
    return tuple(n for byte in key for n in (byte >> 4, byte & 15))


def _compact(nibbles: Sequence[int], leaf: bool) -> bytes:
    """Hex-prefix encoding of a nibble path (Yellow Paper, appendix C)."""
    flag = 2 if leaf else 0
    padded = [flag + 1, *nibbles] if len(nibbles) % 2 else [flag, 0, *nibbles]
    return bytes(padded[i] * 16 + padded[i + 1] for i in range(0, len(padded), 2))


def _ref(node: list[Any]) -> Any:
    """How a parent refers to ``node``: inline when its RLP is shorter than 32 bytes, else by its keccak."""
    enc = rlp.encode(node)
    return node if len(enc) < 32 else keccak(enc)


def _build(items: Sequence[tuple[tuple[int, ...], bytes]], depth: int) -> list[Any]:
    if len(items) == 1:
        path, value = items[0]
        return [_compact(path[depth:], True), value]
    first, last = items[0][0], items[-1][0]  # sorted: the common prefix of all is that of the first and last
    common = 0
    while depth + common < min(len(first), len(last)) and first[depth + common] == last[depth + common]:
        common += 1
    if common:
        return [_compact(first[depth:depth + common], False), _ref(_build(items, depth + common))]
    branch: list[Any] = [b""] * 17
    groups: dict[int, list[tuple[tuple[int, ...], bytes]]] = {}
    for path, value in items:
        if len(path) == depth:
            branch[16] = value
        else:
            groups.setdefault(path[depth], []).append((path, value))
    for nibble, group in groups.items():
        branch[nibble] = _ref(_build(group, depth + 1))
    return branch


def ordered_trie_root(values: Sequence[bytes]) -> bytes:
    """The Merkle-Patricia root of ``values`` keyed by ``rlp(index)``: a block's ``transactionsRoot`` or
    ``receiptsRoot`` given the encodings above, in block order (32 bytes).

    Builds the trie in one pass over the sorted keys; equals ``trie.HexaryTrie``'s root (cross-checked in
    ``tests/test_roots.py``), which inserts key by key and takes ~40 times as long for a 200-transaction block.
    """
    if not values:
        return EMPTY_ROOT
    items = sorted((_nibbles(rlp.encode(i)), v) for i, v in enumerate(values))
    return keccak(rlp.encode(_build(items, 0)))


# ---------------------------------------------------------------------------------------------------- verify


def verify_block(raw: Mapping[str, Any], receipts: Sequence[Mapping[str, Any]]) -> None:
    """Check a full JSON-RPC block (``eth_getBlockByNumber(n, true)``) and its receipts against its header:
    header fields hash to ``hash``; each transaction's encoding hashes to its ``hash``; the transactions and
    the receipts, in order, give ``transactionsRoot`` and ``receiptsRoot``.

    Raises:
        VerificationError: a mismatch or malformed field, naming the block number and hash and what failed.
    """
    number = raw.get("number")
    claimed = raw.get("hash")
    where = f"block {number} {claimed}"
    num = int(number, 16) if isinstance(number, str) and number.startswith("0x") and len(number) > 2 else None
    try:
        if header_hash(raw, where) != _b(claimed, where + ".hash"):
            raise CodecError(f"{where}: the header fields do not hash to the block hash")
        encs = []
        for i, t in enumerate(raw["transactions"]):
            p = f"{where}.transactions[{i}]"
            if not isinstance(t, Mapping):
                raise CodecError(f"{p}: expected a transaction object")
            enc = tx_encoding(t, p)
            if keccak(enc) != _b(t.get("hash"), p + ".hash"):
                raise CodecError(f"{p}: its fields do not hash to its hash {t.get('hash')}")
            encs.append(enc)
        if ordered_trie_root(encs) != _b(raw.get("transactionsRoot"), where + ".transactionsRoot"):
            raise CodecError(f"{where}: the transactions do not match transactionsRoot {raw.get('transactionsRoot')}")
        rencs = [receipt_encoding(r, f"{where}.receipts[{i}]") for i, r in enumerate(receipts)]
        if ordered_trie_root(rencs) != _b(raw.get("receiptsRoot"), where + ".receiptsRoot"):
            raise CodecError(f"{where}: the receipts do not match receiptsRoot {raw.get('receiptsRoot')}")
    except (CodecError, ValueError) as e:
        raise VerificationError(str(e), num, claimed if isinstance(claimed, str) else None) from None
    except (KeyError, TypeError, AttributeError) as e:
        raise VerificationError(f"{where}: malformed: {type(e).__name__}: {e}", num,
                                claimed if isinstance(claimed, str) else None) from None
