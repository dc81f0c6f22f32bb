"""Property-based request bodies (hypothesis) over every route of the sidecar, ``/mcp`` included: lone surrogates,
NaN and Infinity, huge and out-of-range numbers, huge strings, deep JSON, bodies that are not JSON or not UTF-8,
duplicate ``Authorization`` headers. Goal (issue 19): 0 crashes and 0 5xx. The figures (requests sent, 5xx seen)
are printed (``pytest -s``) and asserted.

In-process (ASGI, the whole app: every middleware, the problem handlers, the rag and memory plugins on a real
SQLite file with some chain data), as an operator and as a signed-in agent. Schema-driven requests are
``tests/test_api_schema.py`` (schemathesis); the attacks against a running process are ``tests/test_security.py``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest
from eth_account import Account
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monmouth.api import create_api
from monmouth.app import open_app
from monmouth.auth import hash_token
from monmouth.siwe import sign_in_with_key
from monmouth.types import ChainCommitted
from monmouth_memory.plugin import MemoryPlugin
from tests.chains import chain, load_mainnet_blocks, mainnet_shaped
from tests.test_security import plugins_toml

ADMIN = "mmo_fuzz-admin-token-0123456789abcdef"
KEY = "0x" + "55" * 32
AGENT = Account.from_key(KEY).address.lower()
#: 503 by design here (no runner, no chat endpoint, integrations disabled): not a failure of the input handling.
EXPECTED_503 = ("/ready", "/rag/answer", "/integrations/")
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "15"))  # per route and role: ~1,700 requests in all


class Tally:
    def __init__(self) -> None:
        self.sent = 0
        self.errors: list[str] = []

    def check(self, method: str, path: str, r: Any, what: str) -> None:
        self.sent += 1
        if r.status_code >= 500 and not (r.status_code == 503 and path.startswith(EXPECTED_503)):
            self.errors.append(f"{method} {path} -> {r.status_code} for {what[:300]}: {r.text[:300]}")


@pytest.fixture(scope="module")
def fuzz_env(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    cfg = d / "config.toml"
    cfg.write_text(f"""
[storage]
path = "db.sqlite"
synchronous = "NORMAL"

[auth]
admin_tokens = ["{hash_token(ADMIN)}"]
loopback_open = false
domain = "monmouth.test"
chain_id = 31337
rate_token = 0
rate_ip = 0
{plugins_toml(AGENT)}
""")
    app = open_app(cfg, extra_plugins={"memory": MemoryPlugin(workers=False)})
    app.engine.apply(ChainCommitted(chain(list(mainnet_shaped(load_mainnet_blocks()[-2:], 2, txs_per_block=5)))))
    api = create_api(app)
    tally = Tally()
    with TestClient(api, base_url="http://monmouth.test", client=("127.0.0.1", 40000)) as c:
        n = c.get("/auth/nonce").json()
        msg, sig = sign_in_with_key(KEY, n["nonce"], domain=n["domain"], chain_id=n["chain_id"])
        agent_token = c.post("/auth/siwe", json={"message": msg, "signature": sig}).json()["token"]
        yield c, api, {"admin": ADMIN, "agent": agent_token}, tally
    api.state.audit.close()
    app.close()
    print(f"\nfuzz: {tally.sent} requests sent, {len(tally.errors)} 5xx seen")


# ------------------------------------------------------------------------------------------------ strategies

nasty_text = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(categories=["Cs"]) | st.characters(), min_size=1, max_size=12),  # lone surrogates
    st.sampled_from(["", " ", "\x00", "0x", "0x" + "00" * 20, AGENT, "latest", "NaN", "[[[[", "\ud800", "a\udfffb",
                     "memory", "tx", "document", "semantic", "working", "vector", "fts", "x" * 5000]),
)
nasty_number = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 2**63, -(2**63) - 1, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([float("nan"), float("inf"), float("-inf"), -1e-320, 1e308, 5e-324]),
)
scalar = st.one_of(st.none(), st.booleans(), nasty_number, nasty_text)
json_value = st.recursive(scalar, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(nasty_text, kids, max_size=4),
                          max_leaves=12)


def deep(n: int, opener: str) -> str:
    return ("[" * n + "]" * n) if opener == "[" else ('{"a":' * n + "1" + "}" * n)


raw_body = st.one_of(
    st.builds(deep, st.integers(50, 200_000), st.sampled_from(["[", "{"])),
    st.sampled_from(['{"a": NaN}', '{"a": Infinity}', "[-Infinity]", '"\\ud800"', "{", "]", "null", "", "1e999",
                     '{"a":' * 70 + "1", '{"k": 1, "k": 2}']),
    st.binary(max_size=64),  # not JSON, often not UTF-8
    st.builds(lambda n: '{"query": "' + "y" * n + '"}', st.sampled_from([100_000, 11 * 1024 * 1024])),
)


def body_for(props: list[str]) -> st.SearchStrategy[Any]:
    """A body shaped like the route's own (its field names, nasty values), or any JSON value."""
    if not props:
        return json_value
    return st.one_of(st.dictionaries(st.sampled_from(props), json_value, max_size=len(props)), json_value)


