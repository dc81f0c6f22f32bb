from __future__ import annotations

import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from monmouth.config import Settings, validate  # noqa: E402
from monmouth.engine import Engine  # noqa: E402
from monmouth.metrics import Metrics  # noqa: E402
from monmouth.plugins import PluginHost, config_models  # noqa: E402
from monmouth.store import Database  # noqa: E402


def make_engine(path: Path, plugins: dict[str, object], enabled: tuple[str, ...] | None = None, **engine_cfg) -> Engine:
    """An engine on a real SQLite file with the given plugins enabled."""
    db = Database(path)
    metrics = Metrics(CollectorRegistry())
    host = PluginHost(plugins, db, metrics.registry)
    names = tuple(plugins) if enabled is None else enabled
    data = {"plugins": {n: {"enabled": n in names} for n in plugins}, "engine": engine_cfg}
    settings: Settings = validate(data, "<test>", config_models(plugins))
    host.apply_settings(settings)
    return Engine(db, host, settings.engine, metrics)


@pytest.fixture
def engine_factory(tmp_path):
    engines: list[Engine] = []

    def factory(name: str = "db.sqlite", plugins: dict[str, object] | None = None, **kw) -> Engine:
        from tests.plugins import ledger

        e = make_engine(tmp_path / name, plugins if plugins is not None else {"ledger": ledger}, **kw)
        engines.append(e)
        return e

    yield factory
    for e in engines:
        e.host.shutdown()
        e.close()
