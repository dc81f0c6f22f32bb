"""Against a real Reth (v2.5.1, ``monmouth-reth`` built from ``bridge/reth-exex``): the ExEx, the bridge and the
sidecar end to end. Every sidecar here is a real ``monmouth run`` subprocess recording every field it receives
(``tests/plugins/chainrecord.py``), compared field by field with the node's JSON-RPC.

Marker ``reth``. Skipped when the binary is not built, unless ``MONMOUTH_REQUIRE_RETH=1`` (``.ci/run`` sets it, so CI
fails instead). Build: ``bridge/README.md``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import httpx
import pytest

from monmouth_demo import compile_token, node_modules
from tests.anvil import free_port
from tests.reth import Consensus, Reth, Wallet, reth_binary, terminate

ROOT = Path(__file__).resolve().parents[1]
MONMOUTH = [sys.executable, "-m", "monmouth"]
RECORD = ROOT / "tests" / "plugins" / "chainrecord.py"

if reth_binary() is None and os.environ.get("MONMOUTH_REQUIRE_RETH") == "1":
    raise RuntimeError("MONMOUTH_REQUIRE_RETH=1 but monmouth-reth is not built (see bridge/README.md)")

pytestmark = [
    pytest.mark.reth,
    pytest.mark.skipif(reth_binary() is None, reason="monmouth-reth not built (bridge/README.md; .ci/run builds it)"),
    pytest.mark.timeout(900),
]


# ------------------------------------------------------------------------------------------------------ sidecars
class Sidecar:
    """``monmouth run`` as a subprocess in its own directory, with HTTP on a free loopback port."""

    def __init__(self, workdir: Path, source: str, *, rag: bool = False, group_commit: int = 32,
                 slow: bool = False) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.dir = workdir
        self.port = free_port()
        self.db = workdir / "db.sqlite"
        self.log = workdir / "sidecar.log"
        self.cfg = workdir / "config.toml"
        rag_toml = "\n[plugins.rag]\nenabled = true\n" if rag else ""
        if slow:
            rag_toml += f'\n[plugins.paced]\nenabled = true\nmodule = "{ROOT / "tests" / "plugins" / "paced.py"}"\n'
        self.cfg.write_text(f"""
[source]
{source}
max_backoff = 1.0

[storage]
path = "db.sqlite"

[engine]
group_commit = {group_commit}

[http]
enabled = true
port = {self.port}

[plugins.chainrecord]
enabled = true
module = "{RECORD}"
{rag_toml}""")
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(timeout=10)

    def start(self) -> Sidecar:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([*MONMOUTH, "run", "--config", str(self.cfg)], cwd=self.dir, env=env,
                                         stdout=log, stderr=subprocess.STDOUT)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        terminate(self.proc, sig)
        self.proc = None

    def status(self) -> dict[str, Any] | None:
        try:
            return dict(self.http.get(f"http://127.0.0.1:{self.port}/status").json())
        except (httpx.HTTPError, ValueError):
            return None

    def head(self) -> tuple[int, str] | None:
        st = self.status()
        h = st and st.get("head")
        return (h["number"], h["hash"]) if h else None

    def wait_synced(self, node: Reth, timeout: float = 180, at_least: int = 0) -> int:
        """Until this sidecar's head is the node's head (and at least ``at_least``); that block number."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"sidecar exited with {self.proc.returncode}: {self.log_tail()}")
            h = self.head()
            if h is not None and h[0] >= at_least:
                nb = node.block("latest", False)
                if h == (int(nb["number"], 16), nb["hash"]):
                    return h[0]
            time.sleep(0.25)
        raise AssertionError(f"sidecar at {self.head()}, node at {node.head()}: {self.log_tail()}")

    def log_tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def close(self) -> None:
        self.stop()
        self.http.close()


@pytest.fixture
def sidecars() -> Iterator[list[Sidecar]]:
    made: list[Sidecar] = []
    yield made
    for s in made:
        s.close()


@pytest.fixture
def nodes() -> Iterator[list[Reth]]:
    made: list[Reth] = []
    yield made
    for n in made:
        n.close()


