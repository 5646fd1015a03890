"""Trainer throughput: events/s trained end to end from Kafka vs the same model on pre-decoded,
pre-featurized in-memory batches (the compute limit), measured in the same run.

    .venv/bin/python bench/trainer_throughput.py [--events 20000] [--repeats 3]

Writes bench/results/trainer_throughput.md. Data: the first N MovieLens-100k ratings (fetched into
the cache on first use). Both paths run the real Trainer (DMP over gloo, fused row-wise Adagrad,
churn tracking, progressive validation); the end-to-end path adds Kafka polling, msgspec decoding,
featurization in the prefetch thread and offset bookkeeping.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch.distributed as dist

from core.net import free_port
from embedding.events import Featurizer
from services.producer import replay
from services.replay.reader import iter_events
from trainer.ingest import Batch
from trainer.loop import Trainer
from trainer.settings import TrainerSettings
from unirec.infra import LocalServer

RESULTS = Path(__file__).parent / "results" / "trainer_throughput.md"


def in_memory_rate(events: list, home: Path, redis_url: str, batch_size: int) -> float:
    settings = TrainerSettings(home=home, redis_url=redis_url, metrics_port=0, export_every_s=0, threads=1)
    trainer = Trainer(settings)
    featurizer = Featurizer(trainer.schema)
    batches = [
        Batch(features=featurizer(chunk), event_ids=[e.event_id for e in chunk], max_ts_ms=max(e.ts for e in chunk),
              offsets={})
        for chunk in (events[i : i + batch_size] for i in range(0, len(events), batch_size))
    ]  # fmt: skip
    started = time.perf_counter()
    for batch in batches:
        trainer.train_batch(batch)
    seconds = time.perf_counter() - started
    trainer.churn.close()
    dist.destroy_process_group()
    return len(events) / seconds


def kafka_rate(events: list, bootstrap: str, redis_url: str, home: Path, ranks: int) -> float:
    topic = f"bench-{time.time_ns()}"
    replay(events, bootstrap, topic, key="user", partitions=2)
    launcher = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNIREC_") and k not in launcher} | {
        "UNIREC_HOME": str(home), "UNIREC_KAFKA_BOOTSTRAP": bootstrap, "UNIREC_REDIS_URL": redis_url,
        "UNIREC_TRAINER_TOPIC": topic, "UNIREC_TRAINER_STOP_AT_END": "true", "UNIREC_TRAINER_METRICS_PORT": "0",
        "UNIREC_TRAINER_EXPORT_EVERY_S": "0", "UNIREC_TRAINER_THREADS": "1",
    }  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "unirec.cli", "train", "--nproc", str(ranks)],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    if out.returncode:
        raise SystemExit(f"trainer failed ({out.returncode}):\n{out.stderr[-3000:]}")
    stops = [json.loads(line) for line in out.stderr.splitlines() if '"event":"stopped"' in line]
    assert len(stops) == ranks, out.stderr[-2000:]
    return sum(s["events"] for s in stops) / max(s["train_seconds"] for s in stops)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=TrainerSettings().batch_size)
    args = parser.parse_args()
    events = list(iter_events("movielens", limit=args.events))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        kafka = LocalServer("kafka", "127.0.0.1", free_port(), root)
        redis = LocalServer("redis", "127.0.0.1", free_port(), root)
        kafka.start()
        redis.start()
        try:
            memory, e2e1, e2e2 = [], [], []
            for r in range(args.repeats):
                os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
                memory.append(in_memory_rate(events, root / f"mem{r}", redis.address, args.batch_size))
                e2e1.append(kafka_rate(events, kafka.address, redis.address, root / f"k1-{r}", ranks=1))
                e2e2.append(kafka_rate(events, kafka.address, redis.address, root / f"k2-{r}", ranks=2))
                print(f"repeat {r}: in-memory {memory[-1]:,.0f}/s, kafka 1 rank {e2e1[-1]:,.0f}/s, "
                      f"kafka 2 ranks {e2e2[-1]:,.0f}/s", flush=True)  # fmt: skip
        finally:
            kafka.stop()
            redis.stop()
    med = {k: statistics.median(v) for k, v in {"memory": memory, "kafka1": e2e1, "kafka2": e2e2}.items()}
    lines = [
        "# Trainer throughput: Kafka end to end vs in-memory batches",
        "",
        f"MovieLens-100k, first {args.events:,} ratings; batch {args.batch_size}; DCN-v2 over unified embedding "
        f"(defaults); 1 torch thread per rank; median of {args.repeats} runs; {os.cpu_count()} cores.",
        "",
        "| path | events/s (median) | runs | ratio vs in-memory |",
        "|---|---:|---|---:|",
        f"| in-memory, pre-featurized, 1 rank | {med['memory']:,.0f} | "
        f"{', '.join(f'{x:,.0f}' for x in memory)} | 1.00 |",
        f"| Kafka end to end, 1 rank | {med['kafka1']:,.0f} | {', '.join(f'{x:,.0f}' for x in e2e1)} | "
        f"{med['kafka1'] / med['memory']:.2f} |",
        f"| Kafka end to end, 2 ranks (gloo) | {med['kafka2']:,.0f} | {', '.join(f'{x:,.0f}' for x in e2e2)} | "
        f"{med['kafka2'] / med['memory']:.2f} |",
        "",
        "End-to-end rate: events trained / seconds from the first batch to the drained topic (startup excluded).",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
