"""Ethereum JSON-RPC objects (hex-encoded, as ``eth_getBlockByNumber(n, true)`` and
``eth_getTransactionReceipt`` return them; see https://ethereum.github.io/execution-apis/api-documentation/)
converted to the data model of :mod:`sidecar.types`.

Raises :class:`~sidecar.errors.CodecError` naming the field for anything malformed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .errors import CodecError
from .types import Block, Log, Receipt, Transaction

#: EIP-2718 type of transactions that carry ``gasPrice`` only.
_LEGACY_TYPES = (0, 1)


def qty(raw: Any, field: str) -> int:
    """A hex quantity (``"0x1a"``) as int."""
    if not isinstance(raw, str) or not raw.startswith("0x"):
        raise CodecError(f"{field}: expected a 0x-hex quantity, got {raw!r}"[:200])
    try:
        return int(raw, 16)
    except ValueError:
        raise CodecError(f"{field}: not a hex quantity: {raw!r}"[:200]) from None


def opt_qty(raw: Any, field: str) -> int | None:
    return None if raw is None else qty(raw, field)


def data(raw: Any, field: str, size: int | None = None) -> bytes:
    """0x-hex data as bytes, optionally of an exact ``size``."""
    if not isinstance(raw, str) or not raw.startswith("0x"):
        raise CodecError(f"{field}: expected 0x-hex data, got {raw!r}"[:200])
    try:
        out = bytes.fromhex(raw[2:])
    except ValueError:
        raise CodecError(f"{field}: not hex data: {raw[:80]!r}") from None
    if size is not None and len(out) != size:
        raise CodecError(f"{field}: expected {size} bytes, got {len(out)}")
    return out


def opt_data(raw: Any, field: str, size: int | None = None) -> bytes | None:
    return None if raw is None else data(raw, field, size)


def log_from_rpc(raw: Mapping[str, Any], path: str) -> Log:
    return Log(
        data(raw["address"], path + ".address", 20),
        tuple(data(t, f"{path}.topics[{i}]", 32) for i, t in enumerate(raw["topics"])),
        data(raw["data"], path + ".data"),
    )


def receipt_from_rpc(raw: Mapping[str, Any], path: str = "receipt") -> Receipt:
    """Convert an ``eth_getTransactionReceipt`` result (pre-Byzantium receipts have ``root``, no ``status``)."""
    try:
        return Receipt(
            status=opt_qty(raw.get("status"), path + ".status"),
            cumulative_gas_used=qty(raw["cumulativeGasUsed"], path + ".cumulativeGasUsed"),
            logs=tuple(log_from_rpc(lg, f"{path}.logs[{i}]") for i, lg in enumerate(raw["logs"])),
            contract_address=opt_data(raw.get("contractAddress"), path + ".contractAddress", 20),
        )
    except KeyError as e:
        raise CodecError(f"{path}: missing field {e.args[0]!r}") from None
    except TypeError as e:
        raise CodecError(f"{path}: malformed: {e}") from None


def tx_from_rpc(raw: Mapping[str, Any], path: str = "transaction") -> Transaction:
    """Convert a full transaction object of ``eth_getBlockByNumber(n, true)``."""
    try:
        type_ = opt_qty(raw.get("type"), path + ".type") or 0
        # Nodes report the effective gas price as ``gasPrice`` for fee-market transactions too; the data model
        # (and the ExEx) keep only the transaction's own field, which types 0 and 1 alone have.
        gas_price = opt_qty(raw.get("gasPrice"), path + ".gasPrice") if type_ in _LEGACY_TYPES else None
        return Transaction(
            hash=data(raw["hash"], path + ".hash", 32),
            type=type_,
            sender=data(raw["from"], path + ".from", 20),
            to=opt_data(raw.get("to"), path + ".to", 20),
            value=qty(raw["value"], path + ".value"),
            input=data(raw.get("input", raw.get("data", "0x")), path + ".input"),
            nonce=qty(raw["nonce"], path + ".nonce"),
            gas_limit=qty(raw["gas"], path + ".gas"),
            gas_price=gas_price,
            max_fee_per_gas=opt_qty(raw.get("maxFeePerGas"), path + ".maxFeePerGas"),
            max_priority_fee_per_gas=opt_qty(raw.get("maxPriorityFeePerGas"), path + ".maxPriorityFeePerGas"),
            chain_id=opt_qty(raw.get("chainId"), path + ".chainId"),
        )
    except KeyError as e:
        raise CodecError(f"{path}: missing field {e.args[0]!r}") from None


def block_from_rpc(raw: Mapping[str, Any], receipts: Sequence[Mapping[str, Any]]) -> Block:
    """Convert a full block (``eth_getBlockByNumber(n, true)``) and its receipts, in transaction order.

    Raises:
        CodecError: malformed fields, hashes instead of full transactions, or receipts that do not match the
            transactions one to one.
    """
    path = f"block {raw.get('number')!r}"
    try:
        txs_raw = raw["transactions"]
        if any(isinstance(t, str) for t in txs_raw):
            raise CodecError(f"{path}: transactions are hashes; request the block with full transactions")
        txs = tuple(tx_from_rpc(t, f"{path}.transactions[{i}]") for i, t in enumerate(txs_raw))
        if len(receipts) != len(txs):
            raise CodecError(f"{path}: {len(txs)} transactions but {len(receipts)} receipts")
        rcs = tuple(receipt_from_rpc(r, f"{path}.receipts[{i}]") for i, r in enumerate(receipts))
        for i, t in enumerate(txs):
            rh = receipts[i].get("transactionHash")
            if rh is not None and data(rh, f"{path}.receipts[{i}].transactionHash", 32) != t.hash:
                raise CodecError(f"{path}: receipt {i} belongs to {rh}, not to transaction 0x{t.hash.hex()}")
        return Block(
            number=qty(raw["number"], path + ".number"),
            hash=data(raw["hash"], path + ".hash", 32),
            parent_hash=data(raw["parentHash"], path + ".parentHash", 32),
            timestamp=qty(raw["timestamp"], path + ".timestamp"),
            beneficiary=data(raw["miner"], path + ".miner", 20),
            gas_limit=qty(raw["gasLimit"], path + ".gasLimit"),
            gas_used=qty(raw["gasUsed"], path + ".gasUsed"),
            base_fee_per_gas=opt_qty(raw.get("baseFeePerGas"), path + ".baseFeePerGas"),
            transactions=txs,
            receipts=rcs,
        )
    except KeyError as e:
        raise CodecError(f"{path}: missing field {e.args[0]!r}") from None
