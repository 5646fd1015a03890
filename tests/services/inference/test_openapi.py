"""Property tests against /openapi.json: whatever schemathesis sends, the service never answers 5xx."""

from __future__ import annotations

from pathlib import Path

import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from registry.store import LocalModelStore

from .conftest import export, make_app

MAX_EXAMPLES = 12
"""Per operation; with ~8 operations the whole test stays well under a minute on 2 busy cores."""


def test_no_input_makes_the_service_fail(tmp_path: Path) -> None:
    store_dir = tmp_path / "models"
    export(LocalModelStore(store_dir), seed=1)
    export(LocalModelStore(store_dir), seed=2)
    app = make_app(store_dir, follow=False, request_timeout_s=30.0, max_batch=64)
    with TestClient(app):  # runs the lifespan: the model is loaded before the first case
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {op.label for op in operations} >= {"POST /v1/predict", "GET /v1/model", "POST /v1/model/reload"}
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def no_server_error(case: schemathesis.Case) -> None:
                response = case.call()
                case.validate_response(response, checks=[not_a_server_error])

            no_server_error()


def test_openapi_documents_the_predict_body_and_responses(tmp_path: Path) -> None:
    with TestClient(make_app(tmp_path / "models", follow=False)) as client:
        doc = client.get("/openapi.json").json()
    body = doc["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/PredictRequest"}
    assert body["examples"]["one_event"]["value"]["events"][0]["sparse"]["user"] == 196
    components = doc["components"]["schemas"]
    assert set(components["EventIn"]["properties"]) == {"event_id", "ts", "label", "dense", "sparse"}
    assert {"413", "422", "503", "504"} <= set(doc["paths"]["/v1/predict"]["post"]["responses"])
    assert components["PredictResponse"]["examples"]
