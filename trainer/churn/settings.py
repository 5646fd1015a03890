"""Churn-tracking settings (env prefix `UNIREC_CHURN_`).

A component block, not a process: the trainer builds one `ChurnSettings()` next to its own settings
and passes it to `ChurnTracker` together with the Redis URL of its `CommonSettings`, so this class
does not repeat the common fields (home, Kafka, Redis, log level).
"""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from registry.settings import ChurnKeySettings


class ChurnSettings(ChurnKeySettings):
    """The tracking knobs; `key_prefix` (shared with the service) comes from `ChurnKeySettings`."""

    model_config = SettingsConfigDict(env_prefix="UNIREC_CHURN_", extra="forbid", frozen=True)

    enabled: bool = True
    window_s: float = Field(60.0, gt=0)
    """Length of one window of event time; windows are aligned to the Unix epoch, so all ranks agree."""
    lg_k: int = Field(14, ge=5, le=20)
    """log2 of the nominal entries of each window's theta sketch: relative standard error 1/sqrt(2^lg_k)
    (0.8% at 14) on distinct counts; at most 2^(lg_k+1) * 8 bytes for the open window."""
    union_lg_k: int = Field(16, ge=5, le=22)
    """log2 of the entries of the running union of all earlier windows ("new" = window minus this union).
    Larger than lg_k so the union keeps the windows' resolution until it holds 2^(union_lg_k-lg_k) windows'
    worth of distinct IDs; beyond that the error of `new` grows like sqrt(union size)."""
    history_windows: int = Field(8, ge=1, le=64)
    """Cohorts kept for the ID-lifetime summary: the new-ID sketch of each of the last N windows."""
    stale_steps: int = Field(1000, ge=1)
    """A row counts as stale when no rank updated it for this many steps (resolved to whole windows; the
    shares are recomputed, one pass over the table, every stale_steps / 16 steps)."""
    ttl_s: int = Field(7 * 24 * 3600, ge=60)
    """Lifetime of every key written to Redis."""
    finalize_grace_windows: int = Field(2, ge=0)
    """A window waits for every rank's part until this many later windows closed here (and at least 2 s
    of wall clock passed: a replay closes windows faster than ranks publish them); then it is merged
    from the parts at hand and marked partial."""
    max_pending_windows: int = Field(64, ge=1)
    """Windows kept for re-publication while Redis is unreachable; older ones are dropped (and logged)."""
    max_pending_mib: float = Field(64.0, gt=0)
    """The same bound in serialised bytes (sketches, row bitmaps, summaries) waiting for Redis."""
    redis_timeout_s: float = Field(0.5, gt=0)
    retry_s: float = Field(5.0, ge=0)
    """Wall-clock pause after a failed Redis call before the next try, so an outage costs the hot path nothing."""
    keep_summaries: int = Field(10_000, ge=1)
    """Window summaries kept in the Redis index that `unirec churn report` reads."""

    @model_validator(mode="after")
    def _check(self) -> ChurnSettings:
        if self.union_lg_k < self.lg_k:
            raise ValueError(f"union_lg_k ({self.union_lg_k}) must be >= lg_k ({self.lg_k})")
        if self.window_s * 1000 != int(self.window_s * 1000):
            raise ValueError(f"window_s {self.window_s} must be a whole number of milliseconds")
        return self

    @property
    def window_ms(self) -> int:
        return int(self.window_s * 1000)
