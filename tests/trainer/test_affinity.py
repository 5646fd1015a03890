"""Each local rank's CPU share: disjoint, covering, even; pinning that leaves one rank alone; and the
ingest child taken only where the rank has a CPU to spare."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trainer.affinity import cpu_share, pin_local_rank, wants_ingest_process


@st.composite
def machines(draw: st.DrawFn) -> tuple[list[int], int]:
    allowed = draw(st.lists(st.integers(0, 255), min_size=1, max_size=64, unique=True))
    return allowed, draw(st.integers(1, len(allowed)))


@given(machines())
def test_shares_partition_the_allowed_cpus_evenly_and_contiguously(machine: tuple[list[int], int]) -> None:
    allowed, world = machine
    shares = [cpu_share(allowed, r, world) for r in range(world)]
    assert set().union(*shares) == set(allowed)
    assert sum(len(s) for s in shares) == len(allowed), "shares overlap"
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    ordered = sorted(allowed)
    assert [cpu for s in shares for cpu in sorted(s)] == ordered, "a share is not a contiguous run, in rank order"


def test_impossible_shares_are_named() -> None:
    with pytest.raises(ValueError, match="3 CPUs cannot give 4 ranks"):
        cpu_share([0, 1, 2], 0, 4)
    with pytest.raises(ValueError, match="local_rank=2 local_world=2"):
        cpu_share([0, 1, 2], 2, 2)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity API here")
def test_one_local_rank_is_not_pinned() -> None:
    before = os.sched_getaffinity(0)
    assert pin_local_rank(0, 1) is None
    assert os.sched_getaffinity(0) == before


@pytest.mark.parametrize(("cpus", "expected"), [({0}, False), ({0, 1}, True), ({2, 5, 7, 9}, True)])
def test_ingest_process_unset_takes_a_child_only_with_a_cpu_to_spare(
    cpus: set[int], expected: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: cpus, raising=False)
    assert wants_ingest_process(None) is expected
    assert wants_ingest_process(True) is True and wants_ingest_process(False) is False, "a set value is kept"