def exex(reth: Reth, start_block: int | str = 0, window: int = 64) -> str:
    start = f'"{start_block}"' if isinstance(start_block, str) else start_block
    return f'kind = "exex"\nurl = "{reth.bridge}"\nheartbeat = 0.5\nstart_block = {start}\nwindow = {window}'


def rpc(reth: Reth) -> str:
    return f'kind = "rpc"\nurl = "{reth.url}"\npoll_interval = 0.2'


# ------------------------------------------------------------------------------------------------------ checks
def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return list(conn.execute(sql))
    finally:
        conn.close()


def _h(b: bytes | None) -> str | None:
    return None if b is None else "0x" + b.hex()


def _q(x: str | None) -> int | None:
    return None if x is None else int(x, 16)


def assert_equals_node(db: Path, node: Reth, upto: int, first: int = 0, mining: bool = False) -> int:
    """Every block ``first..upto`` the sidecar recorded, with its transactions, receipts and logs, equals the node's
    JSON-RPC answer field by field, and nothing else is recorded. Returns the transactions compared.

    ``mining``: the node is still mining and the sidecar still following it, so blocks above ``upto`` may be
    recorded by the time the tables are read; only ``..upto`` is compared (nothing else below it may be recorded)."""
    above = f" WHERE number <= {upto}" if mining else ""
    blocks = {r[0]: r for r in rows(db, "SELECT * FROM rec_blocks" + above)}
    assert sorted(blocks) == list(range(first, upto + 1)), "each block indexed exactly once, no gap"
    above = f" WHERE block_number <= {upto}" if mining else ""
    txs = {r[0]: r for r in rows(db, "SELECT * FROM rec_txs" + above)}
    logs: dict[tuple[int, int], list[tuple[Any, ...]]] = {}
    for r in rows(db, f"SELECT * FROM rec_logs{above} ORDER BY block_number, tx_idx, log_idx"):
        logs.setdefault((r[0], r[1]), []).append(r)
    compared = 0
    for n in range(first, upto + 1):
        b = node.block(n)
        rec = blocks[n]
        assert (n, _h(rec[1]), _h(rec[2]), rec[3], _h(rec[4]), rec[5], rec[6], rec[7], rec[8]) == (
            _q(b["number"]), b["hash"], b["parentHash"], _q(b["timestamp"]), b["miner"].lower(), _q(b["gasLimit"]),
            _q(b["gasUsed"]), None if b.get("baseFeePerGas") is None else str(_q(b["baseFeePerGas"])),
            len(b["transactions"])), f"block {n}"
        receipts = node.rpc("eth_getBlockReceipts", hex(n)) if b["transactions"] else []
        for i, (t, rc) in enumerate(zip(b["transactions"], receipts, strict=True)):
            got = txs[bytes.fromhex(t["hash"][2:])]
            typ = _q(t["type"]) or 0
            want = (bytes.fromhex(t["hash"][2:]), n, i, typ, t["from"].lower(), t.get("to") and t["to"].lower(),
                    str(_q(t["value"])), t["input"], _q(t["nonce"]), _q(t["gas"]),
                    str(_q(t["gasPrice"])) if typ in (0, 1) else None,
                    None if t.get("maxFeePerGas") is None else str(_q(t["maxFeePerGas"])),
                    None if t.get("maxPriorityFeePerGas") is None else str(_q(t["maxPriorityFeePerGas"])),
                    _q(t.get("chainId")), _q(rc["status"]), _q(rc["cumulativeGasUsed"]),
                    rc.get("contractAddress") and rc["contractAddress"].lower())
            have = (got[0], got[1], got[2], got[3], _h(got[4]), _h(got[5]), got[6], _h(got[7]) or "0x", got[8],
                    got[9], got[10], got[11], got[12], got[13], got[14], got[15], _h(got[16]))
            assert have == want, f"block {n} transaction {i}"
            want_logs = [(lg["address"].lower(), "".join(x[2:] for x in lg["topics"]), lg["data"]) for lg in rc["logs"]]
            have_logs = [(_h(r[3]), r[4].hex(), _h(r[5]) or "0x") for r in logs.get((n, i), [])]
            assert have_logs == want_logs, f"block {n} transaction {i} logs"
            compared += 1
    assert len(txs) == compared, "no transaction recorded that the node does not have"
    return compared


