"""The data model: blocks, chains and the three ExEx notification variants.

Everything is immutable. ``Block``, ``Transaction``, ``Receipt`` and ``Log`` are frozen ``msgspec.Struct``s:
the wire decoder (:mod:`sidecar.codec`) builds them straight from msgpack in C, validating types and byte
lengths, which is an order of magnitude faster than building Python objects field by field (a mainnet block
carries hundreds of them). ``Chain`` and the notifications are frozen dataclasses.

Representation at the boundary (documented once, here, and in ``docs/wire.md``):

* hashes (32 bytes), addresses (20 bytes), calldata, log data and topics are raw ``bytes``;
* every quantity is a Python ``int`` of any size: block numbers, gas, nonces, timestamps
  (seconds since the Unix epoch) and wei amounts alike. On the wire, uint256 values
  (wei, fee fields) travel as big-endian bytes with no leading zeros; in Python they are ints;
* an absent value (contract-creation recipient, pre-EIP-1559 base fee, pre-Byzantium receipt
  status) is ``None``.

The three notification variants mirror Reth's ``ExExNotification``
(``crates/exex/exex/src/notifications.rs``): ``ChainCommitted { new }``,
``ChainReorged { old, new }`` and ``ChainReverted { old }``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Literal, NamedTuple

import msgspec

from .errors import ChainError


class BlockRef(NamedTuple):
    """A block's identity: ``number`` (blocks) and 32-byte ``hash``."""

    number: int
    hash: bytes

    def __str__(self) -> str:
        return f"#{self.number} 0x{self.hash.hex()}"

    def to_json(self) -> dict[str, object]:
        return {"number": self.number, "hash": "0x" + self.hash.hex()}


if TYPE_CHECKING:
    U256 = int
else:
    #: An unsigned 256-bit quantity (wei). Always an ``int`` once a model object is built; for type checkers it
    #: is ``int``. At run time the annotation also admits ``bytes`` because msgspec decodes the wire's
    #: big-endian ``bin`` as bytes, and :mod:`sidecar.codec` then turns every such field into an ``int`` in one
    #: pass, checking width and canonical form. A per-field ``dec_hook`` would cost a C-to-Python call for
    #: each of the ~600 wei fields of a mainnet block, about twice the rest of decoding.
    U256 = bytes | int


#: Exactly 32 bytes (block/transaction hash, topic).
Hash32 = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
#: Exactly 20 bytes (address).
Address = Annotated[bytes, msgspec.Meta(min_length=20, max_length=20)]
_UInt = Annotated[int, msgspec.Meta(ge=0)]


class Log(msgspec.Struct, frozen=True, gc=False):
    """An event log: emitting contract ``address``, up to 4 32-byte ``topics``, and ``data``."""

    address: Address
    topics: Annotated[tuple[Hash32, ...], msgspec.Meta(max_length=4)]
    data: bytes


class Receipt(msgspec.Struct, frozen=True, gc=False):
    """A transaction receipt.

    ``status`` is 1 (success) or 0 (failure) since Byzantium (EIP-658) and ``None`` before it.
    ``cumulative_gas_used`` is in gas units. ``contract_address`` is set for contract creations
    when the source knows it.
    """

    status: _UInt | None
    cumulative_gas_used: _UInt
    logs: tuple[Log, ...] = ()
    contract_address: Address | None = None


