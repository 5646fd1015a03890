"""Fixtures of the producer/replay tests: a consumer of a whole topic."""

from __future__ import annotations

import time

from embedding.events import Event
from embedding.wire import decode_message


def consume(
    bootstrap: str, topic: str, expected: int, timeout_s: float = 30.0
) -> list[tuple[int, bytes | None, Event]]:
    """(partition, key, event) of every message of `topic`, read from the beginning of each partition
    by manual assignment, until `expected` messages arrived (or the timeout)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    try:
        deadline = time.monotonic() + timeout_s
        partitions = None
        while not partitions and time.monotonic() < deadline:
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                time.sleep(0.2)
        assert partitions, f"topic {topic} never appeared"
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[tuple[int, bytes | None, Event]] = []
        while len(out) < expected and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=500, max_records=5000).items():
                for rec in records:
                    out.append((tp.partition, rec.key, decode_message(rec.value, rec.headers)))
        return out
    finally:
        consumer.close()
