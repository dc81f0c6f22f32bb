"""Real processes for fault tests: the sidecar as a subprocess (``python -m monmouth run``) on real sockets, and a
node that answers badly on purpose (a real HTTP JSON-RPC server in front of a real anvil)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from tests.anvil import free_port

ROOT = Path(__file__).resolve().parents[1]
MONMOUTH = [sys.executable, "-m", "monmouth"]
LEDGER = ROOT / "tests" / "plugins" / "ledger.py"


def write_config(path: Path, *, url: str, db: str | Path = "db.sqlite", port: int | None = None,
                 extra: str = "") -> Path:
    """A config.toml for an rpc sidecar with the ledger test plugin, fast polls and short backoffs."""
    path.write_text(f"""
[source]
kind = "rpc"
url = "{url}"
poll_interval = 0.05
batch_size = 4
max_backoff = 0.5
timeout = 5.0

[storage]
path = "{db}"
synchronous = "NORMAL"
checkpoint_pages = 50

[http]
enabled = true
host = "127.0.0.1"
port = {port or 0}

[engine]
progress_interval = 0.5
retry_max_backoff = 0.5

[plugins.ledger]
enabled = true
module = "{LEDGER}"
{extra}
""")
    return path


class Sidecar:
    """``monmouth run --config CONFIG`` (or ``command``, e.g. ``("serve", "--port", "8081")``) as a subprocess,
    stderr captured to ``log`` (a file); ``env``: more environment variables."""

    def __init__(self, config: Path, port: int, command: tuple[str, ...] = ("run",),
                 env: dict[str, str] | None = None) -> None:
        self.config = config
        self.port = port
        self.log = config.parent / f"sidecar-{time.monotonic_ns()}.log"
        self._log = self.log.open("wb")
        self.proc = subprocess.Popen([*MONMOUTH, *command, "--config", str(config)], cwd=config.parent,
                                     env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                                     stdout=subprocess.DEVNULL, stderr=self._log)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
        self.wait(lambda: self._answers(), what="the sidecar to serve /health")

    def _answers(self) -> bool:
        try:
            return self.http.get("/health").status_code == 200
        except httpx.HTTPError:
            return False

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def get(self, path: str) -> httpx.Response:
        return self.http.get(path)

    def status(self) -> dict[str, Any]:
        return self.http.get("/status").json()  # type: ignore[no-any-return]

    def ready(self) -> tuple[int, str]:
        r = self.http.get("/ready")
        return r.status_code, r.json().get("reason", "")

    def metric(self, name: str, labels: str = "") -> float:
        for line in self.http.get("/metrics").text.splitlines():
            if line.startswith(name + (("{" + labels + "}") if labels else "")):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def logged(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, predicate: Callable[[], bool], timeout: float = 60, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the sidecar exited ({self.proc.returncode}) waiting for {what}:\n"
                                     + self.logged()[-3000:])
            if predicate():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}:\n" + self.logged()[-3000:])

    def head(self) -> tuple[int, str] | None:
        h = self.status()["head"]
        return (h["number"], h["hash"]) if h else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.http.close()
        self._log.close()

    def __enter__(self) -> Sidecar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


#: ``fault(method, params, result) -> result``: what the node answers instead (``RAW`` wraps a raw HTTP body).
Fault = Callable[[str, list[Any], Any], Any]


class Raw:
    """An HTTP body sent as is instead of a JSON-RPC response."""

    def __init__(self, body: bytes) -> None:
        self.body = body


class FaultyNode:
    """A real HTTP JSON-RPC server forwarding to ``upstream`` (a real anvil) and passing every answer through the
    current ``fault`` (``None``: answer faithfully). Counts the answers it altered."""

    def __init__(self, upstream: str) -> None:
        self.upstream = httpx.Client(base_url=upstream, timeout=10)
        self.fault: Fault | None = None
        self.altered = 0
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        node = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                req = json.loads(body)
                answer = node.upstream.post("/", content=body, headers={"content-type": "application/json"}).json()
                out = node.alter(req, answer)
                data = out.body if isinstance(out, Raw) else json.dumps(out).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def switch(self, upstream: str) -> None:
        """Forward to another node from now on (e.g. one on another chain)."""
        old, self.upstream = self.upstream, httpx.Client(base_url=upstream, timeout=10)
        old.close()

    def alter(self, req: Any, answer: Any) -> Any:
        fault = self.fault
        if fault is None:
            return answer
        reqs, answers = (req, answer) if isinstance(req, list) else ([req], [answer])
        by_id = {a.get("id"): a for a in answers}
        out = []
        for r in reqs:
            a = dict(by_id[r["id"]])
            if "result" in a:
                new = fault(r["method"], r["params"], a["result"])
                if isinstance(new, Raw):
                    self.altered += 1
                    return new
                if new is not a["result"]:
                    self.altered += 1
                a["result"] = new
            out.append(a)
        return out if isinstance(req, list) else out[0]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.upstream.close()

    def __enter__(self) -> FaultyNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
