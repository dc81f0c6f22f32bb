"""Helpers to run sidecars with the integration plugins in tests (engines, fast retry settings, metrics)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from monmouth.config import validate
from monmouth.engine import Engine
from monmouth.metrics import Metrics
from monmouth.plugins import PluginHost, config_models
from monmouth.store import Database

#: anvil's first dev account (its well-known test mnemonic); used as performer/requester key in tests.
DEV_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
DEV_ADDRESS = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"

#: Fast retry settings for tests.
FAST = {"timeout_s": 0.5, "backoff_initial_s": 0.02, "backoff_max_s": 0.1, "poll_interval_s": 0.05}


def integration_engine(path: Path | str, plugins: dict[str, object],
                       config: dict[str, dict[str, Any]] | None = None, **engine_cfg: Any) -> Engine:
    """An engine on a real SQLite file (or a ``postgresql://`` URL of tests/pg.py's server) with ``plugins``
    installed and enabled, ``config`` their sections."""
    if isinstance(path, str):
        from monmouth.backends.postgres import PgDatabase
        from tests.pg import PASSWORD

        db: Any = PgDatabase(path, password=PASSWORD)
    else:
        db = Database(path)
    metrics = Metrics(CollectorRegistry())
    host = PluginHost(plugins, db, metrics.registry)
    data: dict[str, Any] = {"plugins": {n: {"enabled": True, **(config or {}).get(n, {})} for n in plugins},
                            "engine": engine_cfg}
    settings = validate(data, "<test>", config_models(plugins))
    host.apply_settings(settings)
    for name in plugins:
        assert host.is_enabled(name), host.errors
    return Engine(db, host, settings.engine, metrics)


def close(engine: Engine) -> None:
    engine.host.shutdown()
    engine.close()


def sample(engine: Engine, name: str, labels: dict[str, str] | None = None) -> float:
    """A metric's current value (0 if it has no sample yet)."""
    return engine.host.metrics.get_sample_value(name, labels or {}) or 0.0


def open_test_app(db_path: Path | str, plugins: dict[str, object], config: dict[str, dict[str, Any]] | None = None,
                  **sections: Any) -> Any:
    """A whole sidecar (``monmouth.app.open_app``) on ``db_path`` (a SQLite file, or a ``postgresql://`` URL of
    tests/pg.py's server) with ``plugins`` (instances, overriding the entry points) enabled and configured by
    ``config``; every other installed plugin disabled."""
    from monmouth.app import open_app
    from monmouth.plugins import discover

    installed = discover({}, plugins)
    pg = isinstance(db_path, str)
    storage = {"url": db_path} if pg else {"path": str(db_path), "synchronous": "NORMAL"}
    data: dict[str, Any] = {"storage": storage, "http": {"enabled": False},
                            "plugins": {n: {"enabled": n in plugins, **(config or {}).get(n, {})} for n in installed}}
    for k, v in sections.items():
        data.setdefault(k, {}).update(v)
    settings = validate(data, "<test>", config_models(installed))
    if pg:
        from tests.conftest import PG_ENV

        app = open_app(settings=settings, extra_plugins=plugins, environ=PG_ENV)
    else:
        app = open_app(settings=settings, extra_plugins=plugins)
    for name in plugins:
        assert app.host.is_enabled(name), app.host.errors
    return app


def loopback_client(app: Any) -> Any:
    """A FastAPI TestClient on the sidecar's API, calling from loopback (an open loopback client is admin)."""
    from fastapi.testclient import TestClient

    from monmouth.api import create_api

    return TestClient(create_api(app), client=("127.0.0.1", 40000), base_url="http://127.0.0.1")
