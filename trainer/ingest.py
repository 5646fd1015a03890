"""Kafka ingestion for one rank: manual assignment, decode, dead-letter, batch, featurize.

A background thread polls the rank's partitions (p % world_size == rank), decodes (JSON or msgpack,
by the `content-type` header) and validates events with msgspec, sends malformed ones to the
dead-letter topic (with the reason and the source partition/offset in headers), cuts batches by
size or max wait, featurizes them, runs the trainer's `prepare` (the unified table's hashing and
routing) and hands them to the training loop through a bounded queue, so Kafka, decoding and
featurization overlap the training step. `trainer.ingest_process` runs the same loop in a child
process instead, off the training process's GIL.

Bulk: a poll's JSON records of one partition are decoded in one msgspec call (their payloads joined
as one JSON array; any failure falls back to decoding them one by one, which decides what is dead-
lettered), each batch is featurized in one call (`Featurizer`, column-wise). The numpy and torch
work of featurizing and routing releases the GIL; what is left to Python is kafka-python's record
parsing and one pass over the records.
Each batch carries the next offset of every assigned partition after it: the loop stores those in
checkpoints, which is what makes resume exact. Dead letters are flushed to the broker before the
next batch is handed over, so no checkpoint can move offsets past a dead letter not yet durable.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from core.logs import get_logger, log_event
from embedding.events import Event, FeatureBatch, Featurizer
from embedding.wire import content_type_of, decode_message, encoding_for
from trainer.errors import TrainerError

log = get_logger("trainer.ingest")

_DLQ_FLUSH_S = 10.0
"""How long handing over a batch waits for the dead letters before it; a timeout fails the ingest."""


@dataclass
class Batch:
    features: FeatureBatch
    event_ids: list[str]
    max_ts_ms: int
    offsets: dict[int, int]
    """partition -> next offset to read after this batch (covers dead-lettered records too)."""
    prepared: Any = None
    """What the trainer's `prepare` made of `features` in the ingest thread (None: nothing)."""

    def __len__(self) -> int:
        return len(self.event_ids)


LagReport = Callable[[str, int, int], None]
"""(topic, partition, lag) of every assigned partition, about once a second."""
DeadLetterReport = Callable[[str], None]
"""The reason of one dead-lettered record."""


