"""The CPU image, built and run for real with podman: docker-compose.yml's inference and trainer
services, each in its own container started from the resolved file (image, entrypoint, command,
environment, volumes, hardening, health check) in its dependency order, with host networking, against
the session's broker and Redis (tests/deploy/compose_services.py: why not podman-compose).

The image builds on a base made from Debian's packages (deploy/docker/base-image.sh) with torch from
pip's configuration (TORCH_INDEX_URL empty), as README "Building the image" describes. Events are
streamed into the broker from here; the trainer container trains and exports into a host folder that
the service container mounts read-only (the file's shared volume); the service's /readyz turns 200
and /v1/predict answers. Both containers run as the image's non-root user and pass their health
checks; on SIGTERM (tini and torchrun forward it) the trainer's rank stops with a final checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from core.net import free_port, port_open
from tests.deploy.compose_services import HealthWait, compose_config, dependencies, run_args, start_order, wait_healthy
from tests.deploy.containers import Podman

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]

log = logging.getLogger(__name__)
UID = 10001  # the image's unirec user (deploy/docker/Dockerfile)
API_KEY = "container-test-key"
READY_TIMEOUT_S = 300
T0_MS = 1_700_000_000_000


def event(rng: random.Random, n: int) -> dict:
    """A MovieLens-shaped event whose label depends on user and movie."""
    user, movie = int(rng.paretovariate(1.2)) % 943 + 1, int(rng.paretovariate(1.1)) % 1682 + 1
    sparse = {"user": user, "movie": movie, "age": 18 + user % 50, "gender": "MF"[user % 2],
              "occupation": f"occ{user % 21}", "zip": f"{(user * 7919) % 99999:05d}"}
    label = int(rng.random() < (0.8 if (user + movie) % 3 == 0 else 0.2))
    return {"event_id": f"e{n}", "ts": T0_MS + 2000 * n, "label": label, "sparse": sparse}


@contextlib.contextmanager
def container(podman: Podman, name: str, *args: str) -> Iterator[str]:
    """`podman run -d`; logs kept in the failure message, removed afterwards."""
    podman.run("run", "-d", "--name", name, *args, timeout=120)
    try:
        yield name
    finally:
        podman.run("rm", "-f", "-t", "5", name, timeout=60, check=False)


def logs(podman: Podman, *names: str) -> str:
    out = []
    for name in names:
        result = podman.run("logs", "--tail", "30", name, check=False)
        out.append(f"--- {name} ---\n{result.stdout}{result.stderr}")
    return "\n".join(out)


def healthy(podman: Podman, name: str) -> bool:
    """The container's health check, run now as the engine runs it."""
    return podman.run("healthcheck", "run", name, check=False, timeout=60).returncode == 0


def running(podman: Podman, name: str) -> bool:
    return podman.run("inspect", "--format", "{{.State.Running}}", name, check=False).stdout.strip() == "true"


