"""The Othentic integration (entry point ``othentic``): Monmouth as an AVS task performer.

For each checkpoint root (``trigger``: every ``every_blocks`` blocks or each memory checkpoint) a job is recorded
in the outbox inside the engine's transaction. The deliverer sends ``sendTask`` to the configured aggregator
(the Othentic client's JSON-RPC endpoint) with:

* ``proofOfTask``: the block's EigenDA cert (``0x`` hex) when ``proof_of_task = "eigenda_cert"`` and the eigenda
  plugin dispersed it (it waits up to ``cert_wait_s`` for it), else the memory global root (or, without the
  memory plugin, the block hash);
* ``data``: canonical JSON ``{"format": "monmouth.othentic.v1", "delivery_key", "block", "hash", "global_root",
  "eigenda_cert"}`` as bytes;
* ``taskDefinitionId``, the performer address, and the performer's signature (see :mod:`.client` for the
  encoding and its source).

The performer's private key comes from the environment variable named by ``private_key_env``. Tasks sent are
recorded in ``othentic_tasks`` (trimmed by block number).
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

import apsw
from eth_account import Account
from pydantic import Field, field_validator

from monmouth import hookimpl
from monmouth.chain import hx

from ..base import NO_SUCH_TABLE, IntegrationPlugin, Runtime
from ..config import TriggerConfig, check_env_name, secret
from ..errors import NotReady
from ..http import JsonRpc, RpcError, rpc_failure
from ..outbox import Job, dumps
from .client import send_task_params

FORMAT = "monmouth.othentic.v1"


class OthenticConfig(TriggerConfig):
    """``[plugins.othentic]``."""

    #: JSON-RPC endpoint of the Othentic aggregator (the Othentic client's RPC), e.g. ``http://127.0.0.1:8545``.
    aggregator_url: str = "http://127.0.0.1:8545"
    #: The task definition this performer executes (uint16).
    task_definition_id: int = Field(0, ge=0, le=0xFFFF)
    #: Environment variable holding the performer's private key (0x-hex).
    private_key_env: str = "OTHENTIC_PRIVATE_KEY"
    #: ``eigenda_cert``: prove the task with the block's EigenDA cert when the eigenda plugin is enabled
    #: (falling back to the root after ``cert_wait_s``); ``root``: always the memory global root.
    proof_of_task: Literal["eigenda_cert", "root"] = "eigenda_cert"
    cert_wait_s: float = Field(600.0, ge=0)

    @field_validator("private_key_env")
    @classmethod
    def _env_name(cls, v: str) -> str:
        return check_env_name(v)


SCHEMA = """
CREATE TABLE othentic_tasks (
    block_number INTEGER PRIMARY KEY,
    block_hash BLOB NOT NULL,
    proof_of_task TEXT NOT NULL,
    task_definition_id INTEGER NOT NULL,
    delivery_key TEXT NOT NULL,
    result TEXT,                    -- the aggregator's JSON-RPC result, JSON
    sent_at REAL NOT NULL
);
"""

#: :data:`SCHEMA` for PostgreSQL.
PG_SCHEMA = """
CREATE TABLE othentic_tasks (
    block_number BIGINT PRIMARY KEY,
    block_hash BYTEA NOT NULL,
    proof_of_task TEXT NOT NULL,
    task_definition_id BIGINT NOT NULL,
    delivery_key TEXT NOT NULL,
    result TEXT,
    sent_at DOUBLE PRECISION NOT NULL
);
"""


def eigenda_cert(conn: apsw.Connection, number: int, block_hash: bytes) -> str | None:
    """The EigenDA cert stored for block ``number`` with hash ``block_hash`` (hex), or ``None`` (none, or no eigenda
    tables)."""
    try:
        row = conn.execute("SELECT cert FROM eigenda_certs WHERE block_number = ? AND block_hash = ?",
                           (number, block_hash)).fetchone()
    except NO_SUCH_TABLE:
        return None
    return hx(row[0]) if row else None


class OthenticHandler:
    """Outbox jobs → signed ``sendTask`` calls."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.config: OthenticConfig = rt.config  # type: ignore[assignment]
        self.rpc = JsonRpc(rt.http, self.config.aggregator_url, "othentic aggregator")

    def _wants_cert(self) -> bool:
        return self.config.proof_of_task == "eigenda_cert" and self.rt.host.is_enabled("eigenda")

    def ready(self, job: Job) -> None:
        if not self._wants_cert() or eigenda_cert(self.rt.db.reader(), job.block_number, job.block_hash):
            return
        if time.time() - job.created_at < self.config.cert_wait_s:
            raise NotReady(f"waiting for the EigenDA cert of block {job.block_number}",
                           delay=min(2.0, self.config.poll_interval_s))

    def prepare(self, job: Job) -> bytes:
        cert = eigenda_cert(self.rt.db.reader(), job.block_number, job.block_hash) if self._wants_cert() else None
        root = job.payload.get("global_root")
        proof = cert or root or hx(job.block_hash)
        assert proof is not None
        data = dumps({"format": FORMAT, "delivery_key": job.key, "block": job.block_number,
                      "hash": hx(job.block_hash), "global_root": root, "eigenda_cert": cert}).encode()
        params = send_task_params(self.rt.state["private_key"], proof, data, self.config.task_definition_id)
        return dumps(params).encode()

    def deliver(self, job: Job, body: bytes) -> Any:
        params = json.loads(body)
        try:
            result = self.rpc.call("sendTask", params, id_=job.key)
        except RpcError as e:
            raise rpc_failure(e, "othentic aggregator sendTask") from e
        return {"result": result, "proof_of_task": params[0]}

    def on_delivered(self, conn: apsw.Connection, job: Job, result: Any) -> None:
        conn.execute("INSERT INTO othentic_tasks (block_number, block_hash, proof_of_task, task_definition_id, "
                     "delivery_key, result, sent_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (block_number) DO UPDATE "
                     "SET block_hash = excluded.block_hash, proof_of_task = excluded.proof_of_task, "
                     "task_definition_id = excluded.task_definition_id, delivery_key = excluded.delivery_key, "
                     "result = excluded.result, sent_at = excluded.sent_at",
                     (job.block_number, job.block_hash, result.get("proof_of_task"), self.config.task_definition_id,
                      job.key, dumps(result.get("result")), time.time()))


