"""The EigenDA integration (entry point ``eigenda``): memory roots posted for data availability.

After each memory checkpoint, or every ``every_blocks`` blocks (``trigger``), a job is recorded in the outbox
inside the engine's transaction. The deliverer builds the blob once — JSON with the block, the memory plugin's
global root at it, the checkpoint manifest (``checkpoint`` trigger) and, if ``include_exports``, every agent's
self-verifying export at that block — and disperses it through an EigenDA proxy
(``POST /put?commitment_mode=standard``). The cert is stored against the block in ``eigenda_certs`` (trimmed
by block number: a revert removes it). ``monmouth eigenda verify BLOCK`` fetches the blob back
(``GET /get/0x<cert>``) and checks it against the local roots.

Blob format (``format = "monmouth.eigenda.v1"``), canonical JSON (sorted keys, no spaces)::

    {"format": "monmouth.eigenda.v1", "delivery_key": "...", "block": {"number": N, "hash": "0x..."},
     "global_root": "0x..." | null, "agents": n | null, "checkpoint": {manifest} | null,
     "exports": {"0xagent": archive, ...}   # only with include_exports
    }
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import apsw
import click
from fastapi import APIRouter, HTTPException
from pydantic import Field

from monmouth import hookimpl
from monmouth.chain import hx
from monmouth.engine import canonical_hash
from monmouth.interfaces import AgentMemory

from ..base import IntegrationPlugin, Runtime, agent_memory, global_root
from ..config import TriggerConfig
from ..errors import IntegrationError
from ..outbox import Job, dumps
from .client import EigenDAProxy

FORMAT = "monmouth.eigenda.v1"


class EigenDAConfig(TriggerConfig):
    """``[plugins.eigenda]``."""

    #: Base URL of the EigenDA proxy.
    url: str = "http://127.0.0.1:3100"
    #: Add every agent's memory export (items, root, proofs) at the block to the blob.
    include_exports: bool = False
    #: Largest blob to disperse, bytes; exports are left out (``exports_omitted``) of a blob that would exceed it.
    max_blob_bytes: int = Field(16 * 1024 * 1024, ge=1024)


SCHEMA = """
CREATE TABLE eigenda_certs (
    block_number INTEGER PRIMARY KEY,
    block_hash BLOB NOT NULL,
    cert BLOB NOT NULL,             -- the DA certificate, as the proxy returned it
    blob_sha256 BLOB NOT NULL,
    blob_bytes INTEGER NOT NULL,
    global_root BLOB,
    delivery_key TEXT NOT NULL,
    dispersed_at REAL NOT NULL
);
"""

#: :data:`SCHEMA` with PostgreSQL's types.
PG_SCHEMA = """
CREATE TABLE eigenda_certs (
    block_number BIGINT PRIMARY KEY,
    block_hash BYTEA NOT NULL,
    cert BYTEA NOT NULL,
    blob_sha256 BYTEA NOT NULL,
    blob_bytes BIGINT NOT NULL,
    global_root BYTEA,
    delivery_key TEXT NOT NULL,
    dispersed_at DOUBLE PRECISION NOT NULL
);
"""


class EigenDAHandler:
    """Outbox jobs → blobs → certs."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.config: EigenDAConfig = rt.config  # type: ignore[assignment]
        self.proxy = EigenDAProxy(rt.http, self.config.url)

    def ready(self, job: Job) -> None:
        return None

    def prepare(self, job: Job) -> bytes:
        p = job.payload
        doc: dict[str, Any] = {"format": FORMAT, "delivery_key": job.key,
                               "block": {"number": job.block_number, "hash": hx(job.block_hash)},
                               "global_root": p.get("global_root"), "agents": p.get("agents"),
                               "checkpoint": p.get("checkpoint")}
        body = dumps(doc).encode()
        if self.config.include_exports:
            exports = self._exports(job.block_number)
            with_exports = dumps({**doc, "exports": exports}).encode()
            if len(with_exports) <= self.config.max_blob_bytes:
                body = with_exports
            else:
                body = dumps({**doc, "exports_omitted": f"{len(with_exports)} bytes exceed max_blob_bytes"}).encode()
        return body

    def _exports(self, block: int) -> dict[str, Any]:
        mem = self.rt.memory
        if mem is None:
            return {}
        out: dict[str, Any] = {}
        for a in mem.agents():
            try:
                out[a["address"]] = mem.export_agent(bytes.fromhex(a["address"][2:]), block)
            except Exception as e:  # pruned block, forgotten agent: say so in the blob
                out[a["address"]] = {"error": f"{type(e).__name__}: {e}"}
        return out

    def deliver(self, job: Job, body: bytes) -> dict[str, Any]:
        cert = self.proxy.put(body, job.key)
        return {"cert": hx(cert), "blob_sha256": hashlib.sha256(body).hexdigest(), "bytes": len(body)}

    def on_delivered(self, conn: apsw.Connection, job: Job, result: Any) -> None:
        root = job.payload.get("global_root")
        conn.execute(
            "INSERT INTO eigenda_certs (block_number, block_hash, cert, blob_sha256, blob_bytes, global_root, "
            "delivery_key, dispersed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (block_number) DO UPDATE SET "
            "block_hash = excluded.block_hash, cert = excluded.cert, blob_sha256 = excluded.blob_sha256, "
            "blob_bytes = excluded.blob_bytes, global_root = excluded.global_root, "
            "delivery_key = excluded.delivery_key, dispersed_at = excluded.dispersed_at",
            (job.block_number, job.block_hash, bytes.fromhex(result["cert"][2:]),
             bytes.fromhex(result["blob_sha256"]), result["bytes"], bytes.fromhex(root[2:]) if root else None,
             job.key, time.time()))


