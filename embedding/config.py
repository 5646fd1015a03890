"""`ModelConfig`: everything needed to rebuild the model besides the feature schema (stored in
checkpoints and export manifests as JSON). Kept apart from `embedding.model` so readers of manifests
(`unirec models list`) do not import torch."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str = "unified"
    method_args: dict[str, Any] = Field(default_factory=lambda: {"num_rows": 100_000})
    dense_arch: tuple[int, ...] = (64, 32)
    cross_layers: int = Field(2, ge=0)
    cross_rank: int = Field(16, ge=1)
    over_arch: tuple[int, ...] = (64, 32)
    seed: int = 0
