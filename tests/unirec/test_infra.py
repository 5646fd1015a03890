from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from core.errors import InfraError
from core.net import free_port
from unirec.infra import LocalServer, _alive

pytestmark = pytest.mark.integration


def test_kafka_round_trip_10k_messages_four_partitions(kafka_bootstrap: str, topic_name: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(topic_name, num_partitions=4, replication_factor=1)])
    admin.close()

    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
    for i in range(10_000):
        producer.send(topic_name, value=str(i).encode(), partition=i % 4)
    producer.flush()
    producer.close()

    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    partitions = [TopicPartition(topic_name, p) for p in range(4)]
    consumer.assign(partitions)
    consumer.seek_to_beginning()
    seen: dict[int, list[tuple[int, int]]] = {p: [] for p in range(4)}
    deadline = time.monotonic() + 60
    while sum(map(len, seen.values())) < 10_000 and time.monotonic() < deadline:
        for tp, records in consumer.poll(timeout_ms=500).items():
            seen[tp.partition] += [(r.offset, int(r.value)) for r in records]
    consumer.close()

    values = sorted(v for records in seen.values() for _, v in records)
    assert values == list(range(10_000))
    for partition, records in seen.items():
        offsets = [offset for offset, _ in records]
        assert offsets == list(range(len(offsets))), f"partition {partition} offsets not contiguous"
        assert all(v % 4 == partition for _, v in records)


def test_redis_set_get_and_pubsub(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.set("unirec:test:key", b"value")
    assert client.get("unirec:test:key") == b"value"

    pubsub = client.pubsub()
    pubsub.subscribe("unirec:test:channel")
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    threading.Timer(0.1, client.publish, args=("unirec:test:channel", b"hello")).start()
    message = pubsub.get_message(timeout=5)
    assert message is not None and message["data"] == b"hello"
    pubsub.close()


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "unirec.cli", "infra", *args], env=env, capture_output=True, text=True, timeout=90
    )


def test_infra_cli_up_status_down_leaves_no_process(tmp_path: Path) -> None:
    env = os.environ | {
        "UNIREC_HOME": str(tmp_path),
        "UNIREC_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
        "UNIREC_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
    }
    assert _cli(env, "up").returncode == 0
    pids = [int((tmp_path / "run" / f"{kind}.pid").read_text()) for kind in ("kafka", "redis")]
    assert all(_alive(pid) for pid in pids)

    status = _cli(env, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.count("yes") == 2

    assert _cli(env, "down").returncode == 0
    assert not any(_alive(pid) for pid in pids)
    assert not list((tmp_path / "run").glob("*.pid"))
    assert _cli(env, "status").returncode == 1


def test_start_on_taken_port_names_the_port(redis_server: LocalServer, tmp_path: Path) -> None:
    clash = LocalServer("kafka", "127.0.0.1", redis_server.port, tmp_path)
    with pytest.raises(InfraError, match=f"port 127.0.0.1:{redis_server.port} is already taken"):
        clash.start(timeout=5)
