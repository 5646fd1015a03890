"""The input distribution started one batch ahead (`InputDistAhead`) trains bit for bit what the plain
step trains, on a real 2-rank gloo group with the trainer's own model, padding and an all-padding rank;
at world size 1 the path without distributions trains bit for bit what TorchRec's forward trains; and
the hooked module refuses a batch other than the one started."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from core.net import free_port
from services.replay.reader import iter_events
from tests.ranks import spawn_ranks
from trainer.errors import TrainerError
from trainer.ingest import Batch
from trainer.input_dist import InputDistAhead, routed_module
from trainer.settings import TrainerSettings

SIZES = [(64, 64), (64, 20), (30, 0), (64, 64), (0, 64), (64, 64)]
"""Events per step on (rank 0, rank 1): full, padded, one rank all padding."""


def _batches(rank: int) -> list[Batch | None]:
    from embedding.events import Featurizer
    from embedding.schema import load_schema

    events = list(iter_events("movielens", limit=2 * 64 * len(SIZES)))[rank::2]
    featurizer = Featurizer(load_schema("movielens"))
    batches: list[Batch | None] = []
    for i, sizes in enumerate(SIZES):
        chunk = events[i * 64 : i * 64 + sizes[rank]]
        batches.append(Batch(featurizer(chunk), [e.event_id for e in chunk], max(e.ts for e in chunk), {})
                       if chunk else None)  # fmt: skip
    return batches


def _train(rank: int, home: Path, redis_url: str, ahead: bool) -> dict[str, torch.Tensor]:
    from trainer.loop import Trainer

    os.environ["UNIREC_CHURN_KEY_PREFIX"] = f"{home.name}:{ahead}:churn"
    torch.manual_seed(0)  # the same initial weights in both runs
    settings = TrainerSettings(home=home / str(ahead), redis_url=redis_url, metrics_port=0, export_every_s=0,
                               delta_every_s=0, threads=1)  # fmt: skip
    trainer = Trainer(settings)
    module = trainer.input_dist.module
    assert module is not None and routed_module(trainer.unified) is module, "the unified table is hooked"
    if not ahead:  # the baseline: TorchRec's own ShardedModule.forward, nothing started ahead
        del module.forward
        trainer.input_dist = InputDistAhead(None)
    batches, sizes = _batches(rank), [max(s) for s in SIZES]
    if ahead:  # as the loop: begin the next step, then take the current one
        current = trainer.begin_step(batches[0], sizes[0])
        for batch, size in zip(batches[1:], sizes[1:], strict=True):
            following = trainer.begin_step(batch, size)
            assert trainer.input_dist.in_flight == 2
            trainer.take_step(current)
            current = following
        trainer.take_step(current)
    else:
        for batch, size in zip(batches, sizes, strict=True):
            trainer.train_batch(batch, size)
    assert trainer.input_dist.in_flight == 0
    featurizer = trainer.featurizer
    probe = trainer.prepare(featurizer(list(iter_events("movielens", limit=2 * 64 * len(SIZES)))))  # every row trained
    assert probe is not None
    trainer.model.eval()
    with torch.no_grad():
        logits = trainer.model(probe.staged.sparse, probe.staged.dense)
    trainer.churn.close()
    dense = {f"dense{i}": p.detach().clone() for i, p in enumerate(trainer.dense_opt.param_groups[0]["params"])}
    tables = {f"{k}.{i}": shard.tensor.detach().clone() for k, v in trainer.unified.ebc.state_dict().items()
              if isinstance(v, ShardedTensor) for i, shard in enumerate(v.local_shards())}  # fmt: skip
    local = torch.tensor(trainer.input_dist.local)
    return {"logits": logits, "events": torch.tensor(trainer.events), "local": local, **dense, **tables}


def _refuses_another_batch() -> bool:
    ebc = EmbeddingBagCollection(tables=[EmbeddingBagConfig(name="t", embedding_dim=4, num_embeddings=10,
                                                            feature_names=["f"])])  # fmt: skip
    dmp = DistributedModelParallel(ebc, device=torch.device("cpu"))
    ahead = InputDistAhead(dmp.module)
    started = KeyedJaggedTensor(keys=["f"], values=torch.tensor([1, 2, 3]), lengths=torch.tensor([2, 1]))
    other = KeyedJaggedTensor(keys=["f"], values=torch.tensor([4, 5, 6]), lengths=torch.tensor([1, 2]))
    expected = dmp(started).values()  # nothing in flight: the plain forward
    ahead.start(started)
    try:
        dmp(other)
        refused = False
    except TrainerError:
        refused = True
    same = torch.equal(dmp(started).values(), expected)  # the started batch, consumed in order
    return refused and same and ahead.in_flight == 0


def _rank(rank: int, port: int, out: str, redis_url: str, world_size: int = 2) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))  # fmt: skip
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        result = {f"plain.{k}": v for k, v in _train(rank, Path(out) / f"rank{rank}", redis_url, False).items()}
        result |= {f"ahead.{k}": v for k, v in _train(rank, Path(out) / f"rank{rank}", redis_url, True).items()}
        result["refuses"] = torch.tensor(_refuses_another_batch())
        save_file(result, str(Path(out, f"rank{rank}.safetensors")))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.integration
def test_input_dist_ahead_trains_what_the_plain_step_trains(tmp_path: Path, redis_url: str) -> None:
    spawn_ranks(_rank, free_port(), str(tmp_path), redis_url)
    for rank in (0, 1):
        got = load_file(str(tmp_path / f"rank{rank}.safetensors"))
        assert not bool(got["ahead.local"]), "2 ranks distribute their batches"
        _assert_same_training(got, rank)


@pytest.mark.slow
@pytest.mark.integration
def test_one_rank_skips_the_distributions_and_trains_what_torchrec_trains(tmp_path: Path, redis_url: str) -> None:
    spawn_ranks(_rank, free_port(), str(tmp_path), redis_url, 1, nprocs=1)
    got = load_file(str(tmp_path / "rank0.safetensors"))
    assert bool(got["ahead.local"]), "world size 1: the batches skip TorchRec's distributions"
    _assert_same_training(got, 0)


def _assert_same_training(got: dict[str, torch.Tensor], rank: int) -> None:
    assert bool(got["refuses"]), "the hooked module must refuse a batch it did not start, then take the started one"
    assert int(got["plain.events"]) == sum(s[rank] for s in SIZES)
    names = [k.removeprefix("plain.") for k in got if k.startswith("plain.") and k != "plain.local"]
    assert len(names) > 3
    assert rank or any("embedding_bags" in n for n in names), f"rank 0 holds the table's shard: {names}"
    for name in names:
        assert torch.equal(got[f"ahead.{name}"], got[f"plain.{name}"]), f"rank {rank}: {name}"
