"""The uint256 SQL functions of :mod:`sidecar.uint256` on PostgreSQL, so that a plugin's u256 SQL runs unchanged.

A u256 value is the same 32-byte big-endian ``bytea`` on both backends (PostgreSQL compares ``bytea`` bytewise,
as SQLite compares BLOBs, so ``ORDER BY`` and indexes keep numeric order). The functions take the same arguments
and raise the same errors (message prefix ``u256_sub: underflow``, ``u256_add: overflow``, ``u256: ... is not``),
raised as SQLSTATE ``22003`` (numeric value out of range) or ``22P02`` (invalid text):

=====================  ==========================================================================================
``u256(x)``            ``x`` (``bytea`` of at most 32 bytes, a non-negative integer, or decimal or ``0x`` hex
                       ``text``) as a u256 ``bytea``
``u256_add(a, b)``     ``a + b``, refused at 2^256 or more
``u256_sub(a, b)``     ``a - b``, refused when ``b > a``
``u256_text(a)``       decimal ``text``
``u256_hex(a)``        ``0x`` hex ``text`` without leading zeros
=====================  ==========================================================================================

``NULL`` in gives ``NULL`` out (the functions are ``STRICT``). Arithmetic runs in ``numeric`` (exact). One
difference: on SQLite every argument takes any form ``u256(x)`` takes; here ``u256_add``/``u256_sub``/``u256_text``/
``u256_hex`` take u256 ``bytea`` only: write ``u256_sub(balance, u256(?))``, which is portable.
:class:`sidecar.backends.postgres.PgDatabase` creates them with the engine's schema.
"""

from __future__ import annotations

#: ``CREATE OR REPLACE FUNCTION`` statements (idempotent), run under the schema lock at start.
SQL = r"""
CREATE OR REPLACE FUNCTION u256_num(x bytea) RETURNS numeric LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
    n numeric := 0;
BEGIN
    IF length(x) > 32 THEN
        RAISE EXCEPTION 'u256: a blob of % bytes is wider than 32', length(x) USING ERRCODE = '22003';
    END IF;
    FOR i IN 0 .. length(x) - 1 LOOP
        n := n * 256 + get_byte(x, i);
    END LOOP;
    RETURN n;
END $$;
CREATE OR REPLACE FUNCTION u256(n numeric) RETURNS bytea LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
    out bytea := decode(repeat('00', 32), 'hex');
    v numeric := n;
BEGIN
    IF n < 0 OR n >= 2::numeric ^ 256 OR n <> trunc(n) THEN
        RAISE EXCEPTION 'u256: % is out of the uint256 range [0, 2^256 - 1]', n USING ERRCODE = '22003';
    END IF;
    FOR i IN REVERSE 31 .. 0 LOOP
        out := set_byte(out, i, mod(v, 256)::integer);
        v := div(v, 256);
    END LOOP;
    RETURN out;
END $$;
CREATE OR REPLACE FUNCTION u256(x bytea) RETURNS bytea LANGUAGE sql IMMUTABLE STRICT
    RETURN u256(u256_num(x));
CREATE OR REPLACE FUNCTION u256(x text) RETURNS bytea LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
    t text := btrim(x);
BEGIN
    IF lower(left(t, 2)) = '0x' AND length(t) BETWEEN 3 AND 66 AND substr(t, 3) ~ '^[0-9A-Fa-f]+$' THEN
        RETURN u256(decode(CASE WHEN length(t) % 2 = 1 THEN '0' ELSE '' END || substr(t, 3), 'hex'));
    ELSIF t ~ '^[0-9]{1,78}$' THEN
        RETURN u256(t::numeric);
    END IF;
    RAISE EXCEPTION 'u256: % is not a decimal or 0x-hex uint256', quote_literal(x) USING ERRCODE = '22P02';
END $$;
CREATE OR REPLACE FUNCTION u256_add(a bytea, b bytea) RETURNS bytea LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
    s numeric := u256_num(a) + u256_num(b);
BEGIN
    IF s >= 2::numeric ^ 256 THEN
        RAISE EXCEPTION 'u256_add: overflow, % + % is 2^256 or more', u256_num(a), u256_num(b)
            USING ERRCODE = '22003';
    END IF;
    RETURN u256(s);
END $$;
CREATE OR REPLACE FUNCTION u256_sub(a bytea, b bytea) RETURNS bytea LANGUAGE plpgsql IMMUTABLE STRICT AS $$
BEGIN
    IF u256_num(b) > u256_num(a) THEN
        RAISE EXCEPTION 'u256_sub: underflow, % - % is negative', u256_num(a), u256_num(b) USING ERRCODE = '22003';
    END IF;
    RETURN u256(u256_num(a) - u256_num(b));
END $$;
CREATE OR REPLACE FUNCTION u256_text(a bytea) RETURNS text LANGUAGE sql IMMUTABLE STRICT
    RETURN u256_num(a)::text;
CREATE OR REPLACE FUNCTION u256_hex(a bytea) RETURNS text LANGUAGE sql IMMUTABLE STRICT
    RETURN '0x' || coalesce(nullif(ltrim(encode(a, 'hex'), '0'), ''), '0');
"""
