"""Theta sketches (Apache DataSketches) for one window of IDs, and the set algebra between windows.

The DataSketches Python API has no batch update: `update_theta_sketch.update` takes one value per
call (120-250 ns per item here depending on the load, plus about 90 ns for `ndarray.tolist()`; see
bench/results/churn.md).
`WindowSketch.update` therefore first computes, vectorised in numpy, the very hash the sketch
computes for an int64 (MurmurHash3_x64_128 of the 8 little-endian bytes, seed 9001, first word
shifted right by one) and passes on only the values whose hash is below the sketch's current theta:
the sketch rejects every other value itself, so the result is identical (byte for byte) while an
estimation-mode sketch of n IDs sees only about k/n of them. It also remembers the IDs it has already
passed on (pandas' C hash table, `Int64HashTable`; pruned to those below theta when it passes 4k) and
drops survivors found there or repeated in the batch (`Int64HashTable.unique`: first occurrence
kept, so the insertion order is unchanged): the sketch would ignore them as duplicates. So each
distinct ID below theta costs one `update()` call per window, however hot it is.

Distinct counts come from the same theta sketch (relative standard error 1/sqrt(k)) rather than a
separate HLL sketch: an HLL would need a second Python call per item without telling anything the
theta sketch does not, and theta sketches are what unions, intersections and differences need.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import datasketches as ds
import numpy as np
from pandas._libs.hashtable import Int64HashTable

THETA_SEED = 9001
"""DataSketches' default seed; sketches with other seeds cannot be combined with these."""

_U = np.uint64
_C1 = _U(0x87C37B91114253D5)
_C2 = _U(0x4CF5AD432745937F)
_F1 = _U(0xFF51AFD7ED558CCD)
_F2 = _U(0xC4CEB9FE1A85EC53)


def _fmix64(k: np.ndarray, tmp: np.ndarray) -> None:
    np.right_shift(k, _U(33), out=tmp)
    k ^= tmp
    k *= _F1
    np.right_shift(k, _U(33), out=tmp)
    k ^= tmp
    k *= _F2
    np.right_shift(k, _U(33), out=tmp)
    k ^= tmp


def theta_hashes(values: np.ndarray, seed: int = THETA_SEED) -> np.ndarray:
    """The 63-bit hash `update_theta_sketch.update(int(v))` computes for each int64 `v` (uint64 array).

    MurmurHash3_x64_128 specialised to one 8-byte key: no 16-byte block, the tail word k1, then the
    finalisation; only the first output word is needed.
    """
    seed_len = _U((seed & 0xFFFFFFFFFFFFFFFF) ^ 8)
    with np.errstate(over="ignore"):
        h1 = np.ascontiguousarray(values).view(np.uint64) * _C1
        tmp = np.right_shift(h1, _U(33))
        h1 <<= _U(31)
        h1 |= tmp  # rotl64(k1, 31)
        h1 *= _C2
        h1 ^= seed_len  # h1 = seed ^ k1 ^ len; h2 = seed ^ len
        h1 += seed_len  # h1 += h2
        h2 = h1 + seed_len  # h2 += h1
        _fmix64(h1, tmp)
        _fmix64(h2, tmp)
        h1 += h2
        h1 >>= _U(1)
    return h1


def as_int64(fingerprints: np.ndarray) -> np.ndarray:
    """A flat int64 view of fingerprints given as int64 or uint64 (the same 64 bits) or narrower ints."""
    values = np.asarray(fingerprints).reshape(-1)
    if values.dtype == np.int64:
        return values
    if values.dtype == np.uint64:
        return values.view(np.int64)
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    raise ValueError(f"fingerprints must be an int64 array (embedding.hashing.fingerprint), got dtype {values.dtype}")


