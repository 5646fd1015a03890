"""The `unirec` command line: one entry point, one subcommand per job.

Subcommands are imported on first use: `unirec --help` lists them from the table below without
importing a single job, and `unirec infra status` imports the infra commands only (not torch,
TorchRec or FastAPI). `tests/unirec/test_cli_startup.py` checks that each short help below is the
one the loaded command carries, and that the listed commands start in well under a second.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from difflib import get_close_matches

import click
import typer
from typer.core import TyperGroup


@dataclass(frozen=True)
class Lazy:
    """A subcommand by location: `module:attribute` (a typer app or a command function)."""

    target: str
    help: str

    def load(self, name: str) -> click.Command:
        module, _, attribute = self.target.partition(":")
        obj = getattr(importlib.import_module(module), attribute)
        if isinstance(obj, typer.Typer):
            return typer.main.get_group(obj)
        single = typer.Typer(add_completion=False)
        single.command(name)(obj)
        return typer.main.get_command(single)


COMMANDS: dict[str, Lazy] = {
    "up": Lazy(
        "unirec.up_cli:up_command",
        "Start broker, Redis, a looping dataset replay, the trainer and the inference service.",
    ),
    "down": Lazy(
        "unirec.up_cli:down_command",
        "Stop everything `unirec up` started (producer, trainer, service, broker, Redis).",
    ),
    "produce": Lazy(
        "services.producer:produce_command",
        "Replay a dataset into a Kafka topic: one JSON (or msgpack) event per message.",
    ),
    "simulate": Lazy(
        "services.simulate:simulate_command",
        "Generate a synthetic stream (Zipf IDs, churn, drift, known click model) with its ground truth.",
    ),
    "train": Lazy(
        "trainer.cli:train_command",
        "Consume events from Kafka and train continuously; settings from UNIREC_TRAINER_* variables.",
    ),
    "export": Lazy(
        "trainer.cli:export_command",
        "Export a checkpoint now as a new model version (verified artifact, published on Redis).",
    ),
    "serve": Lazy(
        "services.inference.cli:serve_command",
        "Serve predictions over HTTP from the latest exported model, following new exports.",
    ),
    "infra": Lazy(
        "unirec.infra_cli:infra_app", "Start, stop and inspect the local Kafka-protocol broker and Redis server."
    ),
    "data": Lazy(
        "services.datasets:data_app", "Datasets the project knows: list them, fetch the ones that can be fetched."
    ),
    "churn": Lazy("trainer.churn.report:churn_app", "Vocabulary churn of the features sharing the unified table."),
    "models": Lazy("unirec.models_cli:models_app", "List, inspect and roll back exported model versions."),
    "bench": Lazy("bench.cli:bench_app", "Benchmarks over real data (results under bench/results/)."),
}


class LazyGroup(TyperGroup):
    """Lists `COMMANDS` from their help texts; imports a subcommand only to run it (or show its help)."""

    _listing = False

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*super().list_commands(ctx), *(name for name in COMMANDS if name not in self.commands)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands or cmd_name not in COMMANDS:
            return super().get_command(ctx, cmd_name)
        lazy = COMMANDS[cmd_name]
        if self._listing:
            return click.Command(cmd_name, help=lazy.help)
        command = lazy.load(cmd_name)
        self.add_command(command, cmd_name)
        return command

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:  # typer suggests among loaded commands only: offer them all
            matches = get_close_matches(args[0], list(COMMANDS)) if args else []
            if matches and "Did you mean" not in exc.message:
                exc.message = f"{exc.message.rstrip('.')}. Did you mean {', '.join(map(repr, matches))}?"
            raise


app = typer.Typer(
    cls=LazyGroup,
    help="unirec: streaming online training over one unified embedding table.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def main() -> None:
    from core.logs import configure_logging
    from core.settings import CommonSettings

    configure_logging(CommonSettings().log_level)


if __name__ == "__main__":
    app()
