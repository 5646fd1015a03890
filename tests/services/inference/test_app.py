"""The service end to end on real artifacts: readiness, swaps, refusals, limits, validation, keys, metrics."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import msgspec
import pytest
from fastapi.testclient import TestClient
from starlette.types import Receive, Scope, Send

from embedding.schema import parse_schema
from registry.store import LocalModelStore

from .conftest import SCHEMA, event, export, make_app, wait_for

REQUEST = {"events": [event(0), event(1), event(2, movie=999999)]}


def test_not_ready_until_a_model_is_exported_then_ready_with_its_figures(
    store: LocalModelStore, store_dir: Path
) -> None:
    with TestClient(make_app(store_dir)) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 503
        assert client.post("/v1/predict", json=REQUEST).status_code == 503
        assert client.get("/v1/model").status_code == 503
        version = export(store, seed=1, watermark_ms=881250949000)
        wait_for(lambda: client.get("/readyz").status_code == 200, what="the follower to load the first export")
        assert client.get("/readyz").json() == {"status": "ready", "version": version}
        info = client.get("/v1/model").json()
        assert info["version"] == version and info["kind"] == "full"
        assert info["watermark_ms"] == 881250949000
        assert info["freshness_s"] > 0 and info["created_at"]
        assert info["schema"]["name"] == "movielens"
        assert [f["name"] for f in info["schema"]["sparse"]] == SCHEMA.sparse_names
        body = client.post("/v1/predict", json=REQUEST).json()
        assert body["version"] == version
        assert len(body["probabilities"]) == 3 and all(0 < p < 1 for p in body["probabilities"])
        status = client.get("/v1/status").json()
        assert status["ready"] and status["training"]["metrics"] == {"auc": 0.7, "logloss": 0.6}
        assert status["requests"]["predict_requests"] == 2 and status["requests"]["predictions"] == 3  # one 503
        assert status["follower"]["mode"] == "polling"


def test_predictions_follow_new_exports_without_restart(store: LocalModelStore, store_dir: Path) -> None:
    first = export(store, seed=1)
    with TestClient(make_app(store_dir)) as client:
        before = client.post("/v1/predict", json=REQUEST).json()
        assert before["version"] == first
        second = export(store, seed=2)
        wait_for(lambda: client.get("/v1/model").json()["version"] == second, what="the swap to the new export")
        after = client.post("/v1/predict", json=REQUEST).json()
        assert after["version"] == second
        assert after["probabilities"] != before["probabilities"]
        metrics = client.get("/metrics").text
        assert 'unirec_serve_swaps_total{kind="full"} 2.0' in metrics
        assert f'unirec_serve_model_info{{version="{second}"}} 1.0' in metrics
        assert f'version="{first}"' not in metrics


def test_deltas_are_applied_on_top_of_the_served_version(store: LocalModelStore, store_dir: Path) -> None:
    from embedding.model import build_model
    from registry.exporter import Exporter

    from .conftest import CONFIG

    model = build_model(SCHEMA, CONFIG)
    exporter = Exporter(store, "int8", retention=None)
    base = exporter.export_full(model).version
    with TestClient(make_app(store_dir)) as client:
        before = client.post("/v1/predict", json=REQUEST).json()
        table = next(iter(exporter.base.tables)).key
        state = model.state_dict()
        state[table].add_(0.5)  # every row moves: predictions must change
        import torch

        exporter.export_delta({table: torch.arange(state[table].shape[0])}, model)
        wait_for(lambda: client.get("/v1/model").json()["version"] == f"{base}+1", what="the delta")
        after = client.post("/v1/predict", json=REQUEST).json()
        assert after["version"] == f"{base}+1" and after["probabilities"] != before["probabilities"]
        assert client.get("/v1/model").json()["kind"] == "delta"
        assert 'unirec_serve_swaps_total{kind="delta"} 1.0' in client.get("/metrics").text


def test_twenty_swaps_under_continuous_requests_fail_no_request(store: LocalModelStore, store_dir: Path) -> None:
    versions = [export(store, seed=s) for s in range(1, 3)]
    app = make_app(store_dir, follow=False)
    statuses: Counter[int] = Counter()
    seen_versions: set[str] = set()
    stop = threading.Event()

    def hammer(client: TestClient) -> None:
        while not stop.is_set():
            response = client.post("/v1/predict", json=REQUEST)
            statuses[response.status_code] += 1
            if response.status_code == 200:
                seen_versions.add(response.json()["version"])

    with TestClient(app) as client:
        threads = [threading.Thread(target=hammer, args=(client,)) for _ in range(3)]
        for thread in threads:
            thread.start()
        try:
            for i in range(20):
                target = versions[i % 2]  # alternate between two loaded-from-disk versions
                response = client.post("/v1/model/reload", json={"version": target})
                assert response.status_code == 200, response.text
                assert response.json()["version"] == target
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        metrics = client.get("/metrics").text
    assert set(statuses) == {200}, statuses
    assert sum(statuses.values()) >= 20
    assert seen_versions == set(versions)
    assert 'unirec_serve_swaps_total{kind="full"} 21.0' in metrics  # the first load plus 20 swaps


def _corrupt(store_dir: Path, version: str, name: str = "tables.safetensors") -> None:
    path = store_dir / "versions" / version / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_corrupt_export_is_refused_and_the_old_version_keeps_serving(store: LocalModelStore, store_dir: Path) -> None:
    good = export(store, seed=1)
    with TestClient(make_app(store_dir, follow=False)) as client:
        before = client.post("/v1/predict", json=REQUEST).json()
        bad = store.allocate_version()
        # write a copy of the good version under a new id, then flip one byte of its tables
        files = {n: store.read(good, n) for n in store.files(good)}
        store.write_version(bad, files)
        _corrupt(store_dir, bad)
        response = client.post("/v1/model/reload")
        assert response.status_code == 409
        assert response.json()["reason"] == "checksum" and response.json()["version"] == good
        assert client.get("/v1/model").json()["version"] == good
        assert client.post("/v1/predict", json=REQUEST).json() == before
        assert 'unirec_serve_failed_loads_total{reason="checksum"} 1.0' in client.get("/metrics").text
        assert client.get("/v1/status").json()["refused"] == {bad: "checksum"}


def test_a_refused_version_is_not_retried_by_the_follower(store: LocalModelStore, store_dir: Path) -> None:
    good = export(store, seed=1)
    with TestClient(make_app(store_dir)) as client:
        bad = export(store, seed=2)
        _corrupt(store_dir, bad, "params.safetensors")
        wait_for(lambda: bad in client.get("/v1/status").json()["refused"], what="the refusal")
        polls = client.get("/v1/status").json()["follower"]["polls"]
        wait_for(lambda: client.get("/v1/status").json()["follower"]["polls"] > polls + 3, what="more polls")
        assert 'unirec_serve_failed_loads_total{reason="checksum"} 1.0' in client.get("/metrics").text
        assert client.get("/v1/model").json()["version"] == good


def test_rollback_pins_the_previous_version_until_a_reload(store: LocalModelStore, store_dir: Path) -> None:
    first = export(store, seed=1)
    with TestClient(make_app(store_dir)) as client:
        assert client.post("/v1/model/rollback").status_code == 409  # nothing to roll back to
        second = export(store, seed=2)
        wait_for(lambda: client.get("/v1/model").json()["version"] == second, what="the second export")
        info = client.post("/v1/model/rollback").json()
        assert info["version"] == first and info["pinned"] is True
        third = export(store, seed=3)
        status = client.get("/v1/status").json()
        wait_for(lambda: client.get("/v1/status").json()["follower"]["polls"] > status["follower"]["polls"] + 2)
        assert client.get("/v1/model").json()["version"] == first  # pinned: new exports wait
        info = client.post("/v1/model/reload").json()
        assert info["version"] == third and info["pinned"] is False
        assert 'unirec_serve_swaps_total{kind="rollback"} 1.0' in client.get("/metrics").text


def test_limits_answer_413(store: LocalModelStore, store_dir: Path) -> None:
    export(store, seed=1)
    with TestClient(make_app(store_dir, max_batch=4, max_body_bytes=2048, follow=False)) as client:
        assert client.post("/v1/predict", json={"events": [event(i) for i in range(4)]}).status_code == 200
        too_many = client.post("/v1/predict", json={"events": [event(i) for i in range(5)]})
        assert too_many.status_code == 413 and "maximum batch of 4" in too_many.json()["detail"]
        big = {"events": [event(0, zip="9" * 3000)]}
        assert client.post("/v1/predict", json=big).status_code == 413

        def chunks():  # no content-length: the limit applies while streaming
            yield b'{"events": [' + b" " * 1500
            yield b" " * 1500 + b"]}"

        assert client.post("/v1/predict", content=chunks()).status_code == 413


@pytest.mark.parametrize(
    ("body", "loc", "fragment"),
    [
        (b'{"events": [', ["body"], "not valid json"),
        (b'{"events": [{"event_id": "a", "ts": "x"}]}', ["body", "events", 0, "ts"], "Expected `int`"),
        (b'{"events": [{"ts": 1}]}', ["body", "events", 0, "event_id"], "missing required field"),
        (b'{"events": [{"event_id": "a", "ts": 1, "extra": 1}]}', ["body", "events", 0, "extra"], "unknown field"),
        (b'{"events": [{"event_id": "a", "ts": -1}]}', ["body", "events", 0, "ts"], ">= 0"),
        (b'{"events": []}', ["body", "events"], "at least one event"),
        (b'{"evts": []}', ["body", "evts"], "unknown field"),
    ],
)
def test_bad_input_answers_422_naming_the_field(
    store: LocalModelStore, store_dir: Path, body: bytes, loc: list, fragment: str
) -> None:
    export(store, seed=1)
    with TestClient(make_app(store_dir, follow=False)) as client:
        response = client.post("/v1/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    (detail,) = response.json()["detail"]
    assert detail["loc"] == loc and fragment in detail["msg"]


def test_a_value_that_does_not_fit_the_feature_dtype_is_422_for_that_event(
    store: LocalModelStore, store_dir: Path
) -> None:
    export(store, seed=1)
    with TestClient(make_app(store_dir, follow=False)) as client:
        response = client.post("/v1/predict", json={"events": [event(0), event(1, user="not-a-number")]})
    assert response.status_code == 422
    (detail,) = response.json()["detail"]
    assert detail["loc"] == ["body", "events", 1, "sparse", "user"] and "not-a-number" in detail["msg"]


def test_msgpack_bodies_score_like_json(store: LocalModelStore, store_dir: Path) -> None:
    export(store, seed=1)
    with TestClient(make_app(store_dir, follow=False)) as client:
        as_json = client.post("/v1/predict", json=REQUEST).json()
        as_msgpack = client.post(
            "/v1/predict", content=msgspec.msgpack.encode(REQUEST), headers={"content-type": "application/msgpack"}
        ).json()
    assert as_json == as_msgpack


STRICT = parse_schema(
    {
        "name": "strict",
        "embedding_dim": 8,
        "unknown_features": "reject",
        "sparse": [{"name": "user", "dtype": "int", "on_missing": "reject"}, {"name": "movie", "dtype": "int"}],
    }
)


def test_missing_and_unknown_features_follow_the_schema_and_are_counted(
    store: LocalModelStore, store_dir: Path
) -> None:
    export(store, seed=1)  # movielens: defaults (missing -> empty bag, unknown -> ignored)
    with TestClient(make_app(store_dir, follow=False)) as client:
        lenient = {"events": [{"event_id": "a", "ts": 1, "sparse": {"user": 1, "colour": "red"}}]}
        assert client.post("/v1/predict", json=lenient).status_code == 200
        metrics = client.get("/metrics").text
    assert 'unirec_serve_missing_features_total{feature="movie"} 1.0' in metrics
    assert "unirec_serve_unknown_features_total 1.0" in metrics
    assert 'unirec_serve_lookups_total{feature="user"} 1.0' in metrics


def test_a_strict_schema_rejects_missing_and_unknown_features(tmp_path: Path) -> None:
    store_dir = tmp_path / "strict"
    export(LocalModelStore(store_dir), seed=1, schema=STRICT)
    with TestClient(make_app(store_dir, follow=False)) as client:
        ok = {"events": [{"event_id": "a", "ts": 1, "sparse": {"user": 1}}]}
        assert client.post("/v1/predict", json=ok).status_code == 200  # movie may be missing
        missing = {"events": [ok["events"][0], {"event_id": "b", "ts": 1, "sparse": {"movie": 2}}]}
        response = client.post("/v1/predict", json=missing)
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["body", "events", 1, "sparse", "user"]
        unknown = {"events": [{"event_id": "a", "ts": 1, "sparse": {"user": 1, "colour": "red"}}]}
        response = client.post("/v1/predict", json=unknown)
        assert response.status_code == 422 and "colour" in response.json()["detail"][0]["msg"]
        metrics = client.get("/metrics").text
    assert 'unirec_serve_missing_features_total{feature="user"} 1.0' in metrics
    assert "unirec_serve_unknown_features_total 1.0" in metrics


def test_a_model_for_another_schema_is_refused(store: LocalModelStore, store_dir: Path) -> None:
    export(store, seed=1, schema=STRICT)
    with TestClient(make_app(store_dir, follow=False, schema_="movielens")) as client:
        assert client.get("/readyz").status_code == 503
        assert 'unirec_serve_failed_loads_total{reason="schema"} 1.0' in client.get("/metrics").text


def test_unseen_ids_are_counted_when_the_artifact_knows_trained_rows(store: LocalModelStore, store_dir: Path) -> None:
    import torch

    from embedding.export import prepare
    from embedding.model import build_model

    from .conftest import CONFIG

    tables = prepare(build_model(SCHEMA, CONFIG)).tables
    export(store, seed=1, seen_rows={t.key: torch.zeros(t.rows, dtype=torch.bool) for t in tables})
    with TestClient(make_app(store_dir, follow=False)) as client:
        assert client.post("/v1/predict", json=REQUEST).status_code == 200
        metrics = client.get("/metrics").text
    assert 'unirec_serve_unseen_ids_total{feature="movie"} 3.0' in metrics  # no row was ever trained
    assert 'unirec_serve_lookups_total{feature="movie"} 3.0' in metrics


def test_api_key_guards_admin_routes_always_and_predict_when_asked(store: LocalModelStore, store_dir: Path) -> None:
    export(store, seed=1)
    with TestClient(make_app(store_dir, follow=False, api_key="s3cret")) as client:
        assert client.post("/v1/model/reload").status_code == 401
        assert client.post("/v1/model/reload", headers={"X-API-Key": "wrong"}).status_code == 403
        assert client.post("/v1/model/reload", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert client.post("/v1/model/reload", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.post("/v1/model/rollback").status_code == 401
        assert client.post("/v1/predict", json=REQUEST).status_code == 200  # open by default
    app = make_app(store_dir, follow=False, api_key="s3cret", predict_requires_key=True)
    with TestClient(app) as client:
        assert client.post("/v1/predict", json=REQUEST).status_code == 401
        assert client.post("/v1/predict", json=REQUEST, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert client.post("/v1/predict", json=REQUEST, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.post("/v1/predict", json=REQUEST, headers={"Authorization": "Bearer nope"}).status_code == 403
        assert client.post("/v1/predict", json=REQUEST, headers={"Authorization": "Basic s3cret"}).status_code == 401


def test_a_slow_prediction_answers_504(
    store: LocalModelStore, store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from services.inference import predictor

    real = predictor.score_requests

    def slow(*args, **kwargs):  # type: ignore[no-untyped-def]
        time.sleep(0.3)
        return real(*args, **kwargs)

    monkeypatch.setattr(predictor, "score_requests", slow)
    export(store, seed=1)
    # on a scoring thread (an inline forward is bounded by `inline_max_events`, and blocks the timer too)
    app = make_app(store_dir, follow=False, request_timeout_s=0.05, inline_max_events=0)
    with TestClient(app) as client:
        response = client.post("/v1/predict", json=REQUEST)
    assert response.status_code == 504 and "longer than 0.05 s" in response.json()["detail"]


METRICS = [
    "unirec_serve_requests_total",
    "unirec_serve_request_latency_seconds_bucket",
    "unirec_serve_batch_size_bucket",
    "unirec_serve_model_info",
    "unirec_serve_model_age_seconds",
    "unirec_serve_swaps_total",
    "unirec_serve_failed_loads_total",
    "unirec_serve_unseen_ids_total",
    "unirec_serve_lookups_total",
    "unirec_serve_missing_features_total",
    "unirec_serve_unknown_features_total",
    "unirec_serve_forwards_total",
    "unirec_serve_forward_events_bucket",
    "unirec_serve_forward_requests_bucket",
]


def test_metrics_expose_every_serve_metric_of_the_contract(store: LocalModelStore, store_dir: Path) -> None:
    documented = (Path(__file__).parents[3] / "docs" / "metrics.md").read_text()
    for name in METRICS:
        base = name.removesuffix("_bucket")
        assert f"`{base}`" in documented, f"{base} is not in docs/metrics.md"
    export(store, seed=1, watermark_ms=881250949000)
    with TestClient(make_app(store_dir, follow=False)) as client:
        client.post("/v1/predict", json={"events": [{"event_id": "a", "ts": 1, "sparse": {"user": 1, "x": 2}}]})
        text = client.get("/metrics").text
    samples = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if not line.startswith("#")}
    for name in METRICS:
        assert name in samples, f"{name} has no sample in /metrics"
    assert 'unirec_serve_failed_loads_total{reason="checksum"} 0.0' in text  # series exist before any event


def test_status_page_is_self_contained_and_reads_the_status_endpoint(store_dir: Path) -> None:
    with TestClient(make_app(store_dir, follow=False)) as client:
        page = client.get("/")
        status = client.get("/v1/status").json()
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "v1/status" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no external assets
    assert status == {**status, "ready": False, "model": None, "churn": {}}


def test_predict_through_the_route_stack_answers_as_the_direct_handler(store: LocalModelStore, store_dir: Path) -> None:
    """Under a root path the app does not take its predict shortcut: the documented route answers, the same."""
    export(store, seed=1)
    app = make_app(store_dir, follow=False)
    direct_calls = []
    handler = app.predict_handler

    async def counted(scope: Scope, receive: Receive, send: Send) -> None:
        direct_calls.append(scope["path"])
        await handler(scope, receive, send)

    app.predict_handler = counted
    bad = {"events": [{"event_id": "a", "ts": "x"}]}
    with TestClient(app) as direct, TestClient(app, root_path="/api") as mounted:
        for body in (REQUEST, bad, {"events": []}):
            one, other = direct.post("/v1/predict", json=body), mounted.post("/api/v1/predict", json=body)
            assert (one.status_code, one.json()) == (other.status_code, other.json())
            assert one.headers["content-type"] == other.headers["content-type"] == "application/json"
        assert direct.get("/v1/predict").status_code == 405  # other methods: FastAPI's answer
    assert direct_calls == ["/v1/predict"] * 3
