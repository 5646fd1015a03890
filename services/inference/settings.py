"""Settings of the inference service (env prefix `UNIREC_SERVE_`, shared ones `UNIREC_`).

    UNIREC_SERVE_PORT=8000 UNIREC_SERVE_API_KEY=s3cret UNIREC_HOME=/var/lib/unirec unirec serve

The fields inherited from `CommonSettings` (`home`, `redis_url`, `kafka_bootstrap`, `log_level`)
keep their process-wide names (`UNIREC_HOME`, `UNIREC_REDIS_URL`, ...); the model store and the
notification channel are the registry's (`UNIREC_MODEL_STORE`, `UNIREC_MODEL_CHANNEL`, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from core.settings import CommonSettings
from registry.settings import ChurnKeySettings, RegistrySettings


class ServeSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="UNIREC_SERVE_", extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64)
    """uvicorn worker processes; each loads its own copy of the model and follows the registry."""
    api_key: SecretStr | None = None
    """Required (header `X-API-Key` or `Authorization: Bearer`) on admin routes when set."""
    predict_requires_key: bool = False
    """Also require the API key on `POST /v1/predict`."""
    max_batch: int = Field(1024, ge=1)
    """Events per predict request; more is answered 413."""
    max_body_bytes: int = Field(8 << 20, ge=1024)
    """Request body limit in bytes; more is answered 413."""
    request_timeout_s: float = Field(2.0, gt=0)
    """A predict request still running after this long is answered 504."""
    schema_: str | None = Field(
        None, validation_alias="UNIREC_SERVE_SCHEMA", serialization_alias="schema"
    )
    """Feature schema (shipped name or YAML path) every loaded model must match; None accepts the artifact's."""
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    """Where models live and how exports are announced (`UNIREC_MODEL_*`, shared with the trainer)."""
    churn: ChurnKeySettings = Field(default_factory=ChurnKeySettings)
    """Where the trainer's churn figures live in Redis (`UNIREC_CHURN_KEY_PREFIX`)."""
    follow: bool = True
    """Follow the registry (Redis pub/sub, polling as fallback) and swap to new exports."""
    inference_threads: int = Field(2, ge=1, le=64)
    """Forwards larger than `inline_max_events` scored at once per worker, each on one of this many
    long-lived threads; more wait in the batcher's queue (and join its next forwards), within the
    request timeout."""
    batch_window_ms: float = Field(1.0, ge=0, le=50)
    """Dynamic batching: how long a forward waits for predict requests already received (body or
    dependencies not done) to join it. Requests the loop has read join without waiting; a single
    client never waits (nothing else is in flight). 0 joins only those."""
    inline_max_events: int = Field(1024, ge=0)
    """Forwards of up to this many events run on the event loop itself (no thread hop); larger ones on
    the `inference_threads`, while the loop reads the next requests. 0: always on a thread. The
    forward holds the GIL nearly throughout, so a scoring thread does not overlap it with reading
    requests; its hop and GIL hand-offs only cost (batch 64 at 4 connections: 1.3x the requests/s
    inline than with forwards over 64 events on a thread). Requests that arrive meanwhile wait in
    the socket and join the next forward either way."""
    poll_interval_s: float = Field(5.0, gt=0)
    """Seconds between polls of the store's latest version (the fallback when pub/sub is silent or down)."""
    keep_versions: int = Field(3, ge=1, le=32)
    """Previous models kept in memory for `POST /v1/model/rollback`."""
    torch_threads: int | None = Field(1, ge=1)
    """torch intra-op threads per worker; None leaves torch's default (one per core). Serving batches are
    small: parallelism comes from `inference_threads` and `workers`; intra-op threads on top of them
    oversubscribe the cores."""
    access_log: bool = True
    """One JSON log line per request."""

    @property
    def model_store(self) -> str:
        """Where models are read from: `UNIREC_MODEL_STORE`, else `<home>/models`."""
        return self.registry.store or str(Path(self.home) / "models")

    @property
    def expected_schema(self) -> str | None:
        return self.schema_

    def redacted(self) -> dict[str, Any]:
        """The effective configuration for the start-up log (the API key shown only as set/unset)."""
        doc = self.model_dump(mode="json", by_alias=True)
        doc["api_key"] = "set" if self.api_key else None
        return doc
