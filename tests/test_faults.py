"""Faults of the environment never kill the sidecar (issue 19, items 3-5), against a real sidecar subprocess and a
real anvil: a full disk (a real, small tmpfs) and a read-only or dropped database connection pause ingestion and
it resumes by itself; a reorg deeper than the undo data held pauses it without an exit loop, across restarts; a
node behind the indexed head is waited for, not reverted; a node's finalized tag cannot take the undo data of the
newest ``engine.finality_depth`` blocks; any bytes hot-reloaded into config.toml keep the last good config;
start-up faults give one line naming the key, file, path or port, and no traceback."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from tests.anvil import Anvil, free_port
from tests.conftest import make_engine
from tests.plugins import ledger
from tests.running import MONMOUTH, ROOT, FaultyNode, Sidecar, write_config
from tests.test_engine import dump
from tests.test_sources_rpc import index_fresh


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A real, small file system (tmpfs) at ``path``: needs root (CI and the development machines run as root)."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); the disk-full test needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Write a file in ``directory`` until its file system is full; returns the file."""
    filler = directory / "filler"
    chunk = b"\0" * 65536
    with filler.open("wb") as f:
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError:
            pass
    with contextlib.suppress(OSError), filler.open("ab") as f:  # the last few bytes a chunk did not fit into
        for _ in range(65536):
            f.write(b"\0")
            f.flush()
    return filler


def same_state_as_clean_run(db: Path, tmp_path: Path, anvil: Anvil) -> None:
    live = make_engine(db, {"ledger": ledger})
    n, h = anvil.head()
    assert live.head is not None and (live.head.number, "0x" + live.head.hash.hex()) == (n, h)
    fresh = anyio.run(index_fresh, tmp_path, anvil, "fresh.sqlite")
    assert dump(live.conn) == dump(fresh.engine.conn)
    live.close()
    fresh.close()


# ---------------------------------------------------------------------------------------------------- disk full


@pytest.mark.anvil
def test_disk_full_pauses_ingestion_and_it_resumes_by_itself(tmp_path, anvil):
    anvil.traffic(2)
    with tmpfs(tmp_path / "disk", "3m") as disk:
        port = free_port()
        cfg = write_config(tmp_path / "config.toml", url=anvil.url, port=port, db=disk / "db.sqlite")
        with Sidecar(cfg, port) as sc:
            sc.wait(lambda: sc.head() == anvil.head(), what="the first sync")
            filler = fill(disk)
            for i in range(40):  # enough writes that the WAL must grow into the full disk
                anvil.traffic(1, txs_per_block=6, seed=i)
                if sc.ready()[0] == 503:
                    break
            sc.wait(lambda: "cannot be written" in sc.ready()[1], what="ingestion paused on the full disk")
            code, reason = sc.ready()
            assert code == 503 and "FullError" in reason and str(disk / "db.sqlite") in reason
            assert "resumes by itself" in reason
            assert sc.metric("monmouth_ingestion_paused") == 1
            assert sc.alive and sc.get("/health").status_code == 200
            paused_at = sc.head()
            anyio.run(anyio.sleep, 1.5)  # several retries while still full: nothing moves, nothing half-applied
            assert sc.head() == paused_at and sc.alive
            filler.unlink()
            sc.wait(lambda: sc.head() == anvil.head(), what="resuming once space is freed")
            sc.wait(lambda: sc.ready()[0] == 200, what="ready again")
            assert sc.metric("monmouth_ingestion_paused") == 0
            log = sc.logged()
            assert "ingestion resumed" in log and "Traceback" not in log
        same_state_as_clean_run(disk / "db.sqlite", tmp_path, anvil)


# ---------------------------------------------------------------------------------------------------- reorg depth


