"""The PostgreSQL backend on a real server (tests/pg.py): the trigger journal undoes any SQL exactly, refuses what it
cannot undo, one engine per database, refusals at start (pgvector, newer schema, unreachable, password), a connection
dropped inside a notification, and the plugin backend rule."""

from __future__ import annotations

import math
import threading

import psycopg
import pytest

from monmouth import hookimpl
from monmouth.backends.postgres import SCHEMA_VERSION, PgConnection, PgDatabase
from monmouth.config import validate
from monmouth.errors import ConfigError, StorageError, StorageUnavailableError
from monmouth.journal import JournalConflictError
from monmouth.types import ChainCommitted, ChainReorged, ChainReverted
from tests.chains import chain, extend
from tests.conftest import make_engine
from tests.pg import PASSWORD, round_trips
from tests.plugins import ledger

BOTH = ("sqlite", "postgres")


class Tricky:
    """Every kind of write on PostgreSQL types: several updates of one row in a block, a primary key that changes,
    delete then re-insert, NULLs, floats, jsonb, timestamps, arrays and pgvector vectors."""

    monmouth_backends = hookimpl(lambda self: BOTH)

    @hookimpl
    def monmouth_migrations(self):
        return ["""
            CREATE TABLE tricky_rows (k BIGINT PRIMARY KEY, f DOUBLE PRECISION, j JSONB, t TIMESTAMPTZ, a INTEGER[],
                                      v vector(3), b BYTEA, note TEXT);
            CREATE TABLE tricky_pairs (x BIGINT, y TEXT, n BIGINT NOT NULL, PRIMARY KEY (x, y));
        """]

    @hookimpl
    def monmouth_block_applied(self, conn, block, notification):
        n = block.number
        conn.execute("INSERT INTO tricky_rows VALUES (?, ?, ?::jsonb, to_timestamp(?), ?, ?::vector, ?, NULL)",
                     (n, n / 3, f'{{"n": {n}, "s": "a%b?c"}}', n * 1.5, [n, n + 1], f"[{n},0.1,{math.pi}]",
                      block.hash))
        conn.execute("UPDATE tricky_rows SET f = f * 7, note = ? WHERE k < ?", (f"seen {n}", n))
        conn.execute("UPDATE tricky_rows SET note = note || '!' WHERE k < ?", (n,))
        conn.execute("UPDATE tricky_rows SET k = k + 1000 WHERE k = ?", (n - 2,))  # a primary key moves
        conn.execute("DELETE FROM tricky_rows WHERE k = ?", (n - 3 + 1000,))
        conn.execute("INSERT INTO tricky_pairs VALUES (?, 'a', 1) ON CONFLICT (x, y) DO UPDATE "
                     "SET n = tricky_pairs.n + 1", (n % 3,))
        conn.execute("DELETE FROM tricky_pairs WHERE x = ? AND y = 'a'", ((n + 1) % 3,))
        conn.execute("INSERT INTO tricky_pairs VALUES (?, 'a', 0)", ((n + 1) % 3,))  # deleted, then back


def dump_tricky(conn) -> dict[str, list[tuple]]:
    return {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in ("tricky_rows", "tricky_pairs")}


def test_any_sql_on_postgres_types_is_undone_exactly(pg_server):
    live = make_engine(pg_server.database(), {"tricky": Tricky()})
    ref = make_engine(pg_server.database(), {"tricky": Tricky()})
    bs = extend(None, 8, number=1)
    live.apply(ChainCommitted(chain(bs)))
    fork = extend(bs[2], 4, salt="fork")
    live.apply(ChainReorged(chain(bs[3:]), chain(fork)))
    live.apply(ChainReverted(chain(fork[2:])))
    ref.apply(ChainCommitted(chain(bs[:3] + fork[:2])))
    assert live.head == fork[1].ref
    got, want = dump_tricky(live.conn), dump_tricky(ref.conn)
    assert got == want and len(got["tricky_rows"]) >= 3
    # Nothing of the reverted blocks is left in the undo data.
    assert live.conn.execute("SELECT count(*) FROM monmouth_undo WHERE block > ?", (fork[1].number,)).fetchone() == (0,)
    live.close()
    ref.close()


class Balances:
    """Running balances: each block adds to a few holders several times (a run of UPDATEs touching one row more than
    once), inserts a holder and deletes one (runs of INSERTs and DELETEs)."""

    monmouth_backends = hookimpl(lambda self: BOTH)

    @hookimpl
    def monmouth_migrations(self):
        return ["CREATE TABLE bal_holders (holder TEXT PRIMARY KEY, amount NUMERIC(78) NOT NULL, n BIGINT NOT NULL)",
                "CREATE TABLE bal_seen (holder TEXT PRIMARY KEY)"]

    @hookimpl
    def monmouth_block_applied(self, conn, block, notification):
        n = block.number
        for i in range(6):
            conn.execute("INSERT INTO bal_holders VALUES (?, ?, 1) ON CONFLICT (holder) DO UPDATE "
                         "SET amount = bal_holders.amount + excluded.amount, n = bal_holders.n + 1",
                         (f"h{i % 3}", 2**200 + n * 10 + i))
        conn.execute("INSERT INTO bal_seen VALUES (?), (?)", (f"s{n}a", f"s{n}b"))
        conn.execute("DELETE FROM bal_seen WHERE holder = ?", (f"s{n - 1}a",))


