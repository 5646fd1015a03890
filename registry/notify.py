"""Announcing model versions on Redis: the newest announcement under a key and a pub/sub message on
a channel, both the JSON of `Notification`:

    {"version": "v0000000007+3", "kind": "delta", "base_version": "v0000000007", "seq": 3, ...}

The channel and key names are `RegistrySettings.model_channel` / `model_latest_key`
(`UNIREC_MODEL_CHANNEL`, `UNIREC_MODEL_LATEST_KEY`); the defaults below are their only definition.
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_CHANNEL = "unirec:models"
"""Redis pub/sub channel of export notifications."""
DEFAULT_LATEST_KEY = "unirec:models:latest"
"""Redis key holding the newest notification."""

class Notification(BaseModel):
    """One export announcement (JSON on the channel and under the latest key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str
    """What a service should move to: `v0000000007` (a full export, or the new pointer target) or
    `v0000000007+3` (that version with its deltas 1..3), as in `ServingModel.version`."""
    kind: Literal["full", "delta", "pointer"]
    base_version: str = ""
    """The full version (`version` without the `+seq`)."""
    seq: int = 0
    """Delta sequence number (1, 2, ...) after `base_version`; 0 for a full export."""
    serving: str | None = None
    """What the service should serve now (the pointer when pinned, else the newest version)."""
    store: str = ""
    created_at_ms: int = Field(default_factory=lambda: int(time.time() * 1000))
    watermark_ms: int | None = None


class Publisher:
    """Announces exports on Redis: SET the latest key and PUBLISH on the channel, in one transaction."""

    def __init__(self, url: str, channel: str = DEFAULT_CHANNEL, latest_key: str = DEFAULT_LATEST_KEY) -> None:
        import redis

        self.client = redis.Redis.from_url(url)
        self.channel = channel
        self.latest_key = latest_key

    def publish(self, notification: Notification) -> None:
        payload = notification.model_dump_json().encode()
        tx = self.client.pipeline(transaction=True)
        tx.set(self.latest_key, payload)
        tx.publish(self.channel, payload)
        tx.execute()

    def latest(self) -> Notification | None:
        raw = self.client.get(self.latest_key)
        return Notification.model_validate_json(raw) if raw else None

    def close(self) -> None:
        self.client.close()
