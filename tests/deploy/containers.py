"""podman, driven for the container tests: the local base image, the CPU image build, containers.

podman's settings for this kind of host come from deploy/podman/containers.conf (runc, cgroupfs,
ulimits the host permits). No image registry is reachable, so the base is made from Debian's packages
by deploy/docker/base-image.sh, and pip inside the build reaches the package index through the
host's own pip configuration, mounted read-only (`pip_mounts`).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = REPO / "deploy" / "podman" / "containers.conf"
BASE_IMAGE = "localhost/debian-py:bookworm"
IMAGE = "localhost/unirec:cpu-test"


class Podman:
    """The podman binary with the project's containers.conf; every call bounded."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.env = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}

    def run(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([self.binary, *args], capture_output=True, text=True, env=self.env,
                                timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"podman {shlex.join(args)} failed (rc={result.returncode}):\n"
                                 f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
        return result

    def exists(self, image: str) -> bool:
        return self.run("image", "exists", image, check=False).returncode == 0

    def inspect(self, image: str, fmt: str) -> str:
        return self.run("image", "inspect", "--format", fmt, image).stdout.strip()


def pip_mounts() -> list[str]:
    """`--volume` arguments that give a build's pip the host's pip configuration: every config file
    pip reads here, and every local path its settings name (find-links folders, constraint and
    certificate files), each read-only at the same place."""
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "debug"], capture_output=True, text=True,
                             timeout=60, check=True).stdout
    paths: set[str] = set()
    for line in listing.splitlines():
        line = line.strip()
        if line.endswith("exists: True"):
            paths.add(line.split(",", 1)[0])
        elif "=" in line or ": " in line:
            value = re.split(r"=|: ", line, maxsplit=1)[1].strip().strip("'\"")
            # plain paths only: a file:// index left out is skipped by pip with a warning (such local
            # mirrors may list files they lack, and the build's older pip then fails on them)
            paths.update(item for item in value.split() if item.startswith("/") and Path(item).exists())
    for name, value in os.environ.items():
        if name.startswith("PIP_") and value.startswith("/") and Path(value).exists():
            paths.add(value)
    return [arg for path in sorted(paths) for arg in ("--volume", f"{path}:{path}:ro")]


def build_image(podman: Podman, log: Path) -> float:
    """Builds the CPU image on the local base; returns the seconds it took (cached layers count)."""
    args = ["build", "--format", "docker", "--isolation", "chroot", "--layers", "--network", "host",
            "-f", str(REPO / "deploy" / "docker" / "Dockerfile"),
            "--build-arg", f"PYTHON_IMAGE={BASE_IMAGE}", "--build-arg", "TORCH_INDEX_URL=",
            *pip_mounts(), "-t", IMAGE, str(REPO)]
    start = time.monotonic()
    result = podman.run(*args, timeout=1500, check=False)
    elapsed = time.monotonic() - start
    log.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise AssertionError(f"podman build failed (rc={result.returncode}), log {log}:\n{result.stderr[-6000:]}")
    return elapsed
