"""Attacks on a real running sidecar (issue 19, the HTTP half): ``python -m monmouth run`` as a subprocess following
a real anvil node, spoken to over real sockets. Each test reproduces an attack as a client would send it and asserts
the right 4xx, then that the process is alive and ``/health`` answers; the last test checks the sidecar's log holds
no unhandled error (so none of it answered 5xx).

Covers: deeply nested and oversized bodies on every kind of route (item 1), values that cannot be stored (lone
surrogates, NaN/Infinity, deep metadata, bad filters, out-of-range numbers; item 6), two ``Authorization`` headers
against the rate limiter (item 7), secret rotation by hot reload, the SIWE domain rule and the nonce flood (item 8),
and forget erasing the label from older checkpoints (item 9).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from eth_account import Account

from monmouth.auth import hash_token
from monmouth.config import read_document, set_value, write_document
from monmouth.siwe import sign_in_with_key
from tests.anvil import Anvil, anvil_binary, free_port

ROOT = Path(__file__).resolve().parents[1]
ADMIN = "mmo_security-admin-token-0123456789abcdef"
KEY = "0x" + "44" * 32
AGENT = Account.from_key(KEY).address.lower()
OTHER = "0x" + "ab" * 20
DEEP = b"[" * 100_000 + b"]" * 100_000  # the crash: ~200 kB, parsed by the C json module


def plugins_toml(agent: str) -> str:
    """The rag plugin (no embedding worker) and the memory plugin (no embeddings) with ``agent`` registered; the
    ``[plugins.memory]`` table comes last, open for more keys."""
    return f"""
[plugins.rag]
enabled = true
worker = false

[plugins.memory]
enabled = true
embed = false
key_dir = "keys"
agents = ["{agent}"]"""


class Sidecar:
    """A ``monmouth run`` subprocess; its log goes to ``log_path``."""

    def __init__(self, directory: Path, node_url: str) -> None:
        self.dir = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = directory / "config.toml"
        self.config.write_text(f"""
[source]
kind = "rpc"
url = "{node_url}"
poll_interval = 0.2

[storage]
path = "db.sqlite"

[http]
port = {self.port}

[auth]
admin_tokens = ["{hash_token(ADMIN)}"]
loopback_open = false
chain_id = 31337
rate_token = 0
secret = "{"5a" * 32}"

{plugins_toml(AGENT)}
checkpoint_dir = "checkpoints"
""")
        self.log_path = directory / "sidecar.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115  (closed in stop)
        self.proc = subprocess.Popen([sys.executable, "-m", "monmouth", "run", "--config", str(self.config)],
                                     cwd=directory, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.admin = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)
        self.anon = httpx.Client(base_url=self.url, timeout=30)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            try:
                if self.anon.get("/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"the sidecar did not serve /health: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def assert_alive(self) -> None:
        assert self.proc.poll() is None, f"the sidecar died (exit {self.proc.returncode}): {self.log()}"
        assert self.anon.get("/health").json() == {"status": "ok"}

    def reload(self, **changes: object) -> None:
        """Edit config.toml (dotted keys) and wait until the running sidecar has applied it (its digest)."""
        before = self.digest()
        doc = read_document(self.config)
        for key, value in changes.items():
            set_value(doc, key.replace("__", "."), value)
        write_document(self.config, doc)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.digest() != before:
                return
            time.sleep(0.1)
        raise AssertionError(f"config reload not applied: {self.log()}")

    def digest(self) -> str:
        """The running config's digest (waiting out a rate limit a test set)."""
        while (r := self.admin.get("/status")).status_code == 429:
            time.sleep(float(r.headers["retry-after"]))
        return str(r.json()["config"]["digest"])

    def sign_in(self, key: str = KEY, host: str | None = None) -> str:
        headers = {"Host": host} if host else {}
        n = self.anon.get("/auth/nonce", headers=headers).json()
        msg, sig = sign_in_with_key(key, n["nonce"], domain=n["domain"], chain_id=n["chain_id"])
        r = self.anon.post("/auth/siwe", json={"message": msg, "signature": sig}, headers=headers)
        assert r.status_code == 200, r.text
        return str(r.json()["token"])

    def stop(self) -> None:
        self.admin.close()
        self.anon.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory) -> Iterator[Sidecar]:
    if anvil_binary() is None:
        pytest.fail("anvil is missing: run `npm ci` at the repository root")
    with Anvil() as node:
        node.traffic(3, txs_per_block=2)
        s = Sidecar(tmp_path_factory.mktemp("security"), node.url)
        try:
            yield s
        finally:
            s.stop()