class WindowSketch:
    """The IDs of one feature in one window, fed with whole numpy arrays of 64-bit fingerprints."""

    def __init__(self, lg_k: int) -> None:
        self.sketch = ds.update_theta_sketch(lg_k=lg_k, seed=THETA_SEED)
        self.ids_seen = 0
        """IDs offered (with repeats): the denominator of the pre-filter's savings."""
        self.ids_passed = 0
        """IDs that reached the sketch's own update after the pre-filter."""
        self._passed = Int64HashTable(1 << 10)
        """The IDs already passed to the sketch (a C hash table: vectorised membership)."""
        self._passed_ids: list[np.ndarray] = []
        self._passed_count = 0
        self._prune_at = 4 << lg_k

    def update(self, fingerprints: np.ndarray, hashes: np.ndarray | None = None) -> None:
        """Offer a batch of fingerprints; `hashes`: their `theta_hashes`, when the caller has them already."""
        values = as_int64(fingerprints)
        if not values.size:
            return
        self.ids_seen += values.size
        if hashes is None:
            hashes = theta_hashes(values)
        theta = np.uint64(self.sketch.theta64)
        keep = hashes < theta
        keep &= hashes != 0
        fresh = values[keep]
        if not fresh.size:
            return
        if self._passed_count:
            fresh = fresh[self._passed.lookup(fresh) < 0]
            if not fresh.size:
                return
        fresh = Int64HashTable(fresh.size).unique(fresh)  # first occurrence order: the sketch sees the same sequence
        self._remember(fresh, theta)
        self.ids_passed += fresh.size
        update = self.sketch.update
        for value in fresh.tolist():
            update(value)

    def _remember(self, fresh: np.ndarray, theta: np.uint64) -> None:
        self._passed.map_locations(fresh)
        self._passed_ids.append(fresh)
        self._passed_count += fresh.size
        if self._passed_count > self._prune_at:  # forget IDs whose hash is no longer below theta
            kept = np.concatenate(self._passed_ids)
            kept = kept[theta_hashes(kept) < theta]
            self._passed = Int64HashTable(max(kept.size, 1 << 10))
            self._passed.map_locations(kept)
            self._passed_ids, self._passed_count = [kept], kept.size
            self._prune_at = max(self._prune_at, 2 * kept.size)

    def compact(self) -> ds.compact_theta_sketch:
        """The window's final sketch: trimmed to the nominal 2^lg_k entries (the update sketch's table may hold
        up to twice that), which leaves the k smallest hashes, all any union of ranks keeps."""
        self.sketch.trim()
        return self.sketch.compact(ordered=True)


def serialize(sketch: ds.compact_theta_sketch) -> bytes:
    return sketch.serialize(compress=True)


def deserialize(data: bytes) -> ds.compact_theta_sketch:
    return ds.compact_theta_sketch.deserialize(data, seed=THETA_SEED)


def empty_sketch() -> ds.compact_theta_sketch:
    return ds.update_theta_sketch(seed=THETA_SEED).compact()


def union(sketches: Iterable[ds.theta_sketch], lg_k: int) -> ds.compact_theta_sketch:
    u = ds.theta_union(lg_k=lg_k, seed=THETA_SEED)
    for sketch in sketches:
        u.update(sketch)
    return u.get_result()


def a_not_b(a: ds.theta_sketch, b: ds.theta_sketch) -> ds.compact_theta_sketch:
    return ds.theta_a_not_b(seed=THETA_SEED).compute(a, b)


def intersection(a: ds.theta_sketch, b: ds.theta_sketch) -> ds.compact_theta_sketch:
    i = ds.theta_intersection(seed=THETA_SEED)
    i.update(a)
    i.update(b)
    return i.get_result()


def jaccard(a: ds.theta_sketch, b: ds.theta_sketch) -> float:
    """Estimated |A ∩ B| / |A ∪ B|; NaN when both are empty."""
    if a.is_empty() and b.is_empty():
        return math.nan
    return float(ds.theta_jaccard_similarity.jaccard(a, b, seed=THETA_SEED)[1])


def sketch_bytes(sketch: ds.theta_sketch) -> int:
    """Memory of a sketch's retained entries (8 bytes each) plus its preamble."""
    return 24 + 8 * sketch.num_retained


@dataclass
class FeatureWindowStats:
    """The churn numbers of one feature in one (globally merged) window."""

    feature: str
    window_start_ms: int
    window_s: float
    distinct: float
    new: float
    vanished: float
    jaccard: float
    """NaN for the first window (no previous window to compare with)."""
    age_shares: list[tuple[int, float]] = field(default_factory=list)
    """(age in windows, share of this window's IDs first seen that many windows ago), newest first."""
    older_share: float = 0.0
    """Share of this window's IDs first seen before the oldest kept cohort."""
    median_age_windows: int | None = None
    """Smallest age covering half of this window's IDs; None when that is older than the kept cohorts."""
    survival: float = math.nan
    """Share of the previous window's new IDs seen again in this window."""
    occupied_rows: float = math.nan
    collision_rate: float = math.nan
    stale_share: float = math.nan

    @property
    def new_rate(self) -> float:
        return self.new / self.window_s

    def to_json(self) -> dict[str, object]:
        doc = {k: _finite(v) for k, v in self.__dict__.items() if k != "age_shares"}
        doc["age_shares"] = [[age, _finite(share)] for age, share in self.age_shares]
        doc["new_rate"] = _finite(self.new_rate)
        return doc


def _finite(value: object) -> object:
    return None if isinstance(value, float) and not math.isfinite(value) else value


_FOLD_MIN_ENTRIES = 256


