"""The HTTP API's security: problem details, body limit, operator tokens (hashed), the loopback rule, SIWE sign-in
(EIP-4361 checked with eth-account), per-agent isolation on every memory route (403), rate limits (429 +
Retry-After) and the audit log (no secrets). Through the real app (open_app + create_api) on a real SQLite file
with the memory plugin on."""

from __future__ import annotations

import json
import logging
import time

import pytest
from eth_account import Account
from fastapi.testclient import TestClient

from monmouth.api import create_api
from monmouth.app import open_app
from monmouth.auth import hash_token
from monmouth.errors import ConfigError
from monmouth.siwe import sign_in_with_key, siwe_message
from monmouth_memory.plugin import MemoryPlugin

ADMIN = "mmo_admin-token-for-tests-0123456789"
READ = "mmo_read-token-for-tests-0123456789ab"
KEY_A = "0x" + "11" * 32
KEY_B = "0x" + "22" * 32
KEY_C = "0x" + "33" * 32
A = Account.from_key(KEY_A).address.lower()
B = Account.from_key(KEY_B).address.lower()
FAR = ("203.0.113.9", 40000)
LOOP = ("127.0.0.1", 40000)


def write_config(d, extra: str = "") -> object:
    cfg = d / "config.toml"
    cfg.write_text(f"""
[storage]
path = "db.sqlite"
synchronous = "NORMAL"

[auth]
admin_tokens = ["{hash_token(ADMIN)}"]
read_tokens = ["{READ}"]
domain = "monmouth.test"
chain_id = 31337
rate_ip = 0
rate_token = 0
{extra}

[plugins.memory]
enabled = true
embed = false
key_dir = "keys"
agents = ["{A}", "{B}"]
""")
    return cfg


@pytest.fixture
def env(tmp_path):
    app = open_app(write_config(tmp_path), extra_plugins={"memory": MemoryPlugin(workers=False)})
    assert app.host.is_enabled("memory"), app.host.errors
    api = create_api(app)
    yield app, api
    api.state.audit.close()
    app.close()


def client(api, peer=LOOP, token: str | None = None) -> TestClient:
    """A client from a loopback peer naming host monmouth.test: anonymous unless it sends a token (like behind a
    local reverse proxy)."""
    c = TestClient(api, client=peer, base_url="http://monmouth.test")
    if token:
        c.headers["authorization"] = f"Bearer {token}"
    return c


def sign_in(api, key: str, **kw) -> str:
    c = client(api)
    n = c.get("/auth/nonce").json()
    msg, sig = sign_in_with_key(key, n["nonce"], domain=n["domain"], chain_id=n["chain_id"], **kw)
    r = c.post("/auth/siwe", json={"message": msg, "signature": sig})
    assert r.status_code == 200, r.text
    return r.json()["token"]


