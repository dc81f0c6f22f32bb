"""httpx calls whose failures are classified for the deliverer, and a small JSON-RPC 2.0 client.

Classification (see :mod:`.errors`):

* connection refused / DNS / connect timeout → transient, ``sent=False`` (the request never left);
* read/write timeout, dropped connection → transient, ``sent=True`` (the service may have acted);
* HTTP 429 and 503 → transient, ``sent=False`` (the service declined the work); 408, 425 and other 5xx →
  transient, ``sent=True``;
* other HTTP 4xx → permanent;
* a 2xx whose body is not what the API documents → :class:`~.errors.MalformedResponse` (transient).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from typing import Any

import httpx

from monmouth.rpcclient import BadAnswerError, RpcError, request_body, results

from .errors import MalformedResponse, PermanentError, TransientError


def snippet(text: str | bytes, n: int = 200) -> str:
    """The first ``n`` characters of a response body, for error messages."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = " ".join(text.split())
    return text[:n] + ("…" if len(text) > n else "")


def request(client: httpx.Client, method: str, url: str, *, what: str, **kw: Any) -> httpx.Response:
    """Send one request; return the 2xx response.

    Raises:
        TransientError: timeout, connection failure, HTTP 408/425/429/5xx (``status`` and ``sent`` set).
        PermanentError: any other HTTP 4xx.
    """
    try:
        r = client.request(method, url, **kw)
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as e:
        raise TransientError(f"{what}: cannot connect to {url}: {type(e).__name__}: {e}", sent=False) from e
    except httpx.TimeoutException as e:
        raise TransientError(f"{what}: {type(e).__name__} (no answer within the timeout)", sent=True) from e
    except httpx.TransportError as e:
        raise TransientError(f"{what}: {type(e).__name__}: {e}", sent=True) from e
    code = r.status_code
    if code in (429, 503):
        raise TransientError(f"{what}: HTTP {code}: {snippet(r.content)}", upstream_status=code, sent=False)
    if code in (408, 425) or code >= 500:
        raise TransientError(f"{what}: HTTP {code}: {snippet(r.content)}", upstream_status=code, sent=True)
    if code >= 400:
        raise PermanentError(f"{what}: HTTP {code}: {snippet(r.content)}", upstream_status=code)
    if code >= 300:
        raise PermanentError(f"{what}: unexpected HTTP {code} redirect to {r.headers.get('location')}",
                             upstream_status=code)
    return r


def json_body(r: httpx.Response, what: str) -> Any:
    """The response's JSON body.

    Raises:
        MalformedResponse: not JSON.
    """
    try:
        return r.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MalformedResponse(f"{what}: response is not JSON: {snippet(r.content)}") from e


#: JSON-RPC error codes that mean the request itself is wrong (https://www.jsonrpc.org/specification#error_object).
PERMANENT_RPC_CODES = frozenset({-32700, -32600, -32601, -32602})


class JsonRpc:
    """A JSON-RPC 2.0 client over an ``httpx.Client`` whose failures are classified for the deliverer: the core's
    :mod:`monmouth.rpcclient` reads the answer, :func:`request` classifies the transport.

    Args:
        client: the HTTP client (timeouts set there).
        url: the endpoint.
        what: a name for error messages (``"othentic aggregator"``).
    """

    def __init__(self, client: httpx.Client, url: str, what: str) -> None:
        self.client = client
        self.url = url
        self.what = what
        self._ids = itertools.count(1)

    def call(self, method: str, params: list[Any], *, id_: Any = None,
             headers: Mapping[str, str] | None = None) -> Any:
        """Call ``method``; return its ``result``.

        Raises:
            RpcError: the server answered with an error object (classify with :func:`rpc_failure`).
            TransientError, PermanentError: transport and HTTP failures (see :func:`request`).
            MalformedResponse: not a JSON-RPC 2.0 response.
        """
        what = f"{self.what} {method}"
        calls, ids = [(method, params)], [next(self._ids) if id_ is None else id_]
        r = request(self.client, "POST", self.url, json=request_body(calls, ids), headers=dict(headers or {}),
                    what=what)
        try:
            return results(r.content, calls, ids)[0]
        except BadAnswerError as e:
            raise MalformedResponse(f"{what}: not a JSON-RPC response ({e}): {snippet(r.content)}") from None


def rpc_failure(e: RpcError, what: str) -> TransientError | PermanentError:
    """The deliverer's view of a JSON-RPC error: invalid request/params/method are permanent, the rest
    (server errors, -32000..-32099) transient."""
    msg = f"{what}: JSON-RPC error {e.code}: {e.message}"
    return PermanentError(msg) if e.code in PERMANENT_RPC_CODES else TransientError(msg, sent=True)
