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

import re
from typing import Annotated, Any, Generic, TypeVar

import msgpack
import msgspec

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

_B = TypeVar("_B")


# ---------------------------------------------------------------------------- uint256


def u256_to_bytes(value: int) -> bytes:
    """Big-endian bytes with no leading zeros (``0`` -> ``b""``).

    Raises:
        CodecError: negative or wider than 256 bits.
    """
    if value < 0 or value >= 1 << 256:
        raise CodecError(f"uint256 out of range: {value}")
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


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


def unpackb(frame: bytes | memoryview, max_bytes: int = MAX_FRAME_BYTES) -> Any:
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


# Decoding: msgspec builds the model's Structs straight from msgpack (or from already-unpacked Python values),
# validating every type and byte length in C. uint256 fields arrive as ``bytes`` (see ``types.U256``);
# ``_wei_to_int`` then checks and converts them all in one Python pass over the chain.

_U256_RULE = "expected a uint256: bin of at most 32 big-endian bytes with no leading zero byte"
_TX_WEI = ("value", "gas_price", "max_fee_per_gas", "max_priority_fee_per_gas")
_set = msgspec.structs.force_setattr
_from_bytes = int.from_bytes


def _u256(v: Any, path: str) -> int:
    if type(v) is not bytes or len(v) > 32 or v[:1] == b"\x00":
        raise CodecError(f"{path}: {_U256_RULE}, got {type(v).__name__} {v!r:.80}")
    return _from_bytes(v, "big")


def _wei_to_int(blocks: list[Block], name: str) -> None:
    """Replace the raw uint256 ``bytes`` of freshly decoded blocks by ``int`` (in place, before anyone sees them).

    Raises:
        CodecError: a value wider than 32 bytes, with a leading zero byte, or not ``bin``, naming its path.
    """
    for i, b in enumerate(blocks):
        v = b.base_fee_per_gas
        if v is not None:
            _set(b, "base_fee_per_gas", _u256(v, f"{name}[{i}].base_fee_per_gas"))
        for j, tx in enumerate(b.transactions):
            for f in _TX_WEI:
                v = getattr(tx, f)
                if v is not None:
                    if type(v) is bytes and len(v) <= 32 and v[:1] != b"\x00":
                        _set(tx, f, _from_bytes(v, "big"))
                    else:
                        _u256(v, f"{name}[{i}].transactions[{j}].{f}")


class _Header(msgspec.Struct):
    number: Annotated[int, msgspec.Meta(ge=0)]


class _WireNotification(msgspec.Struct, Generic[_B]):
    """The ``notification`` message, with its blocks as ``Block`` (a full decode) or ``_Header`` (the envelope)."""

    type: str
    seq: Annotated[int, msgspec.Meta(ge=0)] = 0
    kind: str = ""
    old: list[_B] | None = None
    new: list[_B] | None = None


_DECODER = msgspec.msgpack.Decoder(_WireNotification[Block])
_ENVELOPE = msgspec.msgpack.Decoder(_WireNotification[_Header])
_AT = re.compile(r"^(?P<msg>.*) - at `\$(?P<path>[^`]*)`$", re.S)


def _validation_message(e: msgspec.ValidationError) -> str:
    """``"new[3].transactions[17].sender: Expected `bytes` of length >= 20"`` from msgspec's message."""
    m = _AT.match(str(e))
    if not m:
        return str(e)
    return f"{m['path'].lstrip('.') or 'message'}: {m['msg']}"


def _chain(blocks: list[Block] | None, name: str, kind: str) -> Chain:
    if not blocks:
        raise CodecError(f"{kind}: `{name}` must hold at least one block")
    _wei_to_int(blocks, name)
    for i, b in enumerate(blocks):
        if len(b.transactions) != len(b.receipts):
            raise CodecError(f"{name}[{i}]: {len(b.transactions)} transactions but {len(b.receipts)} receipts")
    try:
        return Chain(tuple(blocks))
    except ChainError as e:
        raise CodecError(f"{kind}.{name}: {e}") from None


