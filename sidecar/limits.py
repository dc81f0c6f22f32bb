"""What a request may carry: bounded bodies, bounded and well-formed JSON, one credential. Checked before anything
parses or authenticates the request.

Invariants (every route, ``/mcp`` included, whatever the ``Content-Type``):

* A body is at most ``http.max_body_bytes`` bytes: **413** (by ``Content-Length``, or counted while streaming).
* A body is scanned as it streams in, *before* any JSON parser sees a byte of it, and refused with **400**
  (``field`` ``body``, the detail naming the limit or the rule and the byte offset) when it

  - nests arrays/objects deeper than ``http.max_json_depth`` (a C parser recursing on ``[[[[...`` can overflow
    the thread's stack and kill the process: py_ecc, imported by eth-account, raises ``sys.setrecursionlimit``
    to 100,000, so the parser's own recursion guard never fires);
  - is not UTF-8 (RFC 8259, section 8.1);
  - holds a lone UTF-16 surrogate escape (``"\\ud800"``), which no UTF-8 text can hold (RFC 8259, section 8.2);
  - holds ``NaN``, ``Infinity`` or ``-Infinity``, which Python's ``json`` accepts but JSON does not (RFC 8259,
    section 6).

  The application only ever sees chunks that passed the scan; when a later chunk fails, its answer is replaced by
  the refusal.
* A request carries at most one ``Authorization`` header: **400** before authentication and before the rate
  limiter, which then key on the same credential (:func:`authorization`).

For values that reach a handler some other way (MCP tools, the CLI) or that must be stricter than the body as a
whole (stored metadata), :func:`check_json_value` and the pydantic types :data:`Text` and :data:`JsonObject` apply
the same rules to parsed values, naming the field.
"""

from __future__ import annotations

import codecs
import math
import re
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import AfterValidator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .problems import problem

#: Nesting allowed inside one stored JSON value (memory metadata, RAG document meta), levels.
MAX_VALUE_DEPTH = 32

_INSIDE = re.compile(rb'["\\]')
_HEX4 = re.compile(rb"[0-9a-fA-F]{4}")


class BodyRefused(ValueError):
    """A body that breaks a rule of :class:`JsonScanner`; ``offset`` is the byte at fault."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"{message} (at byte {offset})")
        self.offset = offset


class JsonScanner:
    """A streaming check of a JSON text's bytes (see the module docstring): nesting depth, UTF-8, lone surrogate
    escapes, NaN/Infinity. Feed chunks with :meth:`feed`, then call :meth:`close`. Anything else (syntax) is left to
    the parser that runs afterwards: the scan only makes sure that parser is safe to run and that what it returns
    is valid text. Cost: one regex search per bracket, quote or escape.

    Raises (from :meth:`feed` and :meth:`close`):
        BodyRefused: the first rule broken, with its byte offset.
    """

    def __init__(self, max_depth: int) -> None:
        self.max_depth = max_depth
        self.depth = 0
        self.in_string = False
        self._tail = b""  # an escape split across chunks, carried to the next one
        self._base = 0  # offset of the first byte of the current buffer (tail included)
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._seen = 0

    def feed(self, chunk: bytes, final: bool = False) -> None:
        try:
            self._utf8.decode(chunk, final)
        except UnicodeDecodeError as e:
            raise BodyRefused("body: not UTF-8 text", self._seen + e.start) from None
        self._seen += len(chunk)
        data = self._tail + chunk
        self._tail = b""
        i, n = 0, len(data)
        while i < n:
            if self.in_string:
                m = _INSIDE.search(data, i)
                if m is None:
                    break
                j = m.start()
                if data[j] == 0x22:  # closing quote
                    self.in_string = False
                    i = j + 1
                    continue
                step = self._escape(data, j, final)
                if step == 0:  # the escape continues in the next chunk
                    self._tail = data[j:]
                    break
                i = j + step
                continue
            j = data.find(b'"', i)
            seg_end = n if j < 0 else j
            self._outside(data, i, seg_end)
            if j < 0:
                break
            self.in_string = True
            i = j + 1
        self._base += n - len(self._tail)

    def _outside(self, data: bytes, i: int, j: int) -> None:
        """Check ``data[i:j]``, which lies outside strings: counted at C speed, walked only near a limit."""
        seg = data[i:j]
        opens, closes = seg.count(b"[") + seg.count(b"{"), seg.count(b"]") + seg.count(b"}")
        if b"N" in seg or b"I" in seg:
            at = min(k for k in (seg.find(b"N"), seg.find(b"I")) if k >= 0)
            raise BodyRefused("body: NaN and Infinity are not JSON numbers (RFC 8259)", self._base + i + at)
        if closes <= self.depth and self.depth + opens <= self.max_depth:
            self.depth += opens - closes
            return
        for k, c in enumerate(seg):
            if c in b"[{":
                self.depth += 1
                if self.depth > self.max_depth:
                    raise BodyRefused(f"body: JSON nested deeper than {self.max_depth} levels (http.max_json_depth)",
                                      self._base + i + k)
            elif c in b"]}":
                if self.depth == 0:
                    raise BodyRefused(f"body: unbalanced {chr(c)!r}", self._base + i + k)
                self.depth -= 1

    def _escape(self, data: bytes, j: int, final: bool) -> int:
        """Bytes taken by the escape at ``data[j]`` (a backslash inside a string); 0 when it needs the next chunk."""
        n = len(data)
        if j + 1 >= n:
            return 0 if not final else 1
        if data[j + 1] != 0x75:  # not \u: a two-byte escape (the parser judges which)
            return 2
        if j + 6 > n:
            return 0 if not final else n - j
        if not _HEX4.fullmatch(data, j + 2, j + 6):
            return 2
        v = int(data[j + 2:j + 6], 16)
        if 0xDC00 <= v <= 0xDFFF:
            raise BodyRefused("body: a lone UTF-16 surrogate escape in a string (RFC 8259, 8.2)", self._base + j)
        if not 0xD800 <= v <= 0xDBFF:
            return 6
        if j + 12 > n and not final:
            return 0
        if (data[j + 6:j + 8] == b"\\u" and _HEX4.fullmatch(data, j + 8, j + 12)
                and 0xDC00 <= int(data[j + 8:j + 12], 16) <= 0xDFFF):
            return 12
        raise BodyRefused("body: a lone UTF-16 surrogate escape in a string (RFC 8259, 8.2)", self._base + j)

    def close(self) -> None:
        """End of the body: check what was carried over."""
        self.feed(b"", final=True)


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
            if refusal is not None:
                return {"type": "http.request", "body": b"", "more_body": False}
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
            if refusal is not None:  # the app never sees this chunk; its answer is replaced below
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
