"""Chain → text: one readable document per transaction, together with its logs, plus structured metadata.

The document carries the block and UTC time, sender and recipient with labels, the ETH value, the decoded function
call (4-byte selector → ABI registry), decoded events with token amounts scaled by decimals, the status, and a coarse
intent: ``transfer``, ``swap``, ``approve``, ``mint``, ``burn``, ``deposit``, ``withdraw``, ``contract_creation`` or
``other``. Unknown selectors and events still render (raw selector, topics); malformed calldata or log data never
raises, it renders as raw.

Decoding follows the Solidity ABI specification (https://docs.soliditylang.org/en/latest/abi-spec.html) through
``eth_abi``; the Universal Router command table follows Uniswap's ``Commands.sol``.
"""

from __future__ import annotations

import datetime as _dt
import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from eth_abi import decode as abi_decode

from monmouth.chain import create_address, hx, normalize_address
from monmouth.types import Block, Log, Receipt, Transaction

from .abi import AbiEntry, Param, Registry, build_registry

INTENTS = ("transfer", "swap", "approve", "mint", "burn", "deposit", "withdraw", "contract_creation", "other")
ZERO = b"\x00" * 20
UNLIMITED = 2**255
#: Events rendered per transaction (the rest are counted).
MAX_EVENTS = 40
#: Token transfers listed per TransferBatch log.
MAX_TRANSFERS = 20
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


# --------------------------------------------------------------------------------------------------- data model


@dataclass
class Arg:
    """A decoded argument: ``name``, ABI ``type``, JSON-able ``value`` and human ``display``."""

    name: str
    type: str
    value: Any
    display: str


@dataclass
class Call:
    """The decoded calldata. ``name``/``signature`` are ``None`` for an unknown selector; ``error`` is set when the
    selector is known but the arguments do not decode (then ``args`` is empty)."""

    selector: bytes
    name: str | None = None
    signature: str | None = None
    args: list[Arg] = field(default_factory=list)
    error: str | None = None
    size: int = 0


@dataclass
class Event:
    """A log: ``log_index`` (block-wide), emitting ``address``; ``name`` is ``None`` when unknown or undecodable."""

    log_index: int
    address: bytes
    name: str | None
    signature: str | None
    args: list[Arg]
    topics: tuple[bytes, ...]
    data_size: int
    error: str | None = None


@dataclass
class TokenTransfer:
    """A token movement from a ``Transfer``/``TransferSingle``/``TransferBatch`` log. ``amount`` is in the token's
    smallest unit; ``token_id`` is set for NFTs (ERC-721, ERC-1155)."""

    log_index: int
    token: bytes
    standard: str
    sender: bytes
    recipient: bytes
    amount: int
    token_id: int | None = None


@dataclass
class DecodedTx:
    """Everything the decoder learns about one transaction (see :meth:`to_meta` for the JSON form)."""

    block_number: int
    block_hash: bytes
    timestamp: int
    index: int
    hash: bytes
    sender: bytes
    to: bytes | None
    created: bytes | None
    value: int
    status: int | None
    intent: str
    call: Call | None
    events: list[Event]
    transfers: list[TokenTransfer]
    first_log_index: int
    #: ``{address: set of roles}``; roles: sender, recipient, contract (created), log (emitter), transfer (party).
    roles: dict[bytes, set[str]]
    #: Token identifiers touched: symbols (upper case) and ``0x`` addresses (lower case); ``ETH`` for value.
    tokens: list[str]
    #: The primary token (symbol, or address when unknown), or ``None``.
    token: str | None
    summary: str = ""
    #: Calldata (or init code) size in bytes, and the hex of its first bytes (at most 4).
    input_size: int = 0
    raw_input_head: str = ""

    @property
    def contract(self) -> bytes | None:
        """The contract the transaction is about: the created contract, else the recipient."""
        return self.created or self.to

    def log_indexes(self) -> list[int]:
        return [e.log_index for e in self.events]

    def to_meta(self) -> dict[str, Any]:
        """JSON-able metadata: hex strings for bytes, decimal strings for wei and token amounts."""
        return {
            "block_number": self.block_number, "block_hash": hx(self.block_hash), "timestamp": self.timestamp,
            "time": utc(self.timestamp), "tx_index": self.index, "tx_hash": hx(self.hash), "from": hx(self.sender),
            "to": hx(self.to), "created": hx(self.created), "contract": hx(self.contract), "value_wei": str(self.value),
            "status": self.status, "intent": self.intent, "token": self.token, "tokens": self.tokens,
            "summary": self.summary,
            "call": None if self.call is None else {
                "selector": hx(self.call.selector), "name": self.call.name, "signature": self.call.signature,
                "args": [{"name": a.name, "type": a.type, "value": a.value} for a in self.call.args],
                "error": self.call.error,
            },
            "log_indexes": self.log_indexes(),
            "events": [{"log_index": e.log_index, "address": hx(e.address), "name": e.name,
                        "signature": e.signature, "args": {a.name: a.value for a in e.args}} for e in self.events],
            "transfers": [{"log_index": t.log_index, "token": hx(t.token), "standard": t.standard,
                           "from": hx(t.sender), "to": hx(t.recipient), "amount": str(t.amount),
                           "token_id": None if t.token_id is None else str(t.token_id)} for t in self.transfers],
            "addresses": {hx(a): sorted(r) for a, r in sorted(self.roles.items())},
        }


