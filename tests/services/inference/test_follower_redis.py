"""The follower against a real Redis: notifications swap at once; without Redis, polling still gets there."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from core.net import free_port
from embedding.export import ExportMeta, prepare
from embedding.model import build_model
from registry.exporter import Exporter, export_model
from registry.notify import Publisher
from registry.store import LocalModelStore
from unirec.infra import LocalServer

from .conftest import CONFIG, SCHEMA, export, make_app, wait_for

pytestmark = pytest.mark.integration


def _follower(client: TestClient) -> dict:
    return client.get("/v1/status").json()["follower"]


def test_a_published_export_is_swapped_in_by_pub_sub(redis_url: str, tmp_path: Path) -> None:
    store = LocalModelStore(tmp_path / "models")
    first = export(store, seed=1)
    # polling every 10 minutes: only the notification can bring the new version in time
    app = make_app(tmp_path / "models", redis_url=redis_url, poll_interval_s=600)
    with TestClient(app) as client:
        assert client.get("/v1/model").json()["version"] == first
        wait_for(lambda: _follower(client)["mode"] == "pubsub", what="the subscription")
        publisher = Publisher(redis_url)
        try:
            model = build_model(SCHEMA, CONFIG.model_copy(update={"seed": 2}))
            second = export_model(model, store, "int8", ExportMeta(), publisher=publisher).version
            wait_for(lambda: client.get("/v1/model").json()["version"] == second, timeout=10, what="the notified swap")
            table = next(iter(model.sparse_table_parameters()))
            with torch.no_grad():
                table.add_(0.5)
            exporter = Exporter(store, "int8", publisher=publisher, retention=None)
            exporter.publish_delta(second, 1, {prepare(model).tables[0].key: torch.arange(10)}, model)
            wait_for(lambda: client.get("/v1/model").json()["version"] == f"{second}+1", timeout=10, what="the delta")
        finally:
            publisher.close()
        state = _follower(client)
        assert state["notifications"] >= 2 and state["last_message"]["kind"] == "delta"
        assert state["polls"] <= 1  # the catch-up poll at subscription, nothing since


def test_with_redis_stopped_polling_still_finds_a_new_export(tmp_path: Path) -> None:
    server = LocalServer("redis", "127.0.0.1", free_port(), tmp_path / "redis")
    server.start(timeout=30)
    try:
        store = LocalModelStore(tmp_path / "models")
        first = export(store, seed=1)
        app = make_app(tmp_path / "models", redis_url=server.address)
        with TestClient(app) as client:
            assert client.get("/v1/model").json()["version"] == first
            wait_for(lambda: _follower(client)["mode"] == "pubsub", what="the subscription")
            server.stop()
            wait_for(lambda: _follower(client)["mode"] == "polling", what="the follower to notice Redis is gone")
            second = export(store, seed=2)
            wait_for(lambda: client.get("/v1/model").json()["version"] == second, what="polling to find the export")
    finally:
        server.stop()
