"""Replay datasets (or any event stream) into a Kafka topic.

    unirec produce movielens --topic events --rate 2000 --limit 50000
    unirec produce criteo --path train.txt --compression lz4 --encoding msgpack
    unirec produce my-dataset.yaml --path data.csv --loop        # any CSV/TSV described by a feature YAML

Python API (the trainer tests and `unirec up` use it):

    summary = replay(iter_events("movielens", limit=5000), bootstrap, "events", key="user")

One message per event: value = the encoded event (JSON by default, msgpack on request), key = the
value of an entity feature (`--key`, default the schema's `source.key`), header `content-type`.
A token bucket holds the rate (`--rate` events/s); `--loop` replays the dataset again and again with
fresh event ids (`<id>~<pass>`) and event time shifted by the dataset's span per pass, so event time
keeps increasing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import msgspec
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from core.errors import UnirecError
from core.logs import get_logger, log_event
from core.settings import CommonSettings
from embedding.events import Event
from embedding.wire import EventCodec
from services.replay.errors import ReplayError
from services.replay.reader import BadRowReport

log = get_logger("producer")
console = Console(stderr=True)

Compression = Literal["none", "gzip", "lz4", "zstd"]
COMPRESSIONS: tuple[str, ...] = ("none", "gzip", "lz4", "zstd")
"""Codecs checked with kafka-python against the local Tansu broker (snappy needs python-snappy: not installed)."""


class ProducerSettings(CommonSettings):
    """Producer defaults (env UNIREC_EVENTS_TOPIC, ...); CLI options override them."""

    events_topic: str = "events"


# ---------------------------------------------------------------------------------------------- rate


class TokenBucket:
    """Allows `rate` events per second on average, with bursts of at most `burst` events.

    It starts nearly empty (no burst at start). The default burst, a quarter second of events, lets a
    producer that was held up (a slow flush, a busy CPU) catch up, so the long-run rate stays on target.
    """

    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.perf_counter) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be > 0 events/s, got {rate}")
        self.rate = float(rate)
        self.burst = float(burst) if burst is not None else max(1.0, self.rate / 4.0)
        self._clock = clock
        self._tokens = min(1.0, self.burst)
        self._last = clock()

    def delay(self, n: float = 1.0) -> float:
        """Take `n` tokens; return how long the caller must sleep before going on (0 when none).
        The tokens are taken even when the caller must wait, so waits can be batched: sleeping only once
        the delay is worth it keeps the average exact."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= n
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def acquire(self, n: float = 1.0) -> None:
        wait = self.delay(n)
        if wait > 0:
            time.sleep(wait)


# ---------------------------------------------------------------------------------------------- summary


