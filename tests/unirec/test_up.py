"""`unirec up --detach` brings the whole stack up on free ports; predictions flow; `unirec down` ends it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from unirec.infra import _alive, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REQUEST = {
    "events": [
        {"event_id": "demo-1", "ts": 893286638000,
         "sparse": {"user": 196, "movie": 242, "age": 49, "gender": "M", "occupation": "writer", "zip": "55105"}}
    ]
}  # fmt: skip


def _cli(env: dict[str, str], *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "unirec.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_up_serves_predictions_and_the_model_version_advances(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNIREC_")} | {
        "UNIREC_HOME": str(tmp_path),
        "UNIREC_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
        "UNIREC_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "UNIREC_UP_SERVE_PORT": str(port),
        "UNIREC_UP_TRAINER_METRICS_PORT": str(free_port()),
        "UNIREC_UP_RATE": "300",
        "UNIREC_UP_DELTA_EVERY_S": "2",
        "UNIREC_TRAINER_THREADS": "1",
    }
    try:
        up = _cli(env, "up", "--detach", "--timeout", "400", timeout=480)
        logs = "\n".join(f"{p.name}: {p.read_text()[-1500:]}" for p in (tmp_path / "logs").glob("*.log"))
        assert up.returncode == 0, up.stderr[-3000:] + logs
        pids = {p.stem: int(p.read_text()) for p in (tmp_path / "run").glob("*.pid")}
        assert set(pids) == {"kafka", "redis", "producer", "trainer", "inference"}

        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/readyz").status_code == 200
        first = httpx.post(f"{base}/v1/predict", json=REQUEST, timeout=10)
        assert first.status_code == 200, first.text
        body = first.json()
        assert len(body["probabilities"]) == 1 and 0.0 < body["probabilities"][0] < 1.0

        deadline = time.monotonic() + 120
        version = body["version"]
        while time.monotonic() < deadline:
            now = httpx.post(f"{base}/v1/predict", json=REQUEST, timeout=10).json()["version"]
            if now != version:
                break
            time.sleep(0.5)
        assert now != version, f"served version stayed {version} while events flowed"
        model = httpx.get(f"{base}/v1/model").json()
        assert model["freshness_s"] < 120, "events are stamped with the wall clock: the model is minutes fresh"
    finally:
        down = _cli(env, "down", timeout=180)
    assert down.returncode == 0, down.stderr
    assert not any(_alive(pid) for pid in pids.values())
