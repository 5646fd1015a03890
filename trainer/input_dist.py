"""TorchRec's input distribution of the next batch started before the current batch's step.

A sharded embedding module's forward is three collective phases: the input distribution (an
all-to-all of the per-rank split sizes, then one of the ids themselves), the lookup, and the output
distribution. The first two depend only on the batch's ids, not on the weights, so they can run
while the previous batch trains: the loop agrees on the next batch, starts its split all-to-all
(`start`), trains the current batch, and after that batch's backward issues the next batch's id
all-to-all (`advance`), which then travels during the optimiser step, the ingest hand-over and the
next agreement. When the next forward reaches the module it takes the ids already delivered.
TorchRec's `TrainPipelineSparseDist` does the same through an FX rewrite of the model and its own
loop over a dataloader; the trainer keeps its loop (lockstep agreement, padding, exact offsets) and
hooks the one module whose input is the routed batch as the model receives it.

The weights a step reads are unchanged: the lookup still runs in that step's forward, after the
previous step's update, so training is bit for bit what it was without the lookahead.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import torch
from torchrec.distributed.types import ShardedModule
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from embedding.methods import UnifiedEmbedding
from trainer.errors import TrainerError


@dataclass
class _InFlight:
    features: KeyedJaggedTensor
    ctx: Any
    request: Any
    """The splits' awaitable, then (once advanced) the ids' awaitable."""
    advanced: bool = False


class InputDistAhead:
    """Input distributions started ahead for `module` (a sharded embedding module), consumed in order
    by its forward. A `module` of None (a method whose tables see computed inputs): every call is a no-op
    and forwards run as they are."""

    def __init__(self, module: torch.nn.Module | None) -> None:
        if module is not None and not isinstance(module, ShardedModule):
            raise TrainerError(f"input distribution ahead needs a TorchRec sharded module, got {type(module).__name__}")
        self.module = module
        self._in_flight: deque[_InFlight] = deque()
        if module is not None:
            self._forward = module.forward
            module.forward = self._pipelined_forward  # type: ignore[method-assign]  # instance attribute wins

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def start(self, features: KeyedJaggedTensor) -> None:
        """Start the input distribution of `features`, the module's input in a forward to come."""
        if self.module is None:
            return
        ctx = self.module.create_context()
        self._in_flight.append(_InFlight(features, ctx, self.module.input_dist(ctx, features)))

    def advance(self) -> None:
        """Wait for the split sizes of every started batch, which issues the all-to-all of its ids."""
        for entry in self._in_flight:
            _advance(entry)

    def _pipelined_forward(self, features: KeyedJaggedTensor, *args: Any, **kwargs: Any) -> Any:
        if not self._in_flight:
            return self._forward(features, *args, **kwargs)
        entry = self._in_flight[0]
        if entry.features is not features:
            raise TrainerError(
                "the sharded embedding module was called with another batch than the one whose input "
                f"distribution was started ({self.in_flight} in flight); expected the started batches in order"
            )
        _advance(self._in_flight.popleft())  # only this one: a batch started after it advances after backward
        return self.module.compute_and_output_dist(entry.ctx, entry.request.wait())  # type: ignore[union-attr]


def _advance(entry: _InFlight) -> None:
    if not entry.advanced:
        entry.request, entry.advanced = entry.request.wait(), True


def routed_module(unified: UnifiedEmbedding | None) -> torch.nn.Module | None:
    """The sharded module that receives the model's sparse input unchanged: the unified table's
    embedding-bag collection (fed the routed batch) once sharded, None for every other method."""
    if unified is not None and isinstance(unified.ebc, ShardedModule):
        return unified.ebc
    return None
