"""The Redis side of churn tracking: publish each rank's window sketches, read the other ranks' back.

Keys (all with the configured TTL; `P` is the key prefix, default `unirec:churn`):

    P:{feature}:{window_start}:{rank}        serialised compact theta sketch of the rank's IDs
    P:@rows:{window_start}:{rank}            zlib of the rows the rank touched (`load.TouchedRows.to_bytes`:
                                             uint32 rows, then ceil(F/8) bytes per row, bit i % 8 of
                                             byte i // 8: feature i touched the row)
    P:@meta:{window_start}:{rank}            JSON: the step at which the rank closed the window, counts
    P:@progress:{rank}                       end (ms) of the latest window the rank has published
    P:@summary:{window_start}                JSON: the merged numbers of every feature (rank 0 writes)
    P:@windows                               sorted set of the window starts that have a summary

Feature names cannot contain ':' or '@' (schema pattern), so these never clash. Writes go through an
outbox: a window's keys, then the rank's progress key, in window order, every window closed since
the last flush in one pipeline; a rank that
reads another's progress >= a window's end knows all its keys for that window are there. While
Redis is unreachable the outbox keeps the windows (bounded) and every call fails fast until
`retry_s` has passed, so an outage costs the trainer's hot path nothing.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
import redis

from core.logs import get_logger, log_event
from trainer.churn.load import TouchedRows
from trainer.churn.settings import ChurnSettings

log = get_logger("churn")
T = TypeVar("T")


class RedisUnavailable(Exception):
    """Redis did not answer (or is in its back-off pause); the caller keeps its data and retries later."""


@dataclass
class RankPart:
    """One rank's contribution to one window."""

    rank: int
    window_start: int
    step: int
    sketches: dict[str, bytes] = field(default_factory=dict)
    rows: TouchedRows | None = None
    """The rows the rank touched in the window (`load.TouchedRows`), if rows were tracked."""
    ids: int = 0


@dataclass
class _Pending:
    window_start: int
    core: list[tuple[str, bytes]]
    bulky: list[tuple[str, bytes]]
    """Row bitmaps: dropped when the window gets too old to be waited for by other ranks."""
    index: tuple[str, int] | None = None
    """(index key, window start) to add to the summary index."""

    @property
    def nbytes(self) -> int:
        return sum(len(k) + len(v) for k, v in self.core + self.bulky)


class Keys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def sketch(self, feature: str, window_start: int, rank: int) -> str:
        return f"{self.prefix}:{feature}:{window_start}:{rank}"

    def rows(self, window_start: int, rank: int) -> str:
        return f"{self.prefix}:@rows:{window_start}:{rank}"

    def meta(self, window_start: int, rank: int) -> str:
        return f"{self.prefix}:@meta:{window_start}:{rank}"

    def progress(self, rank: int) -> str:
        return f"{self.prefix}:@progress:{rank}"

    def summary(self, window_start: int) -> str:
        return f"{self.prefix}:@summary:{window_start}"

    @property
    def index(self) -> str:
        return f"{self.prefix}:@windows"


