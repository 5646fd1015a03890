"""Fixtures of the inference-service tests: a local model store and real artifacts written by the exporter."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("embedding.serving", reason="needs the artifact loader (embedding.serving)")

from fastapi import FastAPI  # noqa: E402

from embedding.export import ExportMeta  # noqa: E402
from embedding.model import ModelConfig, build_model  # noqa: E402
from embedding.schema import FeatureSchema, load_schema  # noqa: E402
from registry.exporter import export_model  # noqa: E402
from registry.settings import RegistrySettings  # noqa: E402
from registry.store import LocalModelStore  # noqa: E402
from services.inference.app import create_app  # noqa: E402
from services.inference.deps import get_settings  # noqa: E402
from services.inference.settings import ServeSettings  # noqa: E402

SCHEMA = load_schema("movielens")
CONFIG = ModelConfig(method_args={"num_rows": 2000}, dense_arch=(), over_arch=(16,), cross_layers=1, cross_rank=4)
NO_REDIS = "redis://127.0.0.1:1/0"
"""Nothing listens on port 1: the follower falls back to polling at once."""


def event(i: int = 0, **sparse: Any) -> dict[str, Any]:
    features = {"user": 196 + i, "movie": 242 + i, "age": 49, "gender": "M", "occupation": "writer", "zip": "55105"}
    return {"event_id": f"e{i}", "ts": 881250949000 + i, "sparse": {**features, **sparse}}


def export(
    store: LocalModelStore,
    seed: int,
    schema: FeatureSchema = SCHEMA,
    watermark_ms: int | None = None,
    seen_rows: dict[str, torch.Tensor] | None = None,
) -> str:
    """Export a freshly initialised model (weights depend on `seed`) as a new full version."""
    model = build_model(schema, CONFIG.model_copy(update={"seed": seed}))
    meta = ExportMeta(step=seed, watermark_ms=watermark_ms, metrics={"auc": 0.7, "logloss": 0.6})
    return export_model(model, store, "int8", meta, seen_rows=seen_rows).version


def make_app(store_dir: Path, **overrides: Any) -> FastAPI:
    defaults = {"redis_url": NO_REDIS, "poll_interval_s": 0.05}
    settings = ServeSettings(registry=RegistrySettings(store=str(store_dir)), **{**defaults, **overrides})
    app = create_app()
    app.dependency_overrides[get_settings] = lambda: settings
    return app


def wait_for(condition: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(autouse=True)
def _threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "models"


@pytest.fixture
def store(store_dir: Path) -> LocalModelStore:
    return LocalModelStore(store_dir)
