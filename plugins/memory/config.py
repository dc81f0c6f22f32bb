"""The ``[plugins.memory]`` config section."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class MemoryConfig(BaseModel):
    """``[plugins.memory]``: agents, keys, limits, retention and checkpoints.

    Relative paths (``key_dir``, ``checkpoint_dir``) are resolved against the directory of the database file.
    """

    model_config = ConfigDict(extra="forbid")

    #: Agent addresses (0x-prefixed hex) registered at startup, in addition to those registered through the
    #: API or the CLI.
    agents: list[str] = []
    #: Where per-agent keys come from: "file" (one key file per agent in key_dir, created on registration,
    #: destroyed on forget) or "env" (the hex key in <key_env_prefix><ADDRESS> for each agent).
    key_source: Literal["file", "env"] = "file"
    key_dir: str = "memory-keys"
    key_env_prefix: str = "MONMOUTH_MEMORY_KEY_"
    #: Largest content of one memory item, bytes.
    max_content_bytes: int = Field(65_536, ge=1, le=16 * 1024 * 1024)
    #: Largest TTL of working memory, seconds and blocks.
    max_ttl_seconds: int = Field(30 * 86_400, ge=1)
    max_ttl_blocks: int = Field(1_000_000, ge=1)
    #: Per-block roots and leaf history are kept this many blocks behind the head.
    retention_blocks: int = Field(100_000, ge=1)
    #: Prune roots and leaf history every this many blocks.
    prune_every: int = Field(64, ge=1)
    #: Chain-derived episodic memories: transactions sent by or to an agent, and token transfers touching it.
    chain_episodes: bool = True
    #: Directory of checkpoints (one .sqlite and one .json manifest each).
    checkpoint_dir: str = "checkpoints"
    #: Take a checkpoint automatically every this many blocks (0: never).
    checkpoint_every: int = Field(0, ge=0)
    #: How many checkpoints to keep (automatic pruning after each automatic checkpoint).
    checkpoint_keep: int = Field(5, ge=1)
    #: Embed items for recall by meaning in a background thread when the rag plugin is enabled.
    embed: bool = True
    #: Default recency half-life of recall, seconds.
    recency_half_life_s: float = Field(86_400.0, gt=0)

    @field_validator("agents")
    @classmethod
    def _addresses(cls, v: list[str]) -> list[str]:
        for a in v:
            if not (a.startswith("0x") and len(a) == 42):
                raise ValueError(f"{a!r} is not a 0x-prefixed 20-byte hex address")
            bytes.fromhex(a[2:])
        return v
