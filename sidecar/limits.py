"""What a request may carry: bounded bodies, bounded and well-formed JSON, one credential. Checked before anything
parses or authenticates the request.

Invariants (every route, ``/mcp`` included, whatever the ``Content-Type``):

* A body is at most ``http.max_body_bytes`` bytes: **413** (by ``Content-Length``, or counted while streaming).
* A body is scanned as it streams in, *before* any JSON parser sees a byte of it, and refused with **400**
  (``field`` ``body``, the detail naming the limit) when it nests arrays/objects deeper than
  ``http.max_json_depth`` (brackets inside strings do not count), or when it is not UTF-8 (RFC 8259, section
  8.1; the parser's own error would not say so). A C parser recursing on ``[[[[...`` can overflow the thread's
  stack and kill the process: py_ecc, imported by eth-account, raises ``sys.setrecursionlimit`` to 100,000, so the
  parser's own recursion guard never fires. The application only ever sees chunks that passed the scan; when a
  later chunk fails, its answer is replaced by the refusal.
* What the values may be (valid Unicode without lone surrogates, finite numbers, bounded nesting of stored
  metadata) is checked by the validation layer, which names the field: :data:`Text`, :data:`JsonObject`,
  :func:`check_json_value`, and ``allow_inf_nan=False`` on request models.
* A request carries at most one ``Authorization`` header: **400** before authentication and before the rate
  limiter, which then key on the same credential (:func:`authorization`).

:func:`check_json_value` and :func:`check_text` serve values that reach a plugin some other way (MCP tools, the
CLI) the same way.
"""

from __future__ import annotations

import codecs
import math
import re
from collections.abc import Callable
from typing import Annotated, Any

import numpy as np
from pydantic import AfterValidator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import MonmouthError
from .problems import problem

#: Nesting allowed inside one stored JSON value (memory metadata, RAG document meta), levels.
MAX_VALUE_DEPTH = 32

#: Complete strings, possessive (no backtracking): ``"`` then runs of plain bytes and two-byte escapes, ``"``.
_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"', re.S)
#: From the start: as many (bytes outside strings, complete string) pairs as there are; anchored, linear.
_COMPLETE = re.compile(rb'(?:[^"]*+"[^"\\]*+(?:\\.[^"\\]*+)*+")*+', re.S)
#: From inside a string: the rest of it, through its closing quote.
_REST = re.compile(rb'[^"\\]*+(?:\\.[^"\\]*+)*+"', re.S)
#: Brackets to +1 (``[{``) / -1 (``]}``) as int8, everything else deleted.
_STEP = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_BRACKET = bytes(sorted(set(range(256)) - set(b"[]{}")))


