"""Trainer processes die with their launcher.

`die_with_parent` asks the Linux kernel (prctl PR_SET_PDEATHSIG, through ctypes) to SIGKILL the
calling process when its parent exits. `unirec train` sets it in torchrun (or the one rank) before
exec, and each rank sets it at start, so a SIGKILL of `unirec train` or of torchrun leaves no rank
training on as an orphan. SIGKILL, not SIGTERM: a launcher that dies is a crash; the ranks resume
from their last checkpoint (offsets included) when restarted, and no orphan writes a checkpoint
while its successor starts. Elsewhere than Linux it does nothing.

`exit_rank` ends a rank without interpreter finalization; see its docstring.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """SIGKILL this process when its parent exits (Linux); exit now if the parent is already gone."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def children(pid: int) -> list[int]:
    """Direct children of `pid` (Linux /proc; empty where it cannot be read)."""
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found.extend(int(c) for c in (task / "children").read_text().split())
    except OSError:
        return []
    return found


def exit_rank(code: int) -> None:
    """Flush logs and standard streams, then end the process at once with `code`.

    Gloo's worker threads release a finished collective's tensors a moment after the collective
    returns. When that release comes after the interpreter began finalizing, the thread cannot take
    the GIL to drop the tensor's Python object and the process aborts ("terminate called without an
    active exception", SIGABRT from ProcessGroupGloo::runLoop), although training ended cleanly and
    `destroy_process_group` was called (the group lives on while the model's modules hold it).
    Every resource of a rank (Kafka clients, Redis, checkpoint and log files) is closed by the
    trainer before this point, so nothing is left for finalization to do."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed or broken stream has nothing to flush
            stream.flush()
    os._exit(code)