def is_problem(r, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body = r.json()
    assert {"type", "title", "status", "detail"} <= set(body) and body["status"] == status
    assert isinstance(body["detail"], str)
    return body


# ---------------------------------------------------------------------------------------------------------------------
# problem details, limits, validation


def test_errors_are_problem_details_everywhere(env):
    app, api = env
    c = client(api, token=ADMIN)
    is_problem(c.get("/no/such/route"), 404)
    is_problem(c.delete("/health"), 405)
    # FastAPI validation: names the field, in detail and in errors[]
    b = is_problem(c.get("/audit", params={"limit": 0}), 422)
    assert b["field"] == "query.limit" and "query.limit" in b["detail"] and b["errors"][0]["loc"] == ["query", "limit"]
    # a plugin's own {"detail": {"field", "error"}} JSONResponse is rewritten too
    b = is_problem(c.get("/memory/agents/0x1234/items"), 400)
    assert b["field"] == "agent" and b["detail"].startswith("agent:")
    b = is_problem(c.post(f"/memory/agents/{A}/items", json={"kind": "semantic", "content": "x", "colour": "red"}), 422)
    assert any("colour" in e["field"] for e in b["errors"])
    # a disabled plugin answers 503 naming the key
    app.settings.plugins["memory"].enabled = False
    app.host.apply_settings(app.settings)
    b = is_problem(c.get("/memory/agents"), 503)
    assert b["field"] == "plugins.memory.enabled"


def test_body_size_limit(tmp_path):
    app = open_app(write_config(tmp_path, extra=""), extra_plugins={"memory": MemoryPlugin(workers=False)})
    app.settings.http.max_body_bytes = 2048
    api = create_api(app)
    try:
        c = client(api, token=ADMIN)
        b = is_problem(c.post(f"/memory/agents/{A}/items", json={"kind": "semantic", "content": "x" * 5000}), 413)
        assert b["field"] == "body" and "2048" in b["detail"]

        def chunks():  # no Content-Length: counted while streaming
            for _ in range(10):
                yield b"x" * 1000

        is_problem(c.post(f"/memory/agents/{A}/items", content=chunks(),
                          headers={"content-type": "application/json"}), 413)
        assert c.post(f"/memory/agents/{A}/items", json={"kind": "semantic", "content": "small"}).status_code == 201
    finally:
        api.state.audit.close()
        app.close()


# ---------------------------------------------------------------------------------------------------------------------
# operator tokens and the loopback rule


def test_operator_tokens_are_hashed_and_scoped(env):
    app, api = env
    # stored hashed: the plain read token given in the config is hashed at load
    assert app.settings.auth.read_tokens == [hash_token(READ)]
    assert READ not in json.dumps(app.settings.model_dump(mode="json"))
    anon = client(api)
    assert anon.get("/health").status_code == 200
    b = is_problem(anon.get("/status"), 401)
    assert "Bearer" in anon.get("/status").headers["www-authenticate"]
    is_problem(client(api, token="mmo_not-a-token-xxxxxxxxxxxxxxxx").get("/status"), 401)
    is_problem(client(api, token=ADMIN).get("/status", headers={"authorization": "Basic abc"}), 401)
    rd = client(api, token=READ)
    assert rd.get("/status").status_code == 200
    assert rd.get("/metrics").status_code == 200
    assert rd.get(f"/memory/agents/{A}/items").status_code == 200  # operators read every agent
    assert rd.post(f"/memory/agents/{A}/recall", json={"query": "x"}).status_code == 200  # read-only POST
    b = is_problem(rd.post(f"/memory/agents/{A}/items", json={"kind": "semantic", "content": "x"}), 403)
    assert "read token" in b["detail"]
    is_problem(rd.get("/audit"), 403)
    ad = client(api, token=ADMIN)
    assert ad.get("/audit").status_code == 200
    assert ad.post(f"/memory/agents/{A}/items", json={"kind": "semantic", "content": "x"}).status_code == 201
    assert ad.get("/auth/whoami").json() == {"principal": "admin", "role": "admin", "agent": None, "via": "token"}
    # a hot reload that removes the read token revokes it at once
    app.settings.auth.read_tokens = []
    is_problem(rd.get("/status"), 401)


def test_loopback_without_token_only_while_bound_to_loopback(env, tmp_path):
    app, api = env
    loop = client(api, peer=LOOP)
    loop.base_url = "http://127.0.0.1:8080"
    assert loop.get("/auth/whoami").json()["principal"] == "admin@loopback"
    assert TestClient(api, client=("::1", 1), base_url="http://localhost:8080").get("/status").status_code == 200
    # DNS rebinding / cross-site: a loopback peer naming another host, or a foreign Origin, is anonymous
    is_problem(loop.get("/status", headers={"host": "evil.example"}), 401)
    is_problem(loop.get("/status", headers={"origin": "http://evil.example"}), 401)
    assert loop.get("/status", headers={"origin": "http://127.0.0.1:8080"}).status_code == 200
    # auth.loopback_open = false: loopback needs a token too
    app.settings.auth.loopback_open = False
    is_problem(loop.get("/status"), 401)
    app.settings.auth.loopback_open = True
    # bound to a public address: loopback gets no free pass, and serving needs an operator token
    app.settings.http.host = "0.0.0.0"
    api2 = create_api(app)
    is_problem(TestClient(api2, client=LOOP, base_url="http://127.0.0.1").get("/status"), 401)
    api2.state.audit.close()
    app.settings.auth.admin_tokens = []
    app.settings.auth.read_tokens = []
    with pytest.raises(ConfigError, match=r"http.host = '0.0.0.0' is not a loopback address.*auth.admin_tokens"):
        create_api(app, runner=object())  # type: ignore[arg-type]


def test_refuses_to_start_on_public_bind_without_auth(tmp_path):
    import anyio

    from monmouth.runner import Runner
    from monmouth.sources.replay import ReplaySource

    (tmp_path / "h.mnr").write_bytes(b"")
    cfg = tmp_path / "config.toml"
    cfg.write_text('[storage]\npath = "db.sqlite"\n[http]\nhost = "0.0.0.0"\nport = 0\n')
    app = open_app(cfg)
    try:
        runner = Runner(app, ReplaySource(tmp_path / "h.mnr"), serve_http=True, watch_config=False)
        with pytest.raises(ConfigError, match="refusing to serve without authentication"):
            anyio.run(runner.run)
    finally:
        app.close()


def test_config_refuses_short_plain_tokens_without_echoing_them(tmp_path):
    from monmouth.config import validate

    with pytest.raises(ConfigError) as e:
        validate({"auth": {"admin_tokens": ["hunter2"]}}, "c.toml", {})
    assert "auth.admin_tokens" in str(e.value) and "hunter2" not in str(e.value)
    with pytest.raises(ConfigError, match="auth.secret"):
        validate({"auth": {"secret": "abcd"}}, "c.toml", {})


# ---------------------------------------------------------------------------------------------------------------------
# SIWE


def test_siwe_sign_in_gives_a_scoped_short_lived_token(env):
    _, api = env
    token = sign_in(api, KEY_A)
    me = client(api, token=token).get("/auth/whoami").json()
    assert me == {"principal": f"agent:{A}", "role": "agent", "agent": A, "via": "siwe"}
    # tampered token: 401
    body, mac = token.rsplit(".", 1)
    is_problem(client(api, token=body + "." + mac[::-1]).get("/auth/whoami"), 401)
    is_problem(client(api, token=body[:-2] + "xx." + mac).get("/auth/whoami"), 401)


@pytest.mark.parametrize("case, field", [
    ("replayed_nonce", "nonce"),
    ("unknown_nonce", "nonce"),
    ("wrong_domain", "domain"),
    ("wrong_chain", "chain_id"),
    ("expired", "expiration_time"),
    ("forged", "signature"),
    ("not_checksummed", "address"),
    ("garbage", "message"),
])
def test_siwe_refusals_are_401_naming_the_part(env, case, field):
    _, api = env
    c = client(api)
    n = c.get("/auth/nonce").json()
    kw = {"domain": "monmouth.test", "chain_id": 31337}
    nonce = n["nonce"]
    if case == "replayed_nonce":
        msg, sig = sign_in_with_key(KEY_A, nonce, **kw)
        assert c.post("/auth/siwe", json={"message": msg, "signature": sig}).status_code == 200
        msg, sig = sign_in_with_key(KEY_A, nonce, **kw)
    elif case == "unknown_nonce":
        msg, sig = sign_in_with_key(KEY_A, "a" * 32, **kw)
    elif case == "wrong_domain":
        msg, sig = sign_in_with_key(KEY_A, nonce, domain="evil.example", chain_id=31337)
    elif case == "wrong_chain":
        msg, sig = sign_in_with_key(KEY_A, nonce, domain="monmouth.test", chain_id=1)
    elif case == "expired":
        msg, sig = sign_in_with_key(KEY_A, nonce, ttl=60, now=time.time() - 120, **kw)
    elif case == "forged":  # B's signature over a message naming A
        msg = siwe_message(A, nonce, **kw)
        from eth_account.messages import encode_defunct

        sig = "0x" + bytes(Account.sign_message(encode_defunct(text=msg), private_key=KEY_B).signature).hex()
    elif case == "not_checksummed":
        msg, sig = sign_in_with_key(KEY_A, nonce, **kw)
        msg = msg.replace(Account.from_key(KEY_A).address, A)
    else:
        msg, sig = "hello", "0x" + "00" * 65
    b = is_problem(c.post("/auth/siwe", json={"message": msg, "signature": sig}), 401)
    assert b.get("field") == field, b


def test_expired_agent_token_is_refused(env, monkeypatch):
    app, api = env
    token = sign_in(api, KEY_A)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + app.settings.auth.token_ttl + 5)
    b = is_problem(client(api, token=token).get("/auth/whoami"), 401)
    assert "expired" in b["detail"]


