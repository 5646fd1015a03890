"""Row-wise quantisation of embedding tables with fbgemm's fused row-wise formats.

Each format is what the named fbgemm op produces, stored as is in the artifact:

- `int8`: uint8 [rows, d + 8]: d int8 codes, then fp32 scale and fp32 bias
  (`torch.ops.fbgemm.FloatToFused8BitRowwiseQuantized`).
- `int4`: uint8 [rows, d/2 + 4]: d 4-bit codes (low nibble first), then fp16 scale and fp16 bias
  (`torch.ops.fbgemm.FloatToFusedNBitRowwiseQuantizedSBHalf(w, 4)`).
- `fp16`: float16 [rows, d].
- `fp32`: float32 [rows, d].

A value is `code * scale + bias`. Quantisation is a pure function of the row, so a row quantised
in a delta is bitwise the row a later full export writes for the same weights.
"""

from __future__ import annotations

import fbgemm_gpu  # noqa: F401  (registers torch.ops.fbgemm)
import torch

from embedding.export.manifest import QUANTIZATIONS, Quantization


def check_quantization(quantization: str, dim: int | None = None) -> Quantization:
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization {quantization!r} is not one of {list(QUANTIZATIONS)}")
    if quantization == "int4" and dim is not None and dim % 4:
        raise ValueError(f"fbgemm's int4 rows need an embedding dim divisible by 4, got {dim}")
    return quantization  # type: ignore[return-value]


def table_quantization(requested: str, dim: int) -> Quantization:
    """The storage of one table: `requested`, except int4 for a dim fbgemm cannot pack (not a
    multiple of 4), which becomes int8, and int8 for rows of at most 8 values, which become fp16:
    there the row's 8 bytes of scale and bias make int8 (d + 8 bytes) no smaller than fp16 (2d),
    e.g. ROBE's 4-wide rows or the importance weights of hash embeddings."""
    check_quantization(requested)
    if requested == "int4" and dim % 4:
        requested = "int8"
    if requested == "int8" and dim + 8 >= 2 * dim:
        return "fp16"
    return requested  # type: ignore[return-value]


def stored_shape(quantization: str, rows: int, dim: int) -> tuple[int, int]:
    """Shape of the stored tensor for a table of `rows` x `dim`."""
    return {
        "int8": (rows, dim + 8),
        "int4": (rows, dim // 2 + 4),
        "fp16": (rows, dim),
        "fp32": (rows, dim),
    }[check_quantization(quantization, dim)]


def stored_dtype(quantization: str) -> torch.dtype:
    return {"int8": torch.uint8, "int4": torch.uint8, "fp16": torch.float16, "fp32": torch.float32}[
        check_quantization(quantization)
    ]


def quantize_rows(weight: torch.Tensor, quantization: str) -> torch.Tensor:
    """fp32 rows [n, d] -> the stored tensor of `quantization` (see the module docstring)."""
    if weight.dim() != 2:
        raise ValueError(f"expected a 2-D table, got shape {tuple(weight.shape)}")
    check_quantization(quantization, weight.shape[1])
    w = weight.detach().to(device="cpu", dtype=torch.float32).contiguous()
    if quantization == "int8":
        return torch.ops.fbgemm.FloatToFused8BitRowwiseQuantized(w)
    if quantization == "int4":
        return torch.ops.fbgemm.FloatToFusedNBitRowwiseQuantizedSBHalf(w, 4)
    if quantization == "fp16":
        return w.half()
    return w.clone()


def dequantize_rows(stored: torch.Tensor, quantization: str) -> torch.Tensor:
    """The stored tensor back to fp32 rows (reference path, for tests and tools)."""
    check_quantization(quantization)
    if quantization == "int8":
        return torch.ops.fbgemm.Fused8BitRowwiseQuantizedToFloat(stored.contiguous())
    if quantization == "int4":
        return torch.ops.fbgemm.FusedNBitRowwiseQuantizedSBHalfToFloat(stored.contiguous(), 4)
    return stored.to(torch.float32)


def split_codes(stored: torch.Tensor, quantization: str, dim: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(codes, fp16 scale+bias as uint8 [n, 4]) in the layout of fbgemm's inference TBE.

    The TBE keeps fp16 scale and bias in front of each row; the artifact's int8 rows carry fp32
    scale and bias (what `FloatToFused8BitRowwiseQuantized` writes), which are rounded to fp16
    here. For fp16/fp32 the codes are the raw bytes and there is no scale/bias."""
    if quantization == "int8":
        packed = torch.empty((stored.shape[0], 8), dtype=torch.uint8).copy_(stored[:, dim:])
        scale_bias = packed.view(torch.float32).half().view(torch.uint8)
        return stored[:, :dim], scale_bias
    if quantization == "int4":
        return stored[:, : dim // 2], stored[:, dim // 2 :]
    return stored.contiguous().view(torch.uint8), None
