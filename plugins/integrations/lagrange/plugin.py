"""The Lagrange integration (entry point ``lagrange``): queries proven by the ZK coprocessor.

Every ``every_blocks`` blocks (or each memory checkpoint, ``trigger``) a query request is recorded in the outbox
inside the engine's transaction. The deliverer turns it into a transaction calling the configured registry's
``request(queryHash, placeholders, startBlock, endBlock)`` (paying ``gasFee()``), signs it with eth-account and
sends it with ``eth_sendRawTransaction`` to ``rpc_url``.

Exactly once on chain: the signed transaction (with its nonce) is persisted before it is first sent, and every
retry re-sends the same bytes, so the node either already knows it (``already known``), has mined it (``nonce
too low`` and a receipt for our hash), or accepts it now. Only when the nonce was taken by another transaction is
a new one signed.

Results are read from the chain, not from the deliverer: the chain hook decodes the registry's ``NewRequest`` and
``NewResponse`` events (see :mod:`.abi`) whose client is the performer's address into ``lagrange_requests`` and
``lagrange_results`` — journaled tables, so a reorg reverts them exactly.

Placeholders (``placeholders`` in the config): each is a 0x-prefixed 32-byte hex value, or one of
``$global_root`` (the memory plugin's global root at the block), ``$block_number``, ``$block_hash``.
"""

from __future__ import annotations

import json
import re
from typing import Any

import apsw
from eth_account import Account
from eth_utils import to_checksum_address
from fastapi import APIRouter, HTTPException
from pydantic import Field, field_validator

from monmouth import hookimpl
from monmouth.chain import check_address, hx

from ..base import IntegrationPlugin, Runtime
from ..config import TriggerConfig, check_env_name, secret
from ..errors import MalformedResponse, PermanentError, StaleRequest
from ..http import JsonRpc, RpcError, rpc_failure
from ..outbox import Job, dumps
from .abi import GAS_FEE_SELECTOR, NEW_REQUEST_TOPIC, NEW_RESPONSE_TOPIC, decode_new_request, decode_new_response
from .abi import encode_request as _encode_request

_B32 = re.compile(r"^0x[0-9a-fA-F]{64}$")
_TOKENS = ("$global_root", "$block_number", "$block_hash")


class LagrangeConfig(TriggerConfig):
    """``[plugins.lagrange]``."""

    #: JSON-RPC endpoint of the chain the registry lives on.
    rpc_url: str = "http://127.0.0.1:8545"
    #: Address of the Lagrange query registry (``LPNRegistryV1`` / ``QueryManager``). Required.
    registry: str = ""
    #: Environment variable holding the private key that signs the request transactions (0x-hex).
    private_key_env: str = "LAGRANGE_PRIVATE_KEY"
    #: The registered query's hash (``queryHash``, 0x + 64 hex). Required.
    query_hash: str = ""
    #: ``placeholders``: 0x + 64 hex each, or ``$global_root``, ``$block_number``, ``$block_hash``.
    placeholders: list[str] = []
    #: The query covers the ``range_blocks`` blocks ending at the triggering block.
    range_blocks: int = Field(1, ge=1, le=50_000)
    #: Gas limit of a request transaction.
    gas_limit: int = Field(500_000, ge=21_000)
    #: Value sent with a request, wei; unset: ask the registry's ``gasFee()``.
    fee_wei: int | None = Field(None, ge=0)
    #: Chain id for signing; unset: ``eth_chainId``.
    chain_id: int | None = Field(None, ge=1)

    @field_validator("private_key_env")
    @classmethod
    def _env_name(cls, v: str) -> str:
        return check_env_name(v)

    @field_validator("registry")
    @classmethod
    def _registry(cls, v: str) -> str:
        return check_address(v) if v else v

    @field_validator("query_hash")
    @classmethod
    def _query_hash(cls, v: str) -> str:
        if v and not _B32.match(v):
            raise ValueError(f"{v!r} is not 0x + 64 hex digits")
        return v

    @field_validator("placeholders")
    @classmethod
    def _placeholders(cls, v: list[str]) -> list[str]:
        for p in v:
            if p not in _TOKENS and not _B32.match(p):
                raise ValueError(f"{p!r} is neither 0x + 64 hex digits nor one of {', '.join(_TOKENS)}")
        return v


