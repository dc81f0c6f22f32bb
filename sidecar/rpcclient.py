"""The one JSON-RPC 2.0 client of the tree, over HTTP (httpx): async for the ``rpc`` source, sync for the demo,
the integrations and the test and bench harnesses.

Both clients send a call alone or several as one batch and hand back the results in call order. Every answer is
read the same way (:func:`results`): its nesting is bounded before it is parsed (:data:`sidecar.jsonrpc.
MAX_JSON_DEPTH`), each call is matched to its response by ``id``, and an error object becomes :class:`RpcError`.
Source: the JSON-RPC 2.0 specification (https://www.jsonrpc.org/specification), "Response object" and "Batch".

Errors (all under :class:`~sidecar.errors.MonmouthError`):

* ``httpx.HTTPError``: the transport failed or the HTTP status is not 2xx (``raise_for_status``);
* :class:`BadAnswerError`: the body is not a JSON-RPC response (not JSON, too deep, no response for a call);
* :class:`RpcError`: the node answered an error object (``code``, ``message``, ``data``).
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

from .errors import MonmouthError
from .jsonrpc import MAX_JSON_DEPTH, json_depth

#: ``(method, params)`` of one call.
Call = tuple[str, list[Any]]


class RpcError(MonmouthError):
    """A JSON-RPC error object returned for ``method``.

    Attributes:
        method: the method called.
        code: the error's ``code`` (an ``int`` from a conforming server, ``None`` when missing).
        message: the error's ``message``.
        data: the error's ``data``, or ``None``.
    """

    def __init__(self, method: str, error: Any) -> None:
        err = error if isinstance(error, dict) else {"message": repr(error)[:200]}
        self.method = method
        self.code = err.get("code")
        self.message = str(err.get("message", ""))
        self.data = err.get("data")
        super().__init__(f"{method}: JSON-RPC error {self.code}: {self.message}"[:300])


class TransientNodeError(MonmouthError):
    """The node answered something unusable right now (inconsistent batch mid-reorg, missing block)."""

    retryable = True


class BadAnswerError(TransientNodeError):
    """The node's answer is malformed (wrong JSON-RPC shape) or does not match the header it belongs to
    (transactions, receipts or header fields against the block hash, ``transactionsRoot``, ``receiptsRoot``).
    Counted in ``monmouth_source_bad_answers_total{source, node}``; the message names the node and the block."""


def request_body(calls: Sequence[Call], ids: Sequence[Any]) -> Any:
    """The JSON body for ``calls``: one request object for one call, else a batch (a list)."""
    payload = [{"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in zip(ids, calls, strict=True)]
    return payload if len(payload) > 1 else payload[0]


def results(content: bytes, calls: Sequence[Call], ids: Sequence[Any]) -> list[Any]:
    """The ``result`` of each call, in call order, from the raw answer ``content``.

    Raises:
        BadAnswerError: not JSON, nested deeper than ``MAX_JSON_DEPTH``, a response missing or with neither
            ``result`` nor ``error``, or an error object without an integer ``code``.
        RpcError: the first call whose response is an error object.
    """
    first = calls[0][0]
    depth = json_depth(content)
    if depth > MAX_JSON_DEPTH:
        raise BadAnswerError(f"{first}: the node's answer nests {depth} deep (at most {MAX_JSON_DEPTH})")
    try:
        body = json.loads(content)
    except ValueError as e:
        raise BadAnswerError(f"{first}: the node's answer is not JSON: {e}") from None
    items = body if isinstance(body, list) else [body]
    by_id = {item.get("id"): item for item in items if isinstance(item, dict)}
    out = []
    for i, (method, _) in zip(ids, calls, strict=True):
        item = by_id.get(i)
        if item is None and len(calls) == 1 and isinstance(body, dict) and "error" in body:
            item = body  # an error the server could not tie to a request (id null, JSON-RPC 2.0 "Error object")
        if item is None:
            raise BadAnswerError(f"{method}: no response with id {i} in the node's answer")
        if item.get("error") is not None:
            if not isinstance(item["error"], dict) or not isinstance(item["error"].get("code"), int):
                raise BadAnswerError(f"{method}: malformed JSON-RPC error object {str(item['error'])[:200]!r}")
            raise RpcError(method, item["error"])
        if "result" not in item:
            raise BadAnswerError(f"{method}: a JSON-RPC response with neither result nor error")
        out.append(item["result"])
    return out


class JsonRpcClient:
    """An async JSON-RPC 2.0 client over HTTP (httpx), with batching. Errors: see the module docs."""

    def __init__(self, url: str, timeout: float = 10.0, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = url
        self._client = httpx.AsyncClient(timeout=timeout, transport=transport)
        self._ids = itertools.count(1)

    async def call(self, method: str, *params: Any) -> Any:
        return (await self.batch([(method, list(params))]))[0]

    async def batch(self, calls: list[Call]) -> list[Any]:
        """Send calls as one batch; results in call order."""
        if not calls:
            return []
        ids = [next(self._ids) for _ in calls]
        resp = await self._client.post(self.url, json=request_body(calls, ids))
        resp.raise_for_status()
        return results(resp.content, calls, ids)

    async def aclose(self) -> None:
        await self._client.aclose()


class SyncJsonRpcClient:
    """A blocking JSON-RPC 2.0 client over HTTP (httpx), with batching. Errors: see the module docs.

    Args:
        url: the endpoint.
        timeout: seconds per request.
        client: an ``httpx.Client`` to send with (its timeouts apply; it is not closed by :meth:`close`).
    """

    def __init__(self, url: str, timeout: float = 10.0, client: httpx.Client | None = None) -> None:
        self.url = url
        self._own = client is None
        self.http = client if client is not None else httpx.Client(timeout=timeout)
        self._ids = itertools.count(1)

    def call(self, method: str, *params: Any, headers: Mapping[str, str] | None = None, id_: Any = None) -> Any:
        """Call ``method`` with ``params``; its ``result``. ``id_`` sets the request id (default: a counter)."""
        return self.batch([(method, list(params))], headers=headers, ids=None if id_ is None else [id_])[0]

    __call__ = call

    def batch(self, calls: list[Call], *, headers: Mapping[str, str] | None = None,
              ids: Sequence[Any] | None = None) -> list[Any]:
        """Send calls as one batch; results in call order."""
        if not calls:
            return []
        ids = list(ids) if ids is not None else [next(self._ids) for _ in calls]
        resp = self.http.post(self.url, json=request_body(calls, ids), headers=dict(headers or {}))
        resp.raise_for_status()
        return results(resp.content, calls, ids)

    def wait_answering(self, timeout: float, *, exited: Callable[[], int | None] | None = None,
                       interval: float = 0.05) -> None:
        """Block until the node answers ``eth_chainId`` (a node just started), asking every ``interval`` seconds.

        Args:
            timeout: seconds to wait at most.
            exited: the node process's exit status while it runs ``None`` (``Popen.poll``); checked before each try.

        Raises:
            TimeoutError: no answer within ``timeout`` seconds.
            ChildProcessError: the process exited first (the message holds its status).
        """
        deadline = time.monotonic() + timeout
        while True:
            status = exited() if exited is not None else None
            if status is not None:
                raise ChildProcessError(f"{self.url}: the node exited with status {status}")
            try:
                self.call("eth_chainId")
                return
            except (httpx.HTTPError, MonmouthError):
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"{self.url}: no JSON-RPC answer within {timeout:g}s") from None
                time.sleep(interval)

    def close(self) -> None:
        if self._own:
            self.http.close()

    def __enter__(self) -> SyncJsonRpcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
