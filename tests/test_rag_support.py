"""Shared helpers for the rag tests (no tests here): an engine with the rag plugin on a real SQLite file or a real
PostgreSQL database (the ``rig`` fixture runs each test on both), and mainnet-shaped blocks."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

import monmouth_rag.plugin as rag
from monmouth.backends.postgres import PgDatabase
from monmouth.config import validate
from monmouth.engine import Engine
from monmouth.metrics import Metrics
from monmouth.plugins import PluginHost, config_models
from monmouth.store import Database
from monmouth.types import Block
from monmouth_rag.dialect import statements_of
from tests import pgvector
from tests.chains import h, load_mainnet_blocks, mainnet_shaped
from tests.pg import PASSWORD

TEMPLATES = load_mainnet_blocks()
PLUGINS = {"rag": rag}


#: rag settings for a PostgreSQL test database on this machine (:func:`settings_for` adds them): production's
#: ``pg_knn = "hnsw"`` with a pgvector that runs here (tests/pgvector.py), else the plain-SQL fallback.
PG_RAG = {} if pgvector.hnsw_runs() else {"pg_knn": "sql"}


def settings_for(**cfg):
    """Validated settings with rag enabled and configured by ``cfg`` (and :data:`PG_RAG`, which SQLite ignores)."""
    return validate({"plugins": {"rag": {"enabled": True, **PG_RAG, **cfg}}}, "<test>", config_models(PLUGINS))


def open_db(target: Path | str) -> Database | PgDatabase:
    """The database at ``target``: a SQLite file, or a ``postgresql://`` URL of tests/pg.py's server."""
    if isinstance(target, str):
        return PgDatabase(target, password=PASSWORD)
    return Database(target)


def embeddings(conn) -> dict[bytes, np.ndarray]:
    """``{tx_hash or doc_id: stored vector}`` of every ``rag_vec`` row (ids differ between databases)."""
    sql = statements_of(conn)
    return {txh if txh is not None else f"{doc}:{chunk}".encode(): sql.vector_value(vec) for txh, doc, chunk, vec in
            conn.execute("SELECT d.tx_hash, d.doc_id, d.chunk, v.embedding FROM rag_vec v "
                         "JOIN rag_docs d ON d.id = v.rowid")}


def fts_stats(conn) -> tuple[int, int] | None:
    """PostgreSQL: BM25's collection statistics ``rag_fts_stats`` (documents, tokens), after checking them and every
    ``rag_fts.length`` against a recount from the ``tsvector``s themselves (each position of each lexeme counted, not
    the plugin's expression); SQLite: ``None`` (FTS5 keeps its own)."""
    if getattr(conn, "backend", "sqlite") != "postgres":
        return None
    stored = conn.execute("SELECT docs, tokens FROM rag_fts_stats").fetchall()
    lengths = dict(conn.execute("SELECT f.rowid, (SELECT count(*) FROM unnest(f.tsv) u CROSS JOIN unnest(u.positions)) "
                                "FROM rag_fts f").fetchall())
    assert dict(conn.execute("SELECT rowid, length FROM rag_fts").fetchall()) == lengths, "rag_fts.length"
    assert stored == [(len(lengths), sum(lengths.values()))], "rag_fts_stats must equal a recount of rag_fts"
    return stored[0]


class Rig:
    """An engine with the rag plugin on one SQLite file or PostgreSQL database (only one runs at a time: the plugin
    is a module)."""

    def __init__(self, path: Path | str, **cfg) -> None:
        self.db = open_db(path)
        self.backend = self.db.backend
        self.metrics = Metrics(CollectorRegistry())
        self.host = PluginHost(PLUGINS, self.db, self.metrics.registry)
        self.settings = settings_for(**cfg)
        self.host.apply_settings(self.settings)
        assert self.host.errors == {}, self.host.errors
        self.engine = Engine(self.db, self.host, self.settings.engine, self.metrics)

    def close(self) -> None:
        self.host.shutdown()
        self.engine.close()


@pytest.fixture(name="rig", params=["sqlite", "postgres"])
def rig_fixture(request, tmp_path):
    """``make(name, **rag_config) -> Rig`` on each backend in turn (a name is one SQLite file or one fresh PostgreSQL
    database; the same name reopens it)."""
    yield from _rigs(request, tmp_path, request.param)


@pytest.fixture(name="rig")
def sqlite_rig_fixture(request, tmp_path):
    """``rig`` on SQLite only: for the in-memory ANN index, which only the SQLite backend uses."""
    yield from _rigs(request, tmp_path, "sqlite")


@pytest.fixture(name="pg_rig")
def pg_rig_fixture(request, tmp_path):
    """``rig`` on PostgreSQL only: for what only that backend has (round trips to a server)."""
    yield from _rigs(request, tmp_path, "postgres")


def _rigs(request, tmp_path, backend: str):
    rigs: list[Rig] = []
    server = request.getfixturevalue("pg_server") if backend == "postgres" else None
    databases: dict[str, str] = {}

    def make(name: str = "db.sqlite", **cfg) -> Rig:
        for r in rigs:
            r.close()
        rigs.clear()
        cfg.setdefault("worker", False)
        target = databases.setdefault(name, server.database()) if server is not None else tmp_path / name
        r = Rig(target, **cfg)
        rigs.append(r)
        return r

    make.backend = backend  # type: ignore[attr-defined]
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


