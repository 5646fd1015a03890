"""Where model versions live and how they are announced (env `UNIREC_MODEL_*`), read by the trainer
(which writes versions) and the inference service (which reads them) alike."""

from __future__ import annotations

import re

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.settings import CommonSettings
from registry.notify import DEFAULT_CHANNEL, DEFAULT_LATEST_KEY


class RegistrySettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="UNIREC_MODEL_", extra="forbid", frozen=True)

    store: str = ""
    """A directory, `file://DIR`, or `redis://...` URL; empty: `<home>/models`."""
    retention: int = Field(5, ge=1)
    """Full versions kept (with their deltas); older ones are deleted after each export."""
    channel: str = Field(DEFAULT_CHANNEL, min_length=1)
    """Redis pub/sub channel of export notifications."""
    latest_key: str = Field(DEFAULT_LATEST_KEY, min_length=1)
    """Redis key holding the newest notification."""


class ChurnKeySettings(BaseSettings):
    """Where the trainer writes churn figures in Redis and the service reads them
    (`UNIREC_CHURN_KEY_PREFIX`); the trainer's `ChurnSettings` extends it with the tracking knobs."""

    model_config = SettingsConfigDict(env_prefix="UNIREC_CHURN_", extra="forbid", frozen=True)

    key_prefix: str = "unirec:churn"
    """Redis key prefix; give each training run sharing a Redis server its own."""

    @field_validator("key_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.:-]+", value) or value.endswith(":"):
            raise ValueError(f"key_prefix {value!r} must be letters, digits, '_.:-' and not end with ':'")
        return value
