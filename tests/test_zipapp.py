"""``monmouth`` as one executable file: ops/zipapp/build.sh builds a shiv zipapp with every dependency and the
embedding model; a bare CPython 3.11 (Debian's /usr/bin/python3.11, no virtualenv, ``-I``: no site or environment
of ours) runs ``--version``, a replay with RAG on, and a vector search whose answer needs the model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_cli import long_history

ROOT = Path(__file__).resolve().parents[1]
BARE_PYTHON = "/usr/bin/python3.11"


@pytest.fixture(scope="module")
def zipapp(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zipapp") / "monmouth.pyz"
    r = subprocess.run(["bash", str(ROOT / "ops" / "zipapp" / "build.sh"), str(out)], cwd=ROOT, capture_output=True,
                       text=True, timeout=1200, env={**os.environ, "PYTHON": sys.executable})
    assert r.returncode == 0, r.stdout + r.stderr
    assert out.stat().st_size > 50 * 2**20  # onnxruntime, numpy and the model are inside
    return out


def run(zipapp: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    if not Path(BARE_PYTHON).exists():
        pytest.fail(f"{BARE_PYTHON} is missing: the zipapp test runs it on Debian's own CPython 3.11")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SHIV_ROOT": str(tmp_path / "shiv")}
    return subprocess.run([BARE_PYTHON, "-I", str(zipapp), *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env=env)


@pytest.mark.timeout(1800)  # the build (in the fixture) counts: several minutes
def test_the_zipapp_runs_version_replay_and_search_on_a_bare_python(zipapp, tmp_path):
    bare = subprocess.run([BARE_PYTHON, "-I", "-c", "import numpy"], capture_output=True, text=True)
    assert bare.returncode != 0  # nothing of ours is installed for that interpreter
    r = run(zipapp, tmp_path, "--version")
    assert r.returncode == 0 and r.stdout.strip() == "monmouth, version 0.1.0", r.stdout + r.stderr

    _, canonical = long_history(tmp_path / "history.mnr")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "blobs.txt").write_text("EIP-4844 blob transactions carry data for rollups, pruned after "
                                                 "about 18 days.")
    (tmp_path / "docs" / "gas.md").write_text("# Gas\n\nEIP-1559 burns the base fee; the priority fee goes to the "
                                              "proposer.\n")
    (tmp_path / "config.toml").write_text("""
[storage]
path = "db.sqlite"
synchronous = "NORMAL"

[http]
enabled = false

[plugins.rag]
enabled = true
""")
    r = run(zipapp, tmp_path, "replay", "history.mnr", "--config", "config.toml")
    assert r.returncode == 0 and "replayed history.mnr" in r.stdout, r.stdout + r.stderr
    r = run(zipapp, tmp_path, "status", "--json", "--config", "config.toml")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["head"]["hash"] == "0x" + canonical[-1].hash.hex()
    r = run(zipapp, tmp_path, "rag", "ingest", "docs", "--config", "config.toml")
    assert r.returncode == 0 and "ingested 2 files" in r.stdout, r.stdout + r.stderr
    # A vector-only search: its answer comes from the embedding model inside the zipapp.
    r = run(zipapp, tmp_path, "rag", "search", "rollup data availability", "--k", "1", "--mode", "vector",
            "--config", "config.toml")
    assert r.returncode == 0 and "blobs.txt" in r.stdout, r.stdout + r.stderr
    r = run(zipapp, tmp_path, "rag", "search", "transfer", "--json", "--filter", "kind=tx", "--config", "config.toml")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout), r.stdout  # the replayed chain's transactions are indexed
