"""The ingest process hands the trainer what the ingest thread would, against the real broker.

Same topic, same settings: the batches (fingerprints, dense features, labels, the unified table's
routed rows), their offsets and the dead letters of `IngestProcess` equal those of `KafkaIngest`;
a missing topic and a dead child are errors that say so, and `stop` leaves no process behind."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Callable

import msgspec
import pytest
import torch
from kafka import TopicPartition
from kafka.errors import KafkaTimeoutError
from kafka.producer.future import FutureProduceResult, FutureRecordMetadata

import trainer.ingest as ingest_module
from embedding.events import FeatureBatch, Featurizer
from embedding.methods.unified import Routed
from embedding.model import build_model
from embedding.schema import load_schema
from tests.trainer.conftest import create_topic, send
from tests.trainer.test_training import synthetic_events
from trainer.errors import TrainerError
from trainer.ingest import Batch, KafkaIngest
from trainer.ingest_process import IngestProcess, IngestSpec
from trainer.settings import TrainerSettings

pytestmark = pytest.mark.integration

BATCH = 64


def _spec(bootstrap: str, topic: str, topic_wait_s: float = 30.0) -> IngestSpec:
    s = TrainerSettings(kafka_bootstrap=bootstrap, topic=topic)
    return IngestSpec(bootstrap, topic, s.dlq, s.schema_name, s.model.model_dump(mode="json"), BATCH,
                      s.max_wait_ms, s.fetch_max_wait_ms, s.max_poll_records, "INFO", topic_wait_s)  # fmt: skip


def _unified_prepare() -> Callable[[FeatureBatch], Routed]:
    s = TrainerSettings()
    unified = build_model(load_schema(s.schema_name), s.model).sparse
    return lambda features: unified.prepare(features.sparse)


def _drain(ingest: KafkaIngest | IngestProcess, expected_events: int, timeout: float = 120) -> list[Batch]:
    batches: list[Batch] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = ingest.get(timeout=0.2)
        if batch is not None:
            batches.append(batch)
        elif sum(map(len, batches)) >= expected_events and ingest.drained.is_set():
            return batches
    raise AssertionError(f"got {sum(map(len, batches))} of {expected_events} events in {timeout}s")


def _per_event(batches: list[Batch]) -> dict[str, tuple]:
    """Per event: its bags of fingerprints, dense row, label and routed rows per lookup key (where
    batches were cut depends on timing, what each event became does not)."""
    out = {}
    for b in batches:
        f, routed = b.features, b.prepared
        n = len(b)
        bags = [[tuple(t.tolist()) for t in jagged.to_dense()] for jagged in f.sparse.to_dict().values()]
        rows = [tuple(t.tolist()) for t in torch.split(routed.rows, routed.lengths.tolist())]
        for i, event_id in enumerate(b.event_ids):
            out[event_id] = (tuple(bag[i] for bag in bags), tuple(f.dense[i].tolist()), float(f.labels[i]),
                             tuple(rows[k * n + i] for k in range(len(rows) // n)))  # fmt: skip
    return out


def test_the_process_hands_over_what_the_thread_does(kafka_bootstrap: str, topic_name: str) -> None:
    create_topic(kafka_bootstrap, topic_name, 2)
    good = synthetic_events(1500)
    payloads: list = []
    for i, event in enumerate(good):
        payloads.append(event)
        if i % 100 == 0:
            payloads.append(b"{not json" if i % 200 else json.dumps({"event_id": f"b{i}", "ts": 1}).encode())
    send(kafka_bootstrap, topic_name, payloads, partitions=2)
    schema = load_schema("movielens")

    thread_dead: Counter[str] = Counter()
    thread = KafkaIngest(
        kafka_bootstrap, topic_name, f"{topic_name}.dlq", Featurizer(schema), rank=0, world_size=1,
        batch_size=BATCH, max_wait_ms=100, prefetch_batches=4, on_lag=lambda *_: None,
        on_dead_letter=lambda r: thread_dead.update([r]), start_offsets=None, prepare=_unified_prepare(),
    )  # fmt: skip
    thread.start()
    try:
        by_thread = _drain(thread, len(good))
    finally:
        thread.stop()

    process_dead: Counter[str] = Counter()
    lags: dict[int, int] = {}
    child = IngestProcess(_spec(kafka_bootstrap, topic_name))
    ingest = child.open(0, 1, None, "earliest", 4, lambda features, routed: routed,
                        lambda _t, p, lag: lags.__setitem__(p, lag), lambda r: process_dead.update([r]))  # fmt: skip
    ingest.start()
    try:
        assert ingest.n_partitions == 2 and ingest.partitions == [0, 1]
        assert ingest.positions() == {0: 0, 1: 0}
        by_process = _drain(ingest, len(good))
    finally:
        ingest.stop()
    assert not child.process.is_alive() and child.process.exitcode == 0

    assert sum(map(len, by_process)) == len(good)
    assert _per_event(by_process) == _per_event(by_thread)
    assert len(_per_event(by_process)) == len(good)
    ends = {0: len(payloads) // 2, 1: len(payloads) - len(payloads) // 2}  # `send`: record n to partition n % 2
    assert by_process[-1].offsets == by_thread[-1].offsets == ends
    assert process_dead == thread_dead and sum(process_dead.values()) == 15
    assert lags == {0: 0, 1: 0}
    batch = by_process[0]
    assert isinstance(batch.prepared, Routed) and batch.prepared.rows.dtype == torch.int64
    assert batch.features.dense.numpy().flags.writeable  # decoded without a copy, yet writable


def test_a_missing_topic_fails_the_open_with_its_name(kafka_bootstrap: str, topic_name: str) -> None:
    child = IngestProcess(_spec(kafka_bootstrap, topic_name, topic_wait_s=1.0))
    with pytest.raises(TrainerError, match=f"{topic_name}.*does not exist"):
        child.open(0, 1, None, "earliest", 4, lambda f, r: r, lambda *_: None, lambda _r: None)
    child.process.join(timeout=10)
    assert not child.process.is_alive()


def test_a_child_that_dies_is_an_error_of_the_loop(kafka_bootstrap: str, topic_name: str) -> None:
    create_topic(kafka_bootstrap, topic_name, 1)
    child = IngestProcess(_spec(kafka_bootstrap, topic_name))
    ingest = child.open(0, 1, None, "earliest", 4, lambda f, r: r, lambda *_: None, lambda _r: None)
    ingest.start()
    try:
        assert child.process.pid is not None
        os.kill(child.process.pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        with pytest.raises(TrainerError, match=r"ingest process exited \(code -9\)"):  # noqa: PT012 - polls until it raises
            while time.monotonic() < deadline:
                ingest.get(timeout=0.1)
    finally:
        ingest.stop()


def test_a_child_never_opened_stops_cleanly(kafka_bootstrap: str, topic_name: str) -> None:
    child = IngestProcess(_spec(kafka_bootstrap, topic_name))
    child.stop()
    assert not child.process.is_alive() and child.process.exitcode == 0


def test_a_child_killed_before_it_is_ready_fails_the_open(kafka_bootstrap: str, topic_name: str) -> None:
    child = IngestProcess(_spec(kafka_bootstrap, topic_name))
    assert child.process.pid is not None
    os.kill(child.process.pid, signal.SIGKILL)
    with pytest.raises(TrainerError, match=r"exited \(code -9\) before it assigned partitions"):
        child.open(0, 1, None, "earliest", 4, lambda f, r: r, lambda *_: None, lambda _r: None)


def test_a_bad_schema_is_reported_by_the_open(kafka_bootstrap: str, topic_name: str) -> None:
    spec = msgspec.structs.replace(_spec(kafka_bootstrap, topic_name), schema_name="no-such-schema")
    child = IngestProcess(spec)
    with pytest.raises(TrainerError, match="ingest process failed to start: .*no-such-schema"):
        child.open(0, 1, None, "earliest", 4, lambda f, r: r, lambda *_: None, lambda _r: None)


class _RecordingProducer:
    """Stands in for the dead-letter producer of a real `KafkaIngest` to see the order of events."""

    def __init__(self, log: list[str], fail: bool) -> None:
        self.log, self.fail = log, fail

    def send(self, topic: str, **_: object) -> FutureRecordMetadata:
        self.log.append("send")
        future = FutureRecordMetadata(FutureProduceResult(TopicPartition(topic, 0)), 0, 0, None, 0, 0, 0)
        if self.fail:
            future.failure(KafkaTimeoutError("broker gone"))
        else:
            future.success(None)
        return future

    def flush(self, timeout: float | None = None) -> None:
        self.log.append("flush")

    def close(self, timeout: float | None = None) -> None:
        pass


@pytest.mark.parametrize("fail", [False, True], ids=["written", "not-written"])
def test_dead_letters_are_durable_before_the_batch_after_them(kafka_bootstrap: str, topic_name: str,
                                                              fail: bool) -> None:  # fmt: skip
    """A batch whose offsets cover a dead letter is handed over only once that dead letter is written;
    one the broker did not take fails the ingest, so no checkpoint moves past it."""
    create_topic(kafka_bootstrap, topic_name, 1)
    send(kafka_bootstrap, topic_name, [b"{not json", *synthetic_events(BATCH)], partitions=1)
    order: list[str] = []
    ingest = KafkaIngest(
        kafka_bootstrap, topic_name, f"{topic_name}.dlq", Featurizer(load_schema("movielens")), rank=0,
        world_size=1, batch_size=BATCH, max_wait_ms=100, prefetch_batches=4, on_lag=lambda *_: None,
        on_dead_letter=lambda _r: None, start_offsets=None,
    )  # fmt: skip
    ingest.producer.close()
    ingest.producer = _RecordingProducer(order, fail)  # type: ignore[assignment]
    deliver = ingest._deliver
    ingest._deliver = lambda batch: (order.append("deliver"), deliver(batch))  # type: ignore[method-assign]
    ingest.start()
    try:
        if fail:
            with pytest.raises(TrainerError, match=r"1 dead letter\(s\) not written .*partition 0 offset 0"):  # noqa: PT012
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    ingest.get(timeout=0.2)
            assert "deliver" not in order
        else:
            batch = ingest.get(timeout=30)
            assert batch is not None and len(batch) == BATCH and batch.offsets == {0: BATCH + 1}
            assert order[:3] == ["send", "flush", "deliver"]
    finally:
        ingest.stop()


@pytest.mark.parametrize("start_from", ["earliest", "latest"])
def test_a_checkpoint_offset_the_topic_does_not_hold_starts_where_start_from_says(
    kafka_bootstrap: str, topic_name: str, start_from: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A topic recreated under a checkpoint (an in-memory broker restarted by `unirec up`) holds fewer
    records than the checkpoint's next offset: waiting for that offset would train nothing for a
    long while, then skip the new records before it. The partition starts at `start_from` instead;
    an offset the topic holds is kept, even past the end the broker reports (the local broker
    reports the last batch's base offset + 1: here 1, with 100 records in one batch)."""
    create_topic(kafka_bootstrap, topic_name, 2)
    send(kafka_bootstrap, topic_name, synthetic_events(200), partitions=2)  # 100 records per partition
    warnings: list[logging.LogRecord] = []  # the package logger does not propagate (core.logs): record here
    monkeypatch.setattr(ingest_module, "log_event", lambda _log, event, level=logging.INFO, **fields: warnings.append(
        logging.makeLogRecord({"msg": event, "levelno": level, "fields": fields})))  # fmt: skip
    ingest = KafkaIngest(
        kafka_bootstrap, topic_name, f"{topic_name}.dlq", Featurizer(load_schema("movielens")), rank=0,
        world_size=1, batch_size=BATCH, max_wait_ms=100, prefetch_batches=4, on_lag=lambda *_: None,
        on_dead_letter=lambda _r: None, start_offsets={0: 43_677, 1: 40}, start_from=start_from,
    )  # fmt: skip
    try:
        tp = TopicPartition(topic_name, 0)
        expected = 0 if start_from == "earliest" else ingest.consumer.end_offsets([tp])[tp]
        assert ingest.positions() == {0: expected, 1: 40}
        [warning] = [r for r in warnings if r.getMessage() == "checkpoint_offset_out_of_range"]
        assert warning.levelno == logging.WARNING
        assert warning.fields["partition"] == 0 and warning.fields["offset"] == 43_677  # type: ignore[attr-defined]
    finally:
        ingest.close()
