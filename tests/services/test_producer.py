"""The producer: datasets replayed into a real broker come back equal to their source rows."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from embedding.events import Event
from services import datasets
from services.producer import TokenBucket, looped, replay
from services.replay.reader import BadRowReport, iter_events
from tests.services.conftest import consume


def test_token_bucket_paces_to_the_rate_and_catches_up_after_a_stall() -> None:
    now = [0.0]
    bucket = TokenBucket(1000, burst=10, clock=lambda: now[0])
    for _ in range(5000):
        now[0] += bucket.delay()  # sleeping exactly as told
    assert 4.99 <= now[0] <= 5.0  # 5000 events at 1000/s, no burst at the start
    now[0] += 1.0  # held up for a second: at most `burst` events go without waiting
    free = 0
    while bucket.delay() == 0:
        free += 1
    assert free == 10


def test_batched_waits_keep_the_average_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(2000, clock=lambda: now[0])
    for _ in range(20_000):
        wait = bucket.delay()
        if wait > 0.002:
            now[0] += wait + 0.0005  # sleep overshoots by 0.5 ms each time
        now[0] += 0.00001  # per-event work
    assert abs(20_000 / now[0] / 2000 - 1) < 0.01


def test_loop_passes_get_fresh_ids_and_later_times() -> None:
    events = [Event(event_id=f"e{i}", ts=1000 + 10 * i, label=0, sparse={"u": i}) for i in range(3)]
    out = [e for _, e in looped(events, 3)]
    assert [e.event_id for e in out] == ["e0", "e1", "e2", "e0~1", "e1~1", "e2~1", "e0~2", "e1~2", "e2~2"]
    ts = [e.ts for e in out]
    assert ts == sorted(ts) and len(set(ts)) == 9 and ts[3] == 1000 + 30  # span 20 + step 10
    with pytest.raises(ValueError, match="re-iterable"):
        list(looped(iter(events), 2))


def _expected_movielens(folder: Path, n: int) -> list[dict]:
    """The first n ratings in time order, read independently of the reader (pandas), as event dicts."""
    inter = pd.read_csv(folder / "ml-100k.inter", sep="\t", header=0, names=["user", "movie", "rating", "ts"])
    users = pd.read_csv(folder / "ml-100k.user", sep="\t", header=0, dtype=str,
                        names=["user", "age", "gender", "occupation", "zip"]).set_index("user")
    inter = inter.sort_values("ts", kind="stable").head(n)
    side = users.to_dict("index")
    out = []
    for user, movie, rating, ts in inter.itertuples(index=False):
        u = side[str(user)]
        out.append({
            "event_id": f"u{user}-m{movie}-{ts}",
            "ts": int(ts) * 1000,
            "label": int(rating >= 4),
            "sparse": {"user": int(user), "movie": int(movie), "age": int(u["age"]), "gender": u["gender"],
                       "occupation": u["occupation"], "zip": u["zip"]},
        })
    return out


@pytest.mark.integration
def test_movielens_5000_rows_replay_and_come_back_equal(movielens_dir: Path, kafka_bootstrap: str,
                                                        topic_name: str) -> None:
    report = BadRowReport()
    events = iter_events("movielens", limit=5000, report=report, data_dir=movielens_dir)
    summary = replay(events, kafka_bootstrap, topic_name, key="user", partitions=2, compression="gzip")
    assert (summary.sent, summary.failed, report.count) == (5000, 0, 0)
    assert summary.bytes > 5000 * 100 and summary.events_per_s > 0
    got = consume(kafka_bootstrap, topic_name, 5000)
    assert len(got) == 5000
    expected = _expected_movielens(movielens_dir, 5000)
    by_id = {e["event_id"]: e for e in expected}
    assert len(by_id) == 5000  # event ids are unique
    partitions_of_user: dict[int, set[int]] = {}
    for partition, key, event in got:
        assert event.dense == {}
        want = by_id[event.event_id]
        assert (event.ts, event.label, event.sparse) == (want["ts"], want["label"], want["sparse"])
        assert key == str(event.sparse["user"]).encode()
        partitions_of_user.setdefault(event.sparse["user"], set()).add(partition)
    assert {e.event_id for _, _, e in got} == set(by_id)
    assert all(len(p) == 1 for p in partitions_of_user.values())  # keyed by user: one partition per user
    for p in (0, 1):
        ids = [e.event_id for part, _, e in got if part == p]
        assert ids == [e["event_id"] for e in expected if e["event_id"] in set(ids)]  # time order kept


def _criteo_file() -> Path:
    folder = datasets.find("criteo")
    if folder is None:
        pytest.skip("the Criteo sample is not present (shared/data or $UNIREC_DATA_DIR)")
    return folder / "train_head10k.txt"


@pytest.mark.integration
def test_criteo_sample_replays_in_msgpack_with_lz4_and_comes_back_equal(kafka_bootstrap: str, topic_name: str) -> None:
    path = _criteo_file()
    summary = replay(iter_events("criteo", path=path, limit=5000), kafka_bootstrap, topic_name, key="C1",
                     encoding="msgpack", compression="lz4", partitions=1)
    assert (summary.sent, summary.failed) == (5000, 0)
    got = consume(kafka_bootstrap, topic_name, 5000)
    frame = pd.read_csv(path, sep="\t", header=None, dtype=str, keep_default_na=False, nrows=5000)
    assert len(got) == 5000
    for n, ((_, key, event), row) in enumerate(zip(got, frame.itertuples(index=False), strict=True), 1):
        cells = list(row)
        assert event.event_id == f"train_head10k-{n}" and event.ts == n - 1 and event.label == int(cells[0])
        dense = {f"I{i}": float(cells[i]) for i in range(1, 14) if cells[i] != ""}
        sparse = {f"C{i}": cells[13 + i] for i in range(1, 27) if cells[13 + i] != ""}
        assert event.dense == dense and event.sparse == sparse
        assert key == sparse["C1"].encode()
        assert all(math.isfinite(v) for v in event.dense.values())


@pytest.mark.integration
def test_looping_replay_never_repeats_an_id(kafka_bootstrap: str, topic_name: str) -> None:
    from services.simulate import SimFeature, Simulator, SimulatorConfig

    config = SimulatorConfig(features=(SimFeature(name="user", vocab=50),), events_per_window=50, windows=2)
    events = list(Simulator(config).events())
    summary = replay(events, kafka_bootstrap, topic_name, key="event_id", loops=None, limit=250, partitions=1)
    assert (summary.sent, summary.passes) == (250, 3)
    got = [e for _, _, e in consume(kafka_bootstrap, topic_name, 250)]
    assert len({e.event_id for e in got}) == 250
    assert [e.ts for e in got] == sorted(e.ts for e in got)


BAD_SCHEMA = {
    "name": "bad",
    "sparse": [{"name": "user", "dtype": "int"}],
    "dense": [{"name": "price"}],
    "source": {"path": "rows.tsv", "format": "tsv", "columns": ["user", "price", "y"],
               "label": {"column": "y", "rule": "value"}, "event_id": "r{line}", "key": "user"},
}


@pytest.mark.integration
def test_cli_skips_bad_rows_and_fails_only_when_strict(tmp_path: Path, kafka_bootstrap: str, topic_name: str) -> None:
    import typer

    from services.producer import produce_command

    (tmp_path / "rows.tsv").write_bytes(b"1\t2.5\t1\n2\tfree\t0\n\n3\t1\n4\t\xff\t1\n5\t7\t0\n")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(BAD_SCHEMA))
    app = typer.Typer()
    app.command()(produce_command)
    args = [str(tmp_path / "bad.yaml"), "--bootstrap", kafka_bootstrap, "--topic", topic_name]  # with the progress bar
    runner = CliRunner()
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    for line, reason in ((2, "'free' is not a number"), (3, "empty line"), (4, "2 columns, expected 3"),
                         (5, "not valid utf-8")):
        assert f"rows.tsv:{line}: " in out and reason in out.split(f"rows.tsv:{line}: ")[1][:60], out
    assert "bad rows (skipped) │ 4" in out
    got = consume(kafka_bootstrap, topic_name, 2)
    assert sorted(e.event_id for _, _, e in got) == ["r1", "r6"]
    strict = runner.invoke(app, [*args, "--strict"], env={"COLUMNS": "200"})
    assert strict.exit_code == 1, strict.output


@pytest.mark.integration
def test_live_time_stamps_events_at_send_time(kafka_bootstrap: str, topic_name: str) -> None:
    import time

    events = [Event(event_id=f"e{i}", ts=1000 + i, label=1, sparse={"user": i}) for i in range(20)]
    before = time.time_ns() // 1_000_000
    summary = replay(events, kafka_bootstrap, topic_name, key="user", live_time=True, partitions=1)
    after = time.time_ns() // 1_000_000
    got = [e for _, _, e in consume(kafka_bootstrap, topic_name, 20)]
    assert summary.sent == 20 and [e.event_id for e in got] == [e.event_id for e in events]
    assert all(before <= e.ts <= after for e in got)


@settings(max_examples=50, deadline=None)
@given(gaps=st.lists(st.integers(0, 5000), min_size=1, max_size=30), passes=st.integers(1, 4))
def test_property_looping_keeps_time_increasing_and_ids_unique(gaps: list[int], passes: int) -> None:
    ts = [1_000 + sum(gaps[: i + 1]) for i in range(len(gaps))]
    events = [Event(event_id=f"e{i}", ts=t) for i, t in enumerate(ts)]
    out = [e for _, e in looped(events, passes)]
    assert len(out) == passes * len(events)
    assert len({e.event_id for e in out}) == len(out)
    stamps = [e.ts for e in out]
    assert stamps == sorted(stamps)
    for p in range(1, passes):  # each pass starts after the previous one ended
        assert stamps[p * len(events)] > stamps[p * len(events) - 1]


def test_cli_names_a_missing_file_and_exits_2(tmp_path: Path) -> None:
    import typer

    from services.producer import produce_command

    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(BAD_SCHEMA))
    app = typer.Typer()
    app.command()(produce_command)
    result = CliRunner().invoke(app, [str(tmp_path / "bad.yaml"), "--bootstrap", "127.0.0.1:1"],
                                env={"COLUMNS": "300"})
    assert result.exit_code == 2
    assert "rows.tsv not found" in " ".join(result.output.split())
