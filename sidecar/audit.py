"""The audit log: security-relevant events to the ``monmouth_audit`` table and to the ``monmouth.audit`` logger.

Events of the core: ``sign_in`` (ok or failed, with the reason), ``token_use`` (first use of a token, then at most
once per ``TOKEN_USE_EVERY`` seconds per token, with the count), ``denied`` (401/403), ``rate_limited``,
``config_change`` (sections changed, old and new digests). A plugin route declares its own event with
:func:`audited` (memory: ``forget``, ``export``): each successful call is recorded, over HTTP as through an
in-process MCP tool call. Never a secret: tokens appear only as the short id of their hash, SIWE messages and
signatures not at all.

Rows are written by a background thread in small batches (one short transaction each), so auditing never holds
a request on SQLite's write lock. ``GET /audit`` (admin) pages through them, newest first.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
from typing import TYPE_CHECKING, Any

from fastapi import Depends

from .auth import route_mark

if TYPE_CHECKING:
    from .app import App
    from .auth import Principal

log = logging.getLogger("monmouth.audit")

SCHEMA = """
CREATE TABLE IF NOT EXISTS monmouth_audit (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    event TEXT NOT NULL,
    principal TEXT,
    ip TEXT,
    detail TEXT             -- JSON, no secrets
);
CREATE INDEX IF NOT EXISTS monmouth_audit_event ON monmouth_audit (event, id);
"""

TOKEN_USE_EVERY = 600.0


#: the events the core records itself; a route cannot declare one of these (:func:`audited`)
CORE_EVENTS = frozenset({"sign_in", "token_use", "denied", "rate_limited", "config_change"})
EVENT_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


def audited(event: str) -> Any:
    """A dependency declaring that each successful call (status below 400) of a route is the audit event ``event``,
    recorded with the caller, the client's address and the concrete path: for an HTTP request and for an
    in-process MCP tool call alike. Use as ``@router.post("/keys/rotate", dependencies=[audited("key_rotation")])``.

    Raises:
        ValueError: ``event`` is not a lowercase name (``[a-z][a-z0-9_]*``, at most 32 characters) or is one of the
            core's own events (:data:`CORE_EVENTS`).
    """
    if not EVENT_NAME.fullmatch(event) or event in CORE_EVENTS:
        raise ValueError(f"audited({event!r}): an event is a lowercase name ([a-z][a-z0-9_]*, at most 32 "
                         f"characters) other than the core's own ({', '.join(sorted(CORE_EVENTS))})")

    def dependency() -> None:
        return None

    dependency.__monmouth_audit__ = event  # type: ignore[attr-defined]
    return Depends(dependency)


def route_event(route: Any) -> str | None:
    """The audit event ``route`` declared with :func:`audited`, or ``None``."""
    return route_mark(route, "__monmouth_audit__")  # type: ignore[no-any-return]


class Audit:
    """Records audit events for one sidecar (``App``)."""

    def __init__(self, app: App, flush_interval: float = 0.5) -> None:
        self.app = app
        self.flush_interval = flush_interval
        self._q: queue.Queue[tuple[float, str, str | None, str | None, str]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._token_seen: dict[str, tuple[float, int]] = {}
        self._denied_seen: dict[str, float] = {}
        self._digest = app.settings.digest()
        self._settings_id = id(app.settings)
        with app.db.write() as conn:
            conn.execute(SCHEMA)

    # -- recording
    def record(self, event: str, principal: str | None = None, ip: str | None = None, **detail: Any) -> None:
        detail = {k: v for k, v in detail.items() if v is not None}
        log.info("audit %s principal=%s ip=%s %s", event, principal, ip,
                 " ".join(f"{k}={v}" for k, v in detail.items()))
        self._q.put((time.time(), event, principal, ip, json.dumps(detail, default=str, sort_keys=True)))
        self._ensure_thread()

    def token_use(self, p: Principal, ip: str | None) -> None:
        """Count a token's use; audit its first use and then at most every ``TOKEN_USE_EVERY`` seconds."""
        key = p.token_id or p.name
        now = time.monotonic()
        with self._lock:
            last, n = self._token_seen.get(key, (0.0, 0))
            n += 1
            due = last == 0.0 or now - last >= TOKEN_USE_EVERY
            self._token_seen[key] = (now if due else last, 0 if due else n)
        if due:
            self.record("token_use", p.name, ip, token_id=p.token_id, via=p.via, uses_since_last=n)

    def denied(self, status: int, principal: str | None, ip: str | None, method: str, path: str) -> None:
        """A 401/403 (one row per principal, ip and path every 10 seconds at most)."""
        key = f"{status}|{principal}|{ip}|{path}"
        now = time.monotonic()
        with self._lock:
            if now - self._denied_seen.get(key, -1e9) < 10:
                return
            self._denied_seen[key] = now
            if len(self._denied_seen) > 10_000:
                self._denied_seen.clear()
        self.record("denied", principal, ip, status=status, method=method, path=path)

    # -- background writer
    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    self._stop.clear()
                    self._thread = threading.Thread(target=self._run, name="monmouth-audit", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_interval):
            try:
                self.check_config()
                self.flush()
            except Exception as e:  # never take the API down for the audit log
                log.error("audit: could not write: %s", e)
        self.flush()

    def flush(self) -> int:
        """Write pending rows now; returns how many."""
        rows = []
        while True:
            try:
                rows.append(self._q.get_nowait())
            except queue.Empty:
                break
        if rows:
            with self.app.db.write() as conn:
                conn.executemany("INSERT INTO monmouth_audit (ts, event, principal, ip, detail) VALUES (?, ?, ?, ?, ?)",
                                 rows)
        return len(rows)

    def check_config(self) -> None:
        """Audit a config change applied by a hot reload (sections changed, digests; no values)."""
        s = self.app.settings
        if id(s) == self._settings_id:
            return
        self._settings_id = id(s)
        digest = s.digest()
        if digest == self._digest:
            return
        old, self._digest = self._digest, digest
        self.record("config_change", "config", None, old_digest=old[:16], new_digest=digest[:16],
                    path=str(self.app.config_path) if self.app.config_path else None)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.flush()

    # -- reading
    def query(self, limit: int = 50, before: int | None = None, event: str | None = None) -> list[dict[str, Any]]:
        self.flush()
        sql = "SELECT id, ts, event, principal, ip, detail FROM monmouth_audit WHERE 1=1"
        args: list[Any] = []
        if before is not None:
            sql += " AND id < ?"
            args.append(before)
        if event is not None:
            sql += " AND event = ?"
            args.append(event)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        rows = self.app.db.reader().execute(sql, args).fetchall()
        return [{"id": i, "ts": ts, "event": ev, "principal": p, "ip": ip, "detail": json.loads(str(d or "{}"))}
                for i, ts, ev, p, ip, d in rows]
