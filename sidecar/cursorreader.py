"""The engine's read surface without the engine: what ``monmouth serve`` and ``monmouth status`` show beside a
running ``monmouth run`` (sidecar/serving.py).

Invariants: it opens no write connection and takes no ingestion lock; each read of the head re-reads
``monmouth_cursor`` (one primary-key lookup) on this thread's connection to the primary (never the read replica of
``storage.read_url``), and the counters (finalized, notifications, reorgs) come from the same row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .backends import serving_request
from .engine import Engine, read_cursor
from .errors import StorageError

if TYPE_CHECKING:
    from collections.abc import Iterable

    from .types import BlockRef, Notification


class CursorReader(Engine):
    """The engine's read surface (head, finalized, counters, canonical blocks) without the engine: what a serving
    process shows, read from the database at each use (module docstring). Same constructor as :class:`Engine`; its
    connection is read-only and it takes no ingestion lock.

    Raises (from :meth:`apply_many`):
        StorageError: always; a serving process does not ingest.
    """

    def _connect(self) -> Any:
        return self.db.connect(readonly=True)

    def _load_cursor(self) -> None:
        self._read_cursor()

    def _read_cursor(self) -> None:
        # db.reader() outside a request: this thread's connection to the primary, which sees every commit (no
        # snapshot held between statements); never the read replica, whose head /status reports beside this one.
        with serving_request(None):
            cursor = read_cursor(self.db.reader())
        self._head = self._working = cursor.head
        self.finalized = cursor.finalized
        self.notifications_seen = cursor.notifications
        self.reorgs_seen = cursor.reorgs
        self._token = cursor.source_token

    @property
    def head(self) -> BlockRef | None:
        """The head the engine last committed (block number and hash), re-read now; ``None`` on an empty
        database."""
        self._read_cursor()
        return self._head

    def reconnect(self) -> None:
        self.close()
        self.conn = self._connect()
        self._read_cursor()

    def apply_many(self, items: Iterable[tuple[Notification, object]]) -> tuple[list[Any], Exception | None]:
        raise StorageError("monmouth serve does not ingest: exactly one `monmouth run` applies notifications to "
                           f"{self.db.describe()}")
