"""Hashing: stable across processes, uniform over buckets, and equal to its Python-int reference."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import embedding.hashing
from embedding.hashing import UniversalHash, derive_seed, fingerprint

INTS = [0, 1, -1, 7, 2**40, -(2**63), 2**63 - 1]
STRS = ["", "a", "7", "zürich", "comedy|drama"]

# the child loads hashing.py alone (it depends on numpy, pandas and torch only), not the package
_CHILD = """
import importlib.util, json, sys, torch
spec = importlib.util.spec_from_file_location("hashing", sys.argv[1])
hashing = sys.modules["hashing"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(hashing)
UniversalHash, derive_seed, fingerprint = hashing.UniversalHash, hashing.derive_seed, hashing.fingerprint
ints = fingerprint(json.loads('{ints}'), "int").tolist()
strs = fingerprint(json.loads('{strs}'), "str").tolist()
h = UniversalHash.from_seed(derive_seed("t", 3, "user", 0), 1_000_003)
rows = h(torch.tensor(ints + strs)).tolist()
print(json.dumps({{"ints": ints, "strs": strs, "rows": rows, "seed": derive_seed("x", 1)}}))
"""


def _local() -> dict[str, object]:
    ints = fingerprint(INTS, "int").tolist()
    strs = fingerprint(STRS, "str").tolist()
    h = UniversalHash.from_seed(derive_seed("t", 3, "user", 0), 1_000_003)
    return {"ints": ints, "strs": strs, "rows": h(torch.tensor(ints + strs)).tolist(), "seed": derive_seed("x", 1)}


def test_same_output_in_separate_processes() -> None:
    code = _CHILD.format(ints=json.dumps(INTS), strs=json.dumps(STRS, ensure_ascii=True))
    procs = [  # different Python string-hash randomisation per process
        subprocess.Popen(
            [sys.executable, "-c", code, embedding.hashing.__file__],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
        )
        for hash_seed in ("1", "2")
    ]
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert results[0] == results[1] == _local()


def _chi2_critical(df: int, z: float = 3.09) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile (z = 3.09: p = 0.001)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def _chi2(rows: torch.Tensor, m: int) -> float:
    counts = torch.bincount(rows, minlength=m).double()
    expected = rows.numel() / m
    return float(((counts - expected) ** 2 / expected).sum())


def test_buckets_are_uniform_by_chi_square() -> None:
    m = 257
    for dtype, values in (("int", np.arange(50_000)), ("str", [f"item-{i}" for i in range(50_000)])):
        fp = torch.from_numpy(fingerprint(values, dtype))
        for seed in (0, 1):
            rows = UniversalHash.from_seed(derive_seed("chi", seed), m)(fp)
            assert _chi2(rows, m) < _chi2_critical(m - 1), f"{dtype} seed {seed}: buckets not uniform"
    # the test can fail: a biased bucketing (x mod m of small ints into half the buckets) is rejected
    skewed = torch.arange(50_000) % (m // 2)
    assert _chi2(skewed, m) > _chi2_critical(m - 1)


@settings(max_examples=200, deadline=None)
@given(
    xs=st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=20),
    seed=st.integers(0, 2**64 - 1),
    m=st.integers(1, 2**40),
)
def test_universal_hash_matches_python_int_reference(xs: list[int], seed: int, m: int) -> None:
    h = UniversalHash.from_seed(seed, m)
    got = h(torch.tensor(xs, dtype=torch.int64)).tolist()
    assert got == [h.reference(x) for x in xs]
    assert all(0 <= r < m for r in got)


def test_distinct_ints_never_share_a_fingerprint() -> None:
    fp = fingerprint(np.arange(-50_000, 50_000), "int")
    assert np.unique(fp).size == fp.size
    assert fingerprint([7], "int")[0] == fingerprint(["7"], "int")[0]


# -- the bulk implementation: bit-identical to the Python-int reference and to the torch limbs ------

GOLDEN = [  # rows of the hash as exported models and the serving side compute them (before the numpy rewrite)
    (4753154669963246476, 100_000, [96567, 86301, 24705, 24705, 55836, 55503, 65769, 3802]),
    (6683197496052203566, 2_600_000, [496096, 2112635, 2093722, 2093722, 1010877, 256203, 1239664, 1100638]),
]
GOLDEN_X = [0, 1, -1, 7, 2**40, -(2**63), 2**63 - 1, 123456789012345]


def test_rows_are_the_ones_exported_models_were_trained_with() -> None:
    assert derive_seed("unified", 0, "user", 0) == GOLDEN[0][0]
    for seed, m, rows in GOLDEN:
        h = UniversalHash.from_seed(seed, m)
        assert h(torch.tensor(GOLDEN_X)).tolist() == rows
        assert h.rows(np.array(GOLDEN_X, dtype=np.int64)).tolist() == rows
        assert embedding.hashing._torch_rows(torch.tensor(GOLDEN_X), h.a, h.b, h.m).tolist() == rows


@settings(max_examples=200, deadline=None)
@given(
    xs=st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=20),
    seed=st.integers(0, 2**64 - 1),
    m=st.integers(1, 2**40),
)
def test_numpy_and_torch_limbs_match_the_reference(xs: list[int], seed: int, m: int) -> None:
    h = UniversalHash.from_seed(seed, m)
    want = [h.reference(x) for x in xs]
    assert embedding.hashing.universal_rows(np.array(xs, dtype=np.int64), h.a, h.b, h.m).tolist() == want
    assert embedding.hashing._torch_rows(torch.tensor(xs, dtype=torch.int64), h.a, h.b, h.m).tolist() == want


@settings(max_examples=100, deadline=None)
@given(
    data=st.data(),
    seeds=st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=6),
    same_m=st.booleans(),
)
def test_hash_bank_applies_each_hash_to_its_segment(data: st.DataObject, seeds: list[int], same_m: bool) -> None:
    ms = [1_000_003] * len(seeds) if same_m else data.draw(st.lists(st.integers(1, 2**40), min_size=len(seeds),
                                                                   max_size=len(seeds)))  # fmt: skip
    hashes = [UniversalHash.from_seed(s, m) for s, m in zip(seeds, ms, strict=True)]
    segments = [data.draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=8)) for _ in hashes]
    bank = embedding.hashing.HashBank(hashes)
    values = np.array([x for seg in segments for x in seg], dtype=np.int64)
    want = [h.reference(x) for h, seg in zip(hashes, segments, strict=True) for x in seg]
    for small in (0, len(values)):  # numpy limbs, then Python integers
        bank.small = small
        got = bank(values, [len(seg) for seg in segments])
        assert got.dtype == np.int64 and got.tolist() == want, f"small={small}"


def test_hash_bank_rejects_counts_of_the_wrong_length() -> None:
    bank = embedding.hashing.HashBank([UniversalHash.from_seed(1, 10)])
    with pytest.raises(ValueError, match="counts"):
        bank(np.zeros(2, dtype=np.int64), [1, 1])
