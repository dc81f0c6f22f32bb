"""Rate limits: token buckets per client IP and per bearer token, answering 429 with ``Retry-After``.

Limits come from ``[auth]`` (``rate_ip``/``burst_ip``, ``rate_token``/``burst_token``; 0 turns one off) and are read
on every request, so a hot reload applies at once. Loopback clients are exempt from the per-IP limit while
``auth.rate_exempt_loopback`` is on (they are the operator's own tools). Tokens are bucketed by a hash, never
kept in clear. ``/health`` and ``/ready`` are never limited.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Receive, Scope, Send

from .auth import is_loopback
from .limits import authorization
from .problems import problem

if TYPE_CHECKING:
    from .config import Settings

EXEMPT_PATHS = ("/health", "/ready")


class TokenBuckets:
    """Thread-safe token buckets keyed by string. ``take(key, rate, burst)`` returns 0 when a request may proceed,
    else the seconds until one token is available."""

    MAX_KEYS = 100_000

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._b: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str, rate: float, burst: int) -> float:
        if rate <= 0:
            return 0.0
        now = self.clock()
        with self._lock:
            tokens, last = self._b.get(key, (float(burst), now))
            tokens = min(float(burst), tokens + (now - last) * rate)
            if tokens >= 1.0:
                self._b[key] = (tokens - 1.0, now)
                return 0.0
            self._b[key] = (tokens, now)
            if len(self._b) > self.MAX_KEYS:
                self._evict(now, rate, burst)
            return (1.0 - tokens) / rate

    def _evict(self, now: float, rate: float, burst: int) -> None:
        full = burst / rate if rate > 0 else 0
        for k, (_t, last) in list(self._b.items()):
            if now - last > full:
                del self._b[k]


class RateLimitMiddleware:
    """ASGI middleware applying the per-IP and per-token buckets before routing."""

    def __init__(self, app: ASGIApp, get_settings: Callable[[], Settings],
                 on_limited: Callable[[str, str | None], None] | None = None,
                 internal_secret: str | None = None) -> None:
        self.app = app
        self.internal = internal_secret.encode() if internal_secret else None
        self.get_settings = get_settings
        self.buckets = TokenBuckets()
        self.on_limited = on_limited
        self.limited = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        if self.internal is not None and any(k == b"x-monmouth-internal" and v == self.internal
                                             for k, v in scope.get("headers", [])):
            await self.app(scope, receive, send)  # the MCP server's in-process call: its /mcp request was counted
            return
        cfg = self.get_settings().auth
        client = scope.get("client")
        ip = client[0] if client else None
        wait = 0.0
        if cfg.rate_ip > 0 and not (cfg.rate_exempt_loopback and is_loopback(ip)):
            wait = self.buckets.take(f"ip:{ip}", cfg.rate_ip, cfg.burst_ip)
        if not wait and cfg.rate_token > 0:
            auth = authorization(scope)  # the one credential authentication reads too
            if auth:
                key = "tok:" + hashlib.sha256(auth.partition(b" ")[2].strip()).hexdigest()[:24]
                wait = self.buckets.take(key, cfg.rate_token, cfg.burst_token)
        if wait:
            self.limited += 1
            if self.on_limited is not None:
                self.on_limited(scope["path"], ip)
            secs = max(1, math.ceil(wait))
            resp = problem(429, f"rate limit exceeded; retry in {secs}s", headers={"Retry-After": str(secs)},
                           retry_after=secs)
            await resp(scope, receive, send)
            return
        await self.app(scope, receive, send)
