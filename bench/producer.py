"""Producer throughput on one core, per encoding and compression, the rate limiter's accuracy, and the
speed of the stages around it (row parsing, encoding, the simulator).

    .venv/bin/python bench/producer.py [--events 30000] [--rate 2000 --rate-seconds 10] [--cpu 0]

Starts its own local broker (Tansu) on a free port and pins this process to one core (`--cpu`); the
broker runs unpinned. The baseline for the producer rows is plain kafka-python sending the same
pre-encoded JSON bytes with the same settings, measured in the same run: the ratio shows what the
replay layer (encoding, keys, errbacks, rate check) costs on top of the client library. The rate row
replays with `rate=` for `rate-seconds` seconds and checks the achieved rate twice: the producer's own
count over its wall time, and the broker's record timestamps (first to last message). Uses ML-100k
(fetched into the cache if needed) and, when present, the Criteo sample. Writes bench/results/producer.md.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import typer

from core.net import free_port
from embedding.wire import EventCodec
from services import datasets
from services.producer import quiet_kafka_logs, replay
from services.replay.reader import iter_events
from services.simulate import SimFeature, Simulator, SimulatorConfig
from unirec.infra import LocalServer

RESULTS = Path(__file__).parent / "results" / "producer.md"


def rate_of(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else 0.0


def best_rate(fn: Callable[[], int], repeats: int) -> tuple[int, float]:
    """(items, best items/s) over `repeats` runs: the least disturbed run on a shared machine."""
    best, n = 0.0, 0
    for _ in range(repeats):
        start = time.perf_counter()
        n = fn()
        best = max(best, rate_of(n, time.perf_counter() - start))
    return n, best


def bench_parse(rows: list[str], repeats: int) -> None:
    n, best = best_rate(lambda: sum(1 for _ in iter_events("movielens")), repeats)
    rows.append(f"| parse ML-100k rows -> events (join u.user, stable sort) | {n:,} | {best:,.0f} | |")
    if datasets.find("criteo") is None:
        rows.append("| parse Criteo sample | absent | - | dataset not present |")
    else:
        n, best = best_rate(lambda: sum(1 for _ in iter_events("criteo")), repeats)
        rows.append(f"| parse Criteo rows -> events (39 columns) | {n:,} | {best:,.0f} | |")
    if datasets.find("frappe") is None:
        rows.append("| parse Frappe | absent | - | dataset not present |")
    else:
        n, best = best_rate(lambda: sum(1 for _ in iter_events("frappe")), repeats)
        rows.append(f"| parse Frappe libFM rows -> events | {n:,} | {best:,.0f} | |")


def bench_encode(events: list, rows: list[str], repeats: int) -> None:
    for encoding in ("json", "msgpack"):
        codec = EventCodec(encoding)  # type: ignore[arg-type]
        size = sum(len(codec.encode(e)) for e in events)
        n, best = best_rate(lambda codec=codec: sum(1 for e in events if codec.encode(e)), repeats)
        rows.append(f"| encode {encoding} | {n:,} | {best:,.0f} | {size / n:.0f} bytes/event |")


def bench_raw_kafka(bootstrap: str, payloads: list[bytes], keys: list[bytes]) -> float:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=5, batch_size=256 * 1024,
                             enable_idempotence=False)
    topic = f"raw-{time.time_ns()}"
    producer.send(topic, b"warm-up").get(timeout=30)
    start = time.perf_counter()
    for value, key in zip(payloads, keys, strict=True):
        producer.send(topic, value=value, key=key)
    producer.flush()
    seconds = time.perf_counter() - start
    producer.close()
    return rate_of(len(payloads), seconds)


CONFIGS = (("json", "none"), ("msgpack", "none"), ("json", "gzip"), ("json", "lz4"), ("json", "zstd"),
           ("msgpack", "lz4"))


def bench_produce(bootstrap: str, events: list, rows: list[str], repeats: int) -> None:
    """Every configuration `repeats` times, round-robin (so a busy spell hits all alike); best run each."""
    codec = EventCodec("json")
    payloads = [codec.encode(e) for e in events]
    keys = [str(e.sparse["user"]).encode() for e in events]
    baseline = 0.0
    best: dict[tuple[str, str], float] = dict.fromkeys(CONFIGS, 0.0)
    volume: dict[tuple[str, str], int] = {}
    for _ in range(repeats):
        baseline = max(baseline, bench_raw_kafka(bootstrap, payloads, keys))
        for encoding, compression in CONFIGS:
            topic = f"bench-{encoding}-{compression}-{time.time_ns()}"
            summary = replay(events, bootstrap, topic, key="user", encoding=encoding,  # type: ignore[arg-type]
                             compression=compression, partitions=1)  # type: ignore[arg-type]
            assert summary.failed == 0, summary.errors
            best[encoding, compression] = max(best[encoding, compression], summary.events_per_s)
            volume[encoding, compression] = summary.bytes
    rows.append(f"| kafka-python send of pre-encoded JSON (baseline) | {len(events):,} | {baseline:,.0f} | 1.00x |")
    for (encoding, compression), rate in best.items():
        rows.append(f"| replay {encoding}, compression {compression} | {len(events):,} | {rate:,.0f} | "
                    f"{rate / baseline:.2f}x ({volume[encoding, compression] / len(events):.0f} bytes/event before "
                    "compression) |")


def bench_rate(bootstrap: str, events: list, rate: float, seconds: float, rows: list[str]) -> tuple[float, float]:
    from kafka import KafkaConsumer, TopicPartition

    n = int(rate * seconds)
    topic = f"bench-rate-{time.time_ns()}"
    summary = replay(events, bootstrap, topic, key="user", rate=rate, limit=n, loops=None, partitions=1)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    stamps: list[int] = []
    deadline = time.monotonic() + 60
    while len(stamps) < n and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500, max_records=10_000).values():
            stamps.extend(r.timestamp for r in records)
    consumer.close()
    broker_rate = rate_of(len(stamps) - 1, (max(stamps) - min(stamps)) / 1000.0)
    producer_rate = summary.events_per_s
    for what, got in (("producer count / wall time", producer_rate), ("record timestamps, first to last", broker_rate)):
        ok = abs(got / rate - 1) <= 0.10
        rows.append(f"| rate limit {rate:,.0f}/s for {seconds:.0f} s: {what} | {len(stamps):,} | {got:,.0f} | "
                    f"{got / rate - 1:+.1%} ({'within' if ok else 'OUTSIDE'} ±10%) |")
    return producer_rate, broker_rate


def bench_simulator(rows: list[str]) -> None:
    config = SimulatorConfig(
        features=(SimFeature(name="user", vocab=2_000_000, zipf=0.9, new_id_rate=0.05, lifetime=50),
                  SimFeature(name="item", vocab=1_000_000, zipf=1.1, new_id_rate=0.1)),
        events_per_window=2_000_000, windows=3,
    )
    start = time.perf_counter()
    windows = list(Simulator(config).windows())
    seconds = time.perf_counter() - start
    distinct = windows[-1].truth.features["user"].distinct
    total = sum(len(w) for w in windows)
    rows.append(f"| simulator: 3 windows x 2M events, 2 features (2M + 1M active IDs), with ground truth | "
                f"{total:,} | {rate_of(total, seconds):,.0f} | {seconds / 3:.2f} s/window, "
                f"{distinct:,} distinct users/window |")
    sim = Simulator(config.model_copy(update={"events_per_window": 50_000, "windows": 1}))
    start = time.perf_counter()
    n = sum(1 for _ in sim.events())
    rows.append(f"| simulator -> Event objects | {n:,} | {rate_of(n, time.perf_counter() - start):,.0f} | |")


def main(
    events: int = typer.Option(30_000, help="Events per producer run."),
    rate: float = typer.Option(2000.0, help="Rate for the rate-limit check (events/s)."),
    rate_seconds: float = typer.Option(10.0, help="Duration of the rate-limit check."),
    cpu: int = typer.Option(0, help="Core to pin this process to."),
    repeats: int = typer.Option(3, min=1, help="Runs per measurement; the best is reported."),
) -> None:
    all_cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    quiet_kafka_logs()
    rows: list[str] = []
    load_before = os.getloadavg()[0]
    ml = list(iter_events("movielens", limit=events))
    bench_parse(rows, repeats)
    bench_encode(ml, rows, repeats)
    with tempfile.TemporaryDirectory() as home:
        server = LocalServer("kafka", "127.0.0.1", free_port(), Path(home))
        server.start(timeout=30)
        try:
            bench_produce(server.address, ml, rows, repeats)
            os.sched_setaffinity(0, all_cpus)  # the rate check runs like the CLI does: unpinned
            producer_rate, broker_rate = bench_rate(server.address, ml, rate, rate_seconds, rows)
        finally:
            server.stop()
    bench_simulator(rows)
    load_after = os.getloadavg()[0]
    text = "\n".join([
        "# Producer benchmark",
        "",
        "`.venv/bin/python bench/producer.py` "
        f"(events={events}, rate={rate:.0f}/s for {rate_seconds:.0f} s). This process pinned to one core "
        "(the rate check unpinned, as the CLI runs); the local Tansu broker unpinned, on the same machine.",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"1-min load average {load_before:.1f} before and {load_after:.1f} after: other jobs share the cores, so "
        f"absolute rates are indicative; every row is the best of {repeats} runs, producer configurations "
        "round-robin, and ratios are to the baseline measured in the same run.",
        "",
        "| what | events | events/s | note / ratio to baseline |",
        "|---|---:|---:|---|",
        *rows,
        "",
        f"Rate limiter: asked {rate:,.0f}/s, got {producer_rate:,.0f}/s by the producer's count and "
        f"{broker_rate:,.0f}/s by broker timestamps.",
        "",
    ])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    typer.run(main)