def operations(api) -> list[tuple[str, str, list[str]]]:
    spec = api.openapi()
    comps = spec.get("components", {}).get("schemas", {})
    out = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            props: list[str] = []
            schema = (op.get("requestBody") or {}).get("content", {}).get("application/json", {}).get("schema", {})
            ref = schema.get("$ref", "")
            if ref:
                props = list(comps.get(ref.rsplit("/", 1)[-1], {}).get("properties", {}))
            out.append((method.upper(), path, props))
    return out


def concrete(path: str) -> str:
    for name, value in {"agent": AGENT, "item_id": "0x" + "00" * 32, "tx_hash": "0x" + "11" * 32,
                        "address": AGENT, "doc_id": "doc-1", "name": "app.js"}.items():
        path = path.replace("{" + name + "}", value).replace("{" + name + ":path}", value)
    return path


# ------------------------------------------------------------------------------------------------ the fuzz


def fuzz_route(c: TestClient, tally: Tally, method: str, path: str, token: str, props: list[str]) -> None:
    """Send EXAMPLES bodies shaped like the route's and EXAMPLES // 3 raw ones to ``method path``."""
    headers = {"authorization": f"Bearer {token}", "content-type": "application/json",
               "accept": "application/json, text/event-stream"}

    @given(body=body_for(props))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def structured(body):
        raw = json.dumps(body)  # NaN, Infinity and lone surrogates as Python writes them
        tally.check(method, path, c.request(method, path, content=raw.encode(), headers=headers), raw)

    @given(raw=raw_body, two_auth=st.booleans())
    @settings(max_examples=EXAMPLES // 3, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def unstructured(raw, two_auth):
        data = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
        h = list(headers.items())
        if two_auth:
            h = [("authorization", "Bearer junk-junk-junk"), *h]
        r = c.request(method, path, content=data, headers=h)
        tally.check(method, path, r, repr(data[:200]))
        if two_auth:
            assert r.status_code == 400, (method, path, r.text)

    structured()
    unstructured()


def test_no_5xx_from_any_body_on_any_route(fuzz_env):
    c, api, tokens, tally = fuzz_env
    ops = operations(api)
    assert len(ops) >= 25 and any(p == "/mcp" for _, p, _ in ops)
    t0 = time.monotonic()
    for method, template, props in ops:
        t = time.monotonic()
        for token in tokens.values():
            fuzz_route(c, tally, method, concrete(template), token, props)
        if os.environ.get("FUZZ_VERBOSE"):
            print(f"{method} {template}: {time.monotonic() - t:.1f}s, {tally.sent} sent", flush=True)
    took = time.monotonic() - t0
    print(f"\nfuzz: {tally.sent} requests over {len(ops)} operations x {len(tokens)} roles in {took:.1f}s, "
          f"{len(tally.errors)} 5xx")
    assert tally.sent >= 1500
    assert not tally.errors, "\n".join(tally.errors[:20])


def test_mcp_tool_arguments_never_5xx(fuzz_env):
    """MCP tools called with nasty arguments answer JSON-RPC results or errors, never an HTTP 5xx."""
    c, _, tokens, tally = fuzz_env
    headers = {"authorization": f"Bearer {tokens['agent']}", "content-type": "application/json",
               "accept": "application/json, text/event-stream"}
    tools = ["search_chain", "get_context", "remember", "recall", "forget", "memory_root", "memory_proof", "status"]
    keys = ["query", "content", "kind", "k", "metadata", "tags", "key", "item_id", "agent", "half_life_s",
            "recency_weight", "filters", "max_tokens", "block"]

    @given(tool=st.sampled_from(tools), args=st.dictionaries(st.sampled_from(keys), json_value, max_size=5))
    @settings(max_examples=150, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def call(tool, args):
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool,
                                                                                        "arguments": args}})
        tally.check("POST", "/mcp", c.post("/mcp", content=body.encode(), headers=headers), body)

    call()
    assert not tally.errors, "\n".join(tally.errors[:20])
