"""Sign-In with Ethereum (EIP-4361): the message an agent signs, built and read.

:func:`siwe_message` builds a message, :func:`sign_in_with_key` builds and signs one (EIP-191 personal sign, with
eth-account), :func:`parse_siwe` reads one back, refusing a malformed message with :class:`SiweError` naming the
part. What a message must say to sign an agent in (nonce, domain, chain id, times, signer) is checked by
:class:`monmouth.auth.Authenticator`. Source: https://eips.ethereum.org/EIPS/eip-4361 ("Message Format").

Hand-written rather than the ``siwe`` package: see docs/security.md ("SIWE messages stay hand-parsed").
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .chain import is_address
from .errors import MonmouthError


@dataclass
class SiweMessage:
    domain: str
    address: str
    uri: str
    version: str
    chain_id: int
    nonce: str
    issued_at: str
    statement: str | None = None
    expiration_time: str | None = None
    not_before: str | None = None
    request_id: str | None = None
    resources: list[str] = field(default_factory=list)
    scheme: str | None = None

    def text(self) -> str:
        """The EIP-4361 text to sign."""
        head = f"{self.scheme}://{self.domain}" if self.scheme else self.domain
        lines = [f"{head} wants you to sign in with your Ethereum account:", self.address, ""]
        if self.statement:
            lines += [self.statement, ""]
        lines += [f"URI: {self.uri}", f"Version: {self.version}", f"Chain ID: {self.chain_id}",
                  f"Nonce: {self.nonce}", f"Issued At: {self.issued_at}"]
        if self.expiration_time:
            lines.append(f"Expiration Time: {self.expiration_time}")
        if self.not_before:
            lines.append(f"Not Before: {self.not_before}")
        if self.request_id is not None:
            lines.append(f"Request ID: {self.request_id}")
        if self.resources:
            lines.append("Resources:")
            lines += [f"- {r}" for r in self.resources]
        return "\n".join(lines)


class SiweError(MonmouthError, ValueError):
    """A SIWE message that cannot be accepted; ``field`` names the part at fault."""

    def __init__(self, field: str, msg: str) -> None:
        super().__init__(f"{field}: {msg}")
        self.field = field


_HEADER = re.compile(r"^(?:(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*)://)?(?P<domain>[^\s/]+) wants you to sign in with "
                     r"your Ethereum account:$")
_FIELDS = {"URI": "uri", "Version": "version", "Chain ID": "chain_id", "Nonce": "nonce", "Issued At": "issued_at",
           "Expiration Time": "expiration_time", "Not Before": "not_before", "Request ID": "request_id"}


def parse_siwe(text: str) -> SiweMessage:
    """Parse an EIP-4361 message.

    Raises:
        SiweError: malformed, naming the part.
    """
    lines = text.split("\n")
    if len(lines) < 7:
        raise SiweError("message", "is not an EIP-4361 message (too short)")
    m = _HEADER.match(lines[0])
    if not m:
        raise SiweError("message", "the first line must be '<domain> wants you to sign in with your Ethereum "
                                   "account:'")
    address = lines[1]
    if not is_address(address):
        raise SiweError("address", "must be a 0x-prefixed 20-byte hex address")
    from eth_utils import is_checksum_address

    if not is_checksum_address(address):
        raise SiweError("address", "must be EIP-55 checksummed")
    i = 2
    if lines[i] != "":
        raise SiweError("message", "an empty line must follow the address")
    i += 1
    statement = None
    if i < len(lines) and not lines[i].startswith("URI: "):
        statement = lines[i]
        i += 1
        if i >= len(lines) or lines[i] != "":
            raise SiweError("statement", "must be one line followed by an empty line")
        i += 1
    values: dict[str, Any] = {}
    resources: list[str] = []
    order = list(_FIELDS)
    pos = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if line == "Resources:":
            while i < len(lines) and lines[i].startswith("- "):
                resources.append(lines[i][2:])
                i += 1
            if i != len(lines):
                raise SiweError("resources", "must come last, one '- <uri>' per line")
            break
        key, sep, value = line.partition(": ")
        if not sep or key not in _FIELDS:
            raise SiweError("message", f"unexpected line {line[:60]!r}")
        if key not in order[pos:]:
            raise SiweError(_FIELDS[key], "out of order or repeated")
        pos = order.index(key) + 1
        values[_FIELDS[key]] = value
    for req in ("uri", "version", "chain_id", "nonce", "issued_at"):
        if req not in values:
            raise SiweError(req, "is required")
    if values["version"] != "1":
        raise SiweError("version", "must be 1")
    try:
        chain_id = int(values["chain_id"])
    except ValueError:
        raise SiweError("chain_id", "must be an integer") from None
    if not re.fullmatch(r"[A-Za-z0-9]{8,}", values["nonce"]):
        raise SiweError("nonce", "must be at least 8 alphanumeric characters")
    for k in ("issued_at", "expiration_time", "not_before"):
        if k in values:
            rfc3339_seconds(values[k], k)
    return SiweMessage(domain=m["domain"], scheme=m["scheme"], address=address, statement=statement,
                       uri=values["uri"], version="1", chain_id=chain_id, nonce=values["nonce"],
                       issued_at=values["issued_at"], expiration_time=values.get("expiration_time"),
                       not_before=values.get("not_before"), request_id=values.get("request_id"), resources=resources)


def rfc3339_seconds(value: str, name: str) -> float:
    """Unix seconds of the RFC 3339 date-time ``value`` (field ``name``).

    Raises:
        SiweError: not an RFC 3339 date-time, or without a time zone.
    """
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise SiweError(name, "must be an RFC 3339 date-time") from None
    if dt.tzinfo is None:
        raise SiweError(name, "must carry a time zone (RFC 3339)")
    return dt.timestamp()


def iso(ts: float) -> str:
    """Unix seconds as RFC 3339 UTC with milliseconds: ``2025-01-01T00:00:00.000Z``."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def siwe_message(address: str, nonce: str, *, domain: str, chain_id: int, uri: str | None = None,
                 statement: str | None = "Sign in to the Monmouth sidecar.", ttl: float = 300,
                 now: float | None = None) -> str:
    """Build the EIP-4361 text an agent signs (for clients, tests, the demo)."""
    from eth_utils import to_checksum_address

    now = time.time() if now is None else now
    return SiweMessage(domain=domain, address=to_checksum_address(address), statement=statement,
                       uri=uri or f"http://{domain}", version="1", chain_id=chain_id, nonce=nonce,
                       issued_at=iso(now), expiration_time=iso(now + ttl)).text()


def sign_in_with_key(private_key: Any, nonce: str, *, domain: str, chain_id: int, **kw: Any) -> tuple[str, str]:
    """``(message, signature)`` signed with ``private_key`` (eth-account), for clients and tests."""
    from eth_account import Account
    from eth_account.messages import encode_defunct

    acct = Account.from_key(private_key)
    msg = siwe_message(acct.address, nonce, domain=domain, chain_id=chain_id, **kw)
    sig = Account.sign_message(encode_defunct(text=msg), private_key=acct.key).signature
    return msg, "0x" + bytes(sig).hex()
