"""Graceful shutdown (sidecar/shutdown.py) as operators meet it: ``monmouth`` as a real subprocess, stopped with
SIGTERM or SIGINT the way systemd, Docker and Ctrl-C do, during a replay with reorgs, a catch-up from a real node
(anvil) and the demo. Each stop exits 0 in bounded time, the notification in flight commits, no child process
remains, and a restart ends with exactly the state of an uninterrupted run (nothing lost, nothing applied twice).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.anvil import anvil_binary, free_port
from tests.conftest import make_engine
from tests.plugins import ledger
from tests.test_cli import long_history
from tests.test_engine import dump

ROOT = Path(__file__).resolve().parents[1]
MONMOUTH = [sys.executable, "-m", "monmouth"]


def write_config(tmp_path: Path, source: str, *, http_port: int | None = None, db: str = "db.sqlite",
                 name: str = "config.toml") -> Path:
    p = tmp_path / name
    http = f"enabled = true\nport = {http_port}" if http_port else "enabled = false"
    p.write_text(f"""
[source]
{source}

[storage]
path = "{db}"
synchronous = "NORMAL"

[http]
{http}

[engine]
progress_interval = 0.5
shutdown_timeout = 20

[plugins.ledger]
enabled = true
module = "{ROOT / 'tests' / 'plugins' / 'ledger.py'}"

