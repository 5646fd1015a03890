"""Load on the unified table: expected occupancy and collisions (balls into bins) and row staleness.

Balls into bins: every lookup of every distinct ID is a ball thrown into one of the M rows by an
independent 2-universal hash (each feature or seed group has its own seeds). With N balls in all,

    expected occupied rows            M * (1 - (1 - 1/M)^N)
    P(a given ball's row holds another ball)     1 - (1 - 1/M)^(N - 1)

A feature with L lookups throws L balls per ID; one of its IDs "shares a row with another ID" when
any of its L rows holds a ball of another ID: 1 - (1 - 1/M)^(L * (N - L)). Features of one seed group
that see equal tokens put them in the same rows; the formulas count those twice (an upper bound).

Staleness: `RowTracker` keeps the rows each feature touched in the open window as the hot path hands
them over, and hands the window out as `TouchedRows` (its distinct rows and their feature bits:
sparse, so closing a window costs what it touched, not the table's size: a replay of old events closes
a window every batch); globally it keeps, per feature, the bitmap of rows it ever touched plus one
shared uint32 array with the step at which each row was last updated by any rank. Memory:
M * (4 + ceil(F / 8)) bytes for F features (M = 2.6M rows, F = 26: 21 MB), plus the touched rows of
the open window and of the windows waiting for other ranks' parts. Updates from other ranks arrive
per window, so a row's last step is known to the resolution of one window (the step at which the
rank that touched it closed that window).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


def expected_occupied_rows(table_rows: int, balls: float) -> float:
    """M * (1 - (1 - 1/M)^n), computed without cancellation for large M."""
    if balls <= 0:
        return 0.0
    return -table_rows * math.expm1(balls * math.log1p(-1.0 / table_rows)) if table_rows > 1 else 1.0


def collision_rate(table_rows: int, total_balls: float, lookups: int = 1) -> float:
    """Expected share of one feature's IDs (with `lookups` rows each) that share a row with another ID."""
    others = max(total_balls - lookups, 0.0)
    if table_rows <= 1:
        return 1.0 if others > 0 else 0.0
    return -math.expm1(lookups * others * math.log1p(-1.0 / table_rows))


def table_rows_for(target: float, total_balls: float, lookups: int = 1) -> int:
    """The smallest M for which `collision_rate(M, total_balls, lookups) <= target`."""
    if not 0.0 < target < 1.0:
        raise ValueError(f"target collision rate must be in (0, 1), got {target}")
    exponent = lookups * max(total_balls - lookups, 0.0)
    if exponent <= 0:
        return 1
    # (1 - 1/M)^exponent >= 1 - target  <=>  1/M <= 1 - (1 - target)^(1/exponent)
    per_row = -math.expm1(math.log1p(-target) / exponent)
    rows = math.ceil(1.0 / per_row)
    while rows > 1 and collision_rate(rows - 1, total_balls, lookups) <= target:  # guard float rounding
        rows -= 1
    while collision_rate(rows, total_balls, lookups) > target:
        rows += 1
    return rows


def table_load(
    table_rows: int, distinct: Mapping[str, float], lookups: Mapping[str, int]
) -> dict[str, tuple[float, float]]:
    """Per feature: (expected occupied rows, expected collision rate) given every feature's distinct IDs."""
    total = sum(distinct[f] * lookups[f] for f in distinct)
    return {
        f: (expected_occupied_rows(table_rows, distinct[f] * lookups[f]), collision_rate(table_rows, total, lookups[f]))
        for f in distinct
    }


@dataclass(frozen=True)
class TouchedRows:
    """The rows one rank touched in one window: `rows`, sorted distinct uint32 row ids, and `bits`, per row
    one byte per 8 features (bit i % 8 of byte i // 8: feature i touched the row)."""

    rows: np.ndarray
    bits: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.rows.nbytes + self.bits.nbytes

    def to_bytes(self) -> bytes:
        """Little-endian uint32 rows, then the bit bytes row by row (what other ranks fetch from Redis)."""
        return self.rows.astype("<u4", copy=False).tobytes() + self.bits.tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, width: int, table_rows: int) -> TouchedRows:
        """Parse `to_bytes` of a rank with `width` bit bytes per row and a table of `table_rows` rows;
        ValueError when the data cannot be that (another schema or table size)."""
        if len(data) % (4 + width):
            raise ValueError(f"{len(data)} bytes is not a whole number of rows of 4 + {width} bytes")
        n = len(data) // (4 + width)
        rows = np.frombuffer(data, dtype="<u4", count=n).astype(np.uint32)
        if n and int(rows.max()) >= table_rows:
            raise ValueError(f"row {int(rows.max())} is outside a table of {table_rows} rows")
        bits = np.frombuffer(data, dtype=np.uint8, offset=4 * n).reshape(n, width)
        return cls(rows, bits)