def _finish(w: _WireNotification[Block]) -> tuple[int, Notification]:
    if w.type != "notification":
        raise CodecError(f"expected a 'notification' message, got type {w.type!r}")
    kind = w.kind
    try:
        if kind == "ChainCommitted":
            return w.seq, ChainCommitted(_chain(w.new, "new", kind))
        if kind == "ChainReverted":
            return w.seq, ChainReverted(_chain(w.old, "old", kind))
        if kind == "ChainReorged":
            return w.seq, ChainReorged(_chain(w.old, "old", kind), _chain(w.new, "new", kind))
    except ChainError as e:
        raise CodecError(f"{kind}: {e}") from None
    raise CodecError(f"unknown notification kind {kind!r}; expected one of {', '.join(KINDS)}")


def notification_from_wire(raw: Any) -> tuple[int, Notification]:
    """Decode an unpacked ``notification`` message map into ``(seq, notification)``.

    Raises:
        CodecError: unknown kind, missing chain, malformed block (naming the field path, e.g.
            ``new[3].transactions[17].sender``), or chains that do not fit together.
    """
    if type(raw) is not dict:
        raise CodecError(f"notification: expected map, got {type(raw).__name__}")
    try:
        w = msgspec.convert(raw, _WireNotification[Block])
    except msgspec.ValidationError as e:
        raise CodecError(_validation_message(e)) from None
    return _finish(w)


def blocks_from_wire(raw: Any, name: str) -> tuple[Block, ...]:
    """Decode an unpacked list of blocks (``history_blocks.blocks``): possibly empty; when not, one contiguous
    chain, oldest first, each block with as many receipts as transactions.

    Raises:
        CodecError: not a list, a malformed block (naming its path, e.g. ``blocks[3].transactions[1].sender``),
            or blocks that do not follow each other.
    """
    try:
        blocks = msgspec.convert(raw, list[Block])
    except msgspec.ValidationError as e:
        msg = _validation_message(e)
        raise CodecError(f"{name}{msg}" if msg.startswith("[") else f"{name}: {msg}") from None
    if not blocks:
        return ()
    return _chain(blocks, name, "history").blocks


def _decode(decoder: msgspec.msgpack.Decoder[_WireNotification[_B]], frame: bytes | memoryview,
            max_bytes: int) -> _WireNotification[_B]:
    if len(frame) > max_bytes:
        raise CodecError(f"frame of {len(frame)} bytes exceeds the limit of {max_bytes} bytes")
    try:
        return decoder.decode(frame)
    except msgspec.ValidationError as e:
        raise CodecError(_validation_message(e)) from None
    except msgspec.DecodeError as e:
        raise CodecError(f"frame is not valid msgpack ({len(frame)} bytes): {e}") from None


def decode_notification(frame: bytes | memoryview, max_bytes: int = MAX_FRAME_BYTES) -> tuple[int, Notification]:
    """Decode one ``notification`` frame into ``(seq, notification)``.

    Raises:
        CodecError: oversized, truncated or not msgpack; a field of the wrong type or length (the message
            names its path, e.g. ``new[3].transactions[17].sender``); chains that do not fit together.
    """
    return _finish(_decode(_DECODER, frame, max_bytes))


def peek_notification(frame: bytes | memoryview, max_bytes: int = MAX_FRAME_BYTES) -> tuple[int, str, int | None]:
    """Read a ``notification`` frame's envelope without building its blocks: ``(seq, kind, tip)``, where ``tip``
    is the block number of the newest block of ``new`` (``None`` for ``ChainReverted``).

    Costs a sixth of :func:`decode_notification` (it still parses the whole frame, so it also refuses
    truncated or non-msgpack frames); the body is validated only by a later :func:`decode_notification`.

    Raises:
        CodecError: oversized, not msgpack, not a notification, an unknown kind, or a missing chain.
    """
    e = _decode(_ENVELOPE, frame, max_bytes)
    if e.type != "notification":
        raise CodecError(f"expected a 'notification' message, got type {e.type!r}")
    if e.kind not in KINDS:
        raise CodecError(f"unknown notification kind {e.kind!r}; expected one of {', '.join(KINDS)}")
    if e.kind != "ChainCommitted" and not e.old:
        raise CodecError(f"{e.kind}: `old` must hold at least one block")
    if e.kind == "ChainReverted":
        return e.seq, e.kind, None
    if not e.new:
        raise CodecError(f"{e.kind}: `new` must hold at least one block")
    return e.seq, e.kind, e.new[-1].number
