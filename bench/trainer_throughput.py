"""Trainer throughput, every ratio against a baseline measured in the same run:

(a) `peer`: the same DCN-v2 written by hand in plain PyTorch (bench/peers/plain_dcn.py: one
    nn.EmbeddingBag(100_000, 16, sparse=True) for the 6 MovieLens features, Adagrad + Adam, 1 thread),
    on in-memory batches of pre-hashed row ids;
(b) `step`: the project's training step (`Trainer.train_batch`: hashing and routing, DMP over gloo,
    fused row-wise Adagrad, churn tracking, progressive validation, metrics), 1 thread, on in-memory
    pre-featurized batches of fingerprints; `featurize` is the Featurizer on the same events alone;
(c) `kafka`: `unirec train` end to end from the local broker with its defaults, 1 and 2 ranks;
(d) `ceiling`: kafka-python consume + msgspec decode of the same topic, one process, manual assignment;
(e) `independent`: two 1-rank `unirec train` at once, each on a topic of its own holding half the
    events (split by user): what 2 processes on these cores train without any collective, the limit
    of (c) with 2 ranks.

    .venv/bin/python bench/trainer_throughput.py [--events 50000] [--repeats 2] [--label after]

Batch sizes 64, 1024 and 4096 for (a) and (b) (`--batch-size` to choose), the trainer's defaults
for (c). Writes bench/results/trainer_throughput.{json,md} (bench/report.py); each `--label`
(e.g. `before`, `after`) is kept as its own run in the JSON, so one file holds the before/after.
Data: the first N MovieLens-100k ratings in time order.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.peers.plain_dcn import hashed_rows, train_rate
from bench.report import RESULTS_DIR, machine_load, refuse_when_busy, write_results

NAME = "trainer_throughput"
BATCHES = (64, 1024, 4096)


def _events(n: int) -> list:
    from services.replay.reader import iter_events

    return list(iter_events("movielens", limit=n))


def peer_rate(events: list, batch_size: int) -> float:
    from embedding.schema import load_schema

    torch.set_num_threads(1)
    schema = load_schema("movielens")
    columns = [[e.sparse[spec.name] for e in events] for spec in schema.sparse]
    rows = hashed_rows(columns, 100_000)
    labels = torch.tensor([float(e.label) for e in events])
    return train_rate(rows, labels, batch_size)


def step_rates(events: list, home: Path, redis_url: str, batch_size: int) -> tuple[float, float]:
    """(training steps events/s, featurizer events/s) of the real Trainer on in-memory batches."""
    import torch.distributed as dist

    from core.net import free_port
    from embedding.events import Featurizer
    from trainer.ingest import Batch
    from trainer.loop import Trainer
    from trainer.settings import TrainerSettings

    os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    settings = TrainerSettings(home=home, redis_url=redis_url, metrics_port=0, export_every_s=0, delta_every_s=0,
                               threads=1, batch_size=batch_size)  # fmt: skip
    trainer = Trainer(settings)
    try:
        featurizer = Featurizer(trainer.schema)
        chunks = [events[i : i + batch_size] for i in range(0, len(events), batch_size)]
        started = time.perf_counter()
        features = [featurizer(chunk) for chunk in chunks]
        featurize = len(events) / (time.perf_counter() - started)
        batches = [
            Batch(features=f, event_ids=[e.event_id for e in c], max_ts_ms=max(e.ts for e in c), offsets={})
            for f, c in zip(features, chunks, strict=True)
        ]
        trainer.train_batch(batches[0])  # warm-up, untimed
        started = time.perf_counter()
        for batch in batches:
            trainer.train_batch(batch)
        step = len(events) / (time.perf_counter() - started)
    finally:
        trainer.churn.close()
        dist.destroy_process_group()
    return step, featurize


def kafka_rate(
    bootstrap: str, redis_url: str, topic: str, home: Path, ranks: int, batch_size: int | None = None,
    settings: dict[str, str] | None = None, churn_prefix: str | None = None,
) -> dict[str, float]:
    """`unirec train` with its defaults (only the broker, topic, home, stop-at-end and no metrics port set;
    `batch_size` overrides the default for the sweep that chooses it, `settings` any other trainer
    setting by its name after `UNIREC_TRAINER_`)."""
    launcher = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNIREC_") and k not in launcher} | {
        "UNIREC_HOME": str(home), "UNIREC_KAFKA_BOOTSTRAP": bootstrap, "UNIREC_REDIS_URL": redis_url,
        "UNIREC_TRAINER_TOPIC": topic, "UNIREC_TRAINER_STOP_AT_END": "true", "UNIREC_TRAINER_METRICS_PORT": "0",
    }  # fmt: skip
    if batch_size:
        env["UNIREC_TRAINER_BATCH_SIZE"] = str(batch_size)
    env.update({f"UNIREC_TRAINER_{k.upper()}": v for k, v in (settings or {}).items()})
    if churn_prefix:
        env["UNIREC_CHURN_KEY_PREFIX"] = churn_prefix
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "unirec.cli", "train", "--nproc", str(ranks)],
                         env=env, capture_output=True, text=True)  # fmt: skip
    wall = time.monotonic() - started
    if out.returncode:
        raise SystemExit(f"trainer failed ({out.returncode}):\n{out.stderr[-3000:]}")
    stops = [json.loads(line) for line in out.stderr.splitlines() if '"event":"stopped"' in line]
    assert len(stops) == ranks, out.stderr[-2000:]
    events = sum(s["events"] for s in stops)
    seconds = max(s["train_seconds"] for s in stops)
    first_batch = min(s["ts"] - s["train_seconds"] for s in stops)
    return {"events_per_s": events / seconds, "events": events, "train_seconds": seconds, "wall_seconds": wall,
            "first_batch_ts": first_batch, "stopped_ts": max(s["ts"] for s in stops), "steps": stops[0]["step"],
            "agreements": stops[0]["agreements"]}  # fmt: skip


def independent_rate(bootstrap: str, redis_url: str, topics: list[str], home: Path) -> float:
    """(e): one 1-rank trainer per topic, all at once (each its own churn keys in Redis); events of all
    ÷ the span from the first trainer's first batch to the last one's stop."""
    with ThreadPoolExecutor(len(topics)) as pool:
        runs = list(pool.map(lambda i: kafka_rate(bootstrap, redis_url, topics[i], home / f"t{i}", 1,
                                                  churn_prefix=f"{topics[i]}:churn"), range(len(topics))))  # fmt: skip
    span = max(r["stopped_ts"] for r in runs) - min(r["first_batch_ts"] for r in runs)
    return sum(r["events"] for r in runs) / span


def ceiling_rate(bootstrap: str, topic: str, expected: int) -> float:
    """kafka-python consume + decode: one consumer assigned every partition, msgspec per message."""
    from kafka import KafkaConsumer, TopicPartition

    from embedding.wire import decode_message

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, max_poll_records=10_000,
                             fetch_max_wait_ms=50, max_partition_fetch_bytes=8 << 20)  # fmt: skip
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning()
        n = 0
        started = time.perf_counter()
        while n < expected:
            for records in consumer.poll(timeout_ms=200).values():
                for record in records:
                    decode_message(record.value, record.headers)
                    n += 1
            if time.perf_counter() - started > 300:
                raise SystemExit(f"ceiling: only {n} of {expected} records after 300 s")
        return n / (time.perf_counter() - started)
    finally:
        consumer.close()


def sweep_points(args: argparse.Namespace) -> list[tuple[int, str]]:
    """(batch size, ingest) of each extra (c) run: every `--kafka-batch` with the ingest thread, and
    with `--ingest-process` the defaults and every `--kafka-batch` with the ingest process too."""
    points = [(b, "thread") for b in args.kafka_batch or ()]
    if args.ingest_process:
        points += [(b, "process") for b in [defaults()["batch_size"], *(args.kafka_batch or ())]]
    return list(dict.fromkeys(points))


def defaults() -> dict[str, Any]:
    from trainer.settings import TrainerSettings

    s = TrainerSettings()
    return {"batch_size": s.batch_size, "max_wait_ms": s.max_wait_ms, "threads": s.threads,
            "method_args": s.model.method_args, "ingest_process": s.ingest_process}  # fmt: skip


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from core.net import free_port
    from services.producer import replay
    from unirec.infra import LocalServer

    events = _events(args.events)
    runs: dict[str, Any] = {"peer": {}, "step": {}, "featurize": {}, "kafka_1": [], "kafka_2": [], "ceiling": [],
                            "independent": [], "kafka_sweep": []}  # fmt: skip
    load_before = machine_load()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        kafka = LocalServer("kafka", "127.0.0.1", free_port(), root)
        redis = LocalServer("redis", "127.0.0.1", free_port(), root)
        kafka.start()
        redis.start()
        try:
            topic = f"bench-{time.time_ns()}"
            replay(events, kafka.address, topic, key="user", partitions=2)
            halves = [f"{topic}-half{i}" for i in range(2)]
            for i, half in enumerate(halves):
                replay([e for e in events if int(e.sparse["user"]) % 2 == i], kafka.address, half, partitions=1)
            for r in range(args.repeats):
                for b in args.batch_size:
                    runs["peer"].setdefault(str(b), []).append(peer_rate(events, b))
                    step, feat = step_rates(events, root / f"mem{r}-{b}", redis.address, b)
                    runs["step"].setdefault(str(b), []).append(step)
                    runs["featurize"].setdefault(str(b), []).append(feat)
                    print(f"repeat {r} batch {b}: peer {runs['peer'][str(b)][-1]:,.0f}/s, step {step:,.0f}/s, "
                          f"featurize {feat:,.0f}/s", flush=True)  # fmt: skip
                if not args.no_kafka:
                    runs["ceiling"].append(ceiling_rate(kafka.address, topic, len(events)))
                    for ranks in (1, 2):
                        runs[f"kafka_{ranks}"].append(
                            kafka_rate(kafka.address, redis.address, topic, root / f"k{ranks}-{r}", ranks)
                        )
                    runs["independent"].append(independent_rate(kafka.address, redis.address, halves, root / f"i{r}"))
                    for b, ingest in sweep_points(args):
                        for ranks in (1, 2):
                            home = root / f"s{b}-{ranks}-{ingest}-{r}"
                            settings = {"ingest_process": "true" if ingest == "process" else "false"}
                            rate = kafka_rate(kafka.address, redis.address, topic, home, ranks, b, settings)
                            runs["kafka_sweep"].append({"batch_size": b, "ranks": ranks, "ingest": ingest, **rate})
                            print(f"sweep batch {b}, {ranks} ranks, ingest {ingest}: {rate['events_per_s']:,.0f}/s",
                                  flush=True)  # fmt: skip
                    print(f"repeat {r}: ceiling {runs['ceiling'][-1]:,.0f}/s, kafka 1 rank "
                          f"{runs['kafka_1'][-1]['events_per_s']:,.0f}/s, 2 ranks "
                          f"{runs['kafka_2'][-1]['events_per_s']:,.0f}/s, 2 independent "
                          f"{runs['independent'][-1]:,.0f}/s", flush=True)  # fmt: skip
        finally:
            kafka.stop()
            redis.stop()
    med = statistics.median
    summary: dict[str, Any] = {"batch": {}}
    for b in args.batch_size:
        peer, step = med(runs["peer"][str(b)]), med(runs["step"][str(b)])
        summary["batch"][str(b)] = {"peer": peer, "step": step, "featurize": med(runs["featurize"][str(b)]),
                                    "step_over_peer": step / peer}  # fmt: skip
    if runs["ceiling"]:
        ceiling = med(runs["ceiling"])
        summary["ceiling"] = ceiling
        for ranks in (1, 2):
            rate = med([x["events_per_s"] for x in runs[f"kafka_{ranks}"]])
            summary[f"kafka_{ranks}"] = rate
            summary[f"kafka_{ranks}_over_ceiling"] = rate / ceiling
        summary["kafka_2_over_kafka_1"] = summary["kafka_2"] / summary["kafka_1"]
        summary["independent"] = med(runs["independent"])
        summary["kafka_2_over_independent"] = summary["kafka_2"] / summary["independent"]
    return {
        "events": len(events),
        "repeats": args.repeats,
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "load_before": round(load_before, 2),
        "load_after": round(machine_load(), 2),
        "trainer_defaults": defaults(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "runs": runs,
        "summary": summary,
    }


def _f(x: float) -> str:
    return f"{x:,.0f}"


def render(data: dict[str, Any]) -> str:
    lines = ["# Trainer throughput: plain-PyTorch peer, training step, Kafka end to end, consume ceiling", ""]
    lines += [
        "Every ratio is between figures of the same run (`bench/trainer_throughput.py`). (a) peer: the same "
        "DCN-v2 written by hand in plain PyTorch (`bench/peers/plain_dcn.py`), in-memory batches of pre-hashed "
        "ids; (b) step: `Trainer.train_batch` on in-memory batches of fingerprints (hashing, routing, DMP, "
        "fused row-wise Adagrad, churn, progressive validation); featurize: the Featurizer alone; (c) "
        "`unirec train` end to end from the local broker with its defaults; (d) ceiling: kafka-python "
        "consume + msgspec decode, one process, all partitions; (e) two 1-rank trainers at once, each on a "
        "topic holding half the events (split by user): 2 processes with no collective between them, the limit "
        "of 2 ranks on these cores. (a) and (b) run 1 torch thread.",
        "",
    ]
    for label, run in sorted(data["labels"].items(), key=lambda kv: kv[1]["created"]):
        s = run["summary"]
        d = run["trainer_defaults"]
        lines += [
            f"## {label}",
            "",
            f"{run['created']}; MovieLens-100k, first {run['events']:,} ratings; median of {run['repeats']} "
            f"repeats; {run['cores']} cores; load average {run['load_before']} before, {run['load_after']} after; "
            f"trainer defaults: batch {d['batch_size']}, max wait {d['max_wait_ms']} ms, "
            f"method args {d['method_args']}"
            + (", ingest process unset (a child where the rank has 2 CPUs or more: 1 rank here; 2 ranks "
               "pinned to one core each keep the thread)" if "ingest_process" in d and d["ingest_process"] is None
               else "") + ".",
            "",
            "| batch | (a) peer events/s | (b) step events/s | (b)/(a) | featurize events/s |",
            "|---:|---:|---:|---:|---:|",
        ]
        for b, row in sorted(s["batch"].items(), key=lambda kv: int(kv[0])):
            lines.append(f"| {b} | {_f(row['peer'])} | {_f(row['step'])} | {row['step_over_peer']:.2f} | "
                         f"{_f(row['featurize'])} |")  # fmt: skip
        if "ceiling" in s:
            k1 = [x["events_per_s"] for x in run["runs"]["kafka_1"]]
            k2 = [x["events_per_s"] for x in run["runs"]["kafka_2"]]
            lines += [
                "",
                "| path | events/s (median) | runs | ÷ (d) ceiling |",
                "|---|---:|---|---:|",
                f"| (d) kafka-python consume + decode, 1 process | {_f(s['ceiling'])} | "
                f"{', '.join(_f(x) for x in run['runs']['ceiling'])} | 1.00 |",
                f"| (c) `unirec train` defaults, 1 rank | {_f(s['kafka_1'])} | {', '.join(_f(x) for x in k1)} | "
                f"{s['kafka_1_over_ceiling']:.2f} |",
                f"| (c) `unirec train` defaults, 2 ranks | {_f(s['kafka_2'])} | {', '.join(_f(x) for x in k2)} | "
                f"{s['kafka_2_over_ceiling']:.2f} |",
            ]
            if "independent" in s:  # rounds before it was measured lack it
                lines.append(f"| (e) 2 independent 1-rank trainers, half the events each | {_f(s['independent'])} | "
                             f"{', '.join(_f(x) for x in run['runs']['independent'])} | "
                             f"{s['independent'] / s['ceiling']:.2f} |")  # fmt: skip
            lines += [
                "",
                f"2 ranks ÷ 1 rank: {s['kafka_2_over_kafka_1']:.2f}"
                + (f"; 2 ranks ÷ (e): {s['kafka_2_over_independent']:.2f}" if "independent" in s else "")
                + ". End-to-end rate: events trained ÷ seconds from the first batch to the drained topic "
                "(start-up excluded).",
            ]
            covered = [x for x in run["runs"]["kafka_2"] if "agreements" in x]
            if covered:  # rounds before one agreement covered several steps lack it
                lines[-1] += " Steps ÷ agreements of the ranks, 2 ranks: " + ", ".join(
                    f"{x['steps'] / max(x['agreements'], 1):.1f}" for x in covered) + "."  # fmt: skip
        sweep = run["runs"].get("kafka_sweep") or []
        if sweep:
            lines += ["", "Sweep of (c) over the batch size and where ingestion runs (a thread of the rank, or "
                      "`UNIREC_TRAINER_INGEST_PROCESS`: a child process per rank); every other setting at its "
                      "default; median over the repeats:", "", "| batch | ranks | ingest | events/s | runs | ÷ (d) |",
                      "|---:|---:|---|---:|---|---:|"]  # fmt: skip
            points: dict[tuple[int, int, str], list[float]] = {}
            for x in sweep:
                key = (x["batch_size"], x["ranks"], x.get("ingest", "thread"))
                points.setdefault(key, []).append(x["events_per_s"])
            for (b, ranks, ingest), rates in sorted(points.items()):
                rate = statistics.median(rates)
                lines.append(f"| {b} | {ranks} | {ingest} | {_f(rate)} | {', '.join(_f(x) for x in rates)} | "
                             f"{rate / s['ceiling']:.2f} |")  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, action="append", help="repeatable; default 64, 1024, 4096")
    parser.add_argument("--label", default="after", help="name of this run in the results (e.g. before, after)")
    parser.add_argument("--no-kafka", action="store_true", help="only (a) and (b)")
    parser.add_argument("--kafka-batch", type=int, action="append", help="also run (c) at this batch size (sweep)")
    parser.add_argument("--ingest-process", action="store_true",
                        help="also run (c) at the defaults and every --kafka-batch with the ingest process per rank")
    parser.add_argument("--max-load", type=float, default=1.5, help="refuse to run above this load average")
    parser.add_argument("--dry-run", action="store_true", help="print, do not write results")
    args = parser.parse_args()
    args.batch_size = args.batch_size or list(BATCHES)
    refuse_when_busy(args.max_load)
    run = measure(args)
    print(json.dumps(run["summary"], indent=2))
    if args.dry_run:
        return
    path = RESULTS_DIR / f"{NAME}.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault("labels", {})[args.label] = run
    print(write_results(NAME, data, render))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
