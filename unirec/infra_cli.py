"""`unirec infra up|down|status`: the local broker and Redis server."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from core.errors import InfraError
from core.settings import CommonSettings
from unirec.infra import LocalServer, local_servers

infra_app = typer.Typer(help="Start, stop and inspect the local Kafka-protocol broker and Redis server.")
console = Console(stderr=True)


def _servers() -> list[LocalServer]:
    settings = CommonSettings()
    return local_servers(settings.kafka_bootstrap, settings.redis_url, settings.home)


def start_all(timeout: float = 30.0) -> list[LocalServer]:
    servers = _servers()
    for server in servers:
        pid = server.start(timeout=timeout)
        console.print(f"[green]{server.kind}[/] pid={pid} at {server.address} (log {server.log_file})")
    return servers


@infra_app.command("up")
def up(timeout: float = typer.Option(30.0, help="Seconds to wait for each server to answer.")) -> None:
    """Start both servers (no-op for one already running) and wait until they answer."""
    try:
        start_all(timeout)
    except InfraError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc


@infra_app.command("down")
def down() -> None:
    """Stop both servers started by `infra up`."""
    for server in _servers():
        stopped = server.stop()
        console.print(f"{server.kind}: {'stopped' if stopped else 'was not running'}")


@infra_app.command("status")
def status() -> None:
    """Show PID and health of each server; exits 1 unless both are healthy."""
    table = Table("server", "address", "pid", "healthy")
    all_ok = True
    for server in _servers():
        pid = server.pid()
        ok = pid is not None and server.healthy()
        all_ok &= ok
        table.add_row(server.kind, server.address, str(pid or "-"), "[green]yes[/]" if ok else "[red]no[/]")
    Console().print(table)
    if not all_ok:
        raise typer.Exit(1)
