"""FakeComposio: a local stand-in for Composio's v3 tool-execution endpoint.

Shape as documented (https://docs.composio.dev/reference/api-reference/tools/postToolsExecuteByToolSlug):
``POST /api/v3/tools/execute/{tool_slug}`` with header ``x-api-key`` and JSON ``{"arguments", "user_id",
"connected_account_id", "version"}`` → ``200 {"data", "error", "successful", "log_id"}``; errors answer
``{"error": {"message", "code", "slug", "status", "request_id", "suggested_fix"}}`` (401 bad key, 404 unknown
tool).

Tools are Python callables registered in ``tools`` (slug → ``fn(arguments) -> data``; raising ``ValueError``
makes a ``successful: false`` answer). Every execution is recorded in ``executions`` with its
``Idempotency-Key`` header, so tests can prove a call was not executed twice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import FakeService, Request, Response

PREFIX = "/api/v3/tools/execute/"


def _error(status: int, message: str, slug: str) -> Response:
    return Response.of_json({"error": {"message": message, "code": status, "slug": slug, "status": status,
                                       "request_id": "req_fake", "suggested_fix": None}}, status)


class FakeComposio(FakeService):
    name = "composio"

    def __init__(self, api_key: str = "test-composio-key", **kw: Any) -> None:
        self.api_key = api_key
        self.tools: dict[str, Callable[[dict[str, Any]], Any]] = {
            "HACKERNEWS_GET_USER": lambda a: {"id": a.get("username"), "karma": 42},
            "GITHUB_STAR_A_REPOSITORY": lambda a: {"starred": f"{a.get('owner')}/{a.get('repo')}"},
        }
        self.executions: list[dict[str, Any]] = []
        super().__init__(**kw)

    def serve(self, req: Request) -> Response:
        if req.method != "POST" or not req.path.startswith(PREFIX):
            return _error(404, "not found", "NotFound")
        if req.headers.get("x-api-key") != self.api_key:
            return _error(401, "invalid API key", "Unauthorized")
        slug = req.path[len(PREFIX):]
        fn = self.tools.get(slug)
        if fn is None:
            return _error(404, f"tool {slug} not found", "ToolNotFound")
        try:
            body = req.json()
        except ValueError:
            return _error(400, "body is not JSON", "BadRequest")
        args = body.get("arguments") or {}
        n = len(self.executions) + 1
        self.executions.append({"tool": slug, "arguments": args, "body": body,
                                "idempotency_key": req.headers.get("idempotency-key")})
        try:
            data, error, ok = fn(args), None, True
        except ValueError as e:
            data, error, ok = {}, str(e), False
        return Response.of_json({"data": data, "error": error, "successful": ok, "log_id": f"log_fake_{n}",
                                 "session_info": None})

    def malformed(self, req: Request) -> Response:
        return Response.of_json({"data": {"oops": True}})  # no 'successful'

    def executed(self, key: str) -> int:
        """How many times a call with Idempotency-Key ``key`` was executed."""
        with self.lock:
            return sum(1 for e in self.executions if e["idempotency_key"] == key)