def test_siwe_validation_names_the_field(env):
    _, api = env
    b = is_problem(client(api).post("/auth/siwe", json={"message": "x", "signature": "0x12"}), 422)
    assert b["field"] == "body.signature"


# ---------------------------------------------------------------------------------------------------------------------
# isolation


def memory_routes(api):
    """Every memory route, from the OpenAPI spec: (method, path template)."""
    return [(m.upper(), path) for path, ops in api.openapi()["paths"].items() if path.startswith("/memory")
            for m in ops if m in ("get", "post", "put", "patch", "delete")]


BODIES = {
    ("POST", "/memory/agents/{agent}/items"): {"kind": "semantic", "content": "secret plans"},
    ("PATCH", "/memory/agents/{agent}/items/{item_id}"): {"content": "changed"},
    ("POST", "/memory/agents/{agent}/recall"): {"query": "plans"},
    ("POST", "/memory/agents"): {"address": "0x" + "44" * 20},
}


def fill(path: str, agent: str, item: str) -> str:
    return path.replace("{agent}", agent).replace("{item_id}", item)


def test_every_memory_route_refuses_another_agents_token(env):
    """Agent B's token on any of agent A's memory routes: 403. Routes over every agent: 403 for agents."""
    app, api = env
    ad = client(api, token=ADMIN)
    item = ad.post(f"/memory/agents/{A}/items", json={"kind": "semantic", "content": "A's secret"}).json()["id"]
    tb = sign_in(api, KEY_B)
    routes = memory_routes(api)
    assert len(routes) >= 14, routes
    checked = 0
    for peer in (LOOP, FAR):  # behind a local proxy, and straight from the network
        b_client = client(api, peer=peer, token=tb)
        for method, path in routes:
            params = {"since_block": 0} if path.endswith("/changes") else None
            r = b_client.request(method, fill(path, A, item), json=BODIES.get((method, path)), params=params)
            b = is_problem(r, 403)
            assert "agent:" + B in b["detail"], (peer, method, path, b)
            checked += 1
    assert checked == 2 * len(routes)
    # and from the network, B reaches its own memory
    mine = client(api, peer=FAR, token=tb).post(f"/memory/agents/{B}/items", json={"kind": "semantic",
                                                                                   "content": "B's own"})
    assert mine.status_code == 201, mine.text
    # nothing leaked or changed
    assert ad.get(f"/memory/agents/{A}/items/{item}").json()["content"] == "A's secret"
    assert ad.get(f"/memory/agents/{A}").status_code == 200


