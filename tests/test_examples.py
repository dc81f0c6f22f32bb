"""The README's example plugin works as documented, against a real node with a real reorg, on SQLite and on
PostgreSQL (its one set of SQL runs on both)."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import pytest
from eth_abi import encode as abi_encode

from monmouth.app import open_app
from monmouth.runner import Runner
from monmouth.sources.rpc import RpcSource
from tests.conftest import PG_ENV, rpc_config, wait_for

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.anyio, pytest.mark.anvil]


def test_readme_shows_the_example_verbatim():
    readme = (ROOT / "README.md").read_text()
    code = (ROOT / "examples" / "big_transfers.py").read_text()
    body = code.split('"""', 2)[2].strip()
    assert body in readme


async def test_example_plugin_follows_a_reorg(tmp_path, anvil, storage_of):
    cfg = tmp_path / "config.toml"
    target = storage_of("db.sqlite")
    storage = f'url = "{target}"' if isinstance(target, str) else 'path = "db.sqlite"'
    cfg.write_text(f"""
[source]
url = "{anvil.url}"
poll_interval = 0.05
[storage]
{storage}
[http]
port = 0
[plugins.big_transfers]
enabled = true
module = "{ROOT / 'examples' / 'big_transfers.py'}"
""")
    app = open_app(cfg, environ=PG_ENV if isinstance(target, str) else {})
    assert app.host.is_enabled("big_transfers"), app.host.errors
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


class Token:
    """A real OpenZeppelin ERC-20 (monmouth_demo's DemoToken) on anvil with a supply of 2^256 - 1 held by
    account 0."""

    def __init__(self, anvil, workdir: Path) -> None:
        from monmouth_demo import compile_token, node_modules

        art = compile_token(node_modules(), workdir)
        self.anvil, self.acct = anvil, anvil.accounts
        ctor = abi_encode(["string", "string", "uint8", "uint256", "address"],
                          ["Wide", "WIDE", 18, 2**256 - 1, self.acct[0]])
        anvil.rpc("eth_sendTransaction", {"from": self.acct[0], "data": art["bytecode"] + ctor.hex(),
                                          "gas": hex(8_000_000)})
        anvil.mine()
        (deployed,) = anvil.rpc("eth_getBlockByNumber", "latest", True)["transactions"]
        self.address = anvil.rpc("eth_getTransactionReceipt", deployed["hash"])["contractAddress"]

    def transfer(self, frm: int, to: int, amount: int) -> dict:
        from monmouth.chain import calldata

        return {"from": self.acct[frm], "to": self.address, "gas": hex(100_000),
                "data": calldata("transfer(address,uint256)", self.acct[to], amount)}

    def send(self, frm: int, to: int, amount: int) -> None:
        self.anvil.rpc("eth_sendTransaction", self.transfer(frm, to, amount))

    def balance_of(self, holder: str) -> int:
        from monmouth.chain import calldata

        raw = self.anvil.rpc("eth_call", {"to": self.address, "data": calldata("balanceOf(address)", holder)},
                             "latest")
        return int(raw, 16)

    async def check(self, http: httpx.AsyncClient) -> dict[str, str]:
        """The plugin's balances equal balanceOf() for every holder, and every account with a balance is held."""
        held = (await http.get(f"/erc20_balances/{self.address}")).json()
        assert held == {a.lower(): str(self.balance_of(a)) for a in held}
        assert {a.lower() for a in self.acct if self.balance_of(a)} == {a for a, b in held.items() if b != "0"}
        return held


def erc20_config(url: str, storage: Path | str | None = None) -> str:
    """config.toml for the erc20 example following ``url``; ``storage`` a ``postgresql://`` URL or SQLite."""
    text = rpc_config(url, extra=f'[plugins.erc20_balances]\nenabled = true\nmodule = "{ROOT / "examples" / "erc20_balances.py"}"\n')
    return text.replace('path = "db.sqlite"', f'url = "{storage}"') if isinstance(storage, str) else text


