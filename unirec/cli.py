"""The `unirec` command line: one entry point, one subcommand per job."""

from __future__ import annotations

import typer

from bench.cli import bench_app
from core.logs import configure_logging
from core.settings import CommonSettings
from services.datasets import data_app
from services.inference.cli import serve_command
from services.producer import produce_command
from services.simulate import simulate_command
from trainer.churn.report import churn_app
from trainer.cli import export_command, train_command
from unirec.infra_cli import infra_app
from unirec.models_cli import models_app
from unirec.up_cli import down_command, up_command

app = typer.Typer(
    help="unirec: streaming online training over one unified embedding table.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.command("up")(up_command)
app.command("down")(down_command)
app.add_typer(infra_app, name="infra")
app.add_typer(data_app, name="data")
app.command("produce")(produce_command)
app.command("simulate")(simulate_command)
app.add_typer(churn_app, name="churn")
app.command("train")(train_command)
app.command("export")(export_command)
app.command("serve")(serve_command)
app.add_typer(models_app, name="models")
app.add_typer(bench_app, name="bench")


@app.callback()
def main() -> None:
    configure_logging(CommonSettings().log_level)


if __name__ == "__main__":
    app()
