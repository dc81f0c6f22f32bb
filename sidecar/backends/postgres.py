"""PostgreSQL storage (psycopg 3): the engine's tables, the trigger journal, plugin migrations, the ingestion lock.

Invariants, the same as on SQLite (sidecar/engine.py), and how this backend keeps them:

1. **One transaction per notification with its cursor.** Connections run in autocommit mode at the driver level and
   the engine issues ``BEGIN``/``SAVEPOINT``/``COMMIT`` itself, exactly as on SQLite (:class:`PgConnection` maps
   ``BEGIN IMMEDIATE`` to ``BEGIN``). A connection dropped inside the transaction leaves nothing: the server rolls
   it back, and the engine reports the error without moving its in-memory head.
2. **Exact undo whatever SQL the plugin ran.** Every journaled table (an ordinary table of the current schema, not
   ``monmouth_*``, not declared trimmed) carries the row trigger ``monmouth_undo``: while the engine applies block
   ``n`` (the transaction-local setting ``monmouth.block`` is ``n``) each ``INSERT``/``UPDATE``/``DELETE`` appends the
   row's old and new images (``to_jsonb``) to ``monmouth_undo``. Reverting ``n`` replays them newest first
   (``monmouth_undo_block``): delete what was inserted, put back what was updated or deleted, each time checking that
   the row still is exactly what was recorded (else :class:`~sidecar.journal.JournalConflictError`). Changes made
   outside the chain hooks (setting empty) are not recorded, as on SQLite. ``TRUNCATE`` of a journaled table inside a
   chain hook is refused (row triggers do not see it). Why triggers and not logical decoding: docs/storage.md.
3. **Bounded undo.** ``monmouth_blocks.changeset`` is ``''`` while block ``n`` is revertible and ``NULL`` once pruned,
   as on SQLite; pruning also deletes its ``monmouth_undo`` rows.
4. **One engine per database.** :meth:`PgDatabase.engine_connection` takes the session advisory lock
   :data:`INGEST_LOCK`; a second ``monmouth run`` on the same database is refused naming the holder. The lock goes
   with the connection, so a killed engine releases it at once.

Refused at start: pgvector (extension ``vector``) not installed and not installable; a database written by a newer
schema version (:data:`SCHEMA_VERSION`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import psycopg.errors
from psycopg import pq
from psycopg.pq import TransactionStatus

from ..errors import StorageError, StorageUnavailableError
from ..journal import JournalConflictError, RedactionError
from ..store import ENGINE_PREFIX, migrate
from . import REQUEST, pg_batch, pg_uint256

log = logging.getLogger(__name__)

#: The version of the engine's schema this code writes; a database with a higher one is refused.
SCHEMA_VERSION = 1
#: The session advisory lock of the one engine that owns ingestion of a database (``pg_try_advisory_lock``).
INGEST_LOCK = 0x4D4D_0001
#: Serialises schema creation between processes starting at once (``pg_advisory_xact_lock``).
SCHEMA_LOCK = 0x4D4D_0002

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS monmouth_schema (
    id integer PRIMARY KEY CHECK (id = 1),
    version integer NOT NULL
);
INSERT INTO monmouth_schema (id, version) VALUES (1, {SCHEMA_VERSION}) ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS monmouth_cursor (
    id integer PRIMARY KEY CHECK (id = 1),
    number bigint,
    hash bytea,
    finalized bigint,
    notifications bigint NOT NULL DEFAULT 0,
    reorgs bigint NOT NULL DEFAULT 0,
    source_token text,
    updated_at double precision
);
INSERT INTO monmouth_cursor (id) VALUES (1) ON CONFLICT (id) DO NOTHING;
-- changeset: '' while the block's undo rows (monmouth_undo) are held, NULL once pruned.
CREATE TABLE IF NOT EXISTS monmouth_blocks (
    number bigint PRIMARY KEY,
    hash bytea NOT NULL,
    parent_hash bytea NOT NULL,
    timestamp bigint NOT NULL,
    changeset bytea,
    applied_at double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS monmouth_blocks_revertible ON monmouth_blocks (number) WHERE changeset IS NOT NULL;
CREATE TABLE IF NOT EXISTS monmouth_undo (
    block bigint NOT NULL,
    seq bigint GENERATED ALWAYS AS IDENTITY,
    tbl text NOT NULL,
    op "char" NOT NULL,        -- I, U or D
    old jsonb,                 -- the row before (U, D)
    new jsonb,                 -- the row after (I, U)
    PRIMARY KEY (block, seq)
);
CREATE TABLE IF NOT EXISTS monmouth_migrations (
    plugin text PRIMARY KEY,
    version integer NOT NULL,
    applied_at double precision NOT NULL
);
CREATE TABLE IF NOT EXISTS monmouth_migration_digests (
    plugin text NOT NULL,
    version integer NOT NULL,
    sha256 text NOT NULL,
    PRIMARY KEY (plugin, version)
);
CREATE OR REPLACE FUNCTION monmouth_record_undo() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    b text := current_setting('monmouth.block', true);
BEGIN
    IF b IS NULL OR b = '' THEN
        RETURN NULL;
    END IF;
    -- One INSERT per operation, without CASE: 15 % less of the trigger's own time than one INSERT for all three
    -- (pg_stat_user_functions.self_time, two runs of 12,000 upserts; docs/storage.md, "Ingest speed").
    IF TG_OP = 'UPDATE' THEN
        INSERT INTO monmouth_undo (block, tbl, op, old, new) VALUES (b::bigint, TG_TABLE_NAME, 'U', to_jsonb(OLD),
                                                                     to_jsonb(NEW));
    ELSIF TG_OP = 'INSERT' THEN
        INSERT INTO monmouth_undo (block, tbl, op, new) VALUES (b::bigint, TG_TABLE_NAME, 'I', to_jsonb(NEW));
    ELSE
        INSERT INTO monmouth_undo (block, tbl, op, old) VALUES (b::bigint, TG_TABLE_NAME, 'D', to_jsonb(OLD));
    END IF;
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION monmouth_refuse_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('monmouth.block', true), '') <> '' THEN
        RAISE EXCEPTION 'monmouth: TRUNCATE of the journaled table % inside a chain hook cannot be undone on a '
                        'reorg; use DELETE', TG_TABLE_NAME;
    END IF;
    RETURN NULL;
END $$;
-- Revert block b: replay its undo rows newest first, checking each row is still what was recorded. The rows come in
-- runs of one table and one kind of change (consecutive seq), each undone by one statement. A run of INSERTs or of
-- DELETEs touches each primary key once (a key inserted twice needs a DELETE between). A run of UPDATEs may change a
-- row several times: each key gets back the old image of its first update, if it still is the new image of its last
-- one. A run in which an UPDATE changed a primary key is undone row by row, newest first.
CREATE OR REPLACE FUNCTION monmouth_undo_block(b bigint) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    run record;
    r record;
    rel regclass;
    pk text;
    tpk text;
    xpk text;
    jpk text;
    jnew text;
    cols text;
    xcols text;
    keys integer;
    moved boolean;
    changed integer;
    n integer;
    done integer := 0;
BEGIN
    PERFORM set_config('monmouth.block', '', true);
    FOR run IN
        SELECT tbl, op, min(seq) AS lo, max(seq) AS hi, count(*) AS rows
          FROM (SELECT tbl, op, seq, row_number() OVER (ORDER BY seq)
                                     - row_number() OVER (PARTITION BY tbl, op ORDER BY seq) AS island
                  FROM monmouth_undo WHERE block = b) s
         GROUP BY tbl, op, island ORDER BY hi DESC
    LOOP
        rel := to_regclass(quote_ident(run.tbl));
        IF rel IS NULL THEN
            RAISE EXCEPTION 'monmouth undo conflict: block % changed table %, which no longer exists', b, run.tbl;
        END IF;
        SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum),
               string_agg('t.' || quote_ident(a.attname), ', ' ORDER BY a.attnum),
               string_agg('x.' || quote_ident(a.attname), ', ' ORDER BY a.attnum),
               string_agg(format('u.old -> %L', a.attname), ', ' ORDER BY a.attnum),
               string_agg(format('u.new -> %L', a.attname), ', ' ORDER BY a.attnum) INTO pk, tpk, xpk, jpk, jnew
          FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
         WHERE i.indrelid = rel AND i.indisprimary;
        IF pk IS NULL THEN
            RAISE EXCEPTION 'monmouth undo conflict: table % has no PRIMARY KEY', run.tbl;
        END IF;
        IF run.op = 'I' THEN
            EXECUTE format('DELETE FROM %s t USING (SELECT (jsonb_populate_record(NULL::%s, u.new)).*, '
                           'u.new AS monmouth_image FROM monmouth_undo u WHERE u.block = $1 AND u.seq BETWEEN $2 '
                           'AND $3) x WHERE (%s) = (%s) AND to_jsonb(t.*) = x.monmouth_image',
                           rel, rel, tpk, xpk) USING b, run.lo, run.hi;
            GET DIAGNOSTICS n = ROW_COUNT;
        ELSIF run.op = 'D' THEN
            EXECUTE format('INSERT INTO %s SELECT (jsonb_populate_record(NULL::%s, u.old)).* FROM monmouth_undo u '
                           'WHERE u.block = $1 AND u.seq BETWEEN $2 AND $3 ON CONFLICT DO NOTHING', rel, rel)
                USING b, run.lo, run.hi;
            GET DIAGNOSTICS n = ROW_COUNT;
        ELSE
            SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum),
                   string_agg('x.' || quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO cols, xcols
              FROM pg_attribute a WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped;
            EXECUTE format('SELECT count(DISTINCT jsonb_build_array(%s)), bool_or(jsonb_build_array(%s) '
                           'IS DISTINCT FROM jsonb_build_array(%s)) FROM monmouth_undo u WHERE u.block = $1 '
                           'AND u.seq BETWEEN $2 AND $3', jpk, jpk, jnew)
                INTO keys, moved USING b, run.lo, run.hi;
            IF NOT moved THEN
                EXECUTE format('UPDATE %s t SET (%s) = ROW(%s) FROM (SELECT (jsonb_populate_record(NULL::%s, '
                               'y.first_old)).*, y.last_new AS monmouth_image FROM (SELECT DISTINCT ON (k) k, '
                               'first_value(u.old) OVER (PARTITION BY k ORDER BY u.seq) AS first_old, '
                               'first_value(u.new) OVER (PARTITION BY k ORDER BY u.seq DESC) AS last_new FROM '
                               '(SELECT u.*, jsonb_build_array(%s) AS k FROM monmouth_undo u WHERE u.block = $1 '
                               'AND u.seq BETWEEN $2 AND $3) u ORDER BY k) y) x '
                               'WHERE (%s) = (%s) AND to_jsonb(t.*) = x.monmouth_image',
                               rel, cols, xcols, rel, jpk, tpk, xpk) USING b, run.lo, run.hi;
                GET DIAGNOSTICS n = ROW_COUNT;
                IF n <> keys THEN
                    RAISE EXCEPTION 'monmouth undo conflict: %: % of the % rows block % updated are not as it left '
                                    'them (changed outside the chain hooks)', run.tbl, keys - n, keys, b;
                END IF;
                done := done + run.rows;
                CONTINUE;
            END IF;
            n := 0;
            FOR r IN SELECT old, new FROM monmouth_undo WHERE block = b AND seq BETWEEN run.lo AND run.hi
                      ORDER BY seq DESC LOOP
                EXECUTE format('UPDATE %s t SET (%s) = (SELECT %s FROM jsonb_populate_record(NULL::%s, $2)) '
                               'WHERE (%s) = (SELECT %s FROM jsonb_populate_record(NULL::%s, $1)) '
                               'AND to_jsonb(t.*) = $1', rel, cols, cols, rel, pk, pk, rel) USING r.new, r.old;
                GET DIAGNOSTICS changed = ROW_COUNT;
                IF changed <> 1 THEN
                    RAISE EXCEPTION 'monmouth undo conflict: %: the row % is not as block % left it (changed outside '
                                    'the chain hooks)', run.tbl, r.new, b;
                END IF;
                n := n + 1;
            END LOOP;
        END IF;
        IF n <> run.rows THEN
            RAISE EXCEPTION 'monmouth undo conflict: %: % of the % rows block % % are not as it left them (changed '
                            'outside the chain hooks)', run.tbl, run.rows - n, run.rows, b,
                            CASE run.op WHEN 'I' THEN 'inserted' ELSE 'deleted' END;
        END IF;
        done := done + run.rows;
    END LOOP;
    DELETE FROM monmouth_undo WHERE block = b;
    RETURN done;
END $$;
"""


