"""Benchmark results: every script writes `bench/results/<name>.json` and renders `<name>.md` from it.

A script calls `write_results(name, data, render)`; `render(data) -> str` must depend on the JSON
document alone, so `tests/bench/test_results.py` can re-render every results file and fail on any
difference (no hand-edited results). Interpretation belongs in `docs/benchmarks.md`.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
"""Anchored to the repository, whatever the working directory."""

Render = Callable[[dict[str, Any]], str]

RENDERERS: dict[str, str] = {
    "artifact_sizes": "bench.artifact_sizes:render",
    "batch_size": "bench.batch_size:render",
    "churn": "bench.churn:render",
    "embedding_throughput": "bench.embedding_throughput:render",
    "freshness": "bench.freshness:render",
    "gpu": "bench.gpu:render",
    "producer": "bench.producer:render",
    "quantized_predict": "bench.quantized_predict:render",
    "serving": "bench.serving:render",
    "trainer_throughput": "bench.trainer_throughput:render",
    "quality_streaming": "bench.streaming:render",
    "quality_multisize": "bench.quality_multisize:render",
    "quality_mlet_*": "bench.quality:render_mlet",
    "quality_tuned_*": "bench.quality:render_tuned",
    "quality_*": "bench.quality:render",
}
"""Results name (glob, first match wins) -> `module:function` that renders its Markdown from its JSON.
Strings, so reading the table imports no benchmark; a new benchmark adds its line here."""


def renderer_of(name: str) -> Render:
    """The render function of results file `name` (without suffix); KeyError when no benchmark claims it."""
    for pattern, target in RENDERERS.items():
        if fnmatchcase(name, pattern):
            module, function = target.split(":")
            return getattr(importlib.import_module(module), function)
    raise KeyError(f"no benchmark renders bench/results/{name}.json; expected a pattern of RENDERERS to match")


def _scalar(value: Any) -> Any:
    """numpy scalars (a measurement's `np.int64` counts) as the Python numbers they hold."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable; expected numbers, strings, lists, dicts")


def dump_json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True, default=_scalar) + "\n"


def write_results(name: str, data: dict[str, Any], render: Render, directory: Path = RESULTS_DIR) -> Path:
    """Write `<name>.json` and the Markdown rendered from exactly what was written; returns the .md path.

    `data` is round-tripped through JSON before rendering, so the Markdown is what a re-render of
    the file gives. Objects are written with sorted keys: a render takes order from lists only.
    `directory` is for runs that must not replace the committed results (tests, CI)."""
    directory.mkdir(parents=True, exist_ok=True)
    text = dump_json(data)
    (directory / f"{name}.json").write_text(text)
    md = directory / f"{name}.md"
    md.write_text(render(json.loads(text)))
    return md


def read_results(name: str, directory: Path = RESULTS_DIR) -> dict[str, Any]:
    """The JSON document of an earlier run (`{}` when there is none)."""
    path = directory / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def machine_load() -> float:
    """The one-minute load average (0.0 where the OS does not report it)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def refuse_when_busy(limit: float) -> None:
    """Exit with a message instead of measuring on a busy machine (one-minute load above `limit`)."""
    load = machine_load()
    if load > limit:
        raise SystemExit(f"load average {load:.2f} > {limit}: the machine is busy; results not written (--max-load)")