@dataclass
class ProduceSummary:
    topic: str
    sent: int = 0
    """Acknowledged by the broker."""
    failed: int = 0
    bytes: int = 0
    """Message values plus keys, before compression."""
    seconds: float = 0.0
    bad_rows: int = 0
    passes: int = 0
    """Passes over the source that were started (the last one may have been cut by `limit`)."""
    errors: list[str] = field(default_factory=list)
    """The first few delivery errors."""

    @property
    def events_per_s(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        return asdict(self) | {"events_per_s": round(self.events_per_s, 1)}


# ---------------------------------------------------------------------------------------------- loop


def looped(events: Iterable[Event], loops: int | None) -> Iterator[tuple[int, Event]]:
    """(pass, event) over `loops` passes (None: forever). Pass p > 0 gets ids `<id>~<p>` and ts shifted by
    p * span, where span = (last ts - first ts of pass 0) + the smallest positive step seen (>= 1 ms)."""
    if loops is not None and loops < 1:
        raise ValueError(f"loops must be >= 1 (or None for forever), got {loops}")
    if loops != 1 and iter(events) is events:
        raise ValueError("looping needs a re-iterable source (a list or a reader), not a one-shot iterator")
    lo = hi = None
    step = 0
    prev = None
    for event in events:
        yield 0, event
        ts = event.ts
        lo = ts if lo is None else min(lo, ts)
        hi = ts if hi is None else max(hi, ts)
        if prev is not None and ts > prev and (step == 0 or ts - prev < step):
            step = ts - prev
        prev = ts
    if lo is None or hi is None:
        return
    span = hi - lo + max(step, 1)
    p = 1
    replace = msgspec.structs.replace
    while loops is None or p < loops:
        shift, suffix = p * span, f"~{p}"
        for event in events:
            yield p, replace(event, event_id=event.event_id + suffix, ts=event.ts + shift)
        p += 1


def key_function(key: str | None) -> Callable[[Event], bytes | None]:
    """Message key of an event: the value of sparse feature `key`, the event id, or nothing."""
    if key is None:
        return lambda event: None
    if key == "event_id":
        return lambda event: event.event_id.encode()

    def of_feature(event: Event) -> bytes | None:
        value = event.sparse.get(key)
        if value is None:
            return None
        if isinstance(value, list):
            return ",".join(map(str, value)).encode()
        return str(value).encode()

    return of_feature


# ---------------------------------------------------------------------------------------------- kafka


def ensure_topic(bootstrap: str, topic: str, partitions: int, replication: int = 1, timeout_s: float = 30) -> bool:
    """Create `topic` when missing; True if created. An existing topic is left as it is."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    except KafkaError as exc:
        raise ReplayError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    try:
        if topic in admin.list_topics():
            return False
        try:
            admin.create_topics([NewTopic(topic, partitions, replication)], timeout_ms=int(timeout_s * 1000))
        except TopicAlreadyExistsError:
            return False
        log_event(log, "topic_created", topic=topic, partitions=partitions, replication=replication)
        return True
    finally:
        admin.close()


def replay(
    events: Iterable[Event],
    bootstrap: str,
    topic: str,
    *,
    key: str | None = None,
    encoding: Literal["json", "msgpack"] = "json",
    compression: Compression = "none",
    linger_ms: int = 5,
    batch_size: int = 256 * 1024,
    acks: int | str = 1,
    rate: float | None = None,
    limit: int | None = None,
    loops: int | None = 1,
    partitions: int | None = None,
    progress: bool = False,
    total: int | None = None,
    bad_rows: Callable[[], int] | None = None,
    max_block_ms: int = 30_000,
    live_time: bool = False,
) -> ProduceSummary:
    """Send events to `topic`; returns what was sent, failed, the bytes and the measured events/s.

    `partitions`: create the topic with that many partitions when it does not exist. `rate`: events/s
    (token bucket). `live_time`: stamp each event's `ts` with the wall clock at send time (live demos,
    freshness measurements). `loops`: passes over `events` (None: until `limit` or Ctrl-C; needs a re-iterable
    source). `bad_rows`: a callable giving the reader's bad-row count, for the progress bar and summary.
    """
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    if compression not in COMPRESSIONS:
        raise ValueError(f"compression {compression!r} is not one of {COMPRESSIONS}")
    if partitions is not None:
        ensure_topic(bootstrap, topic, partitions)
    codec = EventCodec(encoding)
    encode, headers = codec.encode, codec.headers
    key_of = key_function(key)
    summary = ProduceSummary(topic=topic)
    try:
        producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            acks=acks,
            compression_type=None if compression == "none" else compression,
            linger_ms=linger_ms,
            batch_size=batch_size,
            max_block_ms=max_block_ms,
            enable_idempotence=acks in ("all", -1),
            client_id="unirec-producer",
        )
    except KafkaError as exc:
        raise ReplayError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc

    def on_error(exc: BaseException) -> None:
        summary.failed += 1
        if len(summary.errors) < 5:
            summary.errors.append(f"{type(exc).__name__}: {exc}")

    bucket = TokenBucket(rate) if rate else None
    bar = _progress(progress, topic)
    task = bar.add_task("produce", total=limit if limit is not None else total, bad=0, rate=0.0) if bar else None
    attempted = 0
    nbytes = 0
    start = time.perf_counter()
    last_pass = 0
    try:
        if bar:
            bar.start()
        for pass_no, event in looped(events, loops):
            last_pass = pass_no
            if limit is not None and attempted >= limit:
                break
            if bucket is not None:
                wait = bucket.delay()
                if wait > 0.002:  # fewer, longer sleeps: the debt stays in the bucket
                    time.sleep(wait)
            if live_time:
                event = msgspec.structs.replace(event, ts=time.time_ns() // 1_000_000)
            value = encode(event)
            k = key_of(event)
            nbytes += len(value) + (len(k) if k else 0)
            attempted += 1
            try:
                producer.send(topic, value=value, key=k, headers=headers).add_errback(on_error)
            except KafkaError as exc:
                on_error(exc)
            if bar and attempted % 2000 == 0:
                rate_now = attempted / max(time.perf_counter() - start, 1e-9)
                bar.update(task, completed=attempted, bad=bad_rows() if bad_rows else 0, rate=rate_now)  # type: ignore[arg-type]
        producer.flush()
    except KeyboardInterrupt:
        log_event(log, "interrupted", sent_so_far=attempted)
        producer.flush(timeout=10)
    finally:
        summary.seconds = time.perf_counter() - start
        producer.close(timeout=10)
        if bar:
            rate_now = attempted / max(summary.seconds, 1e-9)
            bar.update(task, completed=attempted, bad=bad_rows() if bad_rows else 0, rate=rate_now)  # type: ignore[arg-type]
            bar.stop()
    summary.sent = attempted - summary.failed
    summary.bytes = nbytes
    summary.bad_rows = bad_rows() if bad_rows else 0
    summary.passes = last_pass + 1 if attempted else 0
    log_event(log, "produce_done", **summary.as_dict())
    return summary


def quiet_kafka_logs() -> None:
    """kafka-python warns on every slow selector pass when CPUs are busy; keep the CLI's output readable."""
    import logging

    logging.getLogger("kafka").setLevel(logging.ERROR)


