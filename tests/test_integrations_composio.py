"""Composio: ``POST /integrations/composio/execute`` calls the v3 API (fake) and stores the call and its result as
the agent's episodic memory; an Idempotency-Key is never executed twice; only failures that cannot have reached
Composio are retried; timeouts, 5xx and malformed answers are reported, not retried; the breaker opens and
answers 503 at once, then closes. Every test runs on SQLite and PostgreSQL (``storage_of``)."""

from __future__ import annotations

import json
import time

import pytest

from monmouth.types import ChainCommitted
from monmouth_integrations.composio.plugin import ComposioPlugin
from monmouth_memory.plugin import MemoryPlugin
from tests.chains import address, chain, extend
from tests.fakes.composio_api import FakeComposio
from tests.fakes.harness import FAST, loopback_client, open_test_app

AGENT = "0x" + address(1).hex()
STRANGER = "0x" + address(2).hex()


@pytest.fixture
def sidecar(storage_of, monkeypatch):
    monkeypatch.setenv("COMPOSIO_API_KEY", "test-composio-key")
    fake = FakeComposio(hang_s=2.0)
    mem, comp = MemoryPlugin(workers=False), ComposioPlugin()
    fast = {k: v for k, v in FAST.items() if k != "poll_interval_s"}
    app = open_test_app(storage_of("db.sqlite"), {"memory": mem, "composio": comp},
                        {"memory": {"agents": [AGENT], "embed": False},
                         "composio": {"base_url": fake.url, "user_id": "default", **fast, "timeout_s": 0.4,
                                      "breaker_fail_max": 3, "breaker_reset_s": 0.5}})
    app.engine.apply(ChainCommitted(chain(extend(None, 1, number=1))))
    yield app, loopback_client(app), fake, mem.memory
    app.close()
    fake.stop()


def call(client, tool="HACKERNEWS_GET_USER", arguments=None, key=None, **body):
    headers = {"Idempotency-Key": key} if key else {}
    return client.post("/integrations/composio/execute", headers=headers,
                       json={"tool": tool, "arguments": arguments or {"username": "pg"}, **body})


def test_execute_stores_the_call_as_episodic_memory(sidecar):
    app, client, fake, mem = sidecar
    r = call(client, agent=AGENT, key="k-1")
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["successful"] is True and out["data"] == {"id": "pg", "karma": 42} and out["log_id"] == "log_fake_1"
    assert out["id"] == "k-1" and out["attempts"] == 1
    (ex,) = fake.executions
    assert ex["body"] == {"arguments": {"username": "pg"}, "user_id": "default"}
    assert ex["idempotency_key"] == "k-1"
    item = mem.get(bytes.fromhex(AGENT[2:]), bytes.fromhex(out["memory"]["id"][2:]))
    assert item["kind"] == "episodic" and set(item["tags"]) == {"composio", "hackernews_get_user"}
    stored = json.loads(item["content"])
    assert stored["tool"] == "HACKERNEWS_GET_USER" and stored["data"] == out["data"] and stored["call_id"] == "k-1"
    # The same key again: answered from the record, not executed again.
    again = call(client, agent=AGENT, key="k-1")
    assert again.status_code == 200 and again.json()["replayed"] is True and len(fake.executions) == 1
    assert call(client, tool="GITHUB_STAR_A_REPOSITORY", agent=AGENT, key="k-1").status_code == 422
    st = client.get("/status").json()["plugins"]["composio"]
    assert st["calls"]["done"] == 1 and st["breaker"] == "closed"
    rec = client.get("/integrations/composio/calls/k-1").json()
    assert rec["state"] == "done" and rec["response"]["data"] == out["data"]


def test_a_failed_tool_is_an_answer_and_bad_requests_name_the_field(sidecar):
    app, client, fake, mem = sidecar

    def boom(args):
        raise ValueError("repository not found")

    fake.tools["GITHUB_STAR_A_REPOSITORY"] = boom
    r = call(client, "GITHUB_STAR_A_REPOSITORY", {"owner": "x", "repo": "y"}, agent=AGENT)
    assert r.status_code == 200 and r.json()["successful"] is False and r.json()["error"] == "repository not found"
    assert r.json()["memory"]["id"]
    bad = call(client, "NOT A SLUG")
    assert bad.status_code == 422 and "tool" in bad.text
    assert call(client, agent=STRANGER).status_code == 404  # not a registered agent: refused before any call
    unknown = call(client, "NO_SUCH_TOOL")
    assert unknown.status_code == 502 and "HTTP 404" in unknown.text and "not found" in unknown.text
    assert len(fake.executions) == 1


