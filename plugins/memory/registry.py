"""Memory agents registered from on-chain registry contracts' events (``[[plugins.memory.registries]]``).

Each configured registry names a contract address and the Solidity signature of its registration event (and
optionally of an unregistration event), with the parameter that holds the agent's address, e.g.::

    [[plugins.memory.registries]]
    address = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
    event = "AgentRegistered(address indexed agent, string name)"
    unregister_event = "AgentUnregistered(address indexed agent)"
    agent = "agent"     # the default
    label = "name"      # optional: a non-indexed string parameter used as the agent's label

:func:`apply` runs first in the memory plugin's ``monmouth_block_applied`` (inside the engine's transaction, so the
agent's own transactions in the registering block already become episodes); :func:`revert` runs in
``monmouth_block_reverted``, after the journal has undone the block.

**Tables.** The registration itself is a journaled chain table, ``memory_registry`` (one row per agent: the registry
that registered it, the block, transaction and log, the label and the block timestamp), written only here, so a
reorg restores it exactly. Every other part of the plugin reads ``memory_agents``, so a registered agent also gets
a ``memory_agents`` row with ``source = 'registry'``; that table is written by the API and the CLI too (labels,
forget), so it is *not* journaled (declared trimmed, see :mod:`.schema`): had the journal recorded the chain hook's
insert, a later forget or label change would have made the inverse changeset conflict and the revert fail. Instead
the ``registry`` rows of ``memory_agents`` are a projection of ``memory_registry``, put back in line by
:func:`revert`: a not-forgotten ``registry`` row without a registration is deleted, a registration without a row
gets it back (same label and ``created_at`` as when it was first made). Agents registered by config, API, CLI or
import keep their rows: a registry event for them only records the registration, an unregistration never
deletes their row.

**Forget is final**: a registration event for an agent whose ``memory_agents`` row is forgotten is ignored (no
registration recorded, no key created), and neither :func:`revert` nor an unregistration touches a forgotten row.

**Keys** (``key_source = "file"``): registering creates the agent's key file (``KeyStore.create``, which keeps an
existing file). That side effect is outside the database and is not undone by a revert: the file is harmless (no
row refers to it) and is reused if the agent is registered again. With ``key_source = "env"`` a missing variable
does not stop the block: the agent is registered, the error is logged and counted (``key_errors``), and its
episodes are skipped until the variable is set.

Topic0 of an event is ``keccak256`` of its canonical signature, ``Name(type1,type2,...)`` with canonical types
(``uint`` -> ``uint256``), per the Solidity ABI specification ("Events",
https://docs.soliditylang.org/en/latest/abi-spec.html#events). Indexed parameters are topics 1..3 (a non-anonymous
event has at most 3), non-indexed ones are ABI-encoded together in the log's data (decoded with eth-abi). An
indexed ``address`` topic is the address left-padded with 12 zero bytes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from eth_utils import event_signature_to_log_topic

from monmouth.chain import canonical_abi_type, split_abi_params

log = logging.getLogger(__name__)

#: A non-anonymous event has topic0 plus at most 3 indexed parameters (Solidity ABI spec, "Events").
MAX_INDEXED = 3

_NAME = r"[A-Za-z_$][A-Za-z0-9_$]*"
_SIGNATURE = re.compile(rf"^\s*(?:event\s+)?({_NAME})\s*\((.*)\)\s*;?\s*$", re.DOTALL)
_IDENT = re.compile(rf"^{_NAME}$")


# ---------------------------------------------------------------------------------------------------------------------
# event signatures


@dataclass(frozen=True, slots=True)
class Param:
    """One event parameter: ``name`` (``""`` if unnamed), canonical ABI ``type``, ``indexed``."""

    name: str
    type: str
    indexed: bool


@dataclass(frozen=True, slots=True)
class EventSignature:
    """A parsed event signature.

    Attributes:
        name: the event name.
        params: the parameters in declaration order.
        canonical: ``Name(type1,...)`` with canonical types (what topic0 hashes).
        topic0: ``keccak256(canonical)``, 32 bytes.
    """

    name: str
    params: tuple[Param, ...]
    canonical: str
    topic0: bytes

    def find(self, name: str) -> Param | None:
        """The parameter called ``name``, or ``None``."""
        return next((p for p in self.params if p.name == name), None)

    @property
    def n_topics(self) -> int:
        """Topics of a matching log: topic0 plus one per indexed parameter."""
        return 1 + sum(p.indexed for p in self.params)

    @property
    def data_types(self) -> tuple[str, ...]:
        """Types of the non-indexed parameters, in order (the ABI-encoded tuple in the log's data)."""
        return tuple(p.type for p in self.params if not p.indexed)


def parse_event(signature: str) -> EventSignature:
    """Parse a Solidity event signature such as ``"AgentRegistered(address indexed agent, string name)"``.

    Each parameter is ``type [indexed] [name]``; a leading ``event`` keyword and a trailing ``;`` are accepted.
    Types are validated and made canonical with eth-abi's type grammar; topic0 is computed with eth-utils'
    ``event_signature_to_log_topic`` (keccak256 of the canonical signature, Solidity ABI spec "Events").

    Returns:
        the parsed :class:`EventSignature`.

    Raises:
        ValueError: malformed signature, unknown type, duplicate parameter name, or more than 3 indexed
            parameters (the message says which).
    """
    m = _SIGNATURE.match(signature)
    if m is None:
        raise ValueError(f"{signature!r} is not an event signature like 'Name(address indexed agent)'")
    name, body = m.group(1), m.group(2).strip()
    params: list[Param] = []
    if body:
        for raw in split_abi_params(body):
            # The type may be a tuple "(a,b)[]" (no spaces inside); what follows is [indexed] [name].
            words = raw.split()
            if not words:
                raise ValueError(f"empty parameter in {signature!r}")
            typ, rest = words[0], words[1:]
            indexed = bool(rest) and rest[0] == "indexed"
            if indexed:
                rest = rest[1:]
            if len(rest) > 1 or (rest and not _IDENT.match(rest[0])):
                raise ValueError(f"cannot parse parameter {raw.strip()!r} (expected 'type [indexed] [name]')")
            pname = rest[0] if rest else ""
            if pname and any(p.name == pname for p in params):
                raise ValueError(f"duplicate parameter name {pname!r}")
            params.append(Param(pname, canonical_abi_type(typ), indexed))
    if sum(p.indexed for p in params) > MAX_INDEXED:
        raise ValueError(f"an event has at most {MAX_INDEXED} indexed parameters")
    canonical = f"{name}({','.join(p.type for p in params)})"
    return EventSignature(name, tuple(params), canonical, bytes(event_signature_to_log_topic(canonical)))


# ---------------------------------------------------------------------------------------------------------------------
# compiled matchers


@dataclass(frozen=True, slots=True)
class Matcher:
    """How to read one configured event of one registry from a log.

    Attributes:
        registry: the contract address (20 bytes).
        event: the parsed signature.
        register: True for the registration event, False for the unregistration event.
        agent_topic: topic index (1..3) of the agent when its parameter is indexed, else ``None``.
        agent_data: position of the agent in the decoded data tuple when it is not indexed, else ``None``.
        label_data: position of the label in the decoded data tuple, or ``None``.
    """

    registry: bytes
    event: EventSignature
    register: bool
    agent_topic: int | None
    agent_data: int | None
    label_data: int | None


def check_param(event: EventSignature, name: str, type_: str, *, indexed_ok: bool = True) -> Param:
    """The parameter ``name`` of ``event``, checked to have ABI type ``type_``.

    Raises:
        ValueError: no such parameter, wrong type, or indexed while ``indexed_ok`` is False.
    """
    p = event.find(name)
    if p is None:
        have = ", ".join(q.name for q in event.params if q.name) or "none named"
        raise ValueError(f"parameter {name!r} not found in {event.canonical} (parameters: {have})")
    if p.type != type_:
        raise ValueError(f"parameter {name!r} of {event.name} is {p.type}, not {type_}")
    if p.indexed and not indexed_ok:
        raise ValueError(f"parameter {name!r} of {event.name} is indexed (the log holds only its hash)")
    return p


def matcher(registry: bytes, event: EventSignature, agent: str, label: str | None, register: bool) -> Matcher:
    """Compile one event of one registry (see :class:`Matcher`).

    Raises:
        ValueError: see :func:`check_param`.
    """
    p = check_param(event, agent, "address")
    data = [q for q in event.params if not q.indexed]
    indexed = [q for q in event.params if q.indexed]
    label_data = None
    if label is not None:
        lp = check_param(event, label, "string", indexed_ok=False)
        label_data = data.index(lp)
    if p.indexed:
        return Matcher(registry, event, register, 1 + indexed.index(p), None, label_data)
    return Matcher(registry, event, register, None, data.index(p), label_data)


def build_index(entries: Iterable[Any]) -> dict[bytes, dict[bytes, Matcher]]:
    """``{address: {topic0: Matcher}}`` from validated ``RegistryConfig`` entries.

    Raises:
        ValueError: two entries configure the same event of the same address.
    """
    out: dict[bytes, dict[bytes, Matcher]] = {}
    for e in entries:
        addr = bytes.fromhex(e.address[2:])
        events = [(e.event, True)] + ([(e.unregister_event, False)] if e.unregister_event else [])
        for sig, register in events:
            ev = parse_event(sig)
            by_topic = out.setdefault(addr, {})
            if ev.topic0 in by_topic:
                raise ValueError(f"{ev.canonical} of 0x{addr.hex()} is configured twice")
            by_topic[ev.topic0] = matcher(addr, ev, e.agent, e.label if register else None, register)
    return out
