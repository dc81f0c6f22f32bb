"""uint256 in plain SQL: the u256 blob and its functions on the engine's real connections, exact through reorgs."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monmouth import hookimpl
from monmouth.errors import PluginError
from monmouth.store import Database
from monmouth.types import ChainCommitted, ChainReorged
from monmouth.uint256 import MAX, UInt256Error, from_u256, to_u256
from tests.chains import chain, extend

EDGES = [0, 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**255 - 1, 2**255, MAX - 1, MAX]


@pytest.fixture(scope="module")
def conn(tmp_path_factory):
    db = Database(tmp_path_factory.mktemp("u256") / "db.sqlite")
    c = db.connect()
    yield c
    c.close()


def one(conn, sql, *args):
    return conn.execute(sql, args).fetchone()[0]


@pytest.mark.parametrize("n", EDGES)
def test_u256_from_int_decimal_hex_and_blob_agree_and_round_trip(conn, n):
    blob = to_u256(n)
    assert len(blob) == 32 and from_u256(blob) == n
    assert one(conn, "SELECT u256(?)", str(n)) == blob
    assert one(conn, "SELECT u256(?)", hex(n)) == blob
    assert one(conn, "SELECT u256(?)", hex(n).upper().replace("0X", "0x")) == blob
    assert one(conn, "SELECT u256(?)", blob) == blob
    assert one(conn, "SELECT u256(?)", n.to_bytes(max(1, (n.bit_length() + 7) // 8), "big")) == blob
    if n < 2**63:
        assert one(conn, "SELECT u256(?)", n) == blob
    assert one(conn, "SELECT u256_text(?)", blob) == str(n)
    assert one(conn, "SELECT u256_hex(?)", blob) == hex(n)


def test_add_and_sub_are_exact_across_2_64_and_2_255(conn):
    assert one(conn, "SELECT u256_text(u256_add(u256(?), u256(1)))", str(2**64 - 1)) == str(2**64)
    assert one(conn, "SELECT u256_text(u256_sub(u256(?), 1))", str(2**64)) == str(2**64 - 1)
    assert one(conn, "SELECT u256_add(?, ?)", to_u256(2**255 - 1), to_u256(2**255)) == to_u256(MAX)
    assert one(conn, "SELECT u256_sub(?, ?)", to_u256(MAX), to_u256(MAX)) == to_u256(0)
    assert one(conn, "SELECT u256_add(NULL, 1)") is None
    assert one(conn, "SELECT u256_text(COALESCE(NULL, u256(0)))") == "0"


@pytest.mark.parametrize(("a", "b"), [(MAX, 1), (2**255, 2**255), (1, MAX)])
def test_overflow_is_refused_naming_the_function(conn, a, b):
    with pytest.raises(UInt256Error, match=r"u256_add: overflow, \d+ \+ \d+ is 2\^256 or more"):
        one(conn, "SELECT u256_add(?, ?)", to_u256(a), to_u256(b))


@pytest.mark.parametrize(("a", "b"), [(0, 1), (2**64, 2**64 + 1), (2**255, MAX)])
def test_underflow_is_refused_naming_the_function(conn, a, b):
    with pytest.raises(UInt256Error, match=rf"u256_sub: underflow, {a} - {b} is negative"):
        one(conn, "SELECT u256_sub(?, ?)", to_u256(a), to_u256(b))


@pytest.mark.parametrize(("sql", "arg", "message"), [
    ("SELECT u256(?)", -1, "u256: -1 is out of the uint256 range"),
    ("SELECT u256(?)", str(2**256), "u256: '1157.*' is out of the uint256 range"),
    ("SELECT u256(?)", "0x1" + "0" * 64, "u256: '0x10+' is not a decimal or 0x-hex uint256"),
    ("SELECT u256(?)", "12abc", "u256: '12abc' is not a decimal or 0x-hex uint256"),
    ("SELECT u256(?)", "-5", "u256: '-5' is not a decimal"),
    ("SELECT u256(?)", 1.5, "u256: expected an INTEGER, decimal or 0x-hex TEXT, or BLOB, got 1.5"),
    ("SELECT u256_text(?)", b"\x01" * 33, "u256_text: a blob of 33 bytes is wider than 32"),
    ("SELECT u256_add(?, 1)", "x", "u256_add: 'x' is not a decimal"),
])
def test_bad_values_are_refused_naming_function_and_value(conn, sql, arg, message):
    with pytest.raises(UInt256Error, match=message):
        one(conn, sql, arg)


def test_python_helpers_refuse_out_of_range():
    with pytest.raises(UInt256Error, match="to_u256: -1 is out of the uint256 range"):
        to_u256(-1)
    with pytest.raises(UInt256Error, match=r"to_u256: \d+ is out of the uint256 range"):
        to_u256(2**256)
    with pytest.raises(UInt256Error, match="from_u256: a blob of 33 bytes"):
        from_u256(b"\x00" * 33)


@settings(max_examples=200, deadline=None)
@given(a=st.integers(0, MAX), b=st.integers(0, MAX))
def test_sql_arithmetic_and_blob_order_match_python(conn, a, b):
    c = conn
    ba, bb = to_u256(a), to_u256(b)
    assert one(c, "SELECT ? < ?", ba, bb) == int(a < b)
    assert one(c, "SELECT ? = ?", ba, bb) == int(a == b)
    if a + b <= MAX:
        assert from_u256(one(c, "SELECT u256_add(?, ?)", ba, bb)) == a + b
    lo, hi = sorted((a, b))
    assert from_u256(one(c, "SELECT u256_sub(?, ?)", to_u256(hi), to_u256(lo))) == hi - lo


def test_order_by_and_max_are_numeric(conn):
    conn.execute("CREATE TEMP TABLE amounts (v BLOB)")
    values = [MAX, 2**64, 5, 2**255, 0, 2**63]
    conn.executemany("INSERT INTO amounts VALUES (u256(?))", [(str(v),) for v in values])
    assert [from_u256(r[0]) for r in conn.execute("SELECT v FROM amounts ORDER BY v")] == sorted(values)
    assert one(conn, "SELECT u256_text(max(v)) FROM amounts") == str(MAX)


# -------------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="module")
def pg(pg_server):
    """An engine connection on a fresh PostgreSQL database (the functions come from sidecar/backends/pg_uint256.py)."""
    from monmouth.backends.postgres import PgDatabase
    from tests.pg import PASSWORD

    c = PgDatabase(pg_server.database(), password=PASSWORD).connect()
    yield c
    c.close()


@pytest.mark.parametrize("n", EDGES)
def test_postgres_u256_agrees_with_sqlite(pg, conn, n):
    blob = to_u256(n)
    for arg in (str(n), hex(n), blob, n.to_bytes(max(1, (n.bit_length() + 7) // 8), "big"), n):
        assert bytes(one(pg, "SELECT u256(?)", arg)) == blob, arg
        if not isinstance(arg, int) or n < 2**63:  # apsw binds no int of 2^63 or more; psycopg does (numeric)
            assert one(conn, "SELECT u256(?)", arg) == blob, arg
    assert one(pg, "SELECT u256_text(?)", blob) == str(n) and one(pg, "SELECT u256_hex(?)", blob) == hex(n)


@settings(max_examples=50, deadline=None)
@given(a=st.integers(0, MAX), b=st.integers(0, MAX))
def test_postgres_arithmetic_and_bytea_order_match_python(pg, a, b):
    ba, bb = to_u256(a), to_u256(b)
    assert one(pg, "SELECT ? < ?", ba, bb) is (a < b)
    if a + b <= MAX:
        assert from_u256(bytes(one(pg, "SELECT u256_add(?, ?)", ba, bb))) == a + b
    lo, hi = sorted((a, b))
    assert from_u256(bytes(one(pg, "SELECT u256_sub(?, ?)", to_u256(hi), to_u256(lo)))) == hi - lo


@pytest.mark.parametrize(("sql", "args", "message"), [
    ("SELECT u256_add(?, ?)", (to_u256(MAX), to_u256(1)), r"u256_add: overflow, \d+ \+ 1 is 2\^256 or more"),
    ("SELECT u256_sub(?, ?)", (to_u256(2**64), to_u256(2**64 + 1)), rf"u256_sub: underflow, {2**64} - {2**64 + 1} "),
    ("SELECT u256(?)", (-1,), "u256: -1 is out of the uint256 range"),
    ("SELECT u256(?)", ("12abc",), "u256: '12abc' is not a decimal or 0x-hex uint256"),
    ("SELECT u256_text(?)", (b"\x01" * 33,), "u256: a blob of 33 bytes is wider than 32"),
])
def test_postgres_bad_values_are_refused_naming_function_and_value(pg, sql, args, message):
    import psycopg

    with pytest.raises(psycopg.DataError, match=message):
        one(pg, sql, *args)


# -------------------------------------------------------------------------------- through the engine


class Wide:
    """Running balances of huge amounts (each transfer moves value * 2^194): sums pass 2^64 and 2^255."""

    @hookimpl
    def monmouth_migrations(self):
        return ["CREATE TABLE wide_balances (account BLOB PRIMARY KEY, balance BLOB NOT NULL) WITHOUT ROWID"]

    @hookimpl
    def monmouth_block_applied(self, conn, block, notification):
        for tx in block.transactions:
            conn.execute("INSERT INTO wide_balances VALUES (?, u256(?)) ON CONFLICT (account) DO UPDATE "
                         "SET balance = u256_add(balance, excluded.balance)", (tx.to, to_u256(tx.value << 194)))


def balances(engine) -> dict[bytes, int]:
    return {a: from_u256(b) for a, b in engine.conn.execute("SELECT account, balance FROM wide_balances")}


def test_u256_columns_are_reverted_exactly_through_a_reorg(engine_factory):
    live = engine_factory("live.sqlite", plugins={"wide": Wide()})
    base = extend(None, 3, number=1, n_txs=4)
    old = extend(base[-1], 3, salt="old", n_txs=4)
    new = extend(base[-1], 2, salt="new", n_txs=4)
    live.apply(ChainCommitted(chain(base + old)))
    assert max(balances(live).values()) > 2**255
    live.apply(ChainReorged(chain(old), chain(new)))
    ref = engine_factory("ref.sqlite", plugins={"wide": Wide()})
    ref.apply(ChainCommitted(chain(base + new)))
    expected: dict[bytes, int] = {}
    for b in base + new:
        for tx in b.transactions:
            assert tx.to is not None
            expected[tx.to] = expected.get(tx.to, 0) + (tx.value << 194)
    assert balances(live) == balances(ref) == expected


def test_underflow_in_a_chain_hook_rolls_the_notification_back(engine_factory):
    class Spend(Wide):
        @hookimpl
        def monmouth_block_applied(self, conn, block, notification):
            conn.execute("INSERT OR IGNORE INTO wide_balances VALUES (x'01', u256(10))")
            conn.execute("UPDATE wide_balances SET balance = u256_sub(balance, ?) WHERE account = x'01'",
                         (block.number * 4,))

    e = engine_factory(plugins={"wide": Spend()})
    bs = extend(None, 3, number=1, n_txs=0)
    e.apply(ChainCommitted(chain(bs[:1])))  # 10 - 4
    with pytest.raises(PluginError) as ei:
        e.apply(ChainCommitted(chain(bs[1:])))  # 6 - 8 underflows at block 2
    assert ei.value.plugin == "wide" and isinstance(ei.value.__cause__, UInt256Error)
    assert "u256_sub: underflow, 6 - 8 is negative" in str(ei.value)
    assert one(e.conn, "SELECT u256_text(balance) FROM wide_balances") == "6"
    assert e.head == bs[0].ref
