"""Decoded transaction -> text: the one-line summary, the document the keyword index and readers get
(:func:`render`), and the compact text the embedding model gets (:func:`embed_text`)."""

from __future__ import annotations

import re
from collections.abc import Mapping

from .abi import Registry
from .decoded import ZERO, Ctx, DecodedTx, TokenTransfer, active_registry, eth, norm_labels, utc

#: Events rendered per transaction (the rest are counted).
MAX_EVENTS = 40
#: Token transfers listed per TransferBatch log.
MAX_TRANSFERS = 20


# --------------------------------------------------------------------------------------------------- rendering


def _moved(ctx: Ctx, t: TokenTransfer) -> str:
    """What one transfer moved: a scaled amount, or an NFT id."""
    if t.standard == "erc20":
        return ctx.amount(t.token, t.amount)
    what = f"NFT {ctx.token_name(t.token)} #{t.token_id}"
    return what if t.standard == "erc721" or t.amount == 1 else f"{t.amount} x {what}"


def _flows(ctx: Ctx, d: DecodedTx) -> tuple[list[str], list[str]]:
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


def summary(ctx: Ctx, d: DecodedTx) -> str:
    """The one-line summary of ``d`` by its intent (``"Swap on Uniswap V2: sent 1 WETH; received 3,000 USDC"``),
    prefixed ``Failed:`` when it reverted; the first line of the document."""
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
    ctx = Ctx(registry or active_registry(), norm_labels(labels))
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
    ctx = Ctx(registry or active_registry(), norm_labels(labels))

    def party(a: bytes | None) -> str:
        c = ctx.reg.contract(a)
        return ctx.token_name(a) if a is not None and c is not None and c.symbol else ctx.short(a)

    status = {1: "succeeded", 0: "failed", None: "status unknown"}[d.status]
    lines = [summary(ctx, d) + ".",
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

