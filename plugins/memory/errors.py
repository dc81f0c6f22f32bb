"""Errors of the memory plugin. A refused request names the field at fault; its kind (invalid, not found,
conflict, gone, too large) is its class, which :mod:`monmouth.problems` maps to an HTTP status."""

from __future__ import annotations

from monmouth import errors as core


class MemoryRequestError(core.RequestError):
    """A refused request: ``field`` (the offending field or path parameter) and ``message``. This class itself is a
    malformed request (HTTP 400); the subclasses below are the other kinds."""


class InvalidRequestError(MemoryRequestError, core.InvalidRequestError):
    """A field's value is refused (out of range, empty, a mode that is not available)."""


class TooLargeError(MemoryRequestError, core.TooLargeError):
    """A field is larger than the configured limit."""


class UnknownAgentError(MemoryRequestError, core.NotFoundError):
    """The address is not a registered agent."""


class NotFoundError(MemoryRequestError, core.NotFoundError):
    """No such item, block or roots."""


class ConflictError(MemoryRequestError, core.ConflictError):
    """The item already exists, or it is chain-derived and changes only with the chain."""


class GoneError(MemoryRequestError, core.GoneError):
    """The block is older than the retention window (its roots were pruned), the item expired or the agent was
    forgotten."""


class ArchiveError(core.MonmouthError):
    """An export archive failed verification; ``item`` names the first bad item (or ``None``)."""

    def __init__(self, message: str, item: str | None = None) -> None:
        super().__init__(f"item {item}: {message}" if item else message)
        self.item = item
