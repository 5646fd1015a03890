"""Trainer settings (env prefix `UNIREC_TRAINER_`), one frozen object per rank.

Run: `unirec train` (one process) or `torchrun --nproc_per_node 2 -m trainer.main` (N ranks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from core.settings import CommonSettings
from embedding.model import ModelConfig


class TrainerSettings(CommonSettings):
    model_config = SettingsConfigDict(
        env_prefix="UNIREC_TRAINER_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    # where events come from
    topic: str = "events"
    dlq_topic: str | None = None
    """Dead-letter topic for malformed events; default `<topic>.dlq`."""
    start_from: Literal["earliest", "latest"] = "earliest"
    """Where to start when there is no checkpoint."""
    stop_at_end: bool = False
    """Stop (with a final checkpoint) once every assigned partition is drained: for replays and tests."""
    idle_timeout_s: float = Field(0.0, ge=0)
    """With stop_at_end: how long partitions must stay drained before stopping (0: at once)."""

    # the model
    schema_name: str = Field("movielens", validation_alias="UNIREC_TRAINER_SCHEMA")
    """A shipped schema name (embedding/schemas) or a YAML path."""
    model: ModelConfig = Field(
        default_factory=lambda: ModelConfig(method="unified", method_args={"num_rows": 100_000, "num_blocks": 1})
    )
    """The model trained and exported (`embedding.model.ModelConfig`): `UNIREC_TRAINER_MODEL` as JSON, or
    one field at a time, `UNIREC_TRAINER_MODEL__METHOD=robe`, `UNIREC_TRAINER_MODEL__METHOD_ARGS='{...}'`.
    For `unified`, one block: as fast as per-feature tables, 2 blocks 0.6x (bench/results/
    embedding_throughput.md), and no slower end to end with 2 CPU ranks (bench/trainer_throughput.py),
    although the one table then lives on one CPU rank; set `num_blocks` to the rank count to spread
    a table too big for one process over CPU ranks (table-wise). On GPUs the plan is row-wise, any
    block count."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where each rank trains: auto takes its CUDA device (LOCAL_RANK) when torch sees one, else the CPU."""
    pin_cpus: bool = True
    """CPU ranks: each local rank runs on its own equal share of the CPUs the trainer may use
    (`trainer/affinity.py`; 2 ranks on 2 cores: +15% end to end). Off where something else places threads."""

    # optimisation
    batch_size: int = Field(64, ge=1)
    """Events per step at most. 64 from measurement: under backlog batch 1024 trains about 2.4x faster
    from Kafka but costs 0.05 progressive AUC on the first 20k ML-100k events (0.76 -> 0.71; 128
    already costs 0.012), so the larger batch is a choice for replays, not the default."""
    max_wait_ms: int = Field(100, ge=1)
    """A batch is cut when full or when this much time passed since its first event. At `unirec up`'s
    500 events/s over 2 ranks a 64-batch fills in 256 ms, so this bounds the batching delay a fresh
    event waits (bench/results/freshness.md)."""
    sparse_lr: float = Field(0.1, gt=0)
    dense_lr: float = Field(2e-3, gt=0)
    prefetch_batches: int = Field(8, ge=1)
    ingest_process: bool | None = None
    """Poll, decode, featurize and hash in a child process per rank (`trainer/ingest_process.py`)
    instead of a thread of the rank, so kafka-python's Python does not take the training thread's GIL.
    Unset: a child where the rank has a CPU to spare for it (`trainer.affinity.wants_ingest_process`).
    From Kafka on 2 cores (bench/trainer_throughput.py): 1 rank 18,500 events/s with the child against
    14,200 with the thread; 2 ranks, one core each, 13,800 with children against 14,500 with threads."""
    fetch_max_wait_ms: int = Field(50, ge=0)
    """kafka-python `fetch_max_wait_ms`: how long the broker may hold a fetch for data to arrive."""
    max_poll_records: int = Field(0, ge=0)
    """Records per poll (0: max(2 * batch_size, 2000))."""

    # checkpoints and exports
    checkpoint_dir: Path | None = None
    """Default `<home>/checkpoints`."""
    checkpoint_every_s: float = Field(60.0, gt=0)
    checkpoint_every_events: int = Field(0, ge=0)
    """Also checkpoint after this many events (0: time only)."""
    keep_checkpoints: int = Field(3, ge=1)
    export_every_s: float = Field(60.0, ge=0)
    """Full export interval; 0 disables exports."""
    delta_every_s: float = Field(5.0, ge=0)
    """Delta publication interval between full exports; 0 disables deltas."""
    quantization: Literal["int8", "int4", "fp16", "fp32"] = "int8"

    # observability
    metrics_port: int = Field(9400, ge=0)
    """Local rank r (on its node) serves /metrics on metrics_port + r; 0 disables."""
    auc_window: int = Field(5000, ge=100)
    predictions_log: Path | None = None
    """If set, each rank appends `step event_id score label` lines to `<path>.rank<r>` (for audits and tests)."""
    threads: int = Field(1, ge=0)
    """torch intra-op threads per rank (0: cores / world size). 1 by default: the ingest thread needs a
    core too, and 2 spinning OpenMP threads beside it halved end-to-end throughput on 2 cores
    (bench/results/trainer_throughput.md: 6,400 vs 11,200 events/s at batch 1024, 1 rank)."""

    @model_validator(mode="after")
    def _check(self) -> TrainerSettings:
        if self.checkpoint_every_events < 0:
            raise ValueError("checkpoint_every_events must be >= 0")
        return self

    @property
    def dlq(self) -> str:
        return self.dlq_topic or f"{self.topic}.dlq"

    @property
    def checkpoints(self) -> Path:
        return self.checkpoint_dir or self.home / "checkpoints"
