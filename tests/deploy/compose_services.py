"""docker-compose.yml's services started with podman from the file itself, for the container test.

podman-compose cannot honour this file here: its `depends_on: condition: service_healthy` needs
`podman wait --condition=healthy` (podman >= 4.6; Debian bookworm ships 4.3, and podman-compose then
logs "Ignored ... condition check" and starts dependents at once), and the Kafka, Redis, Prometheus
and Grafana images come from Docker Hub, which is out of reach. So the test starts the project's own
services (trainer, inference) from the resolved file (`docker-compose config`: anchors merged,
variables interpolated) with podman directly: the same image, entrypoint, command, environment,
volumes, hardening and health check, in the file's dependency order, each started only once every
service it depends on is healthy. Kafka and Redis are the test session's broker and server on the
host ("external" services, healthy when they answer). Host networking replaces the Compose network,
so the addresses that name Compose services are overridden, and published ports do not apply.

A key of a service that this translation does not know fails loudly (`UnsupportedKey`): a new field
in docker-compose.yml must be either carried over or listed in `IGNORED` with its reason.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"

IGNORED = {
    "build": "the test builds the image itself (tests/deploy/containers.py)",
    "ports": "host networking: the container's ports are the host's",
    "profiles": "the test names the services it starts",
    "depends_on": "honoured by start_order and wait_healthy, not by podman run",
    "deploy": "GPU reservations: the CPU services have none",
}


class UnsupportedKey(AssertionError):
    """A service key docker-compose.yml uses that the podman translation neither carries nor ignores."""


def compose(binary: str, *args: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """docker-compose on the repository's file, with only `env` of the UNIREC_/GRAFANA_/COMPOSE_ variables."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("UNIREC_", "GRAFANA_", "COMPOSE_"))}
    return subprocess.run([binary, "-f", str(COMPOSE_FILE), *args], capture_output=True, text=True,
                          env={**clean, **env}, cwd=REPO, timeout=60, check=False)


def compose_config(binary: str, env: Mapping[str, str], profiles: Iterable[str] = ()) -> dict[str, Any]:
    """The resolved file (`docker-compose config`: validated, anchors merged, variables interpolated)."""
    args = [arg for profile in profiles for arg in ("--profile", profile)]
    result = compose(binary, *args, "config", env=env)
    if result.returncode != 0:
        raise AssertionError(f"docker-compose config failed: {result.stderr}")
    return yaml.safe_load(result.stdout)


def duration_seconds(value: str | int | float) -> float:
    """Compose durations as `docker-compose config` writes them ('1m30s', '10s', '250ms') to seconds."""
    if isinstance(value, int | float):
        return float(value)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise ValueError(f"Compose duration {value!r}: expected forms like '90s', '1m30s', '250ms'")
    return sum(float(n) * units[u] for n, u in parts)


def _duration(value: str | int | float) -> str:
    return f"{duration_seconds(value):g}s"


def _health_args(check: Mapping[str, Any]) -> list[str]:
    test = check["test"]
    if isinstance(test, str):
        test = ["CMD-SHELL", test]
    kind, *rest = test
    if kind == "CMD":
        cmd = json.dumps(rest)
    elif kind == "CMD-SHELL":
        cmd = " ".join(rest)
    else:
        raise UnsupportedKey(f"healthcheck test {test!r}: expected CMD or CMD-SHELL")
    args = ["--health-cmd", cmd]
    for key, flag in (("interval", "--health-interval"), ("timeout", "--health-timeout"),
                      ("start_period", "--health-start-period")):
        if key in check:
            args += [flag, _duration(check[key])]
    if "retries" in check:
        args += ["--health-retries", str(check["retries"])]
    return args


def _volume_args(volumes: Iterable[str | Mapping[str, Any]], named: Mapping[str, Path]) -> list[str]:
    """Named volumes become the host folders of `named` (podman's own named volumes would take their
    owner from whichever container mounts them first); bind mounts stay as they are."""
    args: list[str] = []
    for volume in volumes:
        if isinstance(volume, Mapping):
            source, target, read_only = volume["source"], volume["target"], volume.get("read_only", False)
        else:
            source, target, *mode = volume.split(":")
            read_only = "ro" in (mode[0].split(",") if mode else [])
        if not source.startswith(("/", ".")):
            if source not in named:
                raise KeyError(f"named volume {source!r} has no host folder; pass it in `named` ({sorted(named)})")
            source = str(named[source])
        args += ["--volume", f"{source}:{target}" + (":ro" if read_only else "")]
    return args


