"""A local HTTP fake of an external service, with injectable faults.

Each fake (``FakeEigenDAProxy``, ``FakeOthenticAggregator``, ``FakeComposio``) serves the documented request and
response shapes of its service on ``127.0.0.1`` (a free port, threads of this test process), records every
request it receives, and can be told to misbehave:

* ``fail("timeout")`` — hold the request for ``hang_s`` seconds without answering (the client times out);
* ``fail("lost")`` — do the work, then hang (the client never learns it succeeded: it must retry under the
  same delivery key, and the fake shows whether the work was done twice);
* ``fail("5xx")`` / ``fail("503")`` — answer HTTP 500 / 503 without doing anything;
* ``fail("malformed")`` — answer 200 with a body that breaks the documented shape;
* ``script(mode, mode, ...)`` — one fault per request, in turn; ``fail(mode, times=n)`` — only for the next
  ``n`` requests; ``fail(mode, probability=p, seed=s)`` — each
  request with probability ``p``; ``heal()`` — back to normal.
"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

MODES = ("timeout", "lost", "5xx", "503", "malformed")


@dataclass
class Request:
    """One request as the fake saw it, and what it did with it (``outcome``: ``ok``, a fault mode, or an error
    status)."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.time)
    outcome: str = "ok"

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"

    @classmethod
    def of_json(cls, obj: Any, status: int = 200) -> Response:
        return cls(status, json.dumps(obj).encode())


class FakeService:
    """Base class: a threaded HTTP server; subclasses implement :meth:`serve` and :meth:`malformed`."""

    name = "fake"

    def __init__(self, hang_s: float = 5.0, latency_s: float = 0.0) -> None:
        self.hang_s = hang_s
        #: Seconds every request takes before it is served (a service that is slow but up).
        self.latency_s = latency_s
        self.requests: list[Request] = []
        self.lock = threading.RLock()
        self._mode: str | None = None
        self._times: int | None = None
        self._probability = 1.0
        self._rng = random.Random(0)
        self._script: list[str] = []
        self._released = threading.Event()
        fake = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def _handle(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(n) if n else b""
                u = urlparse(self.path)
                req = Request(self.command, u.path, parse_qs(u.query), {k.lower(): v for k, v in self.headers.items()},
                              body)
                resp = fake._dispatch(req)
                if resp is None:  # hung: drop the connection without answering
                    self.close_connection = True
                    return
                try:
                    self.send_response(resp.status)
                    self.send_header("content-type", resp.content_type)
                    self.send_header("content-length", str(len(resp.body)))
                    self.end_headers()
                    self.wfile.write(resp.body)
                except OSError:
                    pass

            do_GET = do_POST = do_PUT = _handle

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client killed mid-request (the kill -9 tests) is expected, not news

        self.server = Server(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, name=f"{self.name}-fake", daemon=True)
        self._thread.start()

    # -- faults -----------------------------------------------------------------------------------------------
    def fail(self, mode: str, times: int | None = None, probability: float = 1.0, seed: int = 0) -> None:
        """Misbehave with ``mode`` (see the module docs) for the next ``times`` requests (``None``: until
        :meth:`heal`), each with ``probability``."""
        assert mode in MODES, mode
        with self.lock:
            self._mode, self._times, self._probability = mode, times, probability
            self._rng = random.Random(seed)
            self._released.clear()

    def script(self, *modes: str) -> None:
        """Misbehave with each of ``modes`` in turn, one request each (before any :meth:`fail` mode)."""
        assert all(m in MODES for m in modes), modes
        with self.lock:
            self._script.extend(modes)
            self._released.clear()

    def heal(self) -> None:
        """Behave again (and release hung requests)."""
        with self.lock:
            self._mode = None
            self._script.clear()
            self._released.set()

    def _fault(self) -> str | None:
        with self.lock:
            if self._script:
                return self._script.pop(0)
            if self._mode is None:
                return None
            if self._probability < 1.0 and self._rng.random() >= self._probability:
                return None
            mode = self._mode
            if self._times is not None:
                self._times -= 1
                if self._times <= 0:
                    self._mode = None
            return mode

    def _dispatch(self, req: Request) -> Response | None:
        if self.latency_s:
            time.sleep(self.latency_s)
        mode = self._fault()
        with self.lock:
            self.requests.append(req)
        if mode in ("timeout", "lost"):
            req.outcome = mode
            if mode == "lost":
                with self.lock:
                    self.serve(req)
            self._released.wait(self.hang_s)
            return None
        if mode == "5xx":
            req.outcome = "5xx"
            return Response.of_json({"error": "injected internal error"}, 500)
        if mode == "503":
            req.outcome = "503"
            return Response.of_json({"error": "injected: service unavailable"}, 503)
        if mode == "malformed":
            req.outcome = "malformed"
            return self.malformed(req)
        with self.lock:
            resp = self.serve(req)
        if resp.status >= 400:
            req.outcome = str(resp.status)
        return resp

    # -- to implement -----------------------------------------------------------------------------------------
    def serve(self, req: Request) -> Response:
        raise NotImplementedError

    def malformed(self, req: Request) -> Response:
        return Response(200, b"<html>this is not the documented response</html>", "text/html")

    # -- lifecycle --------------------------------------------------------------------------------------------
    def count(self, outcome: str | None = None) -> int:
        """Requests received (with ``outcome``, if given)."""
        with self.lock:
            return sum(1 for r in self.requests if outcome is None or r.outcome == outcome)

    def stop(self) -> None:
        self._released.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