def fold_entries(seen_entries: int) -> int:
    """Entries at which `FeatureHistory`'s second level folds into a first level of `seen_entries`
    (a sixteenth of it, at least `_FOLD_MIN_ENTRIES`): the most the second level holds between windows."""
    return max(_FOLD_MIN_ENTRIES, seen_entries // 16)


class FeatureHistory:
    """What one feature's earlier windows left behind: their running union, the previous window and the
    new-ID cohorts of the last `history` windows. Memory is bounded by the sketch sizes, whatever the
    vocabulary: union <= 2^union_lg_k entries plus, between windows, fewer than max(256, 2^union_lg_k / 16)
    in its second level; previous window and each cohort <= 2^lg_k entries.

    The running union is kept in two levels, `seen` and `recent` (the windows since the last fold),
    because a union costs what its inputs hold: re-making `seen` with every window cost 5 ms per
    feature at a full history, and a replay closes a window every batch. New IDs are the window minus
    `seen` minus `recent`; `recent` is folded into `seen` once it holds a sixteenth of `seen`'s entries
    (at least `_FOLD_MIN_ENTRIES`), so each window pays for the small level and, spread over the windows
    of a fold, for the large one. `seen` after a fold is the very sketch the window-by-window unions made
    (a union keeps the k smallest hashes below the smallest theta, whatever the order). Live windows
    each holding more than that sixteenth fold every time, so their numbers are the one-level ones;
    a small window's new IDs are exact below k and otherwise estimated at a theta no lower than the
    one-level union's."""

    def __init__(self, feature: str, lg_k: int, union_lg_k: int, history: int, window_s: float) -> None:
        self.feature = feature
        self.lg_k = lg_k
        self.union_lg_k = union_lg_k
        self.window_ms = int(window_s * 1000)
        self.window_s = window_s
        self.seen: ds.compact_theta_sketch | None = None
        self.recent: ds.compact_theta_sketch | None = None
        self.previous: ds.compact_theta_sketch | None = None
        self.previous_start: int | None = None
        self.cohorts: deque[tuple[int, ds.compact_theta_sketch]] = deque(maxlen=history)

    def advance(self, window: ds.theta_sketch, window_start_ms: int) -> FeatureWindowStats:
        """Compare `window` (the merged sketch of all ranks) with history, then make it history."""
        distinct = window.get_estimate()
        new_ids = window
        for earlier in (self.seen, self.recent):
            if earlier is not None:
                new_ids = a_not_b(new_ids, earlier)
        new = new_ids.get_estimate()
        if self.previous is not None:
            vanished = a_not_b(self.previous, window).get_estimate()
            similarity = jaccard(window, self.previous)
        else:
            vanished, similarity = 0.0, math.nan
        survival = math.nan
        if self.cohorts and self.cohorts[-1][0] == self.previous_start:
            last_new = self.cohorts[-1][1]
            if last_new.get_estimate() > 0:
                survival = min(1.0, intersection(last_new, window).get_estimate() / last_new.get_estimate())
        stats = FeatureWindowStats(self.feature, window_start_ms, self.window_s, distinct, new, vanished, similarity)
        stats.survival = survival
        self.cohorts.append((window_start_ms, new_ids))
        self._lifetime(window, stats)
        self._remember(window)
        self.previous = window
        self.previous_start = window_start_ms
        return stats

    def _remember(self, window: ds.theta_sketch) -> None:
        if self.seen is None:
            self.seen = window
            return
        self.recent = window if self.recent is None else union([self.recent, window], self.union_lg_k)
        if self.recent.num_retained >= fold_entries(self.seen.num_retained):
            self.seen, self.recent = union([self.seen, self.recent], self.union_lg_k), None

    def _lifetime(self, window: ds.theta_sketch, stats: FeatureWindowStats) -> None:
        if stats.distinct <= 0:
            return
        total = 0.0
        cumulative_median: int | None = None
        for cohort_start, cohort in reversed(self.cohorts):
            age = (stats.window_start_ms - cohort_start) // self.window_ms
            if age == 0:
                overlap = stats.new
            elif not cohort.num_retained:  # no new IDs that window (most, late in a replay): nothing to meet
                overlap = 0.0
            else:
                overlap = intersection(cohort, window).get_estimate()
            share = overlap / stats.distinct
            share = min(max(share, 0.0), 1.0)
            stats.age_shares.append((int(age), share))
            total += share
            if cumulative_median is None and total >= 0.5:
                cumulative_median = int(age)
        stats.older_share = max(0.0, 1.0 - total)
        stats.median_age_windows = cumulative_median

    def memory_bytes(self) -> int:
        parts = [s for s in (self.seen, self.recent, self.previous) if s is not None] + [c for _, c in self.cohorts]
        return sum(sketch_bytes(s) for s in parts)
