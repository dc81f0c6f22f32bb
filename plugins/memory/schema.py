"""The memory plugin's tables.

Which code writes which table matters for the reorg journal (see ``docs/memory.md``):

* **chain tables** are written only by the chain hooks and journaled: ``memory_sync`` (how far the op log has
  been anchored) and ``memory_registry``. Each block's memory input is recorded by the chain hook in
  ``memory_pending`` (deleted from a reverted block up) and *settled* afterwards by :func:`.ingest.settle` into the
  **derived lattice tables** (schema 5; declared trimmed): ``memory_leaves`` (the item versions with their
  validity ranges), ``memory_marks`` (per agent, the blocks at which its visible set changed, the count after and
  the block's stamp) and ``memory_blocks`` (one row per settled block); on revert ``monmouth_block_reverted``
  deletes marks and blocks at and above the block (:data:`REVERT_TRIMMED`), deletes the leaves a settled block
  added and reopens those it closed. The chain-derived rows of ``memory_items`` are written only by settling, only
  inserted, with row ids ``n >= block << 20``: ``memory_items`` is declared trimmed (not journaled) and
  ``monmouth_block_reverted`` deletes them by row id range, which keeps their ciphertexts out of the per-block undo
  changesets;
* **off-chain tables** are written by the API and the CLI and never by chain hooks: ``memory_ops`` (the op log
  of API writes, anchored by the chain hook at the next block), and the API rows of ``memory_items`` /
  ``memory_tags``;
* **indexes of chain-derived items**: their ``memory_tags`` rows, FTS5 entries and embedding-queue rows are written
  after the block committed, by the plugin's own settle transaction or else by :func:`.ingest.index_episodes` (the
  worker thread, or a read that finds it behind), up to the watermark ``memory_state.indexed_n``; a revert of
  block ``b`` deletes them by row id range (``n >= b << 20``) and lowers the watermark below it. Keeping them off
  the block's transaction keeps the chain hook to two rows per episode (the item and its leaf);
* **registrations**: ``memory_agents`` is written by the API, the CLI and startup (config agents), and, for agents
  registered by an on-chain registry event (``[[plugins.memory.registries]]``, see :mod:`.registry`), by the chain
  hook. The registration itself is the journaled chain table ``memory_registry`` (migration 3), written only by
  the chain hook, so a reorg restores it exactly. ``memory_agents`` is *not* journaled (declared trimmed): its
  ``source = 'registry'`` rows are a projection of ``memory_registry`` that :func:`.registry.revert` puts back in
  line after the journal undid a block (a registry row without a registration is deleted unless forgotten; a
  registration without a row gets it back with the same label and ``created_at``). Journaling the chain hook's
  insert instead would have recorded a row that forget (``forgotten_at``, ``label``) and API registration
  (``label``) later change, and the inverse changeset would then conflict and refuse the revert;
* **derived tables** are declared trimmed (not journaled): the FTS5 index ``memory_fts`` and the encrypted
  vectors ``memory_vectors``, cleaned by ``monmouth_block_reverted`` by row id range, and the embedding queue;
  the root caches ``memory_root_cache`` / ``memory_global_cache`` (``monmouth_block_reverted`` deletes rows
  ``>= block``); ``memory_state`` (the stamp counter, never reverted) and ``memory_forgotten`` (see :mod:`.lattice`).

``memory_global_roots`` is a view over ``memory_blocks`` (migration 2); its ``root`` column calls the SQL function
``memory_global_root`` that :mod:`.lattice` registers on every connection.

Since schema 5 no journaled table holds an agent's memory rows; forget still drops an agent's changes from undo
changesets written before (see ``core.AGENT_COLUMN``).

Row ids ``n`` of ``memory_items``: chain-derived items get ``(block_number << 20) | i`` (so a revert of block
``b`` removes derived rows with ``n >= b << 20``); API items get negative ids ``-seq``.
"""

from __future__ import annotations

from typing import Any

import apsw

EPISODE_SHIFT = 20