def _progress(enabled: bool, topic: str) -> Progress | None:
    if not enabled:
        return None
    return Progress(
        TextColumn(f"[bold]{topic}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:,.0f} ev/s"),
        TextColumn("bad rows: {task.fields[bad]}"),
        TimeElapsedColumn(),
        console=console,
        refresh_per_second=4,
    )


# ---------------------------------------------------------------------------------------------- CLI


def produce_command(
    dataset: str = typer.Argument(..., help="A dataset name (movielens, criteo, frappe, simulated) or a feature YAML."),
    path: list[Path] = typer.Option(None, "--path", "-p", help="Main data file(s), replacing the YAML's `path`."),
    data_dir: Path = typer.Option(None, help="Folder where the YAML's relative file names resolve."),
    topic: str = typer.Option(None, help="Kafka topic (default: $UNIREC_EVENTS_TOPIC or 'events')."),
    bootstrap: str = typer.Option(None, help="Kafka bootstrap servers (default: $UNIREC_KAFKA_BOOTSTRAP)."),
    partitions: int = typer.Option(None, min=1, help="Create the topic with this many partitions if missing."),
    key: str = typer.Option(None, help="Message key: a sparse feature name or 'event_id' (default: source.key)."),
    encoding: str = typer.Option("json", help="Event encoding: json or msgpack (header content-type tells)."),
    compression: str = typer.Option("none", help=f"Kafka batch compression: {', '.join(COMPRESSIONS)}."),
    linger_ms: int = typer.Option(5, min=0, help="Producer linger (ms) before a batch is sent."),
    batch_size: int = typer.Option(256 * 1024, min=1, help="Producer batch size in bytes per partition."),
    rate: float = typer.Option(None, min=0.001, help="Events per second (token bucket); default: as fast as possible."),
    limit: int = typer.Option(None, min=0, help="Stop after this many events."),
    loop: bool = typer.Option(False, "--loop", help="Replay again and again (fresh ids, shifted time) until --limit."),
    loops: int = typer.Option(None, min=1, help="Replay exactly this many passes."),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 when any row was bad (bad rows are always skipped)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    live_time: bool = typer.Option(False, "--live-time", help="Stamp events with the wall clock at send time."),
) -> None:
    """Replay a dataset into a Kafka topic: one JSON (or msgpack) event per message."""
    from kafka.errors import KafkaError

    settings = ProducerSettings()
    quiet_kafka_logs()
    bootstrap = bootstrap or settings.kafka_bootstrap
    topic = topic or settings.events_topic
    if compression not in COMPRESSIONS:
        raise typer.BadParameter(f"{compression!r} is not one of {COMPRESSIONS}", param_hint="--compression")
    if encoding not in ("json", "msgpack"):
        raise typer.BadParameter(f"{encoding!r} is not json or msgpack", param_hint="--encoding")
    n_loops = None if loop else (loops or 1)
    report = BadRowReport()
    try:
        events, default_key = _open(dataset, path or None, data_dir, report, n_loops != 1)
        summary = replay(
            events, bootstrap, topic, key=key or default_key, encoding=encoding,  # type: ignore[arg-type]
            compression=compression, linger_ms=linger_ms, batch_size=batch_size,  # type: ignore[arg-type]
            rate=rate, limit=limit, loops=n_loops, partitions=partitions, progress=progress,
            bad_rows=lambda: report.count, live_time=live_time,
            total=len(events) * n_loops if isinstance(events, list) and n_loops else None,
        )
    except (UnirecError, ValueError, KafkaError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    print_summary(summary, report)
    if summary.failed or (strict and report.count):
        raise typer.Exit(1)


def _open(
    dataset: str, path: list[Path] | None, data_dir: Path | None, report: BadRowReport, reiterable: bool
) -> tuple[Iterable[Event], str | None]:
    """The event source for the CLI (re-iterable when looping) and the schema's default message key."""
    from services.replay.reader import open_source, resolve_schema, source_events

    schema, _ = resolve_schema(dataset)
    if schema.source is not None and "simulator" in schema.source:
        from services.simulate import SimulatorConfig, simulated_events

        config = SimulatorConfig.from_schema(schema)
        return _Reiterable(lambda: simulated_events(config)), config.key
    source = open_source(dataset, path, report, data_dir)
    if source.spec.sorted_by_time:  # sorting holds the whole dataset in memory anyway: keep it (for every pass)
        return list(source_events(source)), source.spec.key
    if not reiterable:
        return source_events(source), source.spec.key
    return _Reiterable(lambda: source_events(source)), source.spec.key


class _Reiterable:
    def __init__(self, make: Callable[[], Iterator[Event]]) -> None:
        self._make = make

    def __iter__(self) -> Iterator[Event]:
        return self._make()


def print_summary(summary: ProduceSummary, report: BadRowReport) -> None:
    from rich.table import Table

    table = Table(title=f"produced to {summary.topic}", show_header=False)
    for name, value in (
        ("sent", f"{summary.sent:,}"),
        ("failed", f"{summary.failed:,}"),
        ("bad rows (skipped)", f"{report.count:,}"),
        ("bytes", f"{summary.bytes:,}"),
        ("seconds", f"{summary.seconds:.2f}"),
        ("events/s", f"{summary.events_per_s:,.0f}"),
        ("passes", str(summary.passes)),
    ):
        table.add_row(name, value)
    console.print(table)
    for bad in report.samples[:10]:
        console.print(f"[yellow]bad row[/] {bad}")
    if report.count > len(report.samples[:10]):
        console.print(f"[yellow]... {report.count - len(report.samples[:10])} more bad rows[/]")
    for error in summary.errors:
        console.print(f"[red]delivery error[/] {error}")