@pytest.mark.anvil
def test_reorg_deeper_than_undo_data_pauses_never_exits_and_resumes_when_the_node_returns(tmp_path, anvil):
    """The node reorgs 8 blocks deep while only 4 blocks of undo data are held: ingestion pauses, the process
    stays up, a restart comes up paused instead of failing, and once the node serves the indexed chain again (a
    second anvil, loaded with the first one's state before the reorg) ingestion resumes by itself."""
    anvil.traffic(12, txs_per_block=1)
    with FaultyNode(anvil.url) as node, Anvil() as other:
        port = free_port()
        cfg = write_config(tmp_path / "config.toml", url=node.url, port=port)
        cfg.write_text(cfg.read_text().replace("[engine]\n", "[engine]\nundo_window = 4\n"))
        with Sidecar(cfg, port) as sc:
            sc.wait(lambda: sc.head() == anvil.head(), what="the first sync")
            indexed = sc.head()
            other.rpc("anvil_loadState", anvil.rpc("anvil_dumpState"))
            assert other.head() == indexed
            anvil.reorg(8, txs=2, seed=5)  # deeper than undo_window: the engine cannot undo it
            sc.wait(lambda: "reorg deeper than the undo data held" in sc.ready()[1], what="ingestion paused")
            code, reason = sc.ready()
            assert code == 503 and "undo data is held only from block" in reason and "docs/faults.md" in reason
            assert sc.metric("monmouth_ingestion_paused") == 1
            anyio.run(anyio.sleep, 1.5)  # the source is asked again with backoff: no exit loop, the cursor unmoved
            assert sc.alive and sc.get("/health").status_code == 200 and sc.head() == indexed
        # A restart does not fail either: it comes up paused, with the same problem.
        with Sidecar(cfg, port) as sc:
            sc.wait(lambda: "reorg deeper" in sc.ready()[1], what="paused again after a restart")
            assert sc.head() == indexed
            node.switch(other.url)  # the node serves the indexed chain again: ingestion resumes by itself
            other.traffic(2, seed=9)
            sc.wait(lambda: sc.head() == other.head(), what="resuming on the indexed chain")
            sc.wait(lambda: sc.ready()[0] == 200, what="ready again")
            assert sc.metric("monmouth_ingestion_paused") == 0 and "Traceback" not in sc.logged()
        same_state_as_clean_run(tmp_path / "db.sqlite", tmp_path, other)


@pytest.mark.anvil
@pytest.mark.anyio
async def test_a_node_on_another_chain_pauses_ingestion_until_it_returns(tmp_path, anvil):
    """The node switches to an unrelated chain (another anvil, another genesis): no common ancestor in the hash
    history, so ingestion pauses (not a retry loop inside the source) and resumes when the node returns."""
    from monmouth.app import open_app
    from monmouth.runner import Runner
    from monmouth.sources.rpc import RpcSource
    from tests.conftest import settings_for, wait_for
    from tests.test_sources_rpc import synced

    anvil.traffic(3)
    time.sleep(1.1)  # anvil's genesis block carries its start time (seconds): another second, another genesis hash
    with FaultyNode(anvil.url) as node, Anvil() as other:
        other.traffic(5, seed=1)
        assert other.block_hashes()[0] != anvil.block_hashes()[0]
        app = open_app(settings=settings_for(tmp_path / "db.sqlite", {"ledger": ledger}),
                       extra_plugins={"ledger": ledger})
        runner = Runner(app, RpcSource(node.url, poll_interval=0.05, batch_size=4, max_backoff=0.5),
                        serve_http=False, watch_config=False)
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner.run)
            await wait_for(lambda: synced(app, anvil), what="the first sync")
            before = app.engine.head
            node.switch(other.url)
            await wait_for(lambda: "shares no block with the indexed chain from block 0" in runner.ready()[1],
                           what="ingestion paused")
            await anyio.sleep(1.0)
            assert app.engine.head == before and runner.paused is not None
            node.switch(anvil.url)
            anvil.traffic(1)
            await wait_for(lambda: synced(app, anvil) and runner.paused is None, what="resuming")
            assert runner.ready()[0]
            tg.cancel_scope.cancel()
        app.close()


@pytest.mark.anvil
def test_node_whose_head_drops_80_blocks_is_waited_for_not_reverted(tmp_path, anvil):
    """A lagging node (its chain a prefix of the indexed one, 80 blocks shorter) is behind, not reorged."""
    anvil.mine(100)
    with FaultyNode(anvil.url) as node:
        port = free_port()
        cfg = write_config(tmp_path / "config.toml", url=node.url, port=port)
        cfg.write_text(cfg.read_text().replace("batch_size = 4", "batch_size = 50"))
        with Sidecar(cfg, port) as sc:
            sc.wait(lambda: sc.head() == anvil.head(), what="the first sync")
            indexed = sc.head()
            cap = indexed[0] - 80
            node.fault = lagging(cap)
            sc.wait(lambda: sc.status()["source"]["behind"] == 80, what="the node seen 80 blocks behind")
            code, reason = sc.ready()
            assert code == 503 and "80 blocks behind" in reason
            anyio.run(anyio.sleep, 1.0)
            assert sc.alive and sc.head() == indexed and sc.status()["reorgs"] == 0
            node.fault = None
            anvil.traffic(2)
            sc.wait(lambda: sc.head() == anvil.head(), what="following the node once it caught up")
            assert sc.ready()[0] == 200 and sc.status()["reorgs"] == 0
    same_state_as_clean_run(tmp_path / "db.sqlite", tmp_path, anvil)


