"""Producer throughput on one core, per encoding and compression, the rate limiter's accuracy, and the
speed of the stages around it (row parsing, encoding, the simulator).

    .venv/bin/python bench/producer.py [--events 30000] [--rate 2000 --rate-seconds 10] [--cpu 0]

Starts its own local broker (Tansu) on a free port and pins this process to one core (`--cpu`); the
broker runs unpinned. The baseline for the producer rows is plain kafka-python sending the same
pre-encoded JSON bytes with the same settings, measured in the same run: the ratio shows what the
replay layer (encoding, keys, errbacks, rate check) costs on top of the client library. The rate row
replays with `rate=` for `rate-seconds` seconds and checks the achieved rate twice: the producer's own
count over its wall time, and the broker's record timestamps (first to last message). Uses ML-100k
(fetched into the cache if needed) and, when present, the Criteo sample. Writes
bench/results/producer.{json,md} (bench/report.py `write_results`, `render`).
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from bench.report import machine_load, write_results
from core.net import free_port
from embedding.wire import EventCodec
from services import datasets
from services.producer import quiet_kafka_logs, replay
from services.replay.reader import iter_events
from services.simulate import SimFeature, Simulator, SimulatorConfig
from unirec.infra import LocalServer

NAME = "producer"
Row = dict[str, Any]
"""One table row: `what`, `events`, `events_per_s` and the fields of its note (see `render_row`)."""


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


def bench_parse(rows: list[Row], repeats: int) -> None:
    n, best = best_rate(lambda: sum(1 for _ in iter_events("movielens")), repeats)
    rows.append({"what": "parse ML-100k rows -> events (join u.user, stable sort)", "events": n, "events_per_s": best})
    for name, what in (("criteo", "parse Criteo rows -> events (39 columns)"),
                       ("frappe", "parse Frappe libFM rows -> events")):  # fmt: skip
        if datasets.find(name) is None:
            rows.append({"what": f"parse {name}", "events": None, "events_per_s": None, "absent": True})
        else:
            n, best = best_rate(lambda name=name: sum(1 for _ in iter_events(name)), repeats)
            rows.append({"what": what, "events": n, "events_per_s": best})


def bench_encode(events: list, rows: list[Row], repeats: int) -> None:
    for encoding in ("json", "msgpack"):
        codec = EventCodec(encoding)  # type: ignore[arg-type]
        size = sum(len(codec.encode(e)) for e in events)
        n, best = best_rate(lambda codec=codec: sum(1 for e in events if codec.encode(e)), repeats)
        rows.append({"what": f"encode {encoding}", "events": n, "events_per_s": best, "bytes_per_event": size / n})


def bench_raw_kafka(bootstrap: str, payloads: list[bytes], keys: list[bytes]) -> float:
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks=1, linger_ms=5, batch_size=256 * 1024, enable_idempotence=False
    )
    topic = f"raw-{time.time_ns()}"
    producer.send(topic, b"warm-up").get(timeout=30)
    start = time.perf_counter()
    for value, key in zip(payloads, keys, strict=True):
        producer.send(topic, value=value, key=key)
    producer.flush()
    seconds = time.perf_counter() - start
    producer.close()
    return rate_of(len(payloads), seconds)


CONFIGS = (
    ("json", "none"),
    ("msgpack", "none"),
    ("json", "gzip"),
    ("json", "lz4"),
    ("json", "zstd"),
    ("msgpack", "lz4"),
)


def bench_produce(bootstrap: str, events: list, rows: list[Row], repeats: int) -> None:
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
            summary = replay(
                events,
                bootstrap,
                topic,
                key="user",
                encoding=encoding,  # type: ignore[arg-type]
                compression=compression,
                partitions=1,
            )  # type: ignore[arg-type]
            assert summary.failed == 0, summary.errors
            best[encoding, compression] = max(best[encoding, compression], summary.events_per_s)
            volume[encoding, compression] = summary.bytes
    rows.append({"what": "kafka-python send of pre-encoded JSON (baseline)", "events": len(events),
                 "events_per_s": baseline, "baseline": True})  # fmt: skip
    for (encoding, compression), rate in best.items():
        rows.append({"what": f"replay {encoding}, compression {compression}", "events": len(events),
                     "events_per_s": rate, "vs_baseline": baseline,
                     "bytes_per_event_uncompressed": volume[encoding, compression] / len(events)})  # fmt: skip


def bench_rate(bootstrap: str, events: list, rate: float, seconds: float, rows: list[Row]) -> tuple[float, float]:
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
        rows.append({"what": f"rate limit {rate:,.0f}/s for {seconds:.0f} s: {what}", "events": len(stamps),
                     "events_per_s": got, "asked": rate})  # fmt: skip
    return producer_rate, broker_rate


def bench_simulator(rows: list[Row]) -> None:
    config = SimulatorConfig(
        features=(
            SimFeature(name="user", vocab=2_000_000, zipf=0.9, new_id_rate=0.05, lifetime=50),
            SimFeature(name="item", vocab=1_000_000, zipf=1.1, new_id_rate=0.1),
        ),
        events_per_window=2_000_000,
        windows=3,
    )
    start = time.perf_counter()
    windows = list(Simulator(config).windows())
    seconds = time.perf_counter() - start
    distinct = windows[-1].truth.features["user"].distinct
    total = sum(len(w) for w in windows)
    rows.append({"what": "simulator: 3 windows x 2M events, 2 features (2M + 1M active IDs), with ground truth",
                 "events": total, "events_per_s": rate_of(total, seconds), "s_per_window": seconds / 3,
                 "distinct_users": distinct})  # fmt: skip
    sim = Simulator(config.model_copy(update={"events_per_window": 50_000, "windows": 1}))
    start = time.perf_counter()
    n = sum(1 for _ in sim.events())
    rows.append(
        {"what": "simulator -> Event objects", "events": n, "events_per_s": rate_of(n, time.perf_counter() - start)}
    )


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
    rows: list[Row] = []
    load_before = machine_load()
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
    data = {
        "events": events,
        "rate": rate,
        "rate_seconds": rate_seconds,
        "repeats": repeats,
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "load_before": load_before,
        "load_after": machine_load(),
        "producer_rate": producer_rate,
        "broker_rate": broker_rate,
        "rows": rows,
    }
    print(write_results(NAME, data, render).read_text())


def render_row(row: Row) -> str:
    if row.get("absent"):
        return f"| {row['what']} | absent | - | dataset not present |"
    if row.get("baseline"):
        note = "1.00x"
    elif "vs_baseline" in row:
        note = (f"{row['events_per_s'] / row['vs_baseline']:.2f}x ({row['bytes_per_event_uncompressed']:.0f} "
                "bytes/event before compression)")  # fmt: skip
    elif "asked" in row:
        off = row["events_per_s"] / row["asked"] - 1
        note = f"{off:+.1%} ({'within' if abs(off) <= 0.10 else 'OUTSIDE'} ±10%)"
    elif "s_per_window" in row:
        note = f"{row['s_per_window']:.2f} s/window, {row['distinct_users']:,} distinct users/window"
    elif "bytes_per_event" in row:
        note = f"{row['bytes_per_event']:.0f} bytes/event"
    else:
        note = ""
    return f"| {row['what']} | {row['events']:,} | {row['events_per_s']:,.0f} | {note}{' ' if note else ''}|"


def render(data: dict[str, Any]) -> str:
    return "\n".join([
        "# Producer benchmark",
        "",
        "`.venv/bin/python bench/producer.py` "
        f"(events={data['events']}, rate={data['rate']:.0f}/s for {data['rate_seconds']:.0f} s). This process "
        "pinned to one core (the rate check unpinned, as the CLI runs); the local Tansu broker unpinned, on the "
        "same machine.",
        f"Machine: {data['machine']}, {data['cores']} cores, Python {data['python']}; "
        f"1-min load average {data['load_before']:.1f} before and {data['load_after']:.1f} after: other jobs share "
        f"the cores, so absolute rates are indicative; every row is the best of {data['repeats']} runs, producer "
        "configurations round-robin, and ratios are to the baseline measured in the same run.",
        "",
        "| what | events | events/s | note / ratio to baseline |",
        "|---|---:|---:|---|",
        *map(render_row, data["rows"]),
        "",
        f"Rate limiter: asked {data['rate']:,.0f}/s, got {data['producer_rate']:,.0f}/s by the producer's count "
        f"and {data['broker_rate']:,.0f}/s by broker timestamps.",
        "",
    ])  # fmt: skip


if __name__ == "__main__":
    typer.run(main)
