"""Chain → text: one readable document per transaction, together with its logs, plus structured metadata.

The document carries the block and UTC time, sender and recipient with labels, the ETH value, the decoded function
call (4-byte selector → ABI registry), decoded events with token amounts scaled by decimals, the status, and a coarse
intent: ``transfer``, ``swap``, ``approve``, ``mint``, ``burn``, ``deposit``, ``withdraw``, ``contract_creation`` or
``other``. Unknown selectors and events still render (raw selector, topics); malformed calldata or log data never
raises, it renders as raw.

This module decodes (:func:`decode_transaction`); :mod:`.decoded` holds what a decoded transaction is and how its
values read, :mod:`.render` turns it into text.

Decoding follows the Solidity ABI specification (https://docs.soliditylang.org/en/latest/abi-spec.html) through
``eth_abi``; the Universal Router command table follows Uniswap's ``Commands.sol``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from eth_abi import decode as abi_decode

from monmouth.chain import create_address, normalize_address
from monmouth.types import Block, Log, Receipt, Transaction

from .abi import AbiEntry, Param, Registry
from .decoded import ZERO, Arg, Call, Ctx, DecodedTx, Event, TokenTransfer, active_registry, norm_labels
from .render import render, summary

_AMOUNT_NAMES = {"value", "amount", "wad", "addedvalue", "subtractedvalue", "amounttokendesired", "amountin",
                 "amountout", "amountoutmin", "amountinmax"}

#: Uniswap Universal Router command bytes (``Commands.sol``), ``command & 0x3f``.
UNIVERSAL_ROUTER_COMMANDS = {
    0x00: "V3_SWAP_EXACT_IN", 0x01: "V3_SWAP_EXACT_OUT", 0x02: "PERMIT2_TRANSFER_FROM",
    0x03: "PERMIT2_PERMIT_BATCH", 0x04: "SWEEP", 0x05: "TRANSFER", 0x06: "PAY_PORTION",
    0x08: "V2_SWAP_EXACT_IN", 0x09: "V2_SWAP_EXACT_OUT", 0x0A: "PERMIT2_PERMIT", 0x0B: "WRAP_ETH",
    0x0C: "UNWRAP_WETH", 0x0D: "PERMIT2_TRANSFER_FROM_BATCH", 0x0E: "BALANCE_CHECK_ERC20",
    0x10: "SEAPORT_V1_5", 0x11: "LOOKS_RARE_V2", 0x12: "NFTX", 0x13: "CRYPTOPUNKS", 0x15: "OWNER_CHECK_721",
    0x16: "OWNER_CHECK_1155", 0x17: "SWEEP_ERC721", 0x18: "X2Y2_721", 0x19: "SUDOSWAP", 0x1A: "NFT20",
    0x1B: "X2Y2_1155", 0x1C: "FOUNDATION", 0x1D: "SWEEP_ERC1155", 0x1E: "ELEMENT_MARKET", 0x20: "SEAPORT_V1_4",
    0x21: "EXECUTE_SUB_PLAN", 0x22: "APPROVE_ERC20",
}
_SWAP_EVENTS = {"Swap", "TokenExchange", "Trade", "OrderFulfilled"}


def _json_value(v: Any) -> Any:
    if isinstance(v, bytes):
        return "0x" + v.hex()
    if isinstance(v, bool):
        return v
    if isinstance(v, int):
        return str(v) if abs(v) >= 2**53 else v
    if isinstance(v, str):
        return normalize_address(v) or v  # eth-abi gives addresses EIP-55 checksummed
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    return str(v)


def _display(ctx: Ctx, p: Param, v: Any, token: bytes | None, depth: int = 0) -> str:
    t = p.type
    if t.endswith("]"):
        base = Param(p.name, t[:t.rindex("[")], False, p.components)
        items = list(v)
        shown = [_display(ctx, base, x, token, depth + 1) for x in items[:8]]
        more = f", … {len(items) - 8} more" if len(items) > 8 else ""
        return "[" + ", ".join(shown) + more + "]"
    if t.startswith("("):
        parts = [f"{c.name or i}={_display(ctx, c, x, token, depth + 1)}" for i, (c, x) in enumerate(
            zip(p.components, v, strict=False))]
        return "(" + ", ".join(parts) + ")"
    if t == "address":
        return ctx.addr(bytes.fromhex(v[2:]))
    if t == "bool":
        return "true" if v else "false"
    if t.startswith(("uint", "int")):
        if token is not None and t == "uint256" and p.name.lower().lstrip("_") in _AMOUNT_NAMES:
            return ctx.amount(token, v)
        return str(v)
    if t == "string":
        s = str(v)
        return repr(s[:120] + ("…" if len(s) > 120 else ""))
    if isinstance(v, bytes):
        if len(v) > 64:
            return f"0x{v[:32].hex()}… ({len(v)} bytes)"
        return "0x" + v.hex()
    return str(v)


def _decode_args(ctx: Ctx, params: Sequence[Param], data: bytes, token: bytes | None) -> list[Arg]:
    values = abi_decode([p.type for p in params], data, strict=False)
    return [Arg(p.name, p.type, _json_value(v), _display(ctx, p, v, token))
            for p, v in zip(params, values, strict=True)]



# --------------------------------------------------------------------------------------------------- decoding


def _decode_call(ctx: Ctx, tx: Transaction) -> Call | None:
    data = tx.input
    if tx.to is None or len(data) < 4:
        return None
    sel = data[:4]
    call = Call(sel, size=len(data))
    entry = ctx.reg.function(sel)
    if entry is None:
        return call
    token = tx.to if ctx.reg.contract(tx.to) and (ctx.reg.contract(tx.to) or _NONE).decimals is not None else None
    try:
        call.args = _decode_args(ctx, entry.inputs, data[4:], token)
    except Exception as e:  # malformed calldata renders raw, never raises
        call.error = f"{type(e).__name__}"
        return call
    call.name, call.signature = entry.name, entry.signature
    _annotate_inner(ctx, call, entry, data[4:])
    return call


class _NoneContract:
    decimals = None


_NONE = _NoneContract()


def _annotate_inner(ctx: Ctx, call: Call, entry: AbiEntry, args: bytes) -> None:
    """Name the inner calls of ``multicall(bytes[])`` and the commands of Universal Router ``execute``."""
    if entry.name == "multicall":
        for a in call.args:
            if a.type == "bytes[]":
                names = []
                for raw in a.value:
                    b = bytes.fromhex(raw[2:])
                    inner = ctx.reg.function(b[:4]) if len(b) >= 4 else None
                    names.append(inner.name if inner else f"0x{b[:4].hex()}")
                a.display = "[" + ", ".join(names) + "]"
    elif entry.name == "execute" and call.args and call.args[0].name == "commands":
        cmds = bytes.fromhex(call.args[0].value[2:])
        call.args[0].display = "[" + ", ".join(
            UNIVERSAL_ROUTER_COMMANDS.get(c & 0x3F, f"0x{c:02x}") for c in cmds) + "]"


def _decode_log(ctx: Ctx, lg: Log, log_index: int) -> Event:
    ev = Event(log_index, lg.address, None, None, [], lg.topics, len(lg.data))
    if not lg.topics:
        return ev
    entry = ctx.reg.event(lg.topics[0], len(lg.topics) - 1)
    if entry is None:
        return ev
    c = ctx.reg.contract(lg.address)
    token = lg.address if c is not None and c.decimals is not None else None
    try:
        indexed = [p for p in entry.inputs if p.indexed]
        plain = [p for p in entry.inputs if not p.indexed]
        decoded_plain = iter(abi_decode([p.type for p in plain], lg.data, strict=False)) if plain else iter(())
        if not plain and lg.data:
            raise ValueError("unexpected data")
        topics = iter(lg.topics[1:])
        args = []
        for p in entry.inputs:
            if p.indexed:
                topic = next(topics)
                if p.type in ("string", "bytes") or p.type.endswith("]") or p.type.startswith("("):
                    args.append(Arg(p.name, p.type, "0x" + topic.hex(), f"hash 0x{topic.hex()}"))
                    continue
                v = abi_decode([p.type], topic, strict=False)[0]
            else:
                v = next(decoded_plain)
            args.append(Arg(p.name, p.type, _json_value(v), _display(ctx, p, v, token)))
        del indexed
    except Exception as e:
        ev.error = type(e).__name__
        return ev
    ev.name, ev.signature, ev.args = entry.name, entry.signature, args
    return ev


def _transfers(ev: Event) -> list[TokenTransfer]:
    def a(name: str) -> bytes:
        return bytes.fromhex(next(x.value for x in ev.args if x.name == name)[2:])

    def n(name: str) -> int:
        return int(next(x.value for x in ev.args if x.name == name))

    try:
        if ev.name == "Transfer" and ev.signature == "Transfer(address,address,uint256)":
            if len(ev.topics) == 4:
                return [TokenTransfer(ev.log_index, ev.address, "erc721", a("from"), a("to"), 1, n("tokenId"))]
            return [TokenTransfer(ev.log_index, ev.address, "erc20", a("from"), a("to"), n("value"))]
        if ev.name == "TransferSingle":
            return [TokenTransfer(ev.log_index, ev.address, "erc1155", a("from"), a("to"), n("value"), n("id"))]
        if ev.name == "TransferBatch":
            ids = next(x.value for x in ev.args if x.name == "ids")
            vals = next(x.value for x in ev.args if x.name == "values")
            return [TokenTransfer(ev.log_index, ev.address, "erc1155", a("from"), a("to"), int(v), int(i))
                    for i, v in zip(ids, vals, strict=False)]
    except (StopIteration, ValueError, TypeError):
        return []
    return []


def _intent(tx: Transaction, call: Call | None, events: list[Event], transfers: list[TokenTransfer],
            reg: Registry) -> str:
    if tx.to is None:
        return "contract_creation"
    fn = (call.name or "").lower() if call else ""
    names = {e.name for e in events if e.name}
    if "swap" in fn or fn in ("exchange", "trade", "fulfillbasicorder", "fulfillbasicorder_efficient_6gl6yc") \
            or names & _SWAP_EVENTS:
        return "swap"
    if call and call.name == "execute" and call.args and any(
            w in call.args[0].display for w in ("SWAP", "SEAPORT", "LOOKS_RARE", "X2Y2", "SUDOSWAP")):
        return "swap"
    if fn.startswith("deposit") or fn == "submit" or (not tx.input and tx.value and "Deposit" in names):
        return "deposit"
    if fn.startswith("withdraw") or "Withdrawal" in names or fn.startswith("unwrap"):
        return "withdraw"
    if fn.startswith("mint"):
        return "mint"
    if fn.startswith("burn"):
        return "burn"
    if fn in ("approve", "setapprovalforall", "increaseallowance", "decreaseallowance", "permit"):
        return "approve"
    if fn in ("transfer", "transferfrom", "safetransferfrom", "safebatchtransferfrom"):
        return "transfer"
    if any(t.sender == ZERO and t.recipient == tx.sender for t in transfers):
        return "mint"
    if any(t.recipient == ZERO and t.sender == tx.sender for t in transfers):
        return "burn"
    if not tx.input and tx.value > 0:
        return "transfer"
    return "other"


def _token_id(reg: Registry, token: bytes) -> str:
    c = reg.contract(token)
    return c.symbol.upper() if c and c.symbol else "0x" + token.hex()


def decode_transaction(block: Block, index: int, labels: Mapping[bytes | str, str] | None = None,
                       registry: Registry | None = None, first_log_index: int | None = None) -> DecodedTx:
    """Decode transaction ``index`` of ``block`` with its receipt's logs.

    Args:
        block: a block with transactions and receipts.
        index: the transaction's position in the block.
        labels: extra address labels, ``{address bytes or "0x..." hex: label}``; they win over the registry.
        registry: ABI and contract tables (default: the bundled ones, or the plugin's when it runs).
        first_log_index: block-wide index of this transaction's first log (computed when omitted).

    Returns:
        a :class:`DecodedTx`; never raises for malformed calldata or logs.

    Raises:
        IndexError: ``index`` is out of range.
    """
    reg = registry or active_registry()
    ctx = Ctx(reg, norm_labels(labels))
    tx = block.transactions[index]
    receipt: Receipt | None = block.receipts[index] if index < len(block.receipts) else None
    if first_log_index is None:
        first_log_index = sum(len(r.logs) for r in block.receipts[:index])
    call = _decode_call(ctx, tx)
    logs = receipt.logs if receipt else ()
    events = [_decode_log(ctx, lg, first_log_index + i) for i, lg in enumerate(logs)]
    transfers = [t for e in events for t in _transfers(e)]
    created = None
    if tx.to is None:
        created = (receipt.contract_address if receipt and receipt.contract_address else
                   create_address(tx.sender, tx.nonce))
    roles: dict[bytes, set[str]] = {}
    roles.setdefault(tx.sender, set()).add("sender")
    if tx.to is not None:
        roles.setdefault(tx.to, set()).add("recipient")
    if created is not None:
        roles.setdefault(created, set()).add("contract")
    for e in events:
        roles.setdefault(e.address, set()).add("log")
    for t in transfers:
        for a in (t.sender, t.recipient):
            if a != ZERO:
                roles.setdefault(a, set()).add("transfer")
    intent = _intent(tx, call, events, transfers, reg)
    tokens: list[str] = []

    def add_token(tok: str) -> None:
        if tok not in tokens:
            tokens.append(tok)

    primary: str | None = None
    is_token_call = call is not None and call.name in ("transfer", "transferFrom", "approve", "increaseAllowance",
                                                       "decreaseAllowance", "permit", "setApprovalForAll",
                                                       "safeTransferFrom", "safeBatchTransferFrom", "deposit",
                                                       "withdraw", "mint", "burn", "burnFrom")
    if tx.value:
        add_token("ETH")
    to_contract = reg.contract(tx.to)
    if is_token_call and tx.to is not None and ((to_contract is not None and to_contract.symbol) or transfers
                                                or intent == "approve"):
        primary = _token_id(reg, tx.to)
    for t in transfers:
        add_token(_token_id(reg, t.token))
    for e in events:
        if e.name in ("Deposit", "Withdrawal") and (c := reg.contract(e.address)) and c.symbol:
            add_token(_token_id(reg, e.address))
    if primary is not None and primary not in tokens:
        tokens.insert(0, primary)
    if primary is None:
        if intent == "transfer" and tx.value and not transfers:
            primary = "ETH"
        elif transfers:
            primary = _token_id(reg, transfers[0].token)
        elif tokens:
            primary = tokens[0]
    addr_tokens = ["0x" + t.token.hex() for t in transfers]
    if is_token_call and tx.to is not None:
        addr_tokens.insert(0, "0x" + tx.to.hex())
    for tok in addr_tokens:
        add_token(tok)
    d = DecodedTx(block.number, block.hash, block.timestamp, index, tx.hash, tx.sender, tx.to, created, tx.value,
                  receipt.status if receipt else None, intent, call, events, transfers, first_log_index, roles,
                  tokens, primary, input_size=len(tx.input), raw_input_head=tx.input[:4].hex())
    d.summary = summary(ctx, d)
    return d



def render_transaction(block: Block, index: int, labels: Mapping[bytes | str, str] | None = None,
                       registry: Registry | None = None) -> str:
    """The decoder's text for transaction ``index`` of ``block`` with its logs.

    Raises:
        IndexError: ``index`` is out of range.
    """
    d = decode_transaction(block, index, labels, registry)
    return render(d, labels, registry)

