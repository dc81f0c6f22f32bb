"""Shared helpers of the memory plugin's tests: engines with the memory plugin on real SQLite files or real
PostgreSQL databases (tests/pg.py's server)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from monmouth.config import validate
from monmouth.engine import Engine
from monmouth.metrics import Metrics
from monmouth.plugins import PluginHost, config_models
from monmouth.store import Database
from monmouth_memory.lattice import Lattice
from monmouth_memory.plugin import MemoryPlugin


def make_memory_engine(path: Path | str, memory: dict[str, Any] | None = None, extra: dict[str, object] | None = None,
                       workers: bool = False, **engine_cfg: Any) -> tuple[Engine, MemoryPlugin]:
    """An engine on ``path`` (a SQLite file, or a ``postgresql://`` URL of tests/pg.py's server) with a fresh memory
    plugin instance (config ``memory``) and ``extra`` plugins."""
    plugin = MemoryPlugin(workers=workers)
    plugins: dict[str, object] = {"memory": plugin, **(extra or {})}
    db: Any
    if isinstance(path, str) and path.startswith("postgresql://"):
        from monmouth.backends.postgres import PgDatabase
        from tests.pg import PASSWORD

        db = PgDatabase(path, password=PASSWORD)
    else:
        db = Database(path)
    metrics = Metrics(CollectorRegistry())
    host = PluginHost(plugins, db, metrics.registry)
    data: dict[str, Any] = {"plugins": {n: {"enabled": True} for n in plugins}, "engine": engine_cfg}
    data["plugins"]["memory"].update(memory or {})
    settings = validate(data, "<test>", config_models(plugins))
    host.apply_settings(settings)
    assert host.is_enabled("memory"), host.errors
    return Engine(db, host, settings.engine, metrics), plugin


def settle(conn: Any) -> None:
    """Settle every applied block (the running memory plugin of ``conn``'s database: ``memory_settle()`` on SQLite,
    the same settler found through the lattice registry on PostgreSQL), so that the derived tables (leaves, marks,
    block rows, chain items) hold every block."""
    if getattr(conn, "backend", "sqlite") == "postgres":
        settler = Lattice.for_connection(conn).settler
        assert settler is not None, "no memory plugin runs on this database"
        settler(None)
        return
    conn.execute("SELECT memory_settle()").fetchall()


def fts_rows_from(conn: Any, lo: int) -> int:
    """How many keyed full-text entries (FTS5 rows on SQLite, ``memory_fts`` rows on PostgreSQL) have a row id of
    at least ``lo``."""
    column = "n" if getattr(conn, "backend", "sqlite") == "postgres" else "rowid"
    return int(conn.execute(f"SELECT count(*) FROM memory_fts WHERE {column} >= ?", (lo,)).fetchone()[0])


def dump_tables(conn: Any, queries: dict[str, str]) -> dict[str, list[tuple[Any, ...]]]:
    """``{name: sorted rows of its query}``, after :func:`settle`: memory tables compared across reorgs and with
    fresh indexes."""
    settle(conn)
    return {t: sorted(conn.execute(q).fetchall()) for t, q in queries.items()}


def close(engine: Engine) -> None:
    engine.host.shutdown()
    engine.close()
