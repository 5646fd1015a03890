from __future__ import annotations

import numpy as np
import pytest

from trainer.progressive import ProgressiveMetrics, log_loss, rank_auc


def _pairwise_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (pos.size * neg.size)


def test_rank_auc_matches_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 20, 500) / 20.0  # many ties
    labels = (rng.random(500) < 0.4).astype(int)
    assert rank_auc(scores, labels) == pytest.approx(_pairwise_auc(scores, labels), abs=1e-12)


def test_auc_is_nan_with_one_class() -> None:
    assert np.isnan(rank_auc(np.array([0.1, 0.2]), np.array([1, 1])))


def test_cumulative_histogram_auc_close_to_exact_and_window_is_recent() -> None:
    rng = np.random.default_rng(1)
    metrics = ProgressiveMetrics(window=1000)
    all_s, all_y = [], []
    for i in range(10):
        labels = (rng.random(400) < 0.5).astype(float)
        # later batches are better separated: the recent window must see that
        scores = np.clip(0.5 + (labels - 0.5) * 0.05 * i + rng.normal(0, 0.2, 400), 0, 1)
        metrics.update(scores, labels)
        all_s.append(scores)
        all_y.append(labels)
    s, y = np.concatenate(all_s), np.concatenate(all_y)
    assert metrics.cumulative_auc() == pytest.approx(rank_auc(s, y), abs=2e-3)
    assert metrics.recent_auc() == pytest.approx(rank_auc(s[-1000:], y[-1000:]), abs=1e-12)
    assert metrics.recent_auc() > metrics.cumulative_auc()
    assert metrics.cumulative_logloss() == pytest.approx(log_loss(s, y), rel=1e-9)
    assert metrics.count == 4000
