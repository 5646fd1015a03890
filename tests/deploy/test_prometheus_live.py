"""End to end: a real Prometheus scrapes a live trainer and inference service, and every PromQL
expression of every dashboard panel returns at least one series.

Starts `unirec train` and `unirec serve` as subprocesses against the session broker and Redis, streams
synthetic MovieLens-shaped events (a few malformed ones for the dead-letter panel), sends predict
requests (unseen IDs, missing features, a bad body for the error panel), then evaluates each
dashboard expression (variables on "All", `$__rate_interval` = 1m) through the Prometheus HTTP API.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from core.net import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

UNIREC = str(Path(sys.executable).with_name("unirec"))
API_KEY = "live-test-key"
T0_MS = 1_700_000_000_000
READY_TIMEOUT_S = 240
SERIES_TIMEOUT_S = 150


def _require_components() -> None:
    try:
        import services.inference  # noqa: F401
        import trainer.main  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"trainer/service not available yet ({exc})")


class Events:
    """Synthetic MovieLens-shaped events: a label that depends on user and movie, event time moving on
    by 2 s per event so churn windows (60 s of event time) keep closing."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.n = 0

    def next(self, unseen: bool = False, drop: str | None = None) -> dict:
        rng, self.n = self.rng, self.n + 1
        user = 10**9 + self.n if unseen else int(rng.paretovariate(1.2)) % 943 + 1
        movie = int(rng.paretovariate(1.1)) % 1682 + 1
        sparse = {"user": user, "movie": movie, "age": 18 + user % 50, "gender": "MF"[user % 2],
                  "occupation": f"occ{user % 21}", "zip": f"{(user * 7919) % 99999:05d}"}
        if drop:
            sparse.pop(drop)
        label = int(rng.random() < (0.8 if (user + movie) % 3 == 0 else 0.2))
        return {"event_id": f"e{self.n}", "ts": T0_MS + 2000 * self.n, "label": label, "sparse": sparse}


