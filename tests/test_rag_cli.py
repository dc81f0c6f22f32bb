"""``monmouth rag search|ingest`` through the real CLI group and ``open_app`` on a real SQLite file."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

import monmouth_rag.plugin as rag


@pytest.fixture
def cli():
    @click.group()
    def root() -> None:
        pass

    rag.monmouth_register_commands(root)  # the hook under test
    return root


@pytest.fixture
def config(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text('[storage]\npath = "db.sqlite"\nsynchronous = "NORMAL"\n\n[plugins.rag]\nenabled = true\n'
                   "worker = false\n")
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "gas.md").write_text("# Gas\n\nEIP-1559 burns the base fee; the priority fee goes to the proposer.\n")
    (docs / "sub" / "blobs.txt").write_text("EIP-4844 blob transactions carry data for rollups, pruned after "
                                            "about 18 days.")
    (docs / "image.png").write_bytes(b"\x89PNG")
    return cfg, docs


def test_register_commands_adds_the_rag_group(cli):
    assert set(cli.commands["rag"].commands) >= {"search", "ingest"}


def test_ingest_then_search(cli, config):
    cfg, docs = config
    run = CliRunner()
    r = run.invoke(cli, ["rag", "ingest", str(docs), "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    assert "ingested 2 files" in r.output and "embedded" in r.output
    r = run.invoke(cli, ["rag", "search", "rollup data availability", "--k", "1", "--mode", "vector", "--config",
                         str(cfg)])
    assert r.exit_code == 0, r.output
    assert "blobs.txt" in r.output
    r = run.invoke(cli, ["rag", "search", "base fee burn", "--json", "--filter", "kind=document", "--config",
                         str(cfg)])
    hits = json.loads(r.output)
    assert hits[0]["provenance"]["doc_id"].endswith("gas.md")
    # re-ingesting a path replaces the document
    r = run.invoke(cli, ["rag", "ingest", str(docs / "gas.md"), "--config", str(cfg)])
    assert "(replaced)" in r.output


@pytest.mark.parametrize("args, needle", [
    (["--filter", "colour=red"], "unknown filter 'colour'"),
    (["--filter", "intent"], "key=value"),
    (["--filter", "intent=steal"], "intent"),
    (["--k", "0"], "--k"),
    (["--mode", "psychic"], "--mode"),
])
def test_bad_search_arguments_name_the_problem(cli, config, args, needle):
    cfg, _ = config
    r = CliRunner().invoke(cli, ["rag", "search", "x", *args, "--config", str(cfg)])
    assert r.exit_code != 0 and needle in r.output


def test_empty_query_and_missing_path(cli, config):
    cfg, docs = config
    r = CliRunner().invoke(cli, ["rag", "search", "  ", "--config", str(cfg)])
    assert r.exit_code != 0 and "must not be empty" in r.output
    r = CliRunner().invoke(cli, ["rag", "ingest", str(docs / "nope.md"), "--config", str(cfg)])
    assert r.exit_code != 0 and "no such file" in r.output


def test_disabled_plugin_is_reported(cli, tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text('[storage]\npath = "db.sqlite"\n')
    r = CliRunner().invoke(cli, ["rag", "search", "x", "--config", str(cfg)])
    assert r.exit_code != 0 and "plugins.rag.enabled" in r.output
