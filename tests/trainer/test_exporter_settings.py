"""The trainer's exporter from its settings: store and retention from `UNIREC_MODEL_*`, quantisation
and delta interval from `UNIREC_TRAINER_*` (one source each); exports survive an unreachable Redis."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from embedding.model import ModelConfig, build_model
from embedding.schema import load_schema
from registry.store import LocalModelStore
from trainer.exporting import build_exporter
from trainer.settings import TrainerSettings


def test_exporter_from_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNIREC_MODEL_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("UNIREC_MODEL_RETENTION", "3")
    monkeypatch.setenv("UNIREC_TRAINER_QUANTIZATION", "fp16")
    monkeypatch.setenv("UNIREC_TRAINER_DELTA_EVERY_S", "2.5")
    exporter = build_exporter(TrainerSettings())
    assert isinstance(exporter.store, LocalModelStore) and exporter.store.root == tmp_path / "store"
    assert (exporter.quantization, exporter.retention, exporter.delta_interval_s) == ("fp16", 3, 2.5)
    assert not exporter.delta_due(), "no delta before the first full export"
    monkeypatch.setenv("UNIREC_TRAINER_QUANTIZATION", "int3")
    with pytest.raises(ValidationError, match="quantization"):
        TrainerSettings()


def test_unreachable_redis_does_not_fail_the_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNIREC_MODEL_STORE", str(tmp_path / "store"))
    exporter = build_exporter(TrainerSettings(redis_url="redis://127.0.0.1:1/0"))
    schema = load_schema("movielens")
    model = build_model(schema, ModelConfig(method="unified", method_args={"num_rows": 500, "num_blocks": 1}))
    manifest = exporter.export_full(model)
    assert exporter.store.versions() == [manifest.version]
    assert exporter.delta_due(now=10**12)


@pytest.mark.parametrize(("num_rows", "num_blocks"), [(9, 4), (100, 1), (1000, 2)])
def test_mark_touches_the_rows_locate_names(num_rows: int, num_blocks: int) -> None:
    """The delta's touched masks (numpy path) agree with `UnifiedEmbedding.locate`, even and uneven blocks."""
    import torch

    from embedding.methods import UnifiedEmbedding
    from trainer.exporting import ExportScheduler

    unified = UnifiedEmbedding(load_schema("movielens"), num_rows=num_rows, num_blocks=num_blocks)
    scheduler = object.__new__(ExportScheduler)  # only the masks and the table: no process group, no store
    scheduler.unified = unified
    scheduler.touched = {
        f"sparse.ebc.embedding_bags.{UnifiedEmbedding.table_name(b)}.weight": torch.zeros(n, dtype=torch.uint8)
        for b, n in enumerate(unified.sizes)
    }
    rows = torch.randint(0, num_rows, (50,))
    scheduler.mark(rows)
    block, local = unified.locate(rows)
    for b in range(num_blocks):
        expected = torch.zeros(unified.sizes[b], dtype=torch.uint8)
        expected[local[block == b]] = 1
        mask = scheduler.touched[f"sparse.ebc.embedding_bags.{UnifiedEmbedding.table_name(b)}.weight"]
        assert torch.equal(mask, expected), b
