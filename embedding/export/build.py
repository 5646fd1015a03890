"""Turn a trained DCNModel into the files of a checksummed artifact (full or delta), in memory.

    manifest, files = full_artifact(model, "v0000000001", "int8", ExportMeta(step=..., offsets=...))
    manifest, files = delta_artifact(base_manifest, 1, {"unified_0": touched_rows}, model, meta)

Writing the files as a version of a model store and announcing them is the registry's job
(`registry.exporter`). The model comes as an unsharded `DCNModel` or as `(schema, config, state_dict)` with the keys of
`build_model(schema, config).state_dict()`. Factorised methods are collapsed (`method.collapse()`);
every TorchRec EmbeddingBagCollection table is quantised row-wise; the dense network stays fp32.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from embedding.errors import ArtifactError
from embedding.export.artifact import delta_files, full_files, pack_bits, save_tensors
from embedding.export.manifest import (
    FORMAT_VERSION,
    PARAMS,
    ROWS,
    SEEN,
    TABLES,
    DeltaManifest,
    ExportMeta,
    Manifest,
    TableEntry,
    utc_now,
)
from embedding.export.quantize import check_quantization, quantize_rows, table_quantization
from embedding.model import DCNModel, ModelConfig, build_model
from embedding.schema import FeatureSchema

ModelSource = DCNModel | tuple[FeatureSchema, ModelConfig, Mapping[str, torch.Tensor]]
SparseDtype = Literal["fp16", "fp32"]


def find_tables(method: nn.Module, prefix: str = "sparse.", quantization: str = "fp32") -> list[TableEntry]:
    """Every TorchRec EmbeddingBagCollection table inside `method`, keyed by its state-dict key, with
    the storage `quantization` gives it (`table_quantization`)."""
    out = []
    for path, module in method.named_modules():
        if type(module) is EmbeddingBagCollection:
            base = f"{prefix}{path}." if path else prefix
            for cfg in module.embedding_bag_configs():
                out.append(
                    TableEntry(
                        key=f"{base}embedding_bags.{cfg.name}.weight",
                        rows=cfg.num_embeddings,
                        dim=cfg.embedding_dim,
                        quantization=table_quantization(quantization, cfg.embedding_dim),
                    )
                )
    return out


def _build(schema: FeatureSchema, config: ModelConfig, meta: bool) -> DCNModel:
    """The model's structure; with `meta`, tables are not allocated (methods taking a `device`)."""
    with torch.random.fork_rng():  # build_model seeds the global RNG: keep the caller's stream
        if meta:
            try:
                return build_model(schema, config, device="meta")
            except (TypeError, RuntimeError, NotImplementedError):
                pass
        return build_model(schema, config)


@dataclass
class ExportState:
    """A model ready to write: the served (collapsed) config, its plain state and its tables."""

    schema: FeatureSchema
    config: ModelConfig
    trained_method: str
    state: dict[str, torch.Tensor]
    tables: list[TableEntry]
    collapsed: bool


@dataclass(frozen=True)
class _Layout:
    shapes: dict[str, tuple[int, ...]]
    tables: list[TableEntry]
    collapsible: bool
    versions: dict[str, Any]
    """The method's format versions (`hash_version` of ROBE), recorded in the manifest's config."""


_VERSION_KEYS = ("hash_version",)


def _versions(method: nn.Module) -> dict[str, Any]:
    config = method.config()  # type: ignore[operator]
    return {k: config[k] for k in _VERSION_KEYS if k in config}


def _with_versions(config: ModelConfig, versions: Mapping[str, Any]) -> ModelConfig:
    """`config` with the method's format versions written out, so an artifact says how it hashes
    even when the trainer's arguments left them at their defaults."""
    if all(k in config.method_args for k in versions):
        return config
    return config.model_copy(update={"method_args": {**versions, **config.method_args}})


_LAYOUTS: dict[tuple[str, str], _Layout] = {}


def _layout(schema: FeatureSchema, config: ModelConfig) -> _Layout:
    """State-dict shapes and tables of `build_model(schema, config)`, built once on the meta device
    (a trainer publishing a delta every few seconds should not rebuild the model each time)."""
    key = (schema.fingerprint(), config.model_dump_json())
    layout = _LAYOUTS.get(key)
    if layout is None:
        model = _build(schema, config, meta=True)
        layout = _Layout(
            {k: tuple(v.shape) for k, v in model.state_dict().items()},
            find_tables(model.sparse),
            hasattr(model.sparse, "collapse"),
            _versions(model.sparse),
        )
        if len(_LAYOUTS) >= 16:
            _LAYOUTS.clear()
        _LAYOUTS[key] = layout
    return layout


