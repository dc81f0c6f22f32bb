"""Chain values as text: ``0x`` hex, 20-byte addresses, ABI types, signatures' parameter lists and function
selectors, contract addresses: written once for the whole tree.

Every module that shows bytes as ``0x`` hex, checks an address a user or a config file gave, or builds calldata
from a Solidity signature uses these; ``tests/test_architecture.py`` fails when a hand-written copy appears again.

Shapes: hashes, ids and addresses are ``bytes`` inside, ``0x``-prefixed lower-case hex outside (JSON, SQL text,
log lines); an address is 20 bytes, written ``0x`` + 40 hex digits (either case; EIP-55 mixed case is accepted and
not checked). Sources: the Ethereum JSON-RPC specification (``DATA`` encoding), the Solidity ABI specification
("Function Selector": the first 4 bytes of the keccak-256 of the canonical signature ``name(type1,type2)``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import rlp
from eth_abi import encode as abi_encode
from eth_abi import grammar
from eth_abi.exceptions import ABITypeError, ParseError
from eth_abi.registry import registry as abi_registry
from eth_utils import keccak

from .errors import MonmouthError

#: ``0x`` + 40 hex digits: how an address is written in JSON-RPC, config files and requests.
ADDRESS_RE = re.compile(r"^0x[0-9a-fA-F]{40}$")
_BARE_ADDRESS_RE = re.compile(r"^(?:0x)?[0-9a-fA-F]{40}$")


class AddressError(MonmouthError, ValueError):
    """A value that should be a 20-byte address is not one; the message names the field and the value.

    A ``ValueError`` too, so a pydantic validator that raises it reports it as the field's validation error.
    """


def hx(b: bytes | None) -> str | None:
    """``0x``-prefixed lower-case hex of ``b`` (``None`` stays ``None``): how hashes, ids and addresses appear in
    JSON and logs."""
    return None if b is None else "0x" + b.hex()


def is_address(value: object) -> bool:
    """True when ``value`` is a ``str`` of the form ``0x`` + 40 hex digits."""
    return isinstance(value, str) and ADDRESS_RE.match(value) is not None


def _refusal(value: object, what: str | None) -> AddressError:
    msg = f"{value!r} is not a 0x-prefixed 20-byte hex address"
    return AddressError(f"{what}: {msg}" if what else msg)


def check_address(value: str, what: str | None = None) -> str:
    """``value`` unchanged when it is ``0x`` + 40 hex digits (for config and request validators).

    Raises:
        AddressError: otherwise, ``"<what>: '<value>' is not a 0x-prefixed 20-byte hex address"``.
    """
    if not is_address(value):
        raise _refusal(value, what)
    return value


def parse_address(value: str, what: str | None = None, *, bare_ok: bool = False) -> bytes:
    """The 20 bytes of the address ``value`` (``0x`` + 40 hex digits; with ``bare_ok`` the ``0x`` may be left out).

    Raises:
        AddressError: not an address (the message names ``what`` and the value).
    """
    pattern = _BARE_ADDRESS_RE if bare_ok else ADDRESS_RE
    if not isinstance(value, str) or pattern.match(value) is None:
        raise _refusal(value, what)
    return bytes.fromhex(value[-40:])


def normalize_address(value: str | bytes) -> str | None:
    """``0x`` + 40 lower-case hex digits, or ``None`` when ``value`` (20 bytes or hex text) is not an address."""
    if isinstance(value, bytes):
        return "0x" + value.hex() if len(value) == 20 else None
    return value.lower() if is_address(value) else None


def address_set(values: Iterable[str | bytes]) -> frozenset[bytes]:
    """20-byte addresses from 20-byte ``bytes`` or hex text with or without ``0x`` (anything else is skipped)."""
    out = set()
    for v in values:
        if isinstance(v, bytes):
            if len(v) == 20:
                out.add(v)
        elif isinstance(v, str) and _BARE_ADDRESS_RE.match(v):
            out.add(bytes.fromhex(v[-40:]))
    return frozenset(out)


def create_address(sender: bytes, nonce: int) -> bytes:
    """The 20-byte address of the contract that ``sender`` (20 bytes) creates with a transaction of nonce ``nonce``:
    ``keccak256(rlp([sender, nonce]))[12:]`` (Ethereum yellow paper, eq. 86; RLP by the ``rlp`` package)."""
    return bytes(keccak(rlp.encode([sender, nonce])))[12:]


def selector(signature: str) -> bytes:
    """The 4-byte function selector of a canonical signature such as ``"transfer(address,uint256)"``."""
    return bytes(keccak(text=signature))[:4]


def split_abi_params(text: str) -> list[str]:
    """The parameters of a signature's parameter list, split on the commas outside parentheses and brackets
    (tuple types hold commas): ``"(address,uint256)[] a, bool b"`` -> ``["(address,uint256)[] a", " bool b"]``.
    Each part is returned as written (blanks kept, an empty last part when ``text`` ends with a comma).

    Raises:
        ValueError: unbalanced parentheses or brackets.
    """
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
            if depth < 0:
                raise ValueError("unbalanced parentheses")
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth != 0:
        raise ValueError("unbalanced parentheses")
    parts.append("".join(cur))
    return parts


def canonical_abi_type(text: str) -> str:
    """The canonical form of the ABI type ``text`` (``uint`` -> ``uint256``, ``byte[]`` -> ``bytes1[]``), validated
    with eth-abi's type grammar and encoder registry (Solidity ABI specification, "Types").

    Raises:
        ValueError: not a valid ABI type, naming it.
    """
    try:
        norm = grammar.normalize(text)
        grammar.parse(norm).validate()
    except (ParseError, ABITypeError) as e:
        raise ValueError(f"unknown type {text!r}: {e}") from None
    if not abi_registry.has_encoder(norm):
        raise ValueError(f"unknown type {text!r}")
    return str(norm)


def calldata(signature: str, *args: Any) -> str:
    """``0x`` calldata calling ``signature`` (canonical, e.g. ``"approve(address,uint256)"``) with ``args``,
    ABI-encoded with eth-abi. Types with commas inside (tuples) are not supported here.

    Raises:
        eth_abi.exceptions.EncodingError: an argument does not fit its type.
    """
    types = [t for t in signature[signature.index("(") + 1:-1].split(",") if t]
    return "0x" + (selector(signature) + abi_encode(types, list(args))).hex()
