"""The device contract of the trainer's collectives, checked on CPU.

On CUDA the model's collectives run on GPU tensors, while the loop's control collectives (step
agreement, offsets, counters, export masks, checkpoint barriers) use CPU tensors; NCCL has no CPU
collectives, so the process group the trainer creates for CUDA must also have a CPU backend. A real
trainer run here records the device of every tensor each collective receives; each must be served
by the backend `process_group_backend(cuda=True)` maps it to. A pure `nccl` group (the mistake this
guards against) fails the same check.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

from embedding.events import Event
from tests.trainer.conftest import create_topic, send
from trainer.distributed import backend_devices, process_group_backend

COLLECTIVES = (
    "all_reduce",
    "all_gather",
    "all_gather_into_tensor",
    "all_gather_single",
    "all_to_all",
    "all_to_all_single",
    "broadcast",
    "gather",
    "reduce",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "barrier",
)


def tensors_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, list | tuple):
            found.extend(v for v in value if isinstance(v, torch.Tensor))
    return found


def test_backend_strings_map_devices_like_torch() -> None:
    assert backend_devices("gloo") == {"cpu": "gloo", "cuda": "gloo"}
    assert backend_devices("nccl") == {"cuda": "nccl"}
    assert backend_devices(process_group_backend(cuda=True)) == {"cpu": "gloo", "cuda": "nccl"}
    assert process_group_backend(cuda=False) == "gloo"


@pytest.mark.integration
def test_every_collective_of_a_real_run_has_a_backend_for_its_device(
    tmp_path: Path, kafka_bootstrap: str, redis_url: str, topic_name: str, monkeypatch: pytest.MonkeyPatch,
    no_rendezvous_env: None,
) -> None:  # fmt: skip
    from trainer.loop import Trainer
    from trainer.settings import TrainerSettings

    create_topic(kafka_bootstrap, topic_name, partitions=2)
    events = [
        Event(event_id=f"e{i}", ts=1_700_000_000_000 + i, label=i % 2, sparse={"user": i % 50, "movie": i % 30})
        for i in range(600)
    ]
    send(kafka_bootstrap, topic_name, events, partitions=2)

    seen: list[tuple[str, str]] = []

    def spy(name: str, original: Any) -> Any:
        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            devices = {t.device.type for t in tensors_of(args, kwargs)} or {"cpu"}  # barrier: the CPU backend
            seen.extend((name, d) for d in devices)
            return original(*args, **kwargs)

        return wrapper

    for name in COLLECTIVES:
        monkeypatch.setattr(dist, name, spy(name, getattr(dist, name)))
    settings = TrainerSettings(
        home=tmp_path,
        kafka_bootstrap=kafka_bootstrap,
        redis_url=redis_url,
        topic=topic_name,
        batch_size=64,
        metrics_port=0,
        stop_at_end=True,
        checkpoint_every_events=200,
        export_every_s=0.1,
        delta_every_s=0.1,
        threads=1,
    )
    assert Trainer(settings).run() == 0
    ops = {name for name, _ in seen}
    assert {"all_reduce", "barrier"} <= ops, f"the loop's control collectives were not observed: {sorted(ops)}"

    cuda_group = backend_devices(process_group_backend(cuda=True))
    unserved = sorted({(name, device) for name, device in seen if device not in cuda_group})
    assert not unserved, f"collectives on devices the CUDA process group has no backend for: {unserved}"
    pure_nccl = backend_devices("nccl")
    assert any(device not in pure_nccl for _, device in seen), "a pure NCCL group would have to fail this check"


def test_one_rank_wrapper_places_the_dense_network_on_the_rank_device() -> None:
    """At one rank no DDP wraps the dense network, and DDP's wrapper is what moved it to the device
    in TorchRec: the one-rank wrapper must move it itself (on CUDA its layers stayed on the CPU).
    The `meta` device stands in for CUDA here."""
    from types import SimpleNamespace

    from trainer.distributed import _NoDataParallel

    dense = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    dmp = SimpleNamespace(_dmp_wrapped_module=dense)
    _NoDataParallel().wrap(dmp, env=None, device=torch.device("meta"))  # type: ignore[arg-type]
    assert dmp._dmp_wrapped_module is dense, "unwrapped: names stay those of the module"
    placed = {name: t.device.type for name, t in [*dense.named_parameters(), *dense.named_buffers()]}
    assert set(placed.values()) == {"meta"}, placed