MIGRATIONS: list[str] = [
    """
    CREATE TABLE memory_agents (
        address BLOB PRIMARY KEY,          -- 20 bytes
        label TEXT,
        source TEXT NOT NULL,              -- config | api | cli | import
        created_at REAL NOT NULL,
        forgotten_at REAL                  -- tombstone: set by forget
    );
    CREATE TABLE memory_items (
        n INTEGER PRIMARY KEY,             -- see module docs
        id BLOB NOT NULL UNIQUE,           -- 32 bytes
        agent BLOB NOT NULL,
        kind INTEGER NOT NULL,             -- 0 working, 1 episodic, 2 semantic, 3 procedural
        origin INTEGER NOT NULL,           -- 0 api, 1 chain, 2 import
        version INTEGER NOT NULL,
        key_hash BLOB,                     -- HMAC of the item key (lookup)
        nonce BLOB NOT NULL,
        ct BLOB NOT NULL,                  -- AES-GCM(msgpack {c, t, k, g, m})
        commitment BLOB NOT NULL,          -- salted content commitment (32 bytes)
        ttl_seconds INTEGER NOT NULL DEFAULT 0,
        ttl_blocks INTEGER NOT NULL DEFAULT 0,
        expires_at REAL,                   -- wall clock, seconds (working memory with ttl_seconds)
        created_at REAL NOT NULL,          -- wall clock (chain items: the block timestamp)
        updated_at REAL NOT NULL,
        head_number INTEGER,               -- sidecar head when written (chain items: their block)
        head_hash BLOB
    );
    CREATE INDEX memory_items_agent ON memory_items (agent, n);
    CREATE INDEX memory_items_key ON memory_items (agent, key_hash) WHERE key_hash IS NOT NULL;
    CREATE INDEX memory_items_expiry ON memory_items (expires_at) WHERE expires_at IS NOT NULL;
    CREATE TABLE memory_tags (
        agent BLOB NOT NULL,
        tag BLOB NOT NULL,                 -- HMAC of the tag
        n INTEGER NOT NULL,
        PRIMARY KEY (agent, tag, n)
    ) WITHOUT ROWID;
    CREATE INDEX memory_tags_n ON memory_tags (n);
    CREATE TABLE memory_ops (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        agent BLOB NOT NULL,
        item_id BLOB NOT NULL,
        op INTEGER NOT NULL,               -- 1 put, 2 delete
        kind INTEGER NOT NULL,
        version INTEGER NOT NULL,
        commitment BLOB,
        ttl_blocks INTEGER NOT NULL DEFAULT 0,
        expires_at REAL,
        written_at REAL NOT NULL
    );
    CREATE INDEX memory_ops_agent ON memory_ops (agent);
    CREATE TABLE memory_sync (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        ops_seq INTEGER NOT NULL           -- last op anchored
    );
    INSERT INTO memory_sync (id, ops_seq) VALUES (1, 0);
    CREATE TABLE memory_leaves (
        agent BLOB NOT NULL,
        item_id BLOB NOT NULL,
        from_block INTEGER NOT NULL,       -- visible from this block ...
        to_block INTEGER,                  -- ... up to (excluding) this one; NULL while visible
        version INTEGER NOT NULL,
        kind INTEGER NOT NULL,
        commitment BLOB NOT NULL,
        anchor_hash BLOB NOT NULL,         -- hash of from_block
        leaf BLOB NOT NULL,                -- StandardMerkleTree leaf hash
        expires_block INTEGER,
        expires_ts REAL,
        end_reason INTEGER,                -- 1 superseded, 2 deleted, 3 expired
        PRIMARY KEY (agent, item_id, from_block)
    ) WITHOUT ROWID;
    CREATE INDEX memory_leaves_open ON memory_leaves (agent) WHERE to_block IS NULL;
    CREATE INDEX memory_leaves_from ON memory_leaves (agent, from_block);
    CREATE INDEX memory_leaves_to ON memory_leaves (agent, to_block) WHERE to_block IS NOT NULL;
    CREATE INDEX memory_leaves_eb ON memory_leaves (expires_block) WHERE to_block IS NULL AND expires_block IS NOT NULL;
    CREATE INDEX memory_leaves_et ON memory_leaves (expires_ts) WHERE to_block IS NULL AND expires_ts IS NOT NULL;
    CREATE TABLE memory_roots (
        agent BLOB NOT NULL,
        block_number INTEGER NOT NULL,
        root BLOB NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (agent, block_number)
    ) WITHOUT ROWID;
    CREATE TABLE memory_heads (
        agent BLOB PRIMARY KEY,
        root BLOB NOT NULL,
        count INTEGER NOT NULL,
        leaf BLOB,                         -- global tree leaf; NULL when the agent holds no visible item
        block_number INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE memory_global_roots (
        block_number INTEGER PRIMARY KEY,
        block_hash BLOB NOT NULL,
        root BLOB NOT NULL,
        agents INTEGER NOT NULL,
        ops_seq INTEGER NOT NULL
    );
    CREATE VIRTUAL TABLE memory_fts USING fts5 (tokens, tokenize = 'ascii');
    CREATE TABLE memory_vectors (
        n INTEGER PRIMARY KEY,
        agent BLOB NOT NULL,
        nonce BLOB NOT NULL,
        ct BLOB NOT NULL                   -- AES-GCM(float32[384])
    );
    CREATE INDEX memory_vectors_agent ON memory_vectors (agent);
    CREATE TABLE memory_embed_queue (n INTEGER PRIMARY KEY);
    """,
    # 2: lazy lattice. Ingest records marks (which agents changed at which block) instead of computing roots;
    # roots are computed on demand (see .lattice) and cached in trimmed tables. Existing roots become cache rows.
    """
    CREATE TABLE memory_marks (
        agent BLOB NOT NULL,
        block_number INTEGER NOT NULL,     -- the agent's visible set changed at this block ...
        count INTEGER NOT NULL,            -- ... and holds this many items after it
        stamp INTEGER NOT NULL,            -- the block's stamp (see memory_state)
        PRIMARY KEY (agent, block_number)
    ) WITHOUT ROWID;
    CREATE INDEX memory_marks_block ON memory_marks (block_number);
    INSERT INTO memory_marks (agent, block_number, count, stamp) SELECT agent, block_number, count, 0 FROM memory_roots;
    CREATE TABLE memory_blocks (
        block_number INTEGER PRIMARY KEY,
        block_hash BLOB NOT NULL,
        agents INTEGER NOT NULL,           -- agents holding at least one visible item
        ops_seq INTEGER NOT NULL,          -- last op anchored
        stamp INTEGER NOT NULL
    );
    INSERT INTO memory_blocks SELECT block_number, block_hash, agents, ops_seq, 0 FROM memory_global_roots;
    CREATE TABLE memory_root_cache (
        agent BLOB NOT NULL,
        block_number INTEGER NOT NULL,     -- a mark's block
        stamp INTEGER NOT NULL,            -- valid while the mark has this stamp
        root BLOB NOT NULL,
        PRIMARY KEY (agent, block_number)
    ) WITHOUT ROWID;
    INSERT INTO memory_root_cache SELECT agent, block_number, 0, root FROM memory_roots;
    CREATE TABLE memory_global_cache (
        block_number INTEGER PRIMARY KEY,
        stamp INTEGER NOT NULL,
        root BLOB NOT NULL
    );
    INSERT INTO memory_global_cache SELECT block_number, 0, root FROM memory_global_roots;
    DROP TABLE memory_heads;              -- an agent's last mark is its head
    -- Fewer pages dirtied per block: memory_leaves is clustered by agent (PRIMARY KEY), so the per-agent indexes
    -- are not needed; leaves closed at a block are found through an append-only index (changes, pruning).
    DROP INDEX memory_leaves_open;
    DROP INDEX memory_leaves_from;
    DROP INDEX memory_leaves_to;
    CREATE INDEX memory_leaves_closed ON memory_leaves (to_block) WHERE to_block IS NOT NULL;
    DROP TABLE memory_roots;
    DROP TABLE memory_global_roots;
    CREATE TABLE memory_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        stamp INTEGER NOT NULL,            -- incremented for every applied block; never reverted
        forgot_stamp INTEGER NOT NULL      -- the stamp current at the last forget: a block applied on top of one
                                           -- with a stamp <= this recounts memory_blocks.agents
    );
    INSERT INTO memory_state (id, stamp, forgot_stamp) VALUES (1, 0, 0);
    CREATE TABLE memory_forgotten (
        fid BLOB NOT NULL,                 -- random id per forgotten agent (no address kept)
        block_number INTEGER NOT NULL,     -- from this block ...
        leaf BLOB,                         -- ... its global leaf (NULL: it held nothing)
        max_stamp INTEGER NOT NULL,        -- for blocks whose stamp is at most this (applied before the forget)
        PRIMARY KEY (fid, block_number)
    ) WITHOUT ROWID;
    CREATE VIEW memory_global_roots AS
        SELECT block_number, block_hash, memory_global_root(block_number) AS root, agents, ops_seq
        FROM memory_blocks;
    """,
    # 3: agents registered from on-chain registry events (see .registry). The registration is this journaled chain
    # table; the agent's memory_agents row (source 'registry') is a projection of it, and memory_agents is declared
    # trimmed (not journaled) from this version on.
    """
    CREATE TABLE memory_registry (
        agent BLOB PRIMARY KEY,            -- 20 bytes; one registration per agent (the first registry event wins)
        registry BLOB NOT NULL,            -- the contract that registered it (only its unregister event removes it)
        block_number INTEGER NOT NULL,     -- where the registration event is
        tx_hash BLOB NOT NULL,
        log_index INTEGER NOT NULL,        -- in the block
        label TEXT,                        -- the configured label parameter, if any
        registered_at REAL NOT NULL        -- the block timestamp: created_at of the memory_agents row
    ) WITHOUT ROWID;
    CREATE INDEX memory_agents_registry ON memory_agents (address) WHERE source = 'registry';
    """,
    # 4: chain-derived items are indexed (tags, FTS5, embedding queue) after their block, by .ingest.index_episodes,
    # up to this watermark (the highest chain row id indexed). Items already present were indexed by the hook.
    """
    ALTER TABLE memory_state ADD COLUMN indexed_n INTEGER NOT NULL DEFAULT 0;
    UPDATE memory_state SET indexed_n = (SELECT coalesce(max(n), 0) FROM memory_items WHERE n > 0);
    """,
    # 5: settled lattice. The chain hook records each block's memory input in memory_pending (append-only, few
    # pages); .ingest.settle derives leaves, marks, chain items and the block row from it afterwards, in block order,
    # and deletes it. memory_leaves, memory_marks and memory_blocks become derived (declared trimmed): a revert
    # removes what a settled block derived (.ingest.revert_block). memory_leaves_from finds a block's new leaves.
    """
    CREATE TABLE memory_pending (
        block_number INTEGER PRIMARY KEY,
        block_hash BLOB NOT NULL,
        ts INTEGER NOT NULL,               -- block timestamp, seconds
        ops_from INTEGER NOT NULL,         -- the API ops with ops_from < seq <= ops_to are anchored at this block
        ops_to INTEGER NOT NULL,
        stamp INTEGER NOT NULL,            -- the block's stamp (see memory_state)
        agents BLOB,                       -- registered agents the block's transactions touch (20 bytes each)
        block BLOB                         -- the block (msgspec JSON of monmouth.types.Block) when agents is set
    );
    CREATE INDEX memory_leaves_from ON memory_leaves (from_block);
    -- Whoever changes memory_agents (API, CLI, startup, forget, the registry hooks) gives it a new random version,
    -- so the chain hook can keep the set of registered agents in memory and reload it only when it changed (a
    -- random value, not a counter: a rolled-back change must not leave a later one looking already loaded).
    ALTER TABLE memory_state ADD COLUMN agents_version INTEGER NOT NULL DEFAULT 0;
    CREATE TRIGGER memory_agents_inserted AFTER INSERT ON memory_agents
        BEGIN UPDATE memory_state SET agents_version = random() WHERE id = 1; END;
    CREATE TRIGGER memory_agents_updated AFTER UPDATE ON memory_agents
        BEGIN UPDATE memory_state SET agents_version = random() WHERE id = 1; END;
    CREATE TRIGGER memory_agents_deleted AFTER DELETE ON memory_agents
        BEGIN UPDATE memory_state SET agents_version = random() WHERE id = 1; END;
    """,
    # 6: memory_tags keyed by item (n, tag), no longer by (agent, tag, n). A block's tags are then appended in row id
    # order: keyed by agent, the 600 tag rows of a 200-episode block went to as many B-tree pages all over the table,
    # each written to the WAL at commit (a third of settling's time at 400 blocks). Every lookup names the item (the
    # tag filter's EXISTS, unindexing, a revert's row id range; forget deletes by its items' row ids), so the index
    # on n alone goes too. The agent column stays (forget's changeset scrub finds an agent's rows by it).
    """
    CREATE TABLE memory_tags_by_item (
        agent BLOB NOT NULL,
        tag BLOB NOT NULL,                 -- HMAC of the tag
        n INTEGER NOT NULL,
        PRIMARY KEY (n, tag)
    ) WITHOUT ROWID;
    INSERT INTO memory_tags_by_item (agent, tag, n) SELECT agent, tag, n FROM memory_tags ORDER BY n, tag;
    DROP TABLE memory_tags;
    ALTER TABLE memory_tags_by_item RENAME TO memory_tags;
    """,
]