# --------------------------------------------------------------------------------------------------- helpers


def utc(ts: int) -> str:
    """``YYYY-MM-DD HH:MM:SS`` in UTC for a Unix timestamp (seconds)."""
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def scale(amount: int, decimals: int) -> str:
    """``amount / 10**decimals`` as a plain decimal string, at most 6 fractional digits (truncated), no exponent.

    >>> scale(1_500_000, 6)
    '1.5'
    """
    neg = amount < 0
    amount = abs(amount)
    whole, frac = divmod(amount, 10**decimals) if decimals > 0 else (amount, 0)
    s = str(whole)
    if decimals > 0 and frac:
        f = str(frac).rjust(decimals, "0")[:6].rstrip("0")
        if f:
            s += "." + f
        elif whole == 0:
            s = "<0.000001"
    return ("-" if neg else "") + s


def eth(wei: int) -> str:
    """Wei as an ETH amount string (see :func:`scale`)."""
    return scale(wei, 18)


@functools.lru_cache(maxsize=1)
def default_registry() -> Registry:
    """The bundled registry (no user ABIs or labels)."""
    return build_registry()


class _Ctx:
    """Rendering context: the registry plus per-call extra labels."""

    def __init__(self, registry: Registry, labels: Mapping[bytes, str] | None) -> None:
        self.reg = registry
        self.labels = labels or {}

    def label(self, a: bytes | None) -> str | None:
        if a is None:
            return None
        return self.labels.get(a) or self.reg.label(a)

    def addr(self, a: bytes | None) -> str:
        if a is None:
            return "none"
        lab = self.label(a)
        return f"0x{a.hex()} ({lab})" if lab else f"0x{a.hex()}"

    def short(self, a: bytes | None) -> str:
        """A label when known, else the full address."""
        if a is None:
            return "none"
        return self.label(a) or f"0x{a.hex()}"

    def symbol(self, token: bytes) -> str | None:
        c = self.reg.contract(token)
        return c.symbol if c else None

    def amount(self, token: bytes, raw: int) -> str:
        c = self.reg.contract(token)
        if raw >= UNLIMITED:
            return f"unlimited {c.symbol}" if c and c.symbol else "unlimited"
        if c and c.symbol and c.decimals is not None:
            return f"{scale(raw, c.decimals)} {c.symbol}"
        if c and c.symbol:
            return f"{raw} {c.symbol}"
        return f"{raw} units of token 0x{token.hex()}"

    def token_name(self, token: bytes) -> str:
        c = self.reg.contract(token)
        if c and c.symbol:
            return f"{c.symbol} ({c.label})" if c.label != c.symbol else c.symbol
        return f"token 0x{token.hex()}"


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


def _display(ctx: _Ctx, p: Param, v: Any, token: bytes | None, depth: int = 0) -> str:
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


