"""The rag plugin's part of ``monmouth storage copy`` (the ``monmouth_storage_copy`` hook, sidecar/storagecopy.py):
a SQLite deployment's rag tables moved into PostgreSQL's (:data:`monmouth_rag.dialect.PG_MIGRATIONS`).

==================  ==========================================================================================
copied row by row   ``rag_docs``, ``rag_addresses``, ``rag_tokens``, ``rag_pending`` (the embedding queue: the
                    worker on the copy embeds what the original had not), ``rag_index``, ``rag_changes``,
                    ``rag_meta`` (the embedding model's identity), ``rag_edges`` (journaled: the copy converts its
                    undo data)
vectors             ``rag_vec``: each stored float32 embedding (``vec0``) with its metadata columns, into pgvector's
                    ``vector(384)``; copied, not re-embedded (the same float32 values on both)
rebuilt             ``rag_fts``: the FTS5 index is contentless (it keeps no text), so the ``tsvector`` of each
                    indexed document (``rag_index``) is computed on the target from ``rag_docs.text``, the text the
                    plugin keyword-indexes, and ``rag_fts_stats`` (BM25's document count and total length) counts
                    them (:meth:`~monmouth_rag.dialect.PgStatements.index_documents`)
identities          ``rag_docs.id`` and ``rag_changes.seq`` continue above SQLite's ``AUTOINCREMENT`` high-water
                    mark (``sqlite_sequence``): an id of a reverted document is never reused on the copy either
==================  ==========================================================================================

The HNSW index (``plugins.rag.pg_knn``) is made by the plugin's start on the copy, as on any PostgreSQL start.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import numpy as np

from monmouth.storagecopy import copy_table, restart_identity

from .dialect import PG_MIGRATIONS, PgStatements

#: Vector rows per ``INSERT`` batch (each row's text form is about 4 kB).
BATCH = 500
#: The tables rebuilt on the target rather than copied (module doc).
REBUILT = ("rag_fts", "rag_fts_stats", "rag_vec")
#: The tables copied row by row, in creation order (every table of :data:`PG_MIGRATIONS` but :data:`REBUILT`).
ROW_TABLES = tuple(t for t in re.findall(r"CREATE TABLE (\w+)", "".join(PG_MIGRATIONS)) if t not in REBUILT)


def copy(src: Any, dst: Any) -> list[str]:
    """Fill the target's rag tables from the SQLite snapshot ``src`` (contract: ``monmouth_storage_copy``);
    returns the tables filled. Raises :class:`monmouth.storagecopy.CopyError` if a table differs (names it)."""
    for table in ROW_TABLES:
        copy_table(src, dst, table, overriding=table == "rag_changes")
    restart_identity(src, dst, "rag_docs", "id")
    restart_identity(src, dst, "rag_changes", "seq")
    PgStatements().index_documents(dst)
    rows = src.execute("SELECT rowid, embedding, kind, block_number, timestamp, intent, token FROM rag_vec")
    while batch := list(itertools.islice(rows, BATCH)):
        dst.executemany(PgStatements.INSERT_VECTOR,
                        [(r[0], PgStatements.vector_text(np.frombuffer(r[1], np.float32)), *r[2:]) for r in batch])
    return [*ROW_TABLES, *REBUILT]
