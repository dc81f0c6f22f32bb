"""Small named exceptions, one per way things go wrong, under one root. Every message names the problem.

Every error the core and the built-in plugins raise on purpose derives from :class:`MonmouthError` (some also from
the builtin their callers catch: ``ValueError``, ``FileNotFoundError``, ``RuntimeError``), so ``except
MonmouthError`` catches all of them and ``tests/test_architecture.py`` walks the tree. Each says whether trying the
same thing again may succeed (:attr:`MonmouthError.retryable`, as Ponder splits ``RetryableError`` from
``NonRetryableError``).

Errors name what went wrong, never an HTTP status: a refused request is a :class:`RequestError` of a kind (invalid,
not found, conflict, gone, too large), and :mod:`monmouth.problems` alone maps each kind to its RFC 9457 response.
"""

from __future__ import annotations

from typing import ClassVar


class MonmouthError(Exception):
    """Base class of every error this package and its plugins raise on purpose.

    Attributes:
        retryable: ``True`` when the same operation, repeated unchanged later, may succeed (a node, a server or a
            service that did not answer yet); ``False`` when only a change of input, config or state can (the
            default).
    """

    retryable: ClassVar[bool] = False


class RequestError(MonmouthError):
    """A caller's request refused (by a route, an MCP tool or a command): the request is malformed.

    Subclasses say which kind of refusal it is; :data:`monmouth.problems.STATUS_OF` maps each kind to an HTTP
    status (this class: 400).

    Args:
        field: the offending field or path parameter (``"query"``, ``"agent"``, ``"content_b64"``).
        message: what is wrong with it.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def to_json(self) -> dict[str, str]:
        """``{"field", "error"}``: the ``detail`` of the problem response."""
        return {"field": self.field, "error": self.message}


class InvalidRequestError(RequestError):
    """A field is well-formed but its value is refused (out of range, empty, a mode that is not available)."""


class TooLargeError(RequestError):
    """A field is larger than the configured limit."""


class NotFoundError(RequestError):
    """What the request names does not exist (an agent, an item, a block not applied yet)."""


class ConflictError(RequestError):
    """The request contradicts the current state (an item that already exists, a chain-derived item changed)."""


class GoneError(RequestError):
    """What the request names existed but is no longer kept (pruned roots, a forgotten agent, an expired item)."""


class ChainError(MonmouthError, ValueError):
    """A chain or notification is malformed (empty, not contiguous, no common fork point)."""


class CodecError(MonmouthError, ValueError):
    """A frame or message could not be decoded: truncated, wrong type, missing field."""


class ConfigError(MonmouthError, ValueError):
    """The configuration is invalid. The message names the file and the key."""


class ContinuityError(MonmouthError):
    """A notification does not connect to the cursor (a gap or an unknown fork).

    Attributes:
        expected: the engine's head, as ``BlockRef`` (or ``None`` on an empty database).
        got: the block the notification builds on.
    """

    def __init__(self, message: str, expected: object = None, got: object = None) -> None:
        super().__init__(message)
        self.expected = expected
        self.got = got


class ReorgTooDeepError(MonmouthError):
    """A revert reaches below the oldest block whose undo data is still held.

    Attributes:
        depth: blocks the notification reverts.
        block: the first block it cannot revert (a ``BlockRef``), or ``None``.
    """

    def __init__(self, message: str, depth: int = 0, block: object = None) -> None:
        super().__init__(message)
        self.depth = depth
        self.block = block


class StorageError(MonmouthError):
    """The database cannot be opened or written: a bad ``storage.path``, a read-only file or directory, a full
    disk. The message names the path and the fault."""


class StorageUnavailableError(StorageError):
    """The database server cannot be reached (yet): nothing answered, or it is starting up. Unlike the other
    :class:`StorageError` refusals (bad login, missing extension, newer schema, another engine), waiting can clear it:
    ``monmouth run`` retries with backoff (:mod:`sidecar.startwait`)."""

    retryable = True


class PluginError(MonmouthError):
    """A plugin hook raised; the whole notification was rolled back.

    Attributes:
        plugin: the plugin's name.
        hook: the hook's name.
        block: the block being applied or reverted (a ``BlockRef``: number and hash), or ``None`` (hooks
            outside a block, e.g. ``monmouth_finalized``). The message names it.
    """

    def __init__(self, plugin: str, hook: str, cause: BaseException, block: object = None) -> None:
        at = f" at block {block}" if block is not None else ""
        super().__init__(f"plugin {plugin!r} failed in {hook}{at}: {type(cause).__name__}: {cause}")
        self.plugin = plugin
        self.hook = hook
        self.block = block
        self.__cause__ = cause


class MigrationError(MonmouthError):
    """A plugin's migration failed or created a table the engine cannot journal."""


class MigrationChangedError(MigrationError):
    """A plugin's migration already applied to the database changed (or was removed) since: its tables were built
    by other SQL than the plugin's code now declares. The plugin is refused; ``monmouth reindex`` rebuilds it."""


class HistoryError(MonmouthError):
    """The source cannot serve the blocks asked for (pruned node, not in the replay file, bridge not connected or
    serving no history). The message names the blocks."""


class SourceError(MonmouthError):
    """A source failed in a way retrying will not fix (bad file, protocol mismatch)."""