def test_runs_of_updates_are_undone_to_each_rows_first_image_and_a_changed_row_is_a_conflict(pg_server):
    live = make_engine(pg_server.database(), {"bal": Balances()})
    ref = make_engine(pg_server.database(), {"bal": Balances()})
    bs = extend(None, 6, number=1)
    live.apply(ChainCommitted(chain(bs)))
    ref.apply(ChainCommitted(chain(bs[:3])))

    def dump(e):
        return [e.conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in ("bal_holders", "bal_seen")]

    other = PgDatabase(live.db.url, password=PASSWORD).connect()
    live.apply(ChainReverted(chain(bs[3:])))
    assert dump(live) == dump(ref) and dump(ref)[0][0][1] > 2**200
    live.apply(ChainCommitted(chain(bs[3:])))
    other.execute("UPDATE bal_holders SET amount = amount + 1 WHERE holder = 'h1'")  # not through a chain hook
    with pytest.raises(JournalConflictError, match=r"bal_holders: 1 of the 3 rows block 6 updated"):
        live.apply(ChainReverted(chain(bs[5:])))
    assert live.head == bs[5].ref  # nothing reverted
    other.close()
    live.close()
    ref.close()


def test_undo_data_is_pruned_at_finality_and_outside_the_window(pg_url):
    e = make_engine(pg_url, {"ledger": ledger}, undo_window=4)
    bs = extend(None, 10, number=1, n_txs=2)
    e.apply(ChainCommitted(chain(bs)))
    blocks = {r[0] for r in e.conn.execute("SELECT DISTINCT block FROM monmouth_undo").fetchall()}
    assert blocks == {7, 8, 9, 10}  # head 10, window 4
    e.set_finalized(8)
    assert {r[0] for r in e.conn.execute("SELECT DISTINCT block FROM monmouth_undo").fetchall()} == {9, 10}
    assert e.oldest_revertible() == 9
    e.close()


def test_a_row_changed_outside_the_chain_hooks_is_a_conflict_and_nothing_is_reverted(pg_url):
    e = make_engine(pg_url, {"ledger": ledger})
    bs = extend(None, 4, number=1, n_txs=2)
    e.apply(ChainCommitted(chain(bs)))
    other = PgDatabase(pg_url, password=PASSWORD).connect()
    tx = bs[3].transactions[0].hash
    other.execute("UPDATE ledger_transfers SET value = 'tampered' WHERE tx_hash = ?", (tx,))
    with pytest.raises(JournalConflictError, match="ledger_transfers"):
        e.apply(ChainReverted(chain(bs[2:])))
    assert e.head == bs[3].ref
    assert e.conn.execute("SELECT count(*) FROM ledger_transfers").fetchone() == (8,)
    assert e.conn.execute("SELECT number FROM monmouth_cursor").fetchone() == (4,)
    other.close()
    e.close()


class Truncating:
    monmouth_backends = hookimpl(lambda self: BOTH)

    @hookimpl
    def monmouth_migrations(self):
        return ["CREATE TABLE trunc_rows (n BIGINT PRIMARY KEY)"]

    @hookimpl
    def monmouth_block_applied(self, conn, block, notification):
        conn.execute("INSERT INTO trunc_rows VALUES (?)", (block.number,))
        if block.number == 3:
            conn.execute("TRUNCATE trunc_rows")


def test_truncate_of_a_journaled_table_in_a_chain_hook_is_refused(pg_url):
    e = make_engine(pg_url, {"trunc": Truncating()})
    bs = extend(None, 3, number=1)
    e.apply(ChainCommitted(chain(bs[:2])))
    with pytest.raises(Exception, match="TRUNCATE of the journaled table trunc_rows"):
        e.apply(ChainCommitted(chain(bs[2:])))
    assert e.head == bs[1].ref and e.conn.execute("SELECT count(*) FROM trunc_rows").fetchone() == (2,)
    e.close()


def test_a_second_engine_on_the_same_database_is_refused_naming_the_first(pg_url):
    first = make_engine(pg_url, {"ledger": ledger})
    with pytest.raises(StorageError, match=r"another engine owns ingestion .*monmouth run pid \d+"):
        make_engine(pg_url, {"ledger": ledger})
    first.close()  # the lock goes with the connection
    second = make_engine(pg_url, {"ledger": ledger})
    assert second.head is None
    second.close()


def test_pgvector_missing_is_refused_naming_the_extension(pg_server):
    role = pg_server.role("plain")
    url = pg_server.database(vector=False, owner=role).replace("//monmouth@", f"//{role}@")
    with pytest.raises(StorageError, match=r'extension "vector" \(pgvector\) is not installed in database'):
        PgDatabase(url, password=PASSWORD)


