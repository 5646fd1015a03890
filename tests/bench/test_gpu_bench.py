"""bench/gpu.py's results render from their JSON alone, and a CPU run never replaces them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.report import renderer_of, write_results

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_results_render_from_the_json_of_a_dry_run_shape(tmp_path: Path) -> None:
    batch = {"peer": 1000.0, "step": 2500.0, "step_prepare": 2000.0, "step_over_peer": 2.5}
    data = {
        "device": "NVIDIA H200", "torch": "2.11.0+cu130", "cuda": "13.0", "versions": {"torchrec": "1.6.1"},
        "cores": 16, "batches_per_run": 8, "repeats": 3, "kafka_repeats": 2, "created": "2026-12-02T00:00:00",
        "runs": {}, "summary": {"batch": {"65536": batch, "4096": batch}, "kafka": 50.0, "kafka_step": 100.0,
                                "kafka_over_step": 0.5, "kafka_batch": 4096},
    }  # fmt: skip
    md = write_results("gpu", data, renderer_of("gpu"), tmp_path).read_text()
    assert "NVIDIA H200" in md and md.index("| 4,096 |") < md.index("| 65,536 |") and "2.50x" in md
    assert md == renderer_of("gpu")(json.loads((tmp_path / "gpu.json").read_text()))


def test_a_cpu_run_refuses_to_write_the_committed_results() -> None:
    out = subprocess.run([sys.executable, "bench/gpu.py", "--device", "cpu", "--quick"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode != 0 and "--dry-run" in out.stderr