def cert_row(conn: apsw.Connection, block: int) -> dict[str, Any] | None:
    """The stored cert of ``block`` as JSON, or ``None``."""
    row = conn.execute("SELECT block_number, block_hash, cert, blob_sha256, blob_bytes, global_root, delivery_key, "
                       "dispersed_at FROM eigenda_certs WHERE block_number = ?", (block,)).fetchone()
    if row is None:
        return None
    return {"block": row[0], "hash": hx(row[1]), "cert": hx(row[2]), "blob_sha256": row[3].hex(),
            "blob_bytes": row[4], "global_root": hx(row[5]), "delivery_key": row[6], "dispersed_at": row[7]}


def verify_block(conn: apsw.Connection, proxy: EigenDAProxy, block: int,
                 memory: AgentMemory | None = None) -> dict[str, Any]:
    """Fetch the blob of ``block``'s stored cert from the proxy and check it against the local database.

    Checks: the blob's SHA-256 equals the one recorded at dispersal; it names this block and hash; that hash is
    the local canonical block's (while still in the engine's hash history); its global root equals the memory
    plugin's local root at the block (``memory``, the running memory plugin's
    :class:`monmouth.interfaces.AgentMemory`, while the block is retained; on SQLite and PostgreSQL alike). A check
    that cannot be made locally (no ``memory``, a pruned block) is ``None``.

    Returns ``{"block", "cert", "ok", "checks": {name: {"ok": bool | None, "detail": str}}}``.

    Raises:
        LookupError: no cert is stored for ``block``.
        IntegrationError: the proxy cannot be reached or does not know the cert.
    """
    stored = cert_row(conn, block)
    if stored is None:
        raise LookupError(f"no EigenDA cert is stored for block {block}")
    checks: dict[str, dict[str, Any]] = {}

    def check(name: str, ok: bool | None, detail: str) -> None:
        checks[name] = {"ok": ok, "detail": detail}

    blob = proxy.get(bytes.fromhex(stored["cert"][2:]))
    digest = hashlib.sha256(blob).hexdigest()
    check("blob_sha256", digest == stored["blob_sha256"], f"fetched {digest}, dispersed {stored['blob_sha256']}")
    try:
        doc = json.loads(blob)
        fmt_ok = isinstance(doc, dict) and doc.get("format") == FORMAT
    except (ValueError, UnicodeDecodeError):
        doc, fmt_ok = {}, False
    check("format", fmt_ok, f"blob format {doc.get('format') if isinstance(doc, dict) else None!r}")
    if fmt_ok:
        b = doc.get("block") or {}
        check("block", b.get("number") == block and b.get("hash") == stored["hash"],
              f"blob names #{b.get('number')} {b.get('hash')}, stored #{block} {stored['hash']}")
        canonical = canonical_hash(conn, block)
        if canonical is None:
            check("canonical", None, "block is older than the engine's hash history")
        else:
            check("canonical", hx(canonical) == b.get("hash"), f"local canonical hash {hx(canonical)}")
        local, _ = global_root(memory, block)
        if local is None:
            check("global_root", None if doc.get("global_root") else True,
                  "no local memory root at this block (memory plugin disabled, or root pruned)")
        else:
            check("global_root", doc.get("global_root") == local,
                  f"blob {doc.get('global_root')}, local {local}")
    ok = all(c["ok"] is not False for c in checks.values())
    return {"block": block, "cert": stored["cert"], "ok": ok, "checks": checks}


