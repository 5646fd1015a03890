"""Hashing of raw feature values into rows of an embedding table.

Two stages, both vectorised:

1. `fingerprint`: a raw value (int or str, coerced to the feature's dtype) becomes a 64-bit
   fingerprint. Ints go through the splitmix64 finaliser (numpy, bijective on 64 bits, so distinct
   ints never collide here); strings through SipHash-2-4 of their UTF-8 bytes with a fixed key
   (pandas' `hash_array`, C code). Both are pure functions of the value: identical across
   processes, machines and Python hash randomisation.
2. `UniversalHash`: the Carter-Wegman 2-universal family `h(x) = ((a*x + b) mod p) mod m` with the
   Mersenne prime p = 2^61 - 1. Each feature (or seed group) draws its own (a, b) from its seed,
   which is what makes equal tokens of different features land in different rows.

One exact implementation, `universal_rows`: numpy uint64 arithmetic with 31/30-bit limbs (the
product a*x never overflows), vectorised over values AND over hash parameters, so a whole batch of
every feature and lookup is hashed in one call of ~30 array operations (`HashBank`), whatever the
number of features. Trainer (unified routing, churn rows, delta marks) and inference service
(`UniversalHash.__call__`, seen-row masks) share it. On CUDA tensors the same limb arithmetic
runs as torch ops (`_torch_rows`); both are tested against the Python-int reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from pandas.util import hash_array

if TYPE_CHECKING:
    import torch

MERSENNE_61 = (1 << 61) - 1
_SIPHASH_KEY = "unirec-sip-key-0"  # 16 bytes: part of the on-wire contract, never change it
_M64 = (1 << 64) - 1


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on a uint64 array (wrapping arithmetic, bijective)."""
    z = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        z += np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def fingerprint(values: Sequence[object] | np.ndarray, dtype: str) -> np.ndarray:
    """64-bit fingerprints (as int64 bit patterns) of raw values of one feature.

    `dtype` is the feature's declared type: "int" coerces each value with int() ("7" -> 7),
    "str" with str() (7 -> "7"). Raises ValueError naming the first value that does not coerce.
    """
    if dtype == "int":
        arr = np.asarray(values)
        if arr.dtype.kind not in "iu":
            try:
                arr = arr.astype(np.int64)
            except (ValueError, TypeError, OverflowError) as exc:
                raise ValueError(f"feature values must be integers; got {_first_bad_int(values)!r}") from exc
        return splitmix64(arr.astype(np.int64).view(np.uint64)).view(np.int64)
    if dtype == "str":
        arr = np.asarray(values, dtype=object)
        if arr.size and not all(type(v) is str for v in arr):
            arr = np.array([str(v) for v in arr], dtype=object)
        return hash_array(arr, hash_key=_SIPHASH_KEY, categorize=False).view(np.int64)
    raise ValueError(f"dtype must be 'int' or 'str', got {dtype!r}")


def _first_bad_int(values: Sequence[object] | np.ndarray) -> object:
    for value in values:
        try:
            int(value)  # type: ignore[call-overload]
        except (ValueError, TypeError):
            return value
    return None


def derive_seed(*parts: str | int) -> int:
    """A 64-bit seed derived from names and numbers (stable across runs and machines)."""
    text = "\x1f".join(str(p) for p in parts)
    digest = hash_array(np.array([text], dtype=object), hash_key=_SIPHASH_KEY, categorize=False)[0]
    return int(digest)


