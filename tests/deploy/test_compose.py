"""docker-compose.yml, validated by Debian's docker-compose 1.29 (`docker-compose config`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from embedding.schema import load_schema
from tests.deploy.compose_services import REPO, compose, compose_config, run_args, start_order

REQUIRED = {"UNIREC_SERVE_API_KEY": "test-key", "GRAFANA_ADMIN_PASSWORD": "test-password"}


@pytest.fixture(scope="module")
def config(docker_compose: str) -> dict:
    """The resolved file (all profiles): `docker-compose config` validates it against the Compose schema."""
    return compose_config(docker_compose, REQUIRED, profiles=("gpu", "replay"))


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


def test_services_translate_to_podman_run_from_the_file(config: dict, tmp_path: Path) -> None:
    """What the container test starts is what the file says: image, entrypoint, command, environment,
    health check, hardening, the shared volume (read-only for the service)."""
    services = config["services"]
    trainer = run_args(services["trainer"], named_volumes={"unirec-home": tmp_path},
                       environment={"UNIREC_KAFKA_BOOTSTRAP": "127.0.0.1:1"})
    assert trainer[-5:] == [services["trainer"]["image"], "--standalone", "--nproc_per_node=2", "-m", "trainer.main"]
    assert trainer[trainer.index("--entrypoint") + 1] == '["tini", "--", "torchrun"]'
    assert "UNIREC_KAFKA_BOOTSTRAP=127.0.0.1:1" in trainer and "UNIREC_KAFKA_BOOTSTRAP=kafka:9092" not in trainer
    assert "UNIREC_TRAINER_SCHEMA=movielens" in trainer
    assert trainer[trainer.index("--health-cmd") + 1] == '["python", "/usr/local/bin/unirec-healthcheck", "train"]'
    assert trainer[trainer.index("--health-start-period") + 1] == "180s"
    assert trainer[trainer.index("--stop-timeout") + 1] == "120"
    assert {"--cap-drop", "ALL", "--security-opt", "no-new-privileges:true", "--shm-size", "1g"} <= set(trainer)
    assert f"{tmp_path}:/var/lib/unirec" in trainer
    serve = run_args(services["inference"], named_volumes={"unirec-home": tmp_path}, environment={})
    assert serve[-2:] == [services["inference"]["image"], "serve"] and "--read-only" in serve
    assert f"{tmp_path}:/var/lib/unirec-store:ro" in serve and "/tmp" in serve
    with pytest.raises(KeyError, match="unirec-home"):
        run_args(services["inference"], named_volumes={}, environment={})


def test_a_service_key_the_translation_does_not_know_fails(config: dict, tmp_path: Path) -> None:
    from tests.deploy.compose_services import UnsupportedKey

    service = {**config["services"]["inference"], "pids_limit": 100}
    with pytest.raises(UnsupportedKey, match="pids_limit"):
        run_args(service, named_volumes={"unirec-home": tmp_path}, environment={})


def test_start_order_puts_dependencies_first(config: dict) -> None:
    services = config["services"]
    order = start_order(services, ["grafana", "inference", "trainer"])
    assert order.index("prometheus") < order.index("grafana")
    assert order.index("redis") < order.index("inference") and order.index("kafka") < order.index("trainer")
    assert len(order) == len(set(order))
    looped = {"a": {"depends_on": {"b": {"condition": "service_healthy"}}}, "b": {"depends_on": ["a"]}}
    with pytest.raises(ValueError, match="a -> b -> a"):
        start_order(looped, ["a"])
    with pytest.raises(KeyError, match="nowhere"):
        start_order({"a": {"depends_on": ["nowhere"]}}, ["a"])


@pytest.mark.parametrize(("text", "seconds"), [("10s", 10), ("1m", 60), ("1m30s", 90), ("250ms", 0.25), (5, 5)])
def test_compose_durations(text: str | int, seconds: float) -> None:
    from tests.deploy.compose_services import duration_seconds

    assert duration_seconds(text) == seconds


def test_a_malformed_duration_says_what_it_expected() -> None:
    from tests.deploy.compose_services import duration_seconds

    with pytest.raises(ValueError, match="10 seconds"):
        duration_seconds("10 seconds")
