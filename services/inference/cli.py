"""`unirec serve`: the inference service under uvicorn.

    unirec serve --port 8000 --workers 2
    UNIREC_SERVE_API_KEY=s3cret UNIREC_SERVE_SCHEMA=movielens unirec serve

Options override the `UNIREC_SERVE_*` environment; every other setting is read from it (see
services/inference/settings.py). With several workers each one loads the model and follows the
registry on its own, and Prometheus samples are shared through a multiprocess directory.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import typer
from pydantic import ValidationError
from rich.console import Console

console = Console(stderr=True)


def serve_command(
    host: str | None = typer.Option(None, help="Interface to bind (env UNIREC_SERVE_HOST, default 127.0.0.1)."),
    port: int | None = typer.Option(None, help="TCP port (env UNIREC_SERVE_PORT, default 8000)."),
    workers: int | None = typer.Option(None, help="uvicorn worker processes (env UNIREC_SERVE_WORKERS, default 1)."),
    store: str | None = typer.Option(None, help="Model store: directory or redis:// URL (env UNIREC_MODEL_STORE)."),
    schema: str | None = typer.Option(None, help="Feature schema every model must match (env UNIREC_SERVE_SCHEMA)."),
) -> None:
    """Serve predictions over HTTP from the latest exported model, following new exports."""
    import uvicorn

    from services.inference.settings import ServeSettings

    given = {
        "UNIREC_SERVE_HOST": host,
        "UNIREC_SERVE_PORT": port,
        "UNIREC_SERVE_WORKERS": workers,
        "UNIREC_MODEL_STORE": store,
        "UNIREC_SERVE_SCHEMA": schema,
    }
    for name, value in given.items():
        if value is not None:
            os.environ[name] = str(value)  # the workers read the same settings
    try:
        settings = ServeSettings()
    except ValidationError as exc:
        console.print(f"[red]error:[/] invalid serve settings: {exc}")
        raise typer.Exit(2) from exc
    if settings.workers > 1:
        metrics_dir = Path(settings.home) / f"prometheus-serve-{settings.port}"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir.resolve())
    console.print(
        f"unirec serve: http://{settings.host}:{settings.port} workers={settings.workers} store={settings.model_store}"
    )
    uvicorn.run(
        "services.inference.app:serve_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
        # a spawned worker imports torch, TorchRec and the CLI before it can answer the supervisor's
        # pings: uvicorn's 5 s default kills and respawns it forever on a busy machine
        timeout_worker_healthcheck=120,
    )
