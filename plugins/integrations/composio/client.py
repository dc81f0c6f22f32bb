"""A client of Composio's v3 REST API: tool execution.

Documented at https://docs.composio.dev/reference/api-reference/tools/postToolsExecuteByToolSlug:

* ``POST /api/v3/tools/execute/{tool_slug}`` with header ``x-api-key: <project API key>`` and a JSON body
  ``{"arguments": {...}, "user_id": "...", "connected_account_id": "...", "version": "..."}`` (all optional;
  ``arguments`` and ``text`` are mutually exclusive);
* ``200`` answers ``{"data": {...}, "error": string | null, "successful": bool, "log_id": "...",
  "session_info": {...}}`` — a tool that ran and failed is ``successful: false`` with ``error`` set, still 200;
* errors answer ``{"error": {"message", "code", "slug", "status", "request_id", "suggested_fix"}}`` with a 4xx
  or 5xx status.

Tool execution is not idempotent, so :meth:`Composio.execute` never retries by itself; the caller decides (see
``plugin.py``: only failures that never reached Composio are retried).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from ..errors import MalformedResponse
from ..http import json_body, request


class Composio:
    """Calls Composio's v3 API.

    Args:
        client: the ``httpx.Client`` (its timeout applies).
        base_url: e.g. ``https://backend.composio.dev``.
        api_key: the project API key (from the environment).
    """

    def __init__(self, client: httpx.Client, base_url: str, api_key: str) -> None:
        self.client = client
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key

    def execute(self, slug: str, arguments: Mapping[str, Any], *, user_id: str | None = None,
                connected_account_id: str | None = None, version: str | None = None,
                idempotency_key: str | None = None) -> dict[str, Any]:
        """Execute tool ``slug``; return ``{"successful", "data", "error", "log_id"}``.

        Raises:
            TransientError: timeout, connection failure, 429/5xx (``sent`` tells whether it may have run).
            PermanentError: 4xx (bad key, unknown tool, invalid arguments), with the upstream message.
            MalformedResponse: a 200 that is not the documented shape.
        """
        body: dict[str, Any] = {"arguments": dict(arguments)}
        for k, v in (("user_id", user_id), ("connected_account_id", connected_account_id), ("version", version)):
            if v is not None:
                body[k] = v
        headers = {"x-api-key": self.api_key}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        what = f"composio {slug}"
        r = request(self.client, "POST", f"{self.base_url}/api/v3/tools/execute/{slug}", json=body, headers=headers,
                    what=what)
        obj = json_body(r, what)
        if not isinstance(obj, dict) or not isinstance(obj.get("successful"), bool):
            raise MalformedResponse(f"{what}: 200 without a boolean 'successful': {str(obj)[:200]}")
        err = obj.get("error")
        if err is not None and not isinstance(err, str | dict):
            raise MalformedResponse(f"{what}: 'error' is neither null, a string nor an object")
        return {"successful": obj["successful"], "data": obj.get("data"), "error": err, "log_id": obj.get("log_id")}
