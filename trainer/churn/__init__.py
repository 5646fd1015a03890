"""Vocabulary churn of the unified table's features: theta sketches per window of event time, merged
over ranks through Redis, exported as `unirec_churn_*` gauges, reported by `unirec churn report`.

Names are imported on first use (PEP 562): `unirec churn report` needs the exchange and the sizing
formulas, not the tracker's sketches (pandas, datasketches).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.lazy import lazy_exports

_EXPORTS = {
    "collision_rate": "trainer.churn.load",
    "expected_occupied_rows": "trainer.churn.load",
    "table_rows_for": "trainer.churn.load",
    "ChurnSettings": "trainer.churn.settings",
    "FeatureWindowStats": "trainer.churn.sketches",
    "ChurnTracker": "trainer.churn.tracker",
    "fingerprints_of": "trainer.churn.tracker",
    "rows_of": "trainer.churn.tracker",
}

__all__ = [
    "ChurnSettings",
    "ChurnTracker",
    "collision_rate",
    "expected_occupied_rows",
    "FeatureWindowStats",
    "fingerprints_of",
    "rows_of",
    "table_rows_for",
]


__getattr__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:
    from trainer.churn.load import collision_rate, expected_occupied_rows, table_rows_for
    from trainer.churn.settings import ChurnSettings
    from trainer.churn.sketches import FeatureWindowStats
    from trainer.churn.tracker import ChurnTracker, fingerprints_of, rows_of
