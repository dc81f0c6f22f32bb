"""Errors as RFC 9457 problem details (``application/problem+json``), the same for every route.

Every error the HTTP app answers is an object with ``type``, ``title``, ``status`` and ``detail`` (a string that
names the offending field when there is one), plus these extension members where they apply:

* ``field``: the first offending field, dotted (``body.k``, ``query.limit``, ``path.agent``, ``agent``);
* ``errors``: every validation error, ``[{"field", "loc", "msg", "type"}]``;
* ``retry_after``: seconds, on 429 (also in the ``Retry-After`` header).

A refused request raised as a :class:`monmouth.errors.RequestError` (anywhere: a route, a plugin's service, an MCP
tool) becomes its problem here, and only here: :data:`STATUS_OF` maps each kind of refusal to its status.

Plugins may keep raising ``HTTPException`` (any ``detail``: a string, ``{"field", "error"}``, or a list of
FastAPI-style errors) or returning ``JSONResponse({"detail": ...})`` with an error status: the app rewrites both
into problem details.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import (
    ConflictError,
    GoneError,
    InvalidRequestError,
    MonmouthError,
    NotFoundError,
    RequestError,
    TooLargeError,
)

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/problem+json"
VALIDATION_TYPE = "urn:monmouth:problem:validation"
#: FastAPI's detail when a body cannot be decoded at all (it names neither the part nor the rule).
FASTAPI_PARSE_ERROR = "There was an error parsing the body"


class FieldError(BaseModel):
    field: str
    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    """An RFC 9457 problem details object (the body of every error response)."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    field: str | None = None
    errors: list[FieldError] | None = None


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _field_of(loc: Sequence[Any]) -> str:
    return ".".join(str(p) for p in loc)


def _errors_from(items: Sequence[Any]) -> list[dict[str, Any]]:
    out = []
    for e in items:
        if isinstance(e, dict):
            loc = [p if isinstance(p, int) else str(p) for p in (e.get("loc") or [])]
            out.append({"field": _field_of(loc), "loc": loc, "msg": str(e.get("msg", "")),
                        "type": str(e.get("type", "value_error"))})
        else:
            out.append({"field": "", "loc": [], "msg": str(e), "type": "value_error"})
    return out


def problem_body(status: int, detail: Any = None, *, title: str | None = None, type: str = "about:blank",
                 field: str | None = None, **extra: Any) -> dict[str, Any]:
    """The problem object for ``status`` and a ``detail`` of any shape plugins use (str, dict, list)."""
    body: dict[str, Any] = {"type": type, "title": title or _title(status), "status": status}
    errors = None
    if isinstance(detail, list):
        errors = _errors_from(detail)
        text = "; ".join(f"{e['field']}: {e['msg']}" if e["field"] else e["msg"] for e in errors)
        field = field or (errors[0]["field"] if errors else None)
        if body["type"] == "about:blank" and status == 422:
            body["type"] = VALIDATION_TYPE
    elif isinstance(detail, dict):
        f = detail.get("field")
        msg = detail.get("error") or detail.get("msg") or detail.get("message") or detail.get("detail")
        field = field or (str(f) if f is not None else None)
        text = f"{f}: {msg}" if f is not None and msg else str(msg or json.dumps(detail, default=str))
        for k, v in detail.items():
            if k not in ("field", "error", "msg", "message", "detail", "type", "title", "status"):
                body.setdefault(k, v)
    elif detail is None:
        text = body["title"]
    else:
        text = str(detail)
    body["detail"] = text
    if field:
        body["field"] = field
    if errors is not None:
        body["errors"] = errors
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


def problem(status: int, detail: Any = None, *, headers: dict[str, str] | None = None, **kw: Any) -> JSONResponse:
    """A problem details response."""
    return JSONResponse(problem_body(status, detail, **kw), status_code=status, headers=headers,
                        media_type=MEDIA_TYPE)


class ProblemError(MonmouthError):
    """Raise anywhere in a request to answer with a problem (``problem(status, detail, **kw)``): the HTTP layer's
    error (authentication, access policy, request limits), the one exception that carries an HTTP status."""

    def __init__(self, status: int, detail: Any = None, *, headers: dict[str, str] | None = None, **kw: Any):
        super().__init__(detail)
        self.status, self.detail, self.headers, self.kw = status, detail, headers, kw

    def response(self) -> JSONResponse:
        """The problem details response it answers with (the same from a route, a middleware or an ASGI endpoint)."""
        return problem(self.status, self.detail, headers=self.headers, **self.kw)


#: The HTTP status of each kind of refused request (:class:`~monmouth.errors.RequestError`); an error's status is
#: that of the first of its classes (in method resolution order) found here.
STATUS_OF: dict[type[RequestError], int] = {
    RequestError: 400,
    InvalidRequestError: 422,
    TooLargeError: 413,
    NotFoundError: 404,
    ConflictError: 409,
    GoneError: 410,
}


def status_of(exc: RequestError) -> int:
    """The HTTP status a refused request answers with (:data:`STATUS_OF`)."""
    return next(STATUS_OF[c] for c in type(exc).__mro__ if c in STATUS_OF)


