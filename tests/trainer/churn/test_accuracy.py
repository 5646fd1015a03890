"""Churn estimates against exact ground truth at 1M IDs per window (default sketch sizes: lg_k 14, union 16)."""

from __future__ import annotations

import numpy as np
import pytest

from embedding.hashing import splitmix64
from embedding.schema import parse_schema
from trainer.churn import ChurnSettings, ChurnTracker

pytestmark = pytest.mark.slow

WINDOW = 1_000_000
POOL = 5 * WINDOW


def _windows(rng: np.random.Generator) -> list[np.ndarray]:
    """Windows of 1M distinct pool indices with known overlaps, including IDs that come back after a gap."""
    fresh = iter(np.split(np.arange(POOL), 50))  # 100k-ID blocks never used before
    take = lambda k: np.concatenate([next(fresh) for _ in range(k)])  # noqa: E731
    w0 = take(10)
    w1 = np.concatenate([rng.permutation(w0)[:700_000], take(3)])  # 30% new, 30% of w0 vanish
    gone = np.flatnonzero(_mask(w0) & ~_mask(w1))
    w2 = np.concatenate([rng.permutation(w1)[:850_000], gone[:50_000], take(1)])  # 10% new, 5% come back
    w3 = np.concatenate([rng.permutation(w2)[:500_000], take(5)])  # 50% new
    return [w0, w1, w2, w3]


def _mask(indices: np.ndarray) -> np.ndarray:
    mask = np.zeros(POOL, dtype=bool)
    mask[indices] = True
    return mask


def test_estimates_are_within_3_percent_and_churn_within_10_percent() -> None:
    rng = np.random.default_rng(7)
    windows = _windows(rng)
    fingerprints = splitmix64(np.arange(POOL, dtype=np.uint64)).view(np.int64)  # bijective: all distinct
    schema = parse_schema({"name": "acc", "sparse": [{"name": "user", "dtype": "int"}]})
    tracker = ChurnTracker(schema, ChurnSettings(window_s=60), table_rows=1 << 24)
    for w, ids in enumerate(windows):
        stream = np.concatenate([ids, rng.choice(ids, WINDOW // 5)])  # with 20% repeats, shuffled
        rng.shuffle(stream)
        for b, batch in enumerate(np.array_split(fingerprints[stream], 60)):
            tracker.observe({"user": batch}, w * 60_000 + b * 1000, step=w * 60 + b)
    tracker.flush()
    seen = np.zeros(POOL, dtype=bool)
    previous = None
    for w, (ids, summary) in enumerate(zip(windows, tracker.summaries, strict=True)):
        got, current = summary["features"]["user"], _mask(ids)
        new = np.count_nonzero(current & ~seen)
        assert got["distinct"] == pytest.approx(ids.size, rel=0.03), w
        assert new >= 0.1 * ids.size and got["new"] == pytest.approx(new, rel=0.10), w
        if previous is not None:
            vanished = np.count_nonzero(previous & ~current)
            assert vanished >= 0.1 * ids.size and got["vanished"] == pytest.approx(vanished, rel=0.10), w
            jaccard = np.count_nonzero(previous & current) / np.count_nonzero(previous | current)
            assert got["jaccard"] == pytest.approx(jaccard, abs=0.02), w
        seen |= current
        previous = current
