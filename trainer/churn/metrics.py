"""Prometheus gauges of churn (names and meanings: docs/metrics.md), values of the last merged window.

The registry is passed in: the trainer owns the HTTP exposition. Every rank sets the same global
numbers, so a dashboard may read any rank (or `max by (feature)`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily

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
    """A collector: `set_window` keeps a reference to the window's stats (a replay merges a window almost
    every batch, and setting 8 gauges per feature each time cost more than the window's set algebra);
    the gauges are read from it when /metrics is scraped. NaN until the first window."""

    def __init__(self, registry: CollectorRegistry, features: Iterable[str]) -> None:
        self.features = list(features)
        self._stats: dict[str, FeatureWindowStats] = {}
        registry.register(self)

    def set_window(self, stats: Iterable[FeatureWindowStats]) -> None:
        self._stats = {s.feature: s for s in stats}  # one reference swap: a scrape sees one whole window

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = self._stats
        features = self.features + [f for f in stats if f not in self.features]
        values = {f: _values(stats[f]) for f in features if f in stats}
        for key, (name, doc) in _GAUGES.items():
            family = GaugeMetricFamily(name, doc, labels=["feature"])
            for feature in features:
                family.add_metric([feature], values[feature][key] if feature in values else math.nan)
            yield family


def _values(s: FeatureWindowStats) -> dict[str, float]:
    """The gauges' values (keys of `_GAUGES`) of one feature's window."""
    return {
        "distinct_ids": s.distinct,
        "new_ids": s.new,
        "new_id_rate": s.new_rate,
        "vanished_ids": s.vanished,
        "jaccard": s.jaccard,
        "occupied_rows": s.occupied_rows,
        "collision_rate": s.collision_rate,
        "stale_share": s.stale_share,
    }
