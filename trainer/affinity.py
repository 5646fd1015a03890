"""CPU affinity of the ranks of one machine: each local rank on its own equal share of the CPUs.

Ranks in lockstep wait for each other at every collective, and gloo's collectives hand work between
threads of both processes; unpinned, the kernel moves those threads between the cores the ranks
compute on, and every wake-up waits for a core. With 2 CPU ranks on 2 cores each rank on its own
core trained 15% faster end to end (bench/results/trainer_throughput.md). The shares split the
CPUs this process may use (its affinity mask, what a container's cpuset allows), never more, so
ranks of other jobs on the machine keep the same CPUs they had. CUDA ranks are left alone: their
CPU placement belongs to the GPU topology (`torchrun --numa-binding`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence


def cpu_share(allowed: Sequence[int], local_rank: int, local_world: int) -> set[int]:
    """The CPUs of `local_rank` of `local_world` ranks: `allowed` in order, cut into `local_world`
    contiguous shares whose sizes differ by at most one (the first ones larger)."""
    if not 0 <= local_rank < local_world:
        raise ValueError(f"need 0 <= local_rank < local_world, got local_rank={local_rank} local_world={local_world}")
    if len(allowed) < local_world:
        raise ValueError(f"{len(allowed)} CPUs cannot give {local_world} ranks a CPU each")
    cpus = sorted(allowed)
    size, extra = divmod(len(cpus), local_world)
    start = local_rank * size + min(local_rank, extra)
    return set(cpus[start : start + size + (local_rank < extra)])


def pin_local_rank(local_rank: int, local_world: int) -> set[int] | None:
    """Pin this process (and the threads and processes it starts afterwards) to `cpu_share`; None,
    and nothing changed, with one local rank, fewer CPUs than ranks, or no affinity API (macOS)."""
    if local_world < 2 or not hasattr(os, "sched_setaffinity"):
        return None
    allowed = os.sched_getaffinity(0)
    if len(allowed) < local_world:
        return None
    share = cpu_share(sorted(allowed), local_rank, local_world)
    os.sched_setaffinity(0, share)
    return share


def wants_ingest_process(setting: bool | None) -> bool:
    """`TrainerSettings.ingest_process`, unset resolved: a child process when this process (pinned or
    not) may run on at least 2 CPUs, one for training and one for the child; a thread of the rank when
    it has one CPU, where a child would only take turns with training on that core."""
    if setting is not None:
        return setting
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cpus >= 2
