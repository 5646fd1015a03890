"""Foreground `unirec up`: a killed trainer rank is named and the trainer restarts from its last
checkpoint; `unirec down` from another terminal, or Ctrl-C, ends `unirec up` with exit code 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.net import free_port
from trainer.checkpoint import latest_checkpoint
from trainer.lifetime import children
from unirec.infra import _alive

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _env(home: Path) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("UNIREC_")} | {
        "UNIREC_HOME": str(home),
        "UNIREC_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
        "UNIREC_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "UNIREC_UP_SERVE_PORT": str(free_port()),
        "UNIREC_UP_TRAINER_METRICS_PORT": str(free_port()),
        "UNIREC_UP_RATE": "300",
        "UNIREC_TRAINER_THREADS": "1",
        "UNIREC_TRAINER_CHECKPOINT_EVERY_S": "2",
    }


def _up(home: Path) -> tuple[subprocess.Popen[str], dict[str, str]]:
    env = _env(home)
    log = open(home / "up.out", "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([sys.executable, "-m", "unirec.cli", "up"], env=env, stdout=log, stderr=log, text=True)
    return proc, env


def _wait(predicate: object, what: str, proc: subprocess.Popen[str], home: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"unirec up exited ({proc.returncode}) waiting for {what}:\n{_out(home)}"
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.5)
    raise AssertionError(f"no {what} within {timeout}s:\n{_out(home)}")


def _out(home: Path) -> str:
    logs = "\n".join(f"{p.name}: {p.read_text()[-1500:]}" for p in (home / "logs").glob("*.log"))
    return (home / "up.out").read_text()[-3000:] + "\n" + logs


def _trainer_ranks(home: Path) -> list[int]:
    try:
        launcher = int((home / "run" / "trainer.pid").read_text())
    except (FileNotFoundError, ValueError):
        return []
    torchrun = children(launcher)
    return children(torchrun[0]) if torchrun else []


def test_a_killed_rank_restarts_the_trainer_and_down_ends_up_with_zero(tmp_path: Path) -> None:
    proc, env = _up(tmp_path)
    try:
        _wait(lambda: len(_trainer_ranks(tmp_path)) == 2 and latest_checkpoint(tmp_path / "checkpoints"),
              "checkpoint of 2 ranks", proc, tmp_path)  # fmt: skip
        os.kill(_trainer_ranks(tmp_path)[1], signal.SIGKILL)
        _wait(lambda: "trainer died" in (tmp_path / "up.out").read_text(), "report of the dead trainer", proc, tmp_path)
        _wait(lambda: (tmp_path / "logs" / "trainer.log").read_text().count('"resumed"') >= 1
              and len(_trainer_ranks(tmp_path)) == 2, "restarted trainer resuming", proc, tmp_path)  # fmt: skip
        down = subprocess.run(
            [sys.executable, "-m", "unirec.cli", "down"], env=env, capture_output=True, text=True, timeout=240
        )
        assert down.returncode == 0, down.stderr
        assert "stopped: unirec up (pid" in down.stderr, down.stderr  # not "nothing was running"
        assert proc.wait(timeout=60) == 0, _out(tmp_path)
        assert not list((tmp_path / "run").glob("*.pid"))
    finally:
        if proc.poll() is None:
            proc.kill()
            subprocess.run([sys.executable, "-m", "unirec.cli", "down"], env=env, capture_output=True, timeout=240)


def test_ctrl_c_ends_up_with_zero(tmp_path: Path) -> None:
    proc, env = _up(tmp_path)
    try:
        _wait(lambda: len(_trainer_ranks(tmp_path)) == 2, "2 trainer ranks", proc, tmp_path)
        pids = [int(p.read_text()) for p in (tmp_path / "run").glob("*.pid")]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=180) == 0, _out(tmp_path)
        assert not any(_alive(pid) for pid in pids)
    finally:
        if proc.poll() is None:
            proc.kill()
            subprocess.run([sys.executable, "-m", "unirec.cli", "down"], env=env, capture_output=True, timeout=240)
