"""config.toml: validation names the key and the file; env overrides; get/set keep comments."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import BaseModel, ConfigDict

from monmouth import hookimpl
from monmouth.app import load_settings
from monmouth.cli import cli
from monmouth.config import env_overrides
from monmouth.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


class GreeterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    greeting: str = "hello"
    times: int = 1


class Greeter:
    @hookimpl
    def monmouth_config_model(self):
        return GreeterConfig


def write(tmp_path, text: str) -> Path:
    p = tmp_path / "config.toml"
    p.write_text(text)
    return p


def test_repository_default_config_is_valid():
    settings, _ = load_settings(ROOT / "config.toml")
    assert settings.source.kind == "rpc" and settings.http.host == "127.0.0.1"
    assert settings.storage.path == str(ROOT / "data" / "monmouth.sqlite")


@pytest.mark.parametrize("text, needle", [
    ("[source]\nkind = 'carrier-pigeon'\n", "source.kind"),
    ("[source]\nurl = 'x'\nbogus = 1\n", "unknown key 'source.bogus'"),
    ("[http]\nport = 'eighty'\n", "http.port"),
    ("[engine]\nundo_window = 0\n", "engine.undo_window"),
    ("[nonsense]\na = 1\n", "unknown key 'nonsense'"),
    ("[plugins.nope]\nenabled = true\n", "plugins.nope: no such plugin is installed"),
    ("[plugins.greeter]\nenabled = true\ntimes = 'many'\n", "plugins.greeter.times"),
    ("[plugins.greeter]\nenabled = true\ncolour = 'red'\n", "unknown key 'plugins.greeter.colour'"),
    ("[source\nkind = 1", "invalid TOML"),
])
def test_invalid_config_names_file_and_key(tmp_path, text, needle):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        load_settings(p, {"greeter": Greeter()})
    assert needle in str(ei.value) and str(p) in str(ei.value)


def test_plugin_section_validated_by_its_model(tmp_path):
    p = write(tmp_path, "[plugins.greeter]\nenabled = true\ngreeting = 'gm'\n")
    settings, _ = load_settings(p, {"greeter": Greeter()})
    assert settings.plugin_enabled("greeter")
    assert settings.plugins["greeter"].config == GreeterConfig(greeting="gm")


def test_environment_overrides(tmp_path):
    p = write(tmp_path, "[source]\nurl = 'http://a'\n")
    env = {"MONMOUTH_SOURCE__URL": "http://b:8545", "MONMOUTH_HTTP__PORT": "9999",
           "MONMOUTH_PLUGINS__GREETER__ENABLED": "true", "MONMOUTH_CONFIG": "ignored", "OTHER": "x"}
    settings, _ = load_settings(p, {"greeter": Greeter()}, environ=env)
    assert settings.source.url == "http://b:8545" and settings.http.port == 9999
    assert settings.plugin_enabled("greeter")
    assert env_overrides({"MONMOUTH_A__B__C": "[1, 2]"}) == {"a": {"b": {"c": [1, 2]}}}
    with pytest.raises(ConfigError, match="http.port"):
        load_settings(p, environ={"MONMOUTH_HTTP__PORT": "not-a-port"})


def test_cli_config_get_set_keeps_comments_and_refuses_invalid(tmp_path):
    p = tmp_path / "config.toml"
    shutil.copy(ROOT / "config.toml", p)
    original = p.read_text()
    r = CliRunner()
    assert r.invoke(cli, ["config", "get", "source.url", "--config", str(p)]).output.strip() == "http://127.0.0.1:8545"
    res = r.invoke(cli, ["config", "set", "http.port", "9090", "--config", str(p)])
    assert res.exit_code == 0, res.output
    assert r.invoke(cli, ["config", "get", "http.port", "--config", str(p)]).output.strip() == "9090"
    text = p.read_text()
    assert text == original.replace("port = 8080", "port = 9090")  # comments and layout kept
    res = r.invoke(cli, ["config", "set", "http.port", "'eighty'", "--config", str(p)])
    assert res.exit_code != 0 and "http.port" in res.output
    assert p.read_text() == text  # an invalid edit is refused and not written
    res = r.invoke(cli, ["config", "get", "source.nothing", "--config", str(p)])
    assert res.exit_code != 0 and "not set" in res.output


def test_cli_config_set_takes_negative_numbers_and_dash_values(tmp_path):
    (tmp_path / "knobs.py").write_text(
        "from pydantic import BaseModel, ConfigDict\n"
        "from monmouth import hookimpl\n"
        "class Knobs(BaseModel):\n"
        "    model_config = ConfigDict(extra='forbid')\n"
        "    enabled: bool = False\n"
        "    module: str = ''\n"
        "    threshold: int = 0\n"
        "    ratio: float = 0.0\n"
        "    label: str = ''\n"
        "@hookimpl\n"
        "def monmouth_config_model():\n"
        "    return Knobs\n")
    p = tmp_path / "config.toml"
    p.write_text('[plugins.knobs]\nmodule = "knobs.py"  # a test plugin\n')
    r = CliRunner()
    for key, value, stored in [("threshold", "-1", "-1"), ("ratio", "-0.5", "-0.5"), ("label", "-x", "-x"),
                               ("label", "--dashes", "--dashes")]:
        res = r.invoke(cli, ["config", "set", f"plugins.knobs.{key}", value, "--config", str(p)])
        assert res.exit_code == 0, res.output
        got = r.invoke(cli, ["config", "get", f"plugins.knobs.{key}", "--config", str(p)])
        assert got.output.strip() == stored
    res = r.invoke(cli, ["config", "set", "--config", str(p), "plugins.knobs.threshold", "-42"])
    assert res.exit_code == 0, res.output
    assert 'threshold = -42' in p.read_text() and "# a test plugin" in p.read_text()
    res = r.invoke(cli, ["config", "set", "plugins.knobs.threshold", "-x", "--config", str(p)])
    assert res.exit_code != 0 and "plugins.knobs.threshold" in res.output
    assert 'threshold = -42' in p.read_text()