def test_a_database_of_a_newer_schema_version_is_refused(pg_url):
    PgDatabase(pg_url, password=PASSWORD)
    with psycopg.connect(pg_url, password=PASSWORD, autocommit=True) as c:
        c.execute("UPDATE monmouth_schema SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(StorageError, match=f"newer Monmouth .schema version {SCHEMA_VERSION + 1}"):
        PgDatabase(pg_url, password=PASSWORD)


def test_unreachable_server_and_wrong_password_are_refused_naming_the_url(pg_server, pg_url):
    from tests.pg import free_port

    url = f"postgresql://monmouth@127.0.0.1:{free_port()}/nowhere"
    with pytest.raises(StorageUnavailableError, match=f"cannot connect to {url}"):
        PgDatabase(url, password=PASSWORD, connect_timeout=2)
    with pytest.raises(StorageError, match="is MONMOUTH_PG_PASSWORD set") as err:
        PgDatabase(pg_url, password=None)
    assert not isinstance(err.value, StorageUnavailableError)  # waiting would not help: refused at once


def test_a_connection_dropped_inside_a_notification_moves_nothing(pg_server, pg_url):
    """The server ends the engine's session in the middle of block 4's hooks: the transaction is gone whole, the
    cursor did not move, and the engine goes on after reconnecting."""
    dbname = pg_url.rsplit("/", 1)[1]

    class Dropper:
        monmouth_backends = hookimpl(lambda self: BOTH)
        armed = True

        @hookimpl
        def monmouth_block_applied(self, conn, block, notification):
            if block.number == 4 and self.armed:
                self.armed = False
                pg_server.terminate(dbname)

    e = make_engine(pg_url, {"ledger": ledger, "drop": Dropper()})
    bs = extend(None, 6, number=1, n_txs=2)
    e.apply(ChainCommitted(chain(bs[:2])))
    with pytest.raises(Exception) as err:
        e.apply(ChainCommitted(chain(bs[2:])))
    assert isinstance(err.value, psycopg.OperationalError | psycopg.errors.AdminShutdown) or isinstance(
        err.value.__cause__, psycopg.OperationalError)
    assert e.head == bs[1].ref
    e.reconnect()
    assert e.head == bs[1].ref
    assert e.conn.execute("SELECT count(*) FROM ledger_transfers").fetchone() == (4,)
    assert e.conn.execute("SELECT count(*) FROM monmouth_undo WHERE block > 2").fetchone() == (0,)
    e.apply(ChainCommitted(chain(bs[2:])))
    ref = make_engine(pg_server.database(), {"ledger": ledger})
    ref.apply(ChainCommitted(chain(bs)))
    dump = "SELECT * FROM ledger_transfers ORDER BY tx_hash"
    assert e.conn.execute(dump).fetchall() == ref.conn.execute(dump).fetchall()
    e.close()
    ref.close()


def test_queued_statements_ride_with_the_next_one_and_a_failing_one_fails_the_whole_transaction(pg_url):
    """``PgConnection.defer`` (the engine's bookkeeping): queued statements run before the next statement, in order;
    a ``ROLLBACK`` (whole or to a savepoint) drops them; one that fails rolls the whole transaction back, raised from
    the statement that sent it (``COMMIT`` or any other), and ``in_transaction`` is then False."""
    c = PgDatabase(pg_url, password=PASSWORD).connect()
    c.execute("CREATE TABLE q (a integer PRIMARY KEY)")
    rows = lambda: [r[0] for r in c.execute("SELECT a FROM q ORDER BY a").fetchall()]  # noqa: E731

    c.execute("BEGIN")
    c.defer("INSERT INTO q VALUES (?)", (1,))
    c.defer("INSERT INTO q VALUES (?)", (2,))
    assert rows() == [1, 2]  # sent before the SELECT
    c.defer("INSERT INTO q VALUES (?)", (3,))
    c.execute("COMMIT")
    assert rows() == [1, 2, 3] and not c.in_transaction

    c.execute("BEGIN")
    c.execute("INSERT INTO q VALUES (4)")
    c.execute("SAVEPOINT s")
    c.defer("INSERT INTO q VALUES (?)", (5,))
    c.execute("ROLLBACK TO s")
    c.defer("INSERT INTO q VALUES (?)", (6,))
    c.execute("RELEASE s")
    c.execute("COMMIT")
    assert rows() == [1, 2, 3, 4, 6]

    c.execute("BEGIN")
    c.execute("INSERT INTO q VALUES (7)")
    c.defer("INSERT INTO q VALUES (?)", (1,))  # a duplicate key
    with pytest.raises(psycopg.errors.UniqueViolation):
        c.execute("COMMIT")
    assert not c.in_transaction and rows() == [1, 2, 3, 4, 6]

    c.execute("BEGIN")
    c.execute("INSERT INTO q VALUES (8)")
    c.defer("INSERT INTO q VALUES (?)", (2,))
    c.defer("INSERT INTO q VALUES (?)", (9,))
    with pytest.raises(psycopg.errors.UniqueViolation):
        c.execute("SELECT 1")
    assert not c.in_transaction and rows() == [1, 2, 3, 4, 6]
    c.close()


def test_executemany_of_a_plain_insert_runs_as_one_statement_with_the_same_rows_as_row_by_row(pg_server):
    """A plain ``INSERT ... VALUES`` of many rows runs as one statement (PgConnection._batched; with ``DO UPDATE``
    one per run of distinct keys) and leaves exactly the rows psycopg's row-by-row ``executemany`` leaves: every type
    the columns convert (huge ints into numeric, str into jsonb, bytes, floats, booleans, NULLs), literals in
    VALUES, ``ON CONFLICT DO NOTHING`` with duplicates inside the batch, ``DO UPDATE`` of one key several times; a
    duplicate key is the same error; what cannot be batched (a DO UPDATE that may move a key or takes a parameter,
    an array column, values of mixed Python types) runs row by row."""
    ddl = ("CREATE TABLE t (k bigint PRIMARY KEY, h bytea, v numeric(78), s text, j jsonb, f double precision, "
           "x boolean, n integer DEFAULT 5, arr integer[])")
    ours, theirs = (PgDatabase(pg_server.database(), password=PASSWORD).connect() for _ in range(2))
    rows = [(i, bytes([i]) * 3, 10**30 + i if i % 2 else i, f"s{i}%?'", f'{{"a": {i}}}', i / 3, i % 2 == 0)
            for i in range(1, 30)]
    cases = [("INSERT INTO t (k, h, v, s, j, f, x) VALUES (?, ?, ?, ?, ?, ?, ?)", rows, True),
             ("INSERT INTO t (k, s, n) VALUES (?, NULL, 7) ON CONFLICT (k) DO NOTHING",
              [(1,), (100,), (100,), (101,)], True),
             ("INSERT INTO t (k, n, v) VALUES (?, ?, ?) ON CONFLICT (k) DO UPDATE SET n = t.n + excluded.n, "
              "v = coalesce(t.v, 0) + excluded.v", [(1, 1, 10**40), (1, 2, 5), (102, 3, 1), (1, 4, 1), (102, 5, 2)],
              True),
             ("INSERT INTO t (k, s) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET s = t.s || excluded.s",
              [(1, "a"), (1, "b"), (1, "c")], True),
             ("INSERT INTO t (k, n) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET k = excluded.k + 1000",
              [(1, 1), (2, 2)], False),
             ("INSERT INTO t (k, n) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET n = ?", [(1, 1, 7), (2, 2, 8)], False),
             ("INSERT INTO t (k, arr) VALUES (?, ?)", [(103, [1, 2]), (104, [3])], False),
             ("INSERT INTO t (k, f) VALUES (?, ?)", [(105, 1), (106, 1.5)], False)]
    for c in (ours, theirs):
        c.execute(ddl)
    for sql, batch, one in cases:
        assert (ours._batched(sql, batch) is not None) is one, sql
        ours.executemany(sql, batch)
        with theirs.raw.cursor() as cur:
            cur.executemany(sql.replace("?", "%s"), batch)
        everything = "SELECT * FROM t ORDER BY k"
        assert ours.execute(everything).fetchall() == theirs.execute(everything).fetchall(), sql
    with pytest.raises(psycopg.errors.UniqueViolation, match=r"Key \(k\)=\(300\)"):
        ours.executemany("INSERT INTO t (k) VALUES (?)", [(300,), (300,)])


def test_an_upsert_of_repeated_keys_runs_its_statements_in_one_call_as_many_statements(pg_url):
    """``DO UPDATE`` rows with a key given several times run as one call of a temporary function (pg_batch's
    ``Batch.function``) whose ``INSERT`` runs once per run of distinct keys, in order: a statement-level trigger fires
    once per run (as many times as for the pipelined statements), a row trigger once per row in the rows' order, the
    table ends as row by row. The function made in a rolled-back transaction is made again by the next call, one made
    in a committed one is reused; a failing run fails the call with the constraint's own error."""
    c = PgDatabase(pg_url, password=PASSWORD).connect()
    c.execute("""
        CREATE TABLE acc (k bytea PRIMARY KEY, v numeric(78) NOT NULL, n bigint NOT NULL CHECK (n < 4));
        CREATE TABLE fired (id bigint GENERATED ALWAYS AS IDENTITY, what text);
        CREATE FUNCTION per_statement() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN INSERT INTO fired (what) VALUES ('statement ' || TG_OP); RETURN NULL; END $$;
        CREATE FUNCTION per_row() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN INSERT INTO fired (what) VALUES (TG_OP || ' ' || encode(NEW.k, 'escape') || ' ' || NEW.n);
            RETURN NULL; END $$;
        CREATE TRIGGER s AFTER INSERT ON acc FOR EACH STATEMENT EXECUTE FUNCTION per_statement();
        CREATE TRIGGER r AFTER INSERT OR UPDATE ON acc FOR EACH ROW EXECUTE FUNCTION per_row();
    """)
    upsert = "INSERT INTO acc (k, v, n) VALUES (?, ?, 1) ON CONFLICT (k) DO UPDATE SET v = acc.v + excluded.v, n = acc.n + 1"
    rows = [(b"a", 10**70), (b"b", 2), (b"a", 3), (b"c", 4), (b"a", 5), (b"b", 6)]
    runs = c._batched(upsert, rows)
    assert runs is not None and [len(r[1][0]) for r in runs] == [2, 2, 2]
    function = c._batches[upsert].function
    c.execute("BEGIN")
    c.executemany(upsert, rows)
    c.execute("ROLLBACK")
    assert c.execute("SELECT count(*) FROM pg_proc WHERE proname LIKE 'monmouth_batch_%'").fetchone() == (0,)
    c.execute("BEGIN")
    c.executemany(upsert, rows)  # made again
    c.execute("COMMIT")
    assert function in c._functions
    assert [r[0] for r in c.execute("SELECT what FROM fired ORDER BY id").fetchall()] == [
        "INSERT a 1", "INSERT b 1", "statement INSERT", "UPDATE a 2", "INSERT c 1", "statement INSERT",
        "UPDATE a 3", "UPDATE b 2", "statement INSERT"]
    assert c.execute("SELECT k, v, n FROM acc ORDER BY k").fetchall() == [
        (b"a", 10**70 + 8, 3), (b"b", 8, 2), (b"c", 4, 1)]
    c.execute("BEGIN")
    with pytest.raises(psycopg.errors.CheckViolation, match="acc_n_check"):
        c.executemany(upsert, [(b"c", 1), (b"c", 1), (b"a", 1)])  # the third run puts a's n at 4
    c.execute("ROLLBACK")
    c.executemany(upsert, [(b"c", 1), (b"c", 1)])  # outside a transaction: reused, committed at once
    assert c.execute("SELECT n FROM acc WHERE k = 'c'").fetchone() == (3,)
    # the session loses its temporary objects (DISCARD TEMP; a pooler handing over another server connection):
    # the call fails once, naming the function, and the retry makes it again
    c.execute("DISCARD TEMP")
    c.execute("BEGIN")
    with pytest.raises(psycopg.errors.UndefinedFunction, match="monmouth_batch_"):
        c.executemany(upsert, [(b"d", 1), (b"d", 1)])
    c.execute("ROLLBACK")
    c.execute("BEGIN")
    c.executemany(upsert, [(b"d", 1), (b"d", 1)])
    c.execute("COMMIT")
    assert c.execute("SELECT n FROM acc WHERE k = 'd'").fetchone() == (2,)
    c.close()


def test_without_the_temporary_privilege_repeated_keys_run_as_pipelined_statements(pg_server, pg_url):
    """A role that may not create temporary objects (an operator revoked ``TEMPORARY`` from PUBLIC) gets the same
    upsert of repeated keys as one pipelined statement per run, not a refused ``CREATE FUNCTION pg_temp...``."""
    from psycopg import sql

    name = pg_url.rsplit("/", 1)[-1]
    role = pg_server.role(f"notemp_{name}")
    with pg_server.admin() as a:
        a.execute(sql.SQL("REVOKE TEMPORARY ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name)))
    su = PgDatabase(pg_url, password=PASSWORD).connect()
    su.execute("CREATE TABLE acc (k bytea PRIMARY KEY, n bigint NOT NULL)")
    su.execute(f'GRANT SELECT, INSERT, UPDATE ON acc TO "{role}"')
    c = PgConnection(psycopg.connect(pg_url.replace("//monmouth@", f"//{role}@"), password=PASSWORD,
                                     autocommit=True))
    upsert = "INSERT INTO acc (k, n) VALUES (?, 1) ON CONFLICT (k) DO UPDATE SET n = acc.n + 1"
    c.execute("BEGIN")
    c.executemany(upsert, [(b"a",), (b"b",), (b"a",), (b"a",)])
    c.execute("COMMIT")
    assert c.execute("SELECT k, n FROM acc ORDER BY k").fetchall() == [(b"a", 3), (b"b", 1)]
    assert c._temporary is False and not c._functions
    assert su.execute("SELECT count(*) FROM pg_proc WHERE proname LIKE 'monmouth_batch_%'").fetchone() == (0,)
    c.close()
    su.close()


def test_a_batched_insert_is_journaled_row_by_row_and_reverted_exactly(pg_url):
    """The rows of a one-statement ``executemany`` go through the undo trigger each, in order: a reorg reverts the
    block exactly."""

    class Many:
        monmouth_backends = hookimpl(lambda self: BOTH)
        monmouth_migrations = hookimpl(lambda self: ["CREATE TABLE many_rows (k bytea PRIMARY KEY, n bigint, s text); "
                                                     "CREATE TABLE many_totals (k bytea PRIMARY KEY, n bigint)"])

        @hookimpl
        def monmouth_block_applied(self, conn, block, notification):
            assert conn._batched("INSERT INTO many_rows (k, n, s) VALUES (?, ?, ?)", [(b"", 0, ""), (b"", 0, "")])
            conn.executemany("INSERT INTO many_rows (k, n, s) VALUES (?, ?, ?)",
                             [(t.hash, block.number, t.sender.hex()) for t in block.transactions])
            conn.executemany("DELETE FROM many_rows WHERE n = ?", [(block.number - 2,), (block.number - 3,)])
            upsert = ("INSERT INTO many_totals (k, n) VALUES (?, ?) ON CONFLICT (k) DO UPDATE "
                      "SET n = many_totals.n + excluded.n")
            keys = [bytes([i % 3]) for i in range(block.number + 3)]  # each key several times in a row's run
            assert len(conn._batched(upsert, [(k, 1) for k in keys])) > 1
            conn.executemany(upsert, [(k, block.number) for k in keys])

    e = make_engine(pg_url, {"many": Many()})
    bs = extend(None, 5, number=1, n_txs=4)
    e.apply(ChainCommitted(chain(bs[:3])))
    everything = "SELECT * FROM many_rows ORDER BY k; SELECT * FROM many_totals ORDER BY k"
    before = [e.conn.execute(q).fetchall() for q in everything.split("; ")]
    assert e.conn.execute("SELECT count(*) FROM monmouth_undo WHERE block = 3 AND op = 'I'").fetchone() == (4,)
    e.apply(ChainCommitted(chain(bs[3:])))
    fork = extend(bs[2], 1, number=4, n_txs=0, salt=7)
    e.apply(ChainReorged(chain(bs[3:]), chain(fork)))
    e.apply(ChainReverted(chain(fork)))
    assert e.head == bs[2].ref
    assert [e.conn.execute(q).fetchall() for q in everything.split("; ")] == before
    e.close()


def test_a_failing_bookkeeping_statement_of_a_group_commit_writes_nothing_of_the_batch(pg_url):
    """The engine queues its cursor update; when it fails (here a trigger refuses block 3's), the batch's transaction
    is gone whole: apply_many raises, the head and token stay at the last commit, no block of the batch is stored,
    and the next notifications apply normally."""
    e = make_engine(pg_url, {"ledger": ledger})
    bs = extend(None, 5, number=1, n_txs=2)
    e.apply(ChainCommitted(chain(bs[:1])), 1)
    e.conn.execute("""
        CREATE FUNCTION refuse_3() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN IF NEW.number = 3 THEN RAISE EXCEPTION 'cursor 3 refused'; END IF; RETURN NEW; END $$;
        CREATE TRIGGER refuse_3 BEFORE UPDATE ON monmouth_cursor FOR EACH ROW EXECUTE FUNCTION refuse_3()""")
    items = [(ChainCommitted(chain(bs[1:2])), 2), (ChainCommitted(chain(bs[2:3])), 3),
             (ChainCommitted(chain(bs[3:4])), 4)]
    with pytest.raises(psycopg.errors.RaiseException, match="cursor 3 refused"):
        e.apply_many(items)
    assert e.head == bs[0].ref and e.source_token == 1 and not e.conn.in_transaction
    assert e.conn.execute("SELECT max(number) FROM monmouth_blocks").fetchone() == (1,)
    assert e.conn.execute("SELECT count(*) FROM ledger_transfers").fetchone() == (2,)
    e.conn.execute("DROP TRIGGER refuse_3 ON monmouth_cursor")
    results, error = e.apply_many(items)
    assert error is None and e.head == bs[3].ref and e.source_token == 4
    assert e.conn.execute("SELECT count(*) FROM ledger_transfers").fetchone() == (8,)
    e.close()


class SqliteOnly:
    @hookimpl
    def monmouth_migrations(self):
        return ["CREATE TABLE only_rows (n INTEGER PRIMARY KEY)"]


def test_a_plugin_is_refused_on_a_backend_it_does_not_list_and_the_others_run(pg_url, tmp_path):
    e = make_engine(pg_url, {"ledger": ledger, "old": SqliteOnly()})
    st = e.host.status()
    assert st["ledger"]["state"] == "enabled"
    assert st["old"]["state"] == "failed"
    assert "plugin 'old' does not support the postgres storage backend (it supports: sqlite)" in st["old"]["error"]
    assert e.conn.execute("SELECT to_regclass('only_rows')").fetchone() == (None,)  # no migration ran
    e.close()
    s = make_engine(tmp_path / "db.sqlite", {"ledger": ledger, "old": SqliteOnly()})
    assert s.host.status()["old"]["state"] == "enabled"
    s.close()


def test_built_in_rag_and_memory_run_on_postgres(pg_url):
    from monmouth.plugins import discover

    installed = discover()
    e = make_engine(pg_url, {n: installed[n] for n in ("rag", "memory")})
    for name in ("rag", "memory"):
        assert e.host.status()[name]["state"] == "enabled", e.host.status()[name]
    e.host.shutdown()
    e.close()


@pytest.mark.parametrize(("storage", "error"), [
    ({"url": "postgresql://me:secret@db/monmouth"}, "storage.url: .*must not contain a password"),
    ({"url": "postgresql://me@db"}, "storage.url: .*names no database"),
    ({"url": "mysql://me@db/x"}, r"storage.url: .*must be a SQLite file path or a postgresql:// URL \(got a mysql"),
    ({"password_env": "not a name"}, "storage.password_env"),
])
def test_bad_storage_config_is_refused_naming_file_and_key(storage, error):
    with pytest.raises(ConfigError, match=error) as err:
        validate({"storage": storage}, "/etc/monmouth/config.toml", {})
    assert "/etc/monmouth/config.toml" in str(err.value)


def test_storage_url_picks_the_backend_over_path_and_a_relative_sqlite_path_is_resolved(tmp_path, pg_url):
    from monmouth.app import open_database

    s = validate({"storage": {"url": "data/x.sqlite", "path": "ignored.sqlite"}}, str(tmp_path / "config.toml"), {},
                 tmp_path)
    assert not s.storage.is_postgres and s.storage.sqlite_path == s.storage.path == str(tmp_path / "data" / "x.sqlite")
    db = open_database(s.storage)
    assert db.backend == "sqlite" and (tmp_path / "data" / "x.sqlite").exists()
    s = validate({"storage": {"url": pg_url, "password_env": "PG_SECRET"}}, "<test>", {})
    assert open_database(s.storage, {"PG_SECRET": PASSWORD}).backend == "postgres"
    with pytest.raises(StorageError, match="is PG_SECRET set"):
        open_database(s.storage, {})


def test_sqlite_connections_that_write_get_storage_cache_mib_and_read_only_ones_keep_the_default(tmp_path):
    from monmouth.app import open_database

    s = validate({"storage": {"path": str(tmp_path / "x.sqlite"), "cache_mib": 48}}, "<test>", {})
    db = open_database(s.storage)
    default = db.connect().pragma("cache_size")
    assert default == -2000  # SQLite's default: 2,000 KiB
    assert db.engine_connection().pragma("cache_size") == -48 * 1024
    reads: list[int] = []
    writes: list[int] = []

    def api_thread() -> None:  # a thread that reads, then writes once, then reads again
        reads.append(db.reader().pragma("cache_size"))
        with db.write() as w:
            w.execute("SELECT 1")
        writes.append(db.reader().pragma("cache_size"))

    t = threading.Thread(target=api_thread)
    t.start()
    t.join()
    assert reads == [default] and writes == [-48 * 1024]
    with pytest.raises(ConfigError, match="storage.cache_mib"):
        validate({"storage": {"cache_mib": 1}}, "<test>", {})


class OneStatement:
    monmouth_backends = hookimpl(lambda self: BOTH)

    @hookimpl
    def monmouth_migrations(self):
        return ["CREATE TABLE one_rows (n BIGINT PRIMARY KEY)"]

    @hookimpl
    def monmouth_block_applied(self, conn, block, notification):
        conn.execute("INSERT INTO one_rows VALUES (?)", (block.number,))


def test_a_notification_costs_the_engine_two_round_trips(pg_url):
    """The journal's catalog check goes alone, before the transaction (its DDL, when a table needs the trigger,
    commits at once); ``BEGIN`` and the block's ``monmouth.block`` travel with the plugin's first statement, the
    bookkeeping with ``COMMIT``: a block whose plugin runs one statement is three round trips, and a second block of
    the same notification adds only its plugin's statement (its setting rides with it). A revert of both is
    exact."""
    e = make_engine(pg_url, {"one": OneStatement()})
    bs = extend(None, 4, number=1, n_txs=1)
    e.apply(ChainCommitted(chain(bs[:1])), 1)
    trips = round_trips(e.conn, lambda: e.apply(ChainCommitted(chain(bs[1:2])), 2))
    assert len(trips) == 3, trips
    assert trips[0] == ["SELECT"] and trips[1] == ["BEGIN", "SELECT", "INSERT"] and trips[2][-1] == "COMMIT"
    trips = round_trips(e.conn, lambda: e.apply(ChainCommitted(chain(bs[2:4])), 3))
    assert len(trips) == 4, trips
    assert trips[2][0] == "SELECT" and trips[2][-1] == "INSERT"  # block 4's setting with its statement
    assert e.conn.execute("SELECT n FROM one_rows ORDER BY n").fetchall() == [(1,), (2,), (3,), (4,)]
    assert e.conn.execute("SELECT block, op FROM monmouth_undo ORDER BY seq").fetchall() == [
        (1, "I"), (2, "I"), (3, "I"), (4, "I")]
    e.apply(ChainReverted(chain(bs[1:4])))
    assert e.conn.execute("SELECT n FROM one_rows").fetchall() == [(1,)] and e.head == bs[0].ref
    e.close()


def test_a_transaction_whose_begin_was_never_sent_rolls_back_without_a_round_trip(pg_url):
    c = PgDatabase(pg_url, password=PASSWORD).connect()

    def empty() -> None:
        c.execute("BEGIN")
        assert c.in_transaction
        c.execute("ROLLBACK")
        assert not c.in_transaction

    assert round_trips(c, empty) == []
    with c:  # a BEGIN queued, then sent with the first statement, inside the transaction
        c.execute("CREATE TABLE q (n int PRIMARY KEY)")
        assert c.raw.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    assert not c.in_transaction and c.execute("SELECT count(*) FROM q").fetchone() == (0,)
    c.close()


class FailsAt:
    """Writes the block's number to ``fail_rows`` as its first statement, except at block ``at``, where that statement
    inserts the row ``0`` again: the server refuses it (primary key)."""

    monmouth_backends = hookimpl(lambda self: BOTH)

    def __init__(self, at: int) -> None:
        self.at = at

    @hookimpl
    def monmouth_migrations(self):
        return ["CREATE TABLE fail_rows (n BIGINT PRIMARY KEY); INSERT INTO fail_rows VALUES (0)"]

    @hookimpl
    def monmouth_block_applied(self, conn, block, notification):
        conn.execute("INSERT INTO fail_rows VALUES (?)", (0 if block.number == self.at else block.number,))


def test_a_plugin_statement_that_fails_with_queued_statements_rolls_back_only_its_item(pg_url):
    """In a group commit, a later item's first plugin statement carries the statements queued before it (its
    block's setting). When that statement fails, the queued ones did not: only that item is rolled back (to its
    savepoint) and the item before it commits, as when the statement travelled alone."""
    from monmouth.errors import PluginError

    e = make_engine(pg_url, {"fail": FailsAt(at=3)})
    bs = extend(None, 3, number=1, n_txs=1)
    e.apply(ChainCommitted(chain(bs[:1])), 1)
    trips: list = []

    def group() -> None:
        trips.append(e.apply_many([(ChainCommitted(chain(bs[1:2])), 2), (ChainCommitted(chain(bs[2:3])), 3)]))

    sent = round_trips(e.conn, group)
    results, error = trips[0]
    assert ["SELECT", "INSERT"] in sent, sent  # the failing statement went with block 3's setting
    assert [r.head for r in results] == [bs[1].ref] and isinstance(error, PluginError)
    assert isinstance(error.__cause__, psycopg.errors.UniqueViolation)
    assert e.head == bs[1].ref and e.source_token == 2 and not e.conn.in_transaction
    assert e.conn.execute("SELECT n FROM fail_rows ORDER BY n").fetchall() == [(0,), (1,), (2,)]
    assert e.conn.execute("SELECT max(number) FROM monmouth_blocks").fetchone() == (2,)
    assert e.conn.execute("SELECT DISTINCT block FROM monmouth_undo ORDER BY 1").fetchall() == [(1,), (2,)]
    e.close()


class WritesFromElsewhere:
    """At each block, writes a row of its own table from another connection (as an API process would) while the
    engine's transaction is open, with a short ``lock_timeout``."""

    monmouth_backends = hookimpl(lambda self: BOTH)

    def __init__(self, url: str) -> None:
        self.other = PgDatabase(url, password=PASSWORD).connect()
        self.other.execute("SET lock_timeout = '2s'")

    @hookimpl
    def monmouth_migrations(self):
        return ["CREATE TABLE elsewhere_rows (n BIGINT PRIMARY KEY)"]

    @hookimpl
    def monmouth_block_applied(self, conn, block, notification):
        self.other.execute("INSERT INTO elsewhere_rows VALUES (?)", (-block.number,))


def test_the_journal_adds_its_trigger_outside_the_notifications_transaction(pg_url):
    """The trigger a new journaled table gets is committed before the notification's transaction begins: a
    ``CREATE TRIGGER`` inside it would hold the table's ``SHARE ROW EXCLUSIVE`` lock until the notification commits,
    blocking every other writer of the table meanwhile (and deadlocking with one that holds a lock the plugin then
    waits for). Here another connection writes the table during the first block's hook."""
    plugin = WritesFromElsewhere(pg_url)
    e = make_engine(pg_url, {"elsewhere": plugin})
    e.apply(ChainCommitted(chain(extend(None, 1, number=1, n_txs=1))))
    assert e.conn.execute("SELECT n FROM elsewhere_rows").fetchall() == [(-1,)]
    assert e.conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname = 'monmouth_undo' "
                          "AND tgrelid = 'elsewhere_rows'::regclass").fetchone() == (1,)
    plugin.other.close()
    e.close()


@pytest.mark.parametrize("backend", BOTH)
def test_queued_writes_are_seen_by_the_next_statement_dropped_by_rollback_and_fail_the_transaction(backend, request,
                                                                                                 tmp_path):
    """``execute_later``/``executemany_later``: the next statement of the transaction sees the queued rows (on
    SQLite they ran at once); a ``ROLLBACK`` drops them; one that fails fails the whole transaction, raised from the
    statement that sent it, and nothing of it stays."""
    from monmouth.backends import execute_later, executemany_later
    from monmouth.store import Database

    if backend == "postgres":
        c = PgDatabase(request.getfixturevalue("pg_url"), password=PASSWORD).connect()
        error: type[Exception] = psycopg.errors.UniqueViolation
    else:
        import apsw

        c = Database(tmp_path / "q.sqlite").engine_connection()
        error = apsw.ConstraintError
    c.execute("CREATE TABLE q (n BIGINT PRIMARY KEY, s TEXT)")
    c.execute("BEGIN")
    execute_later(c, "INSERT INTO q VALUES (?, ?)", (1, "a"))
    executemany_later(c, "INSERT INTO q VALUES (?, ?)", [(2, "b"), (3, "c")])
    assert c.execute("SELECT count(*) FROM q").fetchone() == (3,)
    executemany_later(c, "INSERT INTO q VALUES (?, ?)", [(4, "d")])
    c.execute("COMMIT")
    c.execute("BEGIN")
    executemany_later(c, "INSERT INTO q VALUES (?, ?)", [(5, "e")])
    c.execute("ROLLBACK")
    assert c.execute("SELECT n FROM q ORDER BY n").fetchall() == [(1,), (2,), (3,), (4,)]
    c.execute("BEGIN")
    execute_later(c, "INSERT INTO q VALUES (?, ?)", (6, "f"))
    with pytest.raises(error):
        executemany_later(c, "INSERT INTO q VALUES (?, ?)", [(7, "g"), (1, "again")])  # SQLite: raises here
        c.execute("SELECT 1")  # PostgreSQL: the statement that sends them
    if c.in_transaction:  # SQLite keeps the transaction open after a failed statement
        c.execute("ROLLBACK")
    assert not c.in_transaction
    assert c.execute("SELECT n FROM q ORDER BY n").fetchall() == [(1,), (2,), (3,), (4,)]
    c.close()
