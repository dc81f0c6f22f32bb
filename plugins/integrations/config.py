"""Config sections shared by the integrations, and secrets from the environment.

Every integration's ``[plugins.<name>]`` model derives from :class:`IntegrationConfig` (``extra="forbid"``, so a
typo is refused naming the key and the file). Secrets are never in ``config.toml``: the config names an
environment variable (``api_key_env = "COMPOSIO_API_KEY"``) and :func:`secret` reads it at startup.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from monmouth.errors import MonmouthError

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class MissingSecretError(MonmouthError, RuntimeError):
    """The environment variable a config names for a secret is unset or empty."""


def secret(env_name: str, what: str, environ: Mapping[str, str] | None = None) -> str:
    """The value of environment variable ``env_name``.

    Raises:
        MissingSecretError: unset or empty (the message names the variable and ``what`` it is for).
    """
    value = (environ if environ is not None else os.environ).get(env_name, "")
    if not value.strip():
        raise MissingSecretError(f"{what}: environment variable {env_name} is not set")
    return value.strip()


def check_env_name(v: str) -> str:
    if not _ENV_NAME.match(v):
        raise ValueError(f"{v!r} is not an environment variable name")
    return v


class IntegrationConfig(BaseModel):
    """Settings every integration has: timeout, retry backoff, circuit breaker.

    Times are in seconds.
    """

    model_config = ConfigDict(extra="forbid")

    #: Timeout of one request to the service (connect, read, write), seconds.
    timeout_s: float = Field(10.0, gt=0, le=600)
    #: Retry delays grow exponentially from ``backoff_initial_s`` (doubling per attempt) up to
    #: ``backoff_max_s``, with full jitter (tenacity ``wait_random_exponential``).
    backoff_initial_s: float = Field(1.0, gt=0, le=3600)
    backoff_max_s: float = Field(300.0, gt=0, le=86_400)
    #: Circuit breaker: open after ``breaker_fail_max`` consecutive failures; after ``breaker_reset_s`` one
    #: trial request is let through (half-open); it closes again on success.
    breaker_fail_max: int = Field(5, ge=1, le=1000)
    breaker_reset_s: float = Field(30.0, gt=0, le=86_400)


class OutboxConfig(IntegrationConfig):
    """An integration that delivers outbox jobs in the background."""

    #: Give up (park the job as failed) after this many attempts; 0 retries until it succeeds.
    max_attempts: int = Field(0, ge=0)
    #: How often the deliverer looks for due work when nothing wakes it, seconds.
    poll_interval_s: float = Field(1.0, gt=0, le=3600)
    #: Delivered jobs stay in the outbox this long (for /status and audits), then are pruned, seconds.
    keep_delivered_s: float = Field(7 * 86_400.0, ge=0)


class TriggerConfig(OutboxConfig):
    """An integration that sends work at memory checkpoints or every N blocks (EigenDA, Othentic, Lagrange)."""

    #: ``blocks``: every ``every_blocks`` blocks (block numbers divisible by it), enqueued inside the engine's
    #: transaction. ``checkpoint``: after each checkpoint of the memory plugin (its manifests), enqueued by
    #: the deliverer once the checkpoint's block is canonical.
    trigger: Literal["blocks", "checkpoint"] = "blocks"
    every_blocks: int = Field(100, ge=1)

