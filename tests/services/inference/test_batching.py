"""Dynamic batching: concurrent requests share one forward and each gets exactly its own answer."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from embedding.events import Event
from embedding.schema import parse_schema
from registry.store import LocalModelStore
from services.inference.batcher import Batcher
from services.inference.codec import RequestInvalid
from services.inference.metrics import ServeMetrics
from services.inference.model_holder import Served
from services.inference.predictor import score
from services.inference.registry import StoreRegistry

from .conftest import event, export, make_app

STRICT = parse_schema(
    {
        "name": "strict",
        "embedding_dim": 8,
        "unknown_features": "reject",
        "sparse": [{"name": "user", "dtype": "int", "on_missing": "reject"}, {"name": "movie", "dtype": "int"}],
    }
)


def served_from(store: LocalModelStore) -> Served:
    return Served.wrap(StoreRegistry(store).load(None), "full")


def events(start: int, n: int, **sparse: object) -> list[Event]:
    return [Event(**event(start + i, **sparse)) for i in range(n)]


def run_together(batcher: Batcher, requests: Sequence[tuple[Served, list[Event]]]) -> list[np.ndarray | BaseException]:
    """Submit every request in the same loop turn (as the loop does with requests read together)."""

    async def main() -> list[np.ndarray | BaseException]:
        for _ in requests:
            batcher.expect()
        return await asyncio.gather(*(batcher.score(s, e) for s, e in requests), return_exceptions=True)

    return asyncio.run(main())


def make_batcher(metrics: ServeMetrics, pool: ThreadPoolExecutor, **overrides: float) -> Batcher:
    options = {"window_s": 0.001, "max_events": 1024, "inline_max_events": 64, "max_forwards": 1, **overrides}
    return Batcher(metrics, pool, **options)  # type: ignore[arg-type]


@pytest.fixture
def pool() -> ThreadPoolExecutor:
    with ThreadPoolExecutor(2) as executor:
        yield executor


@pytest.mark.parametrize("inline_max_events", [64, 0], ids=["inline", "on-a-thread"])
def test_a_batch_answers_each_request_as_scoring_it_alone_in_order(
    store: LocalModelStore, pool: ThreadPoolExecutor, inline_max_events: int
) -> None:
    export(store, seed=1)
    served, metrics = served_from(store), ServeMetrics()
    requests = [(served, events(100 * k, n)) for k, n in enumerate([1, 3, 7, 1, 16])]
    answers = run_together(make_batcher(metrics, pool, inline_max_events=inline_max_events), requests)
    alone = [score(served, e, ServeMetrics()) for _, e in requests]
    for got, want, (_, e) in zip(answers, alone, requests, strict=True):
        assert isinstance(got, np.ndarray) and got.shape == (len(e),)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert metrics.forwards._value.get() == 1  # one forward for the five requests
    assert metrics.forward_events._sum.get() == 28
    assert metrics.forward_requests._sum.get() == 5


def test_one_bad_request_gets_its_own_error_and_the_others_their_answers(
    store: LocalModelStore, pool: ThreadPoolExecutor
) -> None:
    export(store, seed=1)
    served, metrics = served_from(store), ServeMetrics()
    bad = events(10, 3)
    bad[2] = Event(**event(12, user="not-a-number"))
    requests = [(served, events(0, 2)), (served, bad), (served, events(20, 4))]
    first, second, third = run_together(make_batcher(metrics, pool), requests)
    assert isinstance(second, RequestInvalid)
    assert [d["loc"] for d in second.details] == [["body", "events", 2, "sparse", "user"]]  # its own index
    np.testing.assert_allclose(first, score(served, requests[0][1], ServeMetrics()), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(third, score(served, requests[2][1], ServeMetrics()), rtol=1e-6, atol=1e-7)


def test_schema_refusals_in_a_batch_are_per_request_and_counted_as_alone(
    tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    store = LocalModelStore(tmp_path / "strict")
    export(store, seed=1, schema=STRICT)
    served, batched, alone = served_from(store), ServeMetrics(), ServeMetrics()
    good = [Event(event_id="a", ts=1, sparse={"user": 1, "movie": 2})]
    missing = [Event(event_id="b", ts=1, sparse={"movie": 2})]
    unknown = [Event(event_id="c", ts=1, sparse={"user": 1, "colour": "red"})]
    answers = run_together(make_batcher(batched, pool), [(served, good), (served, missing), (served, unknown)])
    assert isinstance(answers[0], np.ndarray)
    assert isinstance(answers[1], RequestInvalid) and answers[1].details[0]["type"] == "missing"
    assert isinstance(answers[2], RequestInvalid) and answers[2].details[0]["type"] == "unknown_feature"
    for e in (good, missing, unknown):
        with contextlib.suppress(RequestInvalid):
            score(served, e, alone)
    for family in ("lookups", "missing_features", "unknown_features"):
        assert _totals(getattr(batched, family)) == _totals(getattr(alone, family)), family


def test_requests_on_different_models_are_never_mixed(store: LocalModelStore, pool: ThreadPoolExecutor) -> None:
    export(store, seed=1)
    old = served_from(store)
    export(store, seed=2)
    new, metrics = served_from(store), ServeMetrics()
    requests = [(old, events(0, 2)), (new, events(0, 2)), (old, events(5, 1))]
    answers = run_together(make_batcher(metrics, pool), requests)
    for got, (s, e) in zip(answers, requests, strict=True):
        np.testing.assert_allclose(got, score(s, e, ServeMetrics()), rtol=1e-6, atol=1e-7)
    assert not np.allclose(answers[0], answers[1])
    assert metrics.forwards._value.get() == 2  # old's two requests together, new's alone


def test_a_single_client_does_not_wait_for_the_window(store: LocalModelStore, pool: ThreadPoolExecutor) -> None:
    export(store, seed=1)
    served, metrics = served_from(store), ServeMetrics()
    batcher = make_batcher(metrics, pool, window_s=0.5)
    started = time.perf_counter()
    for k in range(3):
        (answer,) = run_together(batcher, [(served, events(k, 1))])
        assert isinstance(answer, np.ndarray)
    assert time.perf_counter() - started < 0.5  # three requests, none waited the 0.5 s window
    assert metrics.forwards._value.get() == 3


def test_a_request_still_arriving_joins_the_forward_within_the_window(
    store: LocalModelStore, pool: ThreadPoolExecutor
) -> None:
    export(store, seed=1)
    served, metrics = served_from(store), ServeMetrics()
    batcher = make_batcher(metrics, pool, window_s=0.5)

    async def main() -> list[np.ndarray]:
        batcher.expect()
        batcher.expect()  # a second request has arrived; its body takes 20 ms

        async def late() -> np.ndarray:
            await asyncio.sleep(0.02)
            return await batcher.score(served, events(1, 1))

        return await asyncio.gather(batcher.score(served, events(0, 1)), late())

    started = time.perf_counter()
    asyncio.run(main())
    assert time.perf_counter() - started < 0.4  # the late one ended the wait, not the window
    assert metrics.forwards._value.get() == 1


def test_concurrent_http_requests_share_forwards_and_get_their_own_answers(
    store: LocalModelStore, store_dir: Path
) -> None:
    export(store, seed=1)
    bodies = [{"events": [event(10 * k + i) for i in range(k % 3 + 1)]} for k in range(40)]
    # forwards on a thread: the loop keeps reading requests meanwhile, and they queue for the next forward
    app = make_app(store_dir, follow=False, inline_max_events=0, inference_threads=1)
    with TestClient(app) as client:
        expected = [client.post("/v1/predict", json=b).json() for b in bodies]
        before = client.get("/metrics").text
        answers: dict[int, dict] = {}

        def post(k: int) -> None:
            answers[k] = client.post("/v1/predict", json=bodies[k]).json()

        threads = [threading.Thread(target=post, args=(k,)) for k in range(len(bodies))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        after = client.get("/metrics").text
    for k, want in enumerate(expected):
        assert answers[k]["version"] == want["version"]
        np.testing.assert_allclose(answers[k]["probabilities"], want["probabilities"], rtol=1e-6, atol=1e-7)
    forwards = _sample(after, "unirec_serve_forwards_total") - _sample(before, "unirec_serve_forwards_total")
    requests = _sample(after, "unirec_serve_forward_requests_sum") - _sample(
        before, "unirec_serve_forward_requests_sum"
    )
    assert requests == len(bodies)
    assert 1 <= forwards < len(bodies)  # some requests shared a forward


def _totals(family: object) -> dict[tuple, float]:
    samples = family.collect()[0].samples  # type: ignore[attr-defined]
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in samples if s.name.endswith("_total")}


def _sample(text: str, name: str) -> float:
    (line,) = [x for x in text.splitlines() if x.startswith(name + " ")]
    return float(line.split()[1])
