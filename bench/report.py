"""Benchmark results: every script writes `bench/results/<name>.json` and renders `<name>.md` from it.

A script calls `write_results(name, data, render)`; `render(data) -> str` must depend on the JSON
document alone, so `tests/bench/test_results.py` can re-render every results file and fail on any
difference (no hand-edited results). Interpretation belongs in `docs/benchmarks.md`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
"""Anchored to the repository, whatever the working directory."""


def _scalar(value: Any) -> Any:
    """numpy scalars (a measurement's `np.int64` counts) as the Python numbers they hold."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable; expected numbers, strings, lists, dicts")


def dump_json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True, default=_scalar) + "\n"


def write_results(
    name: str, data: dict[str, Any], render: Callable[[dict[str, Any]], str], directory: Path = RESULTS_DIR
) -> Path:
    """Write `<name>.json` and the Markdown rendered from exactly what was written; returns the .md path.

    `data` is round-tripped through JSON before rendering, so the Markdown is what a re-render of
    the file gives. `directory` is for runs that must not replace the committed results (tests, CI)."""
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
