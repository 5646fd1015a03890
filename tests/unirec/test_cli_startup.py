"""The `unirec` command starts fast: subcommands import their jobs lazily.

The bound (2.5 s) is generous for a loaded two-core machine; on an idle one these take 0.3-0.6 s.
Each command's listed help must be the one its module declares, so the table in `unirec/cli.py`
cannot drift from the commands it stands for.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from unirec.cli import COMMANDS

BOUND_S = 2.5


def _env(home: Path) -> dict[str, str]:
    # unreachable local servers: the commands answer "not running" at once instead of waiting
    return {k: v for k, v in os.environ.items() if not k.startswith("UNIREC_")} | {
        "UNIREC_HOME": str(home),
        "UNIREC_KAFKA_BOOTSTRAP": "127.0.0.1:1",
        "UNIREC_REDIS_URL": "redis://127.0.0.1:1/0",
    }


@pytest.mark.parametrize("args", [["--help"], ["infra", "status"], ["models", "list"], ["churn", "report"]])
def test_command_starts_within_bound(args: list[str], tmp_path: Path) -> None:
    times = []
    for _ in range(3):
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "unirec.cli", *args], env=_env(tmp_path), capture_output=True, text=True, timeout=60
        )
        times.append(time.perf_counter() - started)
        assert "Traceback" not in done.stderr, done.stderr
    assert statistics.median(times) < BOUND_S, f"unirec {' '.join(args)} took {times} s (median bound {BOUND_S} s)"


def test_importing_the_cli_imports_no_job() -> None:
    code = (
        "import sys, unirec.cli\n"
        "heavy = [m for m in ('torch', 'torchrec', 'fbgemm_gpu', 'fastapi', 'numpy', 'pandas') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "", f"import unirec.cli imported {done.stdout.strip()}"


@pytest.mark.parametrize("name", list(COMMANDS))
def test_listed_help_is_the_commands_own(name: str) -> None:
    command = COMMANDS[name].load(name)
    assert (command.help or "").strip().splitlines()[0] == COMMANDS[name].help


def test_help_lists_every_command_without_loading_it() -> None:
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from unirec.cli import app\n"
        "out = CliRunner().invoke(app, ['--help'], env={'COLUMNS': '200'}).output\n"
        "print('torch' in sys.modules, 'services.inference.cli' in sys.modules, 'bench.cli' in sys.modules)\n"
        "print(out)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    first, _, listing = done.stdout.partition("\n")
    assert first == "False False False"
    for name, lazy in COMMANDS.items():
        assert name in listing and lazy.help in listing
