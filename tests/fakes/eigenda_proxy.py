"""FakeEigenDAProxy: a local stand-in for an EigenDA proxy's standard-commitment REST API.

Shapes as documented by Layr-Labs (eigenda-proxy, "standard" commitment mode):

* ``POST /put?commitment_mode=standard``, body = the raw payload (``application/octet-stream``) → ``200`` with the
  certificate's raw bytes as the body;
* ``GET /get/0x<hex cert>?commitment_mode=standard`` → ``200`` with the payload, ``404`` if unknown.

It really stores blobs (in memory) and returns them. Its certificates are fake (a version byte ``0x02`` and a
keccak of the payload and a dispersal counter), opaque to the client as real ones are.

Delivery keys: Monmouth puts the job's delivery key in each blob (``delivery_key``) and in an
``Idempotency-Key`` header. The fake records every key it receives (``received_keys``, duplicates included) and,
like a careful service, answers a repeated key with the cert it already issued (``certs_by_key``) instead of
dispersing again.
"""

from __future__ import annotations

import json
from typing import Any

from eth_hash.auto import keccak

from .base import FakeService, Request, Response


class FakeEigenDAProxy(FakeService):
    name = "eigenda"

    def __init__(self, **kw: Any) -> None:
        self.blobs: dict[bytes, bytes] = {}
        self.certs_by_key: dict[str, bytes] = {}
        self.received_keys: list[str] = []
        self.dispersals = 0
        super().__init__(**kw)

    @staticmethod
    def key_of(payload: bytes, headers: dict[str, str]) -> str | None:
        key = headers.get("idempotency-key")
        if key:
            return key
        try:
            return json.loads(payload).get("delivery_key")
        except (ValueError, AttributeError):
            return None

    def serve(self, req: Request) -> Response:
        if req.query.get("commitment_mode") != ["standard"]:
            return Response.of_json({"error": "commitment_mode=standard expected"}, 400)
        if req.method == "POST" and req.path == "/put":
            if not req.body:
                return Response.of_json({"error": "empty payload"}, 400)
            key = self.key_of(req.body, req.headers)
            if key is not None:
                self.received_keys.append(key)
                if key in self.certs_by_key:
                    return Response(200, self.certs_by_key[key], "application/octet-stream")
            self.dispersals += 1
            cert = b"\x02" + keccak(req.body + self.dispersals.to_bytes(8, "big"))
            self.blobs[cert] = req.body
            if key is not None:
                self.certs_by_key[key] = cert
            return Response(200, cert, "application/octet-stream")
        if req.method == "GET" and req.path.startswith("/get/0x"):
            try:
                cert = bytes.fromhex(req.path[len("/get/0x"):])
            except ValueError:
                return Response.of_json({"error": "cert is not hex"}, 400)
            blob = self.blobs.get(cert)
            if blob is None:
                return Response.of_json({"error": "blob not found"}, 404)
            return Response(200, blob, "application/octet-stream")
        return Response.of_json({"error": "not found"}, 404)

    def malformed(self, req: Request) -> Response:
        return Response(200, b"", "application/octet-stream")  # a 200 with an empty certificate

    def tamper(self, cert: bytes, blob: bytes) -> None:
        """Replace the blob behind ``cert`` (to prove verification notices)."""
        with self.lock:
            self.blobs[cert] = blob

    def blob_docs(self) -> list[dict[str, Any]]:
        """Every stored blob, parsed."""
        with self.lock:
            return [json.loads(b) for b in self.blobs.values()]