def test_an_agent_reaches_its_own_memory(env):
    app, api = env
    ta = sign_in(api, KEY_A)
    a = client(api, token=ta, peer=LOOP)
    r = a.post(f"/memory/agents/{A}/items", json={"kind": "semantic", "content": "the vault code is 1234"})
    assert r.status_code == 201, r.text
    iid = r.json()["id"]
    checksummed = Account.from_key(KEY_A).address
    assert a.get(f"/memory/agents/{checksummed}/items/{iid}").json()["content"] == "the vault code is 1234"
    assert a.post(f"/memory/agents/{A}/recall", json={"query": "vault code"}).json()["results"][0]["id"] == iid
    assert a.get(f"/memory/agents/{A}/root").status_code in (200, 404)  # 404: no block anchored yet, not 403
    assert a.get("/status").status_code == 200
    is_problem(a.get("/metrics"), 403)
    is_problem(a.get("/audit"), 403)
    # an agent that is not registered in memory: its own routes answer the plugin's 404, not 403
    tc = sign_in(api, KEY_C)
    c_addr = Account.from_key(KEY_C).address.lower()
    assert client(api, token=tc, peer=LOOP).get(f"/memory/agents/{c_addr}/items").status_code == 404
    # admin sees all
    ad = client(api, token=ADMIN)
    assert ad.get(f"/memory/agents/{A}/items/{iid}").json()["content"] == "the vault code is 1234"
    assert {x["address"] for x in ad.get("/memory/agents").json()["agents"]} >= {A, B}
    # forget: the agent may forget itself
    assert a.delete(f"/memory/agents/{A}").status_code == 200


# ---------------------------------------------------------------------------------------------------------------------
# rate limits