def prepare(source: ModelSource) -> ExportState:
    """Validate the state against the model structure and collapse factorised layers."""
    if isinstance(source, DCNModel):
        model: DCNModel = source
        schema, config = model.schema, model.config
        state = {k: v.detach() for k, v in model.state_dict().items()}
    else:
        schema, config, raw_state = source
        state = {k: v.detach() for k, v in raw_state.items()}
        layout = _layout(schema, config)
        expected = layout.shapes
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(
                f"state_dict does not match build_model(schema, config) for method {config.method!r}: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        bad = [k for k, shape in expected.items() if shape != tuple(state[k].shape)]
        if bad:
            k = bad[0]
            raise ValueError(f"state_dict[{k!r}] has shape {tuple(state[k].shape)}, model expects {expected[k]}")
        if not layout.collapsible:
            served = _with_versions(config, layout.versions)
            return ExportState(schema, served, config.method, state, list(layout.tables), collapsed=False)
        model = _build(schema, config, meta=False)
        model.load_state_dict(state)
    if not hasattr(model.sparse, "collapse"):
        served = _with_versions(config, _versions(model.sparse))
        return ExportState(schema, served, config.method, state, find_tables(model.sparse), collapsed=False)
    with torch.no_grad():
        single = model.sparse.collapse()
    served = config.model_copy(update={"method": single.method, "method_args": single.config()})
    merged = {k: v for k, v in state.items() if not k.startswith("sparse.")}
    merged.update({f"sparse.{k}": v.detach() for k, v in single.state_dict().items()})
    return ExportState(schema, served, config.method, merged, find_tables(single), collapsed=True)


def _param_tensors(
    state: Mapping[str, torch.Tensor], table_keys: set[str], sparse_dtype: str
) -> dict[str, torch.Tensor]:
    """Dense layers in fp32; the method's other float tensors in `sparse_dtype`; integers as they are."""
    out = {}
    for key, value in state.items():
        if key in table_keys:
            continue
        value = value.detach().cpu()
        if value.is_floating_point():
            half = key.startswith("sparse.") and sparse_dtype == "fp16"
            value = value.to(torch.float16 if half else torch.float32)
        out[key] = value
    return out


def resolve_table(name: str, tables: list[TableEntry]) -> TableEntry:
    """A table by state-dict key or by TorchRec table name (`unified_0`)."""
    for table in tables:
        if table.key == name:
            return table
    matches = [t for t in tables if t.key.endswith(f".embedding_bags.{name}.weight")]
    if len(matches) != 1:
        raise ValueError(f"no single table named {name!r}; tables: {[t.key for t in tables]}")
    return matches[0]


def _producer() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("unirec", "torch", "torchrec", "fbgemm-gpu-cpu", "safetensors"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            continue
    return out


def _seen_tensors(seen_rows: Mapping[str, torch.Tensor], tables: list[TableEntry]) -> dict[str, torch.Tensor]:
    out = {}
    for name, value in seen_rows.items():
        table = resolve_table(name, tables)
        if value.dtype == torch.bool:
            if value.shape != (table.rows,):
                raise ValueError(f"seen mask of {table.key!r} has shape {tuple(value.shape)}, expected ({table.rows},)")
            mask = value.cpu()
        else:
            mask = torch.zeros(table.rows, dtype=torch.bool)
            mask[value.cpu().long()] = True
        out[table.key] = pack_bits(mask)
    return out


def _meta_fields(meta: ExportMeta) -> dict[str, Any]:
    """What the trainer knows (ExportMeta) plus the creation time: shared by full and delta manifests."""
    created_at, created_ms = utc_now()
    return {
        "step": meta.step,
        "offsets": meta.offsets,
        "watermark_ms": meta.watermark_ms,
        "metrics": meta.metrics,
        "created_at": created_at,
        "created_at_ms": created_ms,
        "extra": meta.extra,
    }



def full_artifact(
    source: ModelSource,
    version: str,
    quantization: str = "int8",
    meta: ExportMeta | None = None,
    *,
    seen_rows: Mapping[str, torch.Tensor] | None = None,
    sparse_dtype: SparseDtype | None = None,
) -> tuple[Manifest, dict[str, bytes]]:
    """The manifest and files of full artifact `version`.

    `seen_rows`: table (key or name) -> bool mask or row ids of rows updated in training, stored so
    the service can count lookups of never-trained rows. `sparse_dtype` (default: fp32 for an
    fp32 export, else fp16) stores the method's non-table tensors."""
    meta = meta or ExportMeta()
    check_quantization(quantization)
    sparse_dtype = sparse_dtype or ("fp32" if quantization == "fp32" else "fp16")
    prepared = prepare(source)
    prepared.tables = [
        t.model_copy(update={"quantization": table_quantization(quantization, t.dim)}) for t in prepared.tables
    ]
    table_keys = {t.key for t in prepared.tables}
    payloads = {
        TABLES: save_tensors({t.key: quantize_rows(prepared.state[t.key], t.quantization) for t in prepared.tables}),
        PARAMS: save_tensors(_param_tensors(prepared.state, table_keys, sparse_dtype)),
    }
    if seen_rows:
        payloads[SEEN] = save_tensors(_seen_tensors(seen_rows, prepared.tables))
    schema, config = prepared.schema, prepared.config
    fields: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "version": version,
        "method": config.method,
        "method_config": dict(config.method_args),
        "trained_method": prepared.trained_method,
        "config": config,
        "feature_schema": schema.model_dict(),
        "schema_fingerprint": schema.fingerprint(),
        "seeds": {"model": config.seed, "method": config.method_args.get("seed")},
        "embedding_dim": schema.embedding_dim,
        "widths": {s.name: schema.width(s.name) for s in schema.sparse},
        "quantization": quantization,
        "sparse_dtype": sparse_dtype,
        "tables": prepared.tables,
        "producer": _producer(),
        **_meta_fields(meta),
    }
    return full_files(fields, payloads)


def delta_artifact(
    base: Manifest,
    seq: int,
    touched_rows: Mapping[str, torch.Tensor],
    source: ModelSource,
    meta: ExportMeta | None = None,
    row_values: Mapping[str, torch.Tensor] | None = None,
) -> tuple[DeltaManifest, dict[str, bytes]]:
    """The manifest and files of delta `seq` of `base`: the given rows (quantised like the base) and
    every non-table tensor. `row_values` (optional, same keys): fp32 rows matching `touched_rows`, for
    a trainer that gathers only those rows; otherwise they are read from the source's tables. For
    collapsed methods every row is carried, because the shared factor changes them all."""
    meta = meta or ExportMeta()
    prepared = prepare(source)
    if prepared.schema.fingerprint() != base.schema_fingerprint or prepared.config.method != base.method:
        raise ArtifactError(f"delta source does not match base {base.version}: other schema or method")
    rows: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    if prepared.collapsed:
        for table in prepared.tables:
            _add_rows(rows, counts, table, torch.arange(table.rows), prepared.state[table.key], base)
    else:
        values = {resolve_table(k, prepared.tables).key: v for k, v in (row_values or {}).items()}
        for name, ids in touched_rows.items():
            table = resolve_table(name, prepared.tables)
            ids = ids.detach().cpu().long().reshape(-1)
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= table.rows):
                raise ValueError(f"touched rows of {table.key!r} out of range [0, {table.rows})")
            if table.key in values:
                if torch.unique(ids).numel() != ids.numel() or values[table.key].shape[0] != ids.numel():
                    raise ValueError(f"row_values of {table.key!r} need one row per distinct touched id")
                weight_rows = values[table.key]
            else:
                ids = torch.unique(ids)
                weight_rows = prepared.state[table.key][ids]
            if ids.numel():
                _add_rows(rows, counts, table, ids, weight_rows, base)
    table_keys = {t.key for t in prepared.tables}
    payloads = {
        ROWS: save_tensors(rows),
        PARAMS: save_tensors(_param_tensors(prepared.state, table_keys, base.sparse_dtype)),
    }
    fields: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "base_version": base.version,
        "seq": seq,
        "schema_fingerprint": base.schema_fingerprint,
        "method": base.method,
        "quantization": base.quantization,
        "sparse_dtype": base.sparse_dtype,
        "tables": counts,
        "all_rows": prepared.collapsed,
        **_meta_fields(meta),
    }
    return delta_files(fields, payloads)


def _add_rows(
    rows: dict[str, torch.Tensor],
    counts: dict[str, int],
    table: TableEntry,
    ids: torch.Tensor,
    weight_rows: torch.Tensor,
    base: Manifest,
) -> None:
    rows[f"{table.key}:ids"] = ids.to(torch.int64)
    stored = {t.key: t.quantization for t in base.tables}
    if table.key not in stored:
        raise ArtifactError(f"table {table.key!r} is not in base {base.version}: {sorted(stored)}")
    rows[f"{table.key}:rows"] = quantize_rows(weight_rows, stored[table.key])
    counts[table.key] = int(ids.numel())
