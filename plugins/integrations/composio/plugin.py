"""The Composio integration (entry point ``composio``): agents act through external tools.

``POST /integrations/composio/execute`` with ``{"tool": "GITHUB_GET_REPOS", "arguments": {...}, "agent": "0x..."}``
(optional ``user_id``, ``connected_account_id``, ``version``; optional header ``Idempotency-Key``) executes the
tool through Composio's v3 API (:mod:`.client`) and answers ``{"id", "tool", "successful", "data", "error",
"log_id", "memory", "attempts"}``.

* **Recorded.** Every call is kept in ``composio_calls`` (an off-chain table: chain hooks never write it) before
  it is sent, with its outcome after. With the memory plugin enabled and ``agent`` given, the call and its result
  are stored as the agent's ``episodic`` memory (tags ``composio`` and the tool slug), anchored at the sidecar's
  head like every API-written memory.
* **Nothing sent twice.** A call with an ``Idempotency-Key`` that already completed is answered from the record
  without calling Composio again; one still running answers 409. Tool execution is not idempotent, so retries
  (tenacity, at most ``attempts``) happen only when the request cannot have reached Composio: connection
  failures, 429 and 503. A read timeout or another 5xx is reported (502/504), never retried blindly.
* **Breaker.** While the circuit is open the route answers 503 at once with ``Retry-After``.
* **Access.** With the sidecar's access control (``monmouth.auth``) the route requires an admin token or a
  signed-in agent, and an agent acts as itself (``agent`` defaults to, and must equal, its address). Without it,
  the route serves loopback clients only (``loopback_only``).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from typing import Any

from fastapi import APIRouter, Depends, Header, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from monmouth import hookimpl
from monmouth.auth import is_loopback
from monmouth.chain import is_address
from monmouth.errors import RequestError
from monmouth.problems import status_of

from ..base import IntegrationPlugin, Runtime
from ..config import IntegrationConfig, check_env_name, secret
from ..errors import PermanentError, TransientError
from ..outbox import dumps
from ..resilience import CircuitBreakerError, retrying
from .client import Composio

_SLUG = re.compile(r"^[A-Za-z0-9_]{1,128}$")


class ComposioConfig(IntegrationConfig):
    """``[plugins.composio]``."""

    #: Composio's API base URL.
    base_url: str = "https://backend.composio.dev"
    #: Environment variable holding the project API key (sent as ``x-api-key``).
    api_key_env: str = "COMPOSIO_API_KEY"
    #: Defaults for requests that do not name them.
    user_id: str | None = None
    connected_account_id: str | None = None
    #: Toolkit version to execute (``latest`` or a dated version such as ``20251027_00``); unset: Composio's default.
    version: str | None = None
    #: Tools agents may run (slugs, case-insensitive); empty: any.
    allowed_tools: list[str] = []
    #: Attempts per call (only failures that never reached Composio are retried).
    attempts: int = Field(3, ge=1, le=10)
    #: Largest ``arguments`` accepted, bytes of JSON.
    max_arguments_bytes: int = Field(256 * 1024, ge=1)
    #: Store each call and its result as the agent's episodic memory (memory plugin enabled, ``agent`` given).
    store_memory: bool = True
    #: Without the sidecar's access control (``monmouth.auth``): serve loopback clients only.
    loopback_only: bool = True

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, v: str) -> str:
        return check_env_name(v)


class ExecuteIn(BaseModel):
    """The body of ``POST /integrations/composio/execute``."""

    model_config = ConfigDict(extra="forbid")

    tool: str
    arguments: dict[str, Any] = {}
    agent: str | None = None
    user_id: str | None = None
    connected_account_id: str | None = None
    version: str | None = None


SCHEMA = """
CREATE TABLE composio_calls (
    id TEXT PRIMARY KEY,            -- the Idempotency-Key, or a random id
    tool TEXT NOT NULL,
    agent BLOB,
    arguments TEXT NOT NULL,        -- JSON
    state TEXT NOT NULL,            -- running | done | failed
    successful INTEGER,
    response TEXT,                  -- JSON: the answer given to the agent
    error TEXT,
    memory_item TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    finished_at REAL
);
"""

#: :data:`SCHEMA` for PostgreSQL.
PG_SCHEMA = """
CREATE TABLE composio_calls (
    id TEXT PRIMARY KEY,
    tool TEXT NOT NULL,
    agent BYTEA,
    arguments TEXT NOT NULL,
    state TEXT NOT NULL,
    successful INTEGER,
    response TEXT,
    error TEXT,
    memory_item TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at DOUBLE PRECISION NOT NULL,
    finished_at DOUBLE PRECISION
);
"""


def _refuse(status: int, field: str, error: str, headers: dict[str, str] | None = None) -> HTTPException:
    return HTTPException(status, {"field": field, "error": error}, headers=headers)


class ComposioPlugin(IntegrationPlugin):
    """The Composio plugin (see the module docs)."""

    name = "composio"
    Config = ComposioConfig
    uses_outbox = False
    SCHEMA = SCHEMA
    PG_SCHEMA = PG_SCHEMA

    def on_start(self, rt: Runtime) -> None:
        cfg: ComposioConfig = rt.config  # type: ignore[assignment]
        key = secret(cfg.api_key_env, "plugins.composio.api_key_env (the Composio project API key)")
        rt.state["client"] = Composio(rt.http, cfg.base_url, key)
        rt.state["last_error"] = None

    def extra_status(self, rt: Runtime) -> dict[str, Any]:
        counts = dict(rt.db.reader().execute("SELECT state, count(*) FROM composio_calls GROUP BY state").fetchall())
        return {"calls": {s: counts.get(s, 0) for s in ("running", "done", "failed")},
                "last_error": rt.state.get("last_error")}

    # -- the call ------------------------------------------------------------------------------------------
    def execute(self, body: ExecuteIn, idempotency_key: str | None = None) -> dict[str, Any]:
        """Run one tool call (see the module docs).

        Raises:
            HTTPException: 4xx naming the field for a bad request; 409 for a key in progress; 503 while the
                breaker is open; 502/504 when Composio fails.
        """
        rt = self.rt
        if rt is None:
            raise _refuse(503, "plugin", "the composio plugin is not running")
        cfg: ComposioConfig = rt.config  # type: ignore[assignment]
        tool = body.tool
        if not _SLUG.match(tool):
            raise _refuse(422, "tool", "must be a tool slug (letters, digits and '_', at most 128)")
        if cfg.allowed_tools and tool.upper() not in {t.upper() for t in cfg.allowed_tools}:
            raise _refuse(403, "tool", f"{tool} is not in plugins.composio.allowed_tools")
        args_json = dumps(body.arguments)
        if len(args_json.encode()) > cfg.max_arguments_bytes:
            raise _refuse(413, "arguments", f"larger than {cfg.max_arguments_bytes} bytes")
        if idempotency_key is not None and not (0 < len(idempotency_key) <= 200):
            raise _refuse(422, "Idempotency-Key", "must be 1 to 200 characters")
        agent = self._agent(rt, cfg, body.agent)
        call_id = idempotency_key or uuid.uuid4().hex
        replay = self._begin(rt, call_id, tool, agent, args_json)
        if replay is not None:
            return replay

        client: Composio = rt.state["client"]
        attempts = 0

        def once() -> dict[str, Any]:
            nonlocal attempts
            attempts += 1
            t0 = time.perf_counter()
            try:
                out: dict[str, Any] = rt.breaker.call(
                    client.execute, tool, body.arguments, user_id=body.user_id or cfg.user_id,
                    connected_account_id=body.connected_account_id or cfg.connected_account_id,
                    version=body.version or cfg.version, idempotency_key=call_id)
            except TransientError:
                rt.metrics.attempts.labels("transient").inc()
                raise
            except PermanentError:
                rt.metrics.attempts.labels("permanent").inc()
                raise
            finally:
                rt.metrics.request_seconds.observe(time.perf_counter() - t0)
            rt.metrics.attempts.labels("ok").inc()
            return out

        try:
            result = retrying(cfg.attempts, cfg.backoff_initial_s, cfg.backoff_max_s)(once)
        except CircuitBreakerError:
            rt.metrics.attempts.labels("rejected").inc()
            self._finish(rt, call_id, None, "circuit breaker open", attempts)
            raise _refuse(503, "composio", "circuit breaker open: Composio is failing; try again later",
                          {"Retry-After": str(int(cfg.breaker_reset_s))}) from None
        except TransientError as e:
            self._finish(rt, call_id, None, str(e), attempts)
            timeout = "timed out" in str(e) or "Timeout" in str(e)
            raise _refuse(504 if timeout else 502, "composio",
                          f"{e} (after {attempts} attempt(s); "
                          f"{'it may have run' if e.sent else 'it did not run'})") from None
        except PermanentError as e:
            self._finish(rt, call_id, None, str(e), attempts)
            raise _refuse(502, "composio", str(e)) from None

        memory = self._remember(rt, cfg, agent, call_id, tool, body.arguments, result)
        answer = {"id": call_id, "tool": tool, **result, "memory": memory, "attempts": attempts}
        self._finish(rt, call_id, answer, None, attempts)
        return answer

    def _agent(self, rt: Runtime, cfg: ComposioConfig, agent: str | None) -> bytes | None:
        if agent is None:
            return None
        if not is_address(agent):
            raise _refuse(422, "agent", "must be a 0x-prefixed 20-byte hex address")
        raw = bytes.fromhex(agent[2:])
        mem = rt.memory
        if cfg.store_memory and mem is not None:
            try:
                mem.check_agent(raw)
            except RequestError as e:
                raise _refuse(status_of(e), "agent", e.message) from None
        return raw

    def _begin(self, rt: Runtime, call_id: str, tool: str, agent: bytes | None,
               args_json: str) -> dict[str, Any] | None:
        """Record the call as running; return the recorded answer if this key already completed.

        Claimed by a write that only one of several concurrent calls with the same key can make (an insert of a new
        key, or ``failed`` -> ``running``), so a key runs once at a time on both backends: SQLite serialises
        writers, and PostgreSQL makes the second insert wait for the first's commit and then do nothing, and
        re-checks ``state = 'failed'`` of a row another transaction has just updated.

        Raises:
            HTTPException: 422, the key was used for another call; 409, a call with the key is running.
        """
        with rt.db.write() as conn:
            if conn.execute("INSERT INTO composio_calls (id, tool, agent, arguments, state, created_at) "
                            "VALUES (?, ?, ?, ?, 'running', ?) ON CONFLICT (id) DO NOTHING RETURNING id",
                            (call_id, tool, agent, args_json, time.time())).fetchone() is not None:
                return None
            row = conn.execute("SELECT state, response, tool, arguments FROM composio_calls WHERE id = ?",
                               (call_id,)).fetchone()
            if row[2] != tool or row[3] != args_json:
                raise _refuse(422, "Idempotency-Key", "already used for a different tool call")
            if row[0] == "done":
                rt.metrics.deliveries.labels("deduplicated").inc()
                return {**json.loads(row[1]), "replayed": True}
            if conn.execute("UPDATE composio_calls SET state = 'running', error = NULL WHERE id = ? "
                            "AND state = 'failed' RETURNING id", (call_id,)).fetchone() is not None:
                return None
        raise _refuse(409, "Idempotency-Key", "a call with this key is in progress")

    def _finish(self, rt: Runtime, call_id: str, answer: dict[str, Any] | None, error: str | None,
                attempts: int) -> None:
        if error is not None:
            rt.state["last_error"] = error
            rt.metrics.deliveries.labels("failed").inc()
        else:
            rt.metrics.deliveries.labels("delivered").inc()
        with rt.db.write() as conn:
            conn.execute(
                "UPDATE composio_calls SET state = ?, successful = ?, response = ?, error = ?, memory_item = ?, "
                "attempts = attempts + ?, finished_at = ? WHERE id = ?",
                ("failed" if answer is None else "done", None if answer is None else int(bool(answer["successful"])),
                 None if answer is None else dumps(answer), error,
                 ((answer or {}).get("memory") or {}).get("id"), attempts, time.time(), call_id))

    def _remember(self, rt: Runtime, cfg: ComposioConfig, agent: bytes | None, call_id: str, tool: str,
                  arguments: dict[str, Any], result: dict[str, Any]) -> dict[str, Any] | None:
        """Store the call and its result as the agent's episodic memory; ``{"id": ...}`` or ``{"error": ...}``."""
        mem = rt.memory
        if agent is None or mem is None or not cfg.store_memory:
            return None
        record = {"source": "composio", "tool": tool, "arguments": arguments, "successful": result["successful"],
                  "data": result["data"], "error": result["error"], "log_id": result["log_id"], "call_id": call_id}
        content = dumps(record)
        limit = mem.max_content_bytes
        if len(content.encode()) > limit:
            data = dumps(result["data"]).encode()
            record["data"] = {"truncated": True, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
            content = dumps(record)[:limit]
        try:
            item = mem.remember(agent, content, tags=["composio", tool.lower()],
                                metadata={"source": "composio", "tool": tool, "call_id": call_id,
                                          "log_id": result["log_id"], "successful": result["successful"]})
        except Exception as e:  # the tool ran: report the memory failure, do not hide the result
            return {"error": f"{type(e).__name__}: {e}"}
        return {"id": item["id"]}

    # -- surfaces ------------------------------------------------------------------------------------------
    @hookimpl
    def monmouth_http_router(self) -> APIRouter:
        try:  # the sidecar's access control, where it exists: agents act as themselves, operators as anyone
            from monmouth.auth import Principal, check_agent, require
        except ImportError:
            return self._loopback_router()

        router = APIRouter(prefix="/integrations/composio", tags=["composio"])
        agents_and_admins = require("agent")
        readers = require("read", "agent")

        @router.post("/execute")
        def execute(body: ExecuteIn, principal: Principal = agents_and_admins,
                    idempotency_key: str | None = Header(None, alias="Idempotency-Key")) -> JSONResponse:
            """Execute a Composio tool for an agent (a signed-in agent: itself); the call and its result become the
            agent's episodic memory."""
            if principal.role == "agent":
                if body.agent is not None:
                    check_agent(principal, body.agent, write=True)
                body = body.model_copy(update={"agent": principal.agent})
            return JSONResponse(self.execute(body, idempotency_key))

        @router.get("/calls/{call_id}")
        def call(call_id: str, principal: Principal = readers) -> dict[str, Any]:
            """A recorded call: its state and the answer given (agents: their own calls only)."""
            found = self.recorded(call_id)
            if principal.role == "agent" and found.pop("_agent") != principal.agent:
                raise _refuse(404, "call_id", f"no call {call_id}")
            found.pop("_agent", None)
            return found

        return router

    def recorded(self, call_id: str) -> dict[str, Any]:
        """A recorded call as JSON (with ``_agent``, the agent's address or ``None``).

        Raises:
            HTTPException: 503 while stopped, 404 for an unknown id.
        """
        rt = self.rt
        if rt is None:
            raise _refuse(503, "plugin", "the composio plugin is not running")
        row = rt.db.reader().execute("SELECT tool, state, response, error, attempts, created_at, finished_at, agent "
                                     "FROM composio_calls WHERE id = ?", (call_id,)).fetchone()
        if row is None:
            raise _refuse(404, "call_id", f"no call {call_id}")
        return {"id": call_id, "tool": row[0], "state": row[1], "response": json.loads(row[2]) if row[2] else None,
                "error": row[3], "attempts": row[4], "created_at": row[5], "finished_at": row[6],
                "_agent": "0x" + row[7].hex() if row[7] else None}

    def _loopback_router(self) -> APIRouter:
        """Routes for a sidecar without access control: loopback clients only (``loopback_only``)."""

        def loopback(request: Request) -> None:
            rt = self.rt
            if rt is None or getattr(rt.config, "loopback_only", True):
                host = request.client.host if request.client else None
                if not is_loopback(host):
                    raise _refuse(403, "client", "composio routes serve loopback clients only until "
                                                 "authentication is configured")

        router = APIRouter(prefix="/integrations/composio", tags=["composio"], dependencies=[Depends(loopback)])

        @router.post("/execute")
        def execute(body: ExecuteIn,
                    idempotency_key: str | None = Header(None, alias="Idempotency-Key")) -> JSONResponse:
            """Execute a Composio tool for an agent; the call and its result become its episodic memory."""
            return JSONResponse(self.execute(body, idempotency_key))

        @router.get("/calls/{call_id}")
        def call(call_id: str) -> dict[str, Any]:
            """A recorded call: its state and the answer given."""
            found = self.recorded(call_id)
            found.pop("_agent", None)
            return found

        return router


#: The instance the ``composio`` entry point registers.
plugin = ComposioPlugin()
