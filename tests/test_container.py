"""The sidecar's container image (ops/container/sidecar.Containerfile), built the way these machines can: a Debian 12
base made with mmdebstrap from Debian's packages (no image registry is reachable), ``buildah bud --isolation
chroot``; then smoke-tested with ``buildah run``: it runs as a non-root user, replays a file into its data volume,
answers ``/ready`` (and its HEALTHCHECK command passes), and refuses a bad ``MONMOUTH_`` override naming the file and
key. The ``monmouth-reth`` image's runtime stage with the binary .ci/run builds: Reth runs non-root into its volume.
Takes about 9 minutes (2 for the base, 3 for the sidecar's build, 3 for Reth's runtime and a dev chain)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.anvil import free_port
from tests.reth import reth_binary
from tests.test_cli import long_history

ROOT = Path(__file__).resolve().parents[1]


# ``buildah run --isolation chroot`` re-executes itself from a sealed memfd copy of its binary (runc's cloned-binary
# protection against CVE-2019-5736). Sealing it can fail with EBUSY while the kernel still holds a transient
# reference to the copy's pages, under load (seen once in CI, right after Reth stopped). Nothing ran in the container
# then: the command is tried again, up to 3 times; any other failure is the test's.
_TRANSIENT = "sealing memfd copy: Device or resource busy"


def sh(*args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
    for attempt in range(3):
        r = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
        if _TRANSIENT not in r.stderr:
            break
        time.sleep(1 + attempt)
    if check:
        assert r.returncode == 0, f"{' '.join(args)}: {r.stdout[-3000:]}{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A Debian 12 base image made with mmdebstrap from Debian's packages (no image registry is reachable)."""
    for tool in ("buildah", "mmdebstrap"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: apt-get install buildah mmdebstrap (.ci/run installs them)")
    tmp = tmp_path_factory.mktemp("base")
    base = f"localhost/monmouth-test-base:{uuid.uuid4().hex[:8]}"
    # Debian's packages from the mirror this machine's apt uses (mmdebstrap's default mirror otherwise).
    sources = [str(p) for p in (Path("/etc/apt/sources.list.d/debian.sources"),) if p.exists()]
    sh("mmdebstrap", "--variant=apt", "--include=python3,python3-venv,ca-certificates", "bookworm",
       str(tmp / "base.tar"), *sources, timeout=1200)
    ctr = sh("buildah", "from", "scratch").stdout.strip()
    sh("buildah", "add", ctr, str(tmp / "base.tar"), "/")
    # The host's trust store: where PyPI is reached through a TLS-intercepting proxy, its CA is in there.
    sh("buildah", "copy", ctr, "/etc/ssl/certs/ca-certificates.crt", "/etc/ssl/certs/ca-certificates.crt")
    sh("buildah", "commit", "--rm", ctr, base)
    (tmp / "base.tar").unlink()
    try:
        yield base
    finally:
        sh("buildah", "rmi", "-f", base, check=False)


@pytest.fixture(scope="module")
def image(base):
    img = f"localhost/monmouth-test:{uuid.uuid4().hex[:8]}"
    try:
        sh("buildah", "bud", "--isolation", "chroot", "--format", "docker", "--layers=false",
           "-f", str(ROOT / "ops" / "container" / "sidecar.Containerfile"), "--build-arg", f"BASE={base}",
           "--build-arg", "PIP_CERT=/etc/ssl/certs/ca-certificates.crt", "-t", img, str(ROOT), timeout=1800)
        yield img
    finally:
        sh("buildah", "rmi", "-f", img, check=False)


@pytest.mark.timeout(1800)  # the build (in the fixture) counts: several minutes
def test_the_sidecar_image_runs_non_root_replays_into_its_volume_and_answers_ready(image, tmp_path):
    cfg = json.loads(sh("buildah", "inspect", "--type", "image", image).stdout)["Docker"]["config"]
    assert cfg["User"] == "monmouth" and "/var/lib/monmouth" in cfg["Volumes"]
    assert "/ready" in " ".join(cfg["Healthcheck"]["Test"]) and cfg["Entrypoint"] == ["monmouth"]
    _, canonical = long_history(tmp_path / "history.mnr")
    ctr = sh("buildah", "from", image).stdout.strip()
    try:
        sh("buildah", "copy", "--chown", "monmouth:monmouth", ctr, str(tmp_path / "history.mnr"),
           "/var/lib/monmouth/history.mnr")
        assert sh("buildah", "run", "--isolation", "chroot", ctr, "--", "id", "-un").stdout.strip() == "monmouth"
        # Bad input: an unknown key from the environment is refused at once, naming the file and the key.
        bad = sh("buildah", "run", "--isolation", "chroot", "-e", "MONMOUTH_ENGINE__NO_SUCH_KEY=1", ctr, "--",
                 "monmouth", "run", check=False)
        assert bad.returncode != 0 and "/etc/monmouth/config.toml: unknown key 'engine.no_such_key'" in bad.stderr
        port = free_port()
        run = ["buildah", "run", "--isolation", "chroot", "-e", f"MONMOUTH_HTTP__PORT={port}", ctr, "--"]
        proc = subprocess.Popen([*run, "monmouth", "replay", "/var/lib/monmouth/history.mnr", "--rate", "6", "--http"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None, proc.communicate()
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "no /ready 200"
                time.sleep(0.5)
            health = " ".join(cfg["Healthcheck"]["Test"][1:]) if cfg["Healthcheck"]["Test"][0] == "CMD-SHELL" \
                else None
            check = sh(*run, *(["sh", "-c", health] if health else cfg["Healthcheck"]["Test"][1:]), check=False)
            assert check.returncode == 0, check.stderr  # the image's own HEALTHCHECK command
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        assert proc.returncode == 0 and "replayed /var/lib/monmouth/history.mnr" in out, err
        st = sh("buildah", "run", "--isolation", "chroot", "-e", "MONMOUTH_HTTP__ENABLED=false", ctr, "--",
                "monmouth", "status", "--json")
        assert json.loads(st.stdout)["head"]["hash"] == "0x" + canonical[-1].hash.hex()  # kept in the volume
    finally:
        sh("buildah", "rm", ctr, check=False)


@pytest.mark.timeout(1800)
def test_the_reth_image_runs_monmouth_reth_non_root_with_its_datadir_in_the_volume(base, tmp_path):
    """ops/container/reth.Containerfile's ``runtime`` stage (everything of the image but the binary, which its
    ``build`` stage compiles from Reth's git tag: no Rust image can be pulled here) with the ``monmouth-reth`` that
    .ci/run builds, added as the last stage adds it: Reth runs as the non-root ``reth`` user, mines a ``--dev``
    chain into the ``/var/lib/reth`` volume, answers JSON-RPC, and stops on the image's STOPSIGNAL."""
    binary = reth_binary()
    if binary is None:
        if os.environ.get("MONMOUTH_REQUIRE_RETH"):
            pytest.fail("monmouth-reth is not built (bridge/README.md); MONMOUTH_REQUIRE_RETH is set")
        pytest.skip("monmouth-reth is not built (bridge/README.md)")
    img = f"localhost/monmouth-reth-test:{uuid.uuid4().hex[:8]}"
    context = tmp_path / "context"
    context.mkdir()
    sh("buildah", "bud", "--isolation", "chroot", "--format", "docker", "--layers=false", "--target", "runtime",
       "-f", str(ROOT / "ops" / "container" / "reth.Containerfile"), "--build-arg", f"BASE={base}", "-t", img,
       str(context), timeout=1200)
    ctr = None
    try:
        cfg = json.loads(sh("buildah", "inspect", "--type", "image", img).stdout)["Docker"]["config"]
        assert cfg["User"] == "reth" and "/var/lib/reth" in cfg["Volumes"]
        assert cfg["Entrypoint"] == ["monmouth-reth"] and cfg["StopSignal"] == "SIGTERM"
        assert "--monmouth.endpoint" in cfg["Cmd"] and "/var/lib/reth" in cfg["Cmd"]
        ctr = sh("buildah", "from", img).stdout.strip()
        # What the image's last stage does: COPY --from=build /usr/local/bin/monmouth-reth /usr/local/bin/
        sh("buildah", "copy", "--chmod", "0755", ctr, str(binary), "/usr/local/bin/monmouth-reth")
        run = ["buildah", "run", "--isolation", "chroot", ctr, "--"]
        assert sh(*run, "id", "-un").stdout.strip() == "reth"
        assert "reth" in sh(*run, "monmouth-reth", "--version").stdout.lower()
        http, bridge = free_port(), free_port()
        proc = subprocess.Popen(
            [*run, "monmouth-reth", "node", "--dev", "--dev.block-time", "500ms", "--datadir", "/var/lib/reth",
             "--http", "--http.addr", "127.0.0.1", "--http.port", str(http), "--authrpc.port", str(free_port()),
             "--port", str(free_port()), "--disable-discovery", "--ipcdisable",
             "--monmouth.endpoint", f"tcp://127.0.0.1:{bridge}", "--color", "never"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline, head = time.monotonic() + 120, 0
            while head < 2:
                assert proc.poll() is None, proc.communicate()[0][-3000:]
                assert time.monotonic() < deadline, "no dev blocks over JSON-RPC"
                with contextlib.suppress(httpx.HTTPError):
                    head = int(httpx.post(f"http://127.0.0.1:{http}", timeout=2, json={
                        "jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []}).json()["result"], 16)
                time.sleep(0.5)
            # The image's STOPSIGNAL, sent to Reth itself as a container runtime does (``buildah run`` would kill it
            # with SIGKILL instead of forwarding a SIGTERM). Chroot isolation keeps the host's process namespace.
            reth = [int(p) for p in sh("pgrep", "-f", "--", f"--http.port {http} ", check=False).stdout.split()]
            reth = [p for p in reth if Path(f"/proc/{p}/comm").read_text().strip() == "monmouth-reth"]
            assert len(reth) == 1, reth
            os.kill(reth[0], signal.SIGTERM)
            out, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        assert proc.returncode == 0, out[-3000:]
        owners = sh(*run, "stat", "-c", "%U", "/var/lib/reth/db").stdout.split()
        assert owners == ["reth"], owners  # Reth wrote its database into the volume, as the reth user
    finally:
        if ctr is not None:
            sh("buildah", "rm", ctr, check=False)
        sh("buildah", "rmi", "-f", img, check=False)