def _decode_args(ctx: _Ctx, params: Sequence[Param], data: bytes, token: bytes | None) -> list[Arg]:
    values = abi_decode([p.type for p in params], data, strict=False)
    return [Arg(p.name, p.type, _json_value(v), _display(ctx, p, v, token))
            for p, v in zip(params, values, strict=True)]


# --------------------------------------------------------------------------------------------------- decoding


def _decode_call(ctx: _Ctx, tx: Transaction) -> Call | None:
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


def _annotate_inner(ctx: _Ctx, call: Call, entry: AbiEntry, args: bytes) -> None:
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


def _decode_log(ctx: _Ctx, lg: Log, log_index: int) -> Event:
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
    reg = registry or _active_registry()
    ctx = _Ctx(reg, _norm_labels(labels))
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
    d.summary = _summary(ctx, d)
    return d


def _norm_labels(labels: Mapping[bytes | str, str] | None) -> dict[bytes, str]:
    out: dict[bytes, str] = {}
    for k, v in (labels or {}).items():
        if isinstance(k, str):
            k = bytes.fromhex(k.lower().removeprefix("0x"))
        out[k] = v
    return out


# --------------------------------------------------------------------------------------------------- rendering


def _moved(ctx: _Ctx, t: TokenTransfer) -> str:
    """What one transfer moved: a scaled amount, or an NFT id."""
    if t.standard == "erc20":
        return ctx.amount(t.token, t.amount)
    what = f"NFT {ctx.token_name(t.token)} #{t.token_id}"
    return what if t.standard == "erc721" or t.amount == 1 else f"{t.amount} x {what}"


def _flows(ctx: _Ctx, d: DecodedTx) -> tuple[list[str], list[str]]:
    """What the sender sent and received (ETH value and token transfers), as display strings."""
    sent, got = [], []
    if d.value:
        sent.append(f"{eth(d.value)} ETH")
    for t in d.transfers:
        s = _moved(ctx, t)
        if t.sender == d.sender:
            sent.append(s)
        elif t.recipient == d.sender:
            got.append(s)
    for e in d.events:  # WETH unwrapped to the sender arrives as ETH
        if e.name == "Withdrawal" and d.intent == "swap" and ctx.reg.contract(e.address):
            got.append(f"{eth(int(e.args[1].value))} ETH")
    return sent, got


def _summary(ctx: _Ctx, d: DecodedTx) -> str:
    call = d.call
    fn = call.name if call and call.name else None
    target = ctx.short(d.to)
    intent = d.intent
    if intent == "contract_creation":
        s = f"Contract creation: 0x{d.sender.hex()} deploys contract 0x{(d.created or b'').hex()}"
    elif intent == "transfer":
        if fn in ("transfer", "transferFrom") and d.to is not None and call and len(call.args) >= 2:
            amount = call.args[-1].display
            dest = call.args[-2].display
            s = f"{ctx.symbol(d.to) or 'Token'} transfer of {amount} to {dest}"
        elif fn in ("safeTransferFrom", "safeBatchTransferFrom") and d.to is not None:
            s = f"NFT transfer on {ctx.token_name(d.to)}"
        elif d.value and not d.input_size:
            s = f"ETH transfer of {eth(d.value)} ETH to {ctx.addr(d.to)}"
        else:
            s = f"Transfer via {target}"
    elif intent == "swap":
        sent, got = _flows(ctx, d)
        s = f"Swap on {target}"
        if sent or got:
            s += f": sent {', '.join(sent) or 'nothing'}; received {', '.join(got) or 'nothing'}"
        else:
            syms = [t for t in d.tokens if not t.startswith("0x")]
            if syms:
                s += f" involving {', '.join(syms)}"
    elif intent == "approve":
        if fn == "setApprovalForAll" and call and len(call.args) == 2 and d.to is not None:
            verb = "Approval" if call.args[1].value else "Revocation of approval"
            s = f"{verb} for all {ctx.token_name(d.to)} NFTs to operator {call.args[0].display}"
        elif call and len(call.args) >= 2 and d.to is not None:
            s = f"Approval on {ctx.token_name(d.to)}: {call.args[0].display} may spend {call.args[1].display}"
        else:
            s = f"Approval on {target}"
    elif intent in ("deposit", "withdraw"):
        verb = "Deposit" if intent == "deposit" else "Withdrawal"
        amt = f" of {eth(d.value)} ETH" if d.value else ""
        if not amt:
            for e in d.events:
                if e.name in ("Deposit", "Withdrawal", "Withdraw") and e.address == d.to:
                    token = next((a.value for a in e.args if a.name == "token"), None)
                    shown = [ctx.amount(bytes.fromhex(token[2:]), int(a.value)) if token and token != "0x" + "00" * 20
                             else a.display for a in e.args if a.name in ("wad", "amount")]
                    if shown:
                        amt = f" of {shown[0]}"
                        break
        c = ctx.reg.contract(d.to)
        place = ctx.token_name(d.to) if d.to is not None and c is not None and c.symbol else target
        s = f"{verb}{amt} {'into' if intent == 'deposit' else 'from'} {place}"
    elif intent in ("mint", "burn"):
        moved = [t for t in d.transfers if (t.sender == ZERO if intent == "mint" else t.recipient == ZERO)]
        what = ", ".join(_moved(ctx, t) for t in moved[:4])
        s = f"{intent.capitalize()} on {target}" + (f": {what}" if what else "")
    else:
        if call is None:
            s = f"Call to {target} without calldata" if not d.value else f"Call to {target}"
        elif call.name:
            s = f"Call of {call.name} on {target}"
        else:
            s = f"Call of unknown function 0x{call.selector.hex()} on {target}"
    if d.status == 0:
        s = "Failed: " + s
    return s


