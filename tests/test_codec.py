"""The msgpack codec: real mainnet blocks round-trip exactly; malformed input is refused naming the field."""

from __future__ import annotations

import msgpack
import msgspec
import pytest

from monmouth.codec import (
    decode_notification,
    encode_notification,
    notification_to_wire,
    packb,
    peek_notification,
    u256_to_bytes,
)
from monmouth.errors import CodecError
from monmouth.types import Chain, ChainCommitted, ChainReorged, ChainReverted
from tests.chains import chain, extend, load_mainnet_blocks


@pytest.fixture(scope="module")
def mainnet():
    return load_mainnet_blocks()


def test_mainnet_blocks_round_trip_exactly(mainnet):
    for b in mainnet:
        n = ChainCommitted(Chain((b,)))
        seq, back = decode_notification(encode_notification(n, seq=7))
        assert seq == 7 and back == n
        # Every wei value survives, including the largest.
        assert [t.value for t in back.new.tip.transactions] == [t.value for t in b.transactions]


def test_all_three_kinds_round_trip():
    bs = extend(None, 4, number=10, n_txs=2)
    fork = extend(bs[1], 3, salt="f", n_txs=1)
    for n in (ChainCommitted(chain(bs)), ChainReorged(chain(bs[2:]), chain(fork)), ChainReverted(chain(bs[3:]))):
        assert decode_notification(encode_notification(n))[1] == n


def test_uint256_encoding_is_minimal_big_endian():
    assert u256_to_bytes(0) == b""
    assert u256_to_bytes(255) == b"\xff"
    assert u256_to_bytes(256) == b"\x01\x00"
    assert u256_to_bytes(2**256 - 1) == b"\xff" * 32
    with pytest.raises(CodecError):
        u256_to_bytes(2**256)


def mutate(path, value):
    """A valid ChainCommitted frame with one field replaced."""
    n = ChainCommitted(chain(extend(None, 1, number=5, n_txs=2)))
    wire = notification_to_wire(n, seq=1)
    node = wire
    for p in path[:-1]:
        node = node[p]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return packb(wire)


@pytest.mark.parametrize("path, value, needle", [
    (("new", 0, "transactions", 1, "sender"), b"\x01" * 19, "new[0].transactions[1].sender"),
    (("new", 0, "transactions", 0, "value"), b"\x00\x01", "new[0].transactions[0].value"),
    (("new", 0, "transactions", 0, "value"), b"\x01" * 33, "uint256"),
    (("new", 0, "receipts", 1, "logs", 0, "topics"), [b"\x00" * 32] * 5, "new[0].receipts[1].logs[0].topics"),
    (("new", 0, "hash"), "0xabc", "new[0].hash"),
    (("new", 0, "number"), -1, "new[0].number"),
    (("new", 0, "gas_used"), KeyError, "gas_used"),
    (("new", 0, "receipts"), [], "2 transactions but 0 receipts"),
    (("kind",), "ChainExploded", "unknown notification kind 'ChainExploded'"),
    (("new",), [], "at least one block"),
])
def test_malformed_fields_are_named(path, value, needle):
    with pytest.raises(CodecError) as ei:
        decode_notification(mutate(path, value))
    assert needle in str(ei.value)


def test_truncated_trailing_oversized_and_garbage_frames():
    frame = encode_notification(ChainCommitted(chain(extend(None, 2, number=1))))
    with pytest.raises(CodecError, match="not valid msgpack"):
        decode_notification(frame[: len(frame) // 2])
    with pytest.raises(CodecError):
        decode_notification(frame + b"\x00")
    with pytest.raises(CodecError, match="exceeds the limit"):
        decode_notification(frame, max_bytes=100)
    with pytest.raises(CodecError):
        decode_notification(b"\xc1\xc1\xc1")
    with pytest.raises(CodecError, match="notification"):
        decode_notification(msgpack.packb({"type": "hello"}))


def test_discontiguous_chain_is_refused():
    bs = extend(None, 3, number=1)
    wire = notification_to_wire(ChainCommitted(chain(bs)))
    wire["new"] = [wire["new"][0], wire["new"][2]]
    with pytest.raises(CodecError, match="not contiguous"):
        decode_notification(packb(wire))
    assert isinstance(msgspec.msgpack.decode(packb(wire)), dict)


def test_wei_values_are_ints_after_decoding(mainnet):
    n = decode_notification(encode_notification(ChainCommitted(Chain((mainnet[0],)))))[1]
    tx = n.new.tip.transactions[0]
    assert all(type(v) is int for v in (tx.value, n.new.tip.base_fee_per_gas) if v is not None)
    assert all(type(t.max_fee_per_gas) is int for t in n.new.tip.transactions if t.max_fee_per_gas is not None)


def test_peek_reads_the_envelope_only():
    bs = extend(None, 3, number=10, n_txs=2)
    fork = extend(bs[0], 4, salt="f", n_txs=1)
    assert peek_notification(encode_notification(ChainCommitted(chain(bs)), seq=4)) == (4, "ChainCommitted", 12)
    assert peek_notification(encode_notification(ChainReorged(chain(bs[1:]), chain(fork)), 5)) == (5, "ChainReorged", 14)
    assert peek_notification(encode_notification(ChainReverted(chain(bs[2:])), 6)) == (6, "ChainReverted", None)
    bad_body = mutate(("new", 0, "transactions", 1, "sender"), b"\x01" * 19)
    assert peek_notification(bad_body)[0] == 1  # the body is checked when it is decoded, not here
    with pytest.raises(CodecError, match="new\\[0\\].transactions\\[1\\].sender"):
        decode_notification(bad_body)
    for path, value, needle in [(("kind",), "ChainExploded", "unknown notification kind"),
                                (("new",), [], "at least one block"),
                                (("type",), "hello", "expected a 'notification'"),
                                (("new", 0, "number"), -1, "new[0].number")]:
        with pytest.raises(CodecError, match=needle.replace("[", "\\[").replace("]", "\\]")):
            peek_notification(mutate(path, value))
    frame = encode_notification(ChainCommitted(chain(bs)))
    with pytest.raises(CodecError, match="not valid msgpack"):
        peek_notification(frame[:-3])
    with pytest.raises(CodecError, match="exceeds the limit"):
        peek_notification(frame, max_bytes=10)
