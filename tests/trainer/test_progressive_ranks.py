"""Two ranks (a real gloo process group) report the progressive figures of all events, not rank 0's."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist

from core.net import free_port
from tests.ranks import spawn_ranks
from trainer.progressive import ProgressiveMetrics, log_loss, rank_auc

WINDOW = 1000


def _stream(seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """4000 events; rank 1's half is much better separated than rank 0's, so rank 0 alone is wrong."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(4000) < 0.4).astype(float)
    spread = np.where(np.arange(4000) % 2 == 1, 0.4, 0.05)
    scores = np.clip(0.5 + (labels - 0.5) * spread + rng.normal(0, 0.15, 4000), 0, 1)
    return scores, labels


def _rank(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        scores, labels = _stream()
        metrics = ProgressiveMetrics(window=WINDOW)
        for start in range(0, 4000, 200):  # batches of 100 events per rank, alternating events
            part = slice(start + rank, start + 200, 2)
            metrics.update(scores[part], labels[part])
        figures = metrics.reduce()
        Path(out, f"rank{rank}.json").write_text(json.dumps(figures | {"local_count": metrics.count}))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_report_the_figures_over_all_events(tmp_path: Path) -> None:
    spawn_ranks(_rank, free_port(), str(tmp_path))
    scores, labels = _stream()
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["local_count"] == 2000 and got["scored"] == 4000
        assert got["auc_cumulative"] == pytest.approx(rank_auc(scores, labels), abs=1e-4)
        assert got["logloss_cumulative"] == pytest.approx(log_loss(scores, labels), rel=1e-9)
        # the last WINDOW events of the job: the last WINDOW / 2 of each rank
        assert got["auc_recent"] == pytest.approx(rank_auc(scores[-WINDOW:], labels[-WINDOW:]), abs=1e-12)
        assert got["logloss_recent"] == pytest.approx(log_loss(scores[-WINDOW:], labels[-WINDOW:]), rel=1e-9)
    rank0 = slice(0, None, 2)
    assert abs(rank_auc(scores[rank0], labels[rank0]) - rank_auc(scores, labels)) > 0.02, "rank 0 alone must differ"
