"""monmouth.rpcclient: the one JSON-RPC client, against a real anvil and a real HTTP server that answers what a
broken node might."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import httpx
import pytest

from monmouth.jsonrpc import MAX_JSON_DEPTH
from monmouth.rpcclient import BadAnswerError, JsonRpcClient, RpcError, SyncJsonRpcClient

pytestmark = pytest.mark.anvil


def test_sync_client_calls_batches_and_reports_error_objects(anvil):
    with SyncJsonRpcClient(anvil.url) as c:
        assert c.call("eth_chainId") == "0x7a69"
        assert c("eth_chainId") == "0x7a69"
        head, chain = c.batch([("eth_blockNumber", []), ("eth_chainId", [])])
        assert head == "0x0" and chain == "0x7a69"
        with pytest.raises(RpcError) as e:
            c.call("no_such_method")
        assert e.value.method == "no_such_method" and e.value.code == -32601
        assert str(e.value).startswith("no_such_method: JSON-RPC error -32601: ")
        assert c.batch([]) == []


def test_async_client_against_anvil(anvil):
    async def main() -> tuple[Any, Any]:
        c = JsonRpcClient(anvil.url)
        try:
            return await c.call("eth_chainId"), await c.batch([("eth_blockNumber", []), ("net_version", [])])
        finally:
            await c.aclose()

    chain, (head, net) = anyio.run(main)
    assert chain == "0x7a69" and head == "0x0" and net == "31337"


@pytest.fixture
def scripted() -> Iterator[Callable[[Callable[[Any], bytes]], str]]:
    """A real HTTP server on loopback whose answer to each POST is ``answer(request JSON)``."""
    servers: list[ThreadingHTTPServer] = []

    def start(answer: Callable[[Any], bytes]) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = answer(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}"

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize(("answer", "message"), [
    (lambda req: b"<html>busy</html>", "eth_chainId: the node's answer is not JSON"),
    (lambda req: b"[" * (MAX_JSON_DEPTH + 5) + b"]" * (MAX_JSON_DEPTH + 5), "eth_chainId: the node's answer nests"),
    (lambda req: json.dumps({"jsonrpc": "2.0", "id": 999, "result": "0x1"}).encode(),
     "eth_chainId: no response with id 1"),
    (lambda req: json.dumps({"jsonrpc": "2.0", "id": req["id"]}).encode(), "neither result nor error"),
    (lambda req: json.dumps({"jsonrpc": "2.0", "id": req["id"], "error": "boom"}).encode(),
     "malformed JSON-RPC error object"),
])
def test_answers_that_are_not_json_rpc_are_bad_answers(scripted, answer, message):
    with SyncJsonRpcClient(scripted(answer)) as c, pytest.raises(BadAnswerError, match=message):
        c.call("eth_chainId")


def test_batch_results_follow_call_order_and_an_unattributed_error_is_reported(scripted):
    url = scripted(lambda req: json.dumps([{"jsonrpc": "2.0", "id": r["id"], "result": r["method"]}
                                           for r in reversed(req)]).encode())
    with SyncJsonRpcClient(url) as c:
        assert c.batch([("a", []), ("b", [1]), ("c", [])]) == ["a", "b", "c"]
    url = scripted(lambda req: json.dumps({"jsonrpc": "2.0", "id": None,
                                           "error": {"code": -32700, "message": "parse error"}}).encode())
    with SyncJsonRpcClient(url) as c, pytest.raises(RpcError) as e:
        c.call("eth_chainId", id_="job-7")
    assert e.value.code == -32700 and e.value.message == "parse error"


def test_headers_are_sent_and_a_refused_connection_is_an_http_error(scripted):
    seen: list[Any] = []
    url = scripted(lambda req: seen.append(req) or json.dumps({"jsonrpc": "2.0", "id": req["id"],
                                                                "result": True}).encode())
    with SyncJsonRpcClient(url) as c:
        assert c.call("engine_x", {"a": 1}, headers={"Authorization": "Bearer t"}, id_="k") is True
    assert seen == [{"jsonrpc": "2.0", "id": "k", "method": "engine_x", "params": [{"a": 1}]}]
    with SyncJsonRpcClient("http://127.0.0.1:9", timeout=2) as c, pytest.raises(httpx.HTTPError):
        c.call("eth_chainId")


def test_wait_answering_returns_once_the_node_answers_and_says_why_it_gave_up(anvil):
    import subprocess
    import sys
    import time

    with SyncJsonRpcClient(anvil.url) as c:
        c.wait_answering(5)  # answering already: returns at once
    with SyncJsonRpcClient("http://127.0.0.1:9", timeout=1) as c:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match=r"127\.0\.0\.1:9: no JSON-RPC answer within 0\.3s"):
            c.wait_answering(0.3)
        assert time.monotonic() - t0 < 5
        proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
        proc.wait(30)
        with pytest.raises(ChildProcessError, match="exited with status 3"):
            c.wait_answering(30, exited=proc.poll)
