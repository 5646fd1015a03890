"""Artifact files <-> manifests and tensors, with every check a reader needs before trusting them.

Reading order (each failure is an `ArtifactError` naming the file and the check):
manifest checksum -> JSON -> format version -> kind -> manifest fields -> method -> schema fingerprint
-> expected schema -> every listed file's presence, size and sha256 -> safetensors -> tensor shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from embedding.errors import ArtifactError
from embedding.export.manifest import (
    DELTA,
    DELTA_SUM,
    MANIFEST,
    MANIFEST_SUM,
    PARAMS,
    ROWS,
    SEEN,
    TABLES,
    DeltaManifest,
    FileEntry,
    Manifest,
)
from embedding.export.quantize import stored_dtype, stored_shape
from embedding.export.sources import DirSource, Source, StoreSource, read_manifest, sha256  # noqa: F401  (re-exported)
from embedding.export.sources import fail as _fail
from embedding.export.sources import read_manifest_doc as _read_manifest_doc
from embedding.schema import FeatureSchema


def entry(data: bytes) -> FileEntry:
    return FileEntry(sha256=sha256(data), size=len(data))


def save_tensors(tensors: Mapping[str, torch.Tensor]) -> bytes:
    return st_save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})


# ---------------------------------------------------------------------------------------------------
# writing


def full_files(manifest_fields: dict[str, Any], payloads: Mapping[str, bytes]) -> tuple[Manifest, dict[str, bytes]]:
    """The manifest (with `files` filled in) and all files of a full artifact."""
    manifest = Manifest.model_validate({**manifest_fields, "files": {n: entry(d) for n, d in payloads.items()}})
    raw = orjson.dumps(manifest.model_dump(mode="json"), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    return manifest, {**payloads, MANIFEST: raw, MANIFEST_SUM: (sha256(raw) + "\n").encode()}


def delta_files(
    manifest_fields: dict[str, Any], payloads: Mapping[str, bytes]
) -> tuple[DeltaManifest, dict[str, bytes]]:
    manifest = DeltaManifest.model_validate({**manifest_fields, "files": {n: entry(d) for n, d in payloads.items()}})
    raw = orjson.dumps(manifest.model_dump(mode="json"), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    return manifest, {**payloads, DELTA: raw, DELTA_SUM: (sha256(raw) + "\n").encode()}


# ---------------------------------------------------------------------------------------------------
# reading


def _check_method(source: Source, name: str, method: str) -> None:
    from embedding.methods import method_names

    if method not in method_names():
        raise _fail(source, name, "method", f"unknown embedding method {method!r}; this reader knows {method_names()}")


def _check_files(source: Source, files: Mapping[str, FileEntry]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for name, expected in files.items():
        data = source.read(name)
        if len(data) != expected.size:
            raise _fail(
                source, name, "size", f"{len(data)} bytes, manifest says {expected.size} (truncated or replaced)"
            )
        actual = sha256(data)
        if actual != expected.sha256:
            raise _fail(
                source, name, "sha256", f"sha256 {actual[:16]}... differs from manifest {expected.sha256[:16]}..."
            )
        out[name] = data
    return out


def _load_st(source: Source, name: str, data: bytes) -> dict[str, torch.Tensor]:
    try:
        return st_load(data)
    except (SafetensorError, ValueError) as exc:
        raise _fail(source, name, "safetensors", f"not a readable safetensors file: {exc}") from exc


@dataclass
class FullArtifact:
    manifest: Manifest
    schema: FeatureSchema
    tables: dict[str, torch.Tensor]
    """Table key -> stored (quantised) tensor."""
    params: dict[str, torch.Tensor]
    """Every other state-dict entry (dense layers fp32, method tensors fp16/fp32)."""
    seen: dict[str, torch.Tensor] | None
    """Table key -> bool [rows]: rows updated in training, when the trainer provided them."""


@dataclass
class DeltaArtifact:
    manifest: DeltaManifest
    rows: dict[str, tuple[torch.Tensor, torch.Tensor]]
    """Table key -> (int64 row ids, stored rows)."""
    params: dict[str, torch.Tensor]


def read_full(source: Source, expected_schema: FeatureSchema | None = None) -> FullArtifact:
    manifest = read_manifest(source)
    _check_method(source, MANIFEST, manifest.method)
    try:
        schema = FeatureSchema.model_validate(manifest.feature_schema)
    except ValidationError as exc:
        raise _fail(source, MANIFEST, "feature schema", str(exc)) from exc
    if schema.fingerprint() != manifest.schema_fingerprint:
        raise _fail(source, MANIFEST, "schema fingerprint", "feature_schema does not hash to schema_fingerprint")
    if expected_schema is not None and expected_schema.fingerprint() != manifest.schema_fingerprint:
        raise _fail(
            source,
            MANIFEST,
            "expected schema",
            f"artifact is for schema {schema.name!r} ({manifest.schema_fingerprint[:12]}), "
            f"expected {expected_schema.name!r} ({expected_schema.fingerprint()[:12]})",
        )
    for required in (TABLES, PARAMS):
        if required not in manifest.files:
            raise _fail(source, MANIFEST, "files", f"manifest lists no {required}")
    data = _check_files(source, manifest.files)
    tables = _load_st(source, TABLES, data[TABLES])
    for table in manifest.tables:
        tensor = tables.get(table.key)
        shape = stored_shape(table.quantization, table.rows, table.dim)
        dtype = stored_dtype(table.quantization)
        if tensor is None or tuple(tensor.shape) != shape or tensor.dtype != dtype:
            got = "absent" if tensor is None else f"{tensor.dtype} {tuple(tensor.shape)}"
            raise _fail(source, TABLES, "tensor shape", f"table {table.key!r} is {got}, expected {dtype} {shape}")
    params = _load_st(source, PARAMS, data[PARAMS])
    _check_robe_layout(source, manifest, params)
    seen = None
    if SEEN in data:
        packed = _load_st(source, SEEN, data[SEEN])
        seen = {t.key: unpack_bits(packed[t.key], t.rows) for t in manifest.tables if t.key in packed}
    return FullArtifact(manifest, schema, tables, params, seen)


def _check_robe_layout(source: Source, manifest: Manifest, params: Mapping[str, torch.Tensor]) -> None:
    """ROBE artifacts without `hash_version` in their config are hash version 2 (the only one built)
    when their array is a table; one written as a flat `sparse.weight` tensor predates the tables and
    recorded no hash version, so it may hash with version 1 (colliding chunks moved together):
    refused rather than served with other hashes than it was trained with."""
    if manifest.method == "robe" and "sparse.weight" in params:
        version = manifest.method_config.get("hash_version")
        raise _fail(
            source,
            PARAMS,
            "method layout",
            f"ROBE array stored as a flat tensor (hash_version {version if version is not None else 'unrecorded'}):"
            " written before ROBE arrays were TorchRec tables; retrain the model with this version",
        )


def read_delta(source: Source, base: Manifest | None = None) -> DeltaArtifact:
    doc = _read_manifest_doc(source, DELTA, DELTA_SUM, "delta")
    try:
        manifest = DeltaManifest.model_validate(doc)
    except ValidationError as exc:
        raise _fail(source, DELTA, "manifest fields", str(exc)) from exc
    if base is not None:
        for field in ("schema_fingerprint", "method", "quantization", "sparse_dtype"):
            if getattr(manifest, field) != getattr(base, field):
                raise _fail(
                    source, DELTA, field, f"{field} {getattr(manifest, field)!r} != base's {getattr(base, field)!r}"
                )
        if manifest.base_version != base.version:
            raise _fail(source, DELTA, "base version", f"delta of {manifest.base_version}, model is {base.version}")
    data = _check_files(source, manifest.files)
    raw_rows = _load_st(source, ROWS, data[ROWS]) if ROWS in data else {}
    rows: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key, count in manifest.tables.items():
        ids, stored = raw_rows.get(f"{key}:ids"), raw_rows.get(f"{key}:rows")
        if ids is None or stored is None or ids.shape[0] != count or stored.shape[0] != count:
            raise _fail(source, ROWS, "tensor shape", f"table {key!r}: expected {count} ids and rows")
        rows[key] = (ids, stored)
    params = _load_st(source, PARAMS, data[PARAMS]) if PARAMS in data else {}
    return DeltaArtifact(manifest, rows, params)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.packbits(mask.to(torch.bool).numpy()))


def unpack_bits(packed: torch.Tensor, n: int) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.unpackbits(packed.numpy(), count=n).astype(bool))


def apply_delta_tensors(
    tables: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor], delta: DeltaArtifact
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Stored tables and params of `base + delta` (new tensors; the inputs are not modified)."""
    out_tables = dict(tables)
    for key, (ids, stored) in delta.rows.items():
        if key not in out_tables:
            raise ArtifactError(f"delta {delta.manifest.version} carries rows of unknown table {key!r} (check: tables)")
        table = out_tables[key].clone()
        table[ids] = stored
        out_tables[key] = table
    return out_tables, {**params, **delta.params}
