"""The simulator: ground truth equals what the events show; churn knobs move the new-ID counts as configured."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from embedding.schema import load_schema, parse_schema
from services.replay.errors import SourceError
from services.simulate import SimDense, SimFeature, Simulator, SimulatorConfig, _zipf_slots


def _config(**overrides: object) -> SimulatorConfig:
    base = dict(
        features=(
            SimFeature(name="user", vocab=3000, zipf=1.05, new_id_rate=0.05, lifetime=6),
            SimFeature(name="item", vocab=500, zipf=1.3, new_id_rate=0.2, drift_std=0.1),
            SimFeature(name="device", vocab=4, zipf=0.0),
        ),
        dense=(SimDense(name="x", weight=0.7),),
        events_per_window=2000,
        windows=6,
        window_ms=1000,
        start_ms=5_000,
        seed=3,
    )
    return SimulatorConfig(**(base | overrides))  # type: ignore[arg-type]


def test_ground_truth_matches_the_events_exactly() -> None:
    config = _config()
    sim = Simulator(config)
    events = list(sim.events())
    truth = sim.ground_truth()
    assert len(events) == 6 * 2000 and len(truth) == 6
    by_window: dict[int, list] = defaultdict(list)
    for e in events:
        w = (e.ts - config.start_ms) // config.window_ms
        by_window[w].append(e)
    assert sorted(by_window) == list(range(6))
    assert [e.ts for e in events] == sorted(e.ts for e in events)
    assert len({e.event_id for e in events}) == len(events)
    seen: dict[str, set] = defaultdict(set)
    prev: dict[str, set] = defaultdict(set)
    for w, t in enumerate(truth):
        assert (t.window, t.start_ms, t.end_ms, t.events) == (w, 5_000 + 1000 * w, 6_000 + 1000 * w, 2000)
        for name in ("user", "item", "device"):
            ids = {e.sparse[name] for e in by_window[w]}
            got = t.features[name]
            assert got.distinct == len(ids), (w, name)
            assert got.new == len(ids - seen[name]), (w, name)
            assert got.vanished == len(prev[name] - ids), (w, name)
            seen[name] |= ids
            prev[name] = ids
    assert all(e.label in (0, 1) and set(e.dense) == {"x"} for e in events)


def test_windows_are_columnar_and_truncated_to_max_events() -> None:
    sim = Simulator(_config())
    windows = list(sim.windows(max_events=4500))
    assert [len(w) for w in windows] == [2000, 2000, 500]
    assert sim.ground_truth()[-1].events == 500
    last = windows[-1]
    assert last.ids["user"].dtype == np.int64 and last.p.shape == (500,)
    assert last.truth.features["user"].distinct == len(np.unique(last.ids["user"]))


def test_same_seed_same_stream() -> None:
    a = [e.sparse for e in Simulator(_config()).events(3000)]
    b = [e.sparse for e in Simulator(_config()).events(3000)]
    c = [e.sparse for e in Simulator(_config(seed=4)).events(3000)]
    assert a == b and a != c


def test_new_id_rate_sets_births_per_window() -> None:
    feats = (SimFeature(name="a", vocab=5_000, zipf=0.0, new_id_rate=0.1),)
    sim = Simulator(_config(features=feats, dense=(), events_per_window=50_000, windows=4))
    list(sim.windows())
    born = [t.features["a"].born for t in sim.ground_truth()]
    assert born[0] == 0
    assert all(abs(b - 500) < 100 for b in born[1:]), born  # binomial(5000, 0.1): sd 21
    # uniform popularity, 10 draws per ID per window: (almost) every newborn shows up, nothing else is new
    new = [t.features["a"].new for t in sim.ground_truth()]
    assert new[0] == 5_000
    assert all(0.98 * b <= n <= b for n, b in zip(new[1:], born[1:], strict=True)), (new, born)


def test_no_churn_means_no_new_ids_once_the_vocabulary_is_seen() -> None:
    feats = (SimFeature(name="a", vocab=1000, zipf=0.0),)
    sim = Simulator(_config(features=feats, dense=(), events_per_window=20_000, windows=3))
    list(sim.windows())
    assert [t.features["a"].new for t in sim.ground_truth()] == [1000, 0, 0]
    assert [t.features["a"].born for t in sim.ground_truth()] == [0, 0, 0]


def test_lifetime_retires_a_fraction_per_window_and_higher_rates_make_more_new_ids() -> None:
    feats = (SimFeature(name="a", vocab=10_000, zipf=0.0, lifetime=5),)
    sim = Simulator(_config(features=feats, dense=(), events_per_window=1000, windows=11))
    list(sim.windows())
    retired = [t.features["a"].retired for t in sim.ground_truth()]
    assert sum(retired[1:6]) == 10_000  # every initial ID retires within its 5-window lifetime
    assert all(abs(r - 2000) < 250 for r in retired[1:]), retired

    def total_new(rate: float) -> int:
        feature = SimFeature(name="a", vocab=2000, zipf=0.5, new_id_rate=rate)
        s = Simulator(_config(features=(feature,), dense=(), events_per_window=20_000))
        list(s.windows())
        return sum(t.features["a"].new for t in s.ground_truth()[1:])

    low, high = total_new(0.01), total_new(0.2)
    assert 5 * 0.01 * 2000 * 0.7 < low < 5 * 0.01 * 2000 * 1.5, low
    assert 10 * low < high < 5 * 0.2 * 2000, (low, high)


def test_zipf_slots_follow_the_power_law() -> None:
    slots = _zipf_slots(np.random.default_rng(0).random(400_000), 100, 1.2)
    counts = np.bincount(slots, minlength=100) / slots.size
    expected = np.arange(1, 101) ** -1.2
    expected /= expected.sum()
    assert np.all(np.abs(counts[:20] / expected[:20] - 1) < 0.12)
    assert slots.min() == 0 and slots.max() == 99


def test_the_click_model_is_learnable_from_the_true_probabilities() -> None:
    sim = Simulator(_config(events_per_window=20_000, windows=1))
    window = next(sim.windows())
    order = np.argsort(window.p)
    low, high = window.label[order[:5000]].mean(), window.label[order[-5000:]].mean()
    assert high - low > 0.3  # the hidden effects carry real signal


def test_shipped_simulated_schema_and_mismatches() -> None:
    schema = load_schema("simulated")
    config = SimulatorConfig.from_schema(schema)
    assert config.message_key == "user"
    doc = schema.model_dump(mode="json")
    doc["sparse"] = doc["sparse"][:-1]
    with pytest.raises(SourceError, match="differ"):
        SimulatorConfig.from_schema(parse_schema(doc))
    doc = schema.model_dump(mode="json")
    doc["source"]["simulator"]["features"][0]["zipf"] = -1
    with pytest.raises(SourceError, match="zipf"):
        SimulatorConfig.from_schema(parse_schema(doc))


def test_cli_writes_events_and_ground_truth(tmp_path: Path) -> None:
    import typer

    from services.simulate import simulate_command

    app = typer.Typer()
    app.command()(simulate_command)
    out, truth = tmp_path / "events.jsonl", tmp_path / "truth.jsonl"
    result = CliRunner().invoke(
        app, ["--windows", "2", "--events-per-window", "300", "--new-id-rate", "0.5", "--output", str(out),
              "--truth", str(truth)]
    )
    assert result.exit_code == 0, result.output
    lines = out.read_bytes().splitlines()
    assert len(lines) == 600 and json.loads(lines[0])["event_id"] == "sim0-0"
    windows = [json.loads(line) for line in truth.read_text().splitlines()]
    assert [w["events"] for w in windows] == [300, 300]
    assert windows[1]["features"]["user"]["born"] > 50_000  # half of the 200k user IDs replaced


@pytest.mark.integration
def test_cli_streams_into_kafka_with_ground_truth(tmp_path: Path, kafka_bootstrap: str, topic_name: str) -> None:
    import typer

    from services.simulate import simulate_command
    from tests.services.conftest import consume

    app = typer.Typer()
    app.command()(simulate_command)
    truth = tmp_path / "truth.jsonl"
    result = CliRunner().invoke(app, ["--events", "500", "--events-per-window", "200", "--topic", topic_name,
                                      "--bootstrap", kafka_bootstrap, "--truth", str(truth)])
    assert result.exit_code == 0, result.output
    got = consume(kafka_bootstrap, topic_name, 500)
    assert len(got) == 500 and all(key == str(e.sparse["user"]).encode() for _, key, e in got)
    assert [json.loads(line)["events"] for line in truth.read_text().splitlines()] == [200, 200, 100]
