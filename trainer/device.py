"""Host -> device transfer of training batches, one copy per batch, overlapped with the step.

On CUDA, `stage` (called in the ingest thread, right after a batch is featurized and routed) pins
the batch's tensors (KJT values/lengths/weights, dense features, labels, example weights) and
launches their copies with `non_blocking=True` on a dedicated copy stream, so the copy of the next
batch runs while the training thread's current step occupies the compute stream. `ready` (called
in the training thread) makes the compute stream wait for that copy and ties the device memory to
it (`record_stream`), so the caching allocator does not reuse it while the step still reads it.

On CPU both are no-ops that return the batch's own tensors: the CPU run goes through the very same
code, with nothing pinned and nothing copied.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor


@dataclass(frozen=True)
class DeviceBatch:
    """A padded batch's model input on the device (`pad_batch`'s four tensors), and the copy's event."""

    sparse: KeyedJaggedTensor
    dense: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor
    copied: torch.cuda.Event | None = None
    """Recorded on the copy stream after the copies (None: nothing was copied)."""

    @property
    def size(self) -> int:
        return int(self.labels.shape[0])


class HostToDevice:
    """Stages batches onto `device` (one instance per trainer: one copy stream)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self._stream = torch.cuda.Stream(device) if self.cuda else None

    def stage(
        self, sparse: KeyedJaggedTensor, dense: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor
    ) -> DeviceBatch:
        """Pin and launch the copies of one batch (returns at once on CUDA; the batch itself on CPU)."""
        if self._stream is None:
            return DeviceBatch(sparse, dense, labels, weights)
        with torch.cuda.stream(self._stream):
            moved = DeviceBatch(
                sparse=sparse.pin_memory().to(self.device, non_blocking=True),
                dense=dense.pin_memory().to(self.device, non_blocking=True),
                labels=labels.pin_memory().to(self.device, non_blocking=True),
                weights=weights.pin_memory().to(self.device, non_blocking=True),
                copied=torch.cuda.Event(),
            )
            moved.copied.record(self._stream)  # type: ignore[union-attr]
        return moved

    def ready(self, batch: DeviceBatch) -> DeviceBatch:
        """Order the current (compute) stream after `batch`'s copies; the batch, usable there."""
        if batch.copied is None:
            return batch
        compute = torch.cuda.current_stream(self.device)
        compute.wait_event(batch.copied)
        batch.sparse.record_stream(compute)
        for tensor in (batch.dense, batch.labels, batch.weights):
            tensor.record_stream(compute)
        return batch
