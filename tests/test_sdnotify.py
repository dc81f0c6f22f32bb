"""systemd's notification protocol (sidecar/sdnotify.py): ``monmouth run`` as a real subprocess with a real unix
datagram socket as ``NOTIFY_SOCKET``, the way a ``Type=notify`` unit runs it. ``READY=1`` arrives once the sidecar is
ready by the test of ``/ready`` (not before: it is catching up from anvil meanwhile, and ``STATUS=`` says why),
``WATCHDOG=1`` every half ``WATCHDOG_USEC``, and ``STOPPING=1`` when SIGTERM starts the graceful stop."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import httpx

from monmouth.sdnotify import Notifier
from tests.anvil import free_port
from tests.test_shutdown import MONMOUTH, env, marks, stop, wait_for, write_config


@contextlib.contextmanager
def notify_socket(abstract: bool = False) -> Iterator[tuple[socket.socket, str]]:
    """A bound AF_UNIX datagram socket and its ``NOTIFY_SOCKET`` value (a short path: sun_path holds 108 bytes)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        if abstract:
            name = f"monmouth-test-{os.getpid()}-{os.path.basename(d)}"
            sock.bind(b"\0" + name.encode())
            value = "@" + name
        else:
            value = os.path.join(d, "notify")
            sock.bind(value)
        sock.settimeout(0.2)
        try:
            yield sock, value
        finally:
            sock.close()


def received(sock: socket.socket) -> list[tuple[float, dict[str, str]]]:
    """The datagrams waiting on ``sock``, as (arrival time, fields)."""
    out = []
    while True:
        try:
            data = sock.recv(4096)
        except TimeoutError:
            return out
        out.append((time.monotonic(), dict(line.split("=", 1) for line in data.decode().split("\n"))))


def test_ready_watchdog_and_stopping_reach_a_real_notify_socket(tmp_path, anvil):
    anvil.traffic(60, txs_per_block=1)
    port = free_port()
    cfg = write_config(tmp_path, f'kind = "rpc"\nurl = "{anvil.url}"\npoll_interval = 0.1\nbatch_size = 4',
                       http_port=port)
    mark = tmp_path / "marks"
    with notify_socket() as (sock, address):
        proc = subprocess.Popen([*MONMOUTH, "run", "--config", str(cfg)], cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                env=env(NOTIFY_SOCKET=address, WATCHDOG_USEC="1000000", SLOW_PLUGIN_SECONDS="0.05",
                                        SLOW_PLUGIN_MARK=str(mark)))
        try:
            msgs: list[tuple[float, dict[str, str]]] = []
            ready_at_block = None

            def ready_seen() -> bool:
                nonlocal ready_at_block
                for _, m in received(sock):
                    msgs.append((time.monotonic(), m))
                    if "READY" in m and ready_at_block is None:
                        ready_at_block = len(marks(mark))
                        # systemd now starts what is ordered after the unit: /ready agrees.
                        assert httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5).status_code == 200
                return ready_at_block is not None

            wait_for(ready_seen, 120, "READY=1", proc)
            # Not ready while it caught up (60 blocks at 50 ms each), and STATUS said why.
            assert ready_at_block is not None and ready_at_block >= 60 - 3, ready_at_block
            statuses = [m["STATUS"] for _, m in msgs if "STATUS" in m]
            assert any(s.startswith("not ready: lagging") for s in statuses), statuses
            assert statuses[-1].startswith("ready: caught up; head "), statuses
            assert sum("READY" in m for _, m in msgs) == 1
            # The watchdog: WATCHDOG_USEC = 1 s, so a ping every 0.5 s.
            received(sock)
            time.sleep(2.2)
            pings = [m for _, m in received(sock) if m.get("WATCHDOG") == "1"]
            assert 3 <= len(pings) <= 6, pings
            code, _, err = stop(proc)
            assert code == 0, err
            after = [m for _, m in received(sock)]
            assert any(m.get("STOPPING") == "1" for m in after), after
            assert not any("READY" in m for m in after), after
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def test_no_watchdog_for_another_process_and_abstract_addresses(tmp_path):
    assert Notifier.from_environ({}) is None
    assert Notifier.from_environ({"NOTIFY_SOCKET": "vsock:2:1234"}) is None
    n = Notifier.from_environ({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000"})
    assert n is not None and n.watchdog == 30.0
    for other in ({"WATCHDOG_PID": str(os.getpid() + 1)}, {"WATCHDOG_USEC": "0"}, {"WATCHDOG_USEC": "soon"}):
        env_ = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000", **other}
        n = Notifier.from_environ(env_)
        assert n is not None and n.watchdog is None, other
    with notify_socket(abstract=True) as (sock, address):
        n = Notifier.from_environ({"NOTIFY_SOCKET": address, "WATCHDOG_PID": str(os.getpid()),
                                   "WATCHDOG_USEC": "2000000"})
        assert n is not None and n.watchdog == 2.0
        assert n.notify("READY=1", "STATUS=hello")
        assert [m for _, m in received(sock)] == [{"READY": "1", "STATUS": "hello"}]
    # The socket is gone: the failure is reported, not raised.
    assert not n.notify("WATCHDOG=1")
    n.close()