async def test_erc20_balances_equal_balance_of_through_reorgs(tmp_path, anvil, storage_of):
    """examples/erc20_balances.py on a real OpenZeppelin ERC-20 with a supply of 2^256 - 1: after transfers across
    2^64 and 2^255 and reorgs of depth 1 to 3 that carry token transfers of their own, every balance the plugin
    holds equals ``balanceOf()`` on the node. On SQLite and PostgreSQL: the same SQL, u256 functions included."""
    token = Token(anvil, tmp_path)
    acct = anvil.accounts
    cfg = tmp_path / "config.toml"
    target = storage_of("db.sqlite")
    cfg.write_text(erc20_config(anvil.url, target))
    app = open_app(cfg, environ=PG_ENV if isinstance(target, str) else {})
    assert app.host.is_enabled("erc20_balances"), app.host.errors
    runner = Runner(app, RpcSource(anvil.url, poll_interval=0.05), watch_config=False)

    def synced():
        head = app.engine.head
        return head is not None and "0x" + head.hash.hex() == anvil.head()[1]

    async def check(http: httpx.AsyncClient) -> dict[str, str]:
        await wait_for(synced)
        return await token.check(http)

    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run)
        await wait_for(lambda: runner.http_port is not None)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{runner.http_port}") as http:
            for frm, to, amount in [(0, 1, 2**255), (1, 2, 2**64 + 1), (0, 3, 2**64 - 1), (2, 3, 12345)]:
                token.send(frm, to, amount)
                anvil.mine()
            held = await check(http)
            assert held[acct[1].lower()] == str(2**255 - 2**64 - 1)
            assert held[acct[0].lower()] == str(2**256 - 1 - 2**255 - (2**64 - 1))
            for depth, (frm, to, amount) in zip((1, 3, 2), [(1, 4, 2**200), (3, 0, 7), (0, 5, 2**255 - 2**70)],
                                               strict=True):
                token.send(0, 6, depth)
                anvil.mine(2)
                await wait_for(synced)
                anvil.rpc("anvil_reorg", depth, [[token.transfer(frm, to, amount), 0]])
                held = await check(http)
                assert int(held[acct[to].lower()]) >= amount  # the reorg's own transfer is in
            assert acct[4].lower() not in held  # its transfer was in a block the depth-3 reorg dropped
            assert held[acct[5].lower()] == str(2**255 - 2**70)
            assert (await http.get("/erc20_balances/0x12")).status_code == 422
        tg.cancel_scope.cancel()
    app.close()


async def test_erc20_balances_disabled_for_a_while_catch_up_when_re_enabled(tmp_path, anvil):
    """The issue's case: the plugin is disabled by a config edit, the chain goes on (token transfers, a reorg) for
    7 blocks, and it is re-enabled: it catches up from the node's history (reported in /status while it does) and
    its balances equal balanceOf() again, while the chain keeps moving."""
    token = Token(anvil, tmp_path)
    cfg = tmp_path / "config.toml"
    text = erc20_config(anvil.url)
    cfg.write_text(text)
    app = open_app(cfg)
    runner = Runner(app, RpcSource(anvil.url, poll_interval=0.05), watch_config=True)
    runner.catchup.batch = 2  # small, slow steps: the catch-up interleaves with live blocks
    history = runner.catchup.history
    assert history is not None

    async def slow_history(first, last, head):
        await anyio.sleep(0.3)
        return await history(first, last, head)

    runner.catchup.history = slow_history

    def synced():
        head = app.engine.head
        return head is not None and "0x" + head.hash.hex() == anvil.head()[1]

    def progress() -> dict:
        return runner.status()["progress"]["erc20_balances"]

    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run)
        await wait_for(lambda: runner.http_port is not None)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{runner.http_port}") as http:
            for i in range(3):
                token.send(0, 1 + i, 10**18 * (i + 1))
                anvil.mine()
            await wait_for(synced)
            await token.check(http)
            off_at = app.engine.head.number
            cfg.write_text(text.replace("enabled = true", "enabled = false"))
            await wait_for(lambda: progress()["state"] == "off")
            for i in range(6):
                token.send(1 + i % 3, 4 + i % 4, 10**17 * (i + 1))
                token.send(0, 2, 2**200 + i)
                anvil.mine()
            anvil.rpc("anvil_reorg", 2, [[token.transfer(0, 8, 2**255), 0]])
            anvil.mine()
            await wait_for(synced)
            assert progress()["last"] == off_at and progress()["remaining"] == app.engine.head.number - off_at >= 7
            cfg.write_text(text)
            await wait_for(lambda: "erc20_balances" in runner.catchup.behind)
            r = await http.get(f"/erc20_balances/{token.address}")  # served meanwhile, saying how far behind
            assert r.status_code == 200 and int(r.headers["x-monmouth-behind"]) > 0
            assert int(r.headers["x-monmouth-indexed-through"]) < app.engine.head.number
            during = progress()
            assert during["state"] == "catching_up" and during["remaining"] > 0 and during["first"] is None
            for i in range(3):  # the chain goes on during the catch-up
                token.send(2, 9, 1000 + i)
                anvil.mine()
            await wait_for(lambda: progress()["state"] == "live", what="caught up")
            await wait_for(synced)
            held = await token.check(http)
            assert held[anvil.accounts[8].lower()] == str(2**255)
            assert progress()["remaining"] == 0 and progress()["error"] is None
            r = await http.get(f"/erc20_balances/{token.address}")
            assert "x-monmouth-behind" not in r.headers
        tg.cancel_scope.cancel()
    app.close()
