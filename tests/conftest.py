"""Session fixtures: a real Kafka-protocol broker and a real Redis server on free loopback ports."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from core.net import free_port
from unirec.infra import LocalServer

# CI replays the same examples every run (a red CI is then a real regression, reproducible locally
# with CI=1); developers get fresh random examples each run.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA (gpu marker); none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def infra_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("infra")


def _serve(kind: str, home: Path) -> Iterator[LocalServer]:
    server = LocalServer(kind, "127.0.0.1", free_port(), home)  # type: ignore[arg-type]
    server.start(timeout=30)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def kafka_server(infra_home: Path) -> Iterator[LocalServer]:
    yield from _serve("kafka", infra_home)


@pytest.fixture(scope="session")
def redis_server(infra_home: Path) -> Iterator[LocalServer]:
    yield from _serve("redis", infra_home)


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_server: LocalServer) -> str:
    """host:port of the session's broker."""
    return kafka_server.address


@pytest.fixture(scope="session")
def redis_url(redis_server: LocalServer) -> str:
    """redis:// URL of the session's Redis server."""
    return redis_server.address


@pytest.fixture
def topic_name(request: pytest.FixtureRequest) -> str:
    """A topic name unique to the test, so tests sharing the session broker never see each other's data."""
    import re
    import uuid

    return re.sub(r"[^A-Za-z0-9._-]", "-", request.node.name)[:80] + "-" + uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def movielens_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ML-100k fetched by `services.datasets` (from the recbole wheel on PyPI) into a session test cache."""
    from services.datasets import movielens_path

    return movielens_path(home=tmp_path_factory.mktemp("unirec-home"))
