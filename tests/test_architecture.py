"""The package graph of docs/architecture.md holds: import-linter checks the contracts of
pyproject.toml ([tool.importlinter]) over the real imports of every module."""

from __future__ import annotations

from pathlib import Path

import pytest
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept(capsys: pytest.CaptureFixture[str]) -> None:
    code = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True)
    out = capsys.readouterr().out
    assert code == 0, f"import contracts broken:\n{out[-4000:]}"
    assert "3 kept, 0 broken" in out, out[-2000:]


def test_architecture_doc_names_every_package() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for package in ("core", "embedding", "registry", "trainer", "services", "unirec", "bench"):
        assert f"`{package}/`" in doc, f"docs/architecture.md does not describe {package}/"
