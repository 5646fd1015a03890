"""How a rank process ends: its exit code and its last log lines survive the exit without
interpreter finalization, and a rank that fails prints why."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _python(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("UNIREC_")} | env
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=120)


def test_exit_rank_keeps_the_code_and_flushes_logs_and_streams() -> None:
    done = _python(
        "-c",
        "import logging, sys\n"
        "from core.logs import configure_logging\n"
        "from trainer.lifetime import exit_rank\n"
        "configure_logging('info', json_lines=True)\n"
        "logging.getLogger('unirec.trainer').info('last words')\n"
        "sys.stdout.write('unflushed')\n"
        "exit_rank(3)\n",
    )
    assert done.returncode == 3
    assert "last words" in done.stderr
    assert done.stdout == "unflushed"


def test_a_rank_that_fails_exits_1_with_its_traceback(tmp_path: Path) -> None:
    done = _python("-m", "trainer.main", UNIREC_HOME=str(tmp_path), UNIREC_TRAINER_BATCH_SIZE="many")
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "batch_size" in done.stderr and "many" in done.stderr
