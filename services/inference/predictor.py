"""Predict calls: featurize the whole batch once, apply the schema's policies, one forward.

`score` answers one request; `score_requests` answers several (the dynamic batcher's) with one
forward, each on the `Served` model the requests took at their start. The only per-event Python
loops are the featurizer's, plus ones on error paths (to name
the event a 422 is about) and when events carry unknown features (to count them). Unseen IDs are
counted from the rows the forward looked up (`ServingModel.score`), not hashed a second time.
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
    problem = _problem(served, events, batch)
    _count(served, events, batch, metrics)
    if problem is not None:
        raise problem
    return _forward(served, batch, metrics)


def score_requests(
    served: Served, requests: Sequence[Sequence[Event]], metrics: ServeMetrics
) -> list[np.ndarray | RequestInvalid]:
    """Each request's probabilities (or its RequestInvalid) from one featurize and one forward of them all.

    Rows of a forward do not depend on each other, so request i's answer is what scoring it alone
    gives. When anything in the merged batch is refused, every request is scored on its own
    instead: each bad one gets its own error (naming its own events), the others their answers.
    """
    if len(requests) == 1:
        return [_outcome(served, requests[0], metrics)]
    merged = [event for events in requests for event in events]
    try:
        batch = served.featurizer(merged)
    except (ValueError, TypeError, OverflowError):
        return [_outcome(served, events, metrics) for events in requests]
    if _problem(served, merged, batch) is not None:
        return [_outcome(served, events, metrics) for events in requests]
    _count(served, merged, batch, metrics)
    probabilities = _forward(served, batch, metrics)
    bounds = np.cumsum([0, *map(len, requests)])
    return [probabilities[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _outcome(served: Served, events: Sequence[Event], metrics: ServeMetrics) -> np.ndarray | RequestInvalid:
    try:
        return score(served, events, metrics)
    except RequestInvalid as exc:
        return exc


def _forward(served: Served, batch: FeatureBatch, metrics: ServeMetrics) -> np.ndarray:
    """Probabilities of a batch that passed `_problem`; counts its unseen IDs."""
    model = served.model
    if hasattr(model, "score"):  # a ServingModel (it scores under inference mode itself)
        scored = model.score(batch)
        probabilities, unseen = scored.probabilities, scored.unseen
    else:  # another ServingModelLike: its own seen masks, when it has them
        with torch.inference_mode():
            probabilities = model.predict(batch)
            masks = model.seen_mask(batch) if hasattr(model, "seen_mask") else None
            unseen = None if masks is None else {k: int(m.numel() - m.sum()) for k, m in masks.items()}
    for name, count in (unseen or {}).items():
        if count:
            metrics.count_feature("unseen_ids", name, count)
    return probabilities.to(torch.float32).reshape(-1).numpy()


def _problem(served: Served, events: Sequence[Event], batch: FeatureBatch) -> RequestInvalid | None:
    """What the schema refuses in this batch (unknown or missing features under `reject`), else None."""
    unknown = batch.unknown
    if unknown and served.reject_unknown:
        with_unknown = [
            i for i, e in enumerate(events) if not unknown.isdisjoint(e.sparse) or not unknown.isdisjoint(e.dense)
        ]
        return RequestInvalid(
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
        return RequestInvalid(
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
    return None


def _count(served: Served, events: Sequence[Event], batch: FeatureBatch, metrics: ServeMetrics) -> None:
    """Missing and unknown features always; lookups of batches that are scored (unseen IDs: `_forward`)."""
    for name, count in batch.missing.items():
        metrics.count_feature("missing_features", name, count)
    unknown = batch.unknown
    if unknown:
        metrics.unknown_features.inc(
            sum(1 for e in events if not unknown.isdisjoint(e.sparse) or not unknown.isdisjoint(e.dense))
        )
    if (unknown and served.reject_unknown) or any(batch.missing.get(name) for name in served.reject_missing):
        return
    for name, count in zip(batch.sparse.keys(), batch.sparse.length_per_key(), strict=True):
        if count:
            metrics.count_feature("lookups", name, count)


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
