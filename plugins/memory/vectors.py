"""Decrypted embedding vectors of recently recalled agents, kept in memory.

Vectors are stored AES-GCM encrypted (``memory_vectors``), so recall decrypts an agent's vectors into a matrix
kept here. The cache is refreshed incrementally: a write marks the agent's entry stale, and the next recall compares
the stored ``(row id, nonce)`` pairs (a fresh nonce per encryption) with the cached ones and decrypts only what
changed.
"""

from __future__ import annotations

import threading
from typing import Any

import apsw
import numpy as np

from .crypto import AgentKey, aad
from .lattice import LRU
from .schema import all_rows

EMBED_DIM = 384


class _Entry:
    __slots__ = ("fresh", "mat", "ns", "rows", "stamp")

    def __init__(self) -> None:
        self.stamp: Any = None
        self.fresh = False
        self.rows: dict[int, tuple[bytes, np.ndarray]] = {}  # n -> (nonce, vector)
        self.ns = np.zeros(0, np.int64)
        self.mat = np.zeros((0, EMBED_DIM), np.float32)


class VectorCache:
    """Decrypted embedding matrices of the most recently recalled agents (thread-safe).

    Args:
        size: how many agents are kept.
    """

    def __init__(self, size: int = 64) -> None:
        self._lru = LRU(size)
        self._lock = threading.Lock()

    def stale(self, agent: bytes) -> None:
        """Mark ``agent``'s entry stale (its vectors may have changed); the next :meth:`get` refreshes it."""
        e = self._lru.get_(agent)
        if e is not None:
            e.fresh = False

    def drop(self, agent: bytes | None = None) -> None:
        """Forget ``agent``'s entry (every entry when ``None``)."""
        if agent is None:
            with self._lru.lock:
                self._lru.clear()
        else:
            with self._lru.lock:
                self._lru.pop(agent, None)

    def get(self, conn: apsw.Connection, k: AgentKey, agent: bytes) -> tuple[np.ndarray, np.ndarray]:
        """``(row ids, matrix)`` of the agent's decrypted vectors (float32, shape ``(n, 384)``)."""
        stamp = conn.execute("SELECT count(*), max(n), min(n) FROM memory_vectors WHERE agent = ?", (agent,)).fetchone()
        with self._lock:
            e = self._lru.get_(agent)
            if e is not None and e.fresh and e.stamp == stamp:
                return e.ns, e.mat
            e = e or _Entry()
            stored: dict[int, bytes] = dict(all_rows(conn, "SELECT n, nonce FROM memory_vectors WHERE agent = ?",
                                                     (agent,)))
            changed = [n for n, nonce in stored.items() if n not in e.rows or e.rows[n][0] != nonce]
            gone = [n for n in e.rows if n not in stored]
            for n in gone:
                del e.rows[n]
            for i in range(0, len(changed), 500):
                chunk = changed[i:i + 500]
                for n, nonce, ct, item_id, version in conn.execute(
                        "SELECT v.n, v.nonce, v.ct, i.id, i.version FROM memory_vectors v JOIN memory_items i ON "
                        f"i.n = v.n WHERE v.n IN ({','.join('?' * len(chunk))})", chunk):
                    try:
                        vec = np.frombuffer(k.decrypt(nonce, ct, aad(agent, item_id, version)), dtype=np.float32)
                    except Exception:  # a vector of an older version (being re-embedded): skip
                        e.rows.pop(n, None)
                        continue
                    e.rows[n] = (nonce, vec)
            if changed or gone or e.stamp is None:
                ns = sorted(e.rows)
                e.ns = np.asarray(ns, dtype=np.int64)
                e.mat = np.vstack([e.rows[n][1] for n in ns]) if ns else np.zeros((0, EMBED_DIM), np.float32)
            e.stamp, e.fresh = stamp, True
            self._lru.put(agent, e)
            return e.ns, e.mat
