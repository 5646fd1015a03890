"""Checkpoints: sharded model + optimiser state + Kafka offsets, written atomically.

    <dir>/ckpt-<step>/meta.json             step, events, offsets per partition, watermark, model config, schema
                     /state/                torch.distributed.checkpoint: model + fused sparse optimiser (sharded)
                     /dense_optim.safetensors   Adam state of the replicated dense part (rank 0)

Every rank writes its shards into `.tmp-ckpt-<step>`; rank 0 then writes meta.json, fsyncs and
renames the directory, so a directory named ckpt-* is always complete. The last K are kept.
Nothing here is a pickle: DCP writes tensors and its own metadata, the rest is safetensors + JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file

from core.durable import fsync_dir
from trainer.errors import TrainerError

META = "meta.json"
_PREFIX = "ckpt-"


@dataclass(frozen=True)
class CheckpointMeta:
    step: int
    events: int
    offsets: dict[int, int]
    watermark_ms: int
    topic: str
    model: dict[str, Any]
    schema: dict[str, Any]
    created: float

    def to_json(self) -> dict[str, Any]:
        doc = self.__dict__.copy()
        doc["offsets"] = {str(k): v for k, v in self.offsets.items()}
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> CheckpointMeta:
        doc = dict(doc)
        doc["offsets"] = {int(k): int(v) for k, v in doc["offsets"].items()}
        return cls(**doc)


def latest_checkpoint(directory: Path) -> Path | None:
    done = sorted(p for p in directory.glob(f"{_PREFIX}*") if (p / META).is_file())
    return done[-1] if done else None


def read_meta(path: Path) -> CheckpointMeta:
    try:
        return CheckpointMeta.from_json(json.loads((path / META).read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TrainerError(f"{path / META}: unreadable checkpoint metadata: {exc}") from exc


def _dense_optim_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    sd = opt.state_dict()
    tensors = {
        f"{idx}.{key}": value.detach().reshape(-1) if value.dim() == 0 else value.detach()
        for idx, state in sd["state"].items()
        for key, value in state.items()
        if isinstance(value, torch.Tensor)
    }
    return {k: v.contiguous().cpu() for k, v in tensors.items()}, sd["param_groups"]


def save_checkpoint(
    directory: Path,
    meta: CheckpointMeta,
    model: torch.nn.Module,
    dense_opt: torch.optim.Optimizer,
    keep: int,
) -> Path:
    """Collective: every rank calls it with the same meta."""
    rank = dist.get_rank()
    final = directory / f"{_PREFIX}{meta.step:012d}"
    tmp = directory / f".tmp-{_PREFIX}{meta.step:012d}"
    if rank == 0:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    dist.barrier()
    dcp.save(_sharded_state(model), checkpoint_id=str(tmp / "state"))
    if rank == 0:
        tensors, groups = _dense_optim_tensors(dense_opt)
        save_file(tensors, str(tmp / "dense_optim.safetensors"), metadata={"param_groups": json.dumps(groups)})
        with open(tmp / META, "w") as f:
            json.dump(meta.to_json(), f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        for sub in (tmp, tmp / "state"):
            fsync_dir(sub)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        fsync_dir(directory)
        for old in sorted(p for p in directory.glob(f"{_PREFIX}*") if (p / META).is_file())[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def _sharded_state(model: torch.nn.Module) -> dict[str, Any]:
    """What each rank saves and loads through torch.distributed.checkpoint: the model, and the fused
    sparse optimiser's state where this rank holds tables (a rank that holds none, e.g. rank 1 of
    two with the unified table as one table-wise block, has an empty one, which DCP cannot name)."""
    state: dict[str, Any] = {"model": model.state_dict()}
    sparse = model.fused_optimizer.state_dict()  # type: ignore[operator]
    if sparse.get("state"):  # {"state": {}} where the rank holds no table
        state["sparse_optim"] = sparse
    return state


def load_checkpoint(path: Path, model: torch.nn.Module, dense_opt: torch.optim.Optimizer) -> CheckpointMeta:
    """Collective: restore model, both optimisers; return the metadata (offsets, step, ...)."""
    meta = read_meta(path)
    state = _sharded_state(model)
    dcp.load(state, checkpoint_id=str(path / "state"))
    model.load_state_dict(state["model"])
    if "sparse_optim" in state:
        model.fused_optimizer.load_state_dict(state["sparse_optim"])  # type: ignore[operator]
    dense_path = path / "dense_optim.safetensors"
    tensors = load_file(str(dense_path))
    from safetensors import safe_open

    with safe_open(str(dense_path), "pt") as f:
        groups = json.loads(f.metadata()["param_groups"])
    current = dense_opt.state_dict()
    restored: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        idx, key = name.split(".", 1)
        restored.setdefault(int(idx), {})[key] = tensor
    for state_ in restored.values():
        if "step" in state_:
            state_["step"] = state_["step"].reshape(())
    current["state"] = restored
    current["param_groups"] = groups
    dense_opt.load_state_dict(current)
    return meta


class CheckpointClock:
    """Decides when the next checkpoint is due (seconds or events since the last one)."""

    def __init__(self, every_s: float, every_events: int) -> None:
        self.every_s = every_s
        self.every_events = every_events
        self.last_time = time.monotonic()
        self.last_events = 0

    def due(self, events: int) -> bool:
        if self.every_events and events - self.last_events >= self.every_events:
            return True
        return time.monotonic() - self.last_time >= self.every_s

    def mark(self, events: int) -> None:
        self.last_time = time.monotonic()
        self.last_events = events

    @property
    def age(self) -> float:
        return time.monotonic() - self.last_time
