"""The all-gather forms of the trainer's CPU collectives equal what they replace, on a real 2-rank gloo group:
`all_max` = all-reduce MAX, and DDP with `gather_mean_hook` = DDP with its default all-reduce hook."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel

from core.net import free_port
from tests.ranks import spawn_ranks
from trainer.distributed import all_max, gather_mean_hook


def _grads(hook: bool, rank: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)  # the same initial weights on both ranks
    model = torch.nn.Sequential(torch.nn.Linear(40, 300), torch.nn.ReLU(), torch.nn.Linear(300, 1))
    # TorchRec's settings (DefaultDataParallelWrapper); several buckets, as a bigger model has
    ddp = DistributedDataParallel(model, bucket_cap_mb=0.01, gradient_as_bucket_view=True, static_graph=True)
    if hook:
        ddp.register_comm_hook(None, gather_mean_hook)
    torch.manual_seed(100 + rank)  # each rank its own batch
    for _ in range(2):  # the second step reuses DDP's buckets
        ddp.zero_grad()
        ddp(torch.randn(16, 40)).square().mean().backward()
    return {name: p.grad.clone() for name, p in ddp.module.named_parameters()}


def _rank(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        flags = torch.tensor([[rank * 7, 3 - rank], [-5, rank]], dtype=torch.int64)
        reduced = flags.clone()
        dist.all_reduce(reduced, op=dist.ReduceOp.MAX)
        result = {"all_max": all_max(flags), "all_reduce_max": reduced, "local": flags}
        result |= {f"hook.{k}": v for k, v in _grads(True, rank).items()}
        result |= {f"default.{k}": v for k, v in _grads(False, rank).items()}
        save_file(result, str(Path(out, f"rank{rank}.safetensors")))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_gathered_collectives_equal_the_all_reduces(tmp_path: Path) -> None:
    spawn_ranks(_rank, free_port(), str(tmp_path))
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1)]
    for got in ranks:
        assert torch.equal(got["all_max"], got["all_reduce_max"])
        assert torch.equal(got["all_max"], torch.tensor([[7, 3], [-5, 1]]))
        names = [k.removeprefix("default.") for k in got if k.startswith("default.")]
        assert len(names) == 4
        for name in names:
            # bit for bit: a sum of two terms is the same in either order
            assert torch.equal(got[f"hook.{name}"], got[f"default.{name}"]), name
    assert not torch.equal(ranks[0]["local"], ranks[1]["local"]), "each rank must send its own flags"
    # the ranks' own gradients differed, the averaged ones are the same everywhere
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0] if k.startswith("hook."))
