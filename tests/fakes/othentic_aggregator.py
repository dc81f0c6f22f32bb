"""FakeOthenticAggregator: a local stand-in for the JSON-RPC endpoint of an Othentic aggregator (the Othentic
client's RPC) that a task performer calls.

Shape as documented (Othentic docs, "Execution Service"): a JSON-RPC 2.0 ``POST`` with ``method: "sendTask"``
and ``params: [proofOfTask (string), data (0x bytes), taskDefinitionId (uint16), performerAddress, signature
(0x bytes)]``. The fake checks the types, and checks the ECDSA signature independently of Monmouth's code: it
re-encodes ``abi.encode(string, bytes, address, uint16)`` with eth-abi, hashes it with keccak256 and recovers
the signer with eth-keys; a mismatch answers JSON-RPC error -32602. Unknown methods answer -32601.

Accepted tasks are kept in ``tasks`` (by delivery key, read from ``data``); every key received, duplicates
included, is in ``received_keys``; a repeated key is acknowledged without creating a second task.
"""

from __future__ import annotations

import json
from typing import Any

from eth_abi import encode
from eth_hash.auto import keccak
from eth_keys import keys

from .base import FakeService, Request, Response


def _err(id_: Any, code: int, message: str) -> Response:
    return Response.of_json({"jsonrpc": "2.0", "id": id_, "error": {"code": code, "message": message}})


class FakeOthenticAggregator(FakeService):
    name = "othentic"

    def __init__(self, **kw: Any) -> None:
        self.tasks: dict[str, dict[str, Any]] = {}
        self.received_keys: list[str] = []
        #: Task definitions this AVS has (``None``: any); others answer -32602.
        self.task_definitions: set[int] | None = None
        super().__init__(**kw)

    def serve(self, req: Request) -> Response:
        try:
            msg = req.json()
        except ValueError:
            return _err(None, -32700, "parse error")
        if not isinstance(msg, dict) or msg.get("jsonrpc") != "2.0" or "method" not in msg:
            return _err(None, -32600, "invalid request")
        id_ = msg.get("id")
        if msg["method"] != "sendTask":
            return _err(id_, -32601, f"method {msg['method']} not found")
        p = msg.get("params")
        if not isinstance(p, list) or len(p) != 5:
            return _err(id_, -32602, "sendTask takes 5 params")
        proof, data_hex, tdid, performer, sig_hex = p
        if not (isinstance(proof, str) and isinstance(data_hex, str) and data_hex.startswith("0x")
                and isinstance(tdid, int) and 0 <= tdid <= 0xFFFF and isinstance(performer, str)
                and isinstance(sig_hex, str) and sig_hex.startswith("0x")):
            return _err(id_, -32602, "invalid sendTask params")
        if self.task_definitions is not None and tdid not in self.task_definitions:
            return _err(id_, -32602, f"unknown taskDefinitionId {tdid}")
        data = bytes.fromhex(data_hex[2:])
        sig = bytes.fromhex(sig_hex[2:])
        digest = keccak(encode(["string", "bytes", "address", "uint16"], [proof, data, performer, tdid]))
        if len(sig) != 65 or sig[64] not in (27, 28):
            return _err(id_, -32602, "signature must be 65 bytes r||s||v with v in {27, 28}")
        signer = keys.Signature(sig[:64] + bytes([sig[64] - 27])).recover_public_key_from_msg_hash(digest)
        if signer.to_checksum_address() != performer:
            return _err(id_, -32602, f"signature recovers {signer.to_checksum_address()}, not {performer}")
        try:
            key = json.loads(data).get("delivery_key")
        except (ValueError, AttributeError):
            key = None
        if key is not None:
            self.received_keys.append(key)
            if key in self.tasks:
                return Response.of_json({"jsonrpc": "2.0", "id": id_, "result": True})
        self.tasks[key or f"task-{len(self.tasks)}"] = {"proofOfTask": proof, "data": data, "taskDefinitionId": tdid,
                                                       "performer": performer, "signature": sig_hex}
        return Response.of_json({"jsonrpc": "2.0", "id": id_, "result": True})

    def malformed(self, req: Request) -> Response:
        return Response.of_json({"jsonrpc": "2.0", "id": 1})  # neither result nor error
