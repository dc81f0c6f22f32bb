"""Checkpoints (placeholder until implemented)."""

from __future__ import annotations

from typing import Any


def maybe_auto_checkpoint(mem: Any, head: int) -> None:
    """Take an automatic checkpoint when due (not implemented yet)."""
    return None
