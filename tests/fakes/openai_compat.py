"""A fake OpenAI-compatible Chat Completions server (``POST /v1/chat/completions``) on a local port, for testing
``/rag/answer`` without an LLM. It follows the API's request and response shapes
(https://platform.openai.com/docs/api-reference/chat/create): it checks ``model`` and ``messages``, records every
request, and answers with the first context line that mentions a word of the question, citing its passage number.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeOpenAI:
    """Run with ``with FakeOpenAI() as fake: fake.url`` (``http://127.0.0.1:PORT/v1``).

    Attributes:
        requests: the JSON bodies received, in order.
        headers: their headers.
        fail_with: when set, an HTTP status to answer with instead.
    """

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.fail_with: int | None = None
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                try:
                    req = json.loads(body)
                    assert isinstance(req["model"], str) and isinstance(req["messages"], list)
                    assert all(m["role"] in ("system", "user", "assistant") for m in req["messages"])
                except (ValueError, KeyError, AssertionError, TypeError):
                    self._send(400, {"error": {"message": "invalid request"}})
                    return
                fake.requests.append(req)
                fake.headers.append(dict(self.headers))
                if fake.fail_with:
                    self._send(fake.fail_with, {"error": {"message": "injected failure"}})
                    return
                self._send(200, fake.complete(req))

            def _send(self, status: int, obj: dict[str, Any]) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def complete(self, req: dict[str, Any]) -> dict[str, Any]:
        user = req["messages"][-1]["content"]
        question = user.rsplit("Question:", 1)[-1].lower()
        words = {w for w in re.findall(r"[a-z0-9]+", question) if len(w) > 2}
        answer = "The context does not say."
        for m in re.finditer(r"^\[(\d+)\] (.*)$", user, re.MULTILINE):
            following = user[m.end():].split("\n[", 1)[0].lower()
            if words & set(re.findall(r"[a-z0-9]+", following)):
                answer = f"According to [{m.group(1)}]: {following.strip().splitlines()[0][:200]}"
                break
        return {
            "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": req["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": len(user.split()), "completion_tokens": len(answer.split()),
                      "total_tokens": len(user.split()) + len(answer.split())},
        }

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)
