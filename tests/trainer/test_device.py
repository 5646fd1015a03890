"""Host -> device staging of batches (trainer/device.py): a no-op on CPU, pinned async copies on CUDA."""

from __future__ import annotations

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from trainer.device import DeviceBatch, HostToDevice


def batch(n: int = 4) -> tuple[KeyedJaggedTensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([1, 2, 0, 1] * 2)[: 2 * n]
    kjt = KeyedJaggedTensor(
        keys=["a", "b"],
        values=torch.arange(int(lengths.sum()), dtype=torch.int64),
        lengths=lengths,
        weights=torch.rand(int(lengths.sum())),
    )
    return kjt, torch.randn(n, 3), (torch.arange(n) % 2).float(), torch.ones(n)


def test_on_cpu_stage_and_ready_return_the_batch_itself_unpinned_uncopied() -> None:
    h2d = HostToDevice(torch.device("cpu"))
    kjt, dense, labels, weights = batch()
    staged = h2d.stage(kjt, dense, labels, weights)
    assert staged.copied is None and staged.size == 4
    assert staged.sparse is kjt and staged.dense is dense and staged.labels is labels and staged.weights is weights
    assert h2d.ready(staged) is staged
    assert not staged.dense.is_pinned() and not staged.sparse.values().is_pinned()


def test_prepare_stages_each_batch_once_in_the_ingest_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """`Trainer.prepare` (run by the ingest thread) stages the unpadded batch; an empty one is not staged."""
    from embedding.events import Event, Featurizer
    from embedding.schema import load_schema
    from trainer.loop import Trainer

    staged: list[DeviceBatch] = []
    real_stage = HostToDevice.stage

    def spy_stage(self: HostToDevice, *tensors: object) -> DeviceBatch:
        staged.append(real_stage(self, *tensors))  # type: ignore[arg-type]
        return staged[-1]

    monkeypatch.setattr(HostToDevice, "stage", spy_stage)
    fake = _FakeTrainer()
    fake.stage = Trainer.stage.__get__(fake)  # type: ignore[attr-defined]
    prepare = Trainer.prepare.__get__(fake)  # the real methods, on a trainer without a model
    featurizer = Featurizer(load_schema("movielens"))
    events = [Event(event_id=str(i), ts=i, label=i % 2, sparse={"user": i, "movie": i % 5}) for i in range(6)]
    out = prepare(featurizer(events))
    assert out is not None and out.routed is None and staged == [out.staged] and out.staged.size == 6
    assert out.staged.weights.tolist() == [1.0] * 6
    assert prepare(featurizer([])) is None and len(staged) == 1


class _FakeTrainer:
    """Just what `Trainer.prepare` and `Trainer.stage` read: no unified table, a CPU stager."""

    unified = None
    h2d = HostToDevice(torch.device("cpu"))


@pytest.mark.gpu
def test_on_cuda_stage_copies_pinned_batches_on_a_side_stream() -> None:
    device = torch.device("cuda", torch.cuda.current_device())
    h2d = HostToDevice(device)
    kjt, dense, labels, weights = batch()
    staged = h2d.stage(kjt, dense, labels, weights)
    assert staged.copied is not None
    assert staged.dense.device == device and staged.sparse.values().device == device
    on = h2d.ready(staged)
    torch.cuda.current_stream(device).synchronize()
    torch.testing.assert_close(on.dense.cpu(), dense)
    torch.testing.assert_close(on.labels.cpu(), labels)
    torch.testing.assert_close(on.weights.cpu(), weights)
    torch.testing.assert_close(on.sparse.values().cpu(), kjt.values())
    torch.testing.assert_close(on.sparse.lengths().cpu(), kjt.lengths())
    torch.testing.assert_close(on.sparse.weights().cpu(), kjt.weights())
    assert kjt.pin_memory().values().is_pinned(), "the source of a non_blocking copy must be pinned"
