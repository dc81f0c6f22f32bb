"""The plugin host: owns the pluggy ``PluginManager``, discovers plugins, and turns them on and off.

Discovery has two paths, and built-in plugins use the first exactly like third-party ones:

1. the ``monmouth.plugins`` entry-point group (``[project.entry-points."monmouth.plugins"]`` in a
   ``pyproject.toml``: ``name = "package.module"``);
2. ``[plugins.<name>] module = "package.module"`` or ``module = "path/to/file.py"`` in ``config.toml``.

Only *enabled* plugins are registered with the ``PluginManager``, so only they receive chain hooks.
Enabling runs the plugin's migrations and calls ``monmouth_startup``; disabling calls
``monmouth_shutdown`` and unregisters it. :meth:`PluginHost.apply_settings` does both from a new
:class:`~sidecar.config.Settings`, and the runner calls it only between notifications.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import logging
import sys
import time
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pluggy
from prometheus_client import CollectorRegistry, Histogram
from pydantic import BaseModel

from . import hookspecs
from .backends import Backend
from .config import Settings
from .context import PluginContext
from .errors import ConfigError, PluginError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "monmouth.plugins"
HOOK_MARK = "monmouth_impl"

__all__ = ["ENTRY_POINT_GROUP", "PluginContext", "PluginHost", "config_models", "discover", "load_module"]


def _is_impl(fn: Any) -> bool:
    return callable(fn) and hasattr(fn, HOOK_MARK)


def load_module(spec: str) -> types.ModuleType:
    """Import a plugin given as a dotted module path or a ``.py`` file path.

    Raises:
        ConfigError: the module cannot be found or fails to import.
    """
    try:
        if spec.endswith(".py") or "/" in spec:
            path = Path(spec).expanduser().resolve()
            name = f"monmouth_user_plugin_{path.stem}"
            if name in sys.modules:
                return sys.modules[name]
            mspec = importlib.util.spec_from_file_location(name, path)
            if mspec is None or mspec.loader is None:
                raise ConfigError(f"plugin file {spec!r} cannot be loaded")
            module = importlib.util.module_from_spec(mspec)
            sys.modules[name] = module
            mspec.loader.exec_module(module)
            return module
        return importlib.import_module(spec)
    except ConfigError:
        raise
    except Exception as e:  # an import error inside third-party code must name the plugin
        raise ConfigError(f"plugin module {spec!r} failed to import: {type(e).__name__}: {e}") from e


def discover(module_paths: Mapping[str, str] | None = None,
             extra: Mapping[str, object] | None = None) -> dict[str, object]:
    """``{name: plugin object}`` from entry points, then config module paths, then ``extra`` (tests, embedding).

    Raises:
        ConfigError: a named module cannot be imported.
    """
    found: dict[str, object] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            found[ep.name] = ep.load()
        except Exception as e:
            log.error("plugin %s (entry point %s) failed to load: %s", ep.name, ep.value, e)
    for name, spec in (module_paths or {}).items():
        found[name] = load_module(spec)
    found.update(extra or {})
    return found


def call_one(plugin: object, hook: str, **kwargs: Any) -> Any:
    """Call one plugin's own implementation of ``hook`` (not the other plugins'), or return ``None`` if it has
    none: declaration hooks, and lifecycle hooks called plugin by plugin. As pluggy does, the implementation gets
    only the arguments it names (``monmouth_migrations(backend)`` or ``monmouth_migrations()``)."""
    fn: Any = getattr(plugin, hook, None)
    if not _is_impl(fn):
        return None
    # As pluggy does: an implementation takes any subset of the hook's arguments, by name.
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return fn(**kwargs)
    return fn(**{k: v for k, v in kwargs.items() if k in params})


def hook_functions(plugin: object) -> dict[str, Any]:
    """``{hook name: implementation}``: the ``@monmouth.hookimpl`` attributes of a plugin object (bound methods of
    an instance). A plugin module that names its instance binds them as module names
    (``globals().update(hook_functions(plugin))``), so the module is the same plugin."""
    return {name: getattr(plugin, name) for name in dir(plugin)
            if name.startswith("monmouth_") and _is_impl(getattr(plugin, name))}


def config_models(plugins: Mapping[str, object]) -> dict[str, type[BaseModel] | None]:
    """``{name: config model}`` for the given plugins (used to validate config.toml)."""
    return {name: call_one(p, "monmouth_config_model") for name, p in plugins.items()}


class PluginHost:
    """Owns the ``PluginManager`` and the enabled set.

    Args:
        plugins: every installed plugin, ``{name: object}`` (see :func:`discover`).
        db: the database (migrations run on it).
        metrics: the Prometheus registry; the host adds ``monmouth_hook_seconds``.
    """

    def __init__(self, plugins: Mapping[str, object], db: Backend, metrics: CollectorRegistry) -> None:
        self.installed: dict[str, object] = dict(plugins)
        self.db = db
        self.metrics = metrics
        self.pm = pluggy.PluginManager("monmouth")
        self.pm.add_hookspecs(hookspecs)
        self.enabled: dict[str, PluginContext] = {}
        self.states: dict[str, str] = {name: "disabled" for name in self.installed}
        self.errors: dict[str, str] = {}
        self.settings: Settings | None = None
        self._hook_seconds = Histogram(
            "monmouth_hook_seconds", "Time spent in one plugin hook call (all implementations), seconds.",
            ["hook"], registry=metrics, buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
        )
        self._started: dict[str, float] = {}
        self.pm.add_hookcall_monitoring(self._before, self._after)
        # Trimmed tables of every installed plugin, enabled or not: the journal must never record them, and a
        # revert trims them even while their plugin is disabled.
        self._trimmed: dict[str, str | None] = {}
        for plugin in self.installed.values():
            self._trimmed.update(call_one(plugin, "monmouth_trimmed_tables") or {})

    # -- monitoring ---------------------------------------------------------------------------------------------------
    def _before(self, hook_name: str, hook_impls: Any, kwargs: Any) -> None:
        self._started[hook_name] = time.perf_counter()

    def _after(self, outcome: Any, hook_name: str, hook_impls: Any, kwargs: Any) -> None:
        t0 = self._started.pop(hook_name, None)
        if t0 is not None:
            self._hook_seconds.labels(hook_name).observe(time.perf_counter() - t0)

    # -- queries ------------------------------------------------------------------------------------------------------
    @property
    def hook(self) -> Any:
        """``pm.hook``: call chain hooks on every enabled plugin."""
        return self.pm.hook

    def get(self, name: str) -> object | None:
        """The plugin object if it is installed and enabled, else ``None``."""
        return self.installed.get(name) if name in self.enabled else None

    def is_enabled(self, name: str) -> bool:
        return name in self.enabled

    @property
    def trimmed_tables(self) -> dict[str, str | None]:
        """Trimmed tables of every installed plugin: ``{table: column or None}``."""
        return dict(self._trimmed)

    def status(self) -> dict[str, Any]:
        """``{name: {"state": ..., "error": ..., **plugin status}}`` for ``/status``."""
        out: dict[str, Any] = {}
        for name, plugin in self.installed.items():
            entry: dict[str, Any] = {"state": self.states.get(name, "disabled")}
            if name in self.errors:
                entry["error"] = self.errors[name]
            if name in self.enabled:
                try:
                    extra = call_one(plugin, "monmouth_status")
                    if extra:
                        entry.update(extra)
                except Exception as e:
                    entry["status_error"] = f"{type(e).__name__}: {e}"
            out[name] = entry
        return out

    def blame(self, exc: BaseException, hook: str, block: object = None) -> PluginError:
        """Wrap an exception raised inside a hook call as :class:`PluginError`, naming the plugin whose code
        raised it (found by matching the traceback's frames against each enabled plugin's hook functions) and
        the block (``BlockRef``) the hook was called for, if any."""
        codes = {}
        for name in self.enabled:
            fn = getattr(self.installed[name], hook, None)
            if fn is not None and hasattr(fn, "__code__"):
                codes[fn.__code__] = name
        culprit = "?"
        tb = exc.__traceback__
        while tb is not None:
            found = codes.get(tb.tb_frame.f_code)
            if found is not None:
                culprit = found
            tb = tb.tb_next
        return PluginError(culprit, hook, exc, block)

    # -- lifecycle ----------------------------------------------------------------------------------------------------
    def apply_settings(self, settings: Settings) -> list[str]:
        """Enable, disable and reconfigure plugins to match ``settings``. Returns a list of what changed.

        Plugins whose config section changed are restarted (``monmouth_shutdown`` then ``monmouth_startup``
        with the new config). A plugin that fails to start is left disabled with its error in ``/status``;
        the others are unaffected.
        """
        changes: list[str] = []
        old = self.settings
        self.settings = settings
        for name in list(self.enabled):
            if not settings.plugin_enabled(name):
                self._disable(name)
                changes.append(f"disabled {name}")
        for name in self.installed:
            if not settings.plugin_enabled(name):
                continue
            new_cfg = settings.plugins[name].config
            if name in self.enabled:
                old_cfg = old.plugins[name].config if old and name in old.plugins else None
                if old_cfg == new_cfg:
                    self.enabled[name].settings = settings
                    continue
                self._disable(name)
                changes.append(f"reconfigured {name}")
            else:
                changes.append(f"enabled {name}")
            try:
                self._enable(name, settings)
            except Exception as e:
                self.states[name] = "failed"
                self.errors[name] = str(e)
                log.error("plugin %s failed to start: %s", name, e)
        return changes

    def _enable(self, name: str, settings: Settings) -> None:
        plugin = self.installed[name]
        supported = tuple(call_one(plugin, "monmouth_backends") or ("sqlite",))
        if self.db.backend not in supported:
            raise ConfigError(
                f"plugin {name!r} does not support the {self.db.backend} storage backend (it supports: "
                f"{', '.join(supported)}); disable it, or set storage.url to a database it supports")
        trimmed = dict(call_one(plugin, "monmouth_trimmed_tables") or {})
        scripts = call_one(plugin, "monmouth_migrations", backend=self.db.backend) or []
        self.db.migrate(name, scripts, set(trimmed))
        ctx = PluginContext(name, settings.plugins[name].config, settings, self.db, self.metrics, self)
        self.pm.register(plugin, name=name)
        try:
            call_one(plugin, "monmouth_startup", ctx=ctx)
        except Exception:
            self.pm.unregister(name=name)
            raise
        self.enabled[name] = ctx
        self.states[name] = "enabled"
        self.errors.pop(name, None)
        log.info("plugin %s enabled", name)

    def _disable(self, name: str) -> None:
        ctx = self.enabled.pop(name)
        ctx.stopping.set()
        try:
            call_one(self.installed[name], "monmouth_shutdown", ctx=ctx)
        except Exception as e:
            log.error("plugin %s failed to shut down cleanly: %s", name, e)
        if self.pm.is_registered(self.installed[name]):
            self.pm.unregister(name=name)
        self.states[name] = "disabled"
        log.info("plugin %s disabled", name)

    def shutdown(self) -> None:
        """Disable every plugin (``monmouth_shutdown`` on each). Every plugin's ``stopping`` is set first, so that
        their background threads wind down together rather than one after the other."""
        for ctx in self.enabled.values():
            ctx.stopping.set()
        for name in list(self.enabled):
            self._disable(name)

    def committed(self, notification: Any, head: Any) -> None:
        """Call ``monmouth_notification_committed`` on every enabled plugin, isolating failures."""
        for name in list(self.enabled):
            try:
                call_one(self.installed[name], "monmouth_notification_committed", notification=notification, head=head)
            except Exception as e:
                log.error("plugin %s: monmouth_notification_committed failed: %s", name, e)