class Transaction(msgspec.Struct, frozen=True, gc=False):
    """A signed transaction with its recovered ``sender``.

    ``to`` is ``None`` for contract creation. ``value`` and every fee field are in wei.
    ``type`` is the EIP-2718 envelope type (0 legacy, 1 EIP-2930, 2 EIP-1559, 3 EIP-4844, 4 EIP-7702).
    ``chain_id`` is ``None`` for pre-EIP-155 legacy transactions. ``gas_price`` is the transaction's own field,
    present for types 0 and 1 only; fee-market types (2 and later) have ``max_fee_per_gas`` and
    ``max_priority_fee_per_gas`` instead (JSON-RPC's ``gasPrice`` for them is the effective price, derived from the
    block's base fee, and not part of the transaction).
    """

    hash: Hash32
    type: _UInt
    sender: Address
    to: Address | None
    value: U256
    input: bytes
    nonce: _UInt
    gas_limit: _UInt
    gas_price: U256 | None = None
    max_fee_per_gas: U256 | None = None
    max_priority_fee_per_gas: U256 | None = None
    chain_id: _UInt | None = None

    @property
    def selector(self) -> bytes | None:
        """The 4-byte function selector of the calldata, or ``None`` when shorter than 4 bytes."""
        return self.input[:4] if len(self.input) >= 4 else None


class Block(msgspec.Struct, frozen=True, gc=False):
    """An executed block: header fields, transactions and their receipts (``receipts[i]`` is the
    receipt of ``transactions[i]``). ``gas_limit``/``gas_used`` are in gas, ``base_fee_per_gas``
    in wei (``None`` before London, EIP-1559), ``timestamp`` in seconds."""

    number: _UInt
    hash: Hash32
    parent_hash: Hash32
    timestamp: _UInt
    beneficiary: Address
    gas_limit: _UInt
    gas_used: _UInt
    base_fee_per_gas: U256 | None = None
    transactions: tuple[Transaction, ...] = ()
    receipts: tuple[Receipt, ...] = ()

    @property
    def ref(self) -> BlockRef:
        return BlockRef(self.number, self.hash)

    @property
    def parent(self) -> BlockRef:
        return BlockRef(self.number - 1, self.parent_hash)


@dataclass(slots=True, frozen=True)
class Chain:
    """An ordered, contiguous, non-empty run of blocks (each block's parent is the one before).

    Raises:
        ChainError: empty, out of order, or not linked by parent hash.
    """

    blocks: tuple[Block, ...]

    def __post_init__(self) -> None:
        if not self.blocks:
            raise ChainError("a chain must hold at least one block")
        prev = self.blocks[0]
        for b in self.blocks[1:]:
            if b.number != prev.number + 1 or b.parent_hash != prev.hash:
                raise ChainError(
                    f"chain is not contiguous: block {b.ref} does not follow {prev.ref} "
                    f"(its parent is 0x{b.parent_hash.hex()})"
                )
            prev = b

    @property
    def first(self) -> Block:
        return self.blocks[0]

    @property
    def tip(self) -> Block:
        return self.blocks[-1]

    @property
    def fork_point(self) -> BlockRef:
        """The block this chain builds on (the parent of its first block)."""
        return self.blocks[0].parent

    def __len__(self) -> int:
        return len(self.blocks)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.blocks)


@dataclass(slots=True, frozen=True)
class ChainCommitted:
    """New blocks were executed and appended to the canonical chain."""

    new: Chain
    kind: Literal["ChainCommitted"] = field(default="ChainCommitted", init=False)


@dataclass(slots=True, frozen=True)
class ChainReorged:
    """``old`` was reverted and ``new`` committed in its place; both build on the same fork point.

    Raises:
        ChainError: the two chains do not share a fork point.
    """

    old: Chain
    new: Chain
    kind: Literal["ChainReorged"] = field(default="ChainReorged", init=False)

    def __post_init__(self) -> None:
        if self.old.fork_point != self.new.fork_point:
            raise ChainError(
                f"reorg chains do not share a fork point: old builds on {self.old.fork_point}, "
                f"new on {self.new.fork_point}"
            )


@dataclass(slots=True, frozen=True)
class ChainReverted:
    """``old`` was reverted and nothing replaced it (yet)."""

    old: Chain
    kind: Literal["ChainReverted"] = field(default="ChainReverted", init=False)


Notification = ChainCommitted | ChainReorged | ChainReverted