def redact_url(url: str) -> str:
    """``url`` without a password (for logs and errors)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@functools.lru_cache(maxsize=4096)
def _translate(sql: str) -> str:
    """apsw's ``?`` placeholders as psycopg's ``%s`` (literal ``%`` doubled). A ``?`` inside a string literal is
    translated too: portable plugin SQL passes such values as parameters."""
    return sql.replace("%", "%%").replace("?", "%s")


def _run(cur: psycopg.Cursor[Any], statements: str, bindings: Any) -> None:
    if bindings is None or (isinstance(bindings, tuple | list) and not bindings and "?" not in statements):
        cur.execute(statements.encode())  # no parameters: several statements allowed, % taken literally
    else:
        cur.execute(_translate(statements), bindings)


class PgConnection:
    """A psycopg connection with apsw's surface (:class:`sidecar.backends.Connection`), so the engine's SQL and a
    plugin's portable SQL run unchanged: ``?`` placeholders, explicit ``BEGIN``/``COMMIT`` (the driver is in
    autocommit mode), ``in_transaction``.

    Round trips: ``BEGIN`` and the statements queued with :meth:`defer` are not sent on their own but with the next
    statement, in one pipeline (psycopg's pipeline mode); a ``ROLLBACK`` of a transaction whose ``BEGIN`` was never
    sent sends nothing. ``raw`` is the psycopg connection, for PostgreSQL-only code: reading it sends what is queued
    first, so a statement run on it directly is inside the transaction and after the queued ones."""

    backend = "postgres"

    #: Statements without parameters known to be one statement, besides those without a ``;`` (so they may join a
    #: pipeline; a script of several statements cannot: pipeline mode uses the extended protocol, one statement per
    #: message)
    _SINGLE = ("SAVEPOINT ", "RELEASE ")

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self._raw = raw
        # queued statements: (query, parameters, how to run it: "apsw" (? placeholders, _run), "psycopg" (a psycopg
        # query as is) or "many" (psycopg's executemany))
        self._later: list[tuple[Any, Any, str]] = []
        self._begun = False  # a BEGIN is queued in _later, not sent yet
        self._batches: dict[str, pg_batch.Batch | None] = {}  # statement -> pg_batch.batch_statement()
        # pg_batch's temporary functions (pg_temp, this session's) made and committed / made in the open transaction
        self._functions: set[bytes] = set()
        self._created: set[bytes] = set()
        self._temporary: bool | None = None  # may this session create temporary objects (asked once)

    @property
    def raw(self) -> psycopg.Connection[Any]:
        """The psycopg connection, after sending the queued statements (a queued ``BEGIN`` included)."""
        if self._later:
            self._flush()
        return self._raw

    def execute(self, statements: str, bindings: Any = None) -> psycopg.Cursor[Any]:
        if statements.startswith("BEGIN IMMEDIATE"):
            statements = "BEGIN" + statements[len("BEGIN IMMEDIATE"):]
        cur = self._raw.cursor()
        if statements.startswith(("ROLLBACK", "BEGIN")):
            # pg_batch's functions made since the last COMMIT may be undone (or were made in a transaction that
            # ended out of sight): made again when next needed
            self._created.clear()
        if statements == "BEGIN" and not self._later and not self.in_transaction:
            self._later.append((statements, None, "apsw"))  # sent with the transaction's first statement
            self._begun = True
            return cur
        if statements.startswith("ROLLBACK"):
            # the queued statements were queued after the last statement sent: the rollback would undo them anyway
            self._later.clear()
            if self._begun and statements == "ROLLBACK":  # the transaction never reached the server
                self._begun = False
                return cur
        elif self._later and statements == "COMMIT":
            self._flush(commit=cur)
            self._committed()
            return cur
        elif self._later and (bindings is not None or ";" not in statements or statements.startswith(self._SINGLE)):
            with self._sending():
                _run(cur, statements, bindings)
            return cur
        elif self._later:
            self._flush()
        _run(cur, statements, bindings)
        if statements == "COMMIT":
            self._committed()
        return cur

    def _committed(self) -> None:
        self._functions |= self._created
        self._created.clear()

    def executemany(self, statements: str, sequenceofbindings: Any) -> None:
        """Run ``statements`` once per row of parameters, in order. A plain ``INSERT INTO t (columns) VALUES (...)``
        (optionally ``ON CONFLICT ... DO NOTHING`` or ``ON CONFLICT (keys) DO UPDATE SET ...``) of several rows runs
        as one statement instead (:meth:`_batched`; with ``DO UPDATE``, one per run of rows with distinct keys, all
        run by one call of a temporary function, :attr:`pg_batch.Batch.function`): the same rows in the same order,
        each through the table's row triggers (the undo journal included) and constraints, the same result; what
        differs is the number of statements (a statement-level trigger fires once per statement). Anything else, or
        rows whose Python values do not form typed arrays, runs row by row (psycopg's pipelined ``executemany``)."""
        planned, made = self._plan_many(statements, sequenceofbindings)
        try:
            # in one pipeline with the queued statements (_sending): one round trip
            with self._sending(), self._raw.cursor() as cur:
                for sql, params, many in planned:
                    if many:
                        cur.executemany(sql, params)
                    else:
                        cur.execute(sql, params)
        except psycopg.errors.UndefinedFunction:
            # the session lost pg_batch's function (a server connection swapped under us by a pooler, DISCARD TEMP):
            # made again when the caller retries
            self._forget_functions()
            raise
        if made:
            (self._created if self.in_transaction else self._functions).add(made)

    def defer_many(self, statements: str, sequenceofbindings: Any) -> None:
        """:meth:`executemany` queued as :meth:`defer` queues one statement: the same statements (batched the same
        way), sent with this connection's next statement. Inside a transaction only."""
        planned, made = self._plan_many(statements, sequenceofbindings)
        if not planned[0][1] and planned[0][2]:  # no rows: nothing to send
            return
        self._later.extend((sql, params, "many" if many else "psycopg") for sql, params, many in planned)
        if made:
            self._created.add(made)

    def _plan_many(self, statements: str, sequenceofbindings: Any) -> tuple[list[tuple[Any, Any, bool]], bytes]:
        """The statements :meth:`executemany` runs, as ``[(psycopg query, parameters, run with executemany)]``, and
        pg_batch's function they make (``b""``: none)."""
        rows = sequenceofbindings if isinstance(sequenceofbindings, list) else list(sequenceofbindings)
        batches = self._batched(statements, rows) if len(rows) > 1 else None
        if batches is None:
            return [(_translate(statements), rows, True)], b""
        if len(batches) == 1:
            return [(*batches[0], False)], b""
        form = self._batches[statements]
        if form is not None and (call := pg_batch.runs_call(form, batches)) and self._may_create_temporary():
            function = form.function
            if function in self._functions or function in self._created:
                return [(*call, False)], b""
            return [(function, None, False), (*call, False)], function
        return [(*batch, False) for batch in batches], b""

    def _forget_functions(self) -> None:
        self._functions.clear()
        self._created.clear()

    def _may_create_temporary(self) -> bool:
        """Whether this session may create temporary objects (the database's ``TEMPORARY`` privilege, which PUBLIC
        has unless an operator revoked it), asked once per connection: pg_batch's function lives in ``pg_temp``;
        without the privilege an upsert's runs go as pipelined statements, the same statements."""
        if self._temporary is None:
            row = self.raw.execute("SELECT has_database_privilege(current_database(), 'TEMPORARY')").fetchone()
            self._temporary = bool(row and row[0])
        return self._temporary

    def _batched(self, statements: str, rows: list[Any]) -> list[tuple[bytes, list[list[Any]]]] | None:
        """:func:`sidecar.backends.pg_batch.plan` of ``rows``, its statement's form cached per connection."""
        if statements not in self._batches:
            self._batches[statements] = pg_batch.batch_statement(self, statements)
        return pg_batch.plan(self._batches[statements], rows)

    def defer(self, statements: str, bindings: Any = None) -> None:
        """Queue one statement whose result nobody reads (the engine's bookkeeping inside its transaction: the
        cursor, ``monmouth_blocks``, pruning), to be sent with the next statement this connection executes, in one
        round trip (psycopg's pipeline mode). Before ``COMMIT`` they share its round trip; before any other statement
        they go in one round trip of their own first; a ``ROLLBACK`` (to a savepoint or whole) drops them, since it
        would undo them.

        A queued statement that fails fails the whole transaction: it is rolled back at once and the error raised
        from the statement that sent it (``COMMIT`` included), as when SQLite rolls a transaction back on a fault;
        ``in_transaction`` is then False, which tells the engine nothing of its batch was written."""
        self._later.append((statements, bindings, "apsw"))

    def _flush(self, commit: psycopg.Cursor[Any] | None = None) -> None:
        """Send the queued statements (and ``COMMIT`` on ``commit``) in one pipeline; on an error roll back."""
        try:
            with self._sending():
                if commit is not None:
                    _run(commit, "COMMIT", None)
        except psycopg.Error:
            if commit is not None:  # the COMMIT itself failed: the transaction is gone either way
                self._created.clear()
                if self.in_transaction:
                    with contextlib.suppress(psycopg.Error):
                        self._raw.execute("ROLLBACK")
            raise

    @contextlib.contextmanager
    def _sending(self) -> Iterator[None]:
        """A pipeline that sends the queued statements first, then what the body runs, in one round trip (at the
        block's end). A queued statement that fails rolls the whole transaction back (:meth:`defer`); a statement of
        the body that fails leaves the transaction aborted, as it would have alone."""
        later, self._later = self._later, []
        self._begun = False
        # The last queued statement runs on a cursor of its own: it has a result only if it ran, so only if every
        # queued statement before it succeeded (a pipeline skips what follows an error).
        cur, last = self._raw.cursor(), self._raw.cursor()
        try:
            with self._raw.pipeline():
                for i, (query, params, how) in enumerate(later, start=1):
                    c = last if i == len(later) else cur
                    if how == "apsw":
                        _run(c, query, params)
                    elif how == "many":
                        c.executemany(query, params)
                    else:
                        c.execute(query, params)
                yield
        except psycopg.Error as e:
            if isinstance(e, psycopg.errors.UndefinedFunction):
                self._forget_functions()  # pg_batch's function lost (see executemany)
            result = last.pgresult
            if later and (result is None or result.status not in (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK)):
                self._created.clear()
                if self.in_transaction:
                    with contextlib.suppress(psycopg.Error):
                        self._raw.execute("ROLLBACK")
            raise
        finally:
            cur.close()
            last.close()

    @property
    def usable(self) -> bool:
        """Open and not broken (a lost server connection is broken)."""
        return not (self._raw.closed or self._raw.broken)

    @property
    def in_transaction(self) -> bool:
        """Inside a transaction (an aborted one included, and one whose ``BEGIN`` is still queued); False when idle
        or when the connection is gone."""
        return self._begun or self._raw.info.transaction_status in (
            TransactionStatus.INTRANS, TransactionStatus.INERROR, TransactionStatus.ACTIVE)

    def __enter__(self) -> PgConnection:
        self.execute("BEGIN")
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.execute("COMMIT")
        elif self.in_transaction:
            self.execute("ROLLBACK")

    def redact(self, columns: Mapping[str, str], value: object) -> int:
        """:func:`sidecar.journal.redact` on PostgreSQL: delete every undo row (``monmouth_undo``) of ``table``
        whose old or new image has ``columns[table]`` equal to ``value`` (compared as the column's type). Images are
        whole rows here, so any column matches every change of the row, not only a primary-key column.

        Raises:
            RedactionError: not inside a transaction, an engine table, an unknown table or column; nothing changed.
        """
        if not self.in_transaction:
            raise RedactionError("redact: call it inside the write transaction that deletes the redacted rows")
        for table, column in columns.items():
            if table.startswith(ENGINE_PREFIX):
                raise RedactionError(f"redact: {table!r} is an engine table, not a journaled plugin table")
            names = [r[0] for r in self.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
                "AND table_name = ? ORDER BY ordinal_position", (table,)).fetchall()]
            if not names:
                raise RedactionError(f"redact: no table {table!r}")
            if column not in names:
                raise RedactionError(f"redact: table {table!r} has no column {column!r} (it has {', '.join(names)})")
        dropped = 0
        for table, column in columns.items():
            row = f'NULL::"{table}"'
            cur = self.execute(
                f'DELETE FROM monmouth_undo WHERE tbl = ? AND ((jsonb_populate_record({row}, old))."{column}" = ? '
                f'OR (jsonb_populate_record({row}, new))."{column}" = ?)', (table, value, value))
            dropped += max(cur.rowcount, 0)
        return dropped

    def close(self) -> None:
        self._later.clear()
        self._begun = False
        self._raw.close()


def _tables(conn: PgConnection) -> dict[str, bool]:
    """``{ordinary table of the current schema, not an extension's: has the monmouth_undo trigger}``."""
    # The trigger's name as a parameter: a statement with parameters is prepared by psycopg from its 5th run, and
    # the engine runs this one before every notification (planning it took longer than running it).
    rows = conn.execute(
        "SELECT c.relname, EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid AND t.tgname = ?) "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') "
        "AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid "
        "AND d.deptype = 'e')", ("monmouth_undo",)).fetchall()  # an extension's own tables (PostGIS) are not ours
    return {str(name): bool(has) for name, has in rows}


def _has_primary_key(conn: PgConnection, table: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_index WHERE indrelid = to_regclass(?) AND indisprimary",
                        (f'"{table}"',)).fetchone() is not None


class TriggerJournal:
    """The reorg journal on PostgreSQL (module docstring, invariant 2): installs the ``monmouth_undo`` row trigger on
    every journaled table, sets ``monmouth.block`` while a block's hooks run, and reverts a block from its undo rows.

    Args:
        conn: the engine's connection.
        trimmed: ``{table: block_number_column or None}`` of tables not to journal.
    """

    def __init__(self, conn: PgConnection, trimmed: Callable[[], Mapping[str, str | None]]) -> None:
        self.conn = conn
        self._trimmed = trimmed
        self._tables: frozenset[str] = frozenset()

    def refresh(self) -> None:
        """Add the trigger to journaled tables without it, drop it from tables now trimmed. Call it outside the
        engine's transaction: the DDL commits at once. (Inside it, a ``CREATE TRIGGER`` would hold its
        ``SHARE ROW EXCLUSIVE`` lock on the table until the notification commits, and a plugin waiting meanwhile for
        a lock that an API writer of that table holds would deadlock with it.)"""
        trimmed = self._trimmed()
        tables = _tables(self.conn)
        for name, has in tables.items():
            journaled = not name.startswith(ENGINE_PREFIX) and name not in trimmed
            if journaled and not has:
                self.conn.execute(
                    f'CREATE TRIGGER monmouth_undo AFTER INSERT OR UPDATE OR DELETE ON "{name}" FOR EACH ROW '
                    f'EXECUTE FUNCTION monmouth_record_undo(); CREATE TRIGGER monmouth_undo_truncate BEFORE TRUNCATE '
                    f'ON "{name}" FOR EACH STATEMENT EXECUTE FUNCTION monmouth_refuse_truncate()')
            elif has and not journaled:
                self.conn.execute(f'DROP TRIGGER monmouth_undo ON "{name}"; '
                                  f'DROP TRIGGER IF EXISTS monmouth_undo_truncate ON "{name}"')
        self._tables = frozenset(tables)

    def record(self, fn: Callable[[], None], number: int | None = None) -> bytes:
        """Run ``fn`` (block ``number``'s chain hooks) with ``monmouth.block`` set, so the triggers record its
        changes under ``number``; returns ``b""`` (the revertible marker stored in ``monmouth_blocks.changeset``).
        The setting is queued (:meth:`PgConnection.defer`): it reaches the server before any statement ``fn`` runs,
        in the same round trip."""
        if number is None:
            raise ValueError("the PostgreSQL journal records per block: pass the block number")
        self.conn.defer("SELECT set_config('monmouth.block', ?, true)", (str(number),))
        fn()
        self.conn.defer("SELECT set_config('monmouth.block', '', true)")  # sent with the engine's next statement
        return b""

    def undo(self, changeset: bytes, number: int | None = None) -> None:
        """Restore every journaled table to its state before block ``number`` and drop its undo rows.

        Raises:
            JournalConflictError: a row is not what the block left (changed outside the chain hooks), or a journaled
                table lost its primary key or was dropped.
        """
        if number is None:
            raise ValueError("the PostgreSQL journal reverts per block: pass the block number")
        try:
            self.conn.execute("SELECT monmouth_undo_block(?)", (number,))
        except (psycopg.errors.RaiseException, psycopg.errors.IntegrityError) as e:
            raise JournalConflictError(f"block {number}: {e.diag.message_primary or e}") from e

    def trim(self, number: int) -> None:
        for table, column in self._trimmed().items():
            if column and table in self._tables:
                self.conn.execute(f'DELETE FROM "{table}" WHERE "{column}" >= ?', (number,))

    def prune(self, horizon: int) -> None:
        self.conn.defer("DELETE FROM monmouth_undo WHERE block <= ?", (horizon,))


class PgDatabase:
    """A Monmouth database on PostgreSQL (the :class:`sidecar.backends.Backend` protocol).

    Opening creates the engine's tables and functions if missing (under :data:`SCHEMA_LOCK`), checks the schema
    version and the ``vector`` extension (pgvector; created if missing and the role may).

    Args:
        url: ``postgresql://user@host:port/dbname`` (libpq URI; no password in it).
        read_url: a streaming replica of ``url`` (same password) that :meth:`reader` reads from inside the API's
            ``GET`` requests (:data:`sidecar.backends.REQUEST`); ``""``: none.
        statement_timeout: seconds before the server cancels a statement (``statement_timeout``) on the
            connections of HTTP requests (:data:`sidecar.backends.REQUEST`); 0 for none. The engine, workers and
            start-up run without one. A cancelled statement raises ``psycopg.errors.QueryCanceled`` (SQLSTATE
            57014), which the API answers with a 503 naming ``storage.statement_timeout``
            (:func:`sidecar.backends.timeout_fault`).
        lock_timeout: seconds a statement waits for a lock (``lock_timeout``) on every connection; 0 for none.
        password: the password, from the environment (``storage.password_env``), or ``None`` (libpq's own
            ``PGPASSWORD``/``~/.pgpass`` then apply).
        password_env: the variable's name, for errors.
        connect_timeout: seconds before a connection attempt is abandoned.

    Raises:
        StorageError: the server is unreachable or refuses the login (naming the URL without password), pgvector is
            missing, or the database was written by a newer schema version.
    """

    backend = "postgres"

    def __init__(self, url: str, password: str | None = None, password_env: str = "MONMOUTH_PG_PASSWORD",
                 connect_timeout: float = 5.0, read_url: str = "", statement_timeout: float = 0.0,
                 lock_timeout: float = 0.0) -> None:
        self.url = url
        self.password = password
        self.password_env = password_env
        self.connect_timeout = connect_timeout
        self.read_url = read_url
        self.statement_timeout = statement_timeout
        self.lock_timeout = lock_timeout
        self._local = threading.local()
        with contextlib.closing(self.connect()) as conn:
            self._check_vector(conn)
            with conn:
                conn.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK,))
                found = conn.execute("SELECT to_regclass('monmouth_schema') IS NOT NULL").fetchall()[0][0]
                version = conn.execute("SELECT version FROM monmouth_schema").fetchone() if found else None
                if version is not None and version[0] > SCHEMA_VERSION:
                    raise StorageError(
                        f"storage.url: {self.describe()} was written by a newer Monmouth (schema version {version[0]}, "
                        f"this one knows up to {SCHEMA_VERSION}); run the newer version, or point storage.url at "
                        "another database")
                conn.execute(_SCHEMA)
                conn.execute(pg_uint256.SQL)  # u256(), u256_add()... as on SQLite (sidecar.uint256)

    def describe(self) -> str:
        return redact_url(self.url)

    @property
    def dbname(self) -> str:
        return urlsplit(self.url).path.lstrip("/") or "(default database)"

    def _check_vector(self, conn: PgConnection) -> None:
        if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone():
            return
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except psycopg.Error as e:
            raise StorageError(
                f"storage.url: {self.describe()}: the PostgreSQL extension \"vector\" (pgvector) is not installed in "
                f"database {self.dbname!r} and this role cannot create it ({e.diag.message_primary or e}); install "
                "pgvector on the server and run `CREATE EXTENSION vector;` in that database as a superuser"
            ) from None

    def connect(self, readonly: bool = False, application_name: str = "monmouth", replica: bool = False,
                statement_timeout: float = 0.0) -> PgConnection:
        """A new autocommit connection to ``url`` (``replica``: to ``read_url``), with ``lock_timeout`` and
        ``statement_timeout`` (seconds, 0: none) set for the session; ``readonly``: every transaction read-only.

        Raises:
            StorageError: the server cannot be reached or refuses the login (key ``storage.url`` or
                ``storage.read_url``, the URL without password).
        """
        url, key = (self.read_url, "storage.read_url") if replica else (self.url, "storage.url")
        options = (f"-c statement_timeout={round(statement_timeout * 1000)} "
                   f"-c lock_timeout={round(self.lock_timeout * 1000)}")
        try:
            raw = psycopg.connect(url, password=self.password, autocommit=True,
                                  connect_timeout=max(1, round(self.connect_timeout)),
                                  application_name=application_name, options=options)
        except psycopg.OperationalError as e:
            # No SQLSTATE: nothing answered (refused, timed out, no route); 57P03: the server is starting up.
            unreachable = e.sqlstate in (None, "57P03") and "password" not in str(e)
            hint = "" if self.password or unreachable else f" (no password: is {self.password_env} set?)"
            error = StorageUnavailableError if unreachable else StorageError
            raise error(f"{key}: cannot connect to {redact_url(url)}: "
                        f"{str(e).strip().splitlines()[-1]}{hint}") from None
        if readonly:
            raw.execute("SET default_transaction_read_only = on")
        return PgConnection(raw)

    def _thread_connection(self, slot: str) -> PgConnection:
        """This thread's connection ``slot``, reused (reconnected if it was closed): ``conn`` (the primary, no
        statement timeout), ``request`` (the primary, ``statement_timeout``) or ``replica`` (``read_url``,
        read-only, ``statement_timeout``)."""
        conn: PgConnection | None = getattr(self._local, slot, None)
        if conn is None or not conn.usable:
            replica = slot == "replica"
            conn = self.connect(readonly=replica, replica=replica,
                                statement_timeout=0.0 if slot == "conn" else self.statement_timeout)
            setattr(self._local, slot, conn)
        return conn

    def reader(self) -> PgConnection:
        """A per-thread read connection (see :data:`sidecar.backends.REQUEST`): inside a ``GET`` request, the
        replica ``read_url`` when configured; inside any request, the primary with ``statement_timeout``; else the
        primary without it."""
        kind = REQUEST.get()
        if kind == "read" and self.read_url:
            return self._thread_connection("replica")
        return self._thread_connection("conn" if kind is None else "request")

    @contextlib.contextmanager
    def write(self) -> Iterator[PgConnection]:
        """A short write transaction on this thread's connection to ``url`` (never the replica; inside a request,
        under ``statement_timeout``); commits on success, rolls back on error."""
        conn = self._thread_connection("conn" if REQUEST.get() is None else "request")
        with conn:
            yield conn

    def replica_status(self, primary: int | None) -> dict[str, Any]:
        """The read replica as ``/status`` shows it: ``{"url", "head": {"number", "hash"} | None, "lag_blocks",
        "replay_lag_s"}``. ``lag_blocks`` is ``primary`` (the primary's cursor, a block number) minus the
        replica's; ``replay_lag_s`` is seconds since the last transaction the replica replayed committed on the
        primary (``now() - pg_last_xact_replay_timestamp()``), 0 when it has replayed all the WAL it received.
        A replica that cannot be read gives ``{"url", "error"}`` instead (``/status`` still answers)."""
        out: dict[str, Any] = {"url": redact_url(self.read_url)}
        try:
            conn = self._thread_connection("replica")
            row = conn.execute("SELECT number, hash FROM monmouth_cursor WHERE id = 1").fetchone()
            lag = conn.execute(
                "SELECT pg_is_in_recovery(), CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 "
                "ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END").fetchone()
        except (psycopg.Error, StorageError) as e:
            out["error"] = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            return out
        number, hash_ = (row[0], bytes(row[1])) if row and row[0] is not None else (None, b"")
        out["head"] = {"number": number, "hash": "0x" + hash_.hex()} if number is not None else None
        out["lag_blocks"] = (primary - number) if primary is not None and number is not None else None
        out["replay_lag_s"] = round(float(lag[1]), 3) if lag and lag[1] is not None else None
        if lag and not lag[0]:
            out["error"] = "storage.read_url is not a replica (pg_is_in_recovery() is false)"
        return out

    def engine_connection(self, replacing: PgConnection | None = None) -> PgConnection:
        """The engine's connection, holding the ingestion lock :data:`INGEST_LOCK` for as long as it lives.

        Raises:
            StorageError: another engine (another ``monmouth run``) holds the lock, named by its pid, host and start.
        """
        if replacing is not None:
            with contextlib.suppress(psycopg.Error):
                replacing.close()
        conn = self.connect(application_name=f"monmouth run pid {os.getpid()} on {socket.gethostname()}")
        if conn.execute("SELECT pg_try_advisory_lock(?)", (INGEST_LOCK,)).fetchall()[0][0]:
            return conn
        holder = conn.execute(
            "SELECT a.pid, a.application_name, coalesce(host(a.client_addr), 'local socket'), a.backend_start "
            "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND l.classid = 0 AND l.objid = ? AND l.objsubid = 1 AND l.granted", (INGEST_LOCK,)).fetchone()
        conn.close()
        who = (f"server pid {holder[0]} ({holder[1] or 'no application_name'}, from {holder[2]}, connected since "
               f"{holder[3]:%Y-%m-%d %H:%M:%S %Z})" if holder else "another session")
        raise StorageError(
            f"storage.url: {self.describe()}: another engine owns ingestion of database {self.dbname!r}: {who} holds "
            "its ingestion lock; exactly one `monmouth run` may write a database (use `monmouth serve` for more API "
            "processes), so stop the other one or point storage.url at another database")

    def journal(self, conn: PgConnection, trimmed: Callable[[], Mapping[str, str | None]]) -> TriggerJournal:
        return TriggerJournal(conn, trimmed)

    def migrate(self, plugin: str, scripts: Sequence[str], trimmed: set[str], conn: PgConnection | None = None) -> int:
        """:func:`sidecar.store.migrate` (same digests, same checks) with PostgreSQL's catalog, on a new connection
        (or on ``conn``, whose ``with conn:`` is then each script's transaction: ``monmouth storage copy`` makes it
        a savepoint of its own transaction).

        Raises:
            MigrationChangedError: an applied migration changed or was removed; nothing was run.
            MigrationError: a script failed (rolled back) or created a table the journal cannot restore.
        """
        with contextlib.closing(self.connect()) if conn is None else contextlib.nullcontext(conn) as c:
            return migrate(c, plugin, scripts, trimmed, kinds=lambda c: dict.fromkeys(_tables(c), "table"),
                           has_pk=_has_primary_key, errors=(psycopg.Error,))