def run_args(service: Mapping[str, Any], *, named_volumes: Mapping[str, Path],
             environment: Mapping[str, str]) -> list[str]:
    """`podman run` arguments (after `run -d --name N`) for one resolved Compose service; `environment`
    overrides the file's variables (addresses under host networking, test intervals)."""
    args = ["--network", "host"]
    env = {**{k: "" if v is None else str(v) for k, v in service.get("environment", {}).items()}, **environment}
    for key, value in sorted(env.items()):
        args += ["--env", f"{key}={value}"]
    handled = {"image", "environment", "entrypoint", "command", "container_name"}
    for key, value in service.items():
        if key in handled or key in IGNORED:
            continue
        if key == "healthcheck":
            args += _health_args(value)
        elif key == "volumes":
            args += _volume_args(value, named_volumes)
        elif key == "read_only":
            args += ["--read-only"] if value else ["--read-only=false"]
        elif key == "tmpfs":
            for path in [value] if isinstance(value, str) else value:
                args += ["--tmpfs", path]
        elif key == "security_opt":
            for option in value:
                args += ["--security-opt", option]
        elif key == "cap_drop":
            for cap in value:
                args += ["--cap-drop", cap]
        elif key == "cap_add":
            for cap in value:
                args += ["--cap-add", cap]
        elif key == "shm_size":
            args += ["--shm-size", str(value)]
        elif key == "stop_grace_period":
            args += ["--stop-timeout", str(int(duration_seconds(value)))]
        elif key == "restart":
            args += ["--restart", value]
        elif key == "user":
            args += ["--user", str(value)]
        else:
            raise UnsupportedKey(f"service key {key!r} (value {value!r}) is neither carried to podman nor "
                                 f"listed in IGNORED ({sorted(IGNORED)})")
    if "entrypoint" in service:
        entrypoint = service["entrypoint"]
        args += ["--entrypoint", json.dumps([entrypoint] if isinstance(entrypoint, str) else entrypoint)]
    args.append(service["image"])
    command = service.get("command", [])
    args += command.split() if isinstance(command, str) else list(command)
    return args


def dependencies(service: Mapping[str, Any]) -> dict[str, str]:
    """`depends_on` as {service: condition} (the short list form means service_started)."""
    deps = service.get("depends_on", {})
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: spec.get("condition", "service_started") for name, spec in deps.items()}


def start_order(services: Mapping[str, Mapping[str, Any]], wanted: Iterable[str]) -> list[str]:
    """The wanted services and everything they depend on, each after its dependencies (a cycle or an
    unknown service is an error naming it)."""
    order: list[str] = []
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            raise ValueError(f"depends_on cycle: {' -> '.join([*visiting[visiting.index(name):], name])}")
        if name not in services:
            raise KeyError(f"service {name!r} is not in the file (services: {sorted(services)})")
        visiting.append(name)
        for dep in dependencies(services[name]):
            visit(dep)
        visiting.pop()
        order.append(name)

    for name in wanted:
        visit(name)
    return order


@dataclass(frozen=True)
class HealthWait:
    """How long a dependency may take to turn healthy: its start period plus every retry interval."""

    seconds: float

    @classmethod
    def of(cls, service: Mapping[str, Any]) -> HealthWait:
        check = service.get("healthcheck", {})
        period = duration_seconds(check.get("start_period", 0))
        interval = duration_seconds(check.get("interval", "30s"))
        return cls(period + interval * (int(check.get("retries", 3)) + 1))


def wait_healthy(name: str, probe: Callable[[], bool], wait: HealthWait, poll_s: float = 2.0) -> float:
    """Poll `probe` until it passes; returns the seconds it took, or fails after `wait.seconds`."""
    start = time.monotonic()
    while not probe():
        if time.monotonic() - start > wait.seconds:
            raise AssertionError(f"{name} not healthy after {wait.seconds:.0f} s (its healthcheck's start "
                                 "period plus retries x interval in docker-compose.yml)")
        time.sleep(poll_s)
    return time.monotonic() - start