def problem(r: httpx.Response, status: int, *words: str) -> dict:
    """``r`` is an RFC 9457 problem with ``status`` whose detail (or field) names each of ``words``."""
    assert r.status_code == status, (r.status_code, r.text[:500])
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body = r.json()
    said = f"{body.get('field')} {body['detail']}"
    for w in words:
        assert w in said, (w, body)
    return body


# ------------------------------------------------------------------------------------------------ item 1


@pytest.mark.anvil
@pytest.mark.parametrize("method,path,who", [
    ("POST", "/auth/siwe", "anon"),  # the request: unauthenticated, parsed before any auth
    ("POST", "/rag/search", "admin"),
    ("POST", "/rag/documents", "admin"),
    ("POST", f"/memory/agents/{AGENT}/items", "admin"),
    ("POST", f"/memory/agents/{AGENT}/recall", "admin"),
    ("PATCH", f"/memory/agents/{AGENT}/items/0x{'00' * 32}", "admin"),
    ("POST", "/mcp", "admin"),
])
def test_deeply_nested_json_is_refused_before_any_parser(sidecar, method, path, who):
    c = getattr(sidecar, who)
    headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
    problem(c.request(method, path, content=DEEP, headers=headers), 400, "body", "http.max_json_depth")
    sidecar.assert_alive()
    # objects too, streamed without Content-Length, and whatever the declared type
    deep_obj = b'{"a":' * 50_000 + b"1" + b"}" * 50_000

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(deep_obj), 4096):
            yield deep_obj[i:i + 4096]

    problem(c.request(method, path, content=chunks(), headers={**headers, "content-type": "text/plain"}), 400,
            "http.max_json_depth")
    sidecar.assert_alive()


@pytest.mark.anvil
def test_oversized_bodies_are_413_and_brackets_inside_strings_are_text(sidecar):
    big = b'{"query": "' + b"x" * (11 * 1024 * 1024) + b'"}'
    problem(sidecar.anon.post("/auth/siwe", content=big), 413, "http.max_body_bytes")

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(big), 65536):
            yield big[i:i + 65536]

    problem(sidecar.admin.post("/rag/search", content=chunks()), 413, "http.max_body_bytes")
    sidecar.assert_alive()
    # Brackets in strings are not nesting: stored as text, read back unchanged.
    text = "[" * 5000 + '{"\\' + "]" * 10
    r = sidecar.admin.post(f"/memory/agents/{AGENT}/items", json={"kind": "semantic", "content": text})
    assert r.status_code == 201, r.text
    got = sidecar.admin.get(f"/memory/agents/{AGENT}/items/{r.json()['id']}").json()
    assert got["content"] == text
    problem(sidecar.anon.post("/auth/siwe", content=b'{"message": "\xff\xfe", "signature": "0x"}'), 400, "UTF-8")
    sidecar.assert_alive()


# ------------------------------------------------------------------------------------------------ item 6


def _dumps(obj: object) -> bytes:
    """JSON as Python writes it: lone surrogates as \\ud800 escapes, NaN and Infinity as bare words."""
    return json.dumps(obj).encode()


