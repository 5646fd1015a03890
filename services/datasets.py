"""Datasets the project knows: where each one lives, and fetching the one that can be fetched.

    unirec data list                 # known datasets, where each is found (or how to get it)
    unirec data fetch movielens      # ML-100k into <UNIREC_HOME>/data/movielens (idempotent)

MovieLens-100k comes from the PyPI wheel `recbole==1.2.1` (MIT package; it ships the GroupLens
ratings as RecBole atomic files), so any machine that reaches PyPI can fetch it: `pip download`
the wheel, check its sha256, and extract `ml-100k.{inter,user,item}`. Criteo and Frappe cannot be
redistributed; they are looked up in, in order: a path given by option, `$UNIREC_DATA_DIR/<folder>`,
`<UNIREC_HOME>/data/<folder>`, and a `shared/data/<folder>` next to the repository checkout.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import orjson
import typer
from pydantic_settings import SettingsConfigDict
from rich.console import Console
from rich.table import Table

from core.logs import get_logger, log_event
from core.settings import CommonSettings
from services.replay.errors import DatasetError

log = get_logger("datasets")

RECBOLE_WHEEL = "recbole==1.2.1"
RECBOLE_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
MOVIELENS_FILES: dict[str, str] = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
}
_REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Dataset:
    name: str
    schema: str
    """Shipped feature schema (embedding/schemas/<schema>.yaml) whose `source:` reads this dataset."""
    folder: str
    """Folder name under a data directory."""
    files: tuple[str, ...]
    """Files that must be present for the dataset to count as found."""
    description: str
    where: str
    """Where users get it."""
    fetchable: bool = False


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset(
            "movielens",
            "movielens",
            "movielens",
            tuple(MOVIELENS_FILES),
            "MovieLens-100k: 100,000 ratings of 1,682 movies by 943 users (1997-98) with user side features",
            f"`unirec data fetch movielens` (from the PyPI wheel {RECBOLE_WHEEL}); original: "
            "https://grouplens.org/datasets/movielens/100k/ (research use, cite Harper & Konstan 2015)",
            fetchable=True,
        ),
        Dataset(
            "criteo",
            "criteo",
            "criteo_kaggle_dac",
            ("train_head10k.txt",),
            "Criteo Display Advertising Challenge (Kaggle 2014): label, 13 counts, 26 hashed categoricals; TSV",
            "https://ailab.criteo.com/ressources/ (Kaggle DAC train.txt, 45M rows; non-commercial terms, no "
            "redistribution). Any file in that format works: `unirec produce criteo --path train.txt`",
        ),
        Dataset(
            "frappe",
            "frappe",
            "frappe",
            ("frappe.validation.libfm",),
            "Frappe: context-aware mobile app usage (Baltrunas et al. 2015), libFM format, label +1/-1, 10 fields",
            "https://github.com/hexiangnan/neural_factorization_machine (data/frappe/*.libfm; research use, "
            "cite arXiv:1505.03014, no redistribution)",
        ),
    )
}


def known(name: str) -> Dataset:
    try:
        return DATASETS[name]
    except KeyError:
        raise DatasetError(f"unknown dataset {name!r}; known datasets: {sorted(DATASETS)}") from None


class DataSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="UNIREC_DATA_", extra="forbid", frozen=True)

    dir: Path | None = None
    """A folder searched first for datasets (`UNIREC_DATA_DIR`), before the cache under the home."""


def data_home(home: Path | None = None) -> Path:
    """The dataset cache: <UNIREC_HOME>/data."""
    return (home if home is not None else CommonSettings().home) / "data"


def search_dirs(name: str, home: Path | None = None) -> list[Path]:
    """Folders where a dataset may be found, in the order they are tried."""
    ds = known(name)
    dirs = []
    extra = DataSettings().dir
    if extra is not None:
        dirs.append(extra / ds.folder)
    dirs.append(data_home(home) / ds.folder)
    dirs.append(_REPO_ROOT.parent / "shared" / "data" / ds.folder)
    return dirs


def _complete(folder: Path, ds: Dataset) -> bool:
    return all((folder / f).is_file() for f in ds.files)


def find(name: str, home: Path | None = None) -> Path | None:
    """The first folder holding the dataset's files, or None."""
    ds = known(name)
    for folder in search_dirs(name, home):
        if _complete(folder, ds):
            return folder
    return None


