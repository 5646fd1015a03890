"""The unified table under TorchRec DistributedModelParallel (2 CPU ranks over gloo, table-wise
plan over its row blocks) computes what the unsharded module computes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from core.net import free_port
from tests.ranks import spawn_ranks

BLOCKS = 4


def _schema():  # noqa: ANN202 - imported inside the spawned process
    from embedding.schema import FeatureSchema, SparseFeature

    return FeatureSchema(
        name="dmp",
        embedding_dim=8,
        sparse=(
            SparseFeature(name="user", dtype="int"),
            SparseFeature(name="item", lookups=2),
            SparseFeature(name="tags", multivalent=True, pooling="mean"),
        ),
    )


def _batch(seed: int):  # noqa: ANN202
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([1] * 16 + [1] * 15 + [0] + torch.randint(0, 4, (16,), generator=gen).tolist())
    values = torch.randint(-(2**62), 2**62, (int(lengths.sum()),), generator=gen)
    return KeyedJaggedTensor(keys=["user", "item", "tags"], values=values, lengths=lengths)


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.distributed.planner.types import ParameterConstraints
    from torchrec.distributed.types import ShardingType

    from embedding.methods import UnifiedEmbedding

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        schema = _schema()
        torch.manual_seed(0)
        reference = UnifiedEmbedding(schema, num_rows=1000, num_blocks=BLOCKS)
        torch.manual_seed(1)  # different init: the sharded weights must come from load_state_dict
        model = UnifiedEmbedding(schema, num_rows=1000, num_blocks=BLOCKS)
        sharders = [EmbeddingBagCollectionSharder()]
        constraints = {
            model.table_name(b): ParameterConstraints(sharding_types=[ShardingType.TABLE_WISE.value])
            for b in range(BLOCKS)
        }
        planner = EmbeddingShardingPlanner(
            topology=Topology(world_size=world, compute_device="cpu"), constraints=constraints
        )
        plan = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
        ranks = {param_plan.ranks[0] for param_plan in plan.plan["ebc"].values()}  # type: ignore[union-attr]
        assert ranks == {0, 1}, f"blocks should spread over both ranks, plan: {plan}"
        dmp = DistributedModelParallel(model, device=torch.device("cpu"), plan=plan, sharders=sharders)
        dmp.load_state_dict(reference.state_dict())
        batch = _batch(seed=10 + rank)  # each rank its own local batch
        got = dmp(batch).values().detach()
        want = reference(batch).values().detach()
        torch.save({"got": got, "want": want}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_dmp_table_wise_over_row_blocks_matches_unsharded(tmp_path: Path) -> None:
    spawn_ranks(_worker, 2, free_port(), str(tmp_path))
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert result["got"].shape == (16, 32)
        torch.testing.assert_close(result["got"], result["want"], rtol=1e-6, atol=1e-7)


def _robe_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """ROBE's array as a TorchRec table on 2 ranks: same forward as unsharded, and one step of the
    fused row-wise Adagrad moves only the rows some rank's batch read."""
    import torch.distributed as dist
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.distributed.planner.types import ParameterConstraints
    from torchrec.distributed.types import ShardingType
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
    from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

    from embedding.methods import RobeEmbedding

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        schema = _schema()
        torch.manual_seed(0)
        reference = RobeEmbedding(schema, size=4001, block=4)
        model = RobeEmbedding(schema, size=4001, block=4)
        apply_optimizer_in_backward(RowWiseAdagrad, list(model.ebc.parameters()), {"lr": 0.1})
        sharders = [EmbeddingBagCollectionSharder()]
        constraints = {"robe": ParameterConstraints(sharding_types=[ShardingType.TABLE_WISE.value])}
        planner = EmbeddingShardingPlanner(
            topology=Topology(world_size=world, compute_device="cpu"), constraints=constraints
        )
        plan = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
        dmp = DistributedModelParallel(model, device=torch.device("cpu"), plan=plan, sharders=sharders)
        dmp.load_state_dict(reference.state_dict())
        batch = _batch(seed=10 + rank)
        got = dmp(batch)
        want = reference(batch).values().detach()
        got.values().sum().backward()
        touched = torch.cat([reference.route(_batch(seed=10 + r))[0].values() for r in range(world)]).unique()
        rows = reference.ebc.embedding_bags["robe"].weight.shape[0]
        untouched = torch.ones(rows, dtype=torch.bool)
        untouched[touched] = False
        shards = dmp.state_dict()["ebc.embedding_bags.robe.weight"].local_shards()  # table-wise: one rank owns it
        after = shards[0].tensor.detach().clone() if shards else None
        before = reference.ebc.embedding_bags["robe"].weight.detach()
        torch.save(
            {"got": got.values().detach(), "want": want, "untouched": untouched, "after": after, "before": before},
            Path(out_dir) / f"robe{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_robe_array_is_a_sharded_table_trained_on_touched_rows(tmp_path: Path) -> None:
    spawn_ranks(_robe_worker, 2, free_port(), str(tmp_path))
    results = [torch.load(tmp_path / f"robe{rank}.pt", weights_only=True) for rank in range(2)]
    for result in results:
        torch.testing.assert_close(result["got"], result["want"], rtol=1e-6, atol=1e-7)
    owners = [r for r in results if r["after"] is not None]
    assert len(owners) == 1, "table-wise: the array lives on one rank, not replicated"
    owner = owners[0]
    moved = (owner["after"] != owner["before"]).any(dim=1)
    assert not moved[owner["untouched"]].any(), "rows no batch read must not move"
    assert moved[~owner["untouched"]].float().mean() > 0.9  # read rows moved (a zero gradient sum may not)


DMP_CASES = {
    "unified": ("unified", {"num_rows": 50, "num_blocks": 2}),
    "hashing_trick": ("hashing_trick", {"num_rows": 50}),
    "hash_embedding": ("hash_embedding", {"num_rows": 50, "importance_rows": 10, "num_hashes": 3}),
    "hash_embedding_mux": ("hash_embedding", {"num_rows": 50, "importance_rows": 10, "multiplexed": True}),
    "robe": ("robe", {"size": 50, "block": 2}),
    "qr": ("compositional", {"moduli": [5, 4]}),
    "pq": ("compositional", {"moduli": [5, 4], "operation": "concat"}),
    "path": ("compositional", {"moduli": [5, 4], "operation": "path", "multiplexed": True}),
    "mlet": ("mlet", {"inner": "unified", "inner_args": {"num_rows": 50}, "inner_dim": 8}),
    "collisionless": ("collisionless", {"vocab_sizes": {"a": 3, "b": 3}}),
}


@pytest.fixture(scope="module")
def one_rank_group() -> object:
    import torch.distributed as dist

    owned = not dist.is_initialized()
    if owned:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
        dist.init_process_group("gloo", rank=0, world_size=1)
    yield dist.GroupMember.WORLD
    if owned:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("case", list(DMP_CASES))
def test_method_trains_under_dmp_with_fused_rowwise_adagrad(case: str, one_rank_group: object) -> None:
    """What the trainer does with any method: fused optimiser on its tables, DMP (1 rank), same forward."""
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.distributed.planner.types import ParameterConstraints
    from torchrec.distributed.types import ShardingType
    from torchrec.modules.embedding_modules import EmbeddingBagCollection
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
    from torchrec.optim.rowwise_adagrad import RowWiseAdagrad
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    from embedding.methods import build_method
    from embedding.schema import FeatureSchema, SparseFeature

    schema = FeatureSchema(
        name="dmp1",
        embedding_dim=8,  # fbgemm needs table widths divisible by 4: PQ splits 8 into 4 + 4
        sparse=(SparseFeature(name="a"), SparseFeature(name="b", lookups=2, multivalent=True, pooling="mean")),
    )
    kjt = KeyedJaggedTensor(
        keys=["a", "b"], values=torch.tensor([1, 2, -3, 4, 5, 6]), lengths=torch.tensor([1, 1, 1, 0, 2, 1])
    )
    method, args = DMP_CASES[case]
    torch.manual_seed(0)
    reference = build_method(method, schema, **args)
    module = build_method(method, schema, **args)
    ebcs = [m for m in module.modules() if isinstance(m, EmbeddingBagCollection)]
    tables = [p for ebc in ebcs for p in ebc.parameters()]
    if tables:
        apply_optimizer_in_backward(RowWiseAdagrad, tables, {"lr": 0.1})
    constraints = {
        cfg.name: ParameterConstraints(sharding_types=[ShardingType.TABLE_WISE.value], compute_kernels=["fused"])
        for ebc in ebcs
        for cfg in ebc.embedding_bag_configs()
    }
    sharders = [EmbeddingBagCollectionSharder()]
    planner = EmbeddingShardingPlanner(topology=Topology(world_size=1, compute_device="cpu"), constraints=constraints)
    plan = planner.collective_plan(module, sharders, one_rank_group)
    dmp = DistributedModelParallel(module, device=torch.device("cpu"), plan=plan, sharders=sharders)
    dmp.load_state_dict(reference.state_dict())
    out = dmp(kjt).values()
    torch.testing.assert_close(out.detach(), reference(kjt).values().detach())
    out.sum().backward()  # the fused optimiser steps the tables inside backward
    if tables:
        assert not torch.allclose(dmp(kjt).values().detach(), out.detach()), "tables should have been updated"
