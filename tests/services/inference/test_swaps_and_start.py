"""Swaps nobody notices (deltas under concurrent load), and a start next to a corrupt newest version."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from fastapi.testclient import TestClient

from embedding.model import build_model
from registry.exporter import Exporter
from registry.store import LocalModelStore

from .conftest import CONFIG, SCHEMA, event, export, make_app, wait_for

REQUEST = {"events": [event(0), event(1)]}


def _corrupt(store_dir: Path, version: str) -> None:
    path = store_dir / "versions" / version / "tables.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_deltas_under_concurrent_requests_lose_none_and_never_mix_versions(
    store: LocalModelStore, store_dir: Path
) -> None:
    model = build_model(SCHEMA, CONFIG)
    exporter = Exporter(store, "int8", retention=None)
    base = exporter.export_full(model).version
    table = next(iter(exporter.base.tables)).key
    weights = model.state_dict()[table]
    statuses: Counter[int] = Counter()
    answers: dict[str, set[tuple[float, ...]]] = {}
    stop = threading.Event()

    def hammer(client: TestClient) -> None:
        while not stop.is_set():
            response = client.post("/v1/predict", json=REQUEST)
            statuses[response.status_code] += 1
            if response.status_code == 200:
                body = response.json()
                answers.setdefault(body["version"], set()).add(tuple(body["probabilities"]))

    with TestClient(make_app(store_dir, poll_interval_s=0.02)) as client:
        threads = [threading.Thread(target=hammer, args=(client,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        try:
            for seq in range(1, 9):
                with torch.no_grad():
                    weights.add_(0.05)  # every row moves: each version answers differently
                exporter.export_delta({table: torch.arange(weights.shape[0])}, model)
                wait_for(lambda seq=seq: client.get("/v1/model").json()["version"] == f"{base}+{seq}", what="a delta")
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        metrics = client.get("/metrics").text
    assert set(statuses) == {200}, statuses
    assert 'unirec_serve_swaps_total{kind="delta"} 8.0' in metrics
    # one answer per version (up to float rounding of batched forwards; each delta moves it by far more):
    # no request was scored on one version and labelled with another
    spread = {v: float(np.ptp(np.array(sorted(seen)), axis=0).max()) for v, seen in answers.items()}
    assert all(s < 1e-5 for s in spread.values()), spread
    assert f"{base}+8" in answers


def test_a_replica_starting_next_to_a_corrupt_newest_version_serves_the_newest_that_verifies(
    store: LocalModelStore, store_dir: Path
) -> None:
    older = export(store, seed=1)
    good = export(store, seed=2)
    bad = export(store, seed=3)
    _corrupt(store_dir, bad)
    with TestClient(make_app(store_dir)) as client:
        assert client.get("/readyz").status_code == 200
        info = client.get("/v1/model").json()
        assert info["version"] == good != older
        assert info["refused"] == {bad: "checksum"}
        assert client.post("/v1/predict", json=REQUEST).json()["version"] == good
        metrics = client.get("/metrics").text
        assert f'unirec_serve_refused_version_info{{reason="checksum",version="{bad}"}} 1.0' in metrics
        assert 'unirec_serve_failed_loads_total{reason="checksum"} 1.0' in metrics
        newer = export(store, seed=4)  # the follower keeps following the store
        wait_for(lambda: client.get("/v1/model").json()["version"] == newer, what="the next export")
        assert client.get("/v1/model").json()["refused"] == {bad: "checksum"}


def test_a_store_whose_every_version_is_corrupt_stays_unready(store: LocalModelStore, store_dir: Path) -> None:
    for seed in (1, 2):
        _corrupt(store_dir, export(store, seed=seed))
    with TestClient(make_app(store_dir, follow=False)) as client:
        assert client.get("/readyz").status_code == 503
        assert client.post("/v1/predict", json=REQUEST).status_code == 503
        assert 'unirec_serve_failed_loads_total{reason="checksum"} 2.0' in client.get("/metrics").text