SCHEMA = """
CREATE TABLE lagrange_requests (
    request_id TEXT PRIMARY KEY,    -- uint256, decimal
    tx_hash BLOB NOT NULL,
    block_number INTEGER NOT NULL,
    block_hash BLOB NOT NULL,
    query_hash BLOB NOT NULL,
    placeholders TEXT NOT NULL,     -- JSON list of 0x hex
    start_block INTEGER NOT NULL,
    end_block INTEGER NOT NULL,
    fee_wei TEXT NOT NULL
);
CREATE INDEX lagrange_requests_tx ON lagrange_requests (tx_hash);
CREATE TABLE lagrange_results (
    request_id TEXT PRIMARY KEY,
    tx_hash BLOB NOT NULL,
    block_number INTEGER NOT NULL,
    block_hash BLOB NOT NULL,
    total_matched_rows TEXT NOT NULL,
    rows TEXT NOT NULL,             -- JSON list of 0x hex rows
    error INTEGER NOT NULL          -- QueryErrorCode: 0 NoError, 1 ComputationOverflow
);
"""

#: :data:`SCHEMA` with PostgreSQL's types.
PG_SCHEMA = """
CREATE TABLE lagrange_requests (
    request_id TEXT PRIMARY KEY,
    tx_hash BYTEA NOT NULL,
    block_number BIGINT NOT NULL,
    block_hash BYTEA NOT NULL,
    query_hash BYTEA NOT NULL,
    placeholders TEXT NOT NULL,
    start_block BIGINT NOT NULL,
    end_block BIGINT NOT NULL,
    fee_wei TEXT NOT NULL
);
CREATE INDEX lagrange_requests_tx ON lagrange_requests (tx_hash);
CREATE TABLE lagrange_results (
    request_id TEXT PRIMARY KEY,
    tx_hash BYTEA NOT NULL,
    block_number BIGINT NOT NULL,
    block_hash BYTEA NOT NULL,
    total_matched_rows TEXT NOT NULL,
    rows TEXT NOT NULL,
    error INTEGER NOT NULL
);
"""


def _b32(v: Any) -> bytes:
    if isinstance(v, bytes):
        return v.rjust(32, b"\x00")
    if isinstance(v, int):
        return v.to_bytes(32, "big")
    return bytes.fromhex(str(v)[2:]).rjust(32, b"\x00")


