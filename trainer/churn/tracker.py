"""ChurnTracker: vocabulary churn of every feature, per window of event time, merged over ranks.

The trainer calls `observe` once per batch with the batch's fingerprints (what `Featurizer` puts in
the KJT), its event times, optionally the unified-table rows each feature touched, and the step:

    tracker = ChurnTracker(schema, ChurnSettings(), table_rows=M, rank=r, world_size=w,
                           redis_url=settings.redis_url, registry=registry)
    tracker.observe(fingerprints_of(batch.sparse), event_ts_ms, rows_of(schema, *method.rows(batch.sparse)),
                    step=step)
    ...
    tracker.close()

Hot path: one vectorised hash of every ID of the batch, per feature a handful of sketch updates (see
`sketches.WindowSketch`), the touched rows kept for the window, and no network I/O. A window closes
when a batch of a later window arrives (windows are aligned to the epoch; a batch belongs to the
window of its largest event time, late batches count in the open window), so closing costs what the
window touched (a replay of old events can close a window every batch). With one rank the window
is merged at once and its summary goes to an outbox written to Redis at most every second (or when
half full), in one pipeline for all windows closed meanwhile. With more ranks the rank's part
(sketches, touched rows) is published at close and the
window merged once every rank has published it (or `finalize_grace_windows` later with the parts at
hand), in window order, so every rank computes the same global numbers.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import datasketches as ds
import numpy as np
from prometheus_client import CollectorRegistry

from core.logs import get_logger, log_event
from embedding.schema import FeatureSchema
from trainer.churn.exchange import RankPart, RedisExchange, RedisUnavailable
from trainer.churn.load import RowTracker, table_load
from trainer.churn.metrics import ChurnMetrics
from trainer.churn.settings import ChurnSettings
from trainer.churn.sketches import (
    FeatureHistory,
    FeatureWindowStats,
    WindowSketch,
    as_int64,
    deserialize,
    empty_sketch,
    serialize,
    sketch_bytes,
    theta_hashes,
    union,
)

log = get_logger("churn")

_POLL_S = 1.0
"""How often (wall clock) a rank waiting for other ranks' parts asks Redis again."""
_PUBLISH_S = 0.25
"""With more ranks, a closed window's part goes to Redis with the first batch this long after its close,
together with every part closed meanwhile (a replay closes a window every batch: one round trip each
cost a fifth of a rank's time)."""
_GRACE_S = 2.0
"""Wall-clock floor of `finalize_grace_windows`: a window is not merged without the other ranks' parts
before this long after its close, so parts published every `_PUBLISH_S` arrive in time in a replay."""


@dataclass
class _OpenWindow:
    start: int
    sketches: dict[str, WindowSketch] = field(default_factory=dict)
    step: int = 0
    ids: int = 0


@dataclass
class _ClosedWindow:
    part: RankPart
    compacts: dict[str, ds.compact_theta_sketch]
    seq: int
    """Number of windows closed here up to and including this one."""
    closed_at: float
    """The tracker's clock at the close."""


