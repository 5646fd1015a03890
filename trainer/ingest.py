"""Kafka ingestion for one rank: manual assignment, decode, dead-letter, batch, featurize.

A background thread polls the rank's partitions (p % world_size == rank), decodes (JSON or msgpack,
by the `content-type` header) and validates events with msgspec, sends malformed ones to the
dead-letter topic (with the reason and the source partition/offset in headers), cuts batches by
size or max wait, featurizes them, and hands them to the training loop through a bounded queue,
so Kafka and decoding overlap the training step.
Each batch carries the next offset of every assigned partition after it: the loop stores those in
checkpoints, which is what makes resume exact.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field

import msgspec
import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from core.logs import get_logger, log_event
from embedding.events import Event, FeatureBatch, Featurizer
from embedding.wire import decode_message
from trainer.errors import TrainerError
from trainer.telemetry import TrainerMetrics

log = get_logger("trainer.ingest")


@dataclass
class Batch:
    features: FeatureBatch
    event_ids: list[str]
    max_ts_ms: int
    offsets: dict[int, int]
    """partition -> next offset to read after this batch (covers dead-lettered records too)."""
    created: float = field(default_factory=time.monotonic)

    def __len__(self) -> int:
        return len(self.event_ids)


class KafkaIngest:
    def __init__(
        self,
        bootstrap: str,
        topic: str,
        dlq_topic: str,
        featurizer: Featurizer,
        rank: int,
        world_size: int,
        batch_size: int,
        max_wait_ms: int,
        prefetch_batches: int,
        metrics: TrainerMetrics,
        start_offsets: dict[int, int] | None,
        start_from: str = "earliest",
        topic_wait_s: float = 60.0,
    ) -> None:
        self.topic = topic
        self.dlq_topic = dlq_topic
        self.featurizer = featurizer
        self.batch_size = batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.metrics = metrics
        self.queue: queue.Queue[Batch] = queue.Queue(maxsize=prefetch_batches)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self.drained = threading.Event()
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            max_poll_records=max(batch_size * 4, 500),
            fetch_max_wait_ms=50,
            client_id=f"unirec-trainer-{rank}",
        )
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, client_id=f"unirec-dlq-{rank}")
        partitions = self._wait_for_partitions(topic_wait_s)
        self.partitions = [p for p in partitions if p % world_size == rank]
        self._tps = [TopicPartition(topic, p) for p in self.partitions]
        self.consumer.assign(self._tps)
        self._position: dict[int, int] = {}
        for tp in self._tps:
            if start_offsets and tp.partition in start_offsets:
                self.consumer.seek(tp, start_offsets[tp.partition])
            elif start_from == "latest":
                self.consumer.seek_to_end(tp)
            else:
                self.consumer.seek_to_beginning(tp)
            self._position[tp.partition] = self.consumer.position(tp)
        log_event(log, "assigned", topic=topic, partitions=self.partitions, positions=self._position)
        self._thread = threading.Thread(target=self._run, name=f"ingest-{rank}", daemon=True)

    def _wait_for_partitions(self, timeout_s: float) -> list[int]:
        deadline = time.monotonic() + timeout_s
        while True:
            parts = self.consumer.partitions_for_topic(self.topic)
            if parts:
                return sorted(parts)
            if time.monotonic() > deadline:
                raise TrainerError(f"topic {self.topic!r} does not exist after {timeout_s:.0f}s; produce to it first")
            time.sleep(0.5)

    def positions(self) -> dict[int, int]:
        """partition -> next offset to read, as of now (for the starting point)."""
        return dict(self._position)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.producer.flush(timeout=10)
        self.producer.close(timeout=5)
        self.consumer.close()

    def get(self, timeout: float) -> Batch | None:
        if self._error is not None:
            raise TrainerError(f"ingest thread failed: {self._error!r}") from self._error
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def flush_dead_letters(self) -> None:
        """Make dead-lettered records durable before a checkpoint moves offsets past them."""
        self.producer.flush(timeout=30)

    # -- the thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # surfaced to the loop by get()
            log.exception("ingest thread failed")
            self._error = exc

    def _loop(self) -> None:
        pending: list[tuple[Event, ConsumerRecord]] = []
        first_at = 0.0
        last_lag = 0.0
        while not self._stop.is_set():
            polled = self.consumer.poll(timeout_ms=50)
            for tp, records in polled.items():
                for record in records:
                    self._position[tp.partition] = record.offset + 1
                    event = self._decode(record)
                    if event is None:
                        continue
                    if not pending:
                        first_at = time.monotonic()
                    pending.append((event, record))
                    if len(pending) >= self.batch_size:
                        self._emit(pending)
                        pending = []
            if pending and time.monotonic() - first_at >= self.max_wait_s:
                self._emit(pending)
                pending = []
            now = time.monotonic()
            if now - last_lag > 1.0 or not polled:
                last_lag = now
                self._update_lag(pending_empty=not pending)

    def _update_lag(self, pending_empty: bool) -> None:
        drained = True
        ends = self.consumer.end_offsets(self._tps) if self._tps else {}
        for tp in self._tps:
            end = ends.get(tp)
            if end is None:
                continue
            lag = max(0, end - self._position[tp.partition])
            self.metrics.lag.labels(topic=tp.topic, partition=str(tp.partition)).set(lag)
            drained &= lag == 0
        if drained and pending_empty:
            self.drained.set()
        else:
            self.drained.clear()

    def _decode(self, record: ConsumerRecord) -> Event | None:
        try:
            event = decode_message(record.value, record.headers)
        except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as exc:
            self._dead_letter(record, "invalid_event", str(exc))
            return None
        if event.label is None:
            self._dead_letter(record, "missing_label", "training events need a label (0 or 1)")
            return None
        return event

    def _dead_letter(self, record: ConsumerRecord, reason: str, detail: str) -> None:
        headers = [
            ("reason", reason.encode()),
            ("detail", detail[:500].encode()),
            ("source_topic", record.topic.encode()),
            ("source_partition", str(record.partition).encode()),
            ("source_offset", str(record.offset).encode()),
        ]
        self.producer.send(self.dlq_topic, value=record.value, key=record.key, headers=headers)
        self.metrics.dlq.labels(reason=reason).inc()
        log_event(
            log, "dead_letter", reason=reason, detail=detail[:200], partition=record.partition, offset=record.offset
        )

    def _emit(self, pending: list[tuple[Event, ConsumerRecord]]) -> None:
        events = [e for e, _ in pending]
        try:
            features = self.featurizer(events)
        except ValueError:
            events = self._drop_unfeaturizable(pending)
            if not events:
                return
            features = self.featurizer(events)
        batch = Batch(
            features=features,
            event_ids=[e.event_id for e in events],
            max_ts_ms=int(np.max([e.ts for e in events])),
            offsets=dict(self._position),
        )
        while not self._stop.is_set():
            try:
                self.queue.put(batch, timeout=0.2)
                return
            except queue.Full:
                continue

    def _drop_unfeaturizable(self, pending: list[tuple[Event, ConsumerRecord]]) -> list[Event]:
        """Slow path after a batch failed to featurize: find the culprits one by one."""
        kept: list[Event] = []
        for event, record in pending:
            try:
                self.featurizer([event])
            except ValueError as exc:
                self._dead_letter(record, "bad_feature_value", f"event {event.event_id}: {exc}")
            else:
                kept.append(event)
        return kept