def dataset_dir(name: str, path: str | Path | None = None, home: Path | None = None, fetch: bool = True) -> Path:
    """The folder of a dataset's files: `path` when given, else found, else fetched (when it can be)."""
    ds = known(name)
    if path is not None:
        folder = Path(path)
        if not _complete(folder, ds):
            raise DatasetError(f"{folder} does not hold the {name} files {list(ds.files)}")
        return folder
    found = find(name, home)
    if found is not None:
        return found
    if ds.fetchable and fetch:
        return fetch_dataset(name, home)
    tried = ", ".join(str(d) for d in search_dirs(name, home))
    raise DatasetError(f"dataset {name!r} not found (looked in {tried}); get it from {ds.where}")


def movielens_path(home: Path | None = None) -> Path:
    """The folder of ML-100k (ml-100k.inter, .user, .item), fetched into the cache first if needed."""
    return dataset_dir("movielens", home=home)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_dataset(name: str, home: Path | None = None, force: bool = False) -> Path:
    """Fetch a dataset into the cache; a no-op when it is already there (unless `force`)."""
    ds = known(name)
    if not ds.fetchable:
        raise DatasetError(f"dataset {name!r} cannot be fetched automatically; get it from {ds.where}")
    target = data_home(home) / ds.folder
    if not force and _complete(target, ds):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{ds.folder}-") as tmp:
        staging = Path(tmp)
        wheel = _download_wheel(staging)
        out = staging / "out"
        out.mkdir()
        with zipfile.ZipFile(wheel) as zf:
            for file, sha in MOVIELENS_FILES.items():
                data = zf.read(f"recbole/dataset_example/ml-100k/{file}")
                if hashlib.sha256(data).hexdigest() != sha:
                    raise DatasetError(f"{file} in {wheel.name} has an unexpected sha256; refusing to use it")
                (out / file).write_bytes(data)
        (out / "SOURCE.json").write_bytes(
            orjson.dumps(
                {"dataset": name, "from": f"PyPI wheel {RECBOLE_WHEEL}", "wheel_sha256": RECBOLE_WHEEL_SHA256,
                 "files": MOVIELENS_FILES, "terms": ds.where},
                option=orjson.OPT_INDENT_2,
            )
        )
        if target.exists():
            shutil.rmtree(target)
        out.rename(target)  # atomic on one filesystem: readers never see half a dataset
    log_event(log, "dataset_fetched", dataset=name, path=str(target))
    return target


def _download_wheel(into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--disable-pip-version-check", "-q",
           "--only-binary", ":all:", "-d", str(into), RECBOLE_WHEEL]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    wheels = list(into.glob("recbole-*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        raise DatasetError(f"`{' '.join(cmd[2:])}` failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    sha = _sha256(wheels[0])
    if sha != RECBOLE_WHEEL_SHA256:
        raise DatasetError(f"{wheels[0].name} has sha256 {sha}, expected {RECBOLE_WHEEL_SHA256}")
    return wheels[0]


def status(home: Path | None = None) -> list[tuple[Dataset, Path | None]]:
    return [(ds, find(ds.name, home)) for ds in DATASETS.values()]


# ---------------------------------------------------------------------------------------------- CLI

data_app = typer.Typer(help="Datasets the project knows: list them, fetch the ones that can be fetched.")


@data_app.command("list")
def list_command() -> None:
    """Known datasets, where each one was found, and where to get the missing ones."""
    table = Table("dataset", "feature schema", "found at (or where to get it)", "what")
    for ds, folder in status():
        where = str(folder) if folder else f"[yellow]missing[/]: {ds.where}"
        table.add_row(ds.name, ds.schema, where, ds.description)
    Console().print(table)


@data_app.command("fetch")
def fetch_command(
    name: str = typer.Argument(..., help="Dataset name (only movielens can be fetched)."),
    force: bool = typer.Option(False, "--force", help="Fetch again even when cached."),
) -> None:
    """Fetch a dataset into <UNIREC_HOME>/data (idempotent)."""
    try:
        with Console(stderr=True).status(f"fetching {name}"):
            folder = fetch_dataset(name, force=force)
    except DatasetError as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    Console().print(f"{name}: {folder}")
