"""The README's example plugin works as documented, against a real node with a real reorg."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import pytest

from monmouth.app import open_app
from monmouth.runner import Runner
from monmouth.sources.rpc import RpcSource
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.anyio, pytest.mark.anvil]


def test_readme_shows_the_example_verbatim():
    readme = (ROOT / "README.md").read_text()
    code = (ROOT / "examples" / "big_transfers.py").read_text()
    body = code.split('"""', 2)[2].strip()
    assert body in readme


async def test_example_plugin_follows_a_reorg(tmp_path, anvil):
    cfg = tmp_path / "config.toml"
    cfg.write_text(f"""
[source]
url = "{anvil.url}"
poll_interval = 0.05
[storage]
path = "db.sqlite"
[http]
port = 0
[plugins.big_transfers]
enabled = true
module = "{ROOT / 'examples' / 'big_transfers.py'}"
""")
    app = open_app(cfg)
    source = RpcSource(anvil.url, poll_interval=0.05)
    runner = Runner(app, source, watch_config=False)

    def synced():
        head = app.engine.head
        return head is not None and "0x" + head.hash.hex() == anvil.head()[1]

    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run)
        await wait_for(lambda: runner.http_port is not None)
        big = anvil.send(1, 2, 2 * 10**18)
        anvil.send(3, 4, 10**17)
        anvil.mine()
        await wait_for(synced)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{runner.http_port}") as http:
            rows = (await http.get("/big_transfers")).json()
            assert rows == [{"tx": big, "block": 1, "wei": str(2 * 10**18)}]
            anvil.reorg(1, txs=0)  # block 1 is replaced by an empty block
            await wait_for(synced)
            assert (await http.get("/big_transfers")).json() == []
        tg.cancel_scope.cancel()
    app.close()
