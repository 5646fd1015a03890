"""Helpers to run real trainer processes against the session broker."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic

from embedding.events import Event, encode_event


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()


def send(bootstrap: str, topic: str, payloads: Iterable[bytes | Event], partitions: int) -> int:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    n = 0
    for n, payload in enumerate(payloads, 1):
        value = encode_event(payload) if isinstance(payload, Event) else payload
        producer.send(topic, value=value, partition=n % partitions)
    producer.flush()
    producer.close()
    return n


RENDEZVOUS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def no_rendezvous_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No torch.distributed rendezvous variables during the test, and none left after it: an
    in-process trainer writes them (`init_distributed`), and a later test's trainer subprocess that
    inherited them would join a finished group's port."""
    for var in RENDEZVOUS:
        monkeypatch.setenv(var, "")  # set, then delete: monkeypatch restores the absence afterwards
        monkeypatch.delenv(var)


def trainer_env(home: Path, bootstrap: str, topic: str, **settings: object) -> dict[str, str]:
    """The environment of a `unirec train` subprocess: this one's, without UNIREC_ settings and
    rendezvous variables (the launcher sets its own), plus the test's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNIREC_") and k not in RENDEZVOUS}
    env.update(
        UNIREC_HOME=str(home),
        UNIREC_KAFKA_BOOTSTRAP=bootstrap,
        UNIREC_TRAINER_TOPIC=topic,
        UNIREC_TRAINER_METRICS_PORT="0",
        UNIREC_TRAINER_EXPORT_EVERY_S="0",
        UNIREC_TRAINER_DELTA_EVERY_S="0",
        UNIREC_TRAINER_STOP_AT_END="true",
        UNIREC_TRAINER_THREADS="1",
    )
    env.update({f"UNIREC_TRAINER_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def start_trainer(env: dict[str, str], nproc: int = 1, log: Path | None = None) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "unirec.cli", "train", "--nproc", str(nproc)]
    if log:
        log.parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
    return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def run_trainer(env: dict[str, str], nproc: int = 1, timeout: float = 300, log: Path | None = None) -> None:
    proc = start_trainer(env, nproc, log)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    tail = log.read_text()[-3000:] if log else ""
    assert code == 0, f"trainer exited with {code}:\n{tail}"


def read_predictions(prefix: Path) -> list[tuple[int, str, float, int]]:
    """(step, event_id, score, label) rows of every rank, skipping a torn last line."""
    rows = []
    for path in sorted(prefix.parent.glob(prefix.name + ".rank*")):
        for line in path.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) == 4 and parts[3] in ("0", "1"):
                rows.append((int(parts[0]), parts[1], float(parts[2]), int(parts[3])))
    return rows


@pytest.fixture
def trainer_home(tmp_path: Path) -> Path:
    return tmp_path
