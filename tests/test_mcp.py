"""The MCP server, driven by the official SDK's own client over both transports: streamable HTTP at /mcp on a live
sidecar (same auth as the HTTP API: loopback admin, agent tokens from SIWE, isolation) and stdio (`monmouth mcp`
as a subprocess)."""

from __future__ import annotations

import json
import os
import sys

import httpx
import httpx2
import pytest
from eth_account import Account
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from monmouth.auth import hash_token
from monmouth.types import ChainCommitted
from monmouth_memory.plugin import MemoryPlugin
from tests.chains import chain, extend, load_mainnet_blocks, mainnet_shaped
from tests.conftest import wait_for
from tests.test_api_support import agent_token, live_sidecar

pytestmark = pytest.mark.anyio

TOOLS = {"search_chain", "get_context", "remember", "recall", "forget", "memory_root", "memory_proof", "status"}
KEY_A = "0x" + "a1" * 32
KEY_B = "0x" + "b2" * 32
A = Account.from_key(KEY_A).address.lower()
B = Account.from_key(KEY_B).address.lower()
ADMIN = "mmo_mcp-admin-token-0123456789abcdef"


def config(tmp_path) -> str:
    return f"""
[storage]
path = "{tmp_path / 'db.sqlite'}"
synchronous = "NORMAL"

[http]
port = 0

[auth]
admin_tokens = ["{hash_token(ADMIN)}"]
chain_id = 31337

[plugins.rag]
enabled = true
worker = false
chunk_tokens = 64
chunk_overlap = 16

[plugins.memory]
enabled = true
embed = false
key_dir = "{tmp_path / 'keys'}"
agents = ["{A}", "{B}"]
"""


def payload(result) -> dict:
    assert not result.is_error, result.content
    if result.structured_content is not None:
        sc = result.structured_content
        return sc.get("result", sc) if isinstance(sc, dict) and set(sc) == {"result"} else sc
    return json.loads(result.content[0].text)


def error_text(result) -> str:
    assert result.is_error, result
    return " ".join(getattr(c, "text", "") for c in result.content)


def http_client(url: str, token: str | None = None, host: str | None = None):
    headers = {}
    if token:
        headers["authorization"] = f"Bearer {token}"
    if host:
        headers["host"] = host
    return Client(streamable_http_client(url, http_client=httpx2.AsyncClient(headers=headers, timeout=60)))