class BodyRefused(MonmouthError, ValueError):
    """A body that breaks a rule of :class:`JsonScanner`; ``offset`` is the byte at fault (or the chunk's end)."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"{message} (at or before byte {offset})")
        self.offset = offset


class JsonScanner:
    """A streaming check of a JSON text's bytes (see the module docstring): nesting depth outside strings, and
    UTF-8. Feed chunks with :meth:`feed`, then call :meth:`close`. Anything else (syntax, values) is left to the
    parser and the validation that run afterwards: the scan only makes sure that parser is safe to run.

    Cost: linear, at C speed (regular expressions with possessive quantifiers strip the strings; numpy sums the
    brackets), about 30 ms per MB whatever the content.

    Raises (from :meth:`feed` and :meth:`close`):
        BodyRefused: the first rule broken, with the offset of the chunk where it was found.
    """

    def __init__(self, max_depth: int) -> None:
        self.max_depth = max_depth
        self.depth = 0
        self.in_string = False
        self._escaped = False  # the previous chunk ended inside a string on a backslash: skip one byte
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._seen = 0

    def feed(self, chunk: bytes, final: bool = False) -> None:
        try:
            self._utf8.decode(chunk, final)
        except UnicodeDecodeError as e:
            raise BodyRefused("body: not UTF-8 text", self._seen + e.start) from None
        self._seen += len(chunk)
        i = 0
        if self._escaped and chunk:
            i, self._escaped = 1, False
        if self.in_string:
            m = _REST.match(chunk, i)
            if m is None:  # the string goes on past this chunk
                self._escaped = _odd_backslashes(chunk, i)
                return
            i, self.in_string = m.end(), False
        end = _COMPLETE.match(chunk, i).end()  # type: ignore[union-attr]  # matches the empty string at worst
        outside = _STRING.sub(b"", chunk[i:end])
        q = chunk.find(b'"', end)
        outside += chunk[end:] if q < 0 else chunk[end:q]
        self._count(outside)
        if q >= 0:
            self.in_string = True
            self._escaped = _odd_backslashes(chunk, q + 1)

    def _count(self, outside: bytes) -> None:
        steps = outside.translate(_STEP, _NOT_BRACKET)
        if not steps:
            return
        depth = np.cumsum(np.frombuffer(steps, dtype=np.int8), dtype=np.int64) + self.depth
        if int(depth.max()) > self.max_depth:
            raise BodyRefused(f"body: JSON nested deeper than {self.max_depth} levels (http.max_json_depth)",
                              self._seen)
        if int(depth.min()) < 0:
            raise BodyRefused("body: a closing bracket without its opening one", self._seen)
        self.depth = int(depth[-1])

    def close(self) -> None:
        """End of the body (checks for a truncated UTF-8 character)."""
        self.feed(b"", final=True)


def _odd_backslashes(data: bytes, start: int) -> bool:
    """Whether ``data[start:]`` (inside a string, ``start`` not within an escape) ends on an unfinished escape."""
    tail = data[start:]
    return (len(tail) - len(tail.rstrip(b"\\"))) % 2 == 1


def authorization(scope: Scope) -> bytes | None:
    """The request's one ``Authorization`` header value (``None`` when absent). :class:`RequestLimitMiddleware`
    has refused requests with several, so authentication and the rate limiter read the same credential."""
    return next((v for k, v in scope.get("headers", []) if k == b"authorization"), None)


class RequestLimitMiddleware:
    """The checks of the module docstring, as ASGI middleware. ``limits()`` returns ``(max_body_bytes,
    max_json_depth)`` and is read per request, so a hot reload applies at once."""

    def __init__(self, app: ASGIApp, limits: Callable[[], tuple[int, int]]) -> None:
        self.app = app
        self.limits = limits
        self.refused = 0  # bodies and headers refused (for tests and /status)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, depth = self.limits()
        auths = sum(1 for k, _ in scope.get("headers", []) if k == b"authorization")
        if auths > 1:
            self.refused += 1
            await problem(400, f"authorization: send one Authorization header, not {auths}",
                          field="authorization")(scope, receive, send)
            return
        too_big = problem(413, f"body: larger than {limit} bytes (http.max_body_bytes)", field="body")
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    big = int(v) > limit
                except ValueError:
                    await problem(400, "content-length: not a number", field="content-length")(scope, receive, send)
                    return
                if big:
                    self.refused += 1
                    await too_big(scope, receive, send)
                    return
        scanner = JsonScanner(depth)
        seen = 0
        refusal: Any = None

        async def checked() -> Message:
            nonlocal seen, refusal
            if refusal is not None:  # the app reads on (a streaming response waits for this): the exchange is over
                return {"type": "http.disconnect"}
            msg = await receive()
            if msg["type"] != "http.request":
                return msg
            body = msg.get("body", b"")
            seen += len(body)
            if seen > limit:
                refusal = too_big
            else:
                try:
                    scanner.feed(body)
                    if not msg.get("more_body", False):
                        scanner.close()
                except BodyRefused as e:
                    refusal = problem(400, str(e), field="body", offset=e.offset)
            if refusal is not None:  # the app never sees this chunk: its body ends here, its answer is replaced
                self.refused += 1
                return {"type": "http.request", "body": b"", "more_body": False}
            return msg

        async def tracked(msg: Message) -> None:
            if refusal is None:
                await send(msg)

        try:
            await self.app(scope, checked, tracked)
        except Exception:
            if refusal is None:
                raise
        if refusal is not None:
            await refusal(scope, receive, send)


# ---------------------------------------------------------------------------------------------------------------------
# Parsed values


def check_text(value: str, field: str) -> str:
    """``value`` unless it holds a lone surrogate (not encodable as UTF-8).

    Raises:
        ValueError: naming ``field``.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        msg = (f"a lone UTF-16 surrogate (U+{ord(value[e.start]):04X}) at character {e.start}; text must be valid "
               "Unicode")
        raise ValueError(f"{field}: {msg}" if field else msg) from None
    return value


def check_json_value(value: Any, field: str, max_depth: int = MAX_VALUE_DEPTH) -> Any:
    """``value`` unless it is not plain, finite JSON: strings (keys included) valid Unicode, numbers finite,
    nesting at most ``max_depth`` levels, only ``dict`` (string keys), ``list``, ``str``, ``int``, ``float``,
    ``bool`` and ``None``.

    Raises:
        ValueError: naming the dotted path of the first offending member (``metadata.a.0.b``).
    """
    stack: list[tuple[Any, str, int]] = [(value, field, 1)]
    while stack:
        v, path, level = stack.pop()
        if isinstance(v, str):
            check_text(v, path)
        elif isinstance(v, bool) or v is None or isinstance(v, int):
            continue
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise ValueError(_at(path, f"{v!r} is not a finite number (JSON has no NaN or Infinity)"))
        elif isinstance(v, dict | list):
            if level > max_depth:
                raise ValueError(_at(path, f"nested deeper than {max_depth} levels"))
            items = v.items() if isinstance(v, dict) else enumerate(v)
            for k, x in items:
                if isinstance(v, dict):
                    if not isinstance(k, str):
                        raise ValueError(_at(path, "keys must be strings"))
                    check_text(k, f"{path} key" if path else "key")
                stack.append((x, f"{path}.{k}" if path else str(k), level + 1))
        else:
            raise ValueError(_at(path, f"{type(v).__name__} is not a JSON value"))
    return value


def _at(path: str, msg: str) -> str:
    return f"{path}: {msg}" if path else msg


def _text(v: str) -> str:
    return check_text(v, "")


def _object(v: dict[str, Any]) -> dict[str, Any]:
    return check_json_value(v, "")  # type: ignore[no-any-return]


#: ``str`` that refuses lone surrogates (pydantic; the error's ``loc`` names the field).
Text = Annotated[str, AfterValidator(_text)]
#: A JSON object of finite numbers and valid text, nested at most :data:`MAX_VALUE_DEPTH` levels (pydantic).
JsonObject = Annotated[dict[str, Any], AfterValidator(_object)]
