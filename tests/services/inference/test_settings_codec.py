"""Settings sources and the msgspec -> FastAPI 422 mapping, without a server."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from services.inference.codec import RequestInvalid, decode_predict
from services.inference.model_holder import failure_reason
from services.inference.settings import ServeSettings


def test_common_fields_keep_their_process_wide_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNIREC_HOME", "/srv/unirec")
    monkeypatch.setenv("UNIREC_REDIS_URL", "redis://cache:6379/1")
    monkeypatch.setenv("UNIREC_SERVE_PORT", "9001")
    monkeypatch.setenv("UNIREC_SERVE_SCHEMA", "movielens")
    monkeypatch.setenv("UNIREC_PORT", "1")  # not a serve setting: ignored
    settings = ServeSettings()
    assert (str(settings.home), settings.redis_url, settings.port) == ("/srv/unirec", "redis://cache:6379/1", 9001)
    assert settings.expected_schema == "movielens"
    assert settings.model_store == "/srv/unirec/models"


def test_bad_settings_fail_naming_the_value() -> None:
    with pytest.raises(ValidationError, match="port"):
        ServeSettings(port=0)
    with pytest.raises(ValidationError, match="extra"):
        ServeSettings(prot=8000)
    assert ServeSettings(api_key="s3cret").redacted()["api_key"] == "set"


@given(st.binary(max_size=200))
def test_any_bytes_either_decode_or_give_a_422_detail(body: bytes) -> None:
    try:
        decode_predict(body, "application/json")
    except RequestInvalid as exc:
        assert exc.details and all(d["loc"][0] in ("body", "header") and d["msg"] for d in exc.details)


def test_unknown_content_type_is_422_on_the_header() -> None:
    with pytest.raises(RequestInvalid) as info:
        decode_predict(b"{}", "text/csv")
    assert info.value.details[0]["loc"] == ["header", "content-type"]


def test_msgpack_bodies_decode_like_json() -> None:
    doc = {"events": [{"event_id": "a", "ts": 1, "sparse": {"user": [1, "x"]}}]}
    assert decode_predict(msgspec.msgpack.encode(doc), "application/msgpack") == decode_predict(
        msgspec.json.encode(doc), None
    )


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("store/v1/tables.safetensors: sha256 ab... differs (check: sha256)", "checksum"),
        ("store/v1/manifest.json: sha256 differs from manifest.sha256 (check: manifest sha256)", "checksum"),
        ("delta v1+3: gap, serving v1+1 needs delta 2 next (check: sequence)", "gap"),
        ("store/v1/manifest.json: artifact is for schema 'x' (check: expected schema)", "schema"),
        ("store/v1/params.safetensors: file missing (check: presence)", "missing"),
        ("store/v1/manifest.json: not valid JSON (check: json)", "format"),
        ("no check named", "format"),
    ],
)
def test_failure_reasons_come_from_the_loaders_check_names(message: str, reason: str) -> None:
    from embedding.errors import ArtifactError

    assert failure_reason(ArtifactError(message)) == reason
    assert failure_reason(RuntimeError(message)) == "error"
