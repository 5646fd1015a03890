"""Vocabulary churn of the unified table's features: theta sketches per window of event time, merged
over ranks through Redis, exported as `unirec_churn_*` gauges, reported by `unirec churn report`."""

from trainer.churn.load import collision_rate, expected_occupied_rows, table_rows_for
from trainer.churn.settings import ChurnSettings
from trainer.churn.sketches import FeatureWindowStats
from trainer.churn.tracker import ChurnTracker, fingerprints_of, rows_of

__all__ = [
    "ChurnSettings",
    "ChurnTracker",
    "FeatureWindowStats",
    "collision_rate",
    "expected_occupied_rows",
    "fingerprints_of",
    "rows_of",
    "table_rows_for",
]