def test_rate_limits_answer_429_with_retry_after(env):
    app, api = env
    app.settings.auth.rate_ip = 1.0
    app.settings.auth.burst_ip = 3
    app.settings.auth.rate_token = 2.0
    app.settings.auth.burst_token = 5
    far = client(api, peer=FAR, token=ADMIN)
    codes = [far.get("/status").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    r = far.get("/status")
    b = is_problem(r, 429)
    assert int(r.headers["retry-after"]) >= 1 and b["retry_after"] >= 1
    assert far.get("/health").status_code == 200  # never limited
    # per token, from loopback (exempt from the IP limit)
    loop = client(api, peer=LOOP, token=ADMIN)
    loop.base_url = "http://127.0.0.1"
    app.settings.auth.rate_ip = 0
    codes = [loop.get("/status").status_code for _ in range(6)]
    assert 429 in codes and codes[0] == 200
    # loopback without a token: not limited by IP
    free = client(api, peer=LOOP)
    free.base_url = "http://127.0.0.1"
    app.settings.auth.rate_ip = 1.0
    assert all(free.get("/status").status_code == 200 for _ in range(10))


# ---------------------------------------------------------------------------------------------------------------------
# audit


def test_audit_log_records_security_events_without_secrets(env, caplog):
    app, api = env
    caplog.set_level(logging.INFO, logger="monmouth.audit")
    ad = client(api, token=ADMIN)
    ad.get("/status")
    ta = sign_in(api, KEY_A)
    c = client(api)
    n = c.get("/auth/nonce").json()["nonce"]
    msg, sig = sign_in_with_key(KEY_B, n, domain="evil.example", chain_id=31337)
    assert c.post("/auth/siwe", json={"message": msg, "signature": sig}).status_code == 401
    a = client(api, token=ta, peer=LOOP)
    assert a.post(f"/memory/agents/{A}/items", json={"kind": "semantic", "content": "to export"}).status_code == 201
    from monmouth.types import ChainCommitted
    from tests.chains import chain, extend

    app.engine.apply(ChainCommitted(chain(extend(None, 1, number=1, n_txs=0))))
    r = a.get(f"/memory/agents/{A}/export")
    assert r.status_code == 200, r.text
    assert a.get(f"/memory/agents/{B}/items").status_code == 403
    assert a.delete(f"/memory/agents/{A}").status_code == 200
    # a hot reload's config change
    from monmouth.config import validate

    new = validate({**app.settings.model_dump(mode="json", exclude={"origin", "plugins"}),
                    "logging": {"level": "DEBUG"}}, "<test>", {})
    new.plugins = app.settings.plugins
    app.settings = new
    api.state.audit.check_config()
    events = ad.get("/audit", params={"limit": 100}).json()["events"]
    kinds = [e["event"] for e in events]
    for k in ("token_use", "sign_in", "export", "forget", "denied", "config_change"):
        assert k in kinds, kinds
    sign_ins = [e for e in events if e["event"] == "sign_in"]
    assert {e["detail"]["outcome"] for e in sign_ins} == {"ok", "failed"}
    assert any(e["principal"] == f"agent:{A}" for e in events if e["event"] == "forget")
    # paging
    page = ad.get("/audit", params={"limit": 2}).json()
    assert len(page["events"]) == 2 and page["next_before"] == page["events"][-1]["id"]
    older = ad.get("/audit", params={"limit": 2, "before": page["next_before"]}).json()["events"]
    assert older[0]["id"] < page["next_before"]
    # no secrets: neither tokens nor signatures, in the table or the log
    dump = json.dumps(app.db.reader().execute("SELECT * FROM monmouth_audit").fetchall(), default=str)
    for secret in (ADMIN, ta, ta.split(".")[1], sig[2:40], msg):
        assert secret not in dump and secret not in caplog.text


def test_agents_on_rag_routes_see_chain_data_not_others_memory_documents(tmp_path):
    """Until the rag plugin scopes "memory" documents per agent, agent tokens reach /rag/search and /rag/context only
    with filters.kind limited to tx/document, may read chain data, and may not list, add or delete documents."""
    cfg = write_config(tmp_path)
    cfg.write_text(cfg.read_text() + '\n[plugins.rag]\nenabled = true\nworker = false\n')
    app = open_app(cfg, extra_plugins={"memory": MemoryPlugin(workers=False)})
    api = create_api(app)
    try:
        assert app.host.is_enabled("rag"), app.host.errors
        ad = client(api, token=ADMIN)
        r = ad.post("/rag/documents", json={"id": "b-private", "text": "agent B's private plan: buy the dip",
                                            "kind": "memory"})
        assert r.status_code == 201, r.text
        a = client(api, token=sign_in(api, KEY_A))
        for body in ({"query": "private plan"}, {"query": "private plan", "filters": {"kind": "memory"}},
                     {"query": "private plan", "filters": {"kind": ["tx", "memory"]}}):
            b = is_problem(a.post("/rag/search", json=body), 403)
            assert b["field"] == "filters.kind"
        r = a.post("/rag/search", json={"query": "private plan", "filters": {"kind": ["tx", "document"]}})
        assert r.status_code == 200 and all(h["kind"] != "memory" for h in r.json()["hits"])
        assert a.post("/rag/context", json={"query": "x", "filters": {"kind": "tx"}}).status_code == 200
        is_problem(a.get("/rag/documents"), 403)
        is_problem(a.post("/rag/documents", json={"text": "mine", "kind": "memory"}), 403)
        is_problem(a.delete("/rag/documents/b-private"), 403)
        assert a.get("/rag/graph/" + "0x" + "00" * 20).status_code in (200, 404)
        # a read token may search (a read-only POST) but not write
        rd = client(api, token=READ)
        assert rd.post("/rag/search", json={"query": "plan"}).status_code == 200
        is_problem(rd.post("/rag/documents", json={"text": "x"}), 403)
    finally:
        api.state.audit.close()
        app.close()