[plugins.slow]
enabled = true
module = "{ROOT / 'tests' / 'plugins' / 'slow.py'}"
""")
    return p


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **extra}


def marks(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def wait_for(cond, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {proc.returncode}: {proc.stderr.read()}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> tuple[int, float, str]:
    """Send ``sig``; return (exit status, seconds to exit, stderr + stdout)."""
    t0 = time.monotonic()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, time.monotonic() - t0, err + out


def ledger_dump(db: Path):
    e = make_engine(db, {"ledger": ledger})
    try:
        return e.head, dump(e.conn), e.notifications_seen
    finally:
        e.host.shutdown()
        e.close()


def finish_and_compare(tmp_path: Path, cfg: Path, notes, canonical) -> None:
    """Replay the rest without interruption, then check the database equals one that applied ``notes`` in one go:
    same head, same plugin tables, and each notification committed exactly once."""
    final = subprocess.run([*MONMOUTH, "replay", "history.mnr", "--config", str(cfg)], cwd=tmp_path, env=env(),
                           capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr
    head, live, seen = ledger_dump(tmp_path / "db.sqlite")
    ref = make_engine(tmp_path / "ref.sqlite", {"ledger": ledger})
    for n in notes:
        ref.apply(n)
    assert head == canonical[-1].ref
    assert live == dump(ref.conn)
    assert seen == len(notes)


# ---------------------------------------------------------------------------------------------------- replay


def test_sigterm_and_sigint_during_a_replay_with_reorgs_lose_and_duplicate_nothing(tmp_path):
    notes, canonical = long_history(tmp_path / "history.mnr")  # 120 notifications, a 3-deep reorg every 15
    port = free_port()
    cfg = write_config(tmp_path, 'kind = "replay"\npath = "history.mnr"', http_port=port)
    mark = tmp_path / "marks"
    stops = 0
    for sig, after in ((signal.SIGTERM, 3), (signal.SIGINT, 8), (signal.SIGTERM, 6)):
        proc = subprocess.Popen([*MONMOUTH, "replay", "history.mnr", "--http", "--config", str(cfg)], cwd=tmp_path,
                                env=env(SLOW_PLUGIN_SECONDS="0.15", SLOW_PLUGIN_MARK=str(mark)),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        seen = len(marks(mark))
        wait_for(lambda s=seen, a=after: len(marks(mark)) >= s + a, 60, "blocks applied", proc)
        in_flight = marks(mark)[-1]  # its block is being applied right now (0.15 s per block)
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
        code, took, err = stop(proc, sig)
        assert code == 0, err
        assert took < 10, (took, err)
        assert f"{signal.Signals(sig).name}: stopped cleanly" in err and "Traceback" not in err, err
        assert f"stopped by {signal.Signals(sig).name} before the end of history.mnr" in err
        head, _, _ = ledger_dump(tmp_path / "db.sqlite")
        assert head is not None and head.number >= in_flight, (head, in_flight)  # the one in flight committed
        with pytest.raises(httpx.HTTPError):  # the HTTP server is gone, its port released
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
        stops += 1
    assert stops == 3
    finish_and_compare(tmp_path, cfg, notes, canonical)  # each notification committed once across the four runs


def test_a_second_signal_exits_at_once_and_a_stuck_stop_is_bounded(tmp_path):
    notes, canonical = long_history(tmp_path / "history.mnr")
    cfg = write_config(tmp_path, 'kind = "replay"\npath = "history.mnr"')
    mark = tmp_path / "marks"
    # A block takes 5 s: the first SIGTERM waits for it, the second one does not.
    proc = subprocess.Popen([*MONMOUTH, "run", "--config", str(cfg)], cwd=tmp_path,
                            env=env(SLOW_PLUGIN_SECONDS="5", SLOW_PLUGIN_MARK=str(mark)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: marks(mark), 60, "a block in flight", proc)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert proc.poll() is None  # still waiting for the block in flight
    code, took, err = stop(proc, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, err
    assert took < 2, took
    assert "second signal (SIGTERM): exiting now" in err, err
    # The same, without a second signal: engine.shutdown_timeout bounds it (status 1).
    mark.unlink()
    proc = subprocess.Popen([*MONMOUTH, "run", "--config", str(cfg)], cwd=tmp_path,
                            env=env(SLOW_PLUGIN_SECONDS="5", SLOW_PLUGIN_MARK=str(mark),
                                    MONMOUTH_ENGINE__SHUTDOWN_TIMEOUT="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: marks(mark), 60, "a block in flight", proc)
    code, took, err = stop(proc, signal.SIGTERM)
    assert code == 1, err
    assert 0.9 < took < 3, took
    assert "not stopped within engine.shutdown_timeout = 1s" in err, err
    # Cut short twice mid-transaction: nothing half-applied, and a restart applies everything exactly once.
    finish_and_compare(tmp_path, cfg, notes, canonical)


# ---------------------------------------------------------------------------------------------------- catch-up


_FOLLOWERS: list[subprocess.Popen] = []


@pytest.fixture
def followers():
    """Kills what :func:`_follow` started if the test fails half-way (a passing test stops each itself)."""
    yield
    while _FOLLOWERS:
        p = _FOLLOWERS.pop()
        if p.poll() is None:
            p.kill()
            p.wait(10)


def _follow(tmp_path: Path, cfg: Path, port: int, **extra: str) -> subprocess.Popen:
    proc = subprocess.Popen([*MONMOUTH, "run", "--config", str(cfg)], cwd=tmp_path, env=env(**extra),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _FOLLOWERS.append(proc)
    return proc


def _status(port: int) -> dict | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/status", timeout=2).json()
    except httpx.HTTPError:
        return None


def head_number(port: int) -> int | None:
    st = _status(port)
    return st["head"]["number"] if st is not None and st["head"] is not None else None


def test_sigterm_during_a_catch_up_from_a_real_node_then_restart(tmp_path, anvil, followers):
    anvil.traffic(120, txs_per_block=2)
    port = free_port()
    source = f'kind = "rpc"\nurl = "{anvil.url}"\npoll_interval = 0.1\nbatch_size = 4'
    cfg = write_config(tmp_path, source, http_port=port)
    mark = tmp_path / "marks"
    proc = _follow(tmp_path, cfg, port, SLOW_PLUGIN_SECONDS="0.05", SLOW_PLUGIN_MARK=str(mark))
    wait_for(lambda: len(marks(mark)) >= 40, 60, "40 blocks", proc)
    st = _status(port)
    assert st is not None and st["lag"] > 0, st  # still catching up
    in_flight = marks(mark)[-1]
    code, took, err = stop(proc)
    assert code == 0 and "SIGTERM: stopped cleanly" in err, err
    stopped_at, _, _ = ledger_dump(tmp_path / "db.sqlite")
    assert stopped_at is not None and in_flight <= stopped_at.number < 120, (stopped_at, in_flight)
    # While the sidecar is down the chain moves on and reorgs below the head it stopped at.
    anvil.reorg(3, txs=3, seed=5)
    anvil.traffic(5, txs_per_block=2, seed=9)
    tip_number, tip_hash = anvil.head()
    proc = _follow(tmp_path, cfg, port)
    wait_for(lambda: head_number(port) == tip_number, 60, "caught up", proc)
    code, _, err = stop(proc, signal.SIGINT)
    assert code == 0, err
    # An uninterrupted run of the final chain into a fresh database.
    ref_cfg = write_config(tmp_path, source, http_port=port, db="ref.sqlite", name="ref.toml")
    proc = _follow(tmp_path, ref_cfg, port)
    wait_for(lambda: head_number(port) == tip_number, 60, "reference", proc)
    assert stop(proc)[0] == 0
    head, live, _ = ledger_dump(tmp_path / "db.sqlite")
    ref_head, ref, _ = ledger_dump(tmp_path / "ref.sqlite")
    assert head == ref_head and "0x" + head.hash.hex() == tip_hash
    assert live == ref


# ---------------------------------------------------------------------------------------------------- demo


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _demo(tmp_path: Path, port: int) -> tuple[subprocess.Popen, list[str], threading.Thread]:
    proc = subprocess.Popen([*MONMOUTH, "demo", "--dir", str(tmp_path / "demo"), "--port", str(port),
                             "--reorg-every", "5", "--rate", "6"], env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    return proc, lines, reader


@pytest.mark.parametrize("when", ["deploying", "running", "twice"])
def test_sigterm_stops_the_demo_and_its_anvil(tmp_path, when):
    """``twice``: a second SIGTERM right after the first exits at once (or the first's clean-up already ended);
    either way npm's anvil wrapper and the anvil it runs are gone."""
    if anvil_binary() is None:
        pytest.fail("anvil is missing: run `npm install` at the repository root")
    port = free_port()
    proc, lines, reader = _demo(tmp_path, port)
    try:
        marker = "AGENT_TOKEN=" if when == "running" else "deploying"
        wait_for(lambda: any(marker in ln for ln in lines), 240, marker, proc)
        if when == "running":
            wait_for(lambda: (s := _status(port)) is not None and s["reorgs"] >= 1, 120, "a reorg handled", proc)
        kids = descendants(proc.pid)
        assert kids, "the demo has no anvil child"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        if when == "twice":
            time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        reader.join(5)
    out = "".join(lines)
    if when == "twice":
        # Exit at once through the handler (143), or the first stop had already finished its clean-up: then the
        # second signal meets the default action the command put back on leaving and ends the process (-15; a
        # shell shows 143 for both).
        assert code in (0, 128 + signal.SIGTERM, -signal.SIGTERM), out
    else:
        assert code == 0, out
        assert "demo stopped: anvil and the sidecar are down" in out and "Traceback" not in out, out
    assert took < 25, took
    time.sleep(0.2)
    assert not [k for k in kids if alive(k)], out  # anvil (and anything else it started) is gone


# ---------------------------------------------------------------------------------------------------- mcp (stdio)


class McpStdio:
    """``monmouth mcp`` as a subprocess, spoken to in raw JSON-RPC lines the way an agent runtime does."""

    def __init__(self, tmp_path: Path, cfg: Path) -> None:
        self.proc = subprocess.Popen([*MONMOUTH, "mcp", "--config", str(cfg)], cwd=tmp_path, env=env(),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.replies: dict[int, dict] = {}
        self._next = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in iter(self.proc.stdout.readline, ""):
            msg = json.loads(line)
            if "id" in msg:
                self.replies[msg["id"]] = msg

    def send(self, method: str, params: dict | None = None, *, notify: bool = False) -> int:
        msg: dict = {"jsonrpc": "2.0", "method": method, "params": params or {}}
        if not notify:
            self._next += 1
            msg["id"] = self._next
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        return self._next

    def call(self, method: str, params: dict | None = None) -> dict:
        rid = self.send(method, params)
        wait_for(lambda: rid in self.replies, 60, f"the reply to {method}", self.proc)
        reply = self.replies[rid]
        assert "result" in reply, reply
        return reply["result"]

    def tool(self, name: str, args: dict) -> dict:
        result = self.call("tools/call", {"name": name, "arguments": args})
        assert not result.get("isError"), result
        return result["structuredContent"]

    def open(self) -> McpStdio:
        self.call("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                 "clientInfo": {"name": "test_shutdown", "version": "0"}})
        self.send("notifications/initialized", notify=True)
        return self

    def finish(self, took_at_most: float) -> str:
        """Wait for the exit (status 0 within ``took_at_most`` seconds); the stderr."""
        t0 = time.monotonic()
        code = self.proc.wait(took_at_most + 10)
        took = time.monotonic() - t0
        self._reader.join(5)
        err = self.proc.stderr.read()
        assert code == 0, err
        assert took < took_at_most, (took, err)
        assert "Traceback" not in err, err
        return err


def test_sigterm_sigint_and_end_of_input_stop_monmouth_mcp_over_stdio(tmp_path):
    """The agent runtime keeps ``monmouth mcp``'s standard input open (the SDK reads it in a thread): SIGTERM and
    SIGINT still stop it within engine.shutdown_timeout, status 0; tool calls cut short commit whole or not at all,
    and every acknowledged one is in the memory's Merkle root afterwards."""
    agent = "0x" + "a1" * 20
    cfg = tmp_path / "config.toml"
    cfg.write_text(f"""
[storage]
path = "db.sqlite"
synchronous = "NORMAL"

[http]
enabled = false

[engine]
shutdown_timeout = 10

[plugins.memory]
enabled = true
embed = false
key_dir = "keys"
agents = ["{agent}"]
""")
    acknowledged: list[str] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        mcp = McpStdio(tmp_path, cfg).open()
        acknowledged.append(mcp.tool("remember", {"content": f"before {sig.name}", "agent": agent})["id"])
        burst = [mcp.send("tools/call", {"name": "remember", "arguments": {"content": f"burst {i}", "agent": agent}})
                 for i in range(8)]  # in flight when the signal arrives
        wait_for(lambda b=burst, m=mcp: b[0] in m.replies, 60, "a reply to the burst", mcp.proc)
        mcp.proc.send_signal(sig)
        err = mcp.finish(took_at_most=10)  # stdin is still open
        assert f"{sig.name}: stopping" in err and f"monmouth mcp: {sig.name}: stopped cleanly" in err, err
        replies = [r for i in burst if (r := mcp.replies.get(i)) is not None]
        assert all("result" in r or r["error"]["code"] for r in replies), replies  # an error reply: not acknowledged
        acknowledged += [r["result"]["structuredContent"]["id"] for r in replies
                         if "result" in r and not r["result"].get("isError")]
        mcp.proc.stdin.close()
    # End of input (the client closes its end) is a clean stop too.
    mcp = McpStdio(tmp_path, cfg).open()
    recalled = mcp.tool("recall", {"query": "before", "agent": agent, "k": 10})["results"]
    assert {"before SIGTERM", "before SIGINT"} <= {r["content"] for r in recalled}, recalled
    mcp.proc.stdin.close()
    mcp.finish(took_at_most=10)
    # Every acknowledged item is stored whole (decrypts to its content); the calls cut short left no partial item.
    listed = subprocess.run([*MONMOUTH, "memory", "list", agent, "--limit", "100", "--config", str(cfg)],
                            cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    items = {i["id"]: i["content"] for i in json.loads(listed.stdout)["items"]}
    assert set(acknowledged) <= set(items), (acknowledged, items)
    assert all(c.startswith(("before SIG", "burst ")) for c in items.values()), items
    assert len(acknowledged) >= 4
