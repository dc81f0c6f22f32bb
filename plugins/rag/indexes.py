"""Which in-memory vector index a configuration names (``plugins.rag.ann_index``)."""

from __future__ import annotations

from pathlib import Path

from .ann import SyncedIndex, VectorIndex
from .config import RagConfig
from .hnsw import HnswIndex
from .ivf import IvfIndex


def open_index(cfg: RagConfig, db_path: Path | None, dim: int) -> SyncedIndex:
    """The in-memory index ``cfg.ann_index`` names, for the database at ``db_path``. The IVF and HNSW indexes are
    persisted as ``<db_path>.rag-ivf.npz`` and ``<db_path>.rag-hnsw.npz`` (``db_path`` ``None``: not persisted)."""
    if cfg.ann_index == "binary":
        return VectorIndex(dim, candidates_per_k=cfg.ann_candidates_per_k)
    path = None if db_path is None else db_path.with_name(f"{db_path.name}.rag-{cfg.ann_index}.npz")
    if cfg.ann_index == "hnsw":
        return HnswIndex(dim, path, ef_search=cfg.ann_ef_search)
    return IvfIndex(dim, path, nprobe=cfg.ann_nprobe)
