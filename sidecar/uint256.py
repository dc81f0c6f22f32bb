"""uint256 in plain SQL: a fixed-width 32-byte big-endian BLOB and the SQL functions that work on it.

SQLite integers are signed 64-bit: apsw refuses to bind a Python ``int`` of 2^63 or more
(``OverflowError``), and ``x + ?`` past 2^63 - 1 silently becomes a REAL. Wei and token amounts are uint256
(Solidity ``uint256``, a 32-byte ABI word), so plugins store them as a **u256 blob**: exactly 32 bytes,
big-endian, unsigned. Two u256 blobs compare (``<``, ``=``, ``ORDER BY``, ``MAX()``, indexes) in numeric
order, because SQLite compares BLOBs with ``memcmp`` and equal-width big-endian bytes sort like the numbers they
encode. A u256 blob is an ordinary column value, so the reorg journal records and reverts it exactly like any
other.

Every connection the engine opens (:meth:`sidecar.store.Database.connect`) has these deterministic SQL
functions (usable in chain hooks, HTTP handlers, indexes and ``CHECK`` constraints):

=====================  ==========================================================================================
``u256(x)``            ``x`` as a u256 blob. ``x``: a non-negative INTEGER; TEXT in decimal (``'1000'``) or
                       ``0x`` hex (``'0x3e8'``, at most 64 digits); or a BLOB of at most 32 bytes, read as
                       big-endian (a 32-byte ABI word, e.g. ERC-20 ``Transfer`` log data, passes unchanged).
``u256_add(a, b)``     ``a + b``; refused when the sum is 2^256 or more.
``u256_sub(a, b)``     ``a - b``; refused when ``b > a`` (uint256 has no negative values).
``u256_text(a)``       ``a`` in decimal TEXT, for display and JSON (``'115792...639935'``).
``u256_hex(a)``        ``a`` as ``0x`` hex TEXT without leading zeros (``'0x0'`` for zero).
=====================  ==========================================================================================

The arguments of ``u256_add``/``u256_sub``/``u256_text``/``u256_hex`` accept the same forms as ``u256(x)``.
``NULL`` in gives ``NULL`` out (as SQL's own arithmetic does); use ``COALESCE(col, u256(0))`` for "missing is
zero". A value that is not a valid uint256 (negative, too wide, not a number, REAL) raises
:class:`UInt256Error` from the statement, its message naming the SQL function and the value, and, inside a chain
hook, rolls the whole notification back like any other plugin error.

Example (running balances; ``log.data`` of an ERC-20 ``Transfer`` is already a 32-byte word)::

    conn.execute("INSERT INTO t_balances (holder, balance) VALUES (?, u256(?)) "
                 "ON CONFLICT (holder) DO UPDATE SET balance = u256_add(balance, excluded.balance)",
                 (to, log.data))

From Python, :func:`to_u256` / :func:`from_u256` convert between ``int`` and the blob.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import MonmouthError

if TYPE_CHECKING:
    import apsw

#: Width of a u256 blob, in bytes.
WIDTH = 32
#: The largest uint256, 2^256 - 1.
MAX = (1 << 256) - 1

SqlValue = int | float | str | bytes | None


class UInt256Error(MonmouthError, ValueError):
    """A value is not a valid uint256, or the result of ``u256_add``/``u256_sub`` is out of range
    (overflow at 2^256, or negative). The message names the SQL function and the operands."""


def to_u256(value: int) -> bytes:
    """``value`` as a 32-byte big-endian blob.

    Raises:
        UInt256Error: ``value`` is negative or 2^256 or more.
    """
    if not 0 <= value <= MAX:
        raise UInt256Error(f"to_u256: {value} is out of the uint256 range [0, 2^256 - 1]")
    return value.to_bytes(WIDTH, "big")


def from_u256(blob: bytes) -> int:
    """The ``int`` a big-endian blob of at most 32 bytes encodes.

    Raises:
        UInt256Error: ``blob`` is longer than 32 bytes.
    """
    if len(blob) > WIDTH:
        raise UInt256Error(f"from_u256: a blob of {len(blob)} bytes is wider than 32")
    return int.from_bytes(blob, "big")


def _short(value: object) -> str:
    text = f"x'{value.hex()}'" if isinstance(value, bytes) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _parse(fn: str, value: SqlValue) -> int:
    """An SQL argument as an int in [0, 2^256 - 1]; raises UInt256Error naming ``fn``."""
    if isinstance(value, bytes):
        if len(value) > WIDTH:
            raise UInt256Error(f"{fn}: a blob of {len(value)} bytes is wider than 32 ({_short(value)})")
        return int.from_bytes(value, "big")
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise UInt256Error(f"{fn}: expected an INTEGER, decimal or 0x-hex TEXT, or BLOB, got {_short(value)}")
    n: int
    if isinstance(value, int):
        n = value
    else:
        text = value.strip()
        try:
            if text[:2].lower() == "0x":
                if len(text) > 2 + 2 * WIDTH:
                    raise ValueError
                n = int(text[2:], 16)
            elif text.isascii() and text.isdigit() and len(text) <= 78:
                n = int(text)
            else:
                raise ValueError
        except ValueError:
            raise UInt256Error(f"{fn}: {_short(value)} is not a decimal or 0x-hex uint256") from None
    if not 0 <= n <= MAX:
        raise UInt256Error(f"{fn}: {_short(value)} is out of the uint256 range [0, 2^256 - 1]")
    return n


def sql_u256(x: SqlValue) -> bytes | None:
    return None if x is None else _parse("u256", x).to_bytes(WIDTH, "big")


def sql_add(a: SqlValue, b: SqlValue) -> bytes | None:
    if a is None or b is None:
        return None
    x, y = _parse("u256_add", a), _parse("u256_add", b)
    if x + y > MAX:
        raise UInt256Error(f"u256_add: overflow, {x} + {y} is 2^256 or more")
    return (x + y).to_bytes(WIDTH, "big")


def sql_sub(a: SqlValue, b: SqlValue) -> bytes | None:
    if a is None or b is None:
        return None
    x, y = _parse("u256_sub", a), _parse("u256_sub", b)
    if y > x:
        raise UInt256Error(f"u256_sub: underflow, {x} - {y} is negative")
    return (x - y).to_bytes(WIDTH, "big")


def sql_text(a: SqlValue) -> str | None:
    return None if a is None else str(_parse("u256_text", a))


def sql_hex(a: SqlValue) -> str | None:
    return None if a is None else hex(_parse("u256_hex", a))


def register(conn: apsw.Connection) -> None:
    """Register ``u256``, ``u256_add``, ``u256_sub``, ``u256_text`` and ``u256_hex`` on ``conn``
    (deterministic, so they may appear in indexes and ``CHECK`` constraints)."""
    functions: tuple[tuple[str, Callable[..., Any], int], ...] = (
        ("u256", sql_u256, 1), ("u256_add", sql_add, 2), ("u256_sub", sql_sub, 2), ("u256_text", sql_text, 1),
        ("u256_hex", sql_hex, 1))
    for name, fn, nargs in functions:
        conn.create_scalar_function(name, fn, nargs, deterministic=True)
