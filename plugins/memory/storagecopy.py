"""The memory plugin's part of ``monmouth storage copy`` (the ``monmouth_storage_copy`` hook,
sidecar/storagecopy.py): a SQLite deployment's memory tables moved into PostgreSQL's (:data:`.schema.PG_MIGRATIONS`).

* **Copied row by row, byte for byte**: every table of the PostgreSQL schema but ``memory_fts`` (agents, items and
  their ciphertexts, tags, the op log, leaves, marks, blocks, the root caches, state, forgotten agents, registry
  registrations, pending blocks, encrypted vectors and the embedding queue). Roots and proofs are computed from
  these rows, so the memory global root and every proof are the same on the copy. ``memory_state`` is the source's
  (its stamps and watermark), as ``memory_sync`` is, not the rows the PostgreSQL migration seeds.
* **Rebuilt**: ``memory_fts``, from the keyed tokens the FTS5 table stores (``tokenize = 'ascii'``, not contentless),
  as the same ``tsvector`` :meth:`.dialect.Postgres.fts_add` writes.
* **Identity**: ``memory_ops.seq`` continues above SQLite's ``AUTOINCREMENT`` high-water mark.
* **Schema version**: the copy records PostgreSQL's migrations (the engine runs :data:`.schema.PG_MIGRATIONS` on
  the target before this hook), not SQLite's.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

from monmouth.storagecopy import copy_table, restart_identity

from .dialect import Postgres
from .schema import PG_MIGRATIONS

#: The tables copied row by row, in creation order (``memory_agents`` first: its trigger writes ``memory_state``).
ROW_TABLES = tuple(t for t in re.findall(r"CREATE TABLE (\w+)", "".join(PG_MIGRATIONS)) if t != "memory_fts")


def copy(src: Any, dst: Any) -> list[str]:
    """Fill the target's memory tables from the SQLite snapshot ``src`` (contract: ``monmouth_storage_copy``);
    returns the tables filled. Raises :class:`monmouth.storagecopy.CopyError` if a table differs (names it)."""
    for table in ROW_TABLES:
        dst.execute(f"DELETE FROM {table}")  # the migration's seed rows (memory_state, memory_sync): the source's
        copy_table(src, dst, table)
    restart_identity(src, dst, "memory_ops", "seq")
    rows = src.execute("SELECT rowid, tokens FROM memory_fts")
    while batch := list(itertools.islice(rows, 1000)):
        Postgres.fts_add(dst, batch)
    return [*ROW_TABLES, "memory_fts"]
