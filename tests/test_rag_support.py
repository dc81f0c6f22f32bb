"""Shared helpers for the rag tests (no tests here): an engine with the rag plugin on a real SQLite file, and
mainnet-shaped blocks."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from prometheus_client import CollectorRegistry

import monmouth_rag.plugin as rag
from monmouth.config import validate
from monmouth.engine import Engine
from monmouth.metrics import Metrics
from monmouth.plugins import PluginHost, config_models
from monmouth.store import Database
from monmouth.types import Block
from tests.chains import h, load_mainnet_blocks, mainnet_shaped

TEMPLATES = load_mainnet_blocks()
PLUGINS = {"rag": rag}


def settings_for(**cfg):
    return validate({"plugins": {"rag": {"enabled": True, **cfg}}}, "<test>", config_models(PLUGINS))


class Rig:
    """An engine with the rag plugin on one SQLite file (only one runs at a time: the plugin is a module)."""

    def __init__(self, path: Path, **cfg) -> None:
        self.db = Database(path)
        self.metrics = Metrics(CollectorRegistry())
        self.host = PluginHost(PLUGINS, self.db, self.metrics.registry)
        self.settings = settings_for(**cfg)
        self.host.apply_settings(self.settings)
        assert self.host.errors == {}, self.host.errors
        self.engine = Engine(self.db, self.host, self.settings.engine, self.metrics)

    def close(self) -> None:
        self.host.shutdown()
        self.engine.close()


@pytest.fixture(name="rig")
def rig_fixture(tmp_path):
    rigs: list[Rig] = []

    def make(name: str = "db.sqlite", **cfg) -> Rig:
        for r in rigs:
            r.close()
        rigs.clear()
        cfg.setdefault("worker", False)
        r = Rig(tmp_path / name, **cfg)
        rigs.append(r)
        return r

    yield make
    for r in rigs:
        r.close()


def blocks(count: int, txs: int = 6, salt: str = "A", start: int = 20_000_000) -> list[Block]:
    return list(mainnet_shaped(TEMPLATES, count, txs_per_block=txs, start=start, salt=salt))


def relink(bs: list[Block], parent: Block, salt: str) -> list[Block]:
    """``bs`` re-chained on top of ``parent`` (new numbers and hashes)."""
    out: list[Block] = []
    prev = parent
    for b in bs:
        nb = msgspec.structs.replace(b, number=prev.number + 1, parent_hash=prev.hash,
                                     hash=h("fork", prev.hash, salt))
        out.append(nb)
        prev = nb
    return out