@pytest.mark.anvil
def test_values_that_cannot_be_stored_are_422_naming_the_field_and_nothing_is_poisoned(sidecar):
    items = f"/memory/agents/{AGENT}/items"
    post = lambda path, obj: sidecar.admin.post(path, content=_dumps(obj),  # noqa: E731
                                                headers={"content-type": "application/json"})
    bad_items = [
        ({"kind": "semantic", "content": "a\ud800"}, "content"),
        ({"kind": "semantic", "content": "x", "key": "k\udfff"}, "key"),
        ({"kind": "semantic", "content": "x", "tags": ["ok", "t\ud800"]}, "tags"),
        ({"kind": "semantic", "content": "x", "metadata": {"x": "\ud800"}}, "metadata"),
        ({"kind": "semantic", "content": "x", "metadata": {"\ud800": 1}}, "metadata"),
        ({"kind": "semantic", "content": "x", "metadata": {"x": float("nan")}}, "metadata"),
        ({"kind": "semantic", "content": "x", "metadata": {"x": [float("-inf")]}}, "metadata"),
        ({"kind": "semantic", "content": "x", "metadata": {"x": 1e999}}, "metadata"),
        ({"kind": "semantic", "content": "x", "metadata": _nest(40)}, "metadata"),
        ({"kind": "working", "content": "x", "ttl_seconds": 10**30}, "ttl_seconds"),
    ]
    for body, field in bad_items:
        problem(post(items, body), 422, field)
    recall = f"/memory/agents/{AGENT}/recall"
    for body, field in [({"query": "q\ud800"}, "query"), ({"query": "q", "half_life_s": float("nan")}, "half_life_s"),
                        ({"query": "q", "recency_weight": 0.5, "half_life_s": -1e-320}, "half_life_s"),
                        ({"query": "q", "half_life_s": 1e999}, "half_life_s"),
                        ({"query": "q", "since": float("inf")}, "since")]:
        problem(post(recall, body), 422, field)
    problem(sidecar.admin.get(items, params={"offset": 10**30}), 422, "offset")
    problem(sidecar.admin.get(f"/memory/agents/{AGENT}/changes", params={"since_block": -1}), 422, "since_block")
    # RAG: meta nested beyond 32 levels (422 naming meta), 500 deep (refused at the gate), a surrogate in the query.
    problem(post("/rag/documents", {"text": "hello", "meta": _nest(40)}), 422, "meta")
    problem(post("/rag/documents", {"text": "hello", "meta": _nest(500)}), 400, "http.max_json_depth")
    problem(post("/rag/documents", {"text": "hello", "meta": {"n": float("nan")}}), 422, "meta")
    problem(post("/rag/search", {"query": "x\ud800"}), 422, "query")
    problem(post("/rag/search", {"query": "x", "filters": {"block_from": 10**30}}), 422, "block_from")
    problem(post("/rag/search", {"query": "x", "filters": {"time_to": -(10**30)}}), 422, "time_to")
    problem(sidecar.admin.get("/rag/documents", params={"offset": 10**30}), 422, "offset")
    assert post("/rag/documents", {"text": "hello world", "meta": _nest(20)}).status_code == 201
    # An agent's search with a malformed filter: 422 naming it (the access policy used to 500).
    agent = httpx.Client(base_url=sidecar.url, headers={"Authorization": f"Bearer {sidecar.sign_in()}"})
    with agent:
        for filters in (5, "tx", [1], {"kind": 5}):
            problem(agent.post("/rag/search", json={"query": "x", "filters": filters}), 422, "filters")
        problem(agent.post("/rag/search", json={"query": "x", "filters": None}), 403, "filters.kind")
        r = agent.post("/rag/search", json={"query": "hello", "filters": {"kind": ["document"]}})
        assert r.status_code == 200, r.text
    # Nothing was stored half-way: every read of the agent answers.
    for path in (items, f"/memory/agents/{AGENT}/export", f"/memory/agents/{AGENT}"):
        assert sidecar.admin.get(path).status_code == 200, path
    assert post(recall, {"query": "anything", "recency_weight": 0.5}).status_code == 200
    assert post("/rag/search", {"query": "hello"}).status_code == 200
    sidecar.assert_alive()


def _nest(depth: int) -> dict:
    d: dict = {"leaf": 1}
    for _ in range(depth - 1):
        d = {"a": d}
    return d


# ------------------------------------------------------------------------------------------------ item 7


@pytest.mark.anvil
def test_two_authorization_headers_are_refused_before_auth_and_the_limiter(sidecar):
    sidecar.reload(auth__rate_token=1.0, auth__burst_token=3)
    try:
        two = [("Authorization", "Bearer mmo_junk-junk-junk-junk-junk-junk"), ("Authorization", f"Bearer {ADMIN}")]
        codes = [sidecar.anon.get("/status", headers=two).status_code for _ in range(20)]
        assert codes == [400] * 20, codes
        problem(sidecar.anon.get("/status", headers=two), 400, "authorization", "one Authorization header")
        # With one header the limit holds: the burst, then 429 with Retry-After.
        one = {"Authorization": f"Bearer {ADMIN}"}
        codes = [sidecar.anon.get("/status", headers=one).status_code for _ in range(20)]
        assert codes.count(200) <= 4 and 429 in codes, codes
    finally:
        sidecar.reload(auth__rate_token=0.0)
    sidecar.assert_alive()


# ------------------------------------------------------------------------------------------------ item 8


@pytest.mark.anvil
def test_rotating_the_secret_by_hot_reload_retires_old_agent_tokens(sidecar):
    old = sidecar.sign_in()
    who = lambda t: sidecar.anon.get("/auth/whoami", headers={"Authorization": f"Bearer {t}"})  # noqa: E731
    assert who(old).json()["agent"] == AGENT
    sidecar.reload(auth__secret="6b" * 32)
    problem(who(old), 401, "invalid agent token")
    new = sidecar.sign_in()
    assert who(new).json()["agent"] == AGENT
    sidecar.assert_alive()


