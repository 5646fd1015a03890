"""The model store: numbered, immutable artifact versions (full exports and their deltas).

Used by the trainer (writes) and the inference service (reads). Two back-ends with one interface:

- `LocalModelStore` (default): a directory, `<home>/models` unless `UNIREC_MODEL_STORE` says
  otherwise (`registry.settings`). A version is `versions/<version>/` holding the artifact files,
  its deltas under `versions/<version>/deltas/<seq>/`. Every write goes to a temporary directory first, is fsynced
  and renamed into place, so a reader never sees half a version.
- `RedisModelStore`: the same files as chunked blobs in Redis, for clusters without a shared volume.
  Chunks are written first; the version becomes visible when its file index and its entry in the
  version set are committed in one MULTI/EXEC.

Version ids are `v` + 10 digits, allocated from a counter that only moves forward (a deleted or
rolled-back version's id is never reused), so "newer" is "larger" in both back-ends. The serving
pointer (`rollback`) names the version to serve; without it the newest version is served.

Announcing versions is `registry.notify`.
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson

from core.durable import fsync_dir, write_synced
from embedding.errors import ArtifactError

_VERSION_RE = re.compile(r"^v(\d{10})$")
_FILE_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


def format_version(number: int) -> str:
    if number < 1:
        raise ValueError(f"version numbers start at 1, got {number}")
    return f"v{number:010d}"


def version_number(version: str) -> int:
    match = _VERSION_RE.match(version)
    if not match:
        raise ArtifactError(f"version id {version!r} is not 'v' followed by 10 digits (e.g. v0000000001)")
    return int(match.group(1))


def _check_name(name: str) -> str:
    if not _FILE_RE.match(name) or name in (".", ".."):
        raise ValueError(f"artifact file name {name!r} must match {_FILE_RE.pattern}")
    return name


class ModelStore(abc.ABC):
    """Versions of immutable artifact files. Subclasses implement storage; the policy lives here."""

    uri: str

    # ---- storage primitives -------------------------------------------------------------------
    @abc.abstractmethod
    def allocate_version(self) -> str:
        """A fresh version id, larger than every id this store ever handed out."""

    @abc.abstractmethod
    def write_version(self, version: str, files: Mapping[str, bytes]) -> None:
        """Write a full artifact atomically: afterwards it is listed by `versions()`, never partly."""

    @abc.abstractmethod
    def write_delta(self, version: str, seq: int, files: Mapping[str, bytes]) -> None:
        """Write delta `seq` of `version` atomically."""

    @abc.abstractmethod
    def versions(self) -> list[str]:
        """Complete full versions, oldest first."""

    @abc.abstractmethod
    def deltas(self, version: str) -> list[int]:
        """Sequence numbers of the complete deltas of `version`, ascending."""

    @abc.abstractmethod
    def files(self, version: str, seq: int | None = None) -> list[str]:
        """File names of a version (or of one of its deltas)."""

    @abc.abstractmethod
    def read(self, version: str, name: str, seq: int | None = None) -> bytes:
        """One file's bytes; ArtifactError naming the file when it does not exist."""

    @abc.abstractmethod
    def delete_version(self, version: str) -> None:
        """Remove a version and its deltas (no-op when absent)."""

    @abc.abstractmethod
    def get_pointer(self) -> str | None:
        """The pinned version to serve, or None to serve the newest."""

    @abc.abstractmethod
    def set_pointer(self, version: str | None) -> None: ...

    # ---- policy ---------------------------------------------------------------------------------
    def latest(self) -> str | None:
        versions = self.versions()
        return versions[-1] if versions else None

    def serving_version(self) -> str | None:
        """The version the inference service should serve: the pointer if set, else the newest."""
        pinned = self.get_pointer()
        if pinned is not None and pinned in self.versions():
            return pinned
        return self.latest()

    def rollback(self, version: str) -> None:
        """Serve `version` (an existing, older or newer, version) until `unpin()`; deletes nothing."""
        version_number(version)
        if version not in self.versions():
            raise ArtifactError(f"cannot roll back to {version}: {self.uri} holds {self.versions()}")
        self.set_pointer(version)

    def unpin(self) -> None:
        """Serve the newest version again."""
        self.set_pointer(None)

    def retain(self, keep: int) -> list[str]:
        """Delete all but the newest `keep` versions; never the pinned one. Returns the deleted ids."""
        if keep < 1:
            raise ValueError(f"retention must keep at least 1 version, got {keep}")
        pinned = self.get_pointer()
        versions = self.versions()
        doomed = [v for v in versions[: max(0, len(versions) - keep)] if v != pinned]
        for version in doomed:
            self.delete_version(version)
        return doomed


# ---------------------------------------------------------------------------------------------------
# local directory