class RedisExchange:
    def __init__(
        self, url: str, settings: ChurnSettings, rank: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.url = url
        self.settings = settings
        self.rank = rank
        self.keys = Keys(settings.key_prefix)
        self._clock = clock
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=settings.redis_timeout_s,
            socket_connect_timeout=settings.redis_timeout_s,
            retry_on_timeout=False,
        )
        self._outbox: deque[_Pending] = deque()
        self._outbox_bytes = 0
        self._down_until = 0.0
        self._down_since: float | None = None
        self.dropped_windows = 0

    # --- connection state ---------------------------------------------------------------------------

    @property
    def reachable(self) -> bool:
        """False while in the back-off pause after a failed call."""
        return self._clock() >= self._down_until

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        if not self.reachable:
            raise RedisUnavailable(what)
        try:
            result = fn()
        except (redis.RedisError, OSError) as exc:
            self._down_until = self._clock() + self.settings.retry_s
            if self._down_since is None:
                self._down_since = self._clock()
                log_event(log, "churn redis unreachable", logging.WARNING, url=self.url, op=what, error=str(exc))
            raise RedisUnavailable(what) from exc
        if self._down_since is not None:
            log_event(log, "churn redis back", url=self.url, down_s=round(self._clock() - self._down_since, 1),
                      pending_windows=len(self._outbox))
            self._down_since = None
        return result

    # --- writes -------------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Windows written locally but not yet in Redis."""
        return len(self._outbox)

    def publish_part(self, part: RankPart, window_end: int, with_rows: bool) -> None:
        k = self.keys
        core = [(k.sketch(f, part.window_start, part.rank), data) for f, data in part.sketches.items()]
        meta = {"rank": part.rank, "window_start": part.window_start, "step": part.step, "ids": part.ids}
        core.append((k.meta(part.window_start, part.rank), orjson.dumps(meta, option=orjson.OPT_SERIALIZE_NUMPY)))
        core.append((k.progress(part.rank), str(window_end).encode()))
        bulky = []
        if with_rows and part.rows is not None:
            bulky = [(k.rows(part.window_start, part.rank), zlib.compress(part.rows.to_bytes(), 1))]
        self._enqueue(_Pending(part.window_start, core, bulky))

    def publish_summary(self, window_start: int, summary: dict[str, Any]) -> None:
        payload = orjson.dumps(summary, option=orjson.OPT_SERIALIZE_NUMPY)
        entry = _Pending(window_start, [(self.keys.summary(window_start), payload)], [])
        entry.index = (self.keys.index, window_start)
        self._enqueue(entry)

    @property
    def outbox_filling(self) -> bool:
        """Half the outbox bound reached while Redis is reachable: flush now rather than drop windows later."""
        return self.reachable and 2 * len(self._outbox) >= self.settings.max_pending_windows

    @property
    def pending_bytes(self) -> int:
        """Bytes of keys and values in the outbox (kept as a running total: it is read on every enqueue)."""
        return self._outbox_bytes

    def _pop(self) -> _Pending:
        entry = self._outbox.popleft()
        self._outbox_bytes -= entry.nbytes
        return entry

    def _enqueue(self, entry: _Pending) -> None:
        self._outbox.append(entry)
        self._outbox_bytes += entry.nbytes
        budget = self.settings.max_pending_mib * 2**20
        while len(self._outbox) > 1 and (
            len(self._outbox) > self.settings.max_pending_windows or self.pending_bytes > budget
        ):
            old = self._pop()
            self.dropped_windows += 1
            log_event(log, "churn window dropped from outbox", logging.WARNING, window_start=old.window_start,
                      max_pending_windows=self.settings.max_pending_windows,
                      max_pending_mib=self.settings.max_pending_mib)

    def drop_bulky_before(self, window_start: int) -> None:
        """Forget row bitmaps of windows older than `window_start` that are still waiting (they are large)."""
        for entry in self._outbox:
            if entry.window_start < window_start and entry.bulky:
                self._outbox_bytes -= entry.nbytes
                entry.bulky = []
                self._outbox_bytes += entry.nbytes

    def flush(self) -> bool:
        """Write the whole outbox in order, in one pipeline (one round trip however many windows closed
        since the last flush); True when it is empty afterwards. On failure everything stays queued: the
        writes are idempotent, so a partly applied pipeline is simply written again."""
        if not self._outbox:
            return True
        ttl = self.settings.ttl_s
        entries = list(self._outbox)

        def write() -> None:
            pipe = self._client.pipeline(transaction=False)
            indexed: dict[str, dict[str, int]] = {}
            for entry in entries:
                for key, value in entry.bulky + entry.core:
                    pipe.set(key, value, ex=ttl)
                if entry.index is not None:
                    index, start = entry.index
                    indexed.setdefault(index, {})[str(start)] = start
            for index, starts in indexed.items():  # after the summaries they index; trimmed once per flush
                pipe.zadd(index, starts)
                pipe.zremrangebyrank(index, 0, -self.settings.keep_summaries - 1)
                pipe.expire(index, ttl)
            pipe.execute()

        try:
            self._call("publish", write)
        except RedisUnavailable:
            return False
        for _ in entries:
            self._pop()
        return True

    # --- reads --------------------------------------------------------------------------------------

    def progress(self, ranks: Sequence[int]) -> dict[int, int]:
        """The latest published window end of each rank (ranks that published nothing are absent)."""
        values = self._call("progress", lambda: self._client.mget([self.keys.progress(r) for r in ranks]))
        return {r: int(v) for r, v in zip(ranks, values, strict=True) if v is not None}

    def fetch_parts(
        self, requests: Sequence[tuple[int, int]], features: Sequence[str], rows_shape: tuple[int, int] | None
    ) -> dict[tuple[int, int], RankPart | None]:
        """Other ranks' parts of windows, for each (rank, window start) requested, in one MGET (one round
        trip however many windows a merge round takes); None for a part never published. `rows_shape`:
        fetch the touched-rows matrices too (None: do not)."""
        k = self.keys
        names: list[str] = []
        for rank, start in requests:
            names += [k.meta(start, rank)] + [k.sketch(f, start, rank) for f in features]
            if rows_shape is not None:
                names.append(k.rows(start, rank))
        if not names:
            return {}
        values = self._call("fetch", lambda: self._client.mget(names))
        per = len(names) // len(requests)
        return {
            request: self._part(*request, values[i * per : (i + 1) * per], features, rows_shape)
            for i, request in enumerate(requests)
        }

    def _part(
        self, rank: int, window_start: int, values: list[Any], features: Sequence[str],
        rows_shape: tuple[int, int] | None,
    ) -> RankPart | None:  # fmt: skip
        if values[0] is None:
            return None
        meta = orjson.loads(values[0])
        n = len(features)
        part = RankPart(rank, window_start, int(meta["step"]), ids=int(meta.get("ids", 0)))
        part.sketches = {f: v for f, v in zip(features, values[1 : 1 + n], strict=True) if v is not None}
        if rows_shape is not None and values[1 + n] is not None:
            table_rows, width = rows_shape
            try:
                part.rows = TouchedRows.from_bytes(zlib.decompress(values[1 + n]), width, table_rows)
            except ValueError as exc:
                log_event(log, "churn rows of another rank ignored: other table size or schema", logging.WARNING,
                          rank=rank, window_start=window_start, error=str(exc), expected=rows_shape)
        return part

    def close(self) -> None:
        self._client.close()


def read_summaries(client: redis.Redis, prefix: str, last: int) -> list[dict[str, Any]]:
    """The summaries of the `last` most recent merged windows, oldest first (for `unirec churn report`)."""
    keys = Keys(prefix)
    starts = client.zrevrange(keys.index, 0, max(last, 1) - 1)
    if not starts:
        return []
    values = client.mget([keys.summary(int(s)) for s in starts])
    docs = [orjson.loads(v) for v in values if v is not None]
    return sorted(docs, key=lambda d: d["window_start_ms"])
