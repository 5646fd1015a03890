"""The model store contract on both back-ends, retention and rollback, and Redis publication."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from embedding.errors import ArtifactError
from registry.notify import Notification, Publisher
from registry.store import LocalModelStore, ModelStore, RedisModelStore, open_store, version_number


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.integration)])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ModelStore]:
    if request.param == "local":
        yield LocalModelStore(tmp_path / "models")
        return
    redis_url = request.getfixturevalue("redis_url")
    store = RedisModelStore(redis_url, prefix=f"test:{uuid.uuid4().hex[:8]}", chunk_bytes=1000)
    yield store
    for version in store.versions():
        store.delete_version(version)
    store.client.delete(f"{store.prefix}:counter", f"{store.prefix}:serving")
    store.client.close()


FILES = {"manifest.json": b'{"a": 1}', "tables.safetensors": bytes(range(256)) * 20}


def test_versions_are_monotonic_and_never_reused(any_store: ModelStore) -> None:
    first, second = any_store.allocate_version(), any_store.allocate_version()
    assert version_number(second) == version_number(first) + 1
    any_store.write_version(second, FILES)
    any_store.delete_version(second)
    assert version_number(any_store.allocate_version()) > version_number(second)


def test_files_round_trip_and_versions_are_immutable(any_store: ModelStore) -> None:
    version = any_store.allocate_version()
    assert any_store.versions() == []
    any_store.write_version(version, FILES)
    assert any_store.versions() == [version]
    assert any_store.files(version) == sorted(FILES)
    for name, data in FILES.items():
        assert any_store.read(version, name) == data
    with pytest.raises(ArtifactError, match="immutable"):
        any_store.write_version(version, FILES)
    with pytest.raises(ArtifactError, match=r"other.bin: file missing \(check: presence\)"):
        any_store.read(version, "other.bin")


def test_deltas_belong_to_their_version(any_store: ModelStore) -> None:
    version = any_store.allocate_version()
    with pytest.raises(ArtifactError, match="no such version"):
        any_store.write_delta(version, 1, FILES)
    any_store.write_version(version, FILES)
    for seq in (2, 1, 10):
        any_store.write_delta(version, seq, {"delta.json": str(seq).encode()})
    assert any_store.deltas(version) == [1, 2, 10]
    assert any_store.read(version, "delta.json", seq=10) == b"10"
    any_store.delete_version(version)
    assert any_store.versions() == [] and any_store.deltas(version) == []


def test_retention_rollback_and_pointer(any_store: ModelStore) -> None:
    versions = []
    for _ in range(4):
        versions.append(any_store.allocate_version())
        any_store.write_version(versions[-1], FILES)
    assert any_store.serving_version() == versions[-1]
    any_store.rollback(versions[0])
    assert any_store.serving_version() == versions[0]
    assert any_store.versions() == versions, "rollback deletes nothing"
    assert any_store.retain(2) == [versions[1]], "the pinned version survives retention"
    assert any_store.versions() == [versions[0], *versions[2:]]
    any_store.unpin()
    assert any_store.serving_version() == versions[-1]
    with pytest.raises(ArtifactError, match="cannot roll back"):
        any_store.rollback(versions[1])
    with pytest.raises(ArtifactError, match="not 'v' followed by 10 digits"):
        any_store.rollback("latest")


def test_local_writes_are_atomic(tmp_path: Path) -> None:
    store = LocalModelStore(tmp_path / "models")
    version = store.allocate_version()
    with pytest.raises(ValueError, match="file name"):
        store.write_version(version, {"ok.bin": b"1", "../escape": b"2"})
    assert store.versions() == []
    assert [p.name for p in (tmp_path / "models" / "versions").iterdir()] == [], "no temporary directory left"
    store.write_version(version, FILES)
    assert not (tmp_path / "escape").exists()


def test_open_store_picks_the_back_end(tmp_path: Path) -> None:
    assert isinstance(open_store(tmp_path / "a"), LocalModelStore)
    assert isinstance(open_store(f"file://{tmp_path}/b"), LocalModelStore)
    default = open_store(None, home=tmp_path)
    assert isinstance(default, LocalModelStore) and default.root == tmp_path / "models"
    assert isinstance(open_store("redis://127.0.0.1:1/0"), RedisModelStore)


@pytest.mark.integration
def test_publisher_sets_latest_and_notifies_subscribers(redis_url: str) -> None:
    channel = f"test:models:{uuid.uuid4().hex[:8]}"
    publisher = Publisher(redis_url, channel=channel, latest_key=f"{channel}:latest")
    pubsub = publisher.client.pubsub()
    pubsub.subscribe(channel)
    assert pubsub.get_message(timeout=2)["type"] == "subscribe"
    publisher.publish(
        Notification(
            version="v0000000003+2", kind="delta", base_version="v0000000003", seq=2, serving="v0000000003", store="x"
        )
    )
    message = pubsub.get_message(timeout=2)
    assert message is not None and message["type"] == "message"
    doc = orjson.loads(message["data"])
    assert (doc["version"], doc["kind"], doc["seq"], doc["serving"]) == ("v0000000003+2", "delta", 2, "v0000000003")
    assert publisher.latest() == Notification.model_validate(doc)
    pubsub.close()
    publisher.close()


@pytest.mark.integration
def test_redis_store_from_concurrent_writers_never_shares_an_id(redis_url: str) -> None:
    store = RedisModelStore(redis_url, prefix=f"test:{uuid.uuid4().hex[:8]}")
    ids: list[str] = []
    lock = threading.Lock()

    def grab() -> None:
        for _ in range(20):
            version = store.allocate_version()
            with lock:
                ids.append(version)

    threads = [threading.Thread(target=grab) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 80
    store.client.delete(f"{store.prefix}:counter")


def test_reading_a_store_creates_nothing(tmp_path: Path) -> None:
    store = LocalModelStore(tmp_path / "not-yet")
    assert store.versions() == [] and store.serving_version() is None
    assert not (tmp_path / "not-yet").exists(), "a reader on a read-only mount must not need to write"


@pytest.mark.integration
def test_redis_chunks_are_permanent_only_once_committed(redis_url: str) -> None:
    store = RedisModelStore(redis_url, prefix=f"test:{uuid.uuid4().hex[:8]}", chunk_bytes=1000)
    version = store.allocate_version()
    store.write_version(version, FILES)
    keys = list(store.client.scan_iter(match=f"{store.prefix}:{version}:f:*"))
    assert len(keys) == 1 + 6 and all(store.client.ttl(k) == -1 for k in keys)
    # a writer that dies after some chunks: nothing becomes visible and its chunks expire by themselves

    class Dying(dict):
        def items(self):  # type: ignore[no-untyped-def]
            yield "tables.safetensors", b"y" * 2500
            raise RuntimeError("writer killed")

    doomed = store.allocate_version()
    with pytest.raises(RuntimeError, match="killed"):
        store.write_version(doomed, Dying())
    assert doomed not in store.versions()
    orphans = list(store.client.scan_iter(match=f"{store.prefix}:{doomed}:*"))
    assert len(orphans) == 3 and all(0 < store.client.ttl(k) <= store.pending_ttl_s for k in orphans)
    for key in store.client.scan_iter(match=f"{store.prefix}:*"):
        store.client.delete(key)
