"""Errors of the memory plugin; each names the request field at fault and carries an HTTP status."""

from __future__ import annotations


class MemoryRequestError(Exception):
    """A refused request: ``status`` (HTTP), ``field`` (the offending field or path parameter) and a message."""

    status = 400

    def __init__(self, field: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        if status is not None:
            self.status = status

    def to_json(self) -> dict[str, str]:
        return {"field": self.field, "error": self.message}


class UnknownAgentError(MemoryRequestError):
    status = 404


class NotFoundError(MemoryRequestError):
    status = 404


class ConflictError(MemoryRequestError):
    status = 409


class GoneError(MemoryRequestError):
    """The block is older than the retention window (its roots were pruned)."""

    status = 410


class ArchiveError(Exception):
    """An export archive failed verification; ``item`` names the first bad item (or ``None``)."""

    def __init__(self, message: str, item: str | None = None) -> None:
        super().__init__(f"item {item}: {message}" if item else message)
        self.item = item
