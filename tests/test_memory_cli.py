"""``monmouth memory ...`` and ``monmouth checkpoint ...`` (monmouth_register_commands), through click."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from monmouth.types import ChainCommitted
from monmouth_memory import plugin as memory_plugin
from tests.chains import address, chain, extend

A1 = "0x" + address(1).hex()


@pytest.fixture
def cli(tmp_path):
    group = click.Group("monmouth")
    memory_plugin.monmouth_register_commands(cli=group)
    cfg = tmp_path / "config.toml"
    cfg.write_text(f"""
[storage]
path = "{tmp_path / 'db.sqlite'}"
synchronous = "NORMAL"

[plugins.memory]
enabled = true
agents = ["{A1}"]
embed = false
""")
    runner = CliRunner()

    def run(*args: str, ok: bool = True, input: str | None = None):
        res = runner.invoke(group, [*args, "--config", str(cfg)], input=input, catch_exceptions=False)
        if ok:
            assert res.exit_code == 0, res.output
        return res

    return run, cfg, tmp_path


def _apply_blocks(cfg, count: int, start: int) -> None:
    from monmouth.app import open_app

    app = open_app(cfg)
    try:
        parent = None
        if app.engine.head is not None:
            sb = app.engine.canonical(app.engine.head.number)
            from monmouth.types import Block

            parent = Block(sb.number, sb.hash, sb.parent_hash, sb.timestamp, b"\x00" * 20, 0, 0)
        app.engine.apply(ChainCommitted(chain(extend(parent, count, number=start, n_txs=2, salt=start))))
    finally:
        app.close()


def test_memory_commands_end_to_end(cli):
    run, cfg, tmp = cli
    _apply_blocks(cfg, 2, 1)
    out = json.loads(run("memory", "store", A1, "the cellar key is under the mat", "--tag", "keys").output)
    iid = out["id"]
    assert json.loads(run("memory", "get", A1, iid).output)["content"] == "the cellar key is under the mat"
    assert any(i["id"] == iid for i in json.loads(run("memory", "list", A1, "--tag", "keys").output)["items"])
    rec = json.loads(run("memory", "recall", A1, "where is the cellar key").output)
    assert rec["results"][0]["id"] == iid
    _apply_blocks(cfg, 1, 3)
    pr = json.loads(run("memory", "proof", A1, iid).output)
    root = json.loads(run("memory", "root", A1).output)
    assert pr["root"] == root["root"] and root["global_proof"] is not None
    assert json.loads(run("memory", "root").output)["root"] == root["global_root"]
    bad = run("memory", "store", A1, "x", "--kind", "dream", ok=False)
    assert bad.exit_code != 0 and "kind" in bad.output

    # export, verify, tamper, import into another sidecar
    arc = tmp / "a1.json"
    run("memory", "export", A1, str(arc))
    assert json.loads(run("memory", "verify", str(arc)).output)["root"] == root["root"]
    data = json.loads(arc.read_text())
    first = data["items"][0]["id"]
    data["items"][0]["metadata"] = {"forged": True}
    forged = tmp / "forged.json"
    forged.write_text(json.dumps(data))
    res = run("memory", "import", str(forged), ok=False)
    assert res.exit_code != 0 and first in res.output and "refused" in res.output

    # checkpoints
    c1 = json.loads(run("checkpoint", "create", "--name", "one").output)
    assert c1["block"]["number"] == 3
    run("checkpoint", "create", "--name", "two")
    names = [m["name"] for m in json.loads(run("checkpoint", "list").output)["checkpoints"]]
    assert names == ["one", "two"]
    assert json.loads(run("checkpoint", "prune", "--keep", "1").output)["deleted"] == ["one"]
    _apply_blocks(cfg, 2, 4)
    assert json.loads(run("checkpoint", "restore", "two", "--yes").output)["name"] == "two"
    from monmouth.app import open_app

    app = open_app(cfg)
    try:
        assert app.engine.head.number == 3
    finally:
        app.close()

    # forget
    res = run("memory", "forget", A1, input="n\n", ok=False)
    assert res.exit_code != 0
    out = json.loads(run("memory", "forget", A1, "--yes").output)
    assert out["forgotten"] and out["key_destroyed"]
    assert run("memory", "get", A1, iid, ok=False).exit_code != 0


def test_memory_commands_on_postgres_and_checkpoints_refused_naming_storage_url(tmp_path, pg_url, monkeypatch):
    from tests.pg import PASSWORD

    monkeypatch.setenv("MONMOUTH_PG_PASSWORD", PASSWORD)
    group = click.Group("monmouth")
    memory_plugin.monmouth_register_commands(cli=group)
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[storage]\nurl = "{pg_url}"\n\n[plugins.memory]\nenabled = true\nagents = ["{A1}"]\n'
                   'embed = false\nkey_dir = "keys"\n')  # relative: to the config file's directory
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(group, [*args, "--config", str(cfg)], catch_exceptions=False)

    stored = run("memory", "store", A1, "kept in postgres", "--tag", "pg")
    assert stored.exit_code == 0, stored.output
    listed = run("memory", "list", A1, "--tag", "pg")
    assert listed.exit_code == 0 and json.loads(listed.output)["items"][0]["content"] == "kept in postgres"
    assert (tmp_path / "keys" / f"{A1[2:]}.key").exists()
    for args in (("checkpoint", "create"), ("checkpoint", "restore", "latest", "--yes")):
        res = run(*args)
        assert res.exit_code != 0 and "storage.url: checkpoints are copies of the SQLite file" in res.output
