"""The ``[plugins.memory]`` config section."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator

from monmouth.chain import check_address

from . import registry as _registry


class RegistryConfig(BaseModel):
    """One ``[[plugins.memory.registries]]`` entry: agents registered from an on-chain registry's events
    (see :mod:`.registry`). Every check names its field."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The registry contract's address (0x-prefixed, 20 bytes).
    address: str
    #: The registration event's Solidity signature with parameter names and ``indexed`` markers, e.g.
    #: ``"AgentRegistered(address indexed agent, string name)"``.
    event: str
    #: Optional unregistration event (same format; it must have the ``agent`` parameter too).
    unregister_event: str | None = None
    #: The parameter (of both events) holding the agent's address; must be of type ``address``.
    agent: str = Field("agent", validate_default=True)
    #: Optional non-indexed ``string`` parameter of ``event`` used as the agent's label.
    label: str | None = None

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        return check_address(v)

    @field_validator("event", "unregister_event")
    @classmethod
    def _signature(cls, v: str | None) -> str | None:
        if v is not None:
            _registry.parse_event(v)
        return v

    @field_validator("agent")
    @classmethod
    def _agent(cls, v: str, info: ValidationInfo) -> str:
        for field in ("event", "unregister_event"):
            sig = info.data.get(field)
            if sig is not None:
                try:
                    _registry.check_param(_registry.parse_event(sig), v, "address")
                except ValueError as e:
                    raise ValueError(f"{e} ({field})") from None
        return v

    @field_validator("label")
    @classmethod
    def _label(cls, v: str | None, info: ValidationInfo) -> str | None:
        sig = info.data.get("event")
        if v is not None and sig is not None:
            _registry.check_param(_registry.parse_event(sig), v, "string", indexed_ok=False)
        return v


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
    #: On-chain registries whose events register (and optionally unregister) agents; off when empty.
    registries: list[RegistryConfig] = []

    _registry_index: dict[bytes, dict[bytes, _registry.Matcher]] = PrivateAttr(default_factory=dict)

    @field_validator("agents")
    @classmethod
    def _addresses(cls, v: list[str]) -> list[str]:
        return [check_address(a) for a in v]

    @field_validator("registries")
    @classmethod
    def _registries(cls, v: list[RegistryConfig]) -> list[RegistryConfig]:
        _registry.build_index(v)  # the same event of the same address twice
        return v

    def model_post_init(self, context: Any) -> None:
        self._registry_index = _registry.build_index(self.registries)

    @property
    def registry_index(self) -> dict[bytes, dict[bytes, _registry.Matcher]]:
        """``{registry address: {topic0: Matcher}}``, built once at validation (empty: no registry)."""
        return self._registry_index