#: The same tables on PostgreSQL, created at once in their schema-5 form (a PostgreSQL database has no memory
#: schema older than that), then migrated as SQLite's from schema 6 on: the types PostgreSQL names (``bytea``,
#: ``bigint`` for every integer that holds a block number, a row id ``block << 20``, a stamp or a random version;
#: ``double precision`` for wall-clock seconds, where PostgreSQL's ``real`` would be 4 bytes), ``memory_fts`` as a
#: ``tsvector`` column with a GIN index instead of an FTS5 table (:mod:`.dialect`), ``memory_ops.seq`` an identity
#: column, the ``agents_version`` triggers in PL/pgSQL.
#: ``memory_global_roots`` (a view calling a Python SQL function on SQLite) does not exist here: read roots through
#: the API. Same table and column names, same keys, so every portable statement of the plugin runs on both.
PG_MIGRATIONS: list[str] = [
    """
    CREATE TABLE memory_agents (
        address bytea PRIMARY KEY,
        label text,
        source text NOT NULL,
        created_at double precision NOT NULL,
        forgotten_at double precision
    );
    CREATE INDEX memory_agents_registry ON memory_agents (address) WHERE source = 'registry';
    CREATE TABLE memory_items (
        n bigint PRIMARY KEY,
        id bytea NOT NULL UNIQUE,
        agent bytea NOT NULL,
        kind integer NOT NULL,
        origin integer NOT NULL,
        version bigint NOT NULL,
        key_hash bytea,
        nonce bytea NOT NULL,
        ct bytea NOT NULL,
        commitment bytea NOT NULL,
        ttl_seconds bigint NOT NULL DEFAULT 0,
        ttl_blocks bigint NOT NULL DEFAULT 0,
        expires_at double precision,
        created_at double precision NOT NULL,
        updated_at double precision NOT NULL,
        head_number bigint,
        head_hash bytea
    );
    CREATE INDEX memory_items_agent ON memory_items (agent, n);
    CREATE INDEX memory_items_key ON memory_items (agent, key_hash) WHERE key_hash IS NOT NULL;
    CREATE INDEX memory_items_expiry ON memory_items (expires_at) WHERE expires_at IS NOT NULL;
    CREATE TABLE memory_tags (
        agent bytea NOT NULL,
        tag bytea NOT NULL,
        n bigint NOT NULL,
        PRIMARY KEY (agent, tag, n)
    );
    CREATE INDEX memory_tags_n ON memory_tags (n);
    CREATE TABLE memory_ops (
        seq bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        agent bytea NOT NULL,
        item_id bytea NOT NULL,
        op integer NOT NULL,
        kind integer NOT NULL,
        version bigint NOT NULL,
        commitment bytea,
        ttl_blocks bigint NOT NULL DEFAULT 0,
        expires_at double precision,
        written_at double precision NOT NULL
    );
    CREATE INDEX memory_ops_agent ON memory_ops (agent);
    CREATE TABLE memory_sync (
        id integer PRIMARY KEY CHECK (id = 1),
        ops_seq bigint NOT NULL
    );
    INSERT INTO memory_sync (id, ops_seq) VALUES (1, 0);
    CREATE TABLE memory_leaves (
        agent bytea NOT NULL,
        item_id bytea NOT NULL,
        from_block bigint NOT NULL,
        to_block bigint,
        version bigint NOT NULL,
        kind integer NOT NULL,
        commitment bytea NOT NULL,
        anchor_hash bytea NOT NULL,
        leaf bytea NOT NULL,
        expires_block bigint,
        expires_ts double precision,
        end_reason integer,
        PRIMARY KEY (agent, item_id, from_block)
    );
    CREATE INDEX memory_leaves_eb ON memory_leaves (expires_block) WHERE to_block IS NULL AND expires_block IS NOT NULL;
    CREATE INDEX memory_leaves_et ON memory_leaves (expires_ts) WHERE to_block IS NULL AND expires_ts IS NOT NULL;
    CREATE INDEX memory_leaves_closed ON memory_leaves (to_block) WHERE to_block IS NOT NULL;
    CREATE INDEX memory_leaves_from ON memory_leaves (from_block);
    CREATE TABLE memory_fts (
        n bigint PRIMARY KEY,              -- memory_items.n (FTS5's rowid on SQLite)
        tokens tsvector NOT NULL           -- the keyed tokens, each a lexeme as it is
    );
    CREATE INDEX memory_fts_tokens ON memory_fts USING gin (tokens);
    CREATE TABLE memory_vectors (
        n bigint PRIMARY KEY,
        agent bytea NOT NULL,
        nonce bytea NOT NULL,
        ct bytea NOT NULL
    );
    CREATE INDEX memory_vectors_agent ON memory_vectors (agent);
    CREATE TABLE memory_embed_queue (n bigint PRIMARY KEY);
    CREATE TABLE memory_marks (
        agent bytea NOT NULL,
        block_number bigint NOT NULL,
        count bigint NOT NULL,
        stamp bigint NOT NULL,
        PRIMARY KEY (agent, block_number)
    );
    CREATE INDEX memory_marks_block ON memory_marks (block_number);
    CREATE TABLE memory_blocks (
        block_number bigint PRIMARY KEY,
        block_hash bytea NOT NULL,
        agents bigint NOT NULL,
        ops_seq bigint NOT NULL,
        stamp bigint NOT NULL
    );
    CREATE TABLE memory_root_cache (
        agent bytea NOT NULL,
        block_number bigint NOT NULL,
        stamp bigint NOT NULL,
        root bytea NOT NULL,
        PRIMARY KEY (agent, block_number)
    );
    CREATE TABLE memory_global_cache (
        block_number bigint PRIMARY KEY,
        stamp bigint NOT NULL,
        root bytea NOT NULL
    );
    CREATE TABLE memory_state (
        id integer PRIMARY KEY CHECK (id = 1),
        stamp bigint NOT NULL,
        forgot_stamp bigint NOT NULL,
        indexed_n bigint NOT NULL DEFAULT 0,
        agents_version bigint NOT NULL DEFAULT 0
    );
    INSERT INTO memory_state (id, stamp, forgot_stamp) VALUES (1, 0, 0);
    CREATE TABLE memory_forgotten (
        fid bytea NOT NULL,
        block_number bigint NOT NULL,
        leaf bytea,
        max_stamp bigint NOT NULL,
        PRIMARY KEY (fid, block_number)
    );
    CREATE TABLE memory_registry (
        agent bytea PRIMARY KEY,
        registry bytea NOT NULL,
        block_number bigint NOT NULL,
        tx_hash bytea NOT NULL,
        log_index bigint NOT NULL,
        label text,
        registered_at double precision NOT NULL
    );
    CREATE TABLE memory_pending (
        block_number bigint PRIMARY KEY,
        block_hash bytea NOT NULL,
        ts bigint NOT NULL,
        ops_from bigint NOT NULL,
        ops_to bigint NOT NULL,
        stamp bigint NOT NULL,
        agents bytea,
        block bytea
    );
    CREATE FUNCTION memory_agents_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE memory_state SET agents_version = (random() * 9.0e18)::bigint WHERE id = 1;
        RETURN NULL;
    END $$;
    CREATE TRIGGER memory_agents_changed AFTER INSERT OR UPDATE OR DELETE ON memory_agents
        FOR EACH ROW EXECUTE FUNCTION memory_agents_changed();
    """,
    # 2: memory_tags keyed by item, as SQLite's migration 6 (same reason).
    """
    ALTER TABLE memory_tags DROP CONSTRAINT memory_tags_pkey, ADD PRIMARY KEY (n, tag);
    DROP INDEX memory_tags_n;
    """,
]