def refusal(exc: RequestError) -> JSONResponse:
    """The problem response of a refused request: its status (:func:`status_of`), ``detail`` ``"<field>:
    <message>"`` and ``field``."""
    return problem(status_of(exc), exc.to_json())


def problem_of(exc: BaseException) -> dict[str, Any] | None:
    """The problem object a refusal raised outside an HTTP request answers with (an in-process MCP tool call, see
    :meth:`monmouth.mcp_server.Caller.invoke`), the same as the HTTP handlers below give: :class:`ProblemError`,
    :class:`~monmouth.errors.RequestError` (:func:`status_of`), ``HTTPException``, a pydantic ``ValidationError``
    (422, inputs not echoed). ``None`` for any other exception: not a refusal, the caller's 500."""
    from pydantic import ValidationError

    if isinstance(exc, ProblemError):
        return problem_body(exc.status, exc.detail, **exc.kw)
    if isinstance(exc, RequestError):
        return problem_body(status_of(exc), exc.to_json())
    if isinstance(exc, StarletteHTTPException):
        return problem_body(exc.status_code, exc.detail)
    if isinstance(exc, ValidationError):
        errors = [{"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return problem_body(422, errors, title="Unprocessable Content")
    return None


def install(api: FastAPI) -> None:
    """Register the exception handlers that turn every error into problem details."""

    @api.exception_handler(ProblemError)
    async def _problem(_request: Request, exc: ProblemError) -> JSONResponse:
        return exc.response()

    @api.exception_handler(RequestError)
    async def _refused(_request: Request, exc: RequestError) -> JSONResponse:
        return refusal(exc)

    @api.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == FASTAPI_PARSE_ERROR:  # say which part and what is expected
            return problem(400, "body: not a JSON text this route can read (RFC 8259, UTF-8)", field="body")
        return problem(exc.status_code, exc.detail, headers=getattr(exc, "headers", None))

    @api.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [dict(e) for e in exc.errors()]
        for e in errors:  # inputs may be unserialisable (bytes) or secrets: never echo them back
            e.pop("input", None)
            e.pop("ctx", None)
            e.pop("url", None)
        return problem(422, errors, title="Unprocessable Content")

    @api.exception_handler(OverflowError)
    async def _overflow(request: Request, exc: OverflowError) -> JSONResponse:
        # A number from the request too large for SQLite (64-bit) or numpy: the client's error, not ours.
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        return problem(422, f"a number in the request is out of range ({exc}); integers must fit in 64 bits",
                       title="Unprocessable Content", type=VALIDATION_TYPE)

    @api.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        from .backends import timeout_fault
        from .store import describe_fault, environment_fault

        timeout = timeout_fault(exc)
        if timeout is not None:  # PostgreSQL cancelled the statement: the request's transaction rolled back
            log.warning("%s %s: %s", request.method, request.url.path, timeout)
            return problem(503, f"{timeout}; nothing was written, retry later or raise the setting",
                           headers={"Retry-After": "5"}, title="Service Unavailable")
        fault = environment_fault(exc)
        if fault is not None:  # disk full, read-only, I/O: the environment's fault, the write rolled back
            log.error("%s %s: %s", request.method, request.url.path, describe_fault(fault))
            return problem(503, f"storage: {describe_fault(fault)}; nothing was written, retry once it clears",
                           headers={"Retry-After": "5"}, title="Service Unavailable")
        log.exception("%s %s: unhandled %s", request.method, request.url.path, type(exc).__name__)
        return problem(500, f"internal error ({type(exc).__name__}); see the sidecar's log")


class ProblemMiddleware:
    """Rewrites plain JSON error responses (a plugin's ``JSONResponse({"detail": ...}, status_code=4xx)``) into
    problem details. Responses that already are ``application/problem+json``, non-JSON responses and successes
    pass through untouched (streamed, never buffered)."""

    #: Paths whose JSON errors follow another protocol: the MCP endpoint answers JSON-RPC error objects.
    PASS_THROUGH = ("/mcp",)

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.PASS_THROUGH:
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def wrapped(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and start is None:
                status = message["status"]
                ctype = next((v for k, v in message.get("headers", []) if k.lower() == b"content-type"), b"")
                if status >= 400 and ctype.startswith(b"application/json"):
                    start = message
                    return
                await send(message)
                return
            if start is not None and message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if message.get("more_body"):
                    return
                await _flush(start, b"".join(chunks))
                return
            await send(message)

        async def _flush(st: Message, raw: bytes) -> None:
            status = st["status"]
            try:
                data = json.loads(raw)
            except ValueError:
                data = None
            if isinstance(data, dict) and "title" in data and "status" in data:
                body = data
            else:
                detail = data.get("detail", data) if isinstance(data, dict) else data
                body = problem_body(status, detail)
            out = json.dumps(body, default=str).encode()
            headers = [(k, v) for k, v in st.get("headers", [])
                       if k.lower() not in (b"content-type", b"content-length")]
            headers += [(b"content-type", MEDIA_TYPE.encode()), (b"content-length", str(len(out)).encode())]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": out})

        await self.app(scope, receive, wrapped)


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries documenting problem details for ``statuses``."""
    return {s: {"model": Problem, "description": _title(s),
                "content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}} for s in statuses}
