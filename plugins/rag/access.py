"""Who may call the rag plugin's routes beyond the default policy (``monmouth_access_rules``, see
:class:`monmouth.auth.AccessRule`).

* ``POST /rag/search``, ``/rag/context`` and ``/rag/answer`` only read: a read token may call them.
* Any signed-in agent may read chain data: ``GET /rag/tx/{tx_hash}``, ``GET /rag/graph/{address}``, and
  ``POST /rag/search`` and ``/rag/context`` with ``filters.kind`` limited to ``tx``/``document``
  (:func:`chain_only`): the ``memory`` documents the memory plugin mirrors into the index stay private to their agent.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from monmouth.auth import AccessRule
from monmouth.problems import ProblemError


def chain_only(path: str, body: Any) -> None:
    """Refuse an agent's search of ``path`` unless its ``filters.kind`` is a non-empty list (or one kind) without
    ``memory``. A body of the wrong shape is let through: the route's own validation answers 422 naming the field.

    Raises:
        ProblemError: 403 naming ``filters.kind``.
    """
    filters = body.get("filters") if isinstance(body, dict) else None
    if filters is not None and not isinstance(filters, dict):
        return  # not an object: the route's own validation answers 422 naming filters
    kinds = (filters or {}).get("kind")
    if kinds is not None and not isinstance(kinds, str | list):
        return  # not a kind or a list of kinds: the route's validation answers 422 naming filters.kind
    kinds = [kinds] if isinstance(kinds, str) else kinds
    if isinstance(kinds, list) and kinds and "memory" not in kinds:
        return
    raise ProblemError(403, f"an agent token may call {path} only with filters.kind limited to 'tx' and "
                            "'document' (RAG memory documents are private to their agent)", field="filters.kind")


RULES = (
    AccessRule("POST", "/rag/search", read=True, agent=True, agent_body=partial(chain_only, "/rag/search")),
    AccessRule("POST", "/rag/context", read=True, agent=True, agent_body=partial(chain_only, "/rag/context")),
    AccessRule("POST", "/rag/answer", read=True),
    AccessRule("GET", "/rag/tx/{tx_hash}", agent=True),
    AccessRule("GET", "/rag/graph/{address}", agent=True),
)
