"""msgpack encoding of blocks and notifications, as specified in ``docs/wire.md`` (protocol v1).

Every block, transaction, receipt and log is a msgpack map with string keys, in the field order the
spec gives (the Rust bridge encodes with ``rmp_serde::to_vec_named`` in the same order, so both
sides produce byte-identical frames). Hashes, addresses, calldata, topics and log data are msgpack
``bin``. uint256 quantities (wei: ``value``, ``gas_price``, ``max_fee_per_gas``,
``max_priority_fee_per_gas``, ``base_fee_per_gas``) are ``bin`` holding the big-endian value with no
leading zero bytes (zero is the empty byte string). Other quantities are msgpack unsigned ints.

Decoding validates types and byte lengths and raises :class:`~sidecar.errors.CodecError` naming the
offending field path (for example ``new[3].transactions[17].sender``); it never raises anything else
on peer input.
"""

from __future__ import annotations

from typing import Any

import msgpack

from .errors import ChainError, CodecError
from .types import (
    Block,
    Chain,
    ChainCommitted,
    ChainReorged,
    ChainReverted,
    Log,
    Notification,
    Receipt,
    Transaction,
)

#: Largest frame accepted by default (bytes). A 30M-gas block full of calldata is ~2 MB; this leaves room
#: for long chains.
MAX_FRAME_BYTES = 64 * 1024 * 1024

KINDS = ("ChainCommitted", "ChainReorged", "ChainReverted")


# ---------------------------------------------------------------------------- uint256


def u256_to_bytes(value: int) -> bytes:
    """Big-endian bytes with no leading zeros (``0`` -> ``b""``).

    Raises:
        CodecError: negative or wider than 256 bits.
    """
    if value < 0 or value >= 1 << 256:
        raise CodecError(f"uint256 out of range: {value}")
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def _u256(raw: Any, path: str) -> int:
    if type(raw) is not bytes:
        raise CodecError(f"{path}: expected bin (uint256), got {type(raw).__name__}")
    if len(raw) > 32:
        raise CodecError(f"{path}: uint256 is {len(raw)} bytes, at most 32 allowed")
    if raw[:1] == b"\x00":
        raise CodecError(f"{path}: uint256 has a leading zero byte")
    return int.from_bytes(raw, "big")


def _opt_u256(raw: Any, path: str) -> int | None:
    return None if raw is None else _u256(raw, path)


def _fixed(raw: Any, size: int, path: str) -> bytes:
    if type(raw) is not bytes or len(raw) != size:
        got = f"{len(raw)} bytes" if isinstance(raw, bytes) else type(raw).__name__
        raise CodecError(f"{path}: expected {size} bytes, got {got}")
    return raw


def _bin(raw: Any, path: str) -> bytes:
    if type(raw) is not bytes:
        raise CodecError(f"{path}: expected bin, got {type(raw).__name__}")
    return raw


def _uint(raw: Any, path: str) -> int:
    if type(raw) is not int or raw < 0:
        raise CodecError(f"{path}: expected unsigned int, got {raw!r}"[:200])
    return raw


def _opt_uint(raw: Any, path: str) -> int | None:
    return None if raw is None else _uint(raw, path)


def _list(raw: Any, path: str) -> list[Any]:
    if type(raw) is not list:
        raise CodecError(f"{path}: expected array, got {type(raw).__name__}")
    return raw


def _map(raw: Any, path: str) -> dict[str, Any]:
    if type(raw) is not dict:
        raise CodecError(f"{path}: expected map, got {type(raw).__name__}")
    return raw


# ---------------------------------------------------------------------------- encode


def _opt_u256_bytes(v: int | None) -> bytes | None:
    return None if v is None else u256_to_bytes(v)


def log_to_wire(log: Log) -> dict[str, Any]:
    return {"address": log.address, "topics": list(log.topics), "data": log.data}


def receipt_to_wire(r: Receipt) -> dict[str, Any]:
    return {
        "status": r.status,
        "cumulative_gas_used": r.cumulative_gas_used,
        "logs": [log_to_wire(lg) for lg in r.logs],
        "contract_address": r.contract_address,
    }


def tx_to_wire(t: Transaction) -> dict[str, Any]:
    return {
        "hash": t.hash,
        "type": t.type,
        "sender": t.sender,
        "to": t.to,
        "value": u256_to_bytes(t.value),
        "input": t.input,
        "nonce": t.nonce,
        "gas_limit": t.gas_limit,
        "gas_price": _opt_u256_bytes(t.gas_price),
        "max_fee_per_gas": _opt_u256_bytes(t.max_fee_per_gas),
        "max_priority_fee_per_gas": _opt_u256_bytes(t.max_priority_fee_per_gas),
        "chain_id": t.chain_id,
    }


def block_to_wire(b: Block) -> dict[str, Any]:
    return {
        "number": b.number,
        "hash": b.hash,
        "parent_hash": b.parent_hash,
        "timestamp": b.timestamp,
        "beneficiary": b.beneficiary,
        "gas_limit": b.gas_limit,
        "gas_used": b.gas_used,
        "base_fee_per_gas": _opt_u256_bytes(b.base_fee_per_gas),
        "transactions": [tx_to_wire(t) for t in b.transactions],
        "receipts": [receipt_to_wire(r) for r in b.receipts],
    }


