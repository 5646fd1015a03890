"""Process group, sharding plan and optimisers for the model.

On CPU the planner may choose what fbgemm's CPU kernels support (table-wise, column-wise, data
parallel); the unified table is stored as row blocks, so table-wise placement of blocks spreads one
logical table over the ranks. On CUDA the plan is row-wise for every embedding table (NCCL; the
loop's CPU control tensors go through gloo in the same process group).
The sparse optimiser (row-wise Adagrad) runs fused in backward on every TorchRec table, which
includes ROBE/HashedNet arrays (tables of 4-element rows) and MLET's inner tables; dense parameters
(the network, MLET projections, path-QR maps) use Adam (fused), averaged by DDP across ranks (on
2 CPU ranks through `gather_mean_hook`; one rank: no DDP wrapper, nothing to average).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import (
    DataParallelWrapper,
    DefaultDataParallelWrapper,
    DistributedModelParallel,
    ShardingEnv,
)
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.types import ShardingPlan, ShardingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

from core.net import free_port
from embedding.model import DCNModel


def process_group_backend(cuda: bool) -> str:
    """The backend string of the trainer's process group.

    On CUDA the model's collectives (TorchRec's all-to-alls, DDP) run on GPU tensors through NCCL,
    while the loop's control collectives (step agreement, offsets, export masks, checkpoint
    barriers) use small CPU tensors, which NCCL cannot reduce: the group gets both backends."""
    return "cpu:gloo,cuda:nccl" if cuda else "gloo"


def backend_devices(backend: str) -> dict[str, str]:
    """Device type -> backend for a process-group backend string, as torch.distributed maps it:
    `gloo` serves CPU and CUDA tensors, `nccl` CUDA only, `cpu:gloo,cuda:nccl` names each."""
    if ":" not in backend:
        return {"cpu": "gloo", "cuda": "gloo"} if backend == "gloo" else {"cuda": backend}
    pairs = (part.split(":", 1) for part in backend.split(","))
    return {device.strip(): name.strip() for device, name in pairs}


def all_max(t: torch.Tensor) -> torch.Tensor:
    """The element-wise MAX of a small CPU tensor over all ranks: one all-gather and a local max.

    Gloo's all-reduce is a reduce-scatter then an all-gather: over loopback on the 2-core benchmark
    host an all-reduce of 8 int64 took 1.5 ms and an all-gather of them 0.56 ms (2 ranks)."""
    gathered = torch.empty(dist.get_world_size() * t.numel(), dtype=t.dtype, device=t.device)
    dist.all_gather_single(gathered, t.reshape(-1))
    return gathered.view(-1, *t.shape).amax(dim=0)


def gather_mean_hook(group, bucket):  # type: ignore[no-untyped-def]  # DDP rejects string annotations
    """DDP communication hook for 2 ranks: a `dist.GradBucket`'s mean, bit for bit what DDP's default
    all-reduce hook gives, from one all-gather and a local sum (see `all_max`: gloo's all-reduce of a
    bucket of 15k floats took 2.5 ms, the all-gather and sum 0.9 ms). Returns a future of the bucket.
    Only for 2 ranks: an all-gather sends each rank N-1 buckets where a ring all-reduce sends about 2."""
    grads = bucket.buffer()
    world = dist.get_world_size(group)
    gathered = torch.empty(world * grads.numel(), dtype=grads.dtype, device=grads.device)
    work = dist.all_gather_single(gathered, grads, group=group, async_op=True)

    def mean(_: torch.futures.Future[list[torch.Tensor]]) -> torch.Tensor:
        return torch.sum(gathered.view(world, -1), dim=0, out=grads).div_(world)

    return work.get_future().then(mean)


class _GatherDataParallel(DefaultDataParallelWrapper):
    """TorchRec's DDP wrapping of the dense parameters, with `gather_mean_hook` (2 CPU ranks, gloo)."""

    def wrap(self, dmp: DistributedModelParallel, env: ShardingEnv, device: torch.device) -> None:
        super().wrap(dmp, env, device)
        ddp = dmp._dmp_wrapped_module
        if isinstance(ddp, DistributedDataParallel):
            ddp.register_comm_hook(env.process_group, gather_mean_hook)


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    device: torch.device
    backend: str

    @property
    def is_leader(self) -> bool:
        return self.rank == 0


def init_distributed(prefer_cuda: bool = True) -> DistContext:
    """Join the torchrun process group, or make a one-process group when run without torchrun."""
    use_cuda = prefer_cuda and torch.cuda.is_available()
    backend = process_group_backend(use_cuda)
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    if not dist.is_initialized():
        dist.init_process_group(backend)
    rank = dist.get_rank()
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return DistContext(rank=rank, world_size=dist.get_world_size(), device=device, backend=backend)


def table_constraints(model: DCNModel, device: torch.device) -> dict[str, ParameterConstraints]:
    sharding = ShardingType.ROW_WISE if device.type == "cuda" else ShardingType.TABLE_WISE
    names = [
        cfg.name
        for module in model.modules()
        if isinstance(module, EmbeddingBagCollection)
        for cfg in module.embedding_bag_configs()
    ]
    return {
        name: ParameterConstraints(
            sharding_types=[sharding.value], compute_kernels=[EmbeddingComputeKernel.FUSED.value]
        )
        for name in names
    }


class _NoDataParallel(DataParallelWrapper):
    """One rank: dense parameters stay unwrapped (DDP would all-reduce gradients with itself);
    parameter and state-dict names are the same as under DDP, so checkpoints move between world sizes.

    DMP places only the sharded tables; TorchRec's DDP wrapper is what moves the dense network to
    `device`, so without it the move is done here (else a CUDA rank's dense layers stay on the CPU)."""

    def wrap(self, dmp: DistributedModelParallel, env: ShardingEnv, device: torch.device) -> None:
        dmp._dmp_wrapped_module.to(device)


def shard_model(
    model: DCNModel, ctx: DistContext, sparse_lr: float, dense_lr: float
) -> tuple[DistributedModelParallel, torch.optim.Optimizer, ShardingPlan]:
    """Fused row-wise Adagrad on every embedding table, DMP over the planner's plan, Adam for the rest."""
    tables = model.sparse_table_parameters()
    if tables:
        apply_optimizer_in_backward(RowWiseAdagrad, tables, {"lr": sparse_lr})
    sharders = [EmbeddingBagCollectionSharder()]
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=ctx.world_size, compute_device=ctx.device.type),
        constraints=table_constraints(model, ctx.device),
    )
    plan = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
    wrapper: DataParallelWrapper | None = None  # NCCL's all-reduce on GPUs
    if ctx.world_size == 1:
        wrapper = _NoDataParallel()
    elif ctx.device.type == "cpu" and ctx.world_size == 2:
        wrapper = _GatherDataParallel()
    dmp = DistributedModelParallel(
        model, device=ctx.device, plan=plan, sharders=sharders, data_parallel_wrapper=wrapper
    )
    dense = dict(in_backward_optimizer_filter(dmp.named_parameters()))
    dense_opt = torch.optim.Adam(dense.values(), lr=dense_lr, fused=True)  # one fused update of every parameter
    return dmp, dense_opt, plan
