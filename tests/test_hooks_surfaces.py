"""The surface hooks a plugin contributes through: ``monmouth_access_rules`` (exceptions to the default access
policy for its own routes) and ``monmouth_mcp_tools`` (MCP tools acting as the caller: a service run directly under its
route's policy, or a route called through HTTP). Driven with the
third-party test plugin ``tests/plugins/notes.py`` through the real app (open_app + create_api on a real SQLite file)
and, for MCP, a live sidecar and the SDK's own client."""

from __future__ import annotations

import httpx
import pytest
from fastapi import APIRouter

from monmouth import hookimpl
from monmouth.api import create_api
from monmouth.app import open_app
from monmouth.auth import AccessRule
from monmouth_memory.plugin import MemoryPlugin
from tests.plugins import notes
from tests.test_api_support import agent_token, live_sidecar
from tests.test_auth import ADMIN, KEY_A, READ, client, is_problem, sign_in, write_config
from tests.test_mcp import ADMIN as MCP_ADMIN
from tests.test_mcp import KEY_A as MCP_KEY_A
from tests.test_mcp import TOOLS, error_text, http_client, payload
from tests.test_mcp import config as mcp_config

NOTES = "\n[plugins.notes]\nenabled = true\n\n[plugins.greedy]\nenabled = true\n"


def status() -> dict:
    """A sync tool, and the core's name: refused twice over."""
    return {}


async def note_search(query: str) -> dict:
    """Takes the notes plugin's tool name: refused, the notes plugin was first."""
    return {}


async def greedy_ping() -> dict:
    """The greedy plugin's one acceptable tool."""
    return {"pong": True}


class Greedy:
    """A plugin whose rules and tools overreach: a rule for another plugin's route, a rule that is no AccessRule,
    tools whose names are taken or that are not async."""

    @hookimpl
    def monmouth_http_router(self):
        router = APIRouter(prefix="/greedy")

        @router.post("/ping")
        def ping():
            return {"pong": True}

        @router.get("/agents/{agent}/export")
        def export(agent: str):  # shaped like memory's export, but it declares no audit event: not audited
            return {"agent": agent}

        return router

    @hookimpl
    def monmouth_access_rules(self):
        return [AccessRule("POST", "/notes/tidy", read=True, agent=True), ("POST", "/greedy/ping")]

    @hookimpl
    def monmouth_mcp_tools(self):
        return [status, note_search, greedy_ping]


@pytest.fixture
def api_env(tmp_path):
    app = open_app(write_config(tmp_path, NOTES),
                   extra_plugins={"memory": MemoryPlugin(workers=False), "notes": notes, "greedy": Greedy()})
    assert app.host.is_enabled("notes") and app.host.is_enabled("greedy"), app.host.errors
    api = create_api(app)
    yield app, api
    api.state.audit.close()
    app.close()