def test_only_failures_that_never_reached_composio_are_retried(sidecar):
    app, client, fake, mem = sidecar
    fake.script("503", "503")  # declined twice, then it runs
    r = call(client, key="retry-ok")
    assert r.status_code == 200 and r.json()["attempts"] == 3
    assert fake.count() == 3 and fake.executed("retry-ok") == 1
    for mode, status in (("5xx", 502), ("timeout", 504), ("malformed", 502), ("lost", 504)):
        n = fake.count()
        fake.fail(mode, times=1)
        r = call(client, key=f"k-{mode}")
        assert r.status_code == status, (mode, r.text)
        assert fake.count() == n + 1, mode  # it may have run: reported, never retried blindly
        fake.heal()
        assert call(client).status_code == 200  # (a success between failures keeps the breaker closed)
    assert fake.executed("k-lost") == 1  # the lost one did run, once; the caller was told it may have
    assert app.metrics.registry.get_sample_value("monmouth_composio_attempts_total", {"outcome": "transient"}) >= 6


def test_breaker_opens_answers_503_at_once_and_closes(sidecar):
    app, client, fake, mem = sidecar
    fake.fail("5xx")
    for i in range(3):
        assert call(client, key=f"f{i}").status_code == 502
    n = fake.count()
    r = call(client, key="while-open")
    assert r.status_code == 503 and r.headers.get("retry-after") and "circuit breaker open" in r.text
    assert fake.count() == n  # not sent
    assert client.get("/status").json()["plugins"]["composio"]["breaker"] == "open"
    fake.heal()
    time.sleep(0.55)
    assert call(client, key="while-open").status_code == 200  # a failed call may be retried under its key
    assert client.get("/status").json()["plugins"]["composio"]["breaker"] == "closed"


def test_concurrent_calls_with_one_key_run_it_once(sidecar):
    """Eight clients send the same call with the same Idempotency-Key at once, twice (the second time after the key
    failed): each time it runs exactly once, the others are told it is in progress (409) or get its answer; no
    request fails with a database error (on PostgreSQL, two transactions could both see no row, or both see
    ``failed``)."""
    import anyio
    import httpx

    app, client, fake, mem = sidecar

    def slow(args):
        time.sleep(0.2)  # below timeout_s: it answers
        return {"ok": True}

    fake.tools["SLOW_TOOL"] = slow

    def at_once(key: str, n: int = 8) -> list[int]:
        """``n`` requests started together on one event loop, as one server process serves them."""
        codes: list[int] = []

        async def burst() -> None:
            transport = httpx.ASGITransport(app=client.app, client=("127.0.0.1", 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as ac:
                async def one() -> None:
                    r = await ac.post("/integrations/composio/execute", headers={"Idempotency-Key": key},
                                      json={"tool": "SLOW_TOOL", "arguments": {"username": "pg"}})
                    codes.append(r.status_code)

                async with anyio.create_task_group() as tg:
                    for _ in range(n):
                        tg.start_soon(one)

        anyio.run(burst)
        return codes

    at_once("warm-up")  # the first requests of a new API are served one by one (start-up): not a test
    codes = at_once("first")
    assert sorted(codes) == [200] + [409] * 7, codes
    assert fake.executed("first") == 1
    fake.fail("5xx", times=1)
    assert call(client, "SLOW_TOOL", key="again").status_code == 502
    assert client.get("/integrations/composio/calls/again").json()["state"] == "failed"
    n = fake.count()
    codes = at_once("again")
    assert sorted(codes) == [200] + [409] * 7, codes
    assert fake.count() == n + 1 and fake.executed("again") == 1
    assert client.get("/integrations/composio/calls/again").json()["state"] == "done"
