"""The inference-side model: build it from a verified artifact, serve predictions, apply deltas.

    model = model_from_source(DirSource(path), expected_schema=schema)
    probs = model.predict(featurizer(events))                   # [batch] probabilities
    scored = model.score(featurizer(events))                    # the same, plus unseen-ID counts
    model = model.apply_delta(read_delta(source_of_delta, model.manifest))

Loading from a model store (its serving version, deltas, catching up) is `registry.loading`.

The model is rebuilt with `build_model(schema, manifest.config)` (the same DCNModel code the
trainer runs); each TorchRec EmbeddingBagCollection inside the embedding method is replaced by a
`QuantEmbeddingBags` holding the artifact's quantised rows, and every other tensor (dense layers,
non-table method parameters) is loaded from `params.safetensors`. A ServingModel is immutable:
`apply_delta` returns a new one, so the old one keeps answering requests until it is swapped out.

Unified-embedding models (the service's default) are scored through a lean path of the same
kernels, `UnifiedLookup` + `DenseHead`, with answers bit-identical to the module's forward: at
serving batch sizes TorchRec's per-call objects (KJT permutes, KeyedTensors, nested modules) cost
more than the arithmetic. Other methods run the module itself.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from core.logs import get_logger, log_event
from embedding.errors import ArtifactError
from embedding.events import FeatureBatch
from embedding.export.artifact import DeltaArtifact, FullArtifact, Source, read_full
from embedding.export.manifest import DeltaManifest, Manifest
from embedding.methods.unified import UnifiedEmbedding
from embedding.model import DCNModel, build_model
from embedding.schema import FeatureSchema
from embedding.serving.dense_head import DenseHead
from embedding.serving.tables import QuantEmbeddingBags
from embedding.serving.unified_lookup import UnifiedLookup

logger = get_logger("serving")


def _replace_tables(model: DCNModel, artifact: FullArtifact) -> dict[str, QuantEmbeddingBags]:
    """Swap every EmbeddingBagCollection of the embedding method for quantised lookups."""
    stored = artifact.tables
    swapped: dict[str, QuantEmbeddingBags] = {}
    for path, module in list(model.sparse.named_modules()):
        if type(module) is not EmbeddingBagCollection:
            continue
        if not path:
            raise ArtifactError(f"method {artifact.manifest.method!r} is itself a collection; cannot serve it")
        prefix = f"sparse.{path}.embedding_bags."
        configs = module.embedding_bag_configs()
        keys = {cfg.name: f"{prefix}{cfg.name}.weight" for cfg in configs}
        missing = [k for k in keys.values() if k not in stored]
        if missing:
            raise ArtifactError(f"tables.safetensors: no rows for {missing} (check: tables)")
        by_key = {t.key: t.quantization for t in artifact.manifest.tables}
        quant = QuantEmbeddingBags(
            configs, {n: by_key[k] for n, k in keys.items()}, {n: stored[k] for n, k in keys.items()}
        )
        parent_path, _, child = path.rpartition(".")
        parent = model.sparse.get_submodule(parent_path) if parent_path else model.sparse
        setattr(parent, child, quant)
        swapped[f"sparse.{path}"] = quant
    return swapped


def _tensors_on_meta(module: nn.Module) -> list[str]:
    return [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]


def _build_serving_module(artifact: FullArtifact) -> tuple[DCNModel, dict[str, QuantEmbeddingBags]]:
    manifest = artifact.manifest
    table_keys = {t.key for t in manifest.tables}
    for meta in (True, False):
        with torch.random.fork_rng():
            try:
                model = build_model(artifact.schema, manifest.config, device="meta" if meta else "cpu")
            except (TypeError, RuntimeError, NotImplementedError):
                if not meta:
                    raise
                continue
        expected = model.state_dict()
        missing = sorted(set(expected) - set(artifact.params) - table_keys)
        unexpected = sorted(set(artifact.params) - set(expected))
        if missing or unexpected or not table_keys <= set(expected):
            raise ArtifactError(
                f"params.safetensors does not match method {manifest.method!r}: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]} (check: tensors)"
            )
        params = {}
        for key, value in artifact.params.items():
            want = expected[key]
            if tuple(value.shape) != tuple(want.shape):
                raise ArtifactError(
                    f"params.safetensors: {key!r} has shape {tuple(value.shape)}, model expects "
                    f"{tuple(want.shape)} (check: tensor shape)"
                )
            params[key] = value.to(want.dtype).clone()
        model.load_state_dict(params, strict=False, assign=True)
        swapped = _replace_tables(model, artifact)
        if not _tensors_on_meta(model):
            return model.eval(), swapped
        # the method kept other state on the meta device: build everything on CPU instead
    raise ArtifactError(f"method {manifest.method!r} left tensors unset: {_tensors_on_meta(model)[:5]}")


@dataclass(frozen=True)
class Scored:
    probabilities: torch.Tensor
    """Click probabilities [batch]."""
    unseen: dict[str, int] | None
    """Per sparse feature: looked-up values reading a row never updated in training (None: not known)."""


class _Lean:
    """The lean forward of a unified-embedding model (see the module doc)."""

    def __init__(self, module: DCNModel, tables: dict[str, QuantEmbeddingBags]) -> None:
        self.lookup = UnifiedLookup(module.sparse, tables["sparse.ebc"])
        self.head = DenseHead(module)
        schema = module.schema
        self.lookups = [(spec.name, spec.lookups) for spec in schema.sparse]

    def logits(self, batch: FeatureBatch) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        pooled = self.lookup(batch.sparse)
        return self.head(pooled.embeddings, batch.dense), pooled.rows, pooled.counts

    def unseen(self, seen: np.ndarray, rows: np.ndarray, counts: np.ndarray) -> dict[str, int]:
        """Per feature, values whose rows are not all seen (a value reads one row per lookup)."""
        hit = seen[rows]
        out, start, key = {}, 0, 0
        for name, lookups in self.lookups:
            n = int(counts[key])
            segment = hit[start : start + lookups * n]
            out[name] = n - int(np.count_nonzero(segment.reshape(lookups, n).all(axis=0)))
            start += lookups * n
            key += lookups
        return out


def _lean_path(module: DCNModel, tables: dict[str, QuantEmbeddingBags]) -> _Lean | None:
    if type(module.sparse) is not UnifiedEmbedding or set(tables) != {"sparse.ebc"}:
        return None
    try:
        return _Lean(module, tables)
    except (TypeError, ValueError):  # a layout the lean path does not know: the module serves
        return None


@dataclass(frozen=True)
class ServingModel:
    """An immutable, ready-to-serve model of one full version plus deltas 1..seq."""

    module: DCNModel
    manifest: Manifest
    schema: FeatureSchema
    seq: int = 0
    delta: DeltaManifest | None = None
    """The last applied delta (None right after a full load)."""
    tables: dict[str, QuantEmbeddingBags] = field(default_factory=dict, repr=False)
    seen: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    """Table key -> bool [rows]: rows ever updated in training (when the trainer exported it)."""

    @property
    def base_version(self) -> str:
        return self.manifest.version

    @property
    def version(self) -> str:
        """`v0000000007` for a full version, `v0000000007+3` after its third delta."""
        return self.base_version if self.seq == 0 else f"{self.base_version}+{self.seq}"

    @property
    def watermark_ms(self) -> int | None:
        """Event-time watermark of the newest weights (the last delta's, else the full export's)."""
        return self.delta.watermark_ms if self.delta is not None else self.manifest.watermark_ms

    def __post_init__(self) -> None:
        object.__setattr__(self, "_lean", _lean_path(self.module, self.tables))

    def predict(self, batch: FeatureBatch) -> torch.Tensor:
        """Click probabilities [batch]."""
        with torch.inference_mode():
            if len(batch) == 0:
                return torch.empty(0)
            return torch.sigmoid(self._logits(batch))

    def logits(self, batch: FeatureBatch) -> torch.Tensor:
        with torch.inference_mode():
            return self._logits(batch)

    def score(self, batch: FeatureBatch) -> Scored:
        """`predict` and the unseen-ID counts of `seen_mask`, from one hash of the batch."""
        lean: _Lean | None = self.__dict__["_lean"]
        with torch.inference_mode():
            if len(batch) == 0:
                return Scored(torch.empty(0), None)
            if lean is None:
                masks = self.seen_mask(batch)
                unseen = None if masks is None else {k: int(m.numel() - m.sum()) for k, m in masks.items()}
                return Scored(torch.sigmoid(self.module(batch.sparse, batch.dense)), unseen)
            logits, rows, counts = lean.logits(batch)
            logical = self._logical_seen()
            unseen = None if logical is None else lean.unseen(logical.numpy(), rows, counts)
            return Scored(torch.sigmoid(logits), unseen)

    def _logits(self, batch: FeatureBatch) -> torch.Tensor:
        lean: _Lean | None = self.__dict__["_lean"]
        if lean is None:
            return self.module(batch.sparse, batch.dense)
        return lean.logits(batch)[0]

    def apply_delta(self, delta: DeltaArtifact) -> ServingModel:
        """A new model with `delta` applied (this one is untouched). ArtifactError when the delta is
        for another version, out of sequence (a gap: fall back to the next full export), or for
        another schema, method or quantisation."""
        d = delta.manifest
        label = f"delta {d.version}"
        if d.base_version != self.base_version:
            raise ArtifactError(f"{label}: delta of {d.base_version}, serving {self.version} (check: base version)")
        if d.seq != self.seq + 1:
            raise ArtifactError(
                f"{label}: gap, serving {self.version} needs delta {self.seq + 1} next (check: sequence); "
                "load the next full export"
            )
        for name in ("schema_fingerprint", "method", "quantization", "sparse_dtype"):
            if getattr(d, name) != getattr(self.manifest, name):
                raise ArtifactError(f"{label}: {name} {getattr(d, name)!r} != {getattr(self.manifest, name)!r}")
        by_module: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
        for key, rows in delta.rows.items():
            path, sep, rest = key.partition(".embedding_bags.")
            if not sep or path not in self.tables:
                raise ArtifactError(f"{label}: rows of unknown table {key!r} (check: tables)")
            by_module.setdefault(path, {})[rest.removesuffix(".weight")] = rows
        # copy the module without deep-copying the (large) quantised tables, then clone those
        memo = {id(quant): quant for quant in self.tables.values()}
        module = copy.deepcopy(self.module, memo)
        tables: dict[str, QuantEmbeddingBags] = {}
        for path, quant in self.tables.items():
            updates = by_module.get(path)
            if updates:
                quant = quant.clone()
                for name, (ids, stored) in updates.items():
                    quant.write_rows(name, ids, stored)
            parent_path, _, child = path.rpartition(".")
            setattr(module.get_submodule(parent_path), child, quant)
            tables[path] = quant
        expected = module.state_dict()
        unknown = sorted(set(delta.params) - set(expected))
        if unknown:
            raise ArtifactError(f"{label}: params for unknown tensors {unknown[:5]} (check: tensors)")
        with torch.no_grad():
            for key, value in delta.params.items():
                target = expected[key]
                if target.shape != value.shape:
                    raise ArtifactError(f"{label}: {key!r} has shape {tuple(value.shape)} (check: tensor shape)")
                target.copy_(value)
        seen = None
        if self.seen is not None:
            seen = dict(self.seen)
            for key, (ids, _) in delta.rows.items():
                if key in seen:
                    seen[key] = seen[key].clone()
                    seen[key][ids] = True
        log_event(logger, "delta applied", version=d.version, rows=sum(d.tables.values()))
        return ServingModel(module.eval(), self.manifest, self.schema, d.seq, d, tables, seen)

    def seen_mask(self, batch: FeatureBatch) -> dict[str, torch.Tensor] | None:
        """Per sparse feature, a bool per looked-up value (the feature's jagged values, in order):
        True when every row it reads was updated in training. None when the artifact carries no
        seen rows or the method does not expose its row hashing (unified embedding does)."""
        logical = self._logical_seen()
        if logical is None:
            return None
        method = self.module.sparse
        out = {}
        for spec in self.schema.sparse:
            values = batch.sparse[spec.name].values()
            mask = torch.ones(values.shape[0], dtype=torch.bool)
            for j in range(spec.lookups):
                mask &= logical[method.hash_for(spec.name, j)(values)]
            out[spec.name] = mask
        return out

    def _logical_seen(self) -> torch.Tensor | None:
        method = self.module.sparse
        if self.seen is None or not isinstance(method, UnifiedEmbedding):
            return None
        cached = self.__dict__.get("_logical")
        if cached is None:
            blocks = []
            for b in range(method.num_blocks):
                suffix = f".embedding_bags.{method.table_name(b)}.weight"
                key = next((k for k in self.seen if k.endswith(suffix)), None)
                if key is None:
                    return None
                blocks.append(self.seen[key])
            cached = torch.cat(blocks)
            object.__setattr__(self, "_logical", cached)
        return cached

    def describe(self) -> dict[str, Any]:
        """JSON-able summary for status endpoints."""
        return {
            "version": self.version,
            "base_version": self.base_version,
            "seq": self.seq,
            "method": self.manifest.method,
            "quantization": self.manifest.quantization,
            "watermark_ms": self.watermark_ms,
            "schema": self.schema.name,
            "schema_fingerprint": self.manifest.schema_fingerprint,
        }


def model_from_source(source: Source, expected_schema: FeatureSchema | None = None) -> ServingModel:
    """Verify and load the full artifact `source` reads: every checksum is verified before anything is
    built; ArtifactError names the file and the failed check."""
    artifact = read_full(source, expected_schema)
    module, tables = _build_serving_module(artifact)
    model = ServingModel(module, artifact.manifest, artifact.schema, 0, None, tables, artifact.seen)
    log_event(
        logger,
        "model loaded",
        version=model.version,
        method=artifact.manifest.method,
        quantization=artifact.manifest.quantization,
        source=source.label,
    )
    return model