def _chain_to_wire(c: Chain | None) -> list[dict[str, Any]] | None:
    return None if c is None else [block_to_wire(b) for b in c.blocks]


def notification_to_wire(n: Notification, seq: int = 0) -> dict[str, Any]:
    """The ``notification`` message of ``docs/wire.md`` as a Python map (before msgpack)."""
    old = None if isinstance(n, ChainCommitted) else n.old
    new = None if isinstance(n, ChainReverted) else n.new
    return {
        "type": "notification",
        "seq": seq,
        "kind": n.kind,
        "old": _chain_to_wire(old),
        "new": _chain_to_wire(new),
    }


def packb(obj: Any) -> bytes:
    """msgpack-encode with ``bin`` for bytes and ``str`` for text (the spec's only settings)."""
    return msgpack.packb(obj, use_bin_type=True)


def unpackb(frame: bytes, max_bytes: int = MAX_FRAME_BYTES) -> Any:
    """Decode one msgpack frame.

    Raises:
        CodecError: oversized, truncated, trailing bytes, or not msgpack.
    """
    if len(frame) > max_bytes:
        raise CodecError(f"frame of {len(frame)} bytes exceeds the limit of {max_bytes} bytes")
    try:
        # The size is checked above; unpackb() has no max_buffer_size (that is Unpacker's).
        return msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except msgpack.ExtraData as e:
        raise CodecError(f"frame has {len(e.extra)} trailing bytes after the message") from None
    except (ValueError, msgpack.UnpackException, TypeError) as e:
        # msgpack raises ValueError("Unpack failed: incomplete input") for truncation.
        raise CodecError(f"frame is not valid msgpack ({len(frame)} bytes): {e}") from None


def encode_notification(n: Notification, seq: int = 0) -> bytes:
    """One ``notification`` frame (msgpack bytes)."""
    return packb(notification_to_wire(n, seq))


# ---------------------------------------------------------------------------- decode


# Decoding has a fast path (plain type and length checks, no string formatting) and a slow path that runs
# only when the fast path finds something wrong, to build a message naming the exact field.

_B = bytes


def log_from_wire(raw: Any, parent: str, i: int) -> Log:
    if type(raw) is dict:
        addr, topics, data = raw.get("address"), raw.get("topics"), raw.get("data")
        if (type(addr) is _B and len(addr) == 20 and type(data) is _B and type(topics) is list and len(topics) <= 4
                and all(type(t) is _B and len(t) == 32 for t in topics)):
            return Log(addr, tuple(topics), data)
    path = f"{parent}[{i}]"
    m = _map(raw, path)
    try:
        topics = [_fixed(t, 32, f"{path}.topics[{i}]") for i, t in enumerate(_list(m["topics"], path + ".topics"))]
        if len(topics) > 4:
            raise CodecError(f"{path}.topics: {len(topics)} topics, at most 4 allowed")
        return Log(_fixed(m["address"], 20, path + ".address"), tuple(topics), _bin(m["data"], path + ".data"))
    except KeyError as e:
        raise CodecError(f"{path}: missing field {e.args[0]!r}") from None


def receipt_from_wire(raw: Any, parent: str, i: int) -> Receipt:
    m = _map(raw, f"{parent}[{i}]")
    try:
        raw_logs = m["logs"]
        if type(raw_logs) is not list:
            _list(raw_logs, f"{parent}[{i}].logs")
        lp = f"{parent}[{i}].logs" if raw_logs else ""
        logs = tuple([log_from_wire(lg, lp, k) for k, lg in enumerate(raw_logs)])
        ca = m.get("contract_address")
        status = m["status"]
        cum = m["cumulative_gas_used"]
        if not ((status is None or (type(status) is int and status >= 0)) and type(cum) is int and cum >= 0
                and (ca is None or (type(ca) is _B and len(ca) == 20))):
            path = f"{parent}[{i}]"
            _opt_uint(status, path + ".status")
            _uint(cum, path + ".cumulative_gas_used")
            _fixed(ca, 20, path + ".contract_address")
        return Receipt(status, cum, logs, ca)
    except KeyError as e:
        raise CodecError(f"{parent}[{i}]: missing field {e.args[0]!r}") from None


def _fast_u256(raw: Any) -> int | None:
    if type(raw) is _B and len(raw) <= 32 and raw[:1] != b"\x00":
        return int.from_bytes(raw, "big")
    return None