@pytest.mark.anvil
def test_siwe_never_takes_its_domain_from_a_foreign_host_header(sidecar):
    problem(sidecar.anon.get("/auth/nonce", headers={"Host": "phish.example"}), 403, "auth.domain")
    # A message signed for the phishing site, relayed with its Host: refused (it used to be accepted).
    n = sidecar.anon.get("/auth/nonce").json()
    msg, sig = sign_in_with_key(KEY, n["nonce"], domain="phish.example", chain_id=31337)
    problem(sidecar.anon.post("/auth/siwe", json={"message": msg, "signature": sig},
                              headers={"Host": "phish.example"}), 403, "auth.domain")
    # Once auth.domain is set, only it is accepted, whatever the Host.
    sidecar.reload(auth__domain="monmouth.test")
    try:
        n = sidecar.anon.get("/auth/nonce", headers={"Host": "phish.example"}).json()
        assert n["domain"] == "monmouth.test"
        msg, sig = sign_in_with_key(KEY, n["nonce"], domain="phish.example", chain_id=31337)
        problem(sidecar.anon.post("/auth/siwe", json={"message": msg, "signature": sig},
                                  headers={"Host": "phish.example"}), 401, "domain")
        sidecar.sign_in(host="phish.example")  # names monmouth.test: accepted
    finally:
        sidecar.reload(auth__domain="")
    sidecar.assert_alive()


@pytest.mark.anvil
def test_a_nonce_flood_does_not_stop_others_signing_in(sidecar):
    first = sidecar.anon.get("/auth/nonce").json()["nonce"]
    codes = {sidecar.anon.get("/auth/nonce").status_code for _ in range(1000)}
    assert codes == {200}, codes
    # The flood retired the flooding client's own oldest nonces ...
    msg, sig = sign_in_with_key(KEY, first, domain=f"127.0.0.1:{sidecar.port}", chain_id=31337)
    problem(sidecar.anon.post("/auth/siwe", json={"message": msg, "signature": sig}), 401, "nonce")
    # ... and sign-in still works.
    sidecar.sign_in()
    sidecar.assert_alive()


def test_public_bind_without_auth_domain_is_refused_at_start_naming_the_key(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[source]\nkind = "rpc"\nurl = "http://127.0.0.1:9"\n[storage]\npath = "db.sqlite"\n'
                   f'[http]\nhost = "0.0.0.0"\nport = {free_port()}\n[auth]\nadmin_tokens = ["{hash_token(ADMIN)}"]\n')
    r = subprocess.run([sys.executable, "-m", "monmouth", "run", "--config", str(cfg)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "auth.domain" in r.stderr and str(cfg) in r.stderr, r.stderr
    assert "Traceback" not in r.stderr, r.stderr


# ------------------------------------------------------------------------------------------------ item 9


@pytest.mark.anvil
def test_forget_erases_the_label_from_checkpoints_taken_before(sidecar):
    from monmouth_memory import checkpoint

    label = "Mallory-LABEL-KESTREL-5522"
    assert sidecar.admin.post("/memory/agents", json={"address": OTHER, "label": label}).status_code == 201
    assert sidecar.admin.post(f"/memory/agents/{OTHER}/items", json={"kind": "semantic",
                                                                      "content": "x"}).status_code == 201
    ckpts = sidecar.dir / "checkpoints"
    man = checkpoint.create(sidecar.dir / "db.sqlite", ckpts, name="before-forget")
    assert label.encode() in (ckpts / man["file"]).read_bytes()
    r = sidecar.admin.delete(f"/memory/agents/{OTHER}")
    assert r.status_code == 200 and r.json()["checkpoints_scrubbed"] == 1, r.text
    assert label.encode() not in (ckpts / man["file"]).read_bytes()
    checkpoint.verify(ckpts, checkpoint.find(ckpts, "before-forget"))  # still a valid checkpoint
    sidecar.assert_alive()


# ------------------------------------------------------------------------------------------------ afterwards


@pytest.mark.anvil
def test_after_every_attack_no_request_was_an_unhandled_error(sidecar):
    """Runs last in this module: the log of the sidecar that took every attack above holds no 5xx."""
    sidecar.assert_alive()
    log = sidecar.log_path.read_text(errors="replace")
    assert "unhandled" not in log and "Traceback" not in log, log[-5000:]
