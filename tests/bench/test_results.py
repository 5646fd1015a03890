"""Every file in bench/results/ is what its benchmark renders from the JSON beside it (no hand edits)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.report import RESULTS_DIR, renderer_of, write_results

JSONS = sorted(RESULTS_DIR.glob("*.json"))
MARKDOWNS = sorted(RESULTS_DIR.glob("*.md"))


def difference(path: Path) -> str | None:
    """Why `path`'s .md is not the render of `path` (a results .json), or None when it is."""
    render = renderer_of(path.stem)
    md = path.with_suffix(".md")
    if not md.exists():
        return f"{path.name} has no {md.name}"
    if md.read_text() != render(json.loads(path.read_text())):
        return (
            f"{md.name} differs from {render.__module__}:{render.__name__} of {path.name}; results are written "
            "by their script alone (rerun it; interpretation goes to docs/benchmarks.md)"
        )
    return None


def test_there_are_results_to_check() -> None:
    assert JSONS and MARKDOWNS, f"no results under {RESULTS_DIR}"


@pytest.mark.parametrize("md", MARKDOWNS, ids=lambda p: p.name)
def test_every_markdown_has_its_json(md: Path) -> None:
    assert md.with_suffix(".json").exists(), f"{md.name} has no {md.stem}.json: results are written by write_results"


@pytest.mark.parametrize("path", JSONS, ids=lambda p: p.name)
def test_markdown_is_the_render_of_its_json(path: Path) -> None:
    assert difference(path) is None, difference(path)


def test_a_hand_edited_markdown_is_found(tmp_path: Path) -> None:
    data = {
        "seconds": 90.0, "cores": 2, "load_before": 1.0, "load_after": 1.5, "rate": 500.0, "ranks": 2,
        "delta_every_s": 3.0, "export_every_s": 60.0, "polls": 431, "produce_times": 758,
        "p50_s": 2.0, "p95_s": 3.5, "max_s": 4.0,
    }  # fmt: skip
    md = write_results("freshness", data, renderer_of("freshness"), tmp_path)
    assert difference(tmp_path / "freshness.json") is None
    md.write_text(md.read_text() + "\nThe numbers are good.\n")
    assert "differs from bench.freshness:render" in str(difference(tmp_path / "freshness.json"))
    md.unlink()
    assert difference(tmp_path / "freshness.json") == "freshness.json has no freshness.md"


def test_an_unclaimed_results_name_is_an_error() -> None:
    with pytest.raises(KeyError, match="no benchmark renders"):
        renderer_of("hand_written")
