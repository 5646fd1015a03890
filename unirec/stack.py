"""The main job on one machine: broker + Redis, a looping dataset replay, the trainer (N ranks),
the inference service, each a managed background process with a PID file and a log under
`<home>/`. `unirec up` starts them and shows a live status line; `unirec down` stops them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import orjson
from prometheus_client.parser import text_string_to_metric_families
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from core.errors import InfraError
from core.settings import CommonSettings
from unirec.infra import ManagedProcess, local_servers

# stop order: the producer first (no new events), the trainer (final checkpoint), then the service
COMPONENTS = ("producer", "trainer", "inference")


class StackSettings(CommonSettings):
    """`unirec up` (env prefix UNIREC_UP_); every component also reads its own UNIREC_* settings."""

    model_config = SettingsConfigDict(env_prefix="UNIREC_UP_", extra="forbid", frozen=True)

    dataset: str = "movielens"
    """Dataset replayed in a loop (a known name or a feature YAML)."""
    rate: float = Field(500.0, gt=0)
    """Events per second the replay sends."""
    topic: str = "events"
    partitions: int = Field(2, ge=1)
    ranks: int = Field(2, ge=1)
    """Trainer processes (torchrun ranks)."""
    serve_port: int = Field(8000, ge=1, le=65535)
    trainer_metrics_port: int = Field(9400, ge=1, le=65535)
    export_every_s: float = Field(60.0, gt=0)
    delta_every_s: float = Field(1.0, gt=0)
    """Deltas every second: an event waits on average half this interval for the next one, the largest
    share of freshness (3 s gave p50 2.0-2.5 s, 1 s gives 1.3 s: bench/results/freshness.md)."""


@dataclass
class Stack:
    settings: StackSettings
    processes: dict[str, ManagedProcess] = field(init=False)

    def __post_init__(self) -> None:
        self.processes = {name: ManagedProcess(name, self.settings.home) for name in COMPONENTS}

    @property
    def predict_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.serve_port}/v1/predict"

    @property
    def service_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.serve_port}"

    def _env(self) -> dict[str, str]:
        s = self.settings
        env = dict(os.environ)
        env.update(
            UNIREC_HOME=str(s.home.resolve()),
            UNIREC_KAFKA_BOOTSTRAP=s.kafka_bootstrap,
            UNIREC_REDIS_URL=s.redis_url,
            UNIREC_TRAINER_TOPIC=s.topic,
            UNIREC_TRAINER_SCHEMA=env.get("UNIREC_TRAINER_SCHEMA", s.dataset),
            UNIREC_TRAINER_METRICS_PORT=str(s.trainer_metrics_port),
            UNIREC_TRAINER_EXPORT_EVERY_S=str(s.export_every_s),
            UNIREC_TRAINER_DELTA_EVERY_S=str(s.delta_every_s),
            UNIREC_SERVE_PORT=str(s.serve_port),
        )
        return env

    def commands(self) -> dict[str, list[str]]:
        s = self.settings
        cli = [sys.executable, "-m", "unirec.cli"]
        return {
            "producer": [*cli, "produce", s.dataset, "--topic", s.topic, "--partitions", str(s.partitions),
                         "--loop", "--rate", str(s.rate), "--live-time", "--no-progress"],
            "trainer": [*cli, "train", "--nproc", str(s.ranks)],
            "inference": [*cli, "serve"],
        }  # fmt: skip

    def start(self, timeout: float = 60.0) -> None:
        """Infrastructure first (waits until healthy), then every component not already running."""
        for server in local_servers(self.settings.kafka_bootstrap, self.settings.redis_url, self.settings.home):
            server.start(timeout=timeout)
        env = self._env()
        for name, argv in self.commands().items():
            process = self.processes[name]
            if process.pid() is None:
                process.spawn(argv, env)

    def stop(self, timeout: float = 60.0) -> list[str]:
        stopped = [name for name, process in self.processes.items() if process.stop(timeout)]
        for server in local_servers(self.settings.kafka_bootstrap, self.settings.redis_url, self.settings.home):
            if server.stop():
                stopped.append(server.kind)
        return stopped

    def restart(self, name: str) -> None:
        """Start component `name` again (the trainer resumes from its last checkpoint)."""
        self.processes[name].spawn(self.commands()[name], self._env())

    def check_alive(self) -> None:
        """Raise with the log tail of a component that died."""
        for name, process in self.processes.items():
            if process.pid() is None:
                raise InfraError(f"{name} is not running; last log lines ({process.log_file}): {process.log_tail(8)}")

    def supervise(self) -> Check:
        """Which components were stopped from outside (`unirec down` removes their PID files) and which
        died on their own (a PID file whose process is gone); the remains of a dead one's process
        group are killed, so it can be restarted at once. Raises when the broker or Redis is gone."""
        check = Check()
        for name, process in self.processes.items():
            try:
                pid = int(process.pid_file.read_text().strip())
            except (FileNotFoundError, ValueError):
                check.stopped.append(name)
                continue
            if process.pid() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                check.died.append(name)
        if check.stopped:
            return check
        for server in local_servers(self.settings.kafka_bootstrap, self.settings.redis_url, self.settings.home):
            if server.pid() is None:
                raise InfraError(f"{server.kind} is not running; last log lines ({server.log_file}): "
                                 f"{server.process.log_tail(8)}")  # fmt: skip
        return check

    def status(self) -> StackStatus:
        return StackStatus.read(self)


@dataclass
class Check:
    stopped: list[str] = field(default_factory=list)
    died: list[str] = field(default_factory=list)


@dataclass
class StackStatus:
    events: float | None = None
    auc: float | None = None
    version: str | None = None
    freshness_s: float | None = None
    ready: bool = False
    at: float = field(default_factory=time.monotonic)

    @classmethod
    def read(cls, stack: Stack) -> StackStatus:
        status = cls()
        metrics = _get(f"http://127.0.0.1:{stack.settings.trainer_metrics_port}/metrics")
        if metrics is not None:
            for family in text_string_to_metric_families(metrics.decode()):
                for sample in family.samples:
                    if sample.name == "unirec_trainer_events_total":
                        status.events = (status.events or 0.0) + sample.value
                    elif sample.name == "unirec_trainer_progressive_auc" and sample.labels.get("window") == "recent":
                        status.auc = sample.value
        model = _get(f"{stack.service_url}/v1/model")
        if model is not None:
            doc = orjson.loads(model)
            status.version = doc.get("version")
            status.freshness_s = doc.get("freshness_s")
            status.ready = True
        return status

    def line(self, previous: StackStatus | None) -> str:
        rate = "-"
        if previous and previous.events is not None and self.events is not None and self.at > previous.at:
            rate = f"{(self.events - previous.events) / (self.at - previous.at):,.0f}"
        auc = f"{self.auc:.3f}" if self.auc is not None and self.auc == self.auc else "-"
        fresh = f"{self.freshness_s:.1f}s" if self.freshness_s is not None else "-"
        trained = f"{self.events:,.0f}" if self.events is not None else "-"
        return (
            f"events trained {trained} ({rate}/s, rank 0) | progressive AUC {auc} | "
            f"model {self.version or 'none yet'} | freshness {fresh}"
        )


def _get(url: str, timeout: float = 1.0) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read() if response.status == 200 else None
    except (urllib.error.URLError, OSError, ValueError):
        return None
