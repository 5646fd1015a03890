"""`unirec train`: one rank in this process, or N ranks under torchrun."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import typer

from core.net import free_port
from trainer.lifetime import children, die_with_parent


def train_command(
    nproc: int = typer.Option(1, "--nproc", "-n", min=1, help="Ranks on this machine (torchrun when > 1)."),
    schema: str = typer.Option(None, help="Feature schema name or YAML path (UNIREC_TRAINER_SCHEMA)."),
    topic: str = typer.Option(None, help="Events topic (UNIREC_TRAINER_TOPIC)."),
    stop_at_end: bool = typer.Option(False, help="Stop with a final checkpoint once the topic is drained."),
) -> None:
    """Consume events from Kafka and train continuously; settings from UNIREC_TRAINER_* variables."""
    env = dict(os.environ)
    if schema:
        env["UNIREC_TRAINER_SCHEMA"] = schema
    if topic:
        env["UNIREC_TRAINER_TOPIC"] = topic
    if stop_at_end:
        env["UNIREC_TRAINER_STOP_AT_END"] = "true"
    if nproc == 1:
        argv = [sys.executable, "-m", "trainer.main"]
    else:
        argv = [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "trainer.main",
        ]  # fmt: skip
    raise typer.Exit(_run_forwarding_signals(argv, env, torchrun=nproc > 1))


def _run_forwarding_signals(argv: list[str], env: dict[str, str], torchrun: bool) -> int:
    """Run the trainer (or torchrun) as a child that dies with this launcher; SIGTERM/SIGINT sent to
    the launcher reach the trainer, so a supervisor stopping `unirec train` gets the final checkpoint.

    Under torchrun the signal goes to the ranks, not to torchrun: torchrun turns a signal of its own
    into a SignalException and exits 1 even after every rank stopped cleanly, whereas ranks that exit
    0 make it exit 0. torchrun gets its own process group for the same reason (a Ctrl-C or a `killpg`
    of the launcher's group must not reach it); it and each rank die with their parent instead
    (`trainer.lifetime`)."""
    child = subprocess.Popen(argv, env=env, preexec_fn=die_with_parent, process_group=0 if torchrun else None)

    def forward(signum: int, _frame: object) -> None:
        if child.poll() is not None:
            return
        for pid in (children(child.pid) if torchrun else []) or [child.pid]:  # no ranks yet: torchrun
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    return child.wait()


def export_command(
    checkpoint: Path = typer.Option(None, help="Checkpoint directory; default: the latest under UNIREC_HOME."),
    quantization: str = typer.Option(None, help="int8, int4, fp16 or fp32 [default: UNIREC_TRAINER_QUANTIZATION]."),
) -> None:
    """Export a checkpoint now as a new model version (verified artifact, published on Redis)."""
    from trainer.checkpoint import latest_checkpoint
    from trainer.errors import TrainerError
    from trainer.exporting import export_checkpoint
    from trainer.settings import TrainerSettings

    settings = TrainerSettings()
    path = checkpoint or latest_checkpoint(settings.checkpoints)
    if path is None:
        typer.echo(f"error: no checkpoint under {settings.checkpoints}; pass --checkpoint DIR", err=True)
        raise typer.Exit(1)
    try:
        manifest = export_checkpoint(path, quantization or settings.quantization, settings)
    except (TrainerError, ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"exported {path} as {manifest.version} ({manifest.quantization}, watermark {manifest.watermark_ms})")
