"""The exporter from `UNIREC_MODEL_*` settings, and exports that survive an unreachable Redis."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedding.export import Exporter
from embedding.model import DCNModel
from embedding.store import LocalModelStore, StoreSettings


def test_exporter_from_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNIREC_MODEL_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("UNIREC_MODEL_QUANTIZATION", "fp16")
    monkeypatch.setenv("UNIREC_MODEL_RETENTION", "3")
    monkeypatch.setenv("UNIREC_MODEL_DELTA_INTERVAL_S", "2.5")
    exporter = Exporter.from_settings(publish=False)
    assert isinstance(exporter.store, LocalModelStore) and exporter.store.root == tmp_path / "store"
    assert (exporter.quantization, exporter.retention, exporter.delta_interval_s) == ("fp16", 3, 2.5)
    assert not exporter.delta_due(), "no delta before the first full export"
    monkeypatch.setenv("UNIREC_MODEL_QUANTIZATION", "int3")
    with pytest.raises(ValueError, match="model_quantization"):
        StoreSettings()


def test_unreachable_redis_does_not_fail_the_export(trained: DCNModel, tmp_path: Path) -> None:
    settings = StoreSettings(model_store=str(tmp_path / "store"), redis_url="redis://127.0.0.1:1/0")
    exporter = Exporter.from_settings(settings)
    manifest = exporter.export_full(trained)
    assert exporter.store.versions() == [manifest.version]
    assert exporter.delta_due(now=10**12)