def render(d: DecodedTx, labels: Mapping[bytes | str, str] | None = None, registry: Registry | None = None) -> str:
    """The document text of a decoded transaction (see the module docstring for its parts)."""
    ctx = _Ctx(registry or _active_registry(), _norm_labels(labels))
    status = {1: "success", 0: "failed", None: "unknown (pre-Byzantium)"}[d.status]
    lines = [
        d.summary + ".",
        f"Transaction 0x{d.hash.hex()} in block {d.block_number} at {utc(d.timestamp)} UTC, index {d.index}, "
        f"status {status}, intent {d.intent}.",
        f"From {ctx.addr(d.sender)}.",
    ]
    if d.to is None:
        lines.append(f"Creates contract {ctx.addr(d.created)}.")
    else:
        lines.append(f"To {ctx.addr(d.to)}.")
    lines.append(f"Value {eth(d.value)} ETH.")
    call = d.call
    if d.to is None:
        lines.append(f"Init code {d.input_size} bytes.")
    elif call is None:
        lines.append("No calldata." if d.input_size == 0 else f"Calldata 0x{d.raw_input_head} ({d.input_size} bytes).")
    elif call.name:
        args = ", ".join(f"{a.name}={a.display}" if a.name else a.display for a in call.args)
        lines.append(f"Call {call.name}({args}).")
    elif call.error:
        entry = ctx.reg.function(call.selector)
        sig = entry.signature if entry else "?"
        lines.append(f"Call with selector 0x{call.selector.hex()} ({sig}) whose arguments do not decode, "
                     f"{call.size - 4} bytes of arguments.")
    else:
        lines.append(f"Call of unknown function selector 0x{call.selector.hex()} with {call.size - 4} bytes of "
                     "arguments.")
    if d.events:
        lines.append(f"Events ({len(d.events)}):")
        by_log: dict[int, list[TokenTransfer]] = {}
        for t in d.transfers:
            by_log.setdefault(t.log_index, []).append(t)
        for e in d.events[:MAX_EVENTS]:
            moved = by_log.get(e.log_index)
            if moved:
                for t in moved[:MAX_TRANSFERS]:
                    lines.append(f"- log {e.log_index}: {e.name} of {_moved(ctx, t)} from {ctx.addr(t.sender)} "
                                 f"to {ctx.addr(t.recipient)}")
            elif e.name:
                args = ", ".join(f"{a.name}={a.display}" for a in e.args)
                lines.append(f"- log {e.log_index}: {e.name}({args}) from {ctx.addr(e.address)}")
            else:
                topics = ", ".join("0x" + t.hex() for t in e.topics) or "none"
                note = " (known signature, data does not decode)" if e.error else ""
                lines.append(f"- log {e.log_index}: unknown event{note} from {ctx.addr(e.address)}, topics [{topics}], "
                             f"{e.data_size} bytes of data")
        if len(d.events) > MAX_EVENTS:
            lines.append(f"- and {len(d.events) - MAX_EVENTS} more events")
    return "\n".join(lines)


