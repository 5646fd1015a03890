"""The trainer on the first 20,000 MovieLens-100k ratings in time order, through the real broker.

Progressive AUC over events 15,001-20,000 must reach 0.72 and beat the item-popularity baseline
(the movie's running click rate before the event), with 2 ranks and with 1 rank alike.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from embedding.events import Event
from services.producer import replay
from services.replay.reader import iter_events
from tests.trainer.conftest import read_predictions, run_trainer, trainer_env
from trainer.progressive import rank_auc

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_EVENTS = 20_000
SCORED = slice(15_000, 20_000)


@pytest.fixture(scope="module")
def movielens_events() -> list[Event]:
    events = list(iter_events("movielens", limit=N_EVENTS))
    assert len(events) == N_EVENTS
    return events


def popularity_scores(events: list[Event]) -> np.ndarray:
    """The movie's click rate over its earlier events (global rate so far when it has none)."""
    clicks: dict[object, int] = defaultdict(int)
    views: dict[object, int] = defaultdict(int)
    total_clicks = 0
    scores = np.empty(len(events))
    for i, event in enumerate(events):
        movie = event.sparse["movie"]
        prior = (total_clicks + 1) / (i + 2)
        scores[i] = (clicks[movie] + prior) / (views[movie] + 1)
        clicks[movie] += int(event.label or 0)
        views[movie] += 1
        total_clicks += int(event.label or 0)
    return scores


def progressive_auc(prefix: Path, events: list[Event]) -> float:
    index = {e.event_id: i for i, e in enumerate(events)}
    rows = read_predictions(prefix)
    assert len(rows) == len(events), "every event is trained exactly once"
    scores = np.empty(len(events))
    for _, event_id, score, _ in rows:
        scores[index[event_id]] = score
    labels = np.array([e.label for e in events])
    return rank_auc(scores[SCORED], labels[SCORED])


def test_progressive_auc_two_ranks_and_one_rank(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path, movielens_events: list[Event]
) -> None:
    summary = replay(movielens_events, kafka_bootstrap, topic_name, key="user", partitions=2)
    assert summary.sent == N_EVENTS and summary.failed == 0
    labels = np.array([e.label for e in movielens_events])
    baseline = rank_auc(popularity_scores(movielens_events)[SCORED], labels[SCORED])

    aucs = {}
    for nproc in (2, 1):
        home = tmp_path / f"ranks{nproc}"
        env = trainer_env(home, kafka_bootstrap, topic_name, predictions_log=home / "pred")
        run_trainer(env, nproc=nproc, log=home / "trainer.log")
        aucs[nproc] = progressive_auc(home / "pred", movielens_events)

    print(f"progressive AUC 15k-20k: 2 ranks {aucs[2]:.4f}, 1 rank {aucs[1]:.4f}, popularity {baseline:.4f}")
    for auc in aucs.values():
        assert auc >= 0.72
        assert auc > baseline
    assert abs(aucs[2] - aucs[1]) < 0.02
