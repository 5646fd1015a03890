"""Where artifact files come from (a store version or delta, a directory) and reading a manifest
with its checks: checksum, JSON, format version, kind, fields. No torch, so listing versions
(`unirec models list`) stays light; `embedding.export.artifact` reads the tensors."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson
from pydantic import ValidationError

from embedding.errors import ArtifactError
from embedding.export.manifest import FORMAT_VERSION, MANIFEST, MANIFEST_SUM, Manifest


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Source(Protocol):
    """Where an artifact's files come from: a store version/delta or a directory."""

    label: str

    def read(self, name: str) -> bytes: ...


@dataclass
class DirSource:
    path: Path

    @property
    def label(self) -> str:
        return str(self.path)

    def read(self, name: str) -> bytes:
        try:
            return (self.path / name).read_bytes()
        except FileNotFoundError:
            raise ArtifactError(f"{self.path / name}: file missing (check: presence)") from None


@dataclass
class StoreSource:
    store: Any
    version: str
    seq: int | None = None

    @property
    def label(self) -> str:
        where = self.version if self.seq is None else f"{self.version}/deltas/{self.seq}"
        return f"{self.store.uri}/{where}"

    def read(self, name: str) -> bytes:
        return self.store.read(self.version, name, self.seq)


def fail(source: Source, name: str, check: str, detail: str) -> ArtifactError:
    return ArtifactError(f"{source.label}/{name}: {detail} (check: {check})")


def read_manifest_doc(source: Source, name: str, sum_name: str, kind: str) -> dict[str, Any]:
    expected = source.read(sum_name).decode(errors="replace").strip()
    raw = source.read(name)
    actual = sha256(raw)
    if actual != expected:
        raise fail(
            source, name, "manifest sha256", f"sha256 {actual[:16]}... differs from {sum_name} {expected[:16]}..."
        )
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise fail(source, name, "json", f"not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise fail(source, name, "json", "not a JSON object")
    version = doc.get("format_version")
    if version != FORMAT_VERSION:
        raise fail(source, name, "format version", f"format_version {version!r}; this reader knows {FORMAT_VERSION}")
    if doc.get("kind") != kind:
        raise fail(source, name, "kind", f"kind {doc.get('kind')!r}, expected {kind!r}")
    return doc


def read_manifest(source: Source) -> Manifest:
    """Only the manifest of a full artifact (its checksum, format version and fields checked)."""
    doc = read_manifest_doc(source, MANIFEST, MANIFEST_SUM, "full")
    try:
        return Manifest.model_validate(doc)
    except ValidationError as exc:
        raise fail(source, MANIFEST, "manifest fields", str(exc)) from exc
