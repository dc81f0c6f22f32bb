"""Monmouth: a sidecar beside a Reth node that turns ExEx notifications into a reorg-safe
knowledge base and memory for AI agents.

The import name is ``monmouth``; the sources live in ``sidecar/`` of the repository.
"""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

#: Decorator plugin authors use to implement hooks: ``@monmouth.hookimpl``.
hookimpl = pluggy.HookimplMarker("monmouth")

__all__ = ["__version__", "hookimpl"]
