"""Prometheus gauges of churn (names and meanings: docs/metrics.md), values of the last merged window.

The registry is passed in: the trainer owns the HTTP exposition. Every rank sets the same global
numbers, so a dashboard may read any rank (or `max by (feature)`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Gauge

from trainer.churn.sketches import FeatureWindowStats

_GAUGES = {
    "distinct_ids": ("unirec_churn_distinct_ids", "distinct-ID estimate in the window"),
    "new_ids": ("unirec_churn_new_ids", "IDs not seen in any earlier window"),
    "new_id_rate": ("unirec_churn_new_id_rate", "new IDs per second of event time"),
    "vanished_ids": ("unirec_churn_vanished_ids", "IDs of the previous window absent from this one"),
    "jaccard": ("unirec_churn_jaccard", "Jaccard similarity of consecutive windows"),
    "occupied_rows": ("unirec_churn_table_occupied_rows", "estimated rows of the unified table the feature occupies"),
    "collision_rate": (
        "unirec_churn_collision_rate",
        "expected share of the feature's IDs sharing a row with another ID",
    ),
    "stale_share": (
        "unirec_churn_stale_share",
        "share of the feature's rows not updated for the configured number of steps",
    ),
}


class ChurnMetrics:
    def __init__(self, registry: CollectorRegistry, features: Iterable[str]) -> None:
        self.gauges = {
            key: Gauge(name, doc, ["feature"], registry=registry) for key, (name, doc) in _GAUGES.items()
        }
        # series exist (NaN) from the start, so dashboards show "no data yet"; the children are kept
        # because `labels()` costs more than `set()` and a replay merges a window almost every batch
        self._series = {
            (key, feature): gauge.labels(feature=feature) for key, gauge in self.gauges.items() for feature in features
        }
        for series in self._series.values():
            series.set(math.nan)

    def set_window(self, stats: Iterable[FeatureWindowStats]) -> None:
        for s in stats:
            values = {
                "distinct_ids": s.distinct,
                "new_ids": s.new,
                "new_id_rate": s.new_rate,
                "vanished_ids": s.vanished,
                "jaccard": s.jaccard,
                "occupied_rows": s.occupied_rows,
                "collision_rate": s.collision_rate,
                "stale_share": s.stale_share,
            }
            for key, value in values.items():
                series = self._series.get((key, s.feature))
                if series is None:
                    series = self._series[key, s.feature] = self.gauges[key].labels(feature=s.feature)
                series.set(value)
