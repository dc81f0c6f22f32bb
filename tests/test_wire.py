"""Golden vectors (written by the Rust encoder, ``bridge/crates/bridge-replay/src/bin/gen_vectors.rs``):
Python decodes each one to exactly the values ``vectors.json`` describes, and re-encodes them to the
same bytes. Plus the refusals of :mod:`monmouth.wire`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import pytest

from monmouth import codec, wire
from monmouth.types import (
    Block,
    BlockRef,
    Chain,
    ChainCommitted,
    ChainReorged,
    ChainReverted,
    Log,
    Receipt,
    Transaction,
)

VECTORS = Path(__file__).parent / "vectors"
DOC = json.loads((VECTORS / "vectors.json").read_text())


def _b(s: str | None) -> bytes | None:
    return None if s is None else bytes.fromhex(s.removeprefix("0x"))


def _u(s: str | None) -> int | None:
    return None if s is None else int(s)


def _ref(j: dict[str, Any] | None) -> BlockRef | None:
    return None if j is None else BlockRef(j["number"], _b(j["hash"]))  # type: ignore[arg-type]


def _tx(j: dict[str, Any]) -> Transaction:
    return Transaction(
        hash=_b(j["hash"]), type=j["type"], sender=_b(j["sender"]), to=_b(j["to"]), value=int(j["value"]),  # type: ignore[arg-type]
        input=_b(j["input"]), nonce=j["nonce"], gas_limit=j["gas_limit"], gas_price=_u(j["gas_price"]),  # type: ignore[arg-type]
        max_fee_per_gas=_u(j["max_fee_per_gas"]), max_priority_fee_per_gas=_u(j["max_priority_fee_per_gas"]),
        chain_id=j["chain_id"],
    )


def _receipt(j: dict[str, Any]) -> Receipt:
    logs = tuple(Log(_b(lg["address"]), tuple(_b(t) for t in lg["topics"]), _b(lg["data"])) for lg in j["logs"])  # type: ignore[misc, arg-type]
    return Receipt(j["status"], j["cumulative_gas_used"], logs, _b(j["contract_address"]))


def _block(j: dict[str, Any]) -> Block:
    return Block(
        number=j["number"], hash=_b(j["hash"]), parent_hash=_b(j["parent_hash"]), timestamp=j["timestamp"],  # type: ignore[arg-type]
        beneficiary=_b(j["beneficiary"]), gas_limit=j["gas_limit"], gas_used=j["gas_used"],  # type: ignore[arg-type]
        base_fee_per_gas=_u(j["base_fee_per_gas"]),
        transactions=tuple(_tx(t) for t in j["transactions"]),
        receipts=tuple(_receipt(r) for r in j["receipts"]),
    )


def _chain(j: list[dict[str, Any]] | None) -> Chain | None:
    return None if j is None else Chain(tuple(_block(b) for b in j))


def expected(v: dict[str, Any]) -> wire.Message:
    j = v["value"]
    t = j["type"]
    if t == "hello":
        return wire.Hello(j["version"], _ref(j["head"]), j["window"], j["client"], j.get("start_block"))
    if t == "welcome":
        return wire.Welcome(j["version"], j["chain_id"], j["node"], j["heartbeat_ms"], j["epoch"], j.get("node_head"),
                            j.get("history"))
    if t == "history":
        return wire.HistoryRequest(j["id"], j["from"], j["to"], _ref(j["head"]))
    if t == "history_blocks":
        blocks = None if j["blocks"] is None else tuple(_block(b) for b in j["blocks"])
        return wire.HistoryBlocks(j["id"], blocks, j["error"])
    if t == "ack":
        return wire.Ack(j["seq"], _ref(j["head"]))
    if t == "heartbeat":
        return wire.Heartbeat(j["ts_ms"], j.get("node_head"))
    if t == "error":
        return wire.Error(j["code"], j["message"])
    assert t == "notification"
    old, new = _chain(j["old"]), _chain(j["new"])
    n = {"ChainCommitted": lambda: ChainCommitted(new), "ChainReorged": lambda: ChainReorged(old, new),
         "ChainReverted": lambda: ChainReverted(old)}[j["kind"]]()
    return wire.NotificationMsg(j["seq"], n)  # type: ignore[arg-type]


IDS = [v["name"] for v in DOC["vectors"]]


def test_vectors_cover_every_message_and_kind() -> None:
    types = {v["type"] for v in DOC["vectors"]}
    assert types == {"hello", "welcome", "notification", "ack", "heartbeat", "error", "history", "history_blocks"}
    kinds = {v["value"]["kind"] for v in DOC["vectors"] if v["type"] == "notification"}
    assert kinds == {"ChainCommitted", "ChainReorged", "ChainReverted"}
    assert DOC["protocol_version"] == wire.PROTOCOL_VERSION


@pytest.mark.parametrize("v", DOC["vectors"], ids=IDS)
def test_vector_decodes_to_described_values(v: dict[str, Any]) -> None:
    frame = (VECTORS / v["file"]).read_bytes()
    got = wire.decode(frame)
    want = expected(v)
    # Dataclass equality compares every field, recursively (blocks, transactions, receipts, logs).
    assert got == want
    # The generic msgpack view has exactly the spec's keys, in the spec's order, "type" first.
    raw = msgpack.unpackb(frame, raw=False)
    assert set(raw) == set(v["value"])
    assert list(raw) == list(wire.to_wire(want))
    assert next(iter(raw)) == "type"


@pytest.mark.parametrize("v", DOC["vectors"], ids=IDS)
def test_python_encoding_is_byte_identical(v: dict[str, Any]) -> None:
    frame = (VECTORS / v["file"]).read_bytes()
    assert wire.encode(expected(v)) == frame
    if v["type"] == "notification":
        seq, n = codec.decode_notification(frame)
        assert codec.encode_notification(n, seq) == frame


def test_edge_values_survive() -> None:
    frame = (VECTORS / "notification_committed.msgpack").read_bytes()
    msg = wire.decode(frame)
    assert isinstance(msg, wire.NotificationMsg)
    b0, b1 = msg.notification.new.blocks  # type: ignore[union-attr]
    assert b0.base_fee_per_gas is None and b1.base_fee_per_gas == 7_000_000_000
    legacy, creation, transfer = b0.transactions
    assert legacy.chain_id is None and legacy.value == 0 and legacy.input == b""
    assert b0.receipts[0].status is None
    assert creation.to is None and b0.receipts[1].contract_address is not None
    assert creation.nonce == 1 << 40 and creation.max_priority_fee_per_gas == 0
    assert transfer.value == 2**256 - 1 and transfer.max_fee_per_gas == 2**128 - 1
    assert len(b0.receipts[2].logs[0].topics) == 4 and b0.receipts[1].logs[0].topics == ()
    reverted = wire.decode((VECTORS / "notification_reverted.msgpack").read_bytes())
    assert isinstance(reverted, wire.NotificationMsg) and reverted.seq == 2**32 + 1


# ---------------------------------------------------------------------------- refusals


def _frame(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


@pytest.mark.parametrize(
    ("frame", "code", "needle"),
    [
        (b"", "malformed", "msgpack"),
        (b"\xc1", "malformed", "msgpack"),
        (_frame([1, 2, 3]), "malformed", "not a map"),
        (_frame({"seq": 1}), "malformed", "type"),
        (_frame({"type": "bogus"}), "unknown_type", "bogus"),
        (_frame({"type": "heartbeat"}), "malformed", "ts_ms"),
        (_frame({"type": "heartbeat", "ts_ms": -1}), "malformed", "ts_ms"),
        (_frame({"type": "ack", "seq": 1}), "malformed", "head"),
        (_frame({"type": "ack", "seq": 1, "head": {"number": 1, "hash": b"\x01" * 31}}), "malformed", "hash"),
        (_frame({"type": "notification", "seq": 1, "kind": "ChainCommitted", "old": None, "new": []}),
         "malformed", "at least one block"),
        (_frame({"type": "notification", "seq": 1, "kind": "Nope"}), "malformed", "kind"),
        (_frame({"type": "heartbeat", "ts_ms": 1}) + b"\xc0", "malformed", "trailing"),
        (_frame({"type": "history", "id": 1, "from": -1, "to": 2, "head": None}), "malformed", "history.from"),
        (_frame({"type": "history_blocks", "id": 3, "blocks": [], "error": "x"}), "malformed", "exactly one"),
        (_frame({"type": "history_blocks", "id": 3, "blocks": None, "error": None}), "malformed", "exactly one"),
        (_frame({"type": "history_blocks", "id": 3, "blocks": [{"number": 1}], "error": None}), "malformed",
         "history_blocks 3: blocks[0]: Object missing required field `hash`"),
    ],
)
def test_decode_refuses(frame: bytes, code: str, needle: str) -> None:
    with pytest.raises(wire.WireError) as e:
        wire.decode(frame)
    assert e.value.code == code
    assert needle in str(e.value)


def test_truncated_vectors_are_refused() -> None:
    frame = (VECTORS / "notification_reorged.msgpack").read_bytes()
    for cut in (1, 10, len(frame) // 2, len(frame) - 1):
        with pytest.raises(wire.WireError) as e:
            wire.decode(frame[:cut])
        assert e.value.code == "malformed"


def test_oversized_frame_is_refused() -> None:
    frame = (VECTORS / "heartbeat.msgpack").read_bytes()
    with pytest.raises(wire.WireError) as e:
        wire.decode(frame, max_bytes=len(frame) - 1)
    assert e.value.code == "frame_too_large"


def test_uint256_with_leading_zero_is_refused() -> None:
    raw = msgpack.unpackb((VECTORS / "notification_committed.msgpack").read_bytes(), raw=False)
    raw["new"][0]["transactions"][1]["value"] = b"\x00\x01"
    with pytest.raises(wire.WireError, match="leading zero"):
        wire.decode(_frame(raw))


def test_unknown_keys_and_key_order_are_tolerated() -> None:
    frame = _frame({"extra": [1, 2], "ts_ms": 5, "type": "heartbeat"})
    assert wire.decode(frame) == wire.Heartbeat(5)
    welcome = _frame({"type": "welcome", "version": 1, "chain_id": 1, "node": "x", "heartbeat_ms": 10})
    assert wire.decode(welcome) == wire.Welcome(1, 1, "x", 10, 0)


def test_optional_node_head_is_omitted_when_unknown_and_checked_when_present() -> None:
    with_head = {v["name"]: v["value"].get("node_head") for v in DOC["vectors"] if v["type"] in ("welcome", "heartbeat")}
    assert with_head == {"welcome": 21_000_000, "welcome_history": 21_000_000, "heartbeat": None,
                         "heartbeat_bridge": 21_000_001}
    # A sidecar's heartbeat has no node_head key at all (byte-identical to the pre-node_head encoding).
    assert msgpack.unpackb(wire.encode(wire.Heartbeat(5)), raw=False) == {"type": "heartbeat", "ts_ms": 5}
    assert wire.decode(_frame({"type": "heartbeat", "ts_ms": 5, "node_head": None})) == wire.Heartbeat(5)
    with pytest.raises(wire.WireError, match=r"heartbeat\.node_head") as e:
        wire.decode(_frame({"type": "heartbeat", "ts_ms": 5, "node_head": -1}))
    assert e.value.code == "malformed"


def test_newer_version_is_refused_clearly() -> None:
    wire.check_version(1)
    with pytest.raises(wire.UnsupportedVersionError) as e:
        wire.check_version(2)
    assert e.value.code == "unsupported_version"
    assert "version 2" in str(e.value) and "version 1" in str(e.value)


def test_deferred_notification_reads_the_envelope_and_loads_the_body_later() -> None:
    frame = (VECTORS / "notification_committed.msgpack").read_bytes()
    full = wire.decode(frame)
    pending = wire.decode(memoryview(frame), defer=True)
    assert isinstance(full, wire.NotificationMsg) and isinstance(pending, wire.PendingNotification)
    assert (pending.seq, pending.kind, pending.tip) == (full.seq, "ChainCommitted", full.notification.new.tip.number)  # type: ignore[union-attr]
    assert pending.load() == full.notification
    # Non-notification frames decode as usual with defer.
    assert wire.decode(wire.encode(wire.Heartbeat(3)), defer=True) == wire.Heartbeat(3)
    raw = msgpack.unpackb(frame, raw=False)
    raw["new"][0]["transactions"][0]["to"] = b"\x02" * 21
    bad = wire.decode(_frame(raw), defer=True)
    assert isinstance(bad, wire.PendingNotification)
    with pytest.raises(wire.WireError) as e:
        bad.load()
    assert e.value.code == "malformed" and "new[0].transactions[0].to" in str(e.value)


def test_history_answers_are_one_chain_and_an_old_bridge_announces_no_history() -> None:
    old = wire.decode((VECTORS / "welcome.msgpack").read_bytes())
    new = wire.decode((VECTORS / "welcome_history.msgpack").read_bytes())
    assert isinstance(old, wire.Welcome) and old.history is None
    assert isinstance(new, wire.Welcome) and new.history == 64
    answer = wire.decode((VECTORS / "history_blocks.msgpack").read_bytes())
    assert isinstance(answer, wire.HistoryBlocks) and answer.blocks is not None
    # Blocks that do not follow each other are refused, naming the answer.
    raw = msgpack.unpackb((VECTORS / "history_blocks.msgpack").read_bytes(), raw=False)
    raw["blocks"].reverse()
    with pytest.raises(wire.WireError, match="history_blocks 1") as e:
        wire.decode(_frame(raw))
    assert e.value.code == "malformed"
    # An empty batch is a valid (empty) answer.
    assert wire.decode(wire.encode(wire.HistoryBlocks(5, (), None))) == wire.HistoryBlocks(5, (), None)