class LocalModelStore(ModelStore):
    def __init__(self, root: str | Path) -> None:
        """Creates nothing until the first write, so readers can open a read-only mount."""
        self.root = Path(root)
        self.uri = f"file://{self.root.resolve()}"

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        with open(self.root / ".lock", "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _dir(self, version: str, seq: int | None = None) -> Path:
        version_number(version)
        path = self.root / "versions" / version
        return path if seq is None else path / "deltas" / f"{seq:010d}"

    def allocate_version(self) -> str:
        counter = self.root / "COUNTER"
        (self.root / "versions").mkdir(parents=True, exist_ok=True)
        with self._lock():
            last = int(counter.read_text()) if counter.exists() else 0
            existing = [version_number(v) for v in self._all_dirs()]
            number = max([last, *existing]) + 1
            tmp = counter.with_suffix(".tmp")
            write_synced(tmp, str(number).encode())
            os.replace(tmp, counter)
        return format_version(number)

    def _all_dirs(self) -> list[str]:
        versions = self.root / "versions"
        if not versions.is_dir():
            return []
        return [p.name for p in versions.iterdir() if _VERSION_RE.match(p.name)]

    def _atomic_dir(self, target: Path, files: Mapping[str, bytes]) -> None:
        if target.exists():
            raise ArtifactError(f"{target} already exists: artifact versions are immutable")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            for name, data in files.items():
                write_synced(tmp / _check_name(name), data)
            fsync_dir(tmp)
            os.rename(tmp, target)
            fsync_dir(target.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def write_version(self, version: str, files: Mapping[str, bytes]) -> None:
        self._atomic_dir(self._dir(version), files)

    def write_delta(self, version: str, seq: int, files: Mapping[str, bytes]) -> None:
        if not self._dir(version).is_dir():
            raise ArtifactError(f"cannot write delta {seq} of {version}: no such version in {self.uri}")
        self._atomic_dir(self._dir(version, seq), files)

    def versions(self) -> list[str]:
        return sorted(self._all_dirs(), key=version_number)

    def deltas(self, version: str) -> list[int]:
        path = self._dir(version) / "deltas"
        if not path.is_dir():
            return []
        return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit())

    def files(self, version: str, seq: int | None = None) -> list[str]:
        path = self._dir(version, seq)
        if not path.is_dir():
            raise ArtifactError(f"{path}: no such artifact in {self.uri}")
        return sorted(p.name for p in path.iterdir() if p.is_file())

    def read(self, version: str, name: str, seq: int | None = None) -> bytes:
        path = self._dir(version, seq) / _check_name(name)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise ArtifactError(f"{path}: file missing (check: presence)") from None

    def path(self, version: str, seq: int | None = None) -> Path:
        return self._dir(version, seq)

    def delete_version(self, version: str) -> None:
        path = self._dir(version)
        if path.exists():
            # rename first so readers never see a half-deleted version
            trash = path.with_name(f".deleted-{version}-{os.getpid()}-{time.monotonic_ns()}")
            os.rename(path, trash)
            shutil.rmtree(trash, ignore_errors=True)

    def get_pointer(self) -> str | None:
        pointer = self.root / "SERVING"
        if not pointer.exists():
            return None
        text = pointer.read_text().strip()
        return text or None

    def set_pointer(self, version: str | None) -> None:
        pointer = self.root / "SERVING"
        if version is None:
            pointer.unlink(missing_ok=True)
            return
        version_number(version)
        tmp = pointer.with_suffix(".tmp")
        write_synced(tmp, version.encode())
        os.replace(tmp, pointer)


# ---------------------------------------------------------------------------------------------------
# Redis


class RedisModelStore(ModelStore):
    """Files as chunks under `<prefix>:<version>[:d<seq>]:f:<name>:<i>`, indexed by a hash per
    artifact and a sorted set of versions (score = version number)."""

    def __init__(
        self,
        url: str,
        prefix: str = "unirec:store",
        chunk_bytes: int = 4 << 20,
        client: Any = None,
        pending_ttl_s: int = 3600,
    ) -> None:
        import redis

        if chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
        self.uri = url
        self.prefix = prefix
        self.chunk_bytes = chunk_bytes
        self.pending_ttl_s = pending_ttl_s
        self.client = client if client is not None else redis.Redis.from_url(url)

    def _art(self, version: str, seq: int | None = None) -> str:
        version_number(version)
        return f"{self.prefix}:{version}" if seq is None else f"{self.prefix}:{version}:d{seq:010d}"

    def allocate_version(self) -> str:
        return format_version(int(self.client.incr(f"{self.prefix}:counter")))

    def _write(self, art: str, files: Mapping[str, bytes], commit: Any) -> None:
        """Chunks first, with an expiry (a writer that dies mid-way leaves no garbage behind), then
        one MULTI/EXEC that makes them permanent and commits the index."""
        index: dict[str, bytes] = {}
        chunk_keys: list[str] = []
        for name, data in files.items():
            _check_name(name)
            n_chunks = max(1, -(-len(data) // self.chunk_bytes))
            pipe = self.client.pipeline(transaction=False)
            for i in range(n_chunks):
                key = f"{art}:f:{name}:{i}"
                pipe.set(key, data[i * self.chunk_bytes : (i + 1) * self.chunk_bytes], ex=self.pending_ttl_s)
                chunk_keys.append(key)
                if len(pipe) >= 16:  # bound the pipeline's memory to 16 chunks
                    pipe.execute()
            pipe.execute()
            index[name] = orjson.dumps({"size": len(data), "chunks": n_chunks})
        tx = self.client.pipeline(transaction=True)
        for key in chunk_keys:
            tx.persist(key)
        tx.delete(f"{art}:files")
        tx.hset(f"{art}:files", mapping=index)
        commit(tx)
        results = tx.execute()
        if not all(results[: len(chunk_keys)]):
            raise ArtifactError(f"{self.uri}: chunks of {art} expired before the commit (raise pending_ttl_s)")

    def write_version(self, version: str, files: Mapping[str, bytes]) -> None:
        if self.client.zscore(f"{self.prefix}:versions", version) is not None:
            raise ArtifactError(f"{self.uri} already holds {version}: artifact versions are immutable")
        self._write(
            self._art(version), files, lambda tx: tx.zadd(f"{self.prefix}:versions", {version: version_number(version)})
        )

    def write_delta(self, version: str, seq: int, files: Mapping[str, bytes]) -> None:
        if self.client.zscore(f"{self.prefix}:versions", version) is None:
            raise ArtifactError(f"cannot write delta {seq} of {version}: no such version in {self.uri}")
        self._write(self._art(version, seq), files, lambda tx: tx.zadd(f"{self._art(version)}:deltas", {str(seq): seq}))

    def versions(self) -> list[str]:
        return [v.decode() for v in self.client.zrange(f"{self.prefix}:versions", 0, -1)]

    def deltas(self, version: str) -> list[int]:
        return [int(s) for s in self.client.zrange(f"{self._art(version)}:deltas", 0, -1)]

    def _index(self, version: str, seq: int | None) -> dict[str, dict[str, int]]:
        raw = self.client.hgetall(f"{self._art(version, seq)}:files")
        if not raw:
            what = version if seq is None else f"delta {seq} of {version}"
            raise ArtifactError(f"{self.uri}: no artifact {what}")
        return {k.decode(): orjson.loads(v) for k, v in raw.items()}

    def files(self, version: str, seq: int | None = None) -> list[str]:
        return sorted(self._index(version, seq))

    def read(self, version: str, name: str, seq: int | None = None) -> bytes:
        art = self._art(version, seq)
        entry = self._index(version, seq).get(name)
        if entry is None:
            raise ArtifactError(f"{art}:{name}: file missing (check: presence)")
        keys = [f"{art}:f:{name}:{i}" for i in range(entry["chunks"])]
        chunks = [c for i in range(0, len(keys), 16) for c in self.client.mget(keys[i : i + 16])]
        if any(c is None for c in chunks):
            raise ArtifactError(f"{art}:{name}: chunk missing (check: presence)")
        return b"".join(chunks)

    def _delete_art(self, art: str) -> None:
        keys = list(self.client.scan_iter(match=f"{art}:*", count=1000))
        for i in range(0, len(keys), 500):
            self.client.delete(*keys[i : i + 500])

    def delete_version(self, version: str) -> None:
        self.client.zrem(f"{self.prefix}:versions", version)  # invisible first, then the data
        self._delete_art(self._art(version))

    def get_pointer(self) -> str | None:
        value = self.client.get(f"{self.prefix}:serving")
        return value.decode() if value else None

    def set_pointer(self, version: str | None) -> None:
        if version is None:
            self.client.delete(f"{self.prefix}:serving")
        else:
            version_number(version)
            self.client.set(f"{self.prefix}:serving", version)


def open_store(location: str | Path | None = None, home: str | Path = ".unirec") -> ModelStore:
    """A store from a directory, `file://DIR` or `redis://...`; empty or None: `<home>/models`."""
    where = "" if location is None else str(location)
    if not where:
        return LocalModelStore(Path(home) / "models")
    if where.startswith(("redis://", "rediss://", "unix://")):
        return RedisModelStore(where)
    if where.startswith("file://"):
        where = where[len("file://") :]
    return LocalModelStore(where)
