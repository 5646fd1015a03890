"""`unirec models list|show|rollback|unpin` against a local store (and the Redis announcement)."""

from __future__ import annotations

import uuid
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from embedding import load_schema
from embedding.export import ExportMeta
from embedding.model import ModelConfig, build_model
from registry.exporter import export_model
from registry.notify import Publisher
from registry.store import LocalModelStore
from unirec.models_cli import models_app

runner = CliRunner(env={"COLUMNS": "200"})


@pytest.fixture
def store(tmp_path: Path) -> LocalModelStore:
    store = LocalModelStore(tmp_path / "models")
    model = build_model(
        load_schema("movielens"), ModelConfig(method_args={"num_rows": 64}, dense_arch=(), over_arch=(8,))
    )
    for step in (10, 20, 30):
        export_model(model, store, "int8", ExportMeta(step=step, watermark_ms=1_700_000_000_000 + step))
    return store


def test_list_shows_every_version_and_the_served_one(store: LocalModelStore) -> None:
    result = runner.invoke(models_app, ["list", "--store", str(store.root)])
    assert result.exit_code == 0, result.output
    for version in store.versions():
        assert version in result.output
    assert "serving,latest" in result.output.replace(" ", "")


def test_show_prints_the_manifest_and_verifies(store: LocalModelStore) -> None:
    result = runner.invoke(models_app, ["show", "v0000000002", "--store", str(store.root), "--verify"])
    assert result.exit_code == 0, result.output
    doc = orjson.loads(result.stdout[: result.stdout.rindex("}") + 1])
    assert doc["version"] == "v0000000002" and doc["step"] == 20 and doc["deltas"] == []
    (store.path("v0000000002") / "params.safetensors").write_bytes(b"garbage")
    result = runner.invoke(models_app, ["show", "v0000000002", "--store", str(store.root), "--verify"])
    assert result.exit_code == 1 and "params.safetensors" in result.output


def test_rollback_moves_the_pointer_and_keeps_newer_versions(store: LocalModelStore) -> None:
    result = runner.invoke(models_app, ["rollback", "v0000000001", "--store", str(store.root), "--no-publish"])
    assert result.exit_code == 0, result.output
    assert store.serving_version() == "v0000000001" and len(store.versions()) == 3
    assert runner.invoke(models_app, ["rollback", "v0000000042", "--store", str(store.root)]).exit_code == 1
    assert runner.invoke(models_app, ["unpin", "--store", str(store.root), "--no-publish"]).exit_code == 0
    assert store.serving_version() == "v0000000003"


@pytest.mark.integration
def test_rollback_is_announced_on_redis(
    store: LocalModelStore, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    channel = f"test:models:{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("UNIREC_REDIS_URL", redis_url)
    monkeypatch.setenv("UNIREC_MODEL_CHANNEL", channel)
    monkeypatch.setenv("UNIREC_MODEL_LATEST_KEY", f"{channel}:latest")
    publisher = Publisher(redis_url, channel=channel, latest_key=f"{channel}:latest")
    pubsub = publisher.client.pubsub()
    pubsub.subscribe(channel)
    pubsub.get_message(timeout=2)
    result = runner.invoke(models_app, ["rollback", "v0000000002", "--store", str(store.root)])
    assert result.exit_code == 0, result.output
    doc = orjson.loads(pubsub.get_message(timeout=2)["data"])
    assert (doc["kind"], doc["version"], doc["serving"]) == ("pointer", "v0000000002", "v0000000002")
    pubsub.close()
    publisher.close()
