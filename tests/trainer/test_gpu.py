"""The CUDA path: a gloo+NCCL process group, row-wise plan for every table, fused CUDA TBE training step."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from embedding import Event, Featurizer, load_schema
from embedding.model import ModelConfig, build_model
from trainer.distributed import init_distributed, shard_model
from trainer.loop import pad_batch

pytestmark = pytest.mark.gpu


def test_row_wise_plan_and_training_steps_on_cuda(no_rendezvous_env: None) -> None:
    ctx = init_distributed(prefer_cuda=True)
    try:
        assert ctx.backend == "cpu:gloo,cuda:nccl" and ctx.device.type == "cuda"
        schema = load_schema("movielens")
        model = build_model(schema, ModelConfig(method_args={"num_rows": 20_000, "num_blocks": 4}))
        dmp, dense_opt, plan = shard_model(model, ctx, sparse_lr=0.1, dense_lr=1e-3)
        shardings = {name: p.sharding_type for module_plan in plan.plan.values() for name, p in module_plan.items()}
        assert shardings and set(shardings.values()) == {"row_wise"}, shardings

        events = [
            Event(event_id=str(i), ts=i, label=i % 2, sparse={"user": i % 97, "movie": i % 13, "gender": "MF"[i % 2]})
            for i in range(256)
        ]
        sparse, dense, labels, weights = pad_batch(Featurizer(schema)(events), 256)
        losses = []
        for _ in range(20):
            logits = dmp(sparse.to(ctx.device), dense.to(ctx.device))
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.to(ctx.device))
            dense_opt.zero_grad()
            loss.backward()
            dense_opt.step()
            losses.append(loss.item())
        assert all(torch.isfinite(torch.tensor(losses)))
        assert losses[-1] < losses[0], "the fused CUDA optimiser must learn the pattern"
    finally:
        dist.destroy_process_group()
