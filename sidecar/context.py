"""What a plugin is given: :class:`PluginContext`, and the :class:`PluginDirectory` it finds other plugins in.

Its own module so that the hook contracts (:mod:`sidecar.hookspecs`) can name it without importing the plugin host
(:mod:`sidecar.plugins`), which imports them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from .backends import Backend
    from .config import Settings


#: The role of a sidecar process (:attr:`PluginContext.role`).
Role = Literal["run", "serve"]


class PluginDirectory(Protocol):
    """The plugins of one sidecar, as another plugin sees them (implemented by
    :class:`~sidecar.plugins.PluginHost`)."""

    def get(self, name: str) -> object | None:
        """The plugin object named ``name`` if it is installed and enabled, else ``None``."""

    def is_enabled(self, name: str) -> bool:
        """Whether the plugin named ``name`` is enabled."""


@dataclass
class PluginContext:
    """What a plugin gets in ``monmouth_startup`` / ``monmouth_shutdown``.

    Attributes:
        name: the plugin's name (its config section ``[plugins.<name>]``).
        config: the plugin's validated config model instance (or ``None``).
        settings: the whole validated settings.
        db: the sidecar database; ``db.reader()`` for reads, ``db.write()`` for short writes outside the
            engine (background workers). Chain data must be written in chain hooks, not here.
        metrics: the Prometheus registry served at ``/metrics``; name metrics ``monmouth_<plugin>_...``.
        host: the plugin host, to find other plugins (``host.get("rag")``).
        stopping: set when the plugin must stop its background threads.
        role: which process this is (docs/storage.md, "Scale-out"). ``"run"``: ``monmouth run``, the one process
            that ingests; it starts the plugin's background workers (embedding, settling, outbox delivery), of which
            there must be one per database. ``"serve"``: ``monmouth serve`` or ``monmouth status`` beside it (any
            number of them); it serves reads and API writes only and starts no background worker.
    """

    name: str
    config: Any
    settings: Settings
    db: Backend
    metrics: CollectorRegistry
    host: PluginDirectory
    stopping: threading.Event = field(default_factory=threading.Event)
    role: Role = "run"
