from __future__ import annotations

import pytest
from pydantic import ValidationError

from core.settings import CommonSettings


def test_defaults_point_at_local_servers() -> None:
    settings = CommonSettings()
    assert settings.kafka_endpoint == ("127.0.0.1", 9092)
    assert settings.redis_endpoint == ("127.0.0.1", 6379)


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNIREC_KAFKA_BOOTSTRAP", "broker-a:29092,broker-b:29092")
    assert CommonSettings().kafka_endpoint == ("broker-a", 29092)


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("kafka_bootstrap", "no-port", "'no-port' is not host:port"),
        ("redis_url", "http://x", "must start with redis://"),
        ("log_level", "LOUD", "'LOUD' is not one of"),
    ],
)
def test_bad_values_fail_with_the_value(field: str, value: str, fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        CommonSettings(**{field: value})


def test_unknown_keys_are_errors() -> None:
    with pytest.raises(ValidationError, match="extra"):
        CommonSettings(kafka_bootstrapp="x:1")
