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

At world size 1 every distribution of a table-wise sharded module is the identity, yet TorchRec still
runs it: two all-to-alls of the ids and one of the pooled output through a one-rank gloo group,
about 70-110 us each plus their Python, some 0.4 ms of a 3 ms batch-64 step (more than the whole
lookup). There the hook runs the module's lookups on the batch as it is and builds the output as
TorchRec's output awaitable does (`construct_output_kt`): the same kernels in the same order, so
the step is bit for bit TorchRec's, and the module, its state dict and the checkpoints are unchanged.
The first batch takes TorchRec's own path, which sets up the module's input layout; the local path
is used only when that layout is the identity (no feature permute, no mean-pooling callback, every
sharding table-wise, no variable batch), else every batch keeps TorchRec's path.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import torch
from torchrec.distributed.embedding_types import ShardingType
from torchrec.distributed.embeddingbag import construct_output_kt
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
        self._local: bool | None = False if module is None or _world_size(module) > 1 else None
        """Whether a batch skips the distributions (world size 1); None until TorchRec's first input
        distribution has set up the module's layout."""
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
        if self._local:
            self._in_flight.append(_InFlight(features, None, None, advanced=True))
            return
        ctx = self.module.create_context()
        self._in_flight.append(_InFlight(features, ctx, self.module.input_dist(ctx, features)))
        self._decide(features)

    def advance(self) -> None:
        """Wait for the split sizes of every started batch, which issues the all-to-all of its ids."""
        for entry in self._in_flight:
            _advance(entry)

    @property
    def local(self) -> bool:
        """Whether batches skip TorchRec's distributions (world size 1, identity layout: module doc)."""
        return bool(self._local)

    def _pipelined_forward(self, features: KeyedJaggedTensor, *args: Any, **kwargs: Any) -> Any:
        if not self._in_flight:
            if self._local:
                return self._local_forward(features)
            out = self._forward(features, *args, **kwargs)
            self._decide(features)
            return out
        entry = self._in_flight[0]
        if entry.features is not features:
            raise TrainerError(
                "the sharded embedding module was called with another batch than the one whose input "
                f"distribution was started ({self.in_flight} in flight); expected the started batches in order"
            )
        self._in_flight.popleft()
        if entry.request is None:
            return self._local_forward(features)
        _advance(entry)  # only this one: a batch started after it advances after backward
        return self.module.compute_and_output_dist(entry.ctx, entry.request.wait())  # type: ignore[union-attr]

    def _decide(self, features: KeyedJaggedTensor) -> None:
        """After TorchRec's first input distribution at world size 1 (which sets up the module's
        layout): whether later batches take the local path."""
        if self._local is None:
            self._local = _identity_layout(self.module, features)

    def _local_forward(self, features: KeyedJaggedTensor) -> Any:
        """The module's forward at world size 1 without its distributions (module doc)."""
        m: Any = self.module
        per_sharding = features.split(m._feature_splits)
        embeddings = [lookup(f) for lookup, f in zip(m._lookups, per_sharding, strict=True)]
        return construct_output_kt(embeddings, m._embedding_names, m._embedding_dims)


def _world_size(module: torch.nn.Module) -> int:
    return int(module._env.world_size)  # type: ignore[union-attr]


def _identity_layout(module: Any, features: KeyedJaggedTensor) -> bool:
    """Whether TorchRec's input distribution of `module` leaves a batch as it is (checked once set up)."""
    return (
        not module._has_uninitialized_input_dist
        and not module._has_features_permute
        and not module._has_mean_pooling_callback
        and all(t == ShardingType.TABLE_WISE.value for t in module._sharding_types)
        and not features.variable_stride_per_key()
    )


def _advance(entry: _InFlight) -> None:
    if not entry.advanced:
        entry.request, entry.advanced = entry.request.wait(), True


def routed_module(unified: UnifiedEmbedding | None) -> torch.nn.Module | None:
    """The sharded module that receives the model's sparse input unchanged: the unified table's
    embedding-bag collection (fed the routed batch) once sharded, None for every other method."""
    if unified is not None and isinstance(unified.ebc, ShardedModule):
        return unified.ebc
    return None
