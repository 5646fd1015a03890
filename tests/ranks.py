"""Two (or more) gloo ranks in spawned processes, each ended the way the trainer ends its ranks.

A spawned process returns through interpreter finalization. Gloo's worker threads release a
finished collective's tensors a moment after it returns; when that comes after finalization began,
the process aborts with SIGABRT ("terminate called without an active exception") although the rank's
work was done and saved, and `mp.spawn` fails the test (see `trainer.lifetime.exit_rank`). So each
rank here ends with `exit_rank(0)` once its function returned. A rank that raises still goes the
usual way: `mp.spawn` reports its traceback."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.multiprocessing as mp

from trainer.lifetime import exit_rank


def spawn_ranks(fn: Callable[..., None], *args: Any, nprocs: int = 2) -> None:
    """Run `fn(rank, *args)` in `nprocs` spawned processes and wait for all of them."""
    mp.spawn(_run_then_exit, args=(fn, args), nprocs=nprocs, join=True)


def _run_then_exit(rank: int, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
    fn(rank, *args)
    exit_rank(0)
