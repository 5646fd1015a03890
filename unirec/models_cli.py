"""`unirec models list|show|rollback|unpin`: inspect the model store and choose the served version.

The store comes from `--store` or `UNIREC_MODEL_STORE` (a directory, `file://DIR` or `redis://...`;
default `UNIREC_HOME/models`). A rollback only moves the serving pointer (newer versions stay) and
announces it on Redis (`UNIREC_MODEL_CHANNEL`, kind `pointer`) so inference services switch now.
"""

from __future__ import annotations

import datetime as dt

import orjson
import typer
from rich.console import Console
from rich.table import Table

from embedding.errors import ArtifactError
from embedding.export.sources import StoreSource, read_manifest
from registry.notify import Notification, Publisher
from registry.settings import RegistrySettings
from registry.store import ModelStore, open_store

models_app = typer.Typer(help="List, inspect and roll back exported model versions.", no_args_is_help=True)
console = Console(stderr=True)

StoreOption = typer.Option(None, "--store", help="Store directory or redis:// URL (default: UNIREC_MODEL_STORE).")


def _open(store: str | None) -> ModelStore:
    settings = RegistrySettings()
    return open_store(store or settings.store, home=settings.home)


def _time(ms: int | None) -> str:
    if ms is None:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


@models_app.command("list")
def list_versions(store: str | None = StoreOption) -> None:
    """One line per version, oldest first; marks the served and the newest one."""
    model_store = _open(store)
    serving, latest = model_store.serving_version(), model_store.latest()
    table = Table("version", "created (UTC)", "method", "quant", "step", "watermark (UTC)", "deltas", "MB", "")
    for version in model_store.versions():
        try:
            manifest = read_manifest(StoreSource(model_store, version))
        except ArtifactError as exc:
            table.add_row(version, "-", f"[red]unreadable: {exc}[/]", "", "", "", "", "", "")
            continue
        method = (
            manifest.method
            if manifest.method == manifest.trained_method
            else f"{manifest.trained_method}->{manifest.method}"
        )
        size = sum(f.size for f in manifest.files.values()) / 1e6
        marks = [m for m, on in (("serving", version == serving), ("latest", version == latest)) if on]
        table.add_row(
            version, _time(manifest.created_at_ms), method, manifest.quantization, str(manifest.step),
            _time(manifest.watermark_ms), str(len(model_store.deltas(version))), f"{size:.2f}", ",".join(marks),
        )  # fmt: skip
    Console().print(table)
    if model_store.get_pointer():
        console.print(f"pinned: serving {serving} (newer versions exist: run `unirec models unpin` to follow them)")


@models_app.command("show")
def show(
    version: str | None = typer.Argument(None, help="Version id (default: the served one)."),
    store: str | None = StoreOption,
    verify: bool = typer.Option(False, "--verify", help="Also check every file's size and sha256."),
) -> None:
    """Print a version's manifest as JSON."""
    model_store = _open(store)
    version = version or model_store.serving_version()
    if version is None:
        console.print(f"[red]error:[/] {model_store.uri} holds no versions")
        raise typer.Exit(1)
    try:
        source = StoreSource(model_store, version)
        if verify:
            from embedding.export.artifact import read_full  # torch: only to check the tensors

            manifest = read_full(source).manifest
        else:
            manifest = read_manifest(source)
    except ArtifactError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    doc = manifest.model_dump(mode="json")
    doc["deltas"] = model_store.deltas(version)
    typer.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    if verify:
        console.print(f"[green]{version}: all {len(manifest.files) + 1} checksums verified[/]")


def _announce(model_store: ModelStore, version: str, publish: bool) -> None:
    if not publish:
        return
    settings = RegistrySettings()
    try:
        publisher = Publisher(settings.redis_url, settings.channel, settings.latest_key)
        publisher.publish(
            Notification(
                version=version,
                kind="pointer",
                base_version=version,
                serving=model_store.serving_version(),
                store=model_store.uri,
            )
        )
        publisher.close()
    except Exception as exc:  # noqa: BLE001  (the pointer is set; only the push failed)
        console.print(f"[yellow]warning:[/] pointer set but not announced on {settings.redis_url}: {exc}")


@models_app.command("rollback")
def rollback(
    version: str = typer.Argument(..., help="The version to serve (older or newer; nothing is deleted)."),
    store: str | None = StoreOption,
    publish: bool = typer.Option(True, help="Announce the change on Redis so services switch at once."),
) -> None:
    """Serve VERSION until `unirec models unpin`; newer versions are kept."""
    model_store = _open(store)
    try:
        model_store.rollback(version)
    except ArtifactError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    console.print(f"serving {version} (pinned); newest is {model_store.latest()}")
    _announce(model_store, version, publish)


@models_app.command("unpin")
def unpin(
    store: str | None = StoreOption,
    publish: bool = typer.Option(True, help="Announce the change on Redis so services switch at once."),
) -> None:
    """Clear the rollback pointer: serve the newest version again."""
    model_store = _open(store)
    model_store.unpin()
    latest = model_store.latest()
    console.print(f"serving the newest version: {latest}")
    if latest is not None:
        _announce(model_store, latest, publish)
