"""Which in-memory vector index a configuration names (``plugins.rag.ann_index``)."""

from __future__ import annotations

import logging
from pathlib import Path

from .ann import SyncedIndex, VectorIndex
from .config import RagConfig
from .hnsw import HnswIndex
from .ivf import IvfIndex

log = logging.getLogger(__name__)

#: the persisted indexes, by ``ann_index``
PERSISTED = ("ivf", "hnsw")


def open_index(cfg: RagConfig, db_path: Path | None, dim: int) -> SyncedIndex:
    """The in-memory index ``cfg.ann_index`` names, for the database at ``db_path``. The IVF and HNSW indexes are
    persisted as ``<db_path>.rag-ivf.npz`` and ``<db_path>.rag-hnsw.npz`` (``db_path`` ``None``: not persisted)."""
    if db_path is not None:
        for other in PERSISTED:
            stale = db_path.with_name(f"{db_path.name}.rag-{other}.npz")
            if other != cfg.ann_index and stale.exists():
                log.info("rag: %s is the index of ann_index = %r, not used with %r (%.0f MB; delete it, or set "
                         "ann_index back)", stale, other, cfg.ann_index, stale.stat().st_size / 2**20)
    if cfg.ann_index == "binary":
        return VectorIndex(dim, candidates_per_k=cfg.ann_candidates_per_k)
    path = None if db_path is None else db_path.with_name(f"{db_path.name}.rag-{cfg.ann_index}.npz")
    if cfg.ann_index == "hnsw":
        return HnswIndex(dim, path, ef_search=cfg.ann_ef_search)
    return IvfIndex(dim, path, nprobe=cfg.ann_nprobe)
