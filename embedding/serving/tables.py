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
_BOUNDS_CHECK = torch.ops.fbgemm.bounds_check_indices.default
_LOOKUP = torch.ops.fbgemm.int_nbit_split_embedding_codegen_lookup_function.default


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
        self._kernel_args: dict[str, object] | None = None

    def lookup(self, indices: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """`tbe(indices, offsets)` (int64, CPU) without the module's per-call Python.

        The TBE's forward re-reads some 30 module attributes, checks pruning and cache state that a
        host-only table without pruning never has, and pops an empty cache queue before calling
        its kernel; at serving batch sizes that costs several times the kernel. The arguments that
        do not depend on the input are taken from the module once and the same kernel is called,
        after the same bounds check (both ops' one overload, taken once: the packet resolves it per
        call). The weights are the module's buffer, so rows written later count.
        """
        args = self._kernel_args
        if args is None:
            args = self._kernel_args = self._fixed_args()
        rows, mode, warning, version = self._bounds_args
        _BOUNDS_CHECK(rows, indices, offsets, mode, warning, None, bounds_check_version=version)
        return _LOOKUP(indices=indices, offsets=offsets, indice_weights=None, **args)

    def _fixed_args(self) -> dict[str, object]:
        tbe = self.tbe
        if (
            tbe.host_size == 0
            or tbe.lxu_cache_weights.numel()
            or tbe.index_remapping_hash_table_cpu is not None
            or tbe.index_remapping_hash_table.numel()
            or tbe.index_remappings_array.numel()
        ):
            raise ValueError("direct lookups need a host-only TBE without cache or pruning")
        self._bounds_args = (
            tbe.rows_per_table, tbe.bounds_check_mode_int, tbe.bounds_check_warning, tbe.bounds_check_version
        )
        return {
            "dev_weights": tbe.weights_host,
            "uvm_weights": tbe.weights_uvm,
            "weights_placements": tbe.weights_placements,
            "weights_offsets": tbe.weights_offsets,
            "weights_tys": tbe.weights_tys,
            "D_offsets": tbe.D_offsets,
            "total_D": tbe.total_D,
            "max_int2_D": tbe.max_int2_D,
            "max_int4_D": tbe.max_int4_D,
            "max_int8_D": tbe.max_int8_D,
            "max_float16_D": tbe.max_float16_D,
            "max_float32_D": tbe.max_float32_D,
            "pooling_mode": int(tbe.pooling_mode),
            "output_dtype": tbe.output_dtype,
            "lxu_cache_weights": tbe.lxu_cache_weights,
            "lxu_cache_locations": tbe.lxu_cache_locations_list.pop(),  # the queue's empty default
            "row_alignment": tbe.row_alignment,
            "max_float8_D": tbe.max_float8_D,
            "fp8_exponent_bits": tbe.fp8_exponent_bits,
            "fp8_exponent_bias": tbe.fp8_exponent_bias,
        }


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
