"""Quantised embedding-bag lookups: a drop-in for a TorchRec EmbeddingBagCollection at inference.

`QuantEmbeddingBags` takes the same KeyedJaggedTensor and returns the same KeyedTensor (keys in the
collection's table-then-feature order) as the EmbeddingBagCollection it replaces, but looks rows up
in fbgemm's `IntNBitTableBatchedEmbeddingBagsCodegen` (CPU kernels for int8, int4, fp16 and fp32
rows with fused dequantisation and pooling). Because the embedding method's own forward stays in
charge of hashing and routing, training and serving hash identically by construction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import fbgemm_gpu  # noqa: F401
import torch
from fbgemm_gpu.split_embedding_configs import SparseType
from fbgemm_gpu.split_table_batched_embeddings_ops_common import BoundsCheckMode, EmbeddingLocation, PoolingMode
from fbgemm_gpu.split_table_batched_embeddings_ops_inference import IntNBitTableBatchedEmbeddingBagsCodegen
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from embedding.export.quantize import split_codes

_SPARSE_TYPES = {"int8": SparseType.INT8, "int4": SparseType.INT4, "fp16": SparseType.FP16, "fp32": SparseType.FP32}
_POOLING = {PoolingType.SUM: PoolingMode.SUM, PoolingType.MEAN: PoolingMode.MEAN}


class _Group(nn.Module):
    """Consecutive tables with one pooling mode: one fbgemm TBE."""

    def __init__(self, configs: Sequence[EmbeddingBagConfig], quantization: Mapping[str, str]) -> None:
        super().__init__()
        pooling = _POOLING.get(configs[0].pooling)
        if pooling is None:
            raise ValueError(f"table {configs[0].name!r}: pooling {configs[0].pooling} has no quantised kernel")
        self.table_names = [c.name for c in configs]
        self.features = [f for c in configs for f in c.feature_names]
        self.dims = [c.embedding_dim for c in configs for _ in c.feature_names]
        self.tbe = IntNBitTableBatchedEmbeddingBagsCodegen(
            embedding_specs=[
                (c.name, c.num_embeddings, c.embedding_dim, _SPARSE_TYPES[quantization[c.name]], EmbeddingLocation.HOST)
                for c in configs
            ],
            feature_table_map=[t for t, c in enumerate(configs) for _ in c.feature_names],
            pooling_mode=pooling,
            device="cpu",
            output_dtype=SparseType.FP32,
            bounds_check_mode=BoundsCheckMode.FATAL,
            indices_dtype=torch.int64,
        )
        self.tbe.initialize_weights()


class QuantEmbeddingBags(nn.Module):
    def __init__(
        self,
        configs: Sequence[EmbeddingBagConfig],
        quantization: str | Mapping[str, str],
        stored: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        """`quantization`: one for all tables or per table name; `stored`: table name -> the
        artifact's stored rows (see `embedding.export.quantize`)."""
        super().__init__()
        if not configs:
            raise ValueError("QuantEmbeddingBags needs at least one table")
        self.configs = list(configs)
        if isinstance(quantization, str):
            quantization = {c.name: quantization for c in self.configs}
        self.quantization = dict(quantization)
        runs: list[list[EmbeddingBagConfig]] = []
        for cfg in self.configs:
            if runs and runs[-1][0].pooling == cfg.pooling:
                runs[-1].append(cfg)
            else:
                runs.append([cfg])
        self.groups = nn.ModuleList(_Group(run, self.quantization) for run in runs)
        self._where = {name: (g, t) for g, group in enumerate(self.groups) for t, name in enumerate(group.table_names)}
        self._dims = {c.name: c.embedding_dim for c in self.configs}
        self._keys = [f for group in self.groups for f in group.features]
        self._lengths = [d for group in self.groups for d in group.dims]
        self._perm_cache: dict[tuple[str, ...], list[list[int]]] = {}
        if stored is not None:
            missing = sorted(set(self._where) - set(stored))
            if missing:
                raise ValueError(f"no stored rows for tables {missing}")
            for name in self._where:
                self.write_rows(name, None, stored[name])

    def _rows_view(self, name: str) -> torch.Tensor:
        """Table `name` inside the TBE buffer as whole rows: [fp16 scale, fp16 bias,] codes."""
        g, t = self._where[name]
        return self.groups[g].tbe.split_embedding_weights(split_scale_shifts=False)[t][0]

    def write_rows(self, name: str, ids: torch.Tensor | None, stored: torch.Tensor) -> None:
        """Overwrite rows `ids` (all rows when None) of table `name` with stored (artifact) rows."""
        view = self._rows_view(name)
        codes, scale_bias = split_codes(stored, self.quantization[name], self._dims[name])
        rows = codes.contiguous() if scale_bias is None else torch.cat([scale_bias, codes], dim=1)
        if rows.shape[1] != view.shape[1]:
            raise ValueError(f"table {name!r}: rows of {rows.shape[1]} bytes, the lookup kernel holds {view.shape[1]}")
        if ids is None:
            view.copy_(rows)
        else:
            view[ids] = rows

    def clone(self) -> QuantEmbeddingBags:
        """An independent copy (the TBE weight buffers copied)."""
        twin = QuantEmbeddingBags(self.configs, self.quantization)
        for mine, theirs in zip(self.groups, twin.groups, strict=True):
            theirs.tbe.weights_host.copy_(mine.tbe.weights_host)
        return twin

    def num_bytes(self) -> int:
        return sum(g.tbe.weights_host.numel() for g in self.groups)

    def _permutations(self, keys: tuple[str, ...]) -> list[list[int]]:
        perms = self._perm_cache.get(keys)
        if perms is None:
            index = {k: i for i, k in enumerate(keys)}
            try:
                perms = [[index[f] for f in group.features] for group in self.groups]
            except KeyError as exc:
                raise KeyError(f"input has no feature {exc.args[0]!r}; it has {list(keys)}") from None
            self._perm_cache[keys] = perms
        return perms

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        outs = []
        for group, perm in zip(self.groups, self._permutations(tuple(features.keys())), strict=True):
            kjt = features.permute(perm)
            outs.append(
                group.tbe(
                    indices=kjt.values().to(torch.int64),
                    offsets=kjt.offsets().to(torch.int64),
                    per_sample_weights=kjt.weights_or_none(),
                )
            )
        values = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
        return KeyedTensor(keys=self._keys, length_per_key=self._lengths, values=values)