class ChurnTracker:
    def __init__(
        self,
        schema: FeatureSchema,
        settings: ChurnSettings | None = None,
        table_rows: int = 1,
        rank: int = 0,
        world_size: int = 1,
        redis_url: str | None = None,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank} world_size={world_size}")
        if table_rows < 1:
            raise ValueError(f"table_rows must be >= 1 (rows of the unified table), got {table_rows}")
        self.schema = schema
        self.settings = settings or ChurnSettings()
        self.table_rows = table_rows
        self.rank = rank
        self.world_size = world_size
        self.features = schema.sparse_names
        self._known = set(self.features)
        self.lookups = {spec.name: spec.lookups for spec in schema.sparse}
        s = self.settings
        self._window_ms = s.window_ms
        self._history = {
            f: FeatureHistory(f, s.lg_k, s.union_lg_k, s.history_windows, s.window_s) for f in self.features
        }
        self._rows: RowTracker | None = None
        self._stale: dict[str, float] | None = None
        """The stale share of each feature's rows, as of step `_stale_step` (see `_stale_shares`)."""
        self._stale_step = 0
        self._exchange = RedisExchange(redis_url, s, rank, clock) if redis_url else None
        self._metrics = ChurnMetrics(registry, self.features) if registry is not None else None
        self._clock = clock
        self._open: _OpenWindow | None = None
        self._waiting: deque[_ClosedWindow] = deque()
        self._closed = 0
        self._closed_starts: deque[int] = deque(maxlen=s.finalize_grace_windows + 2)
        self._next_poll = 0.0
        self.late_batches = 0
        self.windows_merged = 0
        self.windows_partial = 0
        self.last_stats: dict[str, FeatureWindowStats] = {}
        self.last_summary: dict[str, Any] | None = None
        self.summaries: deque[dict[str, Any]] = deque(maxlen=64)
        """The summaries of the latest merged windows (what rank 0 writes to Redis), oldest first."""
        if world_size > 1 and self._exchange is None:
            log_event(log, "churn without redis: numbers are this rank's only", logging.WARNING, rank=rank,
                      world_size=world_size)
        log_event(log, "churn tracker", rank=rank, world_size=world_size, table_rows=table_rows,
                  redis=bool(redis_url), features=len(self.features), **s.model_dump())

    # --- hot path -----------------------------------------------------------------------------------

    def observe(
        self,
        fingerprints: Mapping[str, np.ndarray],
        event_ts_ms: np.ndarray | int,
        rows: Mapping[str, np.ndarray] | None = None,
        *,
        step: int,
    ) -> None:
        """Add one batch: fingerprints per feature (int64), event times (ms; array or the batch's time),
        optionally the unified-table rows each feature touched, and the trainer's step."""
        if not self.settings.enabled:
            return
        ts = _batch_time(event_ts_ms)
        if ts is None:
            if self._open is None:
                return
            ts = self._open.start
        start = ts - ts % self._window_ms
        if self._open is None:
            self._open = _OpenWindow(start)
        elif start > self._open.start:
            self._close_open()
            self._open = _OpenWindow(start)
        elif start < self._open.start:
            self.late_batches += 1
        window = self._open
        columns = {f: as_int64(v) for f, v in fingerprints.items()}
        hashes = theta_hashes(np.concatenate(list(columns.values()))) if columns else np.empty(0, np.uint64)
        offset = 0
        for feature, values in columns.items():
            sketch = window.sketches.get(feature)
            if sketch is None:
                self._check_feature(feature, "fingerprints")
                sketch = window.sketches[feature] = WindowSketch(self.settings.lg_k)
            sketch.update(values, hashes[offset : offset + values.size])  # one hash call for all features
            offset += values.size
        if rows:
            if self._rows is None:
                self._rows = RowTracker(self.features, self.table_rows)
            for feature, feature_rows in rows.items():
                self._check_feature(feature, "rows")
                self._rows.touch(feature, feature_rows)
        window.step = max(window.step, step)
        window.ids += sum(int(np.size(v)) for v in fingerprints.values())
        exchange = self._exchange
        due = self._clock() >= self._next_poll or (exchange is not None and exchange.outbox_filling)
        if due and (self._waiting or (exchange is not None and exchange.pending)):
            self._progress()

    def _check_feature(self, feature: str, what: str) -> None:
        if feature not in self._known:
            raise ValueError(f"{what} for feature {feature!r}, which schema {self.schema.name!r} does not have; "
                             f"expected one of {self.features}")

    # --- window close, publication, merge -----------------------------------------------------------

    def flush(self) -> None:
        """Close the open window now (at shutdown or in tests) and try to publish and merge."""
        if self._open is not None:
            self._close_open()
        self._progress()

    def close(self) -> None:
        """Flush, publish what Redis takes, release the connection. Windows still waiting for other ranks
        are merged from the parts at hand."""
        self.flush()
        progress: dict[int, int] = {}  # one read and one MGET for every window still waiting
        fetched: dict[tuple[int, int], RankPart | None] = {}
        while self._waiting:
            self._finalize_head(force=True, progress=progress, fetched=fetched)
        if self._exchange is not None:
            self._exchange.flush()
            if self._exchange.pending:
                log_event(log, "churn closed with unpublished windows", logging.WARNING,
                          pending=self._exchange.pending)
            self._exchange.close()

    def _close_open(self) -> None:
        window, self._open = self._open, None
        assert window is not None
        compacts = {f: sk.compact() for f, sk in window.sketches.items() if sk.ids_seen}
        touched = self._rows.take_window() if self._rows is not None else None
        part = RankPart(self.rank, window.start, window.step, {f: serialize(c) for f, c in compacts.items()},
                        touched, window.ids)
        self._closed += 1
        self._closed_starts.append(window.start)
        self._waiting.append(_ClosedWindow(part, compacts, self._closed, self._clock()))
        if self._exchange is not None and self.world_size > 1:  # parts are for the other ranks' merges
            self._exchange.publish_part(part, window.start + self._window_ms, with_rows=True)
            if len(self._closed_starts) == self._closed_starts.maxlen:
                self._exchange.drop_bulky_before(self._closed_starts[0])
        if self.world_size == 1:  # nothing to wait for: merge now; Redis gets it at the next poll
            while self._waiting:
                self._finalize_head(force=False, progress={}, fetched={})
        else:  # the other ranks wait for this part (finalize_grace_windows): publish it soon
            self._next_poll = min(self._next_poll, self._clock() + _PUBLISH_S)

    def _progress(self) -> None:
        self._next_poll = self._clock() + min(_POLL_S, self.settings.retry_s or _POLL_S)
        if self._exchange is not None:
            self._exchange.flush()
        progress: dict[int, int] = {}  # read once for every window this round merges
        fetched: dict[tuple[int, int], RankPart | None] = {}
        while self._waiting and self._finalize_head(force=False, progress=progress, fetched=fetched):
            pass
        if self._exchange is not None and self._exchange.pending:
            self._exchange.flush()

    def _finalize_head(
        self, force: bool, progress: dict[int, int], fetched: dict[tuple[int, int], RankPart | None]
    ) -> bool:
        """Merge the oldest waiting window if every rank's part is there (or it is overdue); True if merged.
        `progress`: the other ranks' published progress, read from Redis into it when empty, and with it
        into `fetched` the parts of every waiting window all other ranks have published (one MGET)."""
        head = self._waiting[0]
        parts = [head.part]
        remote: list[RankPart] = []
        complete = self.world_size == 1
        if self.world_size > 1 and self._exchange is not None:
            others = [r for r in range(self.world_size) if r != self.rank]
            overdue = force or (
                self._closed - head.seq >= self.settings.finalize_grace_windows
                and self._clock() - head.closed_at >= _GRACE_S
            )
            end = head.part.window_start + self._window_ms
            try:
                shape = (self.table_rows, self._rows.width) if self._rows is not None else None
                if not progress:
                    progress.update(self._exchange.progress(others))
                    published = [
                        w.part.window_start for w in self._waiting
                        if all(progress.get(r, -1) >= w.part.window_start + self._window_ms for r in others)
                    ]  # fmt: skip
                    requests = [(r, start) for start in published for r in others]
                    if requests:
                        fetched.update(self._exchange.fetch_parts(requests, self.features, shape))
                ready = [r for r in others if progress.get(r, -1) >= end]
                if len(ready) < len(others) and not overdue:
                    return False
                missing = [(r, head.part.window_start) for r in ready if (r, head.part.window_start) not in fetched]
                if missing:  # overdue: the parts of the ranks that published it
                    fetched.update(self._exchange.fetch_parts(missing, self.features, shape))
                for r in ready:
                    part = fetched.pop((r, head.part.window_start))
                    if part is not None:
                        remote.append(part)
                complete = len(ready) == len(others)
            except RedisUnavailable:
                if not overdue:
                    return False
        self._waiting.popleft()
        self._finalize(head, parts + remote, remote, complete)
        return True

    def _finalize(self, head: _ClosedWindow, parts: list[RankPart], remote: list[RankPart], complete: bool) -> None:
        start = head.part.window_start
        stats: dict[str, FeatureWindowStats] = {}
        for f in self.features:
            sketches: list[ds.theta_sketch] = [head.compacts[f]] if f in head.compacts else []
            sketches += [deserialize(p.sketches[f]) for p in remote if f in p.sketches]
            if not sketches:
                merged = empty_sketch()
            elif len(sketches) == 1:  # already trimmed to lg_k: a union of one would copy it unchanged
                merged = sketches[0]
            else:
                merged = union(sketches, self.settings.lg_k)
            stats[f] = self._history[f].advance(merged, start)
        load = table_load(self.table_rows, {f: s.distinct for f, s in stats.items()}, self.lookups)
        for f, (occupied, collisions) in load.items():
            stats[f].occupied_rows, stats[f].collision_rate = occupied, collisions
        step = max(p.step for p in parts)
        for p in parts:
            if p.rows is not None and self._rows is not None:
                self._rows.apply(p.rows, p.step)
        if self._rows is not None:
            for f, share in self._stale_shares(step).items():
                stats[f].stale_share = share
        self.windows_merged += 1
        self.windows_partial += not complete
        summary = {
            "window_start_ms": start,
            "window_s": self.settings.window_s,
            "table_rows": self.table_rows,
            "world_size": self.world_size,
            "ranks_merged": len(parts),
            "complete": complete,
            "step": step,
            "ids_observed": sum(p.ids for p in parts),
            "stale_steps": self.settings.stale_steps,
            "features": {f: {**s.to_json(), "lookups": self.lookups[f]} for f, s in stats.items()},
        }
        self.last_stats, self.last_summary = stats, summary
        self.summaries.append(summary)
        if self._metrics is not None:
            self._metrics.set_window(stats.values())
        if self._exchange is not None and self.rank == 0:
            self._exchange.publish_summary(start, summary)
        level = logging.INFO if complete else logging.WARNING
        totals = {k: round(sum(getattr(s, k) for s in stats.values())) for k in ("distinct", "new", "vanished")}
        log_event(log, "churn window merged", level, window_start_ms=start, complete=complete,
                  ranks_merged=len(parts), **totals)

    def _stale_shares(self, step: int) -> dict[str, float]:
        """`RowTracker.stale_shares`, a pass over every row of the table, recomputed once the step moved
        `stale_steps / 16` past the last pass (not every window: a replay closes one per batch)."""
        assert self._rows is not None
        if self._stale is None or step - self._stale_step >= max(1, self.settings.stale_steps // 16):
            self._stale, self._stale_step = self._rows.stale_shares(step, self.settings.stale_steps), step
        return self._stale

    # --- introspection ------------------------------------------------------------------------------

    @property
    def pending_windows(self) -> int:
        """Windows closed here but not yet in Redis (their parts or summaries)."""
        return self._exchange.pending if self._exchange is not None else 0

    @property
    def waiting_windows(self) -> int:
        """Windows closed here, waiting for other ranks' parts before they are merged."""
        return len(self._waiting)

    def memory_bytes(self) -> dict[str, int]:
        """Memory held: sketch entries (8 bytes each; an update sketch's hash table is at most twice its
        entries), waiting windows' parts, row arrays."""
        open_bytes = 0
        if self._open is not None:
            open_bytes = sum(2 * sketch_bytes(sk.sketch) for sk in self._open.sketches.values())
        waiting = sum(
            sum(sketch_bytes(c) for c in w.compacts.values()) + (w.part.rows.nbytes if w.part.rows is not None else 0)
            for w in self._waiting
        )
        return {
            "open_window": open_bytes,
            "history": sum(h.memory_bytes() for h in self._history.values()),
            "waiting": waiting,
            "rows": self._rows.memory_bytes if self._rows is not None else 0,
        }


def _batch_time(event_ts_ms: np.ndarray | int) -> int | None:
    if isinstance(event_ts_ms, int | np.integer):
        return int(event_ts_ms)
    arr = np.asarray(event_ts_ms)
    return int(arr.max()) if arr.size else None


def fingerprints_of(kjt: Any) -> dict[str, np.ndarray]:
    """Per-feature int64 fingerprints of a KeyedJaggedTensor (numpy views, no copies)."""
    values = np.asarray(kjt.values())
    out, offset = {}, 0
    for key, n in zip(kjt.keys(), kjt.length_per_key(), strict=True):
        out[key] = values[offset : offset + n]
        offset += n
    return out


def rows_of(schema: FeatureSchema, rows: Any, lengths: Any) -> dict[str, np.ndarray]:
    """Split `UnifiedEmbedding.rows(kjt)` (rows of every lookup, key-major, and their lengths) per feature."""
    rows_np, lengths_np = np.asarray(rows), np.asarray(lengths)
    n_keys = sum(spec.lookups for spec in schema.sparse)
    if lengths_np.size % n_keys:
        raise ValueError(f"lengths of size {lengths_np.size} is not a multiple of the schema's {n_keys} lookup keys")
    per_key = lengths_np.reshape(n_keys, -1).sum(axis=1)
    out, offset, key = {}, 0, 0
    for spec in schema.sparse:
        n = int(per_key[key : key + spec.lookups].sum())
        out[spec.name] = rows_np[offset : offset + n]
        offset, key = offset + n, key + spec.lookups
    return out
