"""The schema objects a plugin's PostgreSQL migrations create (:func:`created_objects`): what ``monmouth reindex``
drops on PostgreSQL (docs/storage.md, "``monmouth reindex`` on PostgreSQL"). Found from the system catalogs
(PostgreSQL documentation, chapter 53 "System Catalogs": ``pg_class``, ``pg_proc``, ``pg_type``, ``pg_ts_config``,
``pg_ts_dict``, ``pg_depend``)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

import psycopg

from ..errors import StorageError
from .postgres import PgDatabase


def _not_member(catalog: str, oid: str) -> str:
    """SQL: the object is not part of an extension (a migration's ``CREATE EXTENSION`` is not the plugin's)."""
    return (f"NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = '{catalog}'::regclass AND e.objid = {oid} "
            "AND e.deptype = 'e')")


#: The objects :func:`created_objects` finds, in the order they are dropped (dependents first), with their kind as
#: ``DROP`` names it. Indexes, triggers, constraints and identity sequences go with their table; an extension's
#: objects are not listed.
_CREATED_OBJECTS = f"""
SELECT kind, ident, name FROM (
    SELECT CASE c.relkind WHEN 'v' THEN 1 WHEN 'm' THEN 2 WHEN 'S' THEN 4 ELSE 3 END AS ord,
           CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'S' THEN 'SEQUENCE'
                ELSE 'TABLE' END AS kind, quote_ident(c.relname) AS ident, c.relname::text AS name
      FROM pg_class c WHERE c.relnamespace = %(ns)s::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
       AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                          AND d.deptype IN ('a', 'i', 'e'))
    UNION ALL
    SELECT 5, CASE p.prokind WHEN 'p' THEN 'PROCEDURE' WHEN 'a' THEN 'AGGREGATE' ELSE 'FUNCTION' END,
           quote_ident(p.proname) || '(' || pg_get_function_identity_arguments(p.oid) || ')', p.proname::text
      FROM pg_proc p WHERE p.pronamespace = %(ns)s::regnamespace AND {_not_member("pg_proc", "p.oid")}
    UNION ALL
    SELECT 6, 'TEXT SEARCH CONFIGURATION', quote_ident(t.cfgname), t.cfgname::text
      FROM pg_ts_config t WHERE t.cfgnamespace = %(ns)s::regnamespace AND {_not_member("pg_ts_config", "t.oid")}
    UNION ALL
    SELECT 7, 'TEXT SEARCH DICTIONARY', quote_ident(t.dictname), t.dictname::text
      FROM pg_ts_dict t WHERE t.dictnamespace = %(ns)s::regnamespace AND {_not_member("pg_ts_dict", "t.oid")}
    UNION ALL
    SELECT 8, CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END, quote_ident(t.typname), t.typname::text
      FROM pg_type t WHERE t.typnamespace = %(ns)s::regnamespace AND {_not_member("pg_type", "t.oid")}
       AND (t.typtype IN ('e', 'd', 'r')
            OR (t.typtype = 'c' AND (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c'))
) o ORDER BY ord, name
"""


def created_objects(db: PgDatabase, scripts: Sequence[str]) -> list[tuple[str, str, str]]:
    """The schema objects ``scripts`` (a plugin's PostgreSQL migrations) create, as ``(kind, identifier, name)``
    in the order to drop them: ``kind`` as ``DROP`` spells it (``TABLE``, ``VIEW``, ``FUNCTION``, ``TEXT SEARCH
    DICTIONARY``...), ``identifier`` quoted (a function's with its argument types). Found by running the scripts
    in a scratch schema put first on the ``search_path``, in a transaction that is rolled back: nothing is
    written (the PostgreSQL counterpart of running SQLite migrations on an empty in-memory database).

    Raises:
        StorageError: a script fails there (the message names the script's number and the server's reason).
    """
    scratch = f"monmouth_reindex_{os.getpid()}"
    with contextlib.closing(db.connect()) as conn:
        conn.execute("BEGIN")
        try:
            conn.execute(f'CREATE SCHEMA "{scratch}"')
            conn.execute("SELECT set_config('search_path', ? || ', ' || current_setting('search_path'), true)",
                         (f'"{scratch}"',))
            for i, script in enumerate(scripts, start=1):
                try:
                    conn.execute(script)
                except psycopg.Error as e:
                    raise StorageError(f"migration {i} fails in a scratch schema of {db.describe()}: "
                                       f"{e.diag.message_primary or e}") from None
            with conn.raw.cursor() as cur:
                cur.execute(_CREATED_OBJECTS, {"ns": scratch})
                return [(str(k), str(i), str(n)) for k, i, n in cur.fetchall()]
        finally:
            conn.execute("ROLLBACK")