def tx_from_wire(raw: Any, parent: str, i: int) -> Transaction:
    m = _map(raw, f"{parent}[{i}]") if type(raw) is not dict else raw
    try:
        h, sender, to, inp = m["hash"], m["sender"], m["to"], m["input"]
        type_, nonce, gas = m["type"], m["nonce"], m["gas_limit"]
        value = _fast_u256(m["value"])
        gp, mf, mp, cid = (m.get("gas_price"), m.get("max_fee_per_gas"), m.get("max_priority_fee_per_gas"),
                           m.get("chain_id"))
        ok = (type(h) is _B and len(h) == 32 and type(sender) is _B and len(sender) == 20
              and (to is None or (type(to) is _B and len(to) == 20)) and type(inp) is _B and value is not None
              and type(type_) is int and type_ >= 0 and type(nonce) is int and nonce >= 0
              and type(gas) is int and gas >= 0 and (cid is None or (type(cid) is int and cid >= 0)))
        fees = [None if f is None else _fast_u256(f) for f in (gp, mf, mp)]
        if not ok or any(f is None and r is not None for f, r in zip(fees, (gp, mf, mp), strict=True)):
            return _tx_slow(m, f"{parent}[{i}]")
        return Transaction(h, type_, sender, to, value, inp, nonce, gas, fees[0], fees[1], fees[2], cid)
    except KeyError as e:
        raise CodecError(f"{parent}[{i}]: missing field {e.args[0]!r}") from None


def _tx_slow(m: dict[str, Any], path: str) -> Transaction:
    to = m["to"]
    return Transaction(
        hash=_fixed(m["hash"], 32, path + ".hash"),
        type=_uint(m["type"], path + ".type"),
        sender=_fixed(m["sender"], 20, path + ".sender"),
        to=None if to is None else _fixed(to, 20, path + ".to"),
        value=_u256(m["value"], path + ".value"),
        input=_bin(m["input"], path + ".input"),
        nonce=_uint(m["nonce"], path + ".nonce"),
        gas_limit=_uint(m["gas_limit"], path + ".gas_limit"),
        gas_price=_opt_u256(m.get("gas_price"), path + ".gas_price"),
        max_fee_per_gas=_opt_u256(m.get("max_fee_per_gas"), path + ".max_fee_per_gas"),
        max_priority_fee_per_gas=_opt_u256(m.get("max_priority_fee_per_gas"), path + ".max_priority_fee_per_gas"),
        chain_id=_opt_uint(m.get("chain_id"), path + ".chain_id"),
    )


def block_from_wire(raw: Any, path: str = "block") -> Block:
    """Decode one block map. Raises :class:`CodecError` naming the field path."""
    m = _map(raw, path)
    try:
        txs = _list(m["transactions"], path + ".transactions")
        rcs = _list(m["receipts"], path + ".receipts")
        if len(txs) != len(rcs):
            raise CodecError(f"{path}: {len(txs)} transactions but {len(rcs)} receipts")
        tp, rp = path + ".transactions", path + ".receipts"
        return Block(
            number=_uint(m["number"], path + ".number"),
            hash=_fixed(m["hash"], 32, path + ".hash"),
            parent_hash=_fixed(m["parent_hash"], 32, path + ".parent_hash"),
            timestamp=_uint(m["timestamp"], path + ".timestamp"),
            beneficiary=_fixed(m["beneficiary"], 20, path + ".beneficiary"),
            gas_limit=_uint(m["gas_limit"], path + ".gas_limit"),
            gas_used=_uint(m["gas_used"], path + ".gas_used"),
            base_fee_per_gas=_opt_u256(m.get("base_fee_per_gas"), path + ".base_fee_per_gas"),
            transactions=tuple([tx_from_wire(t, tp, i) for i, t in enumerate(txs)]),
            receipts=tuple([receipt_from_wire(r, rp, i) for i, r in enumerate(rcs)]),
        )
    except KeyError as e:
        raise CodecError(f"{path}: missing field {e.args[0]!r}") from None


def _chain_from_wire(raw: Any, path: str) -> Chain:
    blocks = tuple(block_from_wire(b, f"{path}[{i}]") for i, b in enumerate(_list(raw, path)))
    try:
        return Chain(blocks)
    except ChainError as e:
        raise CodecError(f"{path}: {e}") from None


def notification_from_wire(raw: Any) -> tuple[int, Notification]:
    """Decode a ``notification`` message map into ``(seq, notification)``.

    Raises:
        CodecError: unknown kind, missing chain, malformed block, or chains that do not fit together.
    """
    m = _map(raw, "notification")
    if m.get("type") != "notification":
        raise CodecError(f"expected a 'notification' message, got type {m.get('type')!r}")
    seq = _uint(m.get("seq", 0), "notification.seq")
    kind = m.get("kind")
    try:
        if kind == "ChainCommitted":
            return seq, ChainCommitted(_chain_from_wire(m.get("new"), "new"))
        if kind == "ChainReverted":
            return seq, ChainReverted(_chain_from_wire(m.get("old"), "old"))
        if kind == "ChainReorged":
            return seq, ChainReorged(_chain_from_wire(m.get("old"), "old"), _chain_from_wire(m.get("new"), "new"))
    except ChainError as e:
        raise CodecError(f"{kind}: {e}") from None
    raise CodecError(f"unknown notification kind {kind!r}; expected one of {', '.join(KINDS)}")


def decode_notification(frame: bytes, max_bytes: int = MAX_FRAME_BYTES) -> tuple[int, Notification]:
    """Decode one ``notification`` frame into ``(seq, notification)``. Raises :class:`CodecError`."""
    return notification_from_wire(unpackb(frame, max_bytes))