def plugin_tables(db: Path, tables: tuple[str, ...]) -> dict[str, list[tuple[Any, ...]]]:
    return {t: sorted(rows(db, f"SELECT * FROM {t}"), key=repr) for t in tables}


# ------------------------------------------------------------------------------------------------------ traffic
class Traffic:
    """ETH transfers, an OpenZeppelin ERC-20 (npm solc) deployed and used, and a reverted call."""

    def __init__(self, node: Reth, workdir: Path) -> None:
        self.node = node
        self.wallet = Wallet(node)
        self.token: str | None = None
        self.workdir = workdir

    def deploy_token(self) -> str:
        from eth_abi import encode as abi_encode

        art = compile_token(node_modules(), self.workdir)
        ctor = abi_encode(["string", "string", "uint8", "uint256", "address"],
                          ["Test", "TST", 18, 10**24, self.wallet.addresses[0]]).hex()
        tx = self.wallet.deploy(0, art["bytecode"] + ctor)
        rc = self.node.receipt(tx)
        assert rc["status"] == "0x1" and rc["contractAddress"], rc
        self.token = rc["contractAddress"]
        return self.token

    def round(self, k: int) -> list[str]:
        w = self.wallet
        out = [w.transfer(k % 5, 5 + k % 5, 10**15 * (k + 1)), w.transfer(1 + k % 3, 7, 12345 + k)]
        if self.token:
            out.append(w.call(0, self.token, "transfer(address,uint256)", w.addresses[2 + k % 6], 10**18 + k))
        return out

    def reverted(self) -> str:
        """An ERC-20 transfer beyond the sender's balance: mined, status 0."""
        assert self.token
        return self.wallet.call(9, self.token, "transfer(address,uint256)", self.wallet.addresses[1], 10**30)


# ------------------------------------------------------------------------------------------------------ tests
def test_dev_node_exex_sidecar_equals_the_node_and_an_rpc_sidecar(tmp_path, nodes, sidecars):
    """``--dev`` mining 1 s blocks with transfers, an ERC-20 deployment and transfers, and a reverted transaction:
    an ``exex`` sidecar (killed with -9 mid-stream and restarted) indexes every block, transaction, receipt and log
    exactly as the node's JSON-RPC returns them, and its plugin tables (rag on) equal an ``rpc`` sidecar's."""
    node = Reth(tmp_path / "reth", dev=True, block_time="1s")
    nodes.append(node)
    node.start()
    ex = Sidecar(tmp_path / "exex", exex(node), rag=True).start()
    rp = Sidecar(tmp_path / "rpc", rpc(node), rag=True).start()
    sidecars += [ex, rp]
    traffic = Traffic(node, tmp_path)
    traffic.deploy_token()
    reverted = None
    sent: list[str] = []
    for k in range(12):
        sent += traffic.round(k)
        if k == 4:
            reverted = traffic.reverted()
        if k == 6:
            ex.stop(signal.SIGKILL)  # kill -9 mid-stream
        if k == 8:
            ex.start()
        time.sleep(0.5)
    assert reverted and node.receipt(reverted)["status"] == "0x0"
    # Sent, not yet necessarily mined: the head compared must hold every transaction of the rounds.
    head = max(node.head(), *(int(node.receipt(h)["blockNumber"], 16) for h in sent))
    n_ex = ex.wait_synced(node, at_least=head)
    n_rp = rp.wait_synced(node, at_least=n_ex)
    assert n_ex == n_rp
    # The rpc source indexes genesis; the exex source, asked for start_block 0, gets it from the bridge too.
    # Both follow a node that keeps mining: compare each as far as it had synced.
    compared = assert_equals_node(ex.db, node, n_ex, mining=True)
    assert compared >= 12 * 3
    assert_equals_node(rp.db, node, n_rp, mining=True)
    tables = ("rec_blocks", "rec_txs", "rec_logs", "rag_docs", "rag_addresses", "rag_tokens", "rag_edges")
    # The node keeps mining: compare both databases as of one head they share (read between two equal heads).
    for _ in range(100):
        h = ex.head()
        if h is not None and h == rp.head():
            have, want = plugin_tables(ex.db, tables), plugin_tables(rp.db, tables)
            if ex.head() == h == rp.head():
                break
        time.sleep(0.05)
    else:
        raise AssertionError(f"the two sidecars never shared a head: {ex.head()} {rp.head()}")
    assert have == want
    assert rows(ex.db, "SELECT count(*) FROM rag_docs")[0][0] > 0
    assert rows(ex.db, "SELECT count(*) FROM rec_txs WHERE status = 0")[0][0] >= 1
    assert rows(ex.db, "SELECT count(*) FROM rec_txs WHERE contract_address IS NOT NULL")[0][0] >= 1


