"""Training speed on one GPU, every ratio against a baseline measured in the same run:

(a) `peer`: the same DCN-v2 in plain PyTorch on the same device (bench/peers/plain_dcn.py: one
    nn.EmbeddingBag(100_000, 16, sparse=True) for the 6 MovieLens features, Adagrad + Adam) on
    in-memory batches of pre-hashed row ids already on the device;
(b) `step`: the project's training step (`Trainer.train_batch`: DMP with the unified table row-wise
    sharded, fused CUDA TBE with row-wise Adagrad, fused Adam, progressive validation, churn, metrics)
    on in-memory batches the ingest thread's work (`Trainer.prepare`: hashing, routing, staging on
    the device) was already done for, as in the running loop; `step_prepare` does that work inline;
(c) `kafka`: `unirec train` end to end from the local broker (1 rank, device auto: the GPU where
    there is one) at batch 4096, against (b) at the same batch (`kafka_over_step`).

    python bench/gpu.py                         # on the GPU machine: writes bench/results/gpu.{json,md}
    python bench/gpu.py --out DIR               # writes DIR/gpu.{json,md} instead
    python bench/gpu.py --device cpu --quick --dry-run   # CPU dry run: small, prints, writes nothing

Batches 4096 and 65,536 (`--batch-size` to choose). Synthetic MovieLens-schema events (Zipf users
and movies), so the run needs no data set on the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.peers.plain_dcn import hashed_rows, train_rate
from bench.report import RESULTS_DIR, dump_json, write_results

NAME = "gpu"
BATCHES = (4096, 65_536)
KAFKA_BATCH = 4096


def synthetic_events(n: int, seed: int = 0) -> list:
    """MovieLens-schema click events: Zipf users and movies, a learnable click pattern."""
    from embedding.events import Event

    rng = np.random.default_rng(seed)
    users = rng.zipf(1.3, n) % 943
    movies = rng.zipf(1.2, n) % 1682
    clicks = rng.random(n) < np.where(movies % 3 == 0, 0.8, 0.3)
    return [
        Event(event_id=f"e{i}", ts=1_700_000_000_000 + i, label=int(clicks[i]),
              sparse={"user": int(users[i]), "movie": int(movies[i]), "age": int(users[i] % 61),
                      "gender": "MF"[i % 2], "occupation": f"o{users[i] % 21}", "zip": f"z{users[i] % 795}"})
        for i in range(n)
    ]  # fmt: skip


def peer_rate(events: list, batch_size: int, device: str) -> float:
    from embedding.schema import load_schema

    schema = load_schema("movielens")
    columns = [[e.sparse[spec.name] for e in events] for spec in schema.sparse]
    labels = torch.tensor([float(e.label) for e in events])
    return train_rate(hashed_rows(columns, 100_000), labels, batch_size, device=device)


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def step_rates(events: list, home: Path, redis_url: str, batch_size: int, device: str) -> dict[str, float]:
    """Events/s of the real Trainer's step on in-memory batches: prepared ahead (`step`), inline (`step_prepare`)."""
    import torch.distributed as dist

    from core.net import free_port
    from trainer.ingest import Batch
    from trainer.loop import Trainer
    from trainer.settings import TrainerSettings

    os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    settings = TrainerSettings(home=home, redis_url=redis_url, metrics_port=0, export_every_s=0, delta_every_s=0,
                               threads=0, batch_size=batch_size, device=device)  # fmt: skip
    trainer = Trainer(settings)
    try:
        assert trainer.ctx.device.type == torch.device(device).type, trainer.ctx.device
        chunks = [events[i : i + batch_size] for i in range(0, len(events), batch_size)]

        def batches() -> list[Batch]:
            return [
                Batch(features=trainer.featurizer(c), event_ids=[e.event_id for e in c],
                      max_ts_ms=max(e.ts for e in c), offsets={})
                for c in chunks
            ]  # fmt: skip

        def timed(todo: list[Batch], prepare: bool) -> float:
            _sync(device)
            started = time.perf_counter()
            for batch in todo:
                if prepare:
                    batch.prepared = trainer.prepare(batch.features)
                trainer.train_batch(batch)
            _sync(device)
            return len(events) / (time.perf_counter() - started)

        warm = batches()[:2]
        timed(warm, prepare=True)  # warm-up (CUDA kernels, allocator), untimed
        ahead = batches()
        for batch in ahead:
            batch.prepared = trainer.prepare(batch.features)
        _sync(device)
        step = timed(ahead, prepare=False)
        inline = timed(batches(), prepare=True)
    finally:
        trainer.churn.close()
        dist.destroy_process_group()
    return {"step": step, "step_prepare": inline}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from bench.trainer_throughput import kafka_rate
    from core.net import free_port
    from services.producer import replay
    from unirec.infra import LocalServer

    device = args.device
    runs: dict[str, Any] = {"peer": {}, "step": {}, "step_prepare": {}, "kafka": [], "kafka_step": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        redis = LocalServer("redis", "127.0.0.1", free_port(), root)
        redis.start()
        kafka = None
        try:
            for r in range(args.repeats):
                for b in args.batch_size:
                    events = synthetic_events(b * args.batches, seed=r)
                    runs["peer"].setdefault(str(b), []).append(peer_rate(events, b, device))
                    rates = step_rates(events, root / f"mem{r}-{b}", redis.address, b, device)
                    for key, rate in rates.items():
                        runs[key].setdefault(str(b), []).append(rate)
                    print(f"repeat {r} batch {b}: peer {runs['peer'][str(b)][-1]:,.0f}/s, step {rates['step']:,.0f}/s, "
                          f"step+prepare {rates['step_prepare']:,.0f}/s", flush=True)  # fmt: skip
            if args.kafka_events:
                kafka = LocalServer("kafka", "127.0.0.1", free_port(), root)
                kafka.start()
                events = synthetic_events(args.kafka_events, seed=99)
                topic = f"bench-gpu-{time.time_ns()}"
                replay(events, kafka.address, topic, key="user", partitions=2)
                kb = min(KAFKA_BATCH, args.kafka_events)
                for r in range(args.kafka_repeats):
                    rate = kafka_rate(kafka.address, redis.address, topic, root / f"k{r}", 1, kb)
                    runs["kafka"].append(rate)
                    runs["kafka_step"].append(step_rates(events, root / f"ks{r}", redis.address, kb, device)["step"])
                    print(f"repeat {r}: kafka {rate['events_per_s']:,.0f}/s, in memory {runs['kafka_step'][-1]:,.0f}/s "
                          f"(batch {kb})", flush=True)  # fmt: skip
        finally:
            if kafka is not None:
                kafka.stop()
            redis.stop()
    med = statistics.median
    summary: dict[str, Any] = {"batch": {}}
    for b in args.batch_size:
        peer, step = med(runs["peer"][str(b)]), med(runs["step"][str(b)])
        summary["batch"][str(b)] = {"peer": peer, "step": step, "step_prepare": med(runs["step_prepare"][str(b)]),
                                    "step_over_peer": step / peer}  # fmt: skip
    if runs["kafka"]:
        kafka_med, mem = med([k["events_per_s"] for k in runs["kafka"]]), med(runs["kafka_step"])
        summary |= {"kafka": kafka_med, "kafka_step": mem, "kafka_over_step": kafka_med / mem,
                    "kafka_batch": min(KAFKA_BATCH, args.kafka_events)}  # fmt: skip
    on_cuda = torch.device(device).type == "cuda"
    return {
        "device": torch.cuda.get_device_name() if on_cuda else f"cpu ({platform.machine()})",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "versions": _versions(),
        "cores": os.cpu_count(),
        "batches_per_run": args.batches,
        "repeats": args.repeats,
        "kafka_repeats": args.kafka_repeats,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "runs": runs,
        "summary": summary,
    }


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torchrec", "fbgemm-gpu", "fbgemm-gpu-cpu"):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


def _f(x: float) -> str:
    return f"{x:,.0f}"


def render(data: dict[str, Any]) -> str:
    s = data["summary"]
    lines = [
        "# GPU training speed",
        "",
        f"Device: **{data['device']}**; torch {data['torch']} (CUDA {data['cuda']}), "
        + ", ".join(f"{k} {v}" for k, v in sorted(data["versions"].items()))
        + f"; {data['cores']} cores; {data['created']}. Medians of {data['repeats']} runs of "
        f"{data['batches_per_run']} batches each, Kafka: {data['kafka_repeats']} runs (`bench/gpu.py`).",
        "",
        "## Training step, events/s (same device, same run)",
        "",
        "| batch | plain PyTorch peer | unified table (TorchRec/fbgemm) | step / peer | step + prepare inline |",
        "|---:|---:|---:|---:|---:|",
    ]
    for b, row in sorted(s["batch"].items(), key=lambda kv: int(kv[0])):
        lines.append(f"| {int(b):,} | {_f(row['peer'])} | {_f(row['step'])} | {row['step_over_peer']:.2f}x "
                     f"| {_f(row['step_prepare'])} |")  # fmt: skip
    if "kafka" in s:
        lines += [
            "",
            f"## End to end from Kafka (1 rank, batch {s['kafka_batch']:,})",
            "",
            "| `unirec train` from the local broker | in-memory step, same batch | Kafka / in memory |",
            "|---:|---:|---:|",
            f"| {_f(s['kafka'])} | {_f(s['kafka_step'])} | {s['kafka_over_step']:.2f} |",
        ]
    lines += [
        "",
        "Peer: `bench/peers/plain_dcn.py` (nn.EmbeddingBag, sparse gradients, Adagrad; pre-hashed ids on the "
        "device). Step: `Trainer.train_batch` with the ingest thread's hashing, routing and host-to-device "
        "staging done ahead, as in the running loop.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--batch-size", type=int, action="append", help="repeatable; default 4096 and 65536")
    parser.add_argument("--batches", type=int, default=8, help="timed batches per run and batch size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kafka-events", type=int, default=200_000, help="0: skip the Kafka run")
    parser.add_argument("--kafka-repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="dry-run sizes: batches 256 and 1024, 3 batches, 1 run")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder of gpu.{json,md}")
    parser.add_argument("--dry-run", action="store_true", help="print the results, write nothing")
    args = parser.parse_args()
    if args.quick:
        args.batch_size = args.batch_size or [256, 1024]
        args.batches, args.repeats, args.kafka_repeats = 3, 1, 1
        args.kafka_events = min(args.kafka_events, 3000)
    args.batch_size = args.batch_size or list(BATCHES)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device (use --device cpu --quick --dry-run for a dry run)")
    if args.device == "cpu" and args.out == RESULTS_DIR and not args.dry_run:
        raise SystemExit("a CPU run must not replace bench/results/gpu.*: pass --dry-run or --out DIR")
    data = measure(args)
    if args.dry_run:
        print(dump_json(data))
        print(render(data))
        return
    print(write_results(NAME, data, render, args.out))


if __name__ == "__main__":
    main()
