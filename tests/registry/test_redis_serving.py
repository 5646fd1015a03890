"""Export into the Redis store with publication, then serve from Redis (the cluster set-up without a shared volume)."""

from __future__ import annotations

import uuid

import orjson
import pytest
import torch

from embedding import FeatureBatch
from embedding.export import ExportMeta
from embedding.model import DCNModel
from registry.exporter import Exporter
from registry.loading import load_delta, load_serving_model
from registry.notify import Publisher
from registry.store import RedisModelStore

pytestmark = pytest.mark.integration


def test_export_publish_and_serve_through_redis(trained: DCNModel, batch: FeatureBatch, redis_url: str) -> None:
    prefix = f"test:{uuid.uuid4().hex[:8]}"
    store = RedisModelStore(redis_url, prefix=prefix, chunk_bytes=64 << 10)
    publisher = Publisher(redis_url, channel=f"{prefix}:models", latest_key=f"{prefix}:latest")
    pubsub = publisher.client.pubsub()
    pubsub.subscribe(f"{prefix}:models")
    pubsub.get_message(timeout=2)
    exporter = Exporter(store, "int8", publisher=publisher, retention=2)
    try:
        base = exporter.export_full(trained, ExportMeta(step=1, watermark_ms=5))
        note = orjson.loads(pubsub.get_message(timeout=2)["data"])
        assert (note["version"], note["kind"], note["seq"], note["watermark_ms"]) == (base.version, "full", 0, 5)
        assert len(store.files(base.version)) == 4
        served = load_serving_model(store)
        with torch.no_grad():
            expected = torch.sigmoid(trained(batch.sparse, batch.dense))
        assert (served.predict(batch) - expected).abs().max().item() < 1e-2

        exporter.export_delta({"unified_1": torch.arange(5)}, trained, ExportMeta(step=2))
        note = orjson.loads(pubsub.get_message(timeout=2)["data"])
        assert (note["version"], note["kind"], note["base_version"], note["seq"]) == (
            f"{base.version}+1",
            "delta",
            base.version,
            1,
        )
        served = served.apply_delta(load_delta(store, base.version, 1))
        assert served.version == f"{base.version}+1"

        for _ in range(2):
            exporter.export_full(trained)
        assert len(store.versions()) == 2 and base.version not in store.versions(), "retention keeps the last 2"
        assert publisher.latest().version == store.latest()
    finally:
        for version in store.versions():
            store.delete_version(version)
        store.client.delete(f"{prefix}:counter")
        pubsub.close()
        publisher.close()
