"""Shared fixtures of the export tests: the MovieLens schema, 1,000 synthetic events and small trained models."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from embedding import Event, FeatureBatch, FeatureSchema, Featurizer, load_schema
from embedding.model import DCNModel, ModelConfig, build_model
from registry.store import LocalModelStore

N_EVENTS = 1000


def make_events(n: int = N_EVENTS, seed: int = 0, offset: int = 0) -> list[Event]:
    """MovieLens-shaped events with a learnable signal (users and movies with a taste)."""
    g = torch.Generator().manual_seed(seed)
    users = torch.randint(0, 300, (n,), generator=g).tolist()
    movies = torch.randint(0, 500, (n,), generator=g).tolist()
    noise = torch.rand(n, generator=g).tolist()
    events = []
    for i in range(n):
        u, m = users[i], movies[i]
        p = 0.2 + 0.6 * ((u % 3 == 0) ^ (m % 2 == 0))
        events.append(
            Event(
                event_id=f"e{offset + i}",
                ts=1_700_000_000_000 + offset + i,
                label=int(noise[i] < p),
                sparse={
                    "user": u,
                    "movie": m,
                    "age": 18 + u % 50,
                    "gender": "MF"[u % 2],
                    "occupation": f"occ{u % 21}",
                    "zip": f"{10000 + u % 400}",
                },
            )
        )
    return events


def train(model: DCNModel, batch: FeatureBatch, steps: int, lr: float = 0.05, size: int = 250) -> None:
    """A few Adagrad steps over mini-batches (Adagrad moves only rows that had a gradient)."""
    opt = torch.optim.Adagrad(model.parameters(), lr=lr)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    n = len(batch)
    model.train()
    for step in range(steps):
        lo = (step * size) % n
        part = slice_batch(batch, lo, min(n, lo + size))
        opt.zero_grad()
        loss_fn(model(part.sparse, part.dense), part.labels).backward()
        opt.step()
    model.eval()


def slice_batch(batch: FeatureBatch, lo: int, hi: int) -> FeatureBatch:
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    parts = batch.sparse.to_dict()
    kjt = KeyedJaggedTensor.from_jt_dict({k: _slice_jt(jt, lo, hi) for k, jt in parts.items()})
    labels = batch.labels[lo:hi] if batch.labels is not None else None
    return FeatureBatch(kjt, batch.dense[lo:hi], labels)


def _slice_jt(jt, lo: int, hi: int):  # type: ignore[no-untyped-def]
    from torchrec.sparse.jagged_tensor import JaggedTensor

    offsets = jt.offsets()
    return JaggedTensor(values=jt.values()[offsets[lo] : offsets[hi]], lengths=jt.lengths()[lo:hi])


@pytest.fixture(autouse=True)
def _threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def schema() -> FeatureSchema:
    return load_schema("movielens")


@pytest.fixture(scope="session")
def batch(schema: FeatureSchema) -> FeatureBatch:
    return Featurizer(schema)(make_events())


@pytest.fixture(scope="session")
def unified_config() -> ModelConfig:
    return ModelConfig(method="unified", method_args={"num_rows": 4000, "num_blocks": 2, "seed": 3})


@pytest.fixture(scope="session")
def trained(schema: FeatureSchema, batch: FeatureBatch, unified_config: ModelConfig) -> DCNModel:
    """A unified-embedding DCN model after 12 Adagrad steps on the 1,000 events (non-trivial weights)."""
    torch.set_num_threads(2)
    model = build_model(schema, unified_config)
    train(model, batch, steps=12)
    return model


@pytest.fixture
def store(tmp_path) -> LocalModelStore:  # type: ignore[no-untyped-def]
    return LocalModelStore(tmp_path / "models")