def lagging(cap: int):
    """A node whose head is block ``cap``: newer blocks do not exist, its finalized tag is at most ``cap``."""
    def fault(method, params, result):
        if method == "eth_blockNumber":
            return hex(min(int(result, 16), cap))
        if method == "eth_getBlockByNumber" and isinstance(result, dict) and int(result["number"], 16) > cap:
            return None
        if method == "eth_getBlockReceipts" and params[0] not in ("latest", "finalized") and int(params[0], 16) > cap:
            return None
        return result
    return fault


@pytest.mark.anvil
def test_a_node_calling_its_head_finalized_keeps_finality_depth_blocks_revertible(tmp_path):
    """anvil with one slot per epoch calls blocks finalized right behind its head; with the default
    engine.finality_depth (64) the sidecar still reverts a reorg of 5 blocks exactly."""
    with Anvil(slots_in_an_epoch=1) as node:
        node.traffic(10, txs_per_block=1)
        port = free_port()
        cfg = write_config(tmp_path / "config.toml", url=node.url, port=port)
        with Sidecar(cfg, port) as sc:
            sc.wait(lambda: sc.head() == node.head(), what="the first sync")
            sc.wait(lambda: (sc.status()["source"]["node_finalized"] or {}).get("number", 0) >= 8,
                    what="the node's finalized tag")
            node.reorg(5, txs=2, seed=3)
            node.traffic(1)
            sc.wait(lambda: sc.head() == node.head(), what="the reorg applied")
            assert sc.status()["reorgs"] == 1 and sc.ready()[0] == 200
        same_state_as_clean_run(tmp_path / "db.sqlite", tmp_path, node)


# ---------------------------------------------------------------------------------------------------- config reload


def test_any_bytes_hot_reloaded_into_config_keep_the_last_good_config(tmp_path):
    port = free_port()
    cfg = write_config(tmp_path / "config.toml", url="http://127.0.0.1:9", port=port)  # no node needed
    good = cfg.read_bytes()
    with Sidecar(cfg, port) as sc:
        digest = sc.status()["config"]["digest"]
        contents = [
            good + b"\n# \xff\n",                       # a non-UTF-8 byte
            os.urandom(4096),                            # any bytes
            good + b"\nx = " + b"[" * 50_000 + b"]" * 50_000 + b"\n",  # nesting deep enough to break a parser
        ]
        for i, content in enumerate(contents):
            cfg.write_bytes(content)
            sc.wait(lambda r=i + 1: sc.metric("monmouth_config_reloads_total", 'outcome="rejected"') >= r,
                    what=f"content {i} rejected")
            assert sc.alive and sc.get("/health").status_code == 200
            assert sc.status()["config"]["digest"] == digest
        log = sc.logged()
        assert f"config reload of {cfg} rejected" in log and "not UTF-8 text: byte 0xff" in log
        cfg.write_bytes(good.replace(b"progress_interval = 0.5", b"progress_interval = 0.7"))
        sc.wait(lambda: sc.metric("monmouth_config_reloads_total", 'outcome="applied"') >= 1, what="a good edit")
        assert sc.status()["config"]["digest"] != digest and sc.alive


# ---------------------------------------------------------------------------------------------------- start-up


def run_once(cfg: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MONMOUTH, "run", "--config", str(cfg)], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})


def assert_one_clear_line(r: subprocess.CompletedProcess[str], *names: str) -> None:
    assert r.returncode != 0, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: ") and all(n in last for n in names), r.stderr


