"""Balls-into-bins formulas against simulation, table sizing, and row staleness."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trainer.churn.load import (
    RowTracker,
    TouchedRows,
    collision_rate,
    expected_occupied_rows,
    table_load,
    table_rows_for,
)


def test_occupancy_and_collisions_match_simulation() -> None:
    rng = np.random.default_rng(3)
    rows, ids_a, ids_b, lookups_b = 50_000, 30_000, 10_000, 2
    sim_occupied, sim_collided_a, sim_collided_b = [], [], []
    for _ in range(5):
        a = rng.integers(0, rows, size=ids_a)
        b = rng.integers(0, rows, size=(ids_b, lookups_b))
        counts = np.bincount(np.concatenate([a, b.ravel()]), minlength=rows)
        sim_occupied.append(np.count_nonzero(np.bincount(a, minlength=rows)))
        sim_collided_a.append(np.mean(counts[a] > 1))
        # an ID of b collides when one of its rows holds another ball (its own two rows rarely coincide)
        sim_collided_b.append(np.mean((counts[b] > 1).any(axis=1) & (b[:, 0] != b[:, 1])))
    load = table_load(rows, {"a": ids_a, "b": ids_b}, {"a": 1, "b": lookups_b})
    assert load["a"][0] == pytest.approx(np.mean(sim_occupied), rel=0.01)
    assert load["a"][1] == pytest.approx(np.mean(sim_collided_a), rel=0.02)
    assert load["b"][1] == pytest.approx(np.mean(sim_collided_b), rel=0.02)
    assert expected_occupied_rows(rows, 0) == 0.0


@given(target=st.floats(0.001, 0.5), balls=st.floats(2, 1e9), lookups=st.integers(1, 6))
def test_table_rows_for_is_the_smallest_table_meeting_the_target(target: float, balls: float, lookups: int) -> None:
    rows = table_rows_for(target, balls, lookups)
    assert collision_rate(rows, balls, lookups) <= target
    assert rows == 1 or collision_rate(rows - 1, balls, lookups) > target


def test_table_rows_for_rejects_a_target_outside_0_1() -> None:
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        table_rows_for(1.5, 100)


@given(
    st.integers(1, 20),
    st.lists(st.tuples(st.integers(0, 19), st.lists(st.integers(0, 63), max_size=30)), max_size=25),
    st.sampled_from([64, 1 << 20]),  # a window touching much of the table (bitmap) or little of it (sort)
)
def test_a_window_holds_each_touched_row_once_with_the_bit_of_every_feature_that_touched_it(
    n_features: int, touches: list[tuple[int, list[int]]], table_rows: int
) -> None:
    features = [f"f{i}" for i in range(n_features)]
    tracker = RowTracker(features, table_rows=table_rows)
    want: dict[int, set[int]] = {}
    for feature, rows in touches:
        feature %= n_features
        tracker.touch(features[feature], np.array(rows, dtype=np.int64))
        for row in rows:
            want.setdefault(row, set()).add(feature)
    window = tracker.take_window()
    if not want:
        assert window is None
        return
    assert window is not None and window.rows.tolist() == sorted(want)
    for row, bits in zip(window.rows.tolist(), window.bits, strict=True):
        got = {i for i in range(n_features) if bits[i // 8] >> (i % 8) & 1}
        assert got == want[row], row
    assert tracker.take_window() is None


def test_row_tracker_stale_share_per_feature() -> None:
    features = ["a", "b"] + [f"x{i}" for i in range(8)]  # two bytes per row: bits of a and b in the first
    tracker = RowTracker(features, table_rows=100)
    tracker.touch("a", np.arange(0, 10))
    tracker.touch("b", np.array([5, 50, 50]))
    tracker.touch("x7", np.array([99]))
    first = tracker.take_window()
    assert first is not None and first.bits.shape == (12, 2)
    assert first.rows.tolist() == [*range(10), 50, 99]
    assert first.rows[first.bits[:, 0] & 2 > 0].tolist() == [5, 50]
    assert first.rows[first.bits[:, 1] > 0].tolist() == [99]
    assert first.rows[first.bits[:, 0] & 1 > 0].tolist() == list(range(10))
    tracker.apply(first, step=100)
    tracker.touch("a", np.arange(0, 4))
    second = tracker.take_window()
    assert second is not None and second.rows.tolist() == [0, 1, 2, 3] and not (second.bits[:, 0] & 2).any()
    tracker.apply(second, step=200)
    # a's rows 0..3 updated at 200, 4..9 last at 100; b's row 5 was last updated (by a) at 100, row 50 at 100
    shares = tracker.stale_shares(step=250, stale_steps=100)
    assert shares["a"] == pytest.approx(6 / 10) and shares["b"] == 1.0 and shares["x7"] == 1.0
    assert math.isnan(shares["x0"])
    assert tracker.stale_shares(step=250, stale_steps=200)["a"] == 0.0
    # rows another rank updated later make them fresh for every feature that owns them
    other = RowTracker(features, table_rows=100)
    other.touch("a", np.array([50]))
    tracker.apply(other.take_window(), step=240)
    assert tracker.stale_shares(step=250, stale_steps=100)["b"] == pytest.approx(1 / 2)
    assert tracker.rows_touched()["a"] == 11 and tracker.rows_touched()["b"] == 2
    assert tracker.take_window() is None
    with pytest.raises(ValueError, match="same schema and table_rows"):
        tracker.apply(TouchedRows(np.array([1], dtype=np.uint32), np.zeros((1, 1), dtype=np.uint8)), step=1)
    with pytest.raises(ValueError, match="same schema and table_rows"):
        tracker.apply(TouchedRows(np.array([100], dtype=np.uint32), np.zeros((1, 2), dtype=np.uint8)), step=1)


@given(st.lists(st.tuples(st.integers(0, 9), st.lists(st.integers(0, 499), max_size=40)), max_size=30))
def test_touched_rows_equal_the_dense_bitmap_and_survive_the_wire(touches: list[tuple[int, list[int]]]) -> None:
    features = [f"f{i}" for i in range(10)]
    tracker = RowTracker(features, table_rows=500)
    dense = np.zeros((500, 2), dtype=np.uint8)
    for feature, rows in touches:
        tracker.touch(features[feature], np.array(rows, dtype=np.int64))
        dense[rows, feature // 8] |= np.uint8(1 << (feature % 8))
    window = tracker.take_window()
    if not dense.any():
        assert window is None
        return
    assert window is not None
    rebuilt = np.zeros_like(dense)
    rebuilt[window.rows] = window.bits
    assert (rebuilt == dense).all() and (np.diff(window.rows.astype(np.int64)) > 0).all()
    wire = TouchedRows.from_bytes(window.to_bytes(), width=2, table_rows=500)
    assert (wire.rows == window.rows).all() and (wire.bits == window.bits).all()
    top = int(window.rows.max())
    with pytest.raises(ValueError, match=f"row {top} is outside a table of {top} rows"):
        TouchedRows.from_bytes(window.to_bytes(), width=2, table_rows=top)
    with pytest.raises(ValueError, match="whole number of rows"):
        TouchedRows.from_bytes(window.to_bytes() + b"x", width=2, table_rows=500)


def test_row_tracker_rejects_rows_outside_the_table() -> None:
    tracker = RowTracker(["a"], table_rows=10)
    with pytest.raises(ValueError, match=r"row 10 of feature 'a' is outside the unified table \[0, 10\)"):
        tracker.touch("a", np.array([1, 10]))
    assert math.isnan(tracker.stale_shares(0, 1)["a"])
