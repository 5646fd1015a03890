"""One source per setting: only `UNIREC_*` environment variables configure unirec, and every
`UNIREC_*` name the docs mention is read by a setting (or is a Compose variable of docker-compose.yml)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from pydantic import BaseModel
from pydantic_settings import BaseSettings

from core.settings import CommonSettings
from registry.settings import ChurnKeySettings, RegistrySettings
from services.datasets import DataSettings
from services.inference.settings import ServeSettings
from services.producer import ProducerSettings
from trainer.churn.settings import ChurnSettings
from trainer.settings import TrainerSettings
from unirec.stack import StackSettings

ROOT = Path(__file__).resolve().parents[1]
ALL_SETTINGS: tuple[type[BaseSettings], ...] = (
    CommonSettings,
    RegistrySettings,
    ChurnKeySettings,
    ChurnSettings,
    TrainerSettings,
    ServeSettings,
    ProducerSettings,
    DataSettings,
    StackSettings,
)


def env_names(cls: type[BaseSettings]) -> set[str]:
    """The environment variables `cls` reads (nested settings objects read their own)."""
    prefix = cls.model_config.get("env_prefix", "")
    delimiter = cls.model_config.get("env_nested_delimiter")
    names = set()
    for name, field in cls.model_fields.items():
        kind = field.annotation if isinstance(field.annotation, type) else None
        if kind is not None and issubclass(kind, BaseSettings):
            continue
        alias = field.validation_alias
        env = alias.upper() if isinstance(alias, str) else f"{prefix}{name}".upper()
        names.add(env)
        if kind is not None and issubclass(kind, BaseModel) and delimiter:
            names |= {f"{env}{delimiter}{sub}".upper() for sub in kind.model_fields}
    return names


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.upper().startswith("UNIREC_"):
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.mark.parametrize("cls", ALL_SETTINGS, ids=lambda c: c.__name__)
def test_unprefixed_shell_variables_change_nothing(cls: type[BaseSettings], clean_env: pytest.MonkeyPatch) -> None:
    defaults = cls().model_dump()
    hostile = {"HOME": "/x", "LOG_LEVEL": "debug", "REDIS_URL": "redis://nowhere:1", "KAFKA_BOOTSTRAP": "nowhere:1"}
    # every field name without its prefix too (PORT, TOPIC, STORE, SCHEMA, ...): none may be read
    hostile |= {name.upper(): "1" for name in cls.model_fields}
    for name, value in hostile.items():
        clean_env.setenv(name, value)
    assert cls().model_dump() == defaults


def test_every_setting_reads_a_prefixed_name() -> None:
    for cls in ALL_SETTINGS:
        for name in env_names(cls):
            assert name.startswith("UNIREC_"), f"{cls.__name__} reads {name}"


def test_no_two_settings_read_the_same_variable() -> None:
    """A subclass inherits its parent's fields (one source); unrelated classes must not overlap."""
    owners: dict[str, type[BaseSettings]] = {}
    for cls in ALL_SETTINGS:
        for name in env_names(cls):
            owner = owners.setdefault(name, cls)
            assert issubclass(cls, owner) or issubclass(owner, cls) or _declared_in_common(name, cls, owner), (
                f"{name} is read by both {owner.__name__} and {cls.__name__}"
            )


def _declared_in_common(name: str, a: type[BaseSettings], b: type[BaseSettings]) -> bool:
    """Both inherit the field from one base (CommonSettings' UNIREC_HOME, ...)."""
    shared = [c for c in a.__mro__ if c in b.__mro__ and issubclass(c, BaseSettings) and c is not BaseSettings]
    return any(name in env_names(c) for c in shared)


def test_every_documented_variable_is_read_by_a_setting() -> None:
    read = set().union(*(env_names(cls) for cls in ALL_SETTINGS))
    compose = (ROOT / "docker-compose.yml").read_text()
    compose_vars = set(re.findall(r"\$\{(UNIREC_[A-Z0-9_]+)", compose))
    unknown = {}
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for name in re.findall(r"UNIREC_[A-Z0-9_]+", doc.read_text()):
            if name.endswith("_"):  # a family (`UNIREC_TRAINER_*`), not a variable
                continue
            if name not in read and name not in compose_vars:
                unknown.setdefault(name, doc.name)
    assert not unknown, f"documented variables no setting reads: {unknown}"
