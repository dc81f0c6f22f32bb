"""The dashboard in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright's Python package,
against a live sidecar that ingests while the page is open. Checks that the numbers update (head, notifications/s,
reorgs with their depth), plugin states and the embedding backlog show, a RAG search returns cited hits, and the
memory browser shows an agent's items and root. Saves a screenshot (``dashboard.png`` in the test's tmp dir, and in
``$MONMOUTH_ARTIFACTS`` when set)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import anyio
import httpx
import pytest

from monmouth.types import ChainCommitted, ChainReorged
from monmouth_memory.plugin import MemoryPlugin
from tests.chains import chain, extend, load_mainnet_blocks, mainnet_shaped
from tests.conftest import wait_for
from tests.test_api_support import live_sidecar

pytestmark = pytest.mark.anyio

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
AGENT = "0x" + "ab" * 20


def config(tmp_path: Path) -> str:
    return f"""
[storage]
path = "{tmp_path / 'db.sqlite'}"
synchronous = "NORMAL"

[http]
port = 0

[plugins.rag]
enabled = true
worker = false
chunk_tokens = 64
chunk_overlap = 16

[plugins.memory]
enabled = true
embed = false
key_dir = "{tmp_path / 'keys'}"
agents = ["{AGENT}"]
"""


def browser_path() -> str:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium); the dashboard "
                    "test drives it headless through Playwright's Python package (never `playwright install`)")
    try:
        import playwright  # noqa: F401
    except ImportError:
        pytest.fail("the playwright Python package is missing: pip install -e '.[test]'")
    return CHROMIUM


async def text(page, sel: str) -> str:
    return (await page.text_content(sel) or "").strip()


async def test_dashboard_live_in_headless_chromium(tmp_path):
    from playwright.async_api import async_playwright

    exe = browser_path()
    first = list(mainnet_shaped(load_mainnet_blocks()[-3:], 2, txs_per_block=20))
    async with live_sidecar(tmp_path, config(tmp_path), {"memory": MemoryPlugin(workers=False)}) as (app, runner,
                                                                                                     base, source):
        await source.push(ChainCommitted(chain(first)))
        await wait_for(lambda: app.engine.head is not None and app.engine.head.number == first[-1].number)
        async with httpx.AsyncClient(base_url=base) as http:  # loopback operator
            r = await http.post(f"/memory/agents/{AGENT}/items",
                                json={"kind": "semantic", "content": "rebalance the pool every Monday"})
            assert r.status_code == 201, r.text
        tip = first[-1]
        anchor = extend(tip, 1, n_txs=1)
        await source.push(ChainCommitted(chain(anchor)))
        tip = anchor[-1]

        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=exe, args=ARGS, headless=True)
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 1000})
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                await page.goto(f"{base}/dashboard")
                await page.wait_for_function(f"document.getElementById('head').textContent === '{tip.number}'",
                                             timeout=15_000)
                assert await text(page, "#conn") == "live"
                # plugin states and the embedding backlog (the rag worker is off here: everything waits)
                await page.wait_for_selector("#plugins tr[data-plugin='rag'] .state-enabled", timeout=10_000)
                assert await text(page, "#plugins tr[data-plugin='memory'] td:nth-child(2)") == "enabled"
                assert int(await text(page, "#backlog")) > 0

                # Live: ingest a block a second for a few seconds, then a reorg of depth 2.
                for _ in range(4):
                    nxt = extend(tip, 1, n_txs=2, salt="live")
                    await source.push(ChainCommitted(chain(nxt)))
                    tip = nxt[-1]
                    await anyio.sleep(0.6)
                await page.wait_for_function(f"document.getElementById('head').textContent === '{tip.number}'",
                                             timeout=10_000)
                await page.wait_for_function("parseFloat(document.getElementById('nps').textContent) > 0",
                                             timeout=10_000)
                parent = app.engine.canonical(tip.number - 2).as_block()
                old = [app.engine.canonical(n).as_block() for n in (tip.number - 1, tip.number)]
                fork = extend(parent, 3, n_txs=1, salt="fork")
                await source.push(ChainReorged(chain(old), chain(fork)))
                tip = fork[-1]
                await page.wait_for_function(f"document.getElementById('head').textContent === '{tip.number}'",
                                             timeout=10_000)
                await page.wait_for_function("document.getElementById('reorg-count').textContent === '1'",
                                             timeout=10_000)
                await page.wait_for_selector("#reorgs tbody tr", timeout=10_000)
                assert await text(page, "#reorgs tbody tr td.depth") == "2"

                # RAG search with citations
                await page.fill("#search-q", "USDT transfer")
                await page.click("#search-form button")
                await page.wait_for_selector("#hits li.hit", timeout=30_000)
                hits = await page.query_selector_all("#hits li.hit")
                assert len(hits) > 0
                cite = await text(page, "#hits li.hit .cite")
                assert "score" in cite and ("block" in cite or "0x" in cite), cite

                # memory browser: the agent's items and root
                await page.wait_for_selector(f"#agents option[value='{AGENT}']", state="attached", timeout=10_000)
                await page.select_option("#agents", AGENT)
                await page.wait_for_function(
                    f"document.getElementById('memory-root').dataset.agent === '{AGENT}' && "
                    "document.getElementById('memory-root').textContent.startsWith('0x')", timeout=10_000)
                assert "rebalance the pool every Monday" in await text(page, "#memory-items")
                root = await text(page, "#memory-root")
                async with httpx.AsyncClient(base_url=base) as http:
                    assert (await http.get(f"/memory/agents/{AGENT}/root")).json()["root"] == root

                await page.wait_for_timeout(1500)  # a few more chart samples
                shot = tmp_path / "dashboard.png"
                await page.screenshot(path=str(shot), full_page=True)
                assert shot.stat().st_size > 10_000
                if os.environ.get("MONMOUTH_ARTIFACTS"):
                    Path(os.environ["MONMOUTH_ARTIFACTS"]).mkdir(parents=True, exist_ok=True)
                    shutil.copy(shot, Path(os.environ["MONMOUTH_ARTIFACTS"]) / "dashboard.png")
                assert errors == [], errors
            finally:
                await browser.close()


async def test_dashboard_assets_are_local_and_need_no_cdn(tmp_path):
    plugins = {"memory": MemoryPlugin(workers=False)}
    async with live_sidecar(tmp_path, config(tmp_path), plugins) as (_a, _r, base, _s), \
            httpx.AsyncClient(base_url=base) as http:
        page = (await http.get("/dashboard")).text
        assert "http://" not in page and "https://" not in page
        for asset in ("app.js", "style.css"):
            r = await http.get(f"/dashboard/assets/{asset}")
            assert r.status_code == 200 and "https://" not in r.text
        assert (await http.get("/dashboard/assets/..%2Fapi.py")).status_code == 404
        assert (await http.get("/dashboard/assets/nothing.js")).status_code == 404
