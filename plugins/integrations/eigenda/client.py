"""A client of the EigenDA proxy's standard-commitment REST API.

Documented by Layr-Labs (eigenda-proxy README, "standard" commitment mode; https://github.com/Layr-Labs/eigenda,
``api/proxy``):

* ``POST /put?commitment_mode=standard`` with the raw payload as the body (``Content-Type:
  application/octet-stream``) disperses it and answers ``200`` with the DA certificate's bytes as the body;
  ``503`` means the disperser is unavailable (retry or fail over);
* ``GET /get/0x<hex cert>?commitment_mode=standard`` answers ``200`` with the original payload, ``404`` if the
  cert is unknown.

The proxy has no idempotency header; Monmouth puts the delivery key inside each payload (and sends it as
``Idempotency-Key``, which a proxy ignores) so every blob identifies the job that produced it.
"""

from __future__ import annotations

import httpx

from ..errors import MalformedResponse, PermanentError
from ..http import request

#: Largest certificate accepted from a proxy, bytes (real certs are a few hundred bytes to a few KiB).
MAX_CERT_BYTES = 64 * 1024


class EigenDAProxy:
    """Calls one EigenDA proxy.

    Args:
        client: the ``httpx.Client`` (its timeout applies).
        url: the proxy's base URL, e.g. ``http://127.0.0.1:3100``.
    """

    def __init__(self, client: httpx.Client, url: str) -> None:
        self.client = client
        self.url = url.rstrip("/")

    def put(self, payload: bytes, key: str | None = None) -> bytes:
        """Disperse ``payload``; return the DA certificate (raw bytes).

        Raises:
            TransientError: timeout, connection failure, 429/5xx (503: disperser unavailable).
            PermanentError: other 4xx (e.g. payload too large).
            MalformedResponse: an empty or oversized certificate.
        """
        headers = {"Content-Type": "application/octet-stream"}
        if key:
            headers["Idempotency-Key"] = key
        r = request(self.client, "POST", f"{self.url}/put", params={"commitment_mode": "standard"}, content=payload,
                    headers=headers, what="eigenda put")
        cert = r.content
        if not cert:
            raise MalformedResponse("eigenda put: the proxy answered 200 with an empty certificate")
        if len(cert) > MAX_CERT_BYTES:
            raise MalformedResponse(f"eigenda put: certificate of {len(cert)} bytes is implausibly large")
        return cert

    def get(self, cert: bytes) -> bytes:
        """Fetch the payload behind ``cert``.

        Raises:
            PermanentError: 404, the proxy does not know the cert (``status`` 404), or another 4xx.
            TransientError: timeout, connection failure, 5xx.
        """
        r = request(self.client, "GET", f"{self.url}/get/0x{cert.hex()}", params={"commitment_mode": "standard"},
                    what="eigenda get")
        return r.content


__all__ = ["EigenDAProxy", "PermanentError"]
