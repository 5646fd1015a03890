"""docker-compose.yml, validated by Debian's docker-compose 1.29 (`docker-compose config`)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from embedding.schema import load_schema

REPO = Path(__file__).resolve().parents[2]
REQUIRED = {"UNIREC_SERVE_API_KEY": "test-key", "GRAFANA_ADMIN_PASSWORD": "test-password"}


def compose(binary: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("UNIREC_", "GRAFANA_", "COMPOSE_"))}
    return subprocess.run([binary, "-f", str(REPO / "docker-compose.yml"), *args], capture_output=True, text=True,
                          env={**clean, **env}, cwd=REPO, timeout=60, check=False)


@pytest.fixture(scope="module")
def config(docker_compose: str) -> dict:
    """The resolved file (all profiles): `docker-compose config` validates it against the Compose schema."""
    result = compose(docker_compose, "--profile", "gpu", "--profile", "replay", "config", env=REQUIRED)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_config_validates(config: dict) -> None:
    assert config["services"] and config["volumes"]


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_required_variables_fail_with_a_message(docker_compose: str, missing: str) -> None:
    env = {k: v for k, v in REQUIRED.items() if k != missing}
    result = compose(docker_compose, "config", "--quiet", env=env)
    assert result.returncode != 0
    assert f"set {missing}" in result.stderr, result.stderr


def test_services_profiles_and_health(config: dict) -> None:
    services = config["services"]
    assert {"kafka", "redis", "trainer", "trainer-gpu", "inference", "producer", "prometheus", "grafana"} <= set(
        services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    assert services["trainer-gpu"]["profiles"] == ["gpu"]
    assert services["producer"]["profiles"] == ["replay"]
    assert services["producer"]["command"][:3] == ["produce", "movielens", "--loop"]
    gpu = services["trainer-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"] and gpu["driver"] == "nvidia"
    for name, service in services.items():
        check = service.get("healthcheck", {})
        assert check.get("test") and check["test"][0] != "NONE" and not check.get("disable"), f"{name}: no health check"
        for dep, cond in service.get("depends_on", {}).items():
            assert cond == {"condition": "service_healthy"}, f"{name} -> {dep}: {cond}"
            assert services[dep].get("healthcheck"), f"{name} waits for {dep}, which has no health check"


def test_unirec_services_share_the_model_store(config: dict) -> None:
    services = config["services"]
    volumes = {name: [str(v) for v in services[name]["volumes"]] for name in ("trainer", "trainer-gpu", "inference")}
    assert "unirec-home" in config["volumes"]
    assert any(v.startswith("unirec-home:/var/lib/unirec") and v.endswith(":rw") for v in volumes["trainer"])
    assert "unirec-home:/var/lib/unirec-store:ro" in volumes["inference"]
    assert services["inference"]["environment"]["UNIREC_MODEL_STORE"] == "/var/lib/unirec-store/models"
    for name in ("trainer", "trainer-gpu"):
        service = services[name]
        assert service["stop_grace_period"] in ("120s", "2m"), "room for the final checkpoint"
        assert service["environment"]["UNIREC_KAFKA_BOOTSTRAP"] == "kafka:9092"
        assert service["entrypoint"][-1] == "torchrun" and service["command"][-2:] == ["-m", "trainer.main"]
        assert int(service["environment"]["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"]) < 120
        assert load_schema(service["environment"]["UNIREC_TRAINER_SCHEMA"]).sparse  # a shipped schema
    inference = services["inference"]["environment"]
    assert inference["UNIREC_SERVE_HOST"] == "0.0.0.0" and inference["UNIREC_SERVE_API_KEY"] == "test-key"


def test_monitoring_is_provisioned_from_the_repository(config: dict) -> None:
    def host_paths(service: str) -> dict[str, str]:
        out = {}
        for volume in config["services"][service]["volumes"]:
            source, target = str(volume).split(":")[:2]
            out[target] = source
        return out

    grafana = host_paths("grafana")
    assert Path(grafana["/etc/grafana/provisioning"]) == REPO / "deploy" / "grafana" / "provisioning"
    dashboards = yaml.safe_load((REPO / "deploy/grafana/provisioning/dashboards/unirec.yml").read_text())
    mounted = grafana[dashboards["providers"][0]["options"]["path"]]
    assert Path(mounted) == REPO / "helm" / "unirec" / "dashboards", "Compose must use the chart's single copy"
    prometheus = host_paths("prometheus")
    assert Path(prometheus["/etc/prometheus/prometheus.yml"]) == REPO / "deploy" / "prometheus" / "prometheus.yml"
    scrape = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    targets = {t for job in scrape["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert {"trainer:9400", "inference:8000"} <= targets
