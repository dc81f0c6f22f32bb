"""A decoded transaction: what the decoder (:mod:`.decoder`) makes of one transaction with its logs, and how its
values read (UTC times, token amounts scaled by decimals, addresses named by labels and the ABI registry).

Shapes: addresses and hashes are ``bytes``, amounts and wei ``int``; :meth:`DecodedTx.to_meta` is the JSON-able
form (``0x`` hex, decimal strings). The registry in use is the plugin's while it runs (:func:`set_active_registry`),
else the bundled one (:func:`default_registry`).
"""

from __future__ import annotations

import datetime as _dt
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from monmouth.chain import hx, parse_address

from .abi import Registry, build_registry

INTENTS = ("transfer", "swap", "approve", "mint", "burn", "deposit", "withdraw", "contract_creation", "other")
ZERO = b"\x00" * 20
#: Token amounts at or above this are shown as "unlimited" (approvals of 2**256 - 1 and the like).
UNLIMITED = 2**255


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


class Ctx:
    """How values read in one decoding or rendering: the registry plus per-call extra labels (which win).

    Addresses read as ``0x... (label)`` (:meth:`addr`) or the label alone (:meth:`short`); token amounts are scaled
    by the token's decimals and carry its symbol (:meth:`amount`)."""

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



def norm_labels(labels: Mapping[bytes | str, str] | None) -> dict[bytes, str]:
    """``{address bytes: label}`` from keys given as bytes or hex text (``0x`` optional).

    Raises:
        monmouth.chain.AddressError: a text key is not a 20-byte address.
    """
    out: dict[bytes, str] = {}
    for k, v in (labels or {}).items():
        if isinstance(k, str):
            k = parse_address(k, "labels", bare_ok=True)
        out[k] = v
    return out



# The plugin installs its configured registry (with the user's ABIs and labels) here while it runs.
_registry_override: list[Registry] = []


def active_registry() -> Registry:
    """The registry the decoder uses when given none: the running plugin's, else the bundled one."""
    return _registry_override[-1] if _registry_override else default_registry()


def set_active_registry(reg: Registry | None) -> None:
    """Use ``reg`` as the default registry (``None`` restores the bundled one)."""
    _registry_override.clear()
    if reg is not None:
        _registry_override.append(reg)