class RowTracker:
    """Which rows each feature touched, and when any rank last updated each row (see module doc).

    Per row one byte per 8 features: bit i % 8 of byte i // 8 belongs to feature i, for the open window
    (`take_window` hands it out as `TouchedRows` and starts a new one) and for all merged windows
    (`apply`)."""

    def __init__(self, features: Sequence[str], table_rows: int) -> None:
        if not 1 <= table_rows <= 1 << 32:
            raise ValueError(f"table_rows must be in [1, 2^32] (rows are uint32), got {table_rows}")
        self.features = list(features)
        self.table_rows = table_rows
        self.width = max(1, math.ceil(len(self.features) / 8))
        self._slot = {f: (i // 8, np.uint8(1 << (i % 8))) for i, f in enumerate(self.features)}
        self._window: list[tuple[np.ndarray, int, np.uint8]] = []
        self._member = np.zeros((table_rows, self.width), dtype=np.uint8)
        self._last_step = np.zeros(table_rows, dtype=np.uint32)

    @property
    def memory_bytes(self) -> int:
        return sum(rows.nbytes for rows, _, _ in self._window) + self._member.nbytes + self._last_step.nbytes

    def touch(self, feature: str, rows: np.ndarray) -> None:
        """Hot path: mark `rows` (unified-table rows of this step's lookups of `feature`) as touched."""
        rows = np.asarray(rows).reshape(-1)
        if not rows.size:
            return
        if rows.dtype.kind not in "iu":
            raise ValueError(f"rows of feature {feature!r} must be integers, got dtype {rows.dtype}")
        lo, hi = int(rows.min()), int(rows.max())
        if lo < 0 or hi >= self.table_rows:
            bad = lo if lo < 0 else hi
            raise ValueError(f"row {bad} of feature {feature!r} is outside the unified table [0, {self.table_rows})")
        byte, bit = self._slot[feature]
        self._window.append((rows.astype(np.uint32), byte, bit))

    def take_window(self) -> TouchedRows | None:
        """The open window's touched rows, or None if nothing was touched; starts a new window.

        Sorted when the window touched fewer rows than an eighth of the table (a replay's small windows:
        the cost is what the window touched), else marked in a bitmap of the table (a live window of
        millions of IDs: sorting 6.4M rows took 730 ms, the bitmap of 4M rows 210 ms)."""
        if not self._window:
            return None
        parts, self._window = self._window, []
        sizes = [r.size for r, _, _ in parts]
        if sum(sizes) * 8 >= self.table_rows:  # a live window touching much of the table: a bitmap, not a sort
            dense = np.zeros((self.table_rows, self.width), dtype=np.uint8)
            for feature_rows, byte, bit in parts:
                dense[feature_rows, byte] |= bit  # repeated rows write the same byte
            rows = np.flatnonzero(dense.any(axis=1)).astype(np.uint32)
            return TouchedRows(rows, dense[rows])
        byte = np.repeat(np.array([b for _, b, _ in parts], dtype=np.intp), sizes)
        bit = np.repeat(np.array([b for _, _, b in parts], dtype=np.uint8), sizes)
        # one sort for every feature's rows (a searchsorted per feature cost 4x more at batch 1024)
        rows, slot = np.unique(np.concatenate([r for r, _, _ in parts]), return_inverse=True)
        bits = np.zeros((rows.size, self.width), dtype=np.uint8)
        np.bitwise_or.at(bits, (slot, byte), bit)
        return TouchedRows(rows, bits)

    def apply(self, window: TouchedRows, step: int) -> None:
        """Merge one rank's touched rows of one window, closed at `step`, into the global state."""
        if window.bits.shape[1:] != (self.width,) or (window.rows.size and int(window.rows.max()) >= self.table_rows):
            raise ValueError(f"touched rows of {window.bits.shape[1:]} bytes per row up to row "
                             f"{int(window.rows.max()) if window.rows.size else None}, expected {self.width} bytes "
                             f"and rows below {self.table_rows} (same schema and table_rows on every rank)")
        self._member[window.rows] |= window.bits
        step32 = np.uint32(min(max(step, 0), np.iinfo(np.uint32).max))
        self._last_step[window.rows] = np.maximum(self._last_step[window.rows], step32)

    def stale_shares(self, step: int, stale_steps: int) -> dict[str, float]:
        """Per feature: the share of the rows it ever touched that no rank updated in the last `stale_steps`."""
        cutoff = step - stale_steps  # stale: last update at or before this step
        old = self._last_step <= cutoff if cutoff >= 0 else None
        bit_of_value = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little")
        members: dict[str, int] = {}
        stale: dict[str, int] = {}
        for byte in range(self.width):  # histogram of byte values, then bits: two passes over M per 8 features
            column = np.ascontiguousarray(self._member[:, byte])
            per_bit = np.bincount(column, minlength=256) @ bit_of_value
            per_bit_old = np.bincount(column[old], minlength=256) @ bit_of_value if old is not None else None
            for f, (b, bit) in self._slot.items():
                if b == byte:
                    i = int(bit).bit_length() - 1
                    members[f] = int(per_bit[i])
                    stale[f] = int(per_bit_old[i]) if per_bit_old is not None else 0
        return {f: stale[f] / members[f] if members[f] else math.nan for f in self.features}

    def rows_touched(self) -> dict[str, int]:
        return {f: int(np.count_nonzero(self._member[:, byte] & bit)) for f, (byte, bit) in self._slot.items()}