def test_reth_stopped_and_killed_redelivers_from_its_exex_wal(tmp_path, nodes, sidecars):
    """Reth stopped (SIGTERM) and killed (kill -9) while the sidecar runs, then restarted: what the sidecar had not
    acknowledged comes again from Reth's ExEx WAL, nothing is lost or applied twice. The WAL stays bounded while the
    sidecar acknowledges and grows while it is away (Reth keeps what no FinishedHeight covers)."""
    # Every block persisted as soon as it is canonical: a Reth killed with -9 then restarts on the chain it announced
    # (with the default threshold it may lose its newest in-memory blocks and its dev miner mine different ones at
    # those heights; see bridge/README.md for what the sidecar then does).
    persist = ("--engine.persistence-threshold", "0", "--engine.memory-block-buffer-target", "0")
    node = Reth(tmp_path / "reth", dev=True, block_time="1s", finality_depth=3, extra=persist)
    nodes.append(node)
    node.start()
    sc = Sidecar(tmp_path / "sc", exex(node)).start()
    sidecars.append(sc)
    wallet = Wallet(node)
    for k in range(10):
        wallet.transfer(k % 4, 5, 10**15 + k)
        time.sleep(0.3)
    sc.wait_synced(node, at_least=10)

    def settled(limit: int, timeout: float = 30) -> tuple[int, int]:
        """Wait until the WAL holds at most ``limit`` notifications; (notifications, bytes) then."""
        deadline = time.monotonic() + timeout
        while node.wal_notifications() > limit and time.monotonic() < deadline:
            wallet.transfer(0, 7, 10**12)
            time.sleep(0.4)
        return node.wal_notifications(), node.wal_bytes()

    # Acknowledged: Reth releases everything below min(FinishedHeight, finalized), so the WAL stays a few
    # notifications long (finality depth 3) however long the chain grows.
    acked = [settled(8) for _ in range(3)]
    assert all(n <= 8 for n, _ in acked), acked
    sc.stop()  # away: nothing is acknowledged, Reth keeps every notification
    away_from = node.wal_notifications()
    for k in range(20):
        wallet.transfer(k % 4, 6, 10**15 + k)
        time.sleep(1.0)
    away = node.wal_notifications(), node.wal_bytes()
    assert away[0] >= away_from + 15 and away[1] > max(b for _, b in acked), (acked, away)
    sc.start()
    sc.wait_synced(node)
    after = settled(8)
    assert after[0] <= 8 and after[1] < away[1], "acknowledged blocks are released from the WAL"

    for sig in (signal.SIGTERM, signal.SIGKILL):
        sc.wait_synced(node)
        time.sleep(0.4)  # between two 1 s blocks: the newest is persisted
        before = sc.head()
        code = node.stop(sig)
        assert code is not None
        deadline = time.monotonic() + 15  # silence for 3 heartbeats (1 s each, set by the bridge) ends the session
        while (st := sc.status()) and st["source"]["connected"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert st is not None and st["source"]["connected"] is False, st
        assert sc.proc is not None and sc.proc.poll() is None, "the sidecar waits for the bridge to come back"
        node.start()
        wallet = Wallet(node)
        for k in range(4):
            wallet.transfer(k, 8, 10**15 + k)
            time.sleep(0.4)
        n = sc.wait_synced(node, at_least=(before or (0, ""))[0] + 1)
        assert_equals_node(sc.db, node, n, mining=True)
    assert "panicked" not in node.log_tail(200_000)


def test_engine_api_reorgs_reach_the_sidecar_as_chain_reorged(tmp_path, nodes, sidecars):
    """Reth without ``--dev``, driven through the Engine API: a branch, then a sibling branch from an earlier parent
    with different transactions made canonical with forkchoiceUpdated. Reorgs of depth 1, 2 and 3 reach the sidecar
    as ``ChainReorged`` and it ends equal to the node."""
    node = Reth(tmp_path / "reth", dev=False)
    nodes.append(node)
    node.start()
    cl = Consensus(node)
    sc = Sidecar(tmp_path / "sc", exex(node)).start()
    sidecars.append(sc)
    a = Wallet(node, accounts=5, first=0)   # branch A's senders
    b = Wallet(node, accounts=5, first=5)   # branch B's senders: nonces untouched by branch A
    genesis = node.block(0, False)["hash"]
    tip = cl.extend(genesis, 3, before_each=lambda i: a.transfer(i % 5, (i + 1) % 5, 10**15 + i))[-1]
    sc.wait_synced(node, at_least=3)
    for depth in (1, 2, 3):
        head = int(node.block("latest", False)["number"], 16)
        fork = node.block(head - depth, False)["hash"]
        old = [node.block(n, False)["hash"] for n in range(head - depth + 1, head + 1)]
        for i in range(2):
            b.transfer(i, 4 - i, 7 * 10**14 + depth * 10 + i)
        new = cl.build_on(fork)  # B's sibling of the first reorged block, with B's transactions
        assert new["blockHash"] not in old and new["transactions"], "a sibling with other transactions"
        cl.fcu(new["blockHash"])
        tip = cl.extend(new["blockHash"], depth, before_each=lambda i: b.transfer(2 + i % 3, 0, 10**13 + i))[-1]
        assert node.block("latest", False)["hash"] == tip
        n = sc.wait_synced(node)
        assert_equals_node(sc.db, node, n)
        # Branch A's senders go on, so that the blocks the next round reorgs out carry their transactions.
        cl.extend(tip, 2, before_each=lambda i: a.transfer(i, 4, 10**12 + i))
    n = sc.wait_synced(node)
    assert_equals_node(sc.db, node, n)
    metrics = {}
    for ln in httpx.get(f"http://127.0.0.1:{sc.port}/metrics").text.splitlines():
        if ln and not ln.startswith("#"):
            name, value = ln.rsplit(" ", 1)
            metrics[name] = float(value)
    assert metrics['monmouth_notifications_total{kind="ChainReorged",outcome="applied"}'] == 3
    # One reorg of each depth: the cumulative histogram counts 1 at le=1, 2 at le=2, 3 at le=3.
    assert [metrics[f'monmouth_reorg_depth_blocks_bucket{{le="{d}.0"}}'] for d in (1, 2, 3)] == [1, 2, 3]
    cl.close()


def backlog(tmp_path: Path, nodes: list[Reth], blocks: int) -> tuple[Reth, Wallet]:
    """A dev node that mined ``blocks`` blocks of one transfer each (no sidecar connected yet)."""
    node = Reth(tmp_path / "reth", dev=True, block_time="", max_txs=1)  # no block time: a block per transaction
    nodes.append(node)
    node.start()
    wallet = Wallet(node, accounts=10)
    for k in range(blocks):
        wallet.transfer(k % 10, (k + 3) % 10, 10**12 + k)
    # Instant mining takes one pending transaction per pool event: nudge it until every one is mined.
    deadline = time.monotonic() + 300
    while node.head() < blocks or node.rpc("txpool_status")["pending"] != "0x0":
        assert time.monotonic() < deadline, node.log_tail(1500)
        wallet.transfer(0, 1, 1)
        time.sleep(0.05)
    return node, wallet


def test_backfill_from_block_0(tmp_path, nodes, sidecars):
    """A node that produced 2,000+ blocks with transactions before the sidecar first connected; ``start_block = 0``:
    Reth backfills every block through its ExEx backfill, each indexed once and equal to the node's JSON-RPC, and
    /status shows the progress meanwhile."""
    node, wallet = backlog(tmp_path, nodes, 2000)
    target = node.head()
    # A plugin taking 5 ms per block makes the backfill last about 10 s, so that /status is polled while it runs.
    sc = Sidecar(tmp_path / "sc", exex(node, 0), slow=True).start()
    sidecars.append(sc)
    seen_progress = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        st = sc.status()
        bf = st and st.get("source", {}).get("backfill")
        if bf:
            seen_progress = bf
        h = sc.head()
        if h and h[0] >= target:
            break
        time.sleep(0.2)
    assert seen_progress is not None and seen_progress["blocks_remaining"] > 0, "backfill progress in /status"
    n = sc.wait_synced(node, at_least=target)
    assert n == target
    assert_equals_node(sc.db, node, n)
    assert rows(sc.db, "SELECT count(*) FROM rec_txs")[0][0] >= 2000


def test_live_notifications_follow_a_backfilled_backlog(tmp_path, nodes, sidecars):
    """300 blocks before the sidecar first connects, backfilled from block 0; then 3 more blocks must arrive live.

    Reth's ExEx manager hands a buffered notification over only when polled, one per poll, and skips those at or
    below the ExEx's FinishedHeight without polling again: a backlog left in its buffer during a backfill would hold
    live notifications back for as many wake-ups as it has entries (the ExEx drains Reth's stream while no sidecar is
    served, bridge/reth-exex)."""
    node, wallet = backlog(tmp_path, nodes, 300)
    target = node.head()
    sc = Sidecar(tmp_path / "sc", exex(node, 0)).start()
    sidecars.append(sc)
    sc.wait_synced(node, at_least=target)
    for k in range(3):
        wallet.transfer(k, 9, 10**13 + k)
        time.sleep(0.3)
    n = sc.wait_synced(node, at_least=target + 3, timeout=60)
    assert_equals_node(sc.db, node, n)


def test_another_sidecar_database_is_served_its_own_stream(tmp_path, nodes, sidecars):
    """One bridge, two sidecar databases in turn: each is served from where it is (its head, or its start block), not
    the stream the other one left, and each equals the node."""
    node = Reth(tmp_path / "reth", dev=True, block_time="300ms")
    nodes.append(node)
    node.start()
    node.wait_head(5)
    a = Sidecar(tmp_path / "a", exex(node, 0)).start()
    sidecars.append(a)
    a.wait_synced(node, at_least=5)
    a.stop()
    # An empty database that starts at a later block.
    first = node.head() + 2
    b = Sidecar(tmp_path / "b", exex(node, first)).start()
    sidecars.append(b)
    node.wait_head(first + 1)
    n = b.wait_synced(node, at_least=first + 2)
    assert_equals_node(b.db, node, n, first=first, mining=True)
    b.stop()
    # The first database again, now behind what the bridge last acknowledged.
    node.wait_head(n + 3)
    a.start()
    n = a.wait_synced(node, at_least=n + 3)
    assert_equals_node(a.db, node, n, mining=True)
    assert node.alive()


def test_a_head_the_node_never_had_is_refused_not_retried_as_a_fork(tmp_path, nodes, sidecars):
    """A sidecar whose head is on another chain with the same genesis (what a ``--dev`` Reth killed before persisting
    its newest blocks leaves behind: it mines other blocks at those heights): whether that head is above the node's
    head or below it, the bridge refuses the session naming the head and what to do, Reth keeps running, and the
    sidecar keeps its database instead of meeting a notification that does not connect."""
    x = Reth(tmp_path / "x", dev=True, block_time="200ms")
    nodes.append(x)
    x.start()
    sc = Sidecar(tmp_path / "sc", exex(x, 0)).start()
    sidecars.append(sc)
    sc.wait_synced(x, at_least=20)
    sc.stop()
    x.stop()
    # the head it stopped at: x mines every 200 ms, so the sidecar may have committed another block after wait_synced
    conn = apsw.Connection(str(sc.db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        held = int(conn.execute("SELECT number FROM monmouth_cursor WHERE id = 1").fetchall()[0][0])
    finally:
        conn.close()
    assert held >= 20
    y = Reth(tmp_path / "y", dev=True, block_time="500ms")
    nodes.append(y)
    y.start()
    assert y.head() < held
    sc.cfg.write_text(sc.cfg.read_text().replace(x.bridge, y.bridge))
    sc.start()

    def refusal(timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        err = ""
        while time.monotonic() < deadline and "cannot resume from the sidecar's head" not in err:
            st = sc.status()
            err = (st or {}).get("source", {}).get("last_error") or ""
            time.sleep(0.3)
        return err

    err = refusal(90)  # its head is above the node's: Reth waits for its chain to pass it, and that block does not connect
    assert "refused" in err and f"block {held}" in err and "restore it from a checkpoint" in err, err
    head = sc.head()
    assert head is not None and head[0] == held
    y.wait_head(held + 2, timeout=60)  # now below the node's head, on another chain
    sc.stop()
    sc.start()
    err = refusal()
    assert "refused" in err and "restore it from a checkpoint" in err, err
    assert sc.head() == head, "nothing applied"
    assert "unknown fork" not in sc.log_tail(1_000_000)
    assert y.alive() and "panicked" not in y.log_tail(200_000)


def test_bad_starts_are_refused_on_both_sides_and_reth_keeps_running(tmp_path, nodes, sidecars):
    """A start block in the future, a sidecar database from another chain, a newer protocol version and a bridge
    endpoint already in use: each is named in the sidecar's /status or log and in Reth's log; Reth keeps running and
    nothing is acknowledged that was not committed."""
    node = Reth(tmp_path / "reth", dev=True, block_time="500ms")
    nodes.append(node)
    node.start()
    node.wait_head(3)
    # A start block in the future.
    fut = Sidecar(tmp_path / "future", exex(node, 10**9)).start()
    sidecars.append(fut)
    deadline = time.monotonic() + 30
    err = ""
    while time.monotonic() < deadline and "in the future" not in err:
        st = fut.status()
        err = (st or {}).get("source", {}).get("last_error") or ""
        time.sleep(0.3)
    assert "start block 1000000000 is in the future" in err
    assert fut.head() is None
    fut.stop()
    assert node.alive() and "start block 1000000000 is in the future" in node.log_tail(100_000)

    # A database from another chain: index this node's chain into a file, then point it at another node.
    other = Reth(tmp_path / "other", dev=True, block_time="400ms")
    nodes.append(other)
    other.start()
    other.wait_head(5)
    stranger = Sidecar(tmp_path / "stranger", exex(other)).start()
    sidecars.append(stranger)
    stranger.wait_synced(other, at_least=3)
    stranger.stop()
    other.stop()
    stranger.cfg.write_text(stranger.cfg.read_text().replace(other.bridge, node.bridge))
    stranger.start()
    deadline = time.monotonic() + 30
    err = ""
    while time.monotonic() < deadline and "neither" not in err:
        st = stranger.status()
        err = (st or {}).get("source", {}).get("last_error") or ""
        time.sleep(0.3)
    assert "refused" in err and "is on neither this node's chain nor its ExEx WAL" in err, err
    stranger.stop()
    assert node.alive()

    # A newer protocol version, straight on the socket.
    import zmq

    from monmouth import wire

    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.RCVTIMEO, 5000)
    dealer.connect(node.bridge)
    dealer.send(wire.codec.packb({"type": "hello", "version": 2, "head": None, "window": 4, "client": "future"}))
    reply = wire.decode(dealer.recv())
    dealer.close(0)
    ctx.term()
    assert isinstance(reply, wire.Error) and reply.code == "unsupported_version", reply
    assert node.alive()

    # The bridge endpoint already in use: Reth keeps running, says so, and binds once it is free.
    node.stop()
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", node.bridge_port))
    squatter.listen(1)
    try:
        node.start()
        time.sleep(3)
        assert node.alive(), node.log_tail()
        assert "in use" in node.log_tail(20_000).lower() or "address already in use" in node.log_tail(20_000).lower()
    finally:
        squatter.close()
    live = Sidecar(tmp_path / "live", exex(node, "latest")).start()
    sidecars.append(live)
    live.wait_synced(node, timeout=60)
    assert node.alive()


def test_a_plugin_enabled_late_is_caught_up_through_the_bridge_history(tmp_path, nodes, sidecars):
    """A dev node mines 40 blocks of transfers; sidecar A indexes them with rag on from the start, sidecar B without
    rag. B is restarted with rag enabled (no ``source.rpc_url`` anywhere): rag is caught up from the bridge's history
    (``history`` requests read from Reth's database), while more blocks arrive live, and its tables equal A's. Then,
    on the same bridge, a raw client's history requests: the blocks equal the node's JSON-RPC; a range beyond the
    node's head, a head not on the node's chain and a request before ``hello`` are refused naming the block."""
    from monmouth import wire
    from monmouth.types import BlockRef

    node, wallet = backlog(tmp_path, nodes, 40)
    a = Sidecar(tmp_path / "a", exex(node, 1), rag=True).start()
    b = Sidecar(tmp_path / "b", exex(node, 1), rag=False).start()
    sidecars += [a, b]
    head = node.head()
    b.wait_synced(node, at_least=head)
    b.stop()
    assert "rpc_url" not in b.cfg.read_text()
    b = Sidecar(tmp_path / "b", exex(node, 1), rag=True).start()  # same database, rag enabled late
    sidecars.append(b)
    for k in range(5):  # live blocks while rag catches up
        wallet.transfer(k, 9, 10**13 + k)
        time.sleep(0.2)
    target = node.head()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        st = b.status() or {}
        if (st.get("progress", {}).get("rag", {}).get("state") == "live" and b.head() is not None
                and b.head()[0] >= target):
            break
        time.sleep(0.25)
    else:
        raise AssertionError(f"rag did not catch up: {b.status()} {b.log_tail()}")
    st = b.status() or {}
    assert st["source"]["bridge"]["history"] == 64, st["source"]
    assert st["source"]["history_blocks"] >= head - 1, st["source"]
    assert st["progress"]["rag"]["first"] == 1 and st["progress"]["rag"]["error"] is None, st["progress"]
    n = a.wait_synced(node, at_least=target)
    assert b.wait_synced(node, at_least=n) == n
    tables = ("rec_blocks", "rec_txs", "rec_logs", "rag_docs", "rag_addresses", "rag_tokens", "rag_edges")
    assert plugin_tables(b.db, tables) == plugin_tables(a.db, tables)
    assert rows(b.db, "SELECT count(*) FROM rag_docs")[0][0] > 0
    a.stop()
    b.stop()

    # A raw client of the same bridge.
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(node.bridge)

    def ask(msg: wire.Message) -> wire.Message:
        sock.send(wire.encode(msg))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if sock.poll(1000):
                got = wire.decode(sock.recv())
                if not isinstance(got, wire.Heartbeat | wire.NotificationMsg):
                    return got
        raise AssertionError(f"no answer to {msg}")

    try:
        tip = node.block(n, False)
        ref = BlockRef(n, bytes.fromhex(tip["hash"][2:]))
        early = ask(wire.HistoryRequest(1, 1, 3, None))
        assert isinstance(early, wire.Error) and early.code == "unexpected" and "history request 1" in early.message
        welcome = ask(wire.Hello(wire.PROTOCOL_VERSION, ref, 8, "history-test"))
        assert isinstance(welcome, wire.Welcome) and welcome.history == 64
        got = ask(wire.HistoryRequest(2, 1, n, ref))
        assert isinstance(got, wire.HistoryBlocks) and got.error is None and got.blocks, got
        assert [blk.number for blk in got.blocks] == list(range(1, min(n, 64) + 1))
        for blk in got.blocks:
            want = node.block(blk.number, True)
            assert "0x" + blk.hash.hex() == want["hash"]
            assert ["0x" + t.hash.hex() for t in blk.transactions] == [t["hash"] for t in want["transactions"]]
            assert len(blk.receipts) == len(blk.transactions)
        best = node.head()
        beyond = ask(wire.HistoryRequest(3, best, best + 5, None))
        assert isinstance(beyond, wire.HistoryBlocks) and beyond.blocks is None
        assert f"block {best + 5} is beyond the node's head, block {best}" in (beyond.error or ""), beyond
        other = BlockRef(n, b"\x11" * 32)
        forked = ask(wire.HistoryRequest(4, 1, n, other))
        assert isinstance(forked, wire.HistoryBlocks) and f"the node's block {n} is" in (forked.error or ""), forked
    finally:
        sock.close(0)
        ctx.term()
    assert node.alive()

