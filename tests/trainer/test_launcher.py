"""`unirec train --nproc 2`: a SIGTERM stops it with exit code 0 after the final checkpoint, and the
ranks die with torchrun when it is killed (no orphans training on)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.trainer.conftest import create_topic, send, start_trainer, trainer_env
from tests.trainer.test_training import synthetic_events
from trainer.checkpoint import latest_checkpoint, read_meta
from trainer.lifetime import children
from unirec.infra import _alive

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _training_ranks(proc: subprocess.Popen[bytes], log: Path, timeout: float = 180) -> tuple[int, list[int]]:
    """(torchrun's pid, the ranks' pids) once a first checkpoint shows both ranks train."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        launched = children(proc.pid)
        ranks = children(launched[0]) if launched else []
        if len(ranks) == 2 and latest_checkpoint(log.parent / "checkpoints") is not None:
            return launched[0], ranks
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint of 2 ranks within {timeout}s:\n{log.read_text()[-3000:]}")


def _start(kafka_bootstrap: str, topic: str, home: Path) -> tuple[subprocess.Popen[bytes], Path]:
    create_topic(kafka_bootstrap, topic, 2)
    send(kafka_bootstrap, topic, synthetic_events(3000), partitions=2)
    env = trainer_env(home, kafka_bootstrap, topic, stop_at_end="false", checkpoint_every_events=500, batch_size=32)
    log = home / "train.log"
    return start_trainer(env, nproc=2, log=log), log


def test_sigterm_exits_zero_after_the_final_checkpoint(kafka_bootstrap: str, topic_name: str, tmp_path: Path) -> None:
    proc, log = _start(kafka_bootstrap, topic_name, tmp_path)
    try:
        _, ranks = _training_ranks(proc, log)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code == 0, log.read_text()[-3000:]
    assert not any(_alive(pid) for pid in ranks)
    assert log.read_text().count("stop_requested") == 2, "each rank got the stop signal"
    assert read_meta(latest_checkpoint(tmp_path / "checkpoints")).events > 0  # type: ignore[arg-type]


def test_ranks_die_when_torchrun_is_killed(kafka_bootstrap: str, topic_name: str, tmp_path: Path) -> None:
    proc, log = _start(kafka_bootstrap, topic_name, tmp_path)
    ranks: list[int] = []
    try:
        torchrun, ranks = _training_ranks(proc, log)
        os.kill(torchrun, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in ranks) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in ranks), "a rank kept running after torchrun was killed"
        assert proc.wait(timeout=30) != 0, "a killed torchrun is a failed run"
    finally:
        for pid in ranks:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
