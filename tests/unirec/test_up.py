"""`unirec up --detach` brings the whole stack up on free ports; predictions flow, the served version
advances while events flow, the status page renders live figures in headless Chromium, and
`unirec down` ends every process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from core.net import free_port
from unirec.infra import _alive

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REQUEST = {
    "events": [
        {"event_id": "demo-1", "ts": 893286638000,
         "sparse": {"user": 196, "movie": 242, "age": 49, "gender": "M", "occupation": "writer", "zip": "55105"}}
    ]
}  # fmt: skip
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def _cli(env: dict[str, str], *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "unirec.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@dataclass
class RunningStack:
    base: str
    home: Path
    env: dict[str, str]
    pids: dict[str, int]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    home = tmp_path_factory.mktemp("up")
    user_home = tmp_path_factory.mktemp("user-home")  # the shell's HOME: nothing of the stack may land there
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNIREC_")} | {
        "HOME": str(user_home),
        "UNIREC_HOME": str(home),
        "UNIREC_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
        "UNIREC_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "UNIREC_UP_SERVE_PORT": str(port),
        "UNIREC_UP_TRAINER_METRICS_PORT": str(free_port()),
        "UNIREC_UP_RATE": "300",
        "UNIREC_UP_DELTA_EVERY_S": "2",
        "UNIREC_TRAINER_THREADS": "1",
        "UNIREC_CHURN_WINDOW_S": "5",
    }
    try:
        up = _cli(env, "up", "--detach", "--timeout", "400", timeout=480)
        logs = "\n".join(f"{p.name}: {p.read_text()[-1500:]}" for p in (home / "logs").glob("*.log"))
        assert up.returncode == 0, up.stderr[-3000:] + logs
        pids = {p.stem: int(p.read_text()) for p in (home / "run").glob("*.pid")}
        yield RunningStack(f"http://127.0.0.1:{port}", home, env, pids)
    finally:
        _cli(env, "down", timeout=180)


def test_all_components_run(stack: RunningStack) -> None:
    assert set(stack.pids) == {"kafka", "redis", "producer", "trainer", "inference"}
    assert all(_alive(pid) for pid in stack.pids.values())
    assert httpx.get(f"{stack.base}/readyz").status_code == 200


def test_predictions_flow_and_the_served_version_advances(stack: RunningStack) -> None:
    first = httpx.post(f"{stack.base}/v1/predict", json=REQUEST, timeout=10)
    assert first.status_code == 200, first.text
    body = first.json()
    assert len(body["probabilities"]) == 1 and 0.0 < body["probabilities"][0] < 1.0
    version = now = body["version"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and now == version:
        time.sleep(0.5)
        now = httpx.post(f"{stack.base}/v1/predict", json=REQUEST, timeout=10).json()["version"]
    assert now != version, f"served version stayed {version} while events flowed"
    model = httpx.get(f"{stack.base}/v1/model").json()
    assert model["freshness_s"] < 120, "events carry the wall clock: the served model is seconds fresh"


def test_status_page_renders_live_figures_in_chromium(stack: RunningStack, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        assert not os.environ.get("CI"), "CI installs Debian chromium (.ci/run); it is missing"
        pytest.skip("Debian chromium is not installed (.ci/run installs it)")
    flags = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1280,1000", "--virtual-time-budget=8000",
    ]  # fmt: skip
    dom = subprocess.run([*flags, "--dump-dom", f"{stack.base}/"], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'id="version">v' in dom.stdout, "the page's script filled in the served version"
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "status-page.png"
    shot.unlink(missing_ok=True)
    run = subprocess.run([*flags, f"--screenshot={shot}", f"{stack.base}/"], capture_output=True, timeout=120)
    assert run.returncode == 0 and shot.stat().st_size > 10_000, run.stderr[-2000:]


def test_nothing_is_written_into_the_users_home(stack: RunningStack) -> None:
    """Broker binary, font caches, logs: all under UNIREC_HOME, none under the shell's HOME."""
    user_home = Path(stack.env["HOME"])
    # not ours: pip (fetching ML-100k) runs `rustc --version` for its user agent, and where rustc is a
    # rustup shim, rustup writes ~/.rustup/settings.toml
    written = sorted(str(p.relative_to(user_home)) for p in user_home.rglob("*"))
    written = [path for path in written if not path.startswith(".rustup")]
    assert not written, f"the stack wrote into HOME={user_home}: {written}"
    assert (stack.home / "logs").is_dir()


def test_down_stops_every_process(stack: RunningStack) -> None:
    down = _cli(stack.env, "down", timeout=180)
    assert down.returncode == 0, down.stderr
    assert not any(_alive(pid) for pid in stack.pids.values())
    assert not list((stack.home / "run").glob("*.pid"))
