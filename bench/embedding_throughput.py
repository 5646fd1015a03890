"""Embedding throughput on the training path: forward+backward lookups/s with fbgemm's fused
row-wise Adagrad, the unified table (26 features, 2.6M rows, swept over num_blocks) against 26
per-feature tables of 100k rows; and ROBE-1 and ROBE-Z (Z = d) as the trainer runs them (the array a
TorchRec table, fused row-wise Adagrad) against the peer gathering from a flat array with dense Adam.

    .venv/bin/python bench/embedding_throughput.py            # writes bench/results/embedding_throughput.{json,md}
    .venv/bin/python bench/embedding_throughput.py --reps 5 --threads 1 --threads 2

Two measurements for the tables:
- `tbe`: fbgemm's SplitTableBatchedEmbeddingBagsCodegen directly, indices already hashed and routed,
  features in table-major order as TorchRec hands them to the kernel (the table layout alone);
- `dmp`: the method end to end as the trainer runs it: fingerprints -> hashing (+ routing) ->
  DistributedModelParallel (1 rank, gloo, table-wise, FUSED kernel, RowWiseAdagrad applied in backward).
Configurations run round-robin (`--rounds`) so load changes on a shared machine hit all of them;
each reports the median of its timed repetitions. Ratios are against the per-feature baseline of
the same run. Results go through bench/report.py `write_results` (`render` gives the Markdown).
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer
from rich.console import Console
from rich.progress import Progress
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from bench.report import RESULTS_DIR, machine_load, refuse_when_busy, write_results
from embedding.hashing import fingerprint
from embedding.methods import HashingTrick, RobeEmbedding, UnifiedEmbedding
from embedding.schema import FeatureSchema, SparseFeature

NAME = "embedding_throughput"
console = Console()


@dataclass
class Case:
    name: str
    step: Callable[[], None]
    lookups: int
    times: list[float] = field(default_factory=list)


def make_schema(features: int, dim: int, vocab: int) -> FeatureSchema:
    return FeatureSchema(
        name="bench",
        embedding_dim=dim,
        sparse=tuple(SparseFeature(name=f"f{i}", dtype="int", vocab_size=vocab) for i in range(features)),
    )


def zipf_batch(schema: FeatureSchema, batch: int, vocab: int, alpha: float, seed: int) -> KeyedJaggedTensor:
    """One univalent Zipf-distributed id per feature and example, as 64-bit fingerprints."""
    rng = np.random.default_rng(seed)
    ids = (rng.zipf(alpha, size=(len(schema.sparse), batch)) - 1) % vocab
    values = np.concatenate([fingerprint(row + i * vocab, "int") for i, row in enumerate(ids)])
    return KeyedJaggedTensor(
        keys=schema.sparse_names,
        values=torch.from_numpy(values),
        lengths=torch.ones(len(schema.sparse) * batch, dtype=torch.int64),
    )


def tbe_case(name: str, module: UnifiedEmbedding | HashingTrick, kjt: KeyedJaggedTensor) -> Case:
    """fbgemm TBE with the module's tables, fed the module's routed indices in table-major order."""
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        ComputeDevice,
        SplitTableBatchedEmbeddingBagsCodegen,
    )

    routed = module.route(kjt) if isinstance(module, UnifiedEmbedding) else module.routed(kjt)
    configs = module.ebc.embedding_bag_configs()
    order = [f for cfg in configs for f in cfg.feature_names]  # TorchRec groups features by table
    routed = routed.permute([routed.keys().index(f) for f in order])
    feature_table = [t for t, cfg in enumerate(configs) for _ in cfg.feature_names]
    tbe = SplitTableBatchedEmbeddingBagsCodegen(
        [(c.num_embeddings, c.embedding_dim, EmbeddingLocation.HOST, ComputeDevice.CPU) for c in configs],
        feature_table_map=feature_table,
        optimizer=EmbOptimType.EXACT_ROWWISE_ADAGRAD,
        learning_rate=0.01,
        pooling_mode=PoolingMode.SUM,
    )
    indices, offsets = routed.values(), routed.offsets()

    def step() -> None:
        out = tbe(indices, offsets)
        out.backward(torch.ones_like(out))

    return Case(name, step, int(kjt.values().numel()))


def dmp_case(name: str, module: UnifiedEmbedding | HashingTrick, kjt: KeyedJaggedTensor) -> Case:
    """The method under DMP on one rank with the trainer's fused optimiser (RowWiseAdagrad in backward)."""
    import torch.distributed as dist
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.distributed.planner.types import ParameterConstraints
    from torchrec.distributed.types import ShardingType
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
    from torchrec.optim.optimizers import in_backward_optimizer_filter
    from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

    if not dist.is_initialized():
        from core.net import free_port

        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
        dist.init_process_group("gloo", rank=0, world_size=1)
    apply_optimizer_in_backward(RowWiseAdagrad, list(module.ebc.parameters()), {"lr": 0.01})
    constraints = {
        cfg.name: ParameterConstraints(sharding_types=[ShardingType.TABLE_WISE.value], compute_kernels=["fused"])
        for cfg in module.ebc.embedding_bag_configs()
    }
    sharders = [EmbeddingBagCollectionSharder()]
    planner = EmbeddingShardingPlanner(topology=Topology(world_size=1, compute_device="cpu"), constraints=constraints)
    plan = planner.collective_plan(module, sharders, dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(module, device=torch.device("cpu"), plan=plan, sharders=sharders)
    assert not list(in_backward_optimizer_filter(dmp.named_parameters())), "every table should be fused"

    def step() -> None:
        out = dmp(kjt).values()
        out.backward(torch.ones_like(out))

    return Case(name, step, int(kjt.values().numel()))


def robe_case(name: str, schema: FeatureSchema, block: int, size: int, kjt: KeyedJaggedTensor) -> Case:
    """ROBE as the trainer runs it: its array a TorchRec table under DMP, fused row-wise Adagrad."""
    return dmp_case(name, RobeEmbedding(schema, size=size, block=block, multiplexed=True), kjt)


def robe_gather_case(name: str, schema: FeatureSchema, block: int, size: int, kjt: KeyedJaggedTensor) -> Case:
    """The peer (`bench/peers/robe_gather.py`): the same lookups gathered from a flat parameter, dense Adam."""
    from bench.peers.robe_gather import GatherRobe

    peer = GatherRobe(RobeEmbedding(schema, size=size, block=block, multiplexed=True))
    opt = torch.optim.Adam([peer.weight], lr=0.01)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        out = peer(kjt)
        out.backward(torch.ones_like(out))
        opt.step()

    return Case(name, step, int(kjt.values().numel()))


def measure(cases: list[Case], rounds: int, reps: int, warmup: int) -> None:
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("measuring", total=rounds * len(cases) * (reps + warmup))
        for _ in range(rounds):
            for case in cases:
                for i in range(warmup + reps):
                    start = time.perf_counter()
                    case.step()
                    if i >= warmup:
                        case.times.append(time.perf_counter() - start)
                    progress.advance(task)


def section(title: str, cases: list[Case]) -> dict[str, Any]:
    """A results section: its cases' timed steps (the first case is the section's baseline)."""
    return {"title": title, "cases": [{"name": c.name, "lookups": c.lookups, "times": c.times} for c in cases]}


def table(cases: list[dict[str, Any]]) -> list[str]:
    rates = [c["lookups"] / statistics.median(c["times"]) for c in cases]
    lines = ["| configuration | M lookups/s (median) | ratio | runs |", "|---|---:|---:|---:|"]
    for case, rate in zip(cases, rates, strict=True):
        lines.append(f"| {case['name']} | {rate / 1e6:.2f} | {rate / rates[0]:.2f}x | {len(case['times'])} |")
    return lines


def render(data: dict[str, Any]) -> str:
    report = [
        "# Embedding throughput (forward + backward, fused row-wise Adagrad)",
        "",
        f"{data['features']} features, batch {data['batch']}, d={data['dim']}, Zipf(alpha={data['alpha']}) ids over "
        f"{data['vocab']} values per feature; unified: one logical table of {data['features'] * data['vocab']} rows "
        f"in num_blocks row blocks; baseline: {data['features']} hashing-trick tables of {data['vocab']} rows. "
        f"Median of {data['rounds']} rounds x {data['reps']} timed steps ({data['warmup']} warm-up per round), "
        f"configurations round-robin. Host: {data['host']}, {data['cores']} cores, torch {data['torch']}; load "
        f"average {data['load_before']:.1f} at the start.",
        f"Command: `{data['command']}`.",
        "",
        "Reading the sweep: routing splits every (lookup, example) bag over the row blocks, so the TBE sees "
        "num_blocks x lookups x batch bags and a pooled output num_blocks times wider (summed back afterwards) "
        "for the same number of row reads. More blocks buy fbgemm per-table parallelism and table-wise "
        "placement over ranks, and pay for them in bags.",
        "",
    ]
    for part in data["sections"]:
        report += [f"## {part['title']}", "", *table(part["cases"]), ""]
    if "load_after" in data:
        load = ", ".join(f"{v:.1f}" for v in data["load_after"])
        report += [
            f"Load average at the end of the run: {load} (on {data['cores']} cores; shared hosts make absolute "
            "numbers low and noisy, compare ratios within one section)."
        ]
    return "\n".join(report)


def _quiet_planner() -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    for name in ("torchrec.distributed.planner.types", "torchrec.distributed.planner.storage_reservations"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(
    features: int = 26,
    vocab: int = 100_000,
    dim: int = 16,
    batch: int = 4096,
    alpha: Annotated[float, typer.Option(help="Zipf exponent of the ids")] = 1.1,
    blocks: Annotated[list[int], typer.Option("--blocks", help="num_blocks values to sweep")] = [1, 2, 4, 8, 26],  # noqa: B006
    threads: Annotated[list[int], typer.Option("--threads")] = [1, 2],  # noqa: B006
    rounds: int = 3,
    reps: int = 5,
    warmup: int = 2,
    robe_size: int = 1 << 20,
    modes: Annotated[list[str], typer.Option("--mode", help="tbe and/or dmp")] = ["tbe", "dmp"],  # noqa: B006
    out: Annotated[Path, typer.Option(help="Folder of embedding_throughput.{json,md}.")] = RESULTS_DIR,
    max_load: Annotated[
        float,
        typer.Option(help="Refuse to start or to write above this 1-min load average (the run adds its threads)."),
    ] = 4.0,
) -> None:
    refuse_when_busy(max_load)
    _quiet_planner()
    schema = make_schema(features, dim, vocab)
    kjt = zipf_batch(schema, batch, vocab, alpha, seed=0)
    data: dict[str, Any] = {
        "features": features, "vocab": vocab, "dim": dim, "batch": batch, "alpha": alpha,
        "rounds": rounds, "reps": reps, "warmup": warmup,
        "host": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__,
        "load_before": machine_load(), "command": " ".join([".venv/bin/python", "bench/embedding_throughput.py",
                                                              *sys.argv[1:]]),
        "sections": [],
    }  # fmt: skip
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        for mode in modes:
            make = tbe_case if mode == "tbe" else dmp_case
            torch.manual_seed(0)
            per_feature = HashingTrick(schema, rows=dict.fromkeys(schema.sparse_names, vocab))
            cases = [make(f"per-feature {features} x {vocab} (baseline)", per_feature, kjt)]
            for nb in blocks:
                module = UnifiedEmbedding(schema, num_rows=features * vocab, num_blocks=nb)
                cases.append(make(f"unified {features * vocab} rows, num_blocks={nb}", module, kjt))
            console.print(f"[bold]{mode}[/] threads={n_threads}: {len(cases)} configurations")
            measure(cases, rounds, reps, warmup)
            data["sections"].append(section(f"{mode}, {n_threads} thread(s)", cases))
            console.print("\n".join(table(data["sections"][-1]["cases"])))
            del cases
            refuse_when_busy(max_load)
            write_results(NAME, data, render, out)  # after every section: a long run keeps what it measured
        if n_threads != threads[0]:
            continue
        robe = [
            robe_gather_case("ROBE-1 (HashedNet), flat array + dense Adam (peer)", schema, 1, robe_size, kjt),
            robe_case("ROBE-1 (HashedNet), table + fused row-wise Adagrad", schema, 1, robe_size, kjt),
            robe_gather_case(f"ROBE-Z, Z=d={dim}, flat array + dense Adam (peer)", schema, dim, robe_size, kjt),
            robe_case(f"ROBE-Z, Z=d={dim}, table + fused row-wise Adagrad", schema, dim, robe_size, kjt),
        ]
        measure(robe, rounds, reps, warmup)
        data["sections"].append(section(f"ROBE, multiplexed array of {robe_size} floats, {n_threads} thread(s)", robe))
        console.print("\n".join(table(data["sections"][-1]["cases"])))
        refuse_when_busy(max_load)
        write_results(NAME, data, render, out)
    data["load_after"] = list(os.getloadavg())
    refuse_when_busy(max_load)
    console.print(f"wrote {write_results(NAME, data, render, out)}")


if __name__ == "__main__":
    typer.run(main)