#: Derived tables, not journaled; ``monmouth_block_reverted`` removes their rows by row id range.
TRIMMED: dict[str, str | None] = {
    # Chain hooks only insert chain-derived rows (n > 0, n >> 20 = their block); revert_block deletes them by range.
    "memory_items": None,
    "memory_fts": None,
    "memory_vectors": None,
    "memory_embed_queue": None,
    # Deleted from the reverted block up by revert_block (REVERT_TRIMMED), not by the engine: on PostgreSQL the
    # plugin's writers hold its write lock (.dialect) and the engine must take that lock before it touches a row
    # they write, so the engine itself trims no memory table.
    "memory_root_cache": None,
    "memory_global_cache": None,
    "memory_state": None,
    "memory_forgotten": None,
    # Written by the API/CLI and (source 'registry' rows) by .registry, which re-derives those rows from the
    # journaled memory_registry on revert: journaling it would make reverts conflict with forget and labels.
    "memory_agents": None,
    # Derived by .ingest.settle from memory_pending and the op log, after the block's transaction (migration 5);
    # revert_block deletes rows >= the reverted block (REVERT_TRIMMED) and deletes/reopens the leaves it derived.
    "memory_pending": None,
    "memory_blocks": None,
    "memory_marks": None,
    "memory_leaves": None,
}

