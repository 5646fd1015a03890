"""Settings shared by every unirec process (env prefix `UNIREC_`).

Each process builds one frozen settings object at start; component settings (trainer, service)
extend `CommonSettings`. Defaults point at the local infrastructure of `unirec infra up`.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="UNIREC_", extra="forbid", frozen=True, populate_by_name=True)

    # Explicit env names, all with the UNIREC_ prefix: component settings (UNIREC_TRAINER_*,
    # UNIREC_SERVE_*) inherit these fields and still read them from UNIREC_HOME, UNIREC_KAFKA_BOOTSTRAP, ...
    # Never an unprefixed alias: env names match case-insensitively, so "home" would read $HOME.
    # Code passes them by field name (populate_by_name).
    home: Path = Field(Path(".unirec"), validation_alias="UNIREC_HOME")
    """Working directory for local servers, caches, checkpoints and the model store."""
    kafka_bootstrap: str = Field("127.0.0.1:9092", validation_alias="UNIREC_KAFKA_BOOTSTRAP")
    redis_url: str = Field("redis://127.0.0.1:6379/0", validation_alias="UNIREC_REDIS_URL")
    log_level: str = Field("INFO", validation_alias="UNIREC_LOG_LEVEL")

    @field_validator("kafka_bootstrap")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        for server in value.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"kafka_bootstrap entry {server!r} is not host:port")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        if urlparse(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"redis_url {value!r} must start with redis://, rediss:// or unix://")
        return value

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        if value.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError(f"log_level {value!r} is not one of DEBUG, INFO, WARNING, ERROR")
        return value.upper()

    @property
    def kafka_endpoint(self) -> tuple[str, int]:
        """The first bootstrap server as (host, port): where `infra up` starts the local broker."""
        host, _, port = self.kafka_bootstrap.split(",")[0].strip().rpartition(":")
        return host, int(port)

    @property
    def redis_endpoint(self) -> tuple[str, int]:
        url = urlparse(self.redis_url)
        return url.hostname or "127.0.0.1", url.port or 6379