_LONG_HEX = re.compile(r"0x([0-9a-f]{4})[0-9a-f]{24,}([0-9a-f]{4})")


def abbreviate(text: str) -> str:
    """Shorten every long hex string (addresses, hashes) to ``0x1234…abcd``."""
    return _LONG_HEX.sub(lambda m: f"0x{m.group(1)}…{m.group(2)}", text)


def embed_text(d: DecodedTx, labels: Mapping[bytes | str, str] | None = None,
               registry: Registry | None = None) -> str:
    """A compact rendering of ``d`` for the embedding model: the summary, intent, status, time, parties (labels or
    abbreviated addresses), the function name, event names and token amounts, without raw arguments or topics.

    Hex addresses and hashes cost ~20 model tokens each and carry no meaning for the model; the full text (with
    them) goes to the keyword index, so exact address and hash searches still work. Typically 40-120 tokens instead
    of the 256 the full text is truncated to, which makes embedding several times faster.
    """
    ctx = _Ctx(registry or _active_registry(), _norm_labels(labels))

    def party(a: bytes | None) -> str:
        c = ctx.reg.contract(a)
        return ctx.token_name(a) if a is not None and c is not None and c.symbol else ctx.short(a)

    status = {1: "succeeded", 0: "failed", None: "status unknown"}[d.status]
    lines = [_summary(ctx, d) + ".",
             f"{d.intent.replace('_', ' ').capitalize()} transaction, {status}, block {d.block_number}, "
             f"{utc(d.timestamp)[:10]}.",
             f"From {party(d.sender)} to {party(d.to if d.to is not None else d.created)}."]
    if d.value:
        lines.append(f"Value {eth(d.value)} ETH.")
    call = d.call
    if call is not None:
        lines.append(f"Function {call.name}." if call.name else "Unknown function.")
    names: dict[str, int] = {}
    for e in d.events:
        if e.name and e.name not in ("Transfer", "TransferSingle", "TransferBatch"):
            names[e.name] = names.get(e.name, 0) + 1
    moved = []
    for t in d.transfers[:12]:
        s = _moved(ctx, t)
        if s not in moved:
            moved.append(s)
    if moved:
        more = f" and {len(d.transfers) - 12} more" if len(d.transfers) > 12 else ""
        lines.append("Token transfers: " + "; ".join(moved) + more + ".")
    if names:
        lines.append("Events: " + ", ".join(f"{n}" + (f" x{c}" if c > 1 else "") for n, c in names.items()) + ".")
    unknown = sum(1 for e in d.events if not e.name)
    if unknown:
        lines.append(f"{unknown} unknown events.")
    return abbreviate("\n".join(lines))


def render_transaction(block: Block, index: int, labels: Mapping[bytes | str, str] | None = None,
                       registry: Registry | None = None) -> str:
    """The decoder's text for transaction ``index`` of ``block`` with its logs.

    Raises:
        IndexError: ``index`` is out of range.
    """
    d = decode_transaction(block, index, labels, registry)
    return render(d, labels, registry)


# The plugin installs its configured registry (with the user's ABIs and labels) here while it runs.
_registry_override: list[Registry] = []


def _active_registry() -> Registry:
    return _registry_override[-1] if _registry_override else default_registry()


def set_active_registry(reg: Registry | None) -> None:
    """Use ``reg`` as the default registry (``None`` restores the bundled one)."""
    _registry_override.clear()
    if reg is not None:
        _registry_override.append(reg)