@contextlib.contextmanager
def process(name: str, cmd: list[str], env: dict[str, str], logs: Path) -> Iterator[subprocess.Popen]:
    log = (logs / f"{name}.log").open("wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()


def tails(logs: Path, lines: int = 25) -> str:
    out = []
    for path in sorted(logs.glob("*.log")):
        text = path.read_text(errors="replace").splitlines()[-lines:]
        out.append(f"--- {path.name} ---\n" + "\n".join(text))
    return "\n".join(out)


def wait_until(predicate, timeout: float, what: str, procs: dict[str, subprocess.Popen], logs: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            if proc.poll() is not None:
                pytest.fail(f"{name} exited with {proc.returncode} while waiting for {what}\n{tails(logs)}")
        with contextlib.suppress(httpx.HTTPError):
            if predicate():
                return
        time.sleep(1)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{tails(logs)}")


def test_every_dashboard_expression_returns_series(
    kafka_bootstrap: str, redis_url: str, topic_name: str, prometheus_bin: str, dashboard_queries, tmp_path: Path
) -> None:
    _require_components()
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    logs = tmp_path / "logs"
    logs.mkdir()
    home = tmp_path / "home"
    metrics_port, serve_port, prom_port = free_port(), free_port(), free_port()

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(topic_name, 1, 1), NewTopic(f"{topic_name}.dlq", 1, 1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
    events = Events()
    import orjson

    for _ in range(3000):
        producer.send(topic_name, orjson.dumps(events.next()))
    for bad in (b"{not json", b'{"event_id": "x", "ts": -1}', orjson.dumps({"event_id": "y"})):
        producer.send(topic_name, bad)
    producer.flush()

    base_env = {k: v for k, v in os.environ.items() if not k.startswith("UNIREC_")}
    common = {**base_env, "UNIREC_HOME": str(home), "UNIREC_KAFKA_BOOTSTRAP": kafka_bootstrap,
              "UNIREC_REDIS_URL": redis_url, "OMP_NUM_THREADS": "1", "UNIREC_LOG_LEVEL": "INFO"}
    trainer_env = {**common, "UNIREC_TRAINER_TOPIC": topic_name, "UNIREC_TRAINER_SCHEMA": "movielens",
                   "UNIREC_TRAINER_METRICS_PORT": str(metrics_port),
                   # frequent checkpoints and exports, so every panel has data within seconds
                   "UNIREC_TRAINER_CHECKPOINT_EVERY_S": "5", "UNIREC_TRAINER_EXPORT_EVERY_S": "5",
                   "UNIREC_TRAINER_DELTA_EVERY_S": "2", "UNIREC_TRAINER_THREADS": "1",
                   "UNIREC_CHURN_KEY_PREFIX": f"unirec:churn:{topic_name}"}
    serve_env = {**common, "UNIREC_SERVE_PORT": str(serve_port), "UNIREC_SERVE_API_KEY": API_KEY,
                 "UNIREC_SERVE_POLL_INTERVAL_S": "1", "UNIREC_SERVE_INFERENCE_THREADS": "1"}
    prom_config = tmp_path / "prometheus.yml"
    prom_config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": "unirec-trainer", "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]},
            {"job_name": "unirec-inference", "static_configs": [{"targets": [f"127.0.0.1:{serve_port}"]}]},
        ],
    }))
    prom_cmd = [prometheus_bin, f"--config.file={prom_config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"]

    stop = threading.Event()
    client = httpx.Client(timeout=10)
    serve = f"http://127.0.0.1:{serve_port}"

    def trickle() -> None:  # keep events flowing while Prometheus watches
        while not stop.wait(0.5):
            for _ in range(20):
                producer.send(topic_name, orjson.dumps(events.next()))
            producer.flush()

    with (
        process("trainer", [UNIREC, "train"], trainer_env, logs) as trainer,
        process("serve", [UNIREC, "serve"], serve_env, logs) as service,
        process("prometheus", prom_cmd, base_env, logs) as prometheus,
    ):
        procs = {"trainer": trainer, "serve": service, "prometheus": prometheus}
        feeder = threading.Thread(target=trickle, daemon=True)
        feeder.start()
        try:
            wait_until(lambda: client.get(f"{serve}/readyz").status_code == 200, READY_TIMEOUT_S,
                       "the service to load the trainer's first export (/readyz 200)", procs, logs)

            requests = Events(seed=11)
            for i in range(40):
                batch = [requests.next(unseen=i % 4 == 0, drop="zip" if i % 5 == 0 else None) for _ in range(8)]
                response = client.post(f"{serve}/v1/predict", json={"events": batch})
                assert response.status_code == 200, response.text
            assert client.post(f"{serve}/v1/predict", content=b"{broken",
                               headers={"content-type": "application/json"}).status_code >= 400
            client.get(f"{serve}/v1/model", headers={"X-API-Key": API_KEY})

            api = f"http://127.0.0.1:{prom_port}/api/v1/query"
            empty: list[str] = []

            def all_have_series() -> bool:
                empty.clear()
                for name, title, expr in dashboard_queries:
                    body = client.get(api, params={"query": expr}).json()
                    assert body["status"] == "success", f"{name} / {title}: {expr}: {body}"
                    if not body["data"]["result"]:
                        empty.append(f"{name} / {title}: {expr}")
                # keep traffic going so rate() windows see it
                client.post(f"{serve}/v1/predict", json={"events": [requests.next()]})
                return not empty

            try:
                wait_until(all_have_series, SERIES_TIMEOUT_S, "every dashboard expression to return series",
                           procs, logs)
            except pytest.fail.Exception:
                pytest.fail("dashboard expressions without series:\n  " + "\n  ".join(empty) + "\n" + tails(logs))
        finally:
            stop.set()
            feeder.join(timeout=10)
            producer.close()
            client.close()