async def test_mcp_over_streamable_http_with_the_sdk_client(tmp_path):
    blocks = list(mainnet_shaped(load_mainnet_blocks()[-3:], 2, txs_per_block=20))
    async with live_sidecar(tmp_path, config(tmp_path), {"memory": MemoryPlugin(workers=False)}) as (app, runner, base,
                                                                                                     source):
        await source.push(ChainCommitted(chain(blocks)))
        await wait_for(lambda: app.engine.head is not None and app.engine.head.number == blocks[-1].number)
        url = f"{base}/mcp"

        # Loopback without a token: the operator (admin). Every tool is listed.
        async with http_client(url) as c:
            tools = await c.list_tools()
            assert {t.name for t in tools.tools} == TOOLS
            st = payload(await c.call_tool("status", {}))
            assert st["head"]["number"] == blocks[-1].number
            hits = payload(await c.call_tool("search_chain", {"query": "USDT transfer", "k": 3}))["hits"]
            assert 0 < len(hits) <= 3 and hits[0]["provenance"]["tx_hash"].startswith("0x") and hits[0]["citation"]
            ctx = payload(await c.call_tool("get_context", {"query": "token transfers", "max_tokens": 300}))
            assert ctx["tokens"] <= 300 if "tokens" in ctx else ctx
            err = error_text(await c.call_tool("remember", {"content": "x"}))
            assert "agent: required" in err

        # A request naming a foreign Host (DNS rebinding) gets no loopback pass: 401 before MCP.
        async with httpx.AsyncClient() as raw:
            r = await raw.post(url, headers={"host": "evil.example", "content-type": "application/json",
                                             "accept": "application/json, text/event-stream"},
                               json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
            assert r.status_code == 401 and r.headers["content-type"].startswith("application/problem+json")

        # Agent A: its own memory, through the tools.
        ta = await agent_token(base, KEY_A)
        async with http_client(url, ta) as c:
            item = payload(await c.call_tool("remember", {"content": "the treasury multisig is at 0xabc",
                                                           "tags": ["treasury"]}))
            iid = item["id"]
            rec = payload(await c.call_tool("recall", {"query": "where is the treasury multisig"}))
            assert rec["results"][0]["id"] == iid
            # anchor: the next block commits the item into A's root
            more = extend(blocks[-1], 1, n_txs=0)
            await source.push(ChainCommitted(chain(more)))
            await wait_for(lambda: app.engine.head.number == more[-1].number)
            root = payload(await c.call_tool("memory_root", {}))
            assert root["root"].startswith("0x")
            proof = payload(await c.call_tool("memory_proof", {"item_id": iid}))
            assert proof["root"] == root["root"] and isinstance(proof["proof"], list)
            # B's memory: refused (403 from the same policy as HTTP)
            err = error_text(await c.call_tool("recall", {"query": "x", "agent": B}))
            assert "403" in err
            err = error_text(await c.call_tool("remember", {"content": "x", "agent": B}))
            assert "403" in err
            assert payload(await c.call_tool("status", {}))["head"]["number"] == more[-1].number
            hits = payload(await c.call_tool("search_chain", {"query": "transfer", "k": 2}))["hits"]
            assert hits
            gone = payload(await c.call_tool("forget", {"item_id": iid}))
            assert gone
        # B sees nothing of A's
        tb = await agent_token(base, KEY_B)
        async with http_client(url, tb) as c:
            assert "403" in error_text(await c.call_tool("memory_root", {"agent": A}))
            payload(await c.call_tool("remember", {"content": "B's own note"}))
            # a bad block number, a body the route's model refuses: 422 naming the field, as over HTTP
            assert "422: block: must be a block number" in error_text(await c.call_tool("memory_root", {"block": -1}))
            err = error_text(await c.call_tool("remember", {"content": "x", "ttl_seconds": 2**64}))
            assert "422: body.ttl_seconds" in err, err
            # B forgets everything: audited as the route is
            assert payload(await c.call_tool("forget", {"everything": True}))
        # An invalid token: 401 at the HTTP layer, the client cannot even connect.
        async with httpx.AsyncClient() as raw:
            r = await raw.post(url, headers={"authorization": "Bearer mma_forged.token",
                                             "accept": "application/json, text/event-stream"},
                               json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
            assert r.status_code == 401
        # The audit log saw the forget made through MCP, as agent A.
        async with httpx.AsyncClient(base_url=base, headers={"authorization": f"Bearer {ADMIN}"}) as adm:
            events = (await adm.get("/audit", params={"limit": 200})).json()["events"]
            assert any(e["event"] == "denied" and e["principal"] == f"agent:{A}" for e in events)
            assert any(e["event"] == "forget" and e["principal"] == f"agent:{B}" for e in events), events


async def test_mcp_over_stdio_with_the_sdk_client(tmp_path):
    """`monmouth mcp --config ...` with no sidecar running: the tools open the database in-process."""
    cfg = tmp_path / "config.toml"
    cfg.write_text(config(tmp_path).replace("port = 0", "port = 1"))  # nothing listens on port 1
    params = StdioServerParameters(command=sys.executable, args=["-m", "monmouth", "mcp", "--config", str(cfg)],
                                   env={**os.environ, "MONMOUTH_LOGGING__LEVEL": "WARNING"}, cwd=str(tmp_path))
    async with Client(stdio_client(params)) as c:
        assert {t.name for t in (await c.list_tools()).tools} == TOOLS
        item = payload(await c.call_tool("remember", {"content": "stdio remembers", "agent": A}))
        rec = payload(await c.call_tool("recall", {"query": "what does stdio remember", "agent": A}))
        assert rec["results"][0]["id"] == item["id"]
        st = payload(await c.call_tool("status", {}))
        assert st["plugins"]["memory"]["state"] == "enabled"
        assert "agent: required" in error_text(await c.call_tool("recall", {"query": "x"}))


def test_mcp_stdio_in_process_refuses_a_bad_token_in_one_line(tmp_path):
    """`monmouth mcp` in-process with an unknown token: a one-line error naming the token, exit 1, no traceback."""
    import subprocess

    cfg = tmp_path / "config.toml"
    cfg.write_text(config(tmp_path).replace("port = 0", "port = 1"))  # nothing listens on port 1
    r = subprocess.run([sys.executable, "-m", "monmouth", "mcp", "--config", str(cfg)], capture_output=True,
                       text=True, timeout=120, stdin=subprocess.DEVNULL, cwd=str(tmp_path),
                       env={**os.environ, "MONMOUTH_TOKEN": "mmo_not-a-known-token-0123456789"})
    assert r.returncode == 1 and "MONMOUTH_TOKEN: unknown token" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


async def test_mcp_stdio_against_a_running_sidecar_as_an_agent(tmp_path):
    """`monmouth mcp --url <sidecar>` with an agent token (MONMOUTH_TOKEN): the tools act as that agent."""
    async with live_sidecar(tmp_path, config(tmp_path), {"memory": MemoryPlugin(workers=False)}) as (app, runner, base,
                                                                                                     source):
        await source.push(ChainCommitted(chain(extend(None, 1, number=1))))
        ta = await agent_token(base, KEY_A)
        params = StdioServerParameters(command=sys.executable, args=["-m", "monmouth", "mcp", "--url", base],
                                       env={**os.environ, "MONMOUTH_TOKEN": ta}, cwd=str(tmp_path))
        async with Client(stdio_client(params)) as c:
            item = payload(await c.call_tool("remember", {"content": "via stdio, as agent A"}))
            assert item["agent"] == A
            assert "403" in error_text(await c.call_tool("recall", {"query": "x", "agent": B}))
            assert payload(await c.call_tool("status", {}))["head"]["number"] == 1


async def test_mcp_protocol_errors_stay_json_rpc(tmp_path):
    """The MCP endpoint's own errors are JSON-RPC error objects (what MCP clients parse), not rewritten; auth errors
    before it are problem details."""
    async with live_sidecar(tmp_path, config(tmp_path), {"memory": MemoryPlugin(workers=False)}) as (_a, _r, base,
                                                                                                     _s), \
            httpx.AsyncClient(base_url=base) as http:
        r = await http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                            headers={"accept": "text/html"})
        assert 400 <= r.status_code < 500 and "jsonrpc" in r.json(), r.text
        r = await http.post("/mcp", content=b"{not json", headers={"accept": "application/json, text/event-stream",
                                                                   "content-type": "application/json"})
        assert 400 <= r.status_code < 500 and "jsonrpc" in r.json(), r.text
        r = await http.post("/mcp", json={}, headers={"authorization": "Bearer nope-nope-nope"})
        assert r.status_code == 401 and r.headers["content-type"].startswith("application/problem+json")