@dataclass(frozen=True)
class UniversalHash:
    """h(x) = ((a*x + b) mod p) mod m with p = 2^61 - 1, 1 <= a < p, 0 <= b < p."""

    a: int
    b: int
    m: int

    @classmethod
    def from_seed(cls, seed: int, m: int) -> UniversalHash:
        if m < 1:
            raise ValueError(f"hash range m must be >= 1, got {m}")
        s1, s2 = splitmix64(np.array([seed & _M64, (seed + 1) & _M64], dtype=np.uint64)).tolist()
        return cls(a=1 + s1 % (MERSENNE_61 - 1), b=s2 % MERSENNE_61, m=m)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Rows in [0, m) for int64 fingerprints `x` (any shape)."""
        if x.device.type != "cpu":
            return _torch_rows(x, self.a, self.b, self.m)
        import torch

        return torch.from_numpy(self.rows(x.numpy(force=True)))

    def rows(self, x: np.ndarray) -> np.ndarray:
        """Rows in [0, m) (int64) for int64 (or uint64) fingerprints `x`, with numpy."""
        return universal_rows(x, self.a, self.b, self.m)

    def reference(self, x: int) -> int:
        """The same function with Python integers, for tests."""
        return ((self.a * (x & _M64) + self.b) % MERSENNE_61) % self.m


_P = np.uint64(MERSENNE_61)
_LOW31 = np.uint64((1 << 31) - 1)
_LOW30 = np.uint64((1 << 30) - 1)
_U1, _U30, _U31, _U61 = np.uint64(1), np.uint64(30), np.uint64(31), np.uint64(61)


def _fold(x: np.ndarray) -> np.ndarray:
    """x mod p for uint64 0 <= x < 2^63 (in place where it can)."""
    x = (x & _P) + (x >> _U61)
    x[x >= _P] -= _P
    return x


def universal_rows(
    x: np.ndarray, a: int | np.ndarray, b: int | np.ndarray, m: int | np.ndarray
) -> np.ndarray:
    """((a*x + b) mod p) mod m, p = 2^61 - 1, exactly, for 64-bit fingerprints `x` read as unsigned.

    `a`, `b`, `m` are ints or arrays broadcasting against `x` (one set of parameters per value:
    many features and lookups in one call). Requires 1 <= a < p, 0 <= b < p, m >= 1; returns int64.
    """
    x = np.ascontiguousarray(x).view(np.uint64) if x.dtype != np.uint64 else x
    a = np.asarray(a, dtype=np.uint64)
    b = np.asarray(b, dtype=np.uint64)
    m = np.asarray(m, dtype=np.uint64)
    # x mod p: top three bits folded onto the low 61 (2^61 = 1 mod p)
    xm = _fold((x & _P) + (x >> _U61))
    # (a * xm) mod p with 31/30-bit limbs: every partial product stays below 2^62
    a0, a1 = a & _LOW31, a >> _U31
    x0, x1 = xm & _LOW31, xm >> _U31
    acc = (a1 * x1) << _U1  # a1*x1*2^62 = 2*a1*x1 (mod p), < 2^61
    mid = a1 * x0 + a0 * x1  # < 2^62
    acc += (mid >> _U30) + ((mid & _LOW30) << _U31)  # mid*2^31 (mod p), < 2^61 + 2^32
    acc += _fold(a0 * x0)  # a0*x0 < 2^62
    acc = _fold(acc)
    acc += b  # both < p: sum < 2^62
    acc = _fold(acc)
    return (acc % m).view(np.int64)


class HashBank:
    """Many `UniversalHash`es applied at once: parameters per key, values key-major.

    `bank(values, counts)` hashes `counts[k]` consecutive values with hash k, for all k, in one
    `universal_rows` call (parameters repeated per value). Up to `small` values are hashed with
    Python integers instead (the reference formula itself): ~30 numpy calls on a handful of values
    (a serving request) cost far more than the arithmetic."""

    small = 32

    def __init__(self, hashes: Sequence[UniversalHash]) -> None:
        self.hashes = list(hashes)
        self._params = [(h.a, h.b, h.m) for h in self.hashes]
        self.a = np.array([h.a for h in self.hashes], dtype=np.uint64)
        self.b = np.array([h.b for h in self.hashes], dtype=np.uint64)
        self.m = np.array([h.m for h in self.hashes], dtype=np.uint64)
        self._same_m = len({h.m for h in self.hashes}) <= 1

    def __len__(self) -> int:
        return len(self.hashes)

    def __call__(self, values: np.ndarray, counts: np.ndarray | Sequence[int]) -> np.ndarray:
        counts = np.asarray(counts, dtype=np.int64)
        if counts.size != len(self.hashes):
            raise ValueError(f"{counts.size} counts for {len(self.hashes)} hashes")
        if values.size <= self.small:
            return self._python(values, counts)
        a, b = np.repeat(self.a, counts), np.repeat(self.b, counts)
        m = self.m[:1] if self._same_m and self.m.size else np.repeat(self.m, counts)
        return universal_rows(values, a, b, m)

    def _python(self, values: np.ndarray, counts: np.ndarray) -> np.ndarray:
        xs = np.ascontiguousarray(values).view(np.uint64).tolist()
        out: list[int] = []
        start = 0
        for (a, b, m), count in zip(self._params, counts.tolist(), strict=True):
            out.extend((a * x + b) % MERSENNE_61 % m for x in xs[start : start + count])
            start += count
        return np.array(out, dtype=np.int64)


def _torch_rows(x: torch.Tensor, a: int, b: int, m: int) -> torch.Tensor:
    """`universal_rows` as int64 torch ops (the same limbs), for tensors off the CPU."""
    return mod_mersenne61(mul_mod_mersenne61(mod_mersenne61_u64(x), a) + b) % m


def mod_mersenne61_u64(x: torch.Tensor) -> torch.Tensor:
    """x mod p for int64 tensors read as unsigned 64-bit integers; result in [0, p)."""
    low = x & MERSENNE_61
    high = (x >> 61) & 7  # the top three bits, without sign extension
    return mod_mersenne61(low + high)


def mod_mersenne61(x: torch.Tensor) -> torch.Tensor:
    """x mod p for 0 <= x < 2^63."""
    import torch

    x = (x & MERSENNE_61) + (x >> 61)
    return torch.where(x >= MERSENNE_61, x - MERSENNE_61, x)


def mul_mod_mersenne61(x: torch.Tensor, a: int) -> torch.Tensor:
    """(a * x) mod p for 0 <= x, a < p without overflowing int64: split both into 31/30-bit limbs."""
    a0, a1 = a & ((1 << 31) - 1), a >> 31
    x0, x1 = x & ((1 << 31) - 1), x >> 31
    high = (a1 * x1) << 1  # a1*x1*2^62 = 2*a1*x1 (mod p), < 2^61
    mid = a1 * x0 + a0 * x1  # < 2^62
    mid = (mid >> 30) + ((mid & ((1 << 30) - 1)) << 31)  # mid*2^31 (mod p), < 2^61 + 2^32
    low = mod_mersenne61(a0 * x0)  # a0*x0 < 2^62
    return mod_mersenne61(high + mid + low)
