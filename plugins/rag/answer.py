"""``POST /rag/answer``: retrieval-augmented answering through an OpenAI-compatible Chat Completions endpoint
(``POST {url}/chat/completions`` with ``model`` and ``messages``; https://platform.openai.com/docs/api-reference/chat).
Off by default; ``/rag/context`` needs no LLM.
"""

from __future__ import annotations

import os
from typing import Any

import httpx

from monmouth.errors import MonmouthError

from .config import AnswerConfig

SYSTEM_PROMPT = (
    "You answer questions about an Ethereum node's indexed chain data and documents. Use only the numbered context "
    "passages. Cite passages as [n]. If the context does not contain the answer, say so."
)


class AnswerError(MonmouthError, RuntimeError):
    """The endpoint failed or answered something that is not a chat completion (retryable: the endpoint may
    answer later; ``url`` unset is refused before any call)."""

    retryable = True


def answer(cfg: AnswerConfig, ctx: dict[str, Any], query: str, client: httpx.Client | None = None) -> dict[str, Any]:
    """Ask the configured model ``query`` over the packed context ``ctx`` (from ``build_context``).

    Returns:
        ``{"answer", "model", "citations": [chunks cited as [n] in the answer], "context": {used_tokens, chunks},
        "usage"}``.

    Raises:
        AnswerError: transport error, non-2xx status, or a malformed response.
    """
    if not cfg.url:
        raise AnswerError("answer: plugins.rag.answer.url is not set")
    headers = {"Content-Type": "application/json"}
    key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
    if key:
        headers["Authorization"] = f"Bearer {key}"
    body = {
        "model": cfg.model,
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"Context:\n{ctx['context'] or '(no passages found)'}\n\nQuestion: {query}"},
        ],
        "max_tokens": cfg.max_tokens,
        "temperature": 0,
    }
    url = cfg.url.rstrip("/") + "/chat/completions"
    own = client is None
    c = client or httpx.Client(timeout=cfg.timeout)
    try:
        resp = c.post(url, json=body, headers=headers)
    except httpx.HTTPError as e:
        raise AnswerError(f"answer: {url}: {type(e).__name__}: {e}") from e
    finally:
        if own:
            c.close()
    if resp.status_code // 100 != 2:
        raise AnswerError(f"answer: {url} answered {resp.status_code}: {resp.text[:300]}")
    try:
        data = resp.json()
        text = data["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise AnswerError(f"answer: {url}: not a chat completion: {resp.text[:300]}") from e
    cited = [c for c in ctx["chunks"] if f"[{c['n']}]" in text]
    return {"answer": text, "model": data.get("model", cfg.model),
            "citations": [{"n": c["n"], "citation": c["citation"], "provenance": c["provenance"]} for c in cited],
            "context": {"used_tokens": ctx["used_tokens"], "chunks": len(ctx["chunks"])},
            "usage": data.get("usage")}