class LagrangeHandler:
    """Outbox jobs → signed ``request(...)`` transactions."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.config: LagrangeConfig = rt.config  # type: ignore[assignment]
        self.rpc = JsonRpc(rt.http, self.config.rpc_url, "lagrange rpc")

    def _call(self, method: str, *params: Any) -> Any:
        try:
            return self.rpc.call(method, list(params))
        except RpcError as e:
            raise rpc_failure(e, f"lagrange rpc {method}") from e

    def _qty(self, method: str, *params: Any) -> int:
        v = self._call(method, *params)
        if not isinstance(v, str) or not v.startswith("0x"):
            raise MalformedResponse(f"lagrange rpc {method}: expected a hex quantity, got {v!r}"[:200])
        return int(v, 16)

    def placeholders(self, job: Job) -> list[bytes]:
        out = []
        for p in self.config.placeholders:
            if p == "$global_root":
                out.append(_b32(job.payload.get("global_root") or b""))
            elif p == "$block_number":
                out.append(_b32(job.block_number))
            elif p == "$block_hash":
                out.append(job.block_hash)
            else:
                out.append(_b32(p))
        return out

    def ready(self, job: Job) -> None:
        return None

    def prepare(self, job: Job) -> bytes:
        cfg = self.config
        end = job.block_number
        start = max(0, end - cfg.range_blocks + 1)
        data = _encode_request(bytes.fromhex(cfg.query_hash[2:]), self.placeholders(job), start, end)
        if cfg.fee_wei is not None:
            fee = cfg.fee_wei
        else:
            raw = self._call("eth_call", {"to": cfg.registry, "data": "0x" + GAS_FEE_SELECTOR.hex()}, "latest")
            try:
                fee = int(raw, 16)
            except (TypeError, ValueError):
                raise MalformedResponse(f"lagrange registry gasFee(): not a uint256: {raw!r}"[:200]) from None
        sender = self.rt.state["address"]
        chain_id = cfg.chain_id or self._qty("eth_chainId")
        nonce = self._qty("eth_getTransactionCount", sender, "pending")
        latest = self._call("eth_getBlockByNumber", "latest", False)
        base = int(latest.get("baseFeePerGas") or "0x0", 16) if isinstance(latest, dict) else 0
        try:
            tip = self._qty("eth_maxPriorityFeePerGas")
        except (PermanentError, MalformedResponse):
            tip = 10**9
        tx = {"type": 2, "chainId": chain_id, "nonce": nonce, "to": to_checksum_address(cfg.registry), "value": fee,
              "data": data, "gas": cfg.gas_limit, "maxPriorityFeePerGas": tip, "maxFeePerGas": 2 * base + tip}
        signed = Account.sign_transaction(tx, self.rt.state["private_key"])
        return dumps({"raw": "0x" + bytes(signed.raw_transaction).hex(), "hash": "0x" + bytes(signed.hash).hex(),
                      "nonce": nonce, "from": sender, "start_block": start, "end_block": end, "fee": fee}).encode()

    def deliver(self, job: Job, body: bytes) -> Any:
        tx = json.loads(body)
        result = {"tx_hash": tx["hash"], "nonce": tx["nonce"], "start_block": tx["start_block"],
                  "end_block": tx["end_block"]}
        try:
            got = self.rpc.call("eth_sendRawTransaction", [tx["raw"]])
        except RpcError as e:
            msg = e.message.lower()
            if "already known" in msg or "known transaction" in msg or "already imported" in msg:
                return result
            if "nonce too low" in msg or ("nonce" in msg and "low" in msg):
                if self._known(tx["hash"]):
                    return result
                raise StaleRequest(f"lagrange: nonce {tx['nonce']} was used by another transaction; re-signing") \
                    from e
            raise rpc_failure(e, "lagrange rpc eth_sendRawTransaction") from e
        if not isinstance(got, str) or got.lower() != tx["hash"].lower():
            raise MalformedResponse(f"lagrange rpc eth_sendRawTransaction: returned {got!r}, expected {tx['hash']}")
        return result

    def _known(self, tx_hash: str) -> bool:
        return self._call("eth_getTransactionByHash", tx_hash) is not None

    def on_delivered(self, conn: apsw.Connection, job: Job, result: Any) -> None:
        return None


class LagrangePlugin(IntegrationPlugin):
    """The Lagrange plugin (see the module docs)."""

    name = "lagrange"
    Config = LagrangeConfig
    SCHEMA = SCHEMA
    PG_SCHEMA = PG_SCHEMA

    def on_start(self, rt: Runtime) -> None:
        cfg: LagrangeConfig = rt.config  # type: ignore[assignment]
        if not cfg.registry:
            raise ValueError("plugins.lagrange.registry: required (the query registry's address)")
        if not cfg.query_hash:
            raise ValueError("plugins.lagrange.query_hash: required (0x + 64 hex digits)")
        key = secret(cfg.private_key_env, "plugins.lagrange.private_key_env (the requester's private key)")
        try:
            address = Account.from_key(key).address
        except Exception as e:
            raise ValueError(f"plugins.lagrange: {cfg.private_key_env} does not hold a valid private key") from e
        rt.state.update(private_key=key, address=address, client=bytes.fromhex(address[2:]),
                        registry=bytes.fromhex(cfg.registry[2:]))

    def make_handler(self, rt: Runtime) -> LagrangeHandler:
        return LagrangeHandler(rt)

    def extra_status(self, rt: Runtime) -> dict[str, Any]:
        conn = rt.db.reader()
        req = conn.execute("SELECT count(*) FROM lagrange_requests").fetchone()[0]
        res = conn.execute("SELECT count(*) FROM lagrange_results").fetchone()[0]
        return {"requester": rt.state.get("address"), "requests_on_chain": req, "results": res}

    # -- chain hooks ---------------------------------------------------------------------------------------
    @hookimpl(trylast=True)
    def monmouth_block_applied(self, conn: apsw.Connection, block: Any, notification: Any) -> None:
        rt = self.runtime()
        self.enqueue_root_job(conn, block)
        registry, client = rt.state["registry"], rt.state["client"]
        for tx, receipt in zip(block.transactions, block.receipts, strict=False):
            for lg in receipt.logs:
                if lg.address != registry or not lg.topics:
                    continue
                if lg.topics[0] == NEW_REQUEST_TOPIC:
                    self._request_event(conn, block, tx.hash, lg, client)
                elif lg.topics[0] == NEW_RESPONSE_TOPIC:
                    self._response_event(conn, block, tx.hash, lg, client)

    def _request_event(self, conn: apsw.Connection, block: Any, tx_hash: bytes, lg: Any, client: bytes) -> None:
        try:
            ev = decode_new_request(lg.topics, lg.data)
        except Exception:
            return  # a malformed log of the registry is not ours to index
        if ev["client"] != client:
            return
        conn.execute("INSERT INTO lagrange_requests (request_id, tx_hash, block_number, block_hash, query_hash, "
                     "placeholders, start_block, end_block, fee_wei) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                     "ON CONFLICT (request_id) DO UPDATE SET tx_hash = excluded.tx_hash, "
                     "block_number = excluded.block_number, block_hash = excluded.block_hash, "
                     "query_hash = excluded.query_hash, placeholders = excluded.placeholders, "
                     "start_block = excluded.start_block, end_block = excluded.end_block, fee_wei = excluded.fee_wei",
                     (str(ev["request_id"]), tx_hash, block.number, block.hash, ev["query_hash"],
                      json.dumps([hx(p) for p in ev["placeholders"]]), ev["start_block"], ev["end_block"],
                      str(ev["fee"])))

    def _response_event(self, conn: apsw.Connection, block: Any, tx_hash: bytes, lg: Any, client: bytes) -> None:
        try:
            ev = decode_new_response(lg.topics, lg.data)
        except Exception:
            return
        if ev["client"] != client:
            return
        conn.execute("INSERT INTO lagrange_results (request_id, tx_hash, block_number, block_hash, "
                     "total_matched_rows, rows, error) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (request_id) DO UPDATE "
                     "SET tx_hash = excluded.tx_hash, block_number = excluded.block_number, "
                     "block_hash = excluded.block_hash, total_matched_rows = excluded.total_matched_rows, "
                     "rows = excluded.rows, error = excluded.error",
                     (str(ev["request_id"]), tx_hash, block.number, block.hash, str(ev["total_matched_rows"]),
                      json.dumps([hx(r) for r in ev["rows"]]), ev["error"]))

    # -- surfaces ------------------------------------------------------------------------------------------
    @hookimpl
    def monmouth_http_router(self) -> APIRouter:
        router = APIRouter(prefix="/integrations/lagrange", tags=["lagrange"])

        def conn() -> apsw.Connection:
            if self.rt is None:
                raise HTTPException(503, "the lagrange plugin is not running")
            return self.rt.db.reader()

        @router.get("/requests")
        def requests(limit: int = 50) -> list[dict[str, Any]]:
            """Our query requests seen on chain, newest first, with their results when they arrived."""
            rows: list[Any] = conn().execute(
                "SELECT q.request_id, q.tx_hash, q.block_number, q.query_hash, q.placeholders, q.start_block, "
                "q.end_block, r.block_number, r.total_matched_rows, r.rows, r.error FROM lagrange_requests q "
                "LEFT JOIN lagrange_results r USING (request_id) ORDER BY q.block_number DESC LIMIT ?",
                (max(1, min(limit, 1000)),)).fetchall()
            return [{"request_id": r[0], "tx_hash": hx(r[1]), "block": r[2], "query_hash": hx(r[3]),
                     "placeholders": json.loads(r[4]), "start_block": r[5], "end_block": r[6],
                     "result": None if r[7] is None else {"block": r[7], "total_matched_rows": r[8],
                                                          "rows": json.loads(r[9]), "error": r[10]}}
                    for r in rows]

        @router.get("/results/{request_id}")
        def result(request_id: str) -> dict[str, Any]:
            """The result of request ``request_id`` (404 until its ``NewResponse`` is on the canonical chain)."""
            r = conn().execute("SELECT block_number, block_hash, tx_hash, total_matched_rows, rows, error "
                               "FROM lagrange_results WHERE request_id = ?", (request_id,)).fetchone()
            if r is None:
                raise HTTPException(404, {"field": "request_id", "error": f"no result for request {request_id}"})
            return {"request_id": request_id, "block": r[0], "block_hash": hx(r[1]), "tx_hash": hx(r[2]),
                    "total_matched_rows": r[3], "rows": json.loads(r[4]), "error": r[5]}

        return router


#: The instance the ``lagrange`` entry point registers.
plugin = LagrangePlugin()
