"""Churn across ranks through a real Redis: merged numbers, outage and catch-up, the report command."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import orjson
import pytest
import redis
from typer.testing import CliRunner

from core.net import free_port
from embedding.schema import load_schema, parse_schema
from trainer.churn import ChurnSettings, ChurnTracker
from trainer.churn.exchange import Keys, read_summaries
from trainer.churn.report import churn_app
from unirec.infra import LocalServer

pytestmark = pytest.mark.integration

TABLE_ROWS = 1 << 16
SCHEMA = parse_schema(
    {"name": "t", "sparse": [{"name": "user", "dtype": "int"}, {"name": "item", "dtype": "int", "lookups": 2}]}
)


def _clock() -> object:
    ticks = itertools.count(step=10.0)
    return lambda: next(ticks)  # every call is 10 s later: polls and retries are always due


def _stream(windows: int, seed: int = 0) -> list[list[dict[str, np.ndarray]]]:
    """Per window, 8 batches of IDs with repeats; 25% of each window's IDs are new, 25% of the previous vanish."""
    rng = np.random.default_rng(seed)
    out = []
    for w in range(windows):
        users = np.arange(w * 10_000, w * 10_000 + 40_000, dtype=np.int64)
        items = np.arange(w * 500, w * 500 + 2_000, dtype=np.int64) + 10**12
        batches = []
        for _ in range(8):
            batches.append({"user": rng.choice(users, 12_000), "item": rng.choice(items, 3_000)})
        out.append(batches)
    return out


def _rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {f: np.abs(v) % TABLE_ROWS for f, v in batch.items()}


