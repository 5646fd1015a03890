"""ChurnTracker without Redis: windows by event time, metrics, row staleness, input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from embedding.schema import FeatureSchema, parse_schema
from trainer.churn import ChurnSettings, ChurnTracker, fingerprints_of, rows_of

METRICS = (
    "unirec_churn_distinct_ids",
    "unirec_churn_new_ids",
    "unirec_churn_new_id_rate",
    "unirec_churn_vanished_ids",
    "unirec_churn_jaccard",
    "unirec_churn_table_occupied_rows",
    "unirec_churn_collision_rate",
    "unirec_churn_stale_share",
)


@pytest.fixture
def schema() -> FeatureSchema:
    return parse_schema(
        {"name": "t", "sparse": [{"name": "user", "dtype": "int"}, {"name": "item", "dtype": "int", "lookups": 2}]}
    )


def _ids(lo: int, hi: int) -> np.ndarray:
    return np.arange(lo, hi, dtype=np.int64)


def test_windows_close_by_event_time_and_set_the_documented_gauges(schema: FeatureSchema) -> None:
    registry = CollectorRegistry()
    settings = ChurnSettings(window_s=10, stale_steps=5)
    tracker = ChurnTracker(schema, settings, table_rows=1000, registry=registry)
    assert math.isnan(registry.get_sample_value("unirec_churn_distinct_ids", {"feature": "user"}))
    # window [0, 10 s): users 0..99 in two batches, items 0..9 on rows 0..19
    tracker.observe({"user": _ids(0, 50), "item": _ids(0, 10)}, np.array([1000, 2000]),
                    {"user": _ids(0, 50), "item": _ids(0, 20)}, step=1)
    tracker.observe({"user": _ids(50, 100)}, 9_999, {"user": _ids(50, 100)}, step=2)
    assert tracker.last_stats == {}  # nothing merged until a batch of a later window arrives
    # window [10 s, 20 s): users 50..149; a late batch (event time 5 s) still counts in the open window
    tracker.observe({"user": _ids(50, 120)}, np.array([12_000, 15_000]), {"user": _ids(50, 120)}, step=10)
    assert tracker.last_stats["user"].distinct == 100
    tracker.observe({"user": _ids(120, 150)}, 5_000, {"user": _ids(120, 150)}, step=11)
    assert tracker.late_batches == 1
    tracker.flush()

    user, item = tracker.last_stats["user"], tracker.last_stats["item"]
    assert tracker.last_summary["window_start_ms"] == 10_000
    assert (user.distinct, user.new, user.vanished) == (100, 50, 50)
    assert (item.distinct, item.new, item.vanished) == (0, 0, 10)
    sample = lambda name, f="user": registry.get_sample_value(name, {"feature": f})  # noqa: E731
    assert sample("unirec_churn_distinct_ids") == 100
    assert sample("unirec_churn_new_ids") == 50
    assert sample("unirec_churn_new_id_rate") == 5.0
    assert sample("unirec_churn_vanished_ids") == 50
    assert sample("unirec_churn_jaccard") == pytest.approx(50 / 150)
    # 100 user IDs (1 lookup) and no item IDs: balls into 1000 rows
    assert sample("unirec_churn_table_occupied_rows") == pytest.approx(1000 * (1 - (1 - 1 / 1000) ** 100))
    assert sample("unirec_churn_collision_rate") == pytest.approx(1 - (1 - 1 / 1000) ** 99)
    assert sample("unirec_churn_collision_rate", "item") == pytest.approx(1 - (1 - 1 / 1000) ** (2 * 98))
    # step 11, stale after 5 steps: user rows 0..49 (last at step 2) of 0..149; item rows 0..19 all stale
    assert sample("unirec_churn_stale_share") == pytest.approx(50 / 150)
    assert sample("unirec_churn_stale_share", "item") == 1.0
    for name in METRICS:
        assert sample(name) is not None


def test_a_jump_in_event_time_skips_empty_windows(schema: FeatureSchema) -> None:
    tracker = ChurnTracker(schema, ChurnSettings(window_s=1), table_rows=100)
    tracker.observe({"user": _ids(0, 10)}, 500, step=1)
    tracker.observe({"user": _ids(0, 10)}, 3_600_500, step=2)
    tracker.flush()
    assert [s["window_start_ms"] for s in tracker.summaries] == [0, 3_600_000]
    assert tracker.last_stats["user"].new == 0 and tracker.last_stats["user"].jaccard == 1.0


def test_unknown_features_and_bad_rows_are_named(schema: FeatureSchema) -> None:
    tracker = ChurnTracker(schema, ChurnSettings(), table_rows=100)
    with pytest.raises(ValueError, match=r"feature 'movie', which schema 't' does not have; expected one of"):
        tracker.observe({"movie": _ids(0, 3)}, 0, step=0)
    with pytest.raises(ValueError, match=r"row 100 of feature 'user' is outside the unified table"):
        tracker.observe({"user": _ids(0, 3)}, 0, {"user": np.array([1, 100])}, step=0)
    with pytest.raises(ValueError, match="rank"):
        ChurnTracker(schema, ChurnSettings(), table_rows=100, rank=2, world_size=2)


def test_disabled_tracker_does_nothing(schema: FeatureSchema) -> None:
    tracker = ChurnTracker(schema, ChurnSettings(enabled=False), table_rows=100)
    tracker.observe({"movie": _ids(0, 3)}, 0, step=0)
    tracker.close()
    assert tracker.windows_merged == 0


def test_without_redis_a_multi_rank_tracker_reports_its_own_part_as_partial(schema: FeatureSchema) -> None:
    tracker = ChurnTracker(schema, ChurnSettings(), table_rows=100, rank=1, world_size=2)
    tracker.observe({"user": _ids(0, 10)}, 0, step=0)
    tracker.close()
    assert tracker.windows_partial == 1 and tracker.last_summary["ranks_merged"] == 1


def test_kjt_and_unified_rows_helpers(schema: FeatureSchema) -> None:
    from embedding.events import Event, Featurizer
    from embedding.methods.unified import UnifiedEmbedding

    events = [Event(event_id=str(i), ts=i, sparse={"user": i, "item": i % 3}) for i in range(5)]
    events.append(Event(event_id="x", ts=9, sparse={"user": 7}))
    batch = Featurizer(schema)(events)
    fps = fingerprints_of(batch.sparse)
    assert {k: v.size for k, v in fps.items()} == {"user": 6, "item": 5}
    method = UnifiedEmbedding(schema, num_rows=64)
    rows = rows_of(schema, *method.rows(batch.sparse))
    assert {k: v.size for k, v in rows.items()} == {"user": 6, "item": 10}
    expected_user = method.hashes[0](batch.sparse["user"].values()).numpy()
    assert rows["user"].tolist() == expected_user.tolist()
    tracker = ChurnTracker(schema, ChurnSettings(), table_rows=64)
    tracker.observe(fps, np.array([e.ts for e in events]), rows, step=1)
    tracker.flush()
    assert tracker.last_stats["item"].distinct == 3
