"""Theta-sketch feeding and window algebra."""

from __future__ import annotations

import math

import datasketches as ds
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from trainer.churn.sketches import THETA_SEED, FeatureHistory, WindowSketch, as_int64, theta_hashes, union


def _plain(values: np.ndarray, lg_k: int) -> ds.update_theta_sketch:
    sketch = ds.update_theta_sketch(lg_k=lg_k, seed=THETA_SEED)
    for v in values.tolist():
        sketch.update(v)
    return sketch


def test_theta_hashes_are_the_sketch_hashes() -> None:
    rng = np.random.default_rng(1)
    values = rng.integers(-(2**63), 2**63 - 1, size=20_000, dtype=np.int64)
    values[:3] = [0, -1, np.iinfo(np.int64).min]
    sketch = _plain(values, lg_k=10)
    hashes = theta_hashes(values)
    assert set(sketch) <= set(hashes.tolist())
    assert int(np.count_nonzero(hashes < np.uint64(sketch.theta64))) == sketch.num_retained


@settings(max_examples=40, deadline=None)
@given(
    batches=st.lists(hnp.arrays(np.int64, st.integers(0, 400), elements=st.integers(-(2**63), 2**63 - 1)), max_size=6),
    repeats=st.integers(1, 3),
)
def test_prefiltered_sketch_equals_plain_sketch(batches: list[np.ndarray], repeats: int) -> None:
    """The vectorised pre-filter and de-duplication leave the sketch byte-for-byte unchanged."""
    fed = WindowSketch(lg_k=5)
    batches = [np.tile(b, repeats) for b in batches]
    batches += batches[::-1]  # repeats across batches too
    for batch in batches:
        fed.update(batch)
    plain = _plain(np.concatenate(batches) if batches else np.empty(0, np.int64), lg_k=5)
    assert fed.sketch.compact().serialize() == plain.compact().serialize()


def test_prefilter_skips_most_ids_in_estimation_mode() -> None:
    sketch = WindowSketch(lg_k=10)
    for chunk in np.array_split(np.arange(200_000, dtype=np.int64), 50):
        sketch.update(chunk)
    assert sketch.ids_passed < 0.1 * sketch.ids_seen
    assert sketch.compact().get_estimate() == pytest.approx(200_000, rel=0.15)


def test_uint64_and_narrow_ints_are_accepted_floats_are_not() -> None:
    assert as_int64(np.array([2**64 - 1], dtype=np.uint64)).tolist() == [-1]
    assert as_int64(np.array([[1, 2]], dtype=np.int32)).tolist() == [1, 2]
    with pytest.raises(ValueError, match="int64"):
        as_int64(np.array([1.5]))


def _window(ids: range | list[int], lg_k: int = 12) -> ds.compact_theta_sketch:
    """A merged window as the tracker makes it: the union (over ranks) of window sketches."""
    sketch = WindowSketch(lg_k=lg_k)
    sketch.update(np.array(list(ids), dtype=np.int64))
    return union([sketch.compact()], lg_k)


def test_history_counts_new_vanished_jaccard_and_ages_exactly_below_k() -> None:
    history = FeatureHistory("user", lg_k=12, union_lg_k=14, history=4, window_s=60.0)
    first = history.advance(_window(range(0, 1000)), 0)
    assert (first.distinct, first.new, first.vanished) == (1000, 1000, 0)
    assert math.isnan(first.jaccard)
    assert first.age_shares == [(0, 1.0)] and first.median_age_windows == 0

    second = history.advance(_window(range(500, 1500)), 60_000)
    assert (second.distinct, second.new, second.vanished) == (1000, 500, 500)
    assert second.jaccard == pytest.approx(500 / 1500)
    assert second.new_rate == pytest.approx(500 / 60)
    assert second.age_shares == [(0, 0.5), (1, 0.5)]

    # back to old IDs: 0..99 were last seen two windows ago, so they are neither new nor in the previous window
    third = history.advance(_window(list(range(0, 100)) + list(range(1400, 1500)) + list(range(5000, 5200))), 180_000)
    assert (third.distinct, third.new, third.vanished) == (400, 200, 900)
    assert third.jaccard == pytest.approx(100 / 1300)
    assert third.age_shares == [(0, 0.5), (2, 0.25), (3, 0.25)]
    assert third.median_age_windows == 0
    assert third.survival == pytest.approx(100 / 500)  # of the 500 IDs new in the second window, 100 came back
    doc = third.to_json()
    assert doc["new_rate"] == pytest.approx(200 / 60) and doc["age_shares"][0] == [0, 0.5]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sets(st.integers(0, 3000), max_size=120), min_size=1, max_size=40))
def test_history_new_ids_are_exact_below_k_across_folds(windows: list[set[int]]) -> None:
    """Exact mode (k above every set): new = the window minus every earlier window, before and after
    the two levels fold, and `seen` plus `recent` hold every ID seen."""
    history = FeatureHistory("f", lg_k=12, union_lg_k=12, history=3, window_s=1.0)
    earlier: set[int] = set()
    cohorts: list[set[int]] = []  # the new IDs of each window
    for w, ids in enumerate(windows):
        stats = history.advance(_window(sorted(ids)), w * 1000)
        assert stats.new == len(ids - earlier)
        cohorts.append(ids - earlier)
        if ids:  # ages of the last 3 cohorts, an empty one included, newest first
            want = [(age, len(cohorts[w - age] & ids) / len(ids)) for age in range(min(3, w + 1))]
            assert [age for age, _ in stats.age_shares] == [age for age, _ in want]
            assert [share for _, share in stats.age_shares] == pytest.approx([share for _, share in want])
        earlier |= ids
        held = [s for s in (history.seen, history.recent) if s is not None]
        assert union(held, 12).get_estimate() == len(earlier)


def test_folded_history_is_the_window_by_window_union_in_estimation_mode() -> None:
    """Beyond k: each fold leaves the very sketch that one union per window left (same hashes, same theta)."""
    history = FeatureHistory("f", lg_k=8, union_lg_k=10, history=3, window_s=1.0)
    rng = np.random.default_rng(7)
    one_level = None
    folds = 0
    for w in range(300):
        window = _window(rng.integers(0, 50_000, size=int(rng.integers(1, 200))).tolist(), lg_k=8)
        history.advance(window, w * 1000)
        one_level = window if one_level is None else union([one_level, window], 10)
        if history.recent is None:
            folds += 1
            assert history.seen is not None
            assert history.seen.theta64 == one_level.theta64
            assert sorted(history.seen) == sorted(one_level)
    assert 10 < folds < 290, f"{folds} folds in 300 windows: both levels must be exercised"


def test_history_memory_is_bounded_by_the_sketch_sizes() -> None:
    history = FeatureHistory("f", lg_k=8, union_lg_k=10, history=3, window_s=1.0)
    for w in range(6):
        history.advance(_window(range(w * 5000, w * 5000 + 20_000), lg_k=8), w * 1000)
    bound = 8 * (2**10 + 256 + 2**8 + 3 * 2**8) + 24 * 6
    assert history.memory_bytes() <= bound