def test_access_rules_widen_the_default_policy_for_the_plugins_own_routes_only(api_env):
    app, api = api_env
    # read token: the rule makes the read-only POST callable; a POST without a rule stays refused
    rd = client(api, token=READ)
    assert rd.post("/notes/search", json={"query": "q", "scope": "private"}).json()["by"] == "read"
    assert "read token may not call POST /notes/tidy" in is_problem(rd.post("/notes/tidy"), 403)["detail"]
    # agent: admitted, and the rule's body check refuses what it must, naming the field
    a = client(api, token=sign_in(api, KEY_A))
    r = a.post("/notes/search", json={"query": "q"})
    assert r.status_code == 200 and r.json()["by"].startswith("agent:0x")
    assert is_problem(a.post("/notes/search", json={"query": "q", "scope": "private"}), 403)["field"] == "scope"
    # a body that is not JSON is left to the route's own validation (422), not refused by the check
    r = a.post("/notes/search", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    is_problem(a.post("/notes/tidy"), 403)
    # another plugin cannot widen the policy of /notes/tidy, nor hand in something that is no AccessRule: refused,
    # named in its /status error, and its own route keeps the default policy
    is_problem(rd.post("/greedy/ping"), 403)
    is_problem(a.post("/notes/tidy"), 403)
    assert "POST /notes/tidy is not an AccessRule for a route of this plugin" in app.host.errors["greedy"]
    assert "('POST', '/greedy/ping') is not an AccessRule" in app.host.errors["greedy"]
    assert client(api, token=ADMIN).post("/notes/tidy").json() == {"tidied": True}
    assert set(api.state.access_rules) >= {("POST", "/notes/search"), ("POST", "/memory/agents/{agent}/recall")}
    assert ("POST", "/notes/tidy") not in api.state.access_rules


def test_routes_declare_their_audit_events(api_env):
    """A plugin route declares its audit event with ``audited``: each successful call is recorded (caller, client,
    concrete path), a refused one is recorded as a denial only, and a route that declares nothing is not audited,
    whatever its path looks like."""
    app, api = api_env
    adm = client(api, token=ADMIN)
    assert adm.post("/notes/tidy").json() == {"tidied": True}
    a = client(api, token=sign_in(api, KEY_A))
    is_problem(a.post("/notes/tidy"), 403)
    assert a.post("/notes/search", json={"query": "q"}).status_code == 200
    assert adm.get("/greedy/agents/0xabc/export").json() == {"agent": "0xabc"}
    api.state.audit.flush()
    events = adm.get("/audit", params={"limit": 200}).json()["events"]
    tidied = [e for e in events if e["event"] == "notes_tidied"]
    assert len(tidied) == 1 and tidied[0]["principal"] == "admin" and tidied[0]["detail"]["path"] == "/notes/tidy"
    searched = [e for e in events if e["event"] == "notes_searched"]
    assert len(searched) == 1 and searched[0]["principal"].startswith("agent:0x"), searched
    assert any(e["event"] == "denied" and e["detail"]["path"] == "/notes/tidy" for e in events)
    assert not [e for e in events if e["event"] == "export"], "an undeclared route was audited by its shape"


@pytest.mark.parametrize("bad", ["Forget", "denied", "sign_in", "", "a-b", "x" * 33])
def test_an_audit_event_must_be_a_lowercase_name_of_the_plugins_own(bad):
    from monmouth.audit import audited

    with pytest.raises(ValueError, match="lowercase name"):
        audited(bad)


def test_the_core_lists_no_plugin_route():
    """The rules and audit events of the built-in plugins come from their hooks and routes: the core modules name
    none of their routes."""
    import inspect

    import monmouth.api
    import monmouth.audit
    import monmouth.auth
    import monmouth.mcp_server

    routes = ("/rag/", "/memory/", '/agents/{agent}")', "/export", "/import")
    tools = (*routes, "search_chain", "remember")
    for module, names in ((monmouth.auth, tools), (monmouth.mcp_server, tools),
                          (monmouth.audit, routes), (monmouth.api, routes)):
        src = inspect.getsource(module)
        for name in names:
            assert name not in src, f"{module.__name__} names {name}"


@pytest.mark.anyio
async def test_plugin_tools_are_served_and_act_as_the_caller(tmp_path):
    cfg = mcp_config(tmp_path) + NOTES
    plugins = {"memory": MemoryPlugin(workers=False), "notes": notes, "greedy": Greedy()}
    async with live_sidecar(tmp_path, cfg, plugins) as (app, _runner, base, _source):
        async with http_client(f"{base}/mcp") as c:  # loopback operator
            names = {t.name for t in (await c.list_tools()).tools}
            assert names == TOOLS | {"note_search", "note_tidy", "greedy_ping"}
            before = dict(notes.CALLS)
            got = payload(await c.call_tool("note_search", {"query": "plans", "scope": "private"}))
            assert got == {"query": "plans", "scope": "private", "by": "admin@loopback"}
            # in-process, the tool ran the plugin's service directly: no HTTP request reached the route
            assert notes.CALLS["service"] == before.get("service", 0) + 1
            assert notes.CALLS["route"] == before.get("route", 0)
            assert payload(await c.call_tool("greedy_ping", {})) == {"pong": True}
            assert payload(await c.call_tool("note_tidy", {})) == {"tidied": True}  # a route, as the caller
        # the refused tools are named in the greedy plugin's /status error, beside its refused access rules
        error = app.host.errors["greedy"]
        assert "tool 'status' is not an async function" in error
        assert "tool 'note_search' is already served by plugin 'notes'" in error
        assert "POST /notes/tidy is not an AccessRule for a route of this plugin" in error
        ta = await agent_token(base, MCP_KEY_A)
        async with http_client(f"{base}/mcp", ta) as c:  # an agent: the notes plugin's access rule applies
            assert payload(await c.call_tool("note_search", {"query": "plans"}))["by"].startswith("agent:")
            # the rule's body check refuses as over HTTP, before the service runs, and the denial is audited
            service = notes.CALLS["service"]
            err = error_text(await c.call_tool("note_search", {"query": "plans", "scope": "private"}))
            assert "403: an agent may search notes only with scope 'public'" in err, err
            assert notes.CALLS["service"] == service
            # the default policy of a POST without a rule: operators only, through the route as through a service
            assert "403: " in error_text(await c.call_tool("note_tidy", {}))
        async with httpx.AsyncClient(base_url=base, headers={"authorization": f"Bearer {MCP_ADMIN}"}) as adm:
            denied = (await adm.get("/audit", params={"event": "denied", "limit": 100})).json()["events"]
        assert any(e["principal"].startswith("agent:") and e["detail"]["path"] == "/notes/search"
                   for e in denied), denied
