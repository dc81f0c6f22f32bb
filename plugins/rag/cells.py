"""How many cells an inverted file gets: the rule shared by the in-memory IVF index (:mod:`monmouth_rag.ivf`) and
pgvector's IVFFlat index on PostgreSQL (:mod:`monmouth_rag.pgindex`)."""

from __future__ import annotations

import math


def nlist_for(n: int) -> int:
    """Cells for ``n`` vectors: the power of two nearest ``4 sqrt(n)`` (faiss's guideline for collections up to a
    few million, https://github.com/facebookresearch/faiss/wiki/Guidelines-to-choose-an-index), at most ``n / 39``
    (k-means wants 39 points per centroid; faiss warns below), at least 1."""
    want = 2 ** round(math.log2(max(4 * math.sqrt(max(n, 1)), 1)))
    cap = 2 ** int(math.log2(max(n // 39, 1)))
    return max(1, min(want, cap))