#: Tables whose rows at and above a reverted block :meth:`.ingest.ChainIngest.revert_block` deletes by
#: ``block_number`` (as the engine does for a trimmed table that names its column).
REVERT_TRIMMED = ("memory_pending", "memory_blocks", "memory_marks", "memory_root_cache", "memory_global_cache")

KINDS = {"working": 0, "episodic": 1, "semantic": 2, "procedural": 3}
KIND_NAMES = {v: k for k, v in KINDS.items()}
ORIGINS = {0: "api", 1: "chain", 2: "import"}
OP_PUT, OP_DELETE = 1, 2
END_SUPERSEDED, END_DELETED, END_EXPIRED = 1, 2, 3
END_NAMES = {END_SUPERSEDED: "superseded", END_DELETED: "deleted", END_EXPIRED: "expired"}


# ---------------------------------------------------------------------------------------------------------------------
# reading these tables: apsw types a fetched value as the ``SQLiteValue`` union (and ``fetchone()`` as maybe ``None``);
# the schema above fixes each column's type, so these hand the rows on as ``Any`` (the same queries, no conversion).


def one_row(conn: apsw.Connection, sql: str, args: apsw.Bindings | None = None) -> tuple[Any, ...]:
    """The row of a query that always returns one (an aggregate, ``RETURNING``, a single-row table)."""
    row = conn.execute(sql, args).fetchone()
    assert row is not None, sql
    return row


def scalar(conn: apsw.Connection, sql: str, args: apsw.Bindings | None = None) -> Any:
    """The first column of :func:`one_row`."""
    return one_row(conn, sql, args)[0]


def all_rows(conn: apsw.Connection, sql: str, args: apsw.Bindings | None = None) -> list[tuple[Any, ...]]:
    """``conn.execute(sql, args).fetchall()``."""
    return conn.execute(sql, args).fetchall()