class OthenticPlugin(IntegrationPlugin):
    """The Othentic plugin (see the module docs)."""

    name = "othentic"
    Config = OthenticConfig
    SCHEMA = SCHEMA
    PG_SCHEMA = PG_SCHEMA
    TRIMMED = {"othentic_tasks": "block_number"}

    def on_start(self, rt: Runtime) -> None:
        cfg: OthenticConfig = rt.config  # type: ignore[assignment]
        key = secret(cfg.private_key_env, "plugins.othentic.private_key_env (the performer's private key)")
        try:
            rt.state["performer"] = Account.from_key(key).address
        except Exception as e:
            raise ValueError(f"plugins.othentic: {cfg.private_key_env} does not hold a valid private key") from e
        rt.state["private_key"] = key

    def make_handler(self, rt: Runtime) -> OthenticHandler:
        return OthenticHandler(rt)

    def extra_status(self, rt: Runtime) -> dict[str, Any]:
        row = rt.db.reader().execute("SELECT max(block_number), count(*) FROM othentic_tasks").fetchone()
        return {"performer": rt.state.get("performer"), "latest_task_block": row[0], "tasks": row[1]}

    @hookimpl(trylast=True)
    def monmouth_block_applied(self, conn: apsw.Connection, block: Any, notification: Any) -> None:
        self.enqueue_root_job(conn, block)


#: The instance the ``othentic`` entry point registers.
plugin = OthenticPlugin()
