"""Fixtures of the producer/replay tests: ML-100k fetched once per session into a test cache, and a consumer."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from embedding.events import Event
from embedding.wire import decode_message


@pytest.fixture(scope="session")
def movielens_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ML-100k fetched by `services.datasets` (from the recbole wheel on PyPI) into a session test cache."""
    from services.datasets import movielens_path

    return movielens_path(home=tmp_path_factory.mktemp("unirec-home"))


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