class EigenDAPlugin(IntegrationPlugin):
    """The EigenDA plugin (see the module docs)."""

    name = "eigenda"
    Config = EigenDAConfig
    SCHEMA = SCHEMA
    PG_SCHEMA = PG_SCHEMA
    TRIMMED = {"eigenda_certs": "block_number"}

    def make_handler(self, rt: Runtime) -> EigenDAHandler:
        return EigenDAHandler(rt)

    def extra_status(self, rt: Runtime) -> dict[str, Any]:
        row = rt.db.reader().execute("SELECT max(block_number), count(*) FROM eigenda_certs").fetchone()
        return {"latest_cert_block": row[0], "certs": row[1]}

    @hookimpl(trylast=True)
    def monmouth_block_applied(self, conn: apsw.Connection, block: Any, notification: Any) -> None:
        self.enqueue_root_job(conn, block)

    @hookimpl
    def monmouth_http_router(self) -> APIRouter:
        router = APIRouter(prefix="/integrations/eigenda", tags=["eigenda"])

        @router.get("/certs/{block}")
        def cert(block: int) -> dict[str, Any]:
            """The DA certificate stored for ``block`` (404 if none)."""
            rt = self.rt
            if rt is None:
                raise HTTPException(503, "the eigenda plugin is not running")
            found = cert_row(rt.db.reader(), block)
            if found is None:
                raise HTTPException(404, {"field": "block", "error": f"no EigenDA cert for block {block}"})
            return found

        return router

    @hookimpl
    def monmouth_register_commands(self, cli: click.Group) -> None:
        @click.group("eigenda")
        def group() -> None:
            """EigenDA integration: certs of memory roots."""

        @group.command("verify")
        @click.argument("block", type=int)
        @click.option("--config", "config_path", type=click.Path(path_type=Path), default=None)
        def verify(block: int, config_path: Path | None) -> None:
            """Fetch the blob of BLOCK's cert from the proxy and check it against the local roots (exit 1 on a
            mismatch, 2 if it cannot be checked). Opens the sidecar offline beside a running one (as ``monmouth
            serve`` does); the global root is checked when the memory plugin is enabled in the config."""
            import httpx

            from monmouth.app import open_app
            from monmouth.errors import MonmouthError

            try:
                app = open_app(config_path, serve=True)
            except MonmouthError as e:
                raise click.ClickException(str(e)) from e
            try:
                section = app.settings.plugins.get("eigenda")
                cfg = section.config if section is not None and section.config is not None else EigenDAConfig()
                with httpx.Client(timeout=cfg.timeout_s) as client:
                    report = verify_block(app.db.reader(), EigenDAProxy(client, cfg.url), block,
                                          agent_memory(app.host))
            except (LookupError, IntegrationError) as e:
                click.echo(f"error: {e}", err=True)
                sys.exit(2)
            finally:
                app.close()
            click.echo(json.dumps(report, indent=2))
            sys.exit(0 if report["ok"] else 1)

        cli.add_command(group, "eigenda")


#: The instance the ``eigenda`` entry point registers.
plugin = EigenDAPlugin()
