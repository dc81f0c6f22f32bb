"""`monmouth demo` end to end, as a user runs it: a subprocess that starts anvil, deploys OpenZeppelin ERC-20s (npm
solc) and Uniswap V2 core (npm artifacts), registers agents, generates traffic with reorgs and runs the sidecar.
The example queries it prints must work; Ctrl-C (SIGINT) must stop everything cleanly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from monmouth.rpcclient import SyncJsonRpcClient
from tests.anvil import anvil_binary, free_port


def test_demo_end_to_end_and_clean_ctrl_c(tmp_path):
    if anvil_binary() is None:
        pytest.fail("anvil is missing: run `npm install` at the repository root")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "monmouth", "demo", "--dir", str(tmp_path / "demo"), "--port",
                             str(port), "--reorg-every", "6", "--rate", "6"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 240
        while not any("AGENT_TOKEN=" in ln for ln in lines):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)
        out = "".join(lines)
        base = f"http://127.0.0.1:{port}"
        assert f"{base}/dashboard" in out and "monmouth mcp --config" in out
        token = re.search(r"AGENT_TOKEN=(\S+)", out).group(1)
        agent, other = re.findall(r"/memory/agents/(0x[0-9a-f]{40})/", out)[-2:]
        anvil_url = re.search(r"starting anvil on (\S+)", out).group(1)
        with httpx.Client(base_url=base, timeout=30) as http:
            # the chain moves and reorgs are handled
            deadline = time.monotonic() + 120
            while True:
                st = http.get("/status").json()
                if st["reorgs"] >= 1 and st["lag"] is not None and st["head"]["number"] > 30:
                    break
                assert time.monotonic() < deadline, st
                time.sleep(1)
            assert st["plugins"]["rag"]["state"] == "enabled" and st["plugins"]["memory"]["state"] == "enabled"
            # the printed example queries
            hits = http.post("/rag/search", json={"query": "swap DWETH for DUSD on Uniswap", "k": 3}).json()["hits"]
            assert hits and any("swap" in h["text"].lower() or "transfer" in h["text"].lower() for h in hits), hits
            ctx = http.post("/rag/context", json={"query": "DGOV transfers between agents", "max_tokens": 400})
            assert ctx.status_code == 200, ctx.text
            items = http.get(f"/memory/agents/{agent}/items").json()["items"]
            assert len(items) >= 3
            auth = {"authorization": f"Bearer {token}"}
            rec = http.post(f"/memory/agents/{agent}/recall", json={"query": "how do I swap on a V2 pair?"},
                            headers=auth)
            assert rec.status_code == 200 and rec.json()["results"], rec.text
            assert "swap" in rec.json()["results"][0]["content"]
            assert http.get(f"/memory/agents/{other}/items", headers=auth).status_code == 403
            assert "<canvas" in http.get("/dashboard").text
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        reader.join(5)
    out = "".join(lines)
    assert code == 0, out
    assert "demo stopped: anvil and the sidecar are down" in out
    assert "Traceback" not in out, out
    with pytest.raises(httpx.HTTPError):
        SyncJsonRpcClient(anvil_url, timeout=2).call("eth_chainId")
