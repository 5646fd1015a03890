"""Hashing: stable across processes, uniform over buckets, and equal to its Python-int reference."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
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