def test_start_up_faults_give_one_line_naming_key_file_path_or_port(tmp_path):
    port = free_port()
    cfg = write_config(tmp_path / "config.toml", url="http://127.0.0.1:9", port=port)
    base = cfg.read_text()

    (tmp_path / "a-file").write_text("")
    cfg.write_text(base.replace('path = "db.sqlite"', 'path = "a-file/db.sqlite"'))
    assert_one_clear_line(run_once(cfg, tmp_path), "storage.path", "a-file", "is not a directory")

    (tmp_path / "a-dir.sqlite").mkdir()
    cfg.write_text(base.replace('path = "db.sqlite"', 'path = "a-dir.sqlite"'))
    assert_one_clear_line(run_once(cfg, tmp_path), "storage.path", str(tmp_path / "a-dir.sqlite"))

    cfg.write_text(base.replace("[engine]", 'tls_cert = "cert.pem"\ntls_key = "key.pem"\n\n[engine]'))
    assert_one_clear_line(run_once(cfg, tmp_path), str(cfg), "http.tls_cert", "cert.pem", "no such file")

    cfg.write_text(base)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        assert_one_clear_line(run_once(cfg, tmp_path), str(cfg), "http.port", f"127.0.0.1:{port}")

    cfg.write_bytes(base.encode() + b"\n# \xff\n")
    assert_one_clear_line(run_once(cfg, tmp_path), str(cfg), "not UTF-8", "0xff")

    cfg.write_text(base + "\nx = " + "[" * 50_000 + "]" * 50_000 + "\n")
    assert_one_clear_line(run_once(cfg, tmp_path), str(cfg), "invalid TOML", "nested")


def test_read_only_database_at_start_names_the_path(tmp_path):
    port = free_port()
    with tmpfs(tmp_path / "ro", "2m") as ro:
        cfg = write_config(tmp_path / "config.toml", url="http://127.0.0.1:9", port=port, db=ro / "db.sqlite")
        with Sidecar(cfg, port):  # creates the database
            pass
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        assert_one_clear_line(run_once(cfg, tmp_path), "storage.path", str(ro / "db.sqlite"), "read-only")
        status = subprocess.run([*MONMOUTH, "status", "--config", str(cfg)], cwd=tmp_path, capture_output=True,
                                text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert_one_clear_line(status, "storage.path", str(ro / "db.sqlite"))


# ---------------------------------------------------------------------------------------------------- connection


def _drop(conn) -> None:
    conn.close()


def _read_only(conn) -> None:
    conn.pragma("query_only", True)  # every write now fails with SQLITE_READONLY, as on a read-only file


@pytest.mark.anvil
@pytest.mark.anyio
@pytest.mark.parametrize(("fault", "error", "clear_after"), [(_drop, "ConnectionClosedError", None),
                                                             (_read_only, "ReadOnlyError", 1.5)])
async def test_dropped_or_read_only_database_connection_pauses_then_resumes(tmp_path, anvil, fault, error,
                                                                           clear_after):
    """The engine's connection drops (closed under it) or turns read-only between notifications: the next commit
    fails, ingestion pauses with /ready's reason naming the fault, and resumes by itself (a new connection once
    the runner reconnects; the same one once writes work again); the result equals a clean run."""
    from monmouth.app import open_app
    from monmouth.runner import Runner
    from monmouth.sources.rpc import RpcSource
    from tests.conftest import settings_for, wait_for
    from tests.test_sources_rpc import synced

    app = open_app(settings=settings_for(tmp_path / "db.sqlite", {"ledger": ledger}), extra_plugins={"ledger": ledger})
    runner = Runner(app, RpcSource(anvil.url, poll_interval=0.05, batch_size=4, max_backoff=0.5), serve_http=False,
                    watch_config=False)
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run)
        anvil.traffic(2)
        await wait_for(lambda: synced(app, anvil), what="the first sync")
        before = app.engine.head
        async with runner.lock:
            fault(app.engine.conn)
        anvil.traffic(3, seed=4)

        def paused() -> bool:
            ok, reason = runner.ready()
            return not ok and error in reason and "cannot be written" in reason
        await wait_for(paused, what="ingestion paused")
        assert app.engine.head == before
        if clear_after is not None:
            await anyio.sleep(clear_after)  # retried meanwhile: still paused, nothing applied
            assert paused() and app.engine.head == before
            async with runner.lock:
                app.engine.conn.pragma("query_only", False)
        await wait_for(lambda: synced(app, anvil) and runner.paused is None, what="resuming")
        assert runner.ready()[0]
        tg.cancel_scope.cancel()
    fresh = await index_fresh(tmp_path, anvil, "fresh.sqlite")
    assert dump(app.engine.conn) == dump(fresh.engine.conn)
    app.close()
    fresh.close()
