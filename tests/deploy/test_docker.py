"""The image definition (no Docker engine here: static checks) and its health-check script (run for real)."""

from __future__ import annotations

import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "deploy" / "docker"


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
            for line in (raw.strip() for raw in text.splitlines()) if line and not line.startswith("#")]


def test_dockerfile_is_multi_stage_non_root_with_healthcheck() -> None:
    steps = instructions(DOCKER / "Dockerfile")
    stages = [arg for op, arg in steps if op == "FROM"]
    assert [stage.split()[-1] for stage in stages] == ["pins", "builder", "runtime"]
    # the dependency layer sees the pins only (not pyproject.toml), so other edits keep it cached
    starts = [i for i, (op, _) in enumerate(steps) if op == "FROM"]
    builder = steps[starts[1]:starts[2]]
    assert ("COPY", "--from=pins /requirements.txt /tmp/requirements.txt") in builder
    assert not any(op == "COPY" and "pyproject.toml" in arg for op, arg in builder)
    runtime = steps[starts[2]:]
    users = [arg for op, arg in runtime if op == "USER"]
    assert users and not users[-1].startswith(("root", "0")), "the runtime stage must end as a non-root user"
    assert any(op == "HEALTHCHECK" and "unirec-healthcheck" in arg for op, arg in runtime)
    assert any(op == "COPY" and arg.startswith("--from=builder /opt/venv") for op, arg in runtime)
    assert not any(op == "RUN" and "pip install" in arg for op, arg in runtime), "no pip in the runtime stage"
    env = " ".join(arg for op, arg in steps if op == "ENV")
    assert "PIP_NO_CACHE_DIR=1" in env and "UNIREC_SERVE_HOST=0.0.0.0" in env
    # every COPY source exists (the context is the repository root)
    for op, arg in steps:
        if op == "COPY" and not arg.startswith("--from"):
            for source in arg.split()[:-1]:
                assert source == "." or (REPO / source).exists(), f"COPY source {source} missing"


def test_install_script_is_valid_bash_and_keeps_torchrec_without_deps() -> None:
    script = DOCKER / "install.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert 'install --no-deps "${torchrec[@]}"' in text
    assert "TORCH_INDEX_URL-https://download.pytorch.org/whl}" in text and "index_args cpu" in text
    assert "--no-cache-dir" in text


def test_dockerignore_keeps_the_context_small() -> None:
    lines = (REPO / ".dockerignore").read_text().split()
    assert lines[lines.index("*")] == "*", "ignore everything, then allow what the image installs"
    for needed in ("!pyproject.toml", "!core/", "!embedding/", "!registry/", "!trainer/", "!services/", "!unirec/",
                   "!bench/", "!deploy/docker/"):
        assert needed in lines


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        self.send_response(200 if self.path in ("/healthz", "/metrics") else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("arg", "env_name", "healthy"), [
    ("serve", "UNIREC_SERVE_PORT", True),
    ("train", "UNIREC_TRAINER_METRICS_PORT", True),
    ("http://127.0.0.1:{port}/readyz", None, False),
])
def test_healthcheck_script(http_port: int, arg: str, env_name: str | None, healthy: bool) -> None:
    env = {env_name: str(http_port)} if env_name else {}
    result = subprocess.run([sys.executable, str(DOCKER / "healthcheck.py"), arg.format(port=http_port)],
                            env=env, capture_output=True, text=True, timeout=20, check=False)
    assert (result.returncode == 0) is healthy, result.stderr


def test_healthcheck_script_fails_when_nothing_listens() -> None:
    from core.net import free_port

    result = subprocess.run([sys.executable, str(DOCKER / "healthcheck.py"), "serve"],
                            env={"UNIREC_SERVE_PORT": str(free_port())}, capture_output=True, text=True, timeout=20,
                            check=False)
    assert result.returncode == 1 and "healthcheck:" in result.stderr


def test_installed_app_ships_its_feature_schemas(tmp_path: Path) -> None:
    """What `install.sh app` does in the image: a regular (non-editable) install plus the packages' data
    files. Without the copy the wheel has no embedding/schemas/*.yaml and `movielens` would not resolve
    (pyproject.toml declares no package data)."""
    import shutil

    src, target = tmp_path / "src", tmp_path / "site"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for pkg in ("unirec", "embedding", "trainer", "services"):
        if (REPO / pkg).is_dir():
            shutil.copytree(REPO / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-compile",
                    "--disable-pip-version-check", "--target", str(target), str(src)],
                   check=True, capture_output=True, timeout=180)
    subprocess.run(["bash", str(DOCKER / "install.sh"), "package-data", str(target)], cwd=src, check=True, timeout=60)
    # embedding.schema resolves names in Path(__file__).parent / "schemas": the YAML must sit next to it
    assert (target / "embedding" / "schema.py").is_file()
    shipped = sorted(p.relative_to(REPO) for p in (REPO / "embedding" / "schemas").glob("*.yaml"))
    assert shipped and all((target / p).is_file() for p in shipped), "schemas missing from the installed app"


def test_pins_step_prints_exactly_the_runtime_dependencies(tmp_path: Path) -> None:
    """The image's dependency layer is keyed on this output alone (Dockerfile `pins` stage)."""
    import tomllib

    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # `python` as in the image's venv
    result = subprocess.run(["bash", str(DOCKER / "install.sh"), "pins"], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PATH": path}, timeout=60, check=True)
    expected = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert result.stdout.splitlines() == expected
