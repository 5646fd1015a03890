"""Entry point of one trainer rank: `torchrun --nproc_per_node N -m trainer.main`.

All configuration comes from the environment (UNIREC_*, UNIREC_TRAINER_*); see trainer/settings.py.
"""

from __future__ import annotations

import os
import traceback

from core.logs import configure_logging, get_logger, log_event
from trainer.affinity import pin_local_rank, wants_ingest_process
from trainer.lifetime import die_with_parent, exit_rank
from trainer.settings import TrainerSettings


def main() -> int:
    if "TORCHELASTIC_RUN_ID" in os.environ:  # a torchrun rank: die with torchrun
        die_with_parent()
    settings = TrainerSettings()
    configure_logging(settings.log_level, json_lines=True)
    if settings.pin_cpus:  # first: the threads and the ingest process started below inherit it
        _pin_cpu_rank(settings)
    # torchmetrics imports matplotlib where it is installed, and matplotlib writes its font cache under
    # ~/.cache; keep it in the project's home with everything else of ours
    os.environ.setdefault("MPLCONFIGDIR", str(settings.home / "cache" / "matplotlib"))
    child = None
    if wants_ingest_process(settings.ingest_process):  # spawned before the trainer is built: start-ups overlap
        from trainer.ingest_process import IngestProcess, ingest_spec

        child = IngestProcess(ingest_spec(settings))
    from trainer.loop import train

    return train(settings, child)


def _pin_cpu_rank(settings: TrainerSettings) -> None:
    import torch

    if settings.device != "cpu" and torch.cuda.is_available():  # the rule `init_distributed` applies
        return
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    share = pin_local_rank(int(os.environ.get("LOCAL_RANK", "0")), local_world)
    if share is not None:
        log_event(get_logger("trainer"), "cpu affinity", cpus=sorted(share), local_world=local_world)


if __name__ == "__main__":
    try:
        code = main()
    except BaseException:  # printed as the interpreter would, then the same exit without finalization
        traceback.print_exc()
        code = 1
    exit_rank(code)
