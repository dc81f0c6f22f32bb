"""One statement for many rows: how :meth:`sidecar.backends.postgres.PgConnection.executemany` runs a plugin's
plain ``INSERT ... VALUES`` of many rows on PostgreSQL.

A portable ``executemany("INSERT INTO t (a, b) VALUES (?, ?)", rows)`` is one statement per row on PostgreSQL
(psycopg pipelines them, but the server still parses, plans and runs each): ~30 us a row against ~10 on SQLite. Run
instead as ``INSERT INTO t (a, b) SELECT u.c0, u.c1 FROM unnest(%b::type[], %b::type[]) AS u(c0, c1)``, with one
binary array per parameter, the same rows go in, in the same order, each through the table's row triggers (the undo
journal's included) and constraints; 200 inserts take 1.7 ms instead of 5.6 (docs/storage.md, "Ingest speed").

Invariants:

* Only what means the same either way is rewritten (:data:`PLAIN_INSERT`): ``INSERT INTO table (columns) VALUES
  (items)`` where each item is ``?`` or a literal, optionally ``ON CONFLICT [(...)] DO NOTHING`` or ``ON CONFLICT
  (keys) DO UPDATE SET ...`` whose keys are all parameters and are not assigned. Anything else (expressions,
  sub-queries, ``RETURNING``, quoted or qualified names, array columns, rows whose Python values do not form one
  typed array per column) runs row by row, unchanged.
* Arrays are cast to the target columns' own types (read from the catalog), so each value converts as in the
  row-by-row ``INSERT``.
* One statement cannot update a row twice, so with ``DO UPDATE`` the rows are cut, in order, into runs of distinct
  keys, one statement each (:func:`chunks`). Several runs go to the server as one call of a temporary PL/pgSQL
  function made for the statement (:attr:`Batch.function`): one set of arrays and one ``Bind``/``Execute``
  instead of one per run, and the function runs the same ``INSERT`` once per run, in order, each a statement of
  its own (own snapshot, own statement-level triggers, own checks), as the pipelined statements did. A block of
  mainnet-shaped transfers upserting running balances is ~63 runs of 200 rows (docs/storage.md, "Ingest speed").
* What differs is only the count of statements the client sends: a statement-level trigger fires once per
  statement the server runs (the same count); inside the function ``statement_timestamp()`` is the call's, and
  ``statement_timeout`` counts the call as one statement.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

#: ``INSERT INTO table (columns) VALUES (values) [ON CONFLICT [(...)] DO NOTHING | ON CONFLICT (keys) DO UPDATE SET
#: ...]``, nothing else (no expressions or sub-queries in VALUES, no RETURNING, no ``?`` after VALUES).
PLAIN_INSERT = re.compile(
    r"\s*INSERT\s+INTO\s+([A-Za-z_][A-Za-z0-9_]*)\s*\(([^()]*)\)\s*VALUES\s*\(([^()]*)\)\s*"
    r"(ON\s+CONFLICT\s*(?:\([A-Za-z0-9_,\s]*\))?\s*DO\s+NOTHING"
    r"|ON\s+CONFLICT\s*\(([A-Za-z0-9_,\s]*)\)\s*DO\s+UPDATE\s+SET\s+([^?;]*?))?\s*;?\s*",
    re.IGNORECASE | re.DOTALL)
#: What a ``VALUES`` item of a batched ``INSERT`` may be besides ``?``: a literal that means the same in every row.
_LITERAL = re.compile(r"NULL|TRUE|FALSE|-?[0-9]+(\.[0-9]+)?", re.IGNORECASE)
#: Python types whose lists psycopg dumps as one typed array (``bool`` before ``int``: it is a subclass).
_ARRAY_TYPES = (bool, int, float, str, bytes, Decimal)
#: The dollar-quote of :attr:`Batch.function`'s body (a statement holding it is not made a function).
_TAG = "$monmouth_batch$"


@dataclass(frozen=True, slots=True)
class Batch:
    """How :meth:`PgConnection.executemany` runs a plain ``INSERT`` as one statement per chunk of rows: ``sql`` takes
    one array per parameter (``width`` of them); ``keys`` are the parameters of ``ON CONFLICT (keys) DO UPDATE``
    (rows with equal keys go to separate statements, in order: one statement cannot update a row twice), or
    ``None``."""

    sql: bytes
    width: int
    keys: tuple[int, ...] | None
    #: ``CREATE OR REPLACE FUNCTION pg_temp.<name>(bounds integer[], one array per parameter)`` running ``sql`` on
    #: each run ``bounds[i] .. bounds[i + 1] - 1`` (1-based) of the arrays in order, or ``b""`` (no ``keys``).
    function: bytes = b""
    #: ``SELECT pg_temp.<name>(%b, ...)``: the call of :attr:`function` (bounds first, then the arrays).
    call: bytes = b""


def batch_statement(conn: Any, statements: str) -> Batch | None:
    """The one-statement form of a plain ``INSERT ... VALUES`` (:data:`PLAIN_INSERT`), or ``None``: another
    statement, a ``VALUES`` item other than ``?`` or a literal, an unknown table or column, a ``?`` for an array
    column (``unnest`` would flatten it), or a ``DO UPDATE`` whose keys are not all parameters or that may assign a
    key column (then a later row of the statement could meet the row it moved)."""
    m = PLAIN_INSERT.fullmatch(statements)
    if m is None:
        return None
    table, names, items = m.group(1), [c.strip() for c in m.group(2).split(",")], [v.strip() for v in
                                                                                    m.group(3).split(",")]
    if len(names) != len(items) or not all(n.isidentifier() for n in names):
        return None
    if not all(v == "?" or _LITERAL.fullmatch(v) for v in items):
        return None
    params = [n.lower() for n, v in zip(names, items, strict=True) if v == "?"]
    keys: tuple[int, ...] | None = None
    if m.group(5) is not None:
        key_names = [k.strip().lower() for k in m.group(5).split(",")]
        assignments = m.group(6)
        if not all(k in params for k in key_names) or assignments.lstrip().startswith("(") or any(
                re.search(rf"(?<![.\w]){k}\s*=(?!=)", assignments, re.IGNORECASE) for k in key_names):
            return None
        keys = tuple(params.index(k) for k in key_names)
    types = dict(conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a WHERE a.attrelid = to_regclass(?) "
        "AND a.attnum > 0 AND NOT a.attisdropped AND a.attndims = 0 AND (SELECT t.typcategory <> 'A' FROM pg_type t "
        "WHERE t.oid = a.atttypid)", (table,)).fetchall())
    if not params or any(n not in types for n in params):
        return None
    aliases = iter(f"c{i}" for i in range(len(params)))
    select = ", ".join(f"u.{next(aliases)}" if v == "?" else v for v in items)

    def insert(arrays: str) -> str:
        return (f"INSERT INTO {table} ({', '.join(names)}) SELECT {select} FROM unnest({arrays}) "
                f"AS u({', '.join(f'c{i}' for i in range(len(params)))}) {m.group(4) or ''}")

    sql = insert(", ".join(f"%b::{types[n]}[]" for n in params))  # binary: psycopg dumps those lists in C
    if keys is None or _TAG in statements:
        return Batch(sql.encode(), len(params), keys)
    name = "monmouth_batch_" + hashlib.sha256(sql.encode()).hexdigest()[:20]
    run = "monmouth_bounds[monmouth_i]:monmouth_bounds[monmouth_i + 1] - 1"
    body = insert(", ".join(f"monmouth_a{i}[{run}]::{types[n]}[]" for i, n in enumerate(params)))
    args = ", ".join(f"monmouth_a{i} {types[n]}[]" for i, n in enumerate(params))
    # use_column: a column named like a variable here means the column, as in the statement sent on its own.
    function = (f"CREATE OR REPLACE FUNCTION pg_temp.{name}(monmouth_bounds integer[], {args}) RETURNS void "
                f"LANGUAGE plpgsql AS {_TAG}\n#variable_conflict use_column\nBEGIN\n"
                f"FOR monmouth_i IN 1 .. cardinality(monmouth_bounds) - 1 LOOP\n{body};\nEND LOOP;\nEND {_TAG}")
    call = f"SELECT pg_temp.{name}(%b::integer[], {', '.join(f'%b::{types[n]}[]' for n in params)})"
    return Batch(sql.encode(), len(params), keys, function.encode(), call.encode())


def chunks(rows: list[Any], keys: tuple[int, ...] | None) -> list[list[Any]]:
    """``rows`` cut, in order, so that no chunk holds two rows with equal ``keys`` (parameter positions); a key
    value other than ``bytes``, ``int`` or ``None`` (whose equality in Python might not be the column's) makes every
    row its own chunk."""
    if keys is None:
        return [rows]
    out: list[list[Any]] = [[]]
    seen: set[tuple[Any, ...]] = set()
    for row in rows:
        key = tuple(row[k] for k in keys)
        if not all(v is None or type(v) in (bytes, int) for v in key):
            return [[r] for r in rows]
        if key in seen:
            out.append([])
            seen.clear()
        seen.add(key)
        out[-1].append(row)
    return out


def _one_array_type(values: list[Any]) -> bool:
    """Whether psycopg dumps ``values`` as one array of one element type (NULLs allowed, at least one value)."""
    kinds = {type(v) for v in values if v is not None}
    return len(kinds) == 1 and next(iter(kinds)) in _ARRAY_TYPES


def plan(batch: Batch | None, rows: list[Any]) -> list[tuple[bytes, list[list[Any]]]] | None:
    """``[(INSERT ... SELECT ... FROM unnest(...), one list per parameter)]`` running ``batch``'s statement on
    ``rows`` in order, or ``None`` when they must run row by row (no ``batch``, rows of another width, a column
    whose values are not one array type)."""
    if batch is None or not all(isinstance(r, tuple | list) and len(r) == batch.width for r in rows):
        return None
    out = []
    for chunk in chunks(rows, batch.keys):
        columns = [list(c) for c in zip(*chunk, strict=True)]
        if not all(_one_array_type(c) for c in columns):
            return None
        out.append((batch.sql, columns))
    return out


def runs_call(batch: Batch, planned: list[tuple[bytes, list[list[Any]]]]) -> tuple[bytes, list[list[Any]]] | None:
    """``(SELECT pg_temp.<function>(...), [bounds, one list per parameter])``: the runs of ``planned`` (from
    :func:`plan`, several) as one call of :attr:`Batch.function`, or ``None`` when ``batch`` has none."""
    if not batch.function:
        return None
    bounds = [1]
    columns: list[list[Any]] = [[] for _ in range(batch.width)]
    for _, chunk in planned:
        bounds.append(bounds[-1] + len(chunk[0]))
        for whole, part in zip(columns, chunk, strict=True):
            whole.extend(part)
    if not all(_one_array_type(c) for c in columns):  # one run's ints and another's floats: two array types
        return None
    return batch.call, [bounds, *columns]