def put_unless_stopped(into: queue.Queue[Batch], batch: Batch, stop: threading.Event) -> None:
    """Put `batch` into the bounded queue, waiting while it is full, unless `stop` is set meanwhile."""
    while not stop.is_set():
        try:
            into.put(batch, timeout=0.2)
            return
        except queue.Full:
            continue


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
        on_lag: LagReport,
        on_dead_letter: DeadLetterReport,
        start_offsets: dict[int, int] | None,
        start_from: str = "earliest",
        topic_wait_s: float = 60.0,
        prepare: Callable[[FeatureBatch], Any] | None = None,
        fetch_max_wait_ms: int = 50,
        max_poll_records: int | None = None,
    ) -> None:
        self.topic = topic
        self.dlq_topic = dlq_topic
        self.featurizer = featurizer
        self.batch_size = batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.on_lag = on_lag
        self.on_dead_letter = on_dead_letter
        self.prepare = prepare
        self.queue: queue.Queue[Batch] = queue.Queue(maxsize=prefetch_batches)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._unflushed: list[tuple[Any, int, int]] = []
        """(send future, source partition, source offset) of the dead letters since the last flush."""
        self.drained = threading.Event()
        self._bootstrap = bootstrap
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            max_poll_records=max_poll_records or max(batch_size * 2, 2000),
            fetch_max_wait_ms=fetch_max_wait_ms,
            max_partition_fetch_bytes=8 << 20,
            client_id=f"unirec-trainer-{rank}",
        )
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, client_id=f"unirec-dlq-{rank}")
        partitions = self._wait_for_partitions(topic_wait_s)
        self.n_partitions = len(partitions)
        self.partitions = [p for p in partitions if p % world_size == rank]
        self._tps = [TopicPartition(topic, p) for p in self.partitions]
        self.consumer.assign(self._tps)
        self._position: dict[int, int] = {}
        resume = self._in_range(start_offsets or {}, start_from)
        for tp in self._tps:
            if tp.partition in resume:
                self.consumer.seek(tp, resume[tp.partition])
            elif start_from == "latest":
                self.consumer.seek_to_end(tp)
            else:
                self.consumer.seek_to_beginning(tp)
            self._position[tp.partition] = self.consumer.position(tp)
        log_event(log, "assigned", topic=topic, partitions=self.partitions, positions=self._position)
        self._thread = threading.Thread(target=self._run, name=f"ingest-{rank}", daemon=True)

    def _in_range(self, start_offsets: dict[int, int], start_from: str) -> dict[int, int]:
        """The checkpoint's offsets that the topic still holds. One outside [beginning, end] means the
        topic was recreated (e.g. an in-memory broker restarted) or retention deleted what follows the
        checkpoint: the partition starts at `start_from` instead, as Kafka's `auto.offset.reset` would,
        rather than waiting for an offset the topic may reach only much later (then skipping up to it)."""
        tps = [tp for tp in self._tps if tp.partition in start_offsets]
        if not tps:
            return {}
        begins, ends = self.consumer.beginning_offsets(tps), self.consumer.end_offsets(tps)
        kept = {}
        for tp in tps:
            offset, end = start_offsets[tp.partition], ends[tp]
            if offset > end:  # some brokers report the last batch's base offset + 1: read to the true end
                end = self._read_end(tp, end)
            if begins[tp] <= offset <= end:
                kept[tp.partition] = offset
            else:
                log_event(log, "checkpoint_offset_out_of_range", logging.WARNING, topic=tp.topic,
                          partition=tp.partition, offset=offset, beginning=begins[tp], end=end,
                          start_from=start_from)  # fmt: skip
        return kept

    def _read_end(self, tp: TopicPartition, reported: int) -> int:
        """The next offset after the last record of `tp`, read from `reported` on (a separate consumer:
        nothing read here reaches the batches)."""
        probe = KafkaConsumer(bootstrap_servers=self._bootstrap, enable_auto_commit=False, fetch_max_wait_ms=100)
        try:
            probe.assign([tp])
            probe.seek(tp, max(reported - 1, 0))
            end, deadline = reported, time.monotonic() + 10
            while time.monotonic() < deadline:
                records = probe.poll(timeout_ms=300).get(tp, [])
                if not records:
                    return end
                end = max(end, records[-1].offset + 1)
            return end
        finally:
            probe.close()

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
        self._thread.join(timeout=_DLQ_FLUSH_S + 5)
        self.close()

    def close(self) -> None:
        """Flush the dead letters and close both Kafka clients."""
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
                for record, event in zip(records, self._decode_all(records), strict=True):
                    self._position[tp.partition] = record.offset + 1
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
            self.on_lag(tp.topic, tp.partition, lag)
            drained &= lag == 0
        if drained and pending_empty:
            self.drained.set()
        else:
            self.drained.clear()

    def _decode_all(self, records: list[ConsumerRecord]) -> list[Event | None]:
        """Events of `records` in order (None where dead-lettered): JSON ones in one msgspec call."""
        if len(records) > 1 and all(_is_json(r) for r in records):
            try:
                events = _json_array_decoder.decode(b"[" + b",".join(r.value for r in records) + b"]")
            except (msgspec.ValidationError, msgspec.DecodeError):
                pass  # some record is bad: decode one by one, which dead-letters exactly those
            else:
                if len(events) == len(records):
                    return [self._labelled(e, r) for e, r in zip(events, records, strict=True)]
        return [self._decode(record) for record in records]

    def _labelled(self, event: Event, record: ConsumerRecord) -> Event | None:
        if event.label is None:
            self._dead_letter(record, "missing_label", "training events need a label (0 or 1)")
            return None
        return event

    def _decode(self, record: ConsumerRecord) -> Event | None:
        try:
            event = decode_message(record.value, record.headers)
        except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as exc:
            self._dead_letter(record, "invalid_event", str(exc))
            return None
        return self._labelled(event, record)

    def _dead_letter(self, record: ConsumerRecord, reason: str, detail: str) -> None:
        headers = [
            ("reason", reason.encode()),
            ("detail", detail[:500].encode()),
            ("source_topic", record.topic.encode()),
            ("source_partition", str(record.partition).encode()),
            ("source_offset", str(record.offset).encode()),
        ]
        future = self.producer.send(self.dlq_topic, value=record.value, key=record.key, headers=headers)
        self._unflushed.append((future, record.partition, record.offset))
        self.on_dead_letter(reason)
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
            max_ts_ms=max(e.ts for e in events),
            offsets=dict(self._position),
            prepared=self.prepare(features) if self.prepare is not None else None,
        )
        if self._unflushed:  # the batch's offsets cover these dead letters: durable first
            self._flush_dead_letters()
        self._deliver(batch)

    def _flush_dead_letters(self) -> None:
        """Wait for the dead letters sent since the last flush; raise if any was not written, so no
        offset moves past it (the thread fails, the trainer stops without checkpointing past it)."""
        self.producer.flush(timeout=_DLQ_FLUSH_S)
        failed = [(p, o, f.exception) for f, p, o in self._unflushed if f.failed()]
        self._unflushed = []
        if failed:
            p, o, exc = failed[0]
            raise TrainerError(f"{len(failed)} dead letter(s) not written to {self.dlq_topic!r} (first: partition "
                               f"{p} offset {o}: {exc!r}); expected the broker to take them")  # fmt: skip

    def _deliver(self, batch: Batch) -> None:
        """Hand a batch to the training loop (waits while the prefetch queue is full)."""
        put_unless_stopped(self.queue, batch, self._stop)

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


_json_array_decoder = msgspec.json.Decoder(list[Event])
_JSON_TYPES: dict[bytes | None, bool] = {}


def _is_json(record: ConsumerRecord) -> bool:
    """Whether a record is a JSON payload (bytes) by its content-type header (cached per header value)."""
    if not isinstance(record.value, bytes):
        return False
    content_type = content_type_of(record.headers)
    known = _JSON_TYPES.get(content_type)
    if known is None:
        try:
            known = encoding_for(content_type) == "json"
        except ValueError:
            known = False
        if len(_JSON_TYPES) < 64:
            _JSON_TYPES[content_type] = known
    return known
