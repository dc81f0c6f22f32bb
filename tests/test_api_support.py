"""Support for the API, MCP and dashboard tests: a live, in-process sidecar (real runner, real HTTP on a loopback
port, real SQLite file) fed from a queue the test pushes notifications into. No tests here."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx

from monmouth.app import open_app
from monmouth.runner import Runner
from monmouth.siwe import sign_in_with_key
from monmouth.sources.base import Delivery, Source
from tests.conftest import wait_for


class QueueSource(Source):
    """A source whose notifications the test pushes (``await source.push(n)``); it never ends by itself."""

    kind = "replay"

    def __init__(self) -> None:
        self.send, self.recv = anyio.create_memory_object_stream[Any](1000)
        self.acked = 0

    async def push(self, notification: Any) -> None:
        await self.send.send(notification)

    async def stream(self, view: Any) -> AsyncIterator[Delivery]:  # type: ignore[override]
        async for n in self.recv:
            new = getattr(n, "new", None)
            if new is not None:
                self.source_head = max(self.source_head or 0, new.tip.number)
            yield Delivery(n)

    async def ack(self, delivery: Delivery, head: Any) -> None:
        self.acked += 1


@contextlib.asynccontextmanager
async def live_sidecar(tmp_path: Path, config: str, extra_plugins: dict[str, object] | None = None
                       ) -> AsyncIterator[tuple[Any, Runner, str, QueueSource]]:
    """``(app, runner, base_url, source)`` of a sidecar serving HTTP on a free loopback port."""
    cfg = tmp_path / "config.toml"
    cfg.write_text(config)
    app = open_app(cfg, extra_plugins=extra_plugins)
    source = QueueSource()
    runner = Runner(app, source, serve_http=True, watch_config=False)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner.run)
            await wait_for(lambda: runner.http_port is not None, timeout=30)
            yield app, runner, f"http://127.0.0.1:{runner.http_port}", source
            tg.cancel_scope.cancel()
    finally:
        app.close()


async def agent_token(base: str, key: str) -> str:
    """Sign in over HTTP (GET /auth/nonce, POST /auth/siwe) with ``key``; returns the bearer token."""
    async with httpx.AsyncClient(base_url=base) as c:
        n = (await c.get("/auth/nonce")).json()
        msg, sig = sign_in_with_key(key, n["nonce"], domain=n["domain"], chain_id=n["chain_id"])
        r = await c.post("/auth/siwe", json={"message": msg, "signature": sig})
        r.raise_for_status()
        return str(r.json()["token"])