def test_service_and_trainer_containers_train_and_predict(
    podman: Podman, unirec_image: str, docker_compose: str, kafka_bootstrap: str, redis_url: str, topic_name: str,
    tmp_path: Path,
) -> None:
    import orjson
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    assert podman.inspect(unirec_image, "{{.Config.User}}") == f"{UID}:{UID}"
    assert "unirec-healthcheck" in podman.inspect(unirec_image, "{{json .Config.Healthcheck}}")

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(topic_name, 1, 1), NewTopic(f"{topic_name}.dlq", 1, 1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
    rng, sent = random.Random(3), 0
    for _ in range(2000):
        producer.send(topic_name, orjson.dumps(event(rng, sent)))
        sent += 1
    producer.flush()

    # docker-compose.yml's trainer and inference services, resolved by docker-compose and started with
    # podman in the file's dependency order (tests/deploy/compose_services.py says why not podman-compose)
    run_id = uuid.uuid4().hex[:8]
    resolved = compose_config(docker_compose, {
        "UNIREC_SERVE_API_KEY": API_KEY, "GRAFANA_ADMIN_PASSWORD": "unused", "UNIREC_IMAGE": unirec_image.split(":")[0],
        "UNIREC_TAG": unirec_image.split(":")[1], "UNIREC_TRAINER_NPROC": "1", "UNIREC_TRAINER_TOPIC": topic_name})
    services = resolved["services"]
    order = start_order(services, ["inference", "trainer"])
    assert order.index("redis") < order.index("inference") and order.index("kafka") < order.index("trainer"), order
    for name in ("trainer", "inference"):
        assert services[name]["image"] == unirec_image, services[name]["image"]
    # the volume the trainer writes and the service reads as its model store: a host folder here
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, UID, UID)
    serve_port, metrics_port = free_port(), free_port()
    # host networking: the addresses that name Compose services point at the session's broker and Redis;
    # shorter intervals so the test sees an export within a minute
    common = {"UNIREC_KAFKA_BOOTSTRAP": kafka_bootstrap, "UNIREC_REDIS_URL": redis_url,
              "UNIREC_MODEL_CHANNEL": f"unirec:test:{run_id}:models",
              "UNIREC_MODEL_LATEST_KEY": f"unirec:test:{run_id}:latest",
              "UNIREC_CHURN_KEY_PREFIX": f"unirec:test:{run_id}:churn", "OMP_NUM_THREADS": "1"}
    overrides = {
        "trainer": {**common, "UNIREC_TRAINER_METRICS_PORT": str(metrics_port), "UNIREC_TRAINER_THREADS": "1",
                    "UNIREC_TRAINER_EXPORT_EVERY_S": "5", "UNIREC_TRAINER_CHECKPOINT_EVERY_S": "5"},
        "inference": {**common, "UNIREC_SERVE_PORT": str(serve_port), "UNIREC_SERVE_POLL_INTERVAL_S": "1",
                      "UNIREC_SERVE_INFERENCE_THREADS": "1"},
    }
    broker_host, broker_port = kafka_bootstrap.rsplit(":", 1)

    def redis_answers() -> bool:
        with contextlib.suppress(redis.RedisError):
            return bool(redis.Redis.from_url(redis_url, socket_timeout=2).ping())
        return False

    external = {"kafka": lambda: port_open(broker_host, int(broker_port)), "redis": redis_answers}
    stop = threading.Event()

    def trickle() -> None:  # events keep flowing while the containers start
        nonlocal sent
        while not stop.wait(0.5):
            for _ in range(20):
                producer.send(topic_name, orjson.dumps(event(rng, sent)))
                sent += 1
            producer.flush()

    names = {"inference": f"unirec-test-serve-{run_id}", "trainer": f"unirec-test-trainer-{run_id}"}
    serve_name, trainer_name = names["inference"], names["trainer"]
    client = httpx.Client(base_url=f"http://127.0.0.1:{serve_port}", timeout=10)
    feeder = threading.Thread(target=trickle, daemon=True)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        for name in order:
            for dep, condition in dependencies(services[name]).items():
                assert condition == "service_healthy", (name, dep, condition)
                probe = external.get(dep) or (lambda d=dep: healthy(podman, names[d]))
                waited = wait_healthy(dep, probe, HealthWait.of(services[dep]))
                log.info("%s: dependency %s healthy after %.1f s", name, dep, waited)
            if name in names:
                stack.enter_context(container(podman, names[name], *run_args(
                    services[name], named_volumes={"unirec-home": home}, environment=overrides[name])))
        feeder.start()
        try:
            deadline = time.monotonic() + READY_TIMEOUT_S
            while True:
                for name in (serve_name, trainer_name):
                    assert running(podman, name), f"{name} stopped\n{logs(podman, serve_name, trainer_name)}"
                with contextlib.suppress(httpx.HTTPError):
                    if client.get("/readyz").status_code == 200:
                        break
                assert time.monotonic() < deadline, f"/readyz not 200 after {READY_TIMEOUT_S} s\n" + logs(
                    podman, serve_name, trainer_name)
                time.sleep(2)
            log.info("container stack ready in %.1f s", time.monotonic() - started)

            batch = [event(random.Random(5), n) for n in range(8)]
            response = client.post("/v1/predict", json={"events": batch})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["version"] and len(body["probabilities"]) == len(batch)
            assert all(0.0 < p < 1.0 for p in body["probabilities"]), body

            # the image's HEALTHCHECK (service) and the Compose one (trainer), as the engine runs them
            for name in (serve_name, trainer_name):
                check = podman.run("healthcheck", "run", name, check=False, timeout=60)
                assert check.returncode == 0, f"{name} unhealthy: {check.stdout}{check.stderr}"
                uid = podman.run("exec", name, "id", "-u").stdout.strip()
                assert uid == str(UID), f"{name} runs as uid {uid}"
        finally:
            stop.set()
            feeder.join(timeout=10)
            producer.close()

        # SIGTERM through tini and torchrun: the rank finishes its batch, checkpoints and logs "stopped"
        # (torchrun itself then exits 1: it re-raises the signal it forwarded)
        podman.run("stop", "-t", "90", trainer_name, timeout=120)
        result = podman.run("logs", trainer_name)
        stopped = result.stdout + result.stderr
        assert '"event":"stopped"' in stopped, f"no clean stop on SIGTERM\n{logs(podman, trainer_name)}"
        assert any((home / "checkpoints").iterdir()), "no checkpoint written"
