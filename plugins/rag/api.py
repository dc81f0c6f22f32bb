"""HTTP routes under ``/rag/`` (FastAPI): search, context, documents, transactions, the address graph, answer.

Request bodies are pydantic models with ``extra="forbid"``: a bad request gets a 422 whose ``detail`` names the field
(``k`` out of range, an unknown filter, an empty query...). Endpoints are plain ``def`` functions, so FastAPI runs
them in its thread pool (SQLite reads and ONNX inference block).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import time
from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, HTTPException, Path, Query
from pydantic import BaseModel, ConfigDict, Field, field_validator

from monmouth.chain import ADDRESS_RE, check_address
from monmouth.limits import JsonObject, Text

from .decoded import INTENTS
from .search import KINDS, ROLES, Filters

Intent = Literal["transfer", "swap", "approve", "mint", "burn", "deposit", "withdraw", "contract_creation", "other"]
Kind = Literal["tx", "document", "memory"]
Role = Literal["sender", "recipient", "contract", "log", "transfer"]
Mode = Literal["vector", "keyword", "hybrid"]
_HASH = r"^0x[0-9a-fA-F]{64}$"

assert set(INTENTS) == set(get_args(Intent)) and set(KINDS) == set(get_args(Kind)) and set(ROLES) == set(get_args(Role))


#: Largest integer SQLite stores: block numbers, times and offsets beyond it are a 422 naming the field.
INT64 = 2**63 - 1
UnixTime = Annotated[int, Field(ge=-INT64 - 1, le=INT64)]
#: Request bodies: no unknown fields, no NaN or Infinity; text fields are ``Text`` (valid Unicode).
_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)


def _listify(v: Any) -> Any:
    return None if v is None else (v if isinstance(v, list) else [v])


def _unix(v: int | _dt.datetime | None) -> int | None:
    if v is None or isinstance(v, int):
        return v
    if v.tzinfo is None:
        v = v.replace(tzinfo=_dt.UTC)
    return int(v.timestamp())


class SearchFilters(BaseModel):
    """Filters; every given one must hold. Unknown filter names are refused."""

    model_config = _STRICT

    block_from: int | None = Field(None, ge=0, le=INT64, description="First block (inclusive).")
    block_to: int | None = Field(None, ge=0, le=INT64, description="Last block (inclusive).")
    time_from: UnixTime | _dt.datetime | None = Field(None, description="Unix seconds or ISO 8601 (UTC if no zone).")
    time_to: UnixTime | _dt.datetime | None = Field(None, description="Unix seconds or ISO 8601 (UTC if no zone).")
    address: Text | None = Field(None, description="0x address touched (as sender, recipient, contract or log "
                                                  "address, or token-transfer party).")
    role: Role | list[Role] | None = Field(None, description="Restrict `address` to these roles.")
    intent: Intent | list[Intent] | None = None
    token: Text | list[Text] | None = Field(None, description="Token symbol (USDT) or 0x address; any of a list.")
    kind: Kind | list[Kind] | None = None
    doc_id: Text | None = None

    @field_validator("address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        return v if v is None else check_address(v)

    @field_validator("token")
    @classmethod
    def _token(cls, v: str | list[str] | None) -> str | list[str] | None:
        for t in _listify(v) or []:
            if not t.strip():
                raise ValueError("must not be empty")
        return v

    def to_filters(self) -> Filters:
        """The search layer's :class:`~monmouth_rag.search.Filters`.

        Raises:
            ValueError: ``role`` without ``address``, or an empty range.
        """
        if self.role is not None and self.address is None:
            raise ValueError("filters.role: needs filters.address")
        tf, tt = _unix(self.time_from), _unix(self.time_to)
        if self.block_from is not None and self.block_to is not None and self.block_from > self.block_to:
            raise ValueError("filters.block_from: must not exceed block_to")
        if tf is not None and tt is not None and tf > tt:
            raise ValueError("filters.time_from: must not exceed time_to")
        lst = _listify
        return Filters(
            block_from=self.block_from, block_to=self.block_to, time_from=tf, time_to=tt,
            address=bytes.fromhex(self.address[2:]) if self.address else None,
            roles=tuple(lst(self.role)) if self.role is not None else None,
            intents=tuple(lst(self.intent)) if self.intent is not None else None,
            tokens=tuple(lst(self.token)) if self.token is not None else None,
            kinds=tuple(lst(self.kind)) if self.kind is not None else None,
            doc_id=self.doc_id,
        )


def _nonblank(v: str) -> str:
    if not v.strip():
        raise ValueError("must not be empty")
    return v


class SearchRequest(BaseModel):
    """``POST /rag/search``."""

    model_config = _STRICT

    query: Text = Field(..., max_length=4000)
    k: int = Field(10, ge=1, le=100, description="Results wanted (1-100).")
    mode: Mode | None = Field(None, description="vector, keyword or hybrid (default: plugins.rag.mode).")
    filters: SearchFilters = SearchFilters()

    _q = field_validator("query")(classmethod(lambda cls, v: _nonblank(v)))


class ContextRequest(BaseModel):
    """``POST /rag/context``."""

    model_config = _STRICT

    query: Text = Field(..., max_length=4000)
    max_tokens: int = Field(1500, ge=16, le=200_000, description="Token budget of the packed context.")
    filters: SearchFilters = SearchFilters()
    mode: Mode | None = None
    order: Literal["relevance", "chronological"] = "relevance"
    candidates: int = Field(50, ge=1, le=500, description="Search results considered for packing.")

    _q = field_validator("query")(classmethod(lambda cls, v: _nonblank(v)))


class DocumentRequest(BaseModel):
    """``POST /rag/documents``: add or replace a document."""

    model_config = _STRICT

    id: Text | None = Field(None, min_length=1, max_length=512, description="Replaces a document with this id; "
                                                                          "default: sha256 of the text.")
    text: Text = Field(..., max_length=20_000_000)
    title: Text | None = Field(None, max_length=1000)
    format: Literal["text", "markdown"] = "text"
    kind: Literal["document", "memory"] = "document"
    meta: JsonObject = Field({}, description="JSON object stored with every chunk: finite numbers, valid text, "
                                            "nested at most 32 levels.")

    _t = field_validator("text")(classmethod(lambda cls, v: _nonblank(v)))


class AnswerRequest(BaseModel):
    """``POST /rag/answer``."""

    model_config = _STRICT

    query: Text = Field(..., max_length=4000)
    filters: SearchFilters = SearchFilters()
    max_tokens: int | None = Field(None, ge=64, le=200_000, description="Context budget (default from config).")

    _q = field_validator("query")(classmethod(lambda cls, v: _nonblank(v)))


def _unavailable(e: RuntimeError) -> HTTPException:
    return HTTPException(503, detail=str(e))


def _filters(f: SearchFilters) -> Filters:
    try:
        return f.to_filters()
    except ValueError as e:
        raise HTTPException(422, detail=[{"loc": ["body", *str(e).split(":")[0].split(".")], "msg": str(e),
                                          "type": "value_error"}]) from e


def search_response(p: Any, req: SearchRequest) -> dict[str, Any]:
    """What ``POST /rag/search`` answers for ``req`` on the running plugin ``p`` (the route and the MCP tool
    ``search_chain``): ranked hits with score, text, metadata, provenance and citation; ``took_ms`` (milliseconds).

    Raises:
        HTTPException: 422 for filters that do not parse, 503 while the index is not available.
    """
    f = _filters(req.filters)
    t0 = time.perf_counter()
    try:
        hits = p.search(req.query, req.k, req.mode, f)
    except RuntimeError as e:
        raise _unavailable(e) from e
    mode = req.mode or p.state().cfg.mode
    return {"query": req.query, "mode": mode, "k": req.k, "hits": [h.to_json() for h in hits],
            "took_ms": round((time.perf_counter() - t0) * 1000, 2)}


def context_response(p: Any, req: ContextRequest) -> dict[str, Any]:
    """What ``POST /rag/context`` answers for ``req`` on the running plugin ``p`` (the route and the MCP tool
    ``get_context``): the best chunks packed into ``max_tokens`` (tokens), the tokens used, and what was left out.

    Raises:
        HTTPException: 422 for filters that do not parse, 503 while the index is not available.
    """
    f = _filters(req.filters)
    try:
        return p.context(req.query, req.max_tokens, f, req.mode, req.order, req.candidates)  # type: ignore[no-any-return]
    except RuntimeError as e:
        raise _unavailable(e) from e


def make_router(p: Any) -> APIRouter:
    """The ``/rag`` router over the running plugin ``p`` (a ``monmouth_rag.plugin.RagPlugin``)."""
    r = APIRouter(prefix="/rag", tags=["rag"])

    @r.post("/search")
    def search(req: SearchRequest) -> dict[str, Any]:
        """Ranked hits with score, text, metadata, provenance (block, tx hash, log index; or document id and chunk)
        and citation."""
        return search_response(p, req)

    @r.post("/context")
    def context(req: ContextRequest) -> dict[str, Any]:
        """The best chunks packed into ``max_tokens`` (deduplicated, ordered, cited), the tokens used, and what was
        left out."""
        return context_response(p, req)

    @r.post("/documents", status_code=201)
    def add_document(req: DocumentRequest) -> dict[str, Any]:
        """Chunk and index a document (keyword search at once, vectors by the background worker)."""
        doc_id = req.id or "sha256:" + hashlib.sha256(req.text.encode()).hexdigest()[:32]
        try:
            return p.add_document(doc_id, req.text, kind=req.kind, title=req.title, meta=req.meta,
                                  markdown=req.format == "markdown")
        except RuntimeError as e:
            raise _unavailable(e) from e

    @r.get("/documents")
    def list_documents(kind: Kind | None = None, limit: int = Query(100, ge=1, le=10_000),
                       offset: int = Query(0, ge=0, le=INT64)) -> dict[str, Any]:
        """Documents (not chain transactions) with their chunk and vector counts."""
        try:
            conn = p.state().ctx.db.reader()
        except RuntimeError as e:
            raise _unavailable(e) from e
        where = "d.block_number IS NULL" + (" AND d.kind = ?" if kind else "")
        params: tuple[Any, ...] = (kind,) if kind else ()
        rows = conn.execute(
            "SELECT d.doc_id, d.kind, max(d.title), count(*), sum(coalesce(i.has_vec, 0)), min(d.timestamp) "
            f"FROM rag_docs d LEFT JOIN rag_index i ON i.id = d.id WHERE {where} GROUP BY d.doc_id, d.kind "
            "ORDER BY d.doc_id LIMIT ? OFFSET ?", (*params, limit, offset)).fetchall()
        return {"documents": [{"id": a, "kind": b, "title": c, "chunks": n, "embedded": e, "timestamp": t}
                              for a, b, c, n, e, t in rows]}

    @r.delete("/documents/{doc_id:path}")
    def delete_document(doc_id: str) -> dict[str, Any]:
        """Delete a document (every chunk). 404 if unknown."""
        try:
            n = p.delete_document(doc_id)
        except RuntimeError as e:
            raise _unavailable(e) from e
        if n == 0:
            raise HTTPException(404, detail=f"document {doc_id!r} not found")
        return {"id": doc_id, "deleted_chunks": n}

    @r.get("/tx/{tx_hash}")
    def transaction(tx_hash: str = Path(..., pattern=_HASH, description="0x + 64 hex digits")) -> dict[str, Any]:
        """The indexed text, decoded metadata and provenance of a transaction. 404 if not indexed (out of scope,
        reverted, or before the plugin was enabled)."""
        try:
            got = p.transaction(bytes.fromhex(tx_hash[2:]))
        except RuntimeError as e:
            raise _unavailable(e) from e
        if got is None:
            raise HTTPException(404, detail=f"transaction {tx_hash} is not indexed")
        return got

    @r.get("/graph/{address}")
    def graph(address: str = Path(..., pattern=ADDRESS_RE.pattern, description="0x address"),
              depth: int = Query(1, ge=1, le=2, description="Hops: 1 or 2."),
              limit: int = Query(50, ge=1, le=1000, description="Edges per node and direction.")) -> dict[str, Any]:
        """Edges between addresses from transactions and token transfers: count, value, first and last block."""
        try:
            return p.graph(bytes.fromhex(address[2:]), depth=depth, limit=limit)
        except RuntimeError as e:
            raise _unavailable(e) from e

    @r.post("/answer")
    def answer(req: AnswerRequest) -> dict[str, Any]:
        """Answer with an OpenAI-compatible chat endpoint over the packed context (``plugins.rag.answer``; off by
        default: 503)."""
        from .answer import AnswerError
        from .answer import answer as run

        f = _filters(req.filters)
        try:
            st = p.state()
        except RuntimeError as e:
            raise _unavailable(e) from e
        if not st.cfg.answer.enabled:
            raise HTTPException(503, detail="answer: disabled (set plugins.rag.answer.enabled = true and "
                                            "plugins.rag.answer.url)")
        try:
            return run(st.cfg.answer, p.context(req.query, req.max_tokens or st.cfg.answer.context_tokens, f),
                       req.query)
        except AnswerError as e:
            raise HTTPException(502, detail=str(e)) from e

    return r
