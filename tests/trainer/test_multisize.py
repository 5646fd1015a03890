"""A multi-size unified model (`movielens_multisize`: 1-3 lookups per feature) through the real
trainer on 2 ranks (TorchRec, row blocks placed table-wise) and out through the export of its
sharded checkpoint to serving."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp

from embedding.events import Featurizer
from embedding.model import ModelConfig, build_model
from embedding.schema import load_schema, parse_schema
from registry.loading import load_serving_model
from registry.store import open_store
from tests.trainer.conftest import read_predictions, run_trainer, send, trainer_env
from tests.trainer.test_training import synthetic_events
from trainer.checkpoint import latest_checkpoint, read_meta
from trainer.exporting import export_checkpoint
from trainer.progressive import rank_auc
from trainer.settings import TrainerSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_multisize_model_trains_exports_and_serves(kafka_bootstrap: str, topic_name: str, tmp_path: Path) -> None:
    schema = load_schema("movielens_multisize")
    assert {s.lookups for s in schema.sparse} == {1, 3}
    events = synthetic_events(4000)
    send(kafka_bootstrap, topic_name, events, partitions=2)
    env = trainer_env(
        tmp_path, kafka_bootstrap, topic_name, schema="movielens_multisize", predictions_log=tmp_path / "pred"
    )
    run_trainer(env, nproc=2, log=tmp_path / "trainer.log")

    rows = read_predictions(tmp_path / "pred")
    assert len(rows) == len(events)
    scores, labels = np.array([r[2] for r in rows]), np.array([r[3] for r in rows])
    assert rank_auc(scores[len(rows) // 2 :], labels[len(rows) // 2 :]) > 0.65  # it learns the movie effect

    # the final checkpoint (sharded over 2 ranks) exported, as `unirec export` does, in int8 and fp32
    checkpoint = latest_checkpoint(tmp_path / "checkpoints")
    assert checkpoint is not None
    settings = TrainerSettings(home=tmp_path, redis_url="redis://127.0.0.1:1/0")  # unreachable: publish is logged
    store = open_store(tmp_path / "models")
    published = load_serving_model(store, export_checkpoint(checkpoint, "int8", settings).version)
    assert published.manifest.widths == {s.name: schema.width(s.name) for s in schema.sparse}
    assert published.manifest.widths["user"] == 24 and published.manifest.widths["gender"] == 8
    batch = Featurizer(schema)(events[:256])
    probs = published.predict(batch)
    assert probs.shape == (256,) and bool(((probs > 0) & (probs < 1)).all())

    # in fp32 it serves exactly what the checkpoint holds
    meta = read_meta(checkpoint)
    model = build_model(parse_schema(meta.schema), ModelConfig.model_validate(meta.model))
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=str(checkpoint / "state"))
    model.load_state_dict(state["model"])
    model.eval()
    served = load_serving_model(store, export_checkpoint(checkpoint, "fp32", settings).version)
    with torch.no_grad():
        expected = torch.sigmoid(model(batch.sparse, batch.dense))
    assert (served.predict(batch) - expected).abs().max().item() < 1e-5
