"""One predict call: featurize the whole batch once, apply the schema's policies, one forward.

Runs in a worker thread (torch releases the GIL), on the `Served` model the request took at its
start. The only per-event Python loops are the featurizer's, plus ones on error paths (to name
the event a 422 is about) and when events carry unknown features (to count them).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch

from embedding.events import Event, FeatureBatch
from embedding.hashing import fingerprint
from services.inference.codec import RequestInvalid, detail
from services.inference.metrics import ServeMetrics
from services.inference.model_holder import Served

MAX_DETAILS = 20
_FEATURE_IN_ERROR = re.compile(r"^sparse feature '(?P<name>[^']+)': ")


def score(served: Served, events: Sequence[Event], metrics: ServeMetrics) -> np.ndarray:
    """Probabilities (float32 [len(events)]) from `served`; raises RequestInvalid for what the schema rejects."""
    try:
        batch = served.featurizer(events)
    except (ValueError, TypeError, OverflowError) as exc:
        raise RequestInvalid(_bad_value_details(served, events, exc)) from exc
    _count_and_check(served, events, batch, metrics)
    with torch.inference_mode():
        probabilities = served.model.predict(batch)
    return probabilities.detach().to(torch.float32).reshape(-1).numpy()


def _count_and_check(served: Served, events: Sequence[Event], batch: FeatureBatch, metrics: ServeMetrics) -> None:
    for name, count in batch.missing.items():
        metrics.missing_features.labels(feature=name).inc(count)
    if batch.unknown:
        unknown = batch.unknown
        with_unknown = [
            i for i, e in enumerate(events) if not unknown.isdisjoint(e.sparse) or not unknown.isdisjoint(e.dense)
        ]
        metrics.unknown_features.inc(len(with_unknown))
        if served.reject_unknown:
            raise RequestInvalid(
                [
                    detail(
                        ["body", "events", i, "sparse" if not unknown.isdisjoint(events[i].sparse) else "dense"],
                        f"unknown feature(s) {sorted(unknown & (events[i].sparse.keys() | events[i].dense.keys()))}; "
                        f"schema {served.model.schema.name!r} rejects unknown features",
                        "unknown_feature",
                    )
                    for i in with_unknown[:MAX_DETAILS]
                ]
            )
    rejected = [name for name in served.reject_missing if batch.missing.get(name)]
    if rejected:
        raise RequestInvalid(
            [
                detail(
                    ["body", "events", i, "sparse", name],
                    f"feature {name!r} is required (on_missing: reject)",
                    "missing",
                )
                for name in rejected
                for i, e in enumerate(events)
                if name not in e.sparse
            ][:MAX_DETAILS]
        )
    for name, count in zip(batch.sparse.keys(), batch.sparse.length_per_key(), strict=True):
        if count:
            metrics.lookups.labels(feature=name).inc(count)
    seen_mask = getattr(served.model, "seen_mask", None)
    masks = seen_mask(batch) if seen_mask is not None else None
    if masks:  # None when the artifact carries no seen rows: then only lookups are counted
        for name, mask in masks.items():
            unseen = int(mask.numel() - mask.sum())
            if unseen:
                metrics.unseen_ids.labels(feature=name).inc(unseen)


def _bad_value_details(served: Served, events: Sequence[Event], exc: Exception) -> list[dict]:
    """Name the events whose value of the feature in `exc` does not coerce to the feature's dtype."""
    match = _FEATURE_IN_ERROR.match(str(exc))
    if match is None:
        return [detail(["body", "events"], str(exc))]
    name = match.group("name")
    dtype = served.model.schema.feature(name).dtype
    found = []
    for i, event in enumerate(events):
        value = event.sparse.get(name)
        if value is None:
            continue
        try:
            fingerprint(value if isinstance(value, list) else [value], dtype)
        except (ValueError, TypeError, OverflowError) as bad:
            found.append(detail(["body", "events", i, "sparse", name], f"{bad} (feature dtype {dtype})"))
            if len(found) >= MAX_DETAILS:
                break
    return found or [detail(["body", "events"], str(exc))]
