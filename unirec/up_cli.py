"""`unirec up` and `unirec down`: the whole stack on this machine."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

import typer
from rich.console import Console
from rich.live import Live

from core.errors import InfraError
from unirec.infra import ManagedProcess, _alive
from unirec.stack import Stack, StackSettings, StackStatus

console = Console(stderr=True)

MAX_RESTARTS = 5
"""Restarts of one component before `unirec up` gives up (a component that cannot start stays dead)."""

EXAMPLE = """curl -s -X POST {url} -H 'content-type: application/json' -d '{{"events": [{{"event_id": "demo-1", \
"ts": 893286638000, "sparse": {{"user": 196, "movie": 242, "age": 49, "gender": "M", "occupation": "writer", \
"zip": "55105"}}}}]}}'"""


def up_command(
    detach: bool = typer.Option(
        False, "--detach", "-d", help="Start in the background and return; stop with `unirec down`."
    ),
    timeout: float = typer.Option(300.0, help="Seconds to wait for the first served model."),
) -> None:
    """Start broker, Redis, a looping dataset replay, the trainer and the inference service."""
    stack = Stack(StackSettings())
    try:
        stack.start()
    except InfraError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    s = stack.settings
    console.print(f"logs: {s.home}/logs/  (producer, trainer, inference, kafka, redis)")
    console.print(f"status page  {stack.service_url}/")
    console.print(f"predict      {stack.predict_url}")
    console.print(f"model        {stack.service_url}/v1/model")
    console.print(f"metrics      {stack.service_url}/metrics  and  http://127.0.0.1:{s.trainer_metrics_port}/metrics")
    console.print("try:\n" + EXAMPLE.format(url=stack.predict_url), soft_wrap=True, highlight=False)
    if detach:
        _wait_ready(stack, timeout)
        console.print("running in the background; `unirec down` stops everything")
        return
    stop = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    me = _up_process(s.home)
    me.pid_file.write_text(str(os.getpid()))
    previous: StackStatus | None = None
    restarts: Counter[str] = Counter()
    try:
        with Live(console=console, refresh_per_second=1, transient=False) as live:
            while not stop:
                check = stack.supervise()
                if check.stopped:
                    console.print(f"{', '.join(check.stopped)} stopped from outside (`unirec down`)")
                    break
                for name in check.died:
                    process = stack.processes[name]
                    restarts[name] += 1
                    if restarts[name] > MAX_RESTARTS:
                        raise InfraError(f"{name} died {restarts[name]} times; last log lines "
                                         f"({process.log_file}): {process.log_tail(8)}")  # fmt: skip
                    console.print(
                        f"[red]{name} died[/]; last log lines ({process.log_file}): {process.log_tail(8)}\n"
                        f"restarting {name} ({restarts[name]} of {MAX_RESTARTS})"
                        + (", from its last checkpoint" if name == "trainer" else ""),
                        highlight=False,
                    )
                    stack.restart(name)
                status = stack.status()
                live.update(status.line(previous))
                previous = status
                for _ in range(20):
                    if stop:
                        break
                    time.sleep(0.1)
    except InfraError as exc:
        console.print(f"[red]error:[/] {exc}")
        stack.stop()
        raise typer.Exit(1) from exc
    finally:
        me.pid_file.unlink(missing_ok=True)
    console.print("stopping (the trainer writes a final checkpoint) ...")
    stack.stop()


def _wait_ready(stack: Stack, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack.check_alive()
        if stack.status().ready:
            console.print(f"[green]ready:[/] {stack.status().line(None)}")
            return
        time.sleep(1)
    raise InfraError(f"no model served within {timeout:.0f}s; see {stack.settings.home}/logs/")


def _up_process(home: Path) -> ManagedProcess:
    """The foreground `unirec up` itself: `unirec down` asks it to stop the stack, so it exits 0."""
    return ManagedProcess("up", home)


def down_command() -> None:
    """Stop everything `unirec up` started (producer, trainer, service, broker, Redis)."""
    settings = StackSettings()
    up = _up_process(settings.home)
    pid = up.pid()
    if pid is not None and pid != os.getpid():
        os.kill(pid, signal.SIGTERM)  # not its process group: that is the terminal's
        deadline = time.monotonic() + 180
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    stopped = Stack(settings).stop()
    if pid is not None and pid != os.getpid():  # `unirec up` stopped its own components before exiting
        stopped.insert(0, f"unirec up (pid {pid}) and what it started")
    console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