def _feed(trackers: list[ChurnTracker], stream: list[list[dict[str, np.ndarray]]], window_s: float) -> None:
    """Batch b of every window goes to rank b % len(trackers): disjoint partitions of the events."""
    step = 0
    for w, batches in enumerate(stream):
        for b, batch in enumerate(batches):
            step += 1
            tracker = trackers[b % len(trackers)]
            tracker.observe(batch, int(w * window_s * 1000) + b, _rows(batch), step=step // len(trackers))
    for tracker in trackers + trackers:
        tracker.flush()


def _features(summary: dict[str, object]) -> dict[str, object]:
    return summary["features"]  # type: ignore[return-value]


def test_two_ranks_report_the_same_global_numbers_as_one_rank(redis_url: str, request: pytest.FixtureRequest) -> None:
    stream = _stream(4)
    settings = ChurnSettings(window_s=60, lg_k=12, union_lg_k=14, key_prefix=f"test:{request.node.name}:two")
    ranks = [
        ChurnTracker(SCHEMA, settings, TABLE_ROWS, rank=r, world_size=2, redis_url=redis_url, clock=_clock())
        for r in range(2)
    ]
    _feed(ranks, stream, 60)
    single_settings = settings.model_copy(update={"key_prefix": f"test:{request.node.name}:one"})
    single = ChurnTracker(SCHEMA, single_settings, TABLE_ROWS, redis_url=redis_url, clock=_clock())
    _feed([single], stream, 60)

    assert [len(t.summaries) for t in ranks + [single]] == [4, 4, 4]
    for s0, s1, one in zip(ranks[0].summaries, ranks[1].summaries, single.summaries, strict=True):
        assert s0["complete"] and s0["ranks_merged"] == 2 and s0["ids_observed"] == one["ids_observed"]
        assert _features(s0) == _features(s1)  # every rank computes exactly the same numbers
        for feature, mine in _features(s0).items():
            theirs = _features(one)[feature]
            for key in ("distinct", "new", "vanished", "jaccard", "occupied_rows", "collision_rate", "survival"):
                if theirs[key] is None:  # NaN (first window: no Jaccard, no survival)
                    assert mine[key] is None, (feature, key)
                else:
                    assert mine[key] == pytest.approx(theirs[key], rel=1e-9), (feature, key)
            # staleness is resolved to windows across ranks, so it matches up to one window's steps
            assert mine["stale_share"] == pytest.approx(theirs["stale_share"], abs=0.02)
    last = _features(ranks[0].summaries[-1])["user"]
    assert last["distinct"] == pytest.approx(40_000 * (1 - np.exp(-12_000 * 8 / 40_000)), rel=0.05)

    client = redis.Redis.from_url(redis_url)
    summaries = read_summaries(client, settings.key_prefix, last=10)
    assert [s["window_start_ms"] for s in summaries] == [0, 60_000, 120_000, 180_000]
    keys = Keys(settings.key_prefix)
    assert client.exists(keys.sketch("user", 0, 0), keys.sketch("user", 0, 1), keys.rows(0, 1)) == 3
    assert 0 < client.ttl(keys.sketch("user", 0, 1)) <= settings.ttl_s
    for tracker in ranks + [single]:
        tracker.close()


def test_a_merge_round_reads_every_published_window_in_one_round_trip(
    redis_url: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rank 0 waits on windows rank 1 has published meanwhile: one MGET brings the parts of all of them."""
    settings = ChurnSettings(window_s=60, lg_k=12, union_lg_k=14, key_prefix=f"test:{request.node.name}")
    ranks = [ChurnTracker(SCHEMA, settings, TABLE_ROWS, rank=r, world_size=2, redis_url=redis_url) for r in range(2)]
    stream = _stream(4)
    for r, tracker in enumerate(ranks):  # the monotonic clock: nothing is due within the test's few ms
        for w, batches in enumerate(stream):
            batch = batches[r]
            tracker.observe(batch, w * 60_000, _rows(batch), step=w)
    ranks[1].flush()  # windows 0-3 published; rank 1 waits for rank 0's parts
    assert ranks[0].waiting_windows == 3 and ranks[0].windows_merged == 0
    exchange = ranks[0]._exchange
    calls: list[int] = []
    fetch_parts = exchange.fetch_parts
    monkeypatch.setattr(
        exchange, "fetch_parts", lambda requests, *a: calls.append(len(requests)) or fetch_parts(requests, *a)
    )
    ranks[0].flush()
    assert ranks[0].windows_merged == 4 and calls == [4], calls
    assert all(s["complete"] and s["ranks_merged"] == 2 for s in ranks[0].summaries)
    for tracker in ranks:
        tracker.close()


def test_tracker_keeps_going_while_redis_is_down_and_catches_up(tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    settings = ChurnSettings(window_s=1, retry_s=0, redis_timeout_s=0.2, key_prefix="test:outage")
    tracker = ChurnTracker(SCHEMA, settings, TABLE_ROWS, redis_url=url, clock=_clock())
    stream = _stream(4, seed=1)
    for w, batches in enumerate(stream[:3]):
        for batch in batches:
            tracker.observe(batch, w * 1000, step=w)
    tracker.flush()
    assert tracker.windows_merged == 3  # merged locally while Redis is down
    assert tracker.pending_windows == 3  # each window's summary waits in the outbox (one rank: no parts)

    server = LocalServer("redis", "127.0.0.1", port, tmp_path)
    server.start(timeout=30)
    try:
        for batch in stream[3]:
            tracker.observe(batch, 3000, step=3)
        assert tracker.pending_windows == 0
        client = redis.Redis.from_url(url)
        starts = [s["window_start_ms"] for s in read_summaries(client, settings.key_prefix, last=10)]
        assert starts == [0, 1000, 2000]
        assert client.exists(*(Keys(settings.key_prefix).sketch("user", w * 1000, 0) for w in range(3))) == 0
        tracker.close()
        assert [s["window_start_ms"] for s in read_summaries(client, settings.key_prefix, last=10)][-1] == 3000
        assert tracker.last_stats["user"].new == pytest.approx(10_000 * (1 - np.exp(-12_000 * 8 / 40_000)), rel=0.1)
    finally:
        server.stop()


def test_report_command_reads_the_windows_and_sizes_the_table(redis_url: str, request: pytest.FixtureRequest) -> None:
    prefix = f"test:{request.node.name}"
    settings = ChurnSettings(window_s=60, key_prefix=prefix)
    tracker = ChurnTracker(SCHEMA, settings, table_rows=1000, redis_url=redis_url, clock=_clock())
    tracker.observe({"user": np.arange(100), "item": np.arange(50)}, 0, step=1)
    tracker.observe({"user": np.arange(50, 150), "item": np.arange(50)}, 60_000, step=2)
    tracker.close()
    runner = CliRunner()
    args = ["--redis-url", redis_url, "--key-prefix", prefix, "--target-collision", "0.05"]
    result = runner.invoke(churn_app, ["report", *args], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "user" in result.output and "rows needed" in result.output and "1,000 rows now" in result.output
    doc = orjson.loads(runner.invoke(churn_app, ["report", *args, "--json"]).output)
    assert [w["window_start_ms"] for w in doc["windows"]] == [0, 60_000]
    # 100 users + 50 items x 2 lookups = 200 balls; an item ID collides if either of its rows is shared
    sizing = doc["sizing"]
    assert sizing["balls"] == 200 and sizing["rows_needed"] == sizing["features"]["item"]["rows_needed"]
    assert sizing["rows_needed"] == pytest.approx(2 * 198 / 0.0513, rel=0.02)
    missing = runner.invoke(churn_app, ["report", "--redis-url", redis_url, "--key-prefix", "test:nothing"])
    assert missing.exit_code == 1


def test_lookups_command_allocates_from_the_windows(
    redis_url: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """16x the distinct IDs -> 2x the lookups (fourth-root rule); the written YAML is a loadable schema."""
    prefix = f"test:{request.node.name}"
    settings = ChurnSettings(window_s=60, key_prefix=prefix)
    tracker = ChurnTracker(SCHEMA, settings, table_rows=1000, redis_url=redis_url, clock=_clock())
    tracker.observe({"user": np.arange(1600), "item": np.arange(100)}, 0, step=1)
    tracker.observe({"user": np.arange(1600), "item": np.arange(100)}, 60_000, step=2)
    tracker.close()
    base = tmp_path / "t.yaml"
    base.write_text(orjson.dumps(SCHEMA.model_dump(mode="json")).decode())  # JSON is YAML
    out = tmp_path / "multi.yaml"
    args = ["lookups", "--schema", str(base), "--total-width", "96", "--embedding-dim", "16", "--write", str(out)]
    result = CliRunner().invoke(
        churn_app, [*args, "--redis-url", redis_url, "--key-prefix", prefix], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    multi = load_schema(out)
    assert {s.name: s.lookups for s in multi.sparse} == {"user": 4, "item": 2}
    assert multi.total_width == 96
    # the schema's own estimates (none here: both features get the mean) split evenly
    even = CliRunner().invoke(churn_app, [*args, "--from-schema"])
    assert even.exit_code == 0, even.output
    assert {s.name: s.lookups for s in load_schema(out).sparse} == {"user": 3, "item": 3}
    bad = CliRunner().invoke(churn_app, ["lookups", "--schema", str(base), "--total-width", "100", "--from-schema"])
    assert bad.exit_code == 2 and "multiple of the embedding_dim 16" in bad.output


def test_one_rank_batches_redis_writes_without_dropping_windows(redis_url: str, request: pytest.FixtureRequest) -> None:
    """A replay closes a window almost every batch: writes are batched per poll, yet a full outbox is
    flushed early rather than dropping windows."""
    prefix = f"test:{request.node.name}"
    settings = ChurnSettings(window_s=1, max_pending_windows=8, key_prefix=prefix)
    tracker = ChurnTracker(SCHEMA, settings, TABLE_ROWS, redis_url=redis_url, clock=lambda: 0.0)  # no poll due
    for w in range(40):
        tracker.observe({"user": np.arange(w, w + 100), "item": np.arange(10)}, w * 1000, step=w)
    assert tracker.windows_merged == 39  # one rank: merged at close, Redis or not
    assert tracker._exchange is not None and tracker._exchange.dropped_windows == 0
    assert tracker.pending_windows < 8
    tracker.close()
    starts = [s["window_start_ms"] for s in read_summaries(redis.Redis.from_url(redis_url), prefix, last=100)]
    assert starts == [w * 1000 for w in range(40)]


def test_the_summary_index_keeps_the_latest_windows_when_one_flush_writes_many(
    redis_url: str, request: pytest.FixtureRequest
) -> None:
    """Windows flushed together are indexed together: the index still keeps exactly the latest
    `keep_summaries` windows, and every window it names has its summary."""
    prefix = f"test:{request.node.name}"
    settings = ChurnSettings(window_s=1, keep_summaries=5, key_prefix=prefix)
    tracker = ChurnTracker(SCHEMA, settings, TABLE_ROWS, redis_url=redis_url, clock=lambda: 0.0)  # no poll due
    for w in range(12):
        tracker.observe({"user": np.arange(w, w + 100), "item": np.arange(10)}, w * 1000, step=w)
    tracker.close()  # one flush: 12 windows
    client = redis.Redis.from_url(redis_url)
    assert client.zcard(Keys(prefix).index) == 5
    starts = [s["window_start_ms"] for s in read_summaries(client, prefix, last=100)]
    assert starts == [w * 1000 for w in range(7, 12)]
    assert 0 < client.ttl(Keys(prefix).index) <= settings.ttl_s
