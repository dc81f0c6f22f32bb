"""Small named exceptions, one per way things go wrong. Every message names the problem."""

from __future__ import annotations


class MonmouthError(Exception):
    """Base class of every error this package raises on purpose."""


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
