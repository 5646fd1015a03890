"""The Helm chart, checked with the real helm binary: lint, render, and what every pod must have."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "unirec"

VARIANTS = {
    "default": [],
    # ids must not be "gpu": the root conftest skips items with a `gpu` keyword
    "ci-cpu": ["-f", str(CHART / "ci" / "cpu-values.yaml")],
    "ci-gpu": ["-f", str(CHART / "ci" / "gpu-values.yaml")],
}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "Pod"}


def pod_spec(doc: dict) -> dict:
    return doc["spec"] if doc["kind"] == "Pod" else doc["spec"]["template"]["spec"]


def containers(doc: dict) -> list[dict]:
    spec = pod_spec(doc)
    return spec.get("initContainers", []) + spec["containers"]


def one(docs: list[dict], kind: str, component: str) -> dict:
    found = [d for d in docs if d["kind"] == kind
             and d["metadata"]["labels"].get("app.kubernetes.io/component") == component]
    assert len(found) == 1, f"expected one {kind} of component {component}, found {len(found)}"
    return found[0]


def env_of(container: dict) -> dict[str, str | dict]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def rendered(request: pytest.FixtureRequest, helm) -> tuple[str, list[dict]]:
    return request.param, helm.render(*VARIANTS[request.param])


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_lint_strict(helm, variant: str) -> None:
    result = helm.run("lint", "--strict", str(CHART), *VARIANTS[variant])
    assert "0 chart(s) failed" in result.stdout


def test_every_container_has_resources_and_runs_as_non_root(rendered) -> None:
    variant, docs = rendered
    workloads = [d for d in docs if d["kind"] in WORKLOADS]
    assert {d["kind"] for d in workloads} >= {"Deployment", "StatefulSet", "Pod"}, variant
    for doc in workloads:
        where = f"{variant}: {doc['kind']}/{doc['metadata']['name']}"
        spec = pod_spec(doc)
        pod_sc = spec.get("securityContext", {})
        assert spec.get("automountServiceAccountToken") is False, where
        for c in containers(doc):
            at = f"{where} container {c['name']}"
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res.get(part, {})), f"{at}: resources.{part} lacks cpu/memory"
            sc = {**pod_sc, **c.get("securityContext", {})}
            assert sc.get("runAsNonRoot") is True, f"{at}: runAsNonRoot"
            assert sc.get("runAsUser", 0) != 0, f"{at}: runAsUser must not be 0"
            assert sc.get("allowPrivilegeEscalation") is False, f"{at}: allowPrivilegeEscalation"
            assert sc.get("privileged", False) is False, at
            assert "ALL" in sc.get("capabilities", {}).get("drop", []), f"{at}: capabilities not dropped"


def test_serving_containers_have_probes(rendered) -> None:
    variant, docs = rendered
    for doc in (d for d in docs if d["kind"] in WORKLOADS - {"Pod", "Job"}):
        for c in containers(doc):
            if c.get("ports"):
                assert "livenessProbe" in c, f"{variant}: {c['name']} serves ports but has no livenessProbe"
    inference = one(docs, "Deployment", "inference")["spec"]["template"]["spec"]["containers"][0]
    assert inference["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert inference["livenessProbe"]["httpGet"]["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in inference["ports"]}
    assert env_of(inference)["UNIREC_SERVE_PORT"] == str(ports["http"])
    assert env_of(inference)["UNIREC_SERVE_HOST"] == "0.0.0.0"  # the service binds loopback by default


def test_trainer_statefulset_runs_torchrun_with_rendezvous(rendered) -> None:
    variant, docs = rendered
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for arg in VARIANTS[variant][1::2]:
        overrides = yaml.safe_load(Path(arg).read_text())
        values["trainer"].update(overrides.get("trainer", {}))
    trainer = values["trainer"]
    sts = one(docs, "StatefulSet", "trainer")
    spec = sts["spec"]["template"]["spec"]
    container = spec["containers"][0]
    args = container["args"]
    nproc = trainer["gpusPerNode"] or trainer["cpuProcsPerNode"]

    assert sts["spec"]["replicas"] == trainer["nodes"]
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert container["command"][-1] == "torchrun" and args[-2:] == ["-m", "trainer.main"]
    assert f"--nproc_per_node={nproc}" in args
    headless = one(docs, "Service", "trainer")
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    assert sts["spec"]["serviceName"] == headless["metadata"]["name"]
    if trainer["nodes"] > 1:
        assert f"--nnodes={trainer['nodes']}" in args and "--rdzv_backend=c10d" in args
        endpoint = next(a for a in args if a.startswith("--rdzv_endpoint=")).split("=", 1)[1]
        assert endpoint == (f"{sts['metadata']['name']}-0.{headless['metadata']['name']}.ml.svc.cluster.local:"
                            f"{trainer['rendezvousPort']}")
    else:
        assert "--standalone" in args
    # one metrics port per local rank, on the pod and on the headless Service
    metric_ports = sorted(p["containerPort"] for p in container["ports"] if p["name"].startswith("metrics-"))
    assert metric_ports == [trainer["metricsPort"] + r for r in range(nproc)]
    assert len([p for p in headless["spec"]["ports"] if p["name"].startswith("metrics-")]) == nproc
    # GPUs per pod, and the gpu image for a GPU trainer
    limits = container["resources"]["limits"]
    if trainer["gpusPerNode"]:
        assert limits["nvidia.com/gpu"] == trainer["gpusPerNode"]
        assert container["image"].endswith("-gpu")
    else:
        assert "nvidia.com/gpu" not in limits and container["image"].endswith("-cpu")
    # the final checkpoint fits in the grace period, and torchrun waits for it before SIGKILL
    grace = spec["terminationGracePeriodSeconds"]
    assert grace >= 120
    assert 0 < int(env_of(container)["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"]) < grace
    assert {"UNIREC_KAFKA_BOOTSTRAP", "UNIREC_REDIS_URL", "UNIREC_HOME", "UNIREC_TRAINER_TOPIC",
            "UNIREC_TRAINER_SCHEMA", "UNIREC_TRAINER_METRICS_PORT"} <= set(env_of(container))


def test_inference_has_service_hpa_pdb_and_secret_key(rendered) -> None:
    variant, docs = rendered
    deploy = one(docs, "Deployment", "inference")
    svc = one(docs, "Service", "inference")
    hpa = one(docs, "HorizontalPodAutoscaler", "inference")
    pdb = one(docs, "PodDisruptionBudget", "inference")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deploy["metadata"]["name"]
    assert "replicas" not in deploy["spec"], "the HPA owns the replica count"
    selector = deploy["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["selector"]["matchLabels"] == selector == svc["spec"]["selector"]
    key = env_of(deploy["spec"]["template"]["spec"]["containers"][0])["UNIREC_SERVE_API_KEY"]
    assert "secretKeyRef" in key, f"{variant}: the API key must come from a Secret"
    secrets = {d["metadata"]["name"] for d in docs if d["kind"] == "Secret"}
    if variant != "ci-gpu":  # gpu-values uses an existing Secret
        assert key["secretKeyRef"]["name"] in secrets


def test_model_store_volume_or_redis(rendered) -> None:
    variant, docs = rendered
    deploy = one(docs, "Deployment", "inference")
    volumes = {v["name"]: v for v in deploy["spec"]["template"]["spec"]["volumes"]}
    pvcs = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    assert len(pvcs) == 1 and "ReadWriteMany" in pvcs[0]["spec"]["accessModes"]
    env = env_of(deploy["spec"]["template"]["spec"]["containers"][0])
    if variant == "ci-gpu":  # models in Redis: no shared volume for the service
        assert "store" not in volumes
        trainer = one(docs, "StatefulSet", "trainer")["spec"]["template"]["spec"]["containers"][0]
        assert env["UNIREC_MODEL_STORE"] == env_of(trainer)["UNIREC_MODEL_STORE"] == env["UNIREC_REDIS_URL"]
    else:
        claim = volumes["store"]["persistentVolumeClaim"]
        assert claim["claimName"] == pvcs[0]["metadata"]["name"] and claim["readOnly"] is True
        mounts = {m["name"]: m for m in deploy["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
        assert env["UNIREC_MODEL_STORE"] == mounts["store"]["mountPath"] + "/models"
        assert mounts["store"]["readOnly"] is True
    # the service's own home stays writable (multi-worker metrics live there)
    assert "emptyDir" in volumes["home"]


def test_feature_schema_configmap_when_inline(helm) -> None:
    docs = helm.render(*VARIANTS["ci-gpu"])
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-schema"))
    schema = yaml.safe_load(cm["data"]["ctr.yaml"])
    assert schema["name"] == "ctr" and len(schema["sparse"]) == 3
    trainer = one(docs, "StatefulSet", "trainer")["spec"]["template"]["spec"]["containers"][0]
    assert env_of(trainer)["UNIREC_TRAINER_SCHEMA"] == "/etc/unirec/schema/ctr.yaml"
    assert any(m["mountPath"] == "/etc/unirec/schema" for m in trainer["volumeMounts"])


def test_dashboards_configmap_carries_the_single_copy(helm) -> None:
    docs = helm.render()
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboards"))
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    files = sorted((CHART / "dashboards").glob("*.json"))
    assert {f"unirec-{f.name}" for f in files} == set(cm["data"])
    for f in files:
        assert json.loads(cm["data"][f"unirec-{f.name}"]) == json.loads(f.read_text())


def test_monitoring_resources(helm) -> None:
    docs = helm.render(*VARIANTS["ci-cpu"])
    monitors = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d
                for d in docs if d["kind"] == "ServiceMonitor"}
    assert set(monitors) == {"trainer", "inference"}
    assert [e["port"] for e in monitors["trainer"]["spec"]["endpoints"]] == [f"metrics-{r}" for r in range(4)]
    assert monitors["inference"]["spec"]["endpoints"][0]["path"] == "/metrics"
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    shipped = yaml.safe_load((CHART / "files" / "alerts.yml").read_text())
    assert rule["spec"] == shipped
    assert not [d for d in helm.render() if d["kind"] in ("ServiceMonitor", "PrometheusRule")], "off by default"


def test_standard_labels_on_every_resource(rendered) -> None:
    variant, docs = rendered
    for doc in docs:
        labels = doc["metadata"].get("labels", {})
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/managed-by",
                    "helm.sh/chart"):
            assert key in labels, f"{variant}: {doc['kind']}/{doc['metadata']['name']} lacks label {key}"


def test_helm_test_pod_calls_readyz(helm) -> None:
    pod = next(d for d in helm.render() if d["kind"] == "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = pod["spec"]["containers"][0]["args"][0]
    assert "/readyz" in script and "rel-unirec-inference:80" in script


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "surprise=1"], "additional properties 'surprise' not allowed"),
        (["--set", "kafka.bootstrap=no-port"], "/kafka/bootstrap"),
        (["--set", "podSecurityContext.runAsNonRoot=false"], "/podSecurityContext/runAsNonRoot"),
        (["--set", "trainer.terminationGracePeriodSeconds=10"], "/trainer/terminationGracePeriodSeconds"),
        (["--set", "modelStore.backend=s3"], "/modelStore/backend"),
        (["--set", "trainer.nodes=2", "--set", "persistence.accessModes[0]=ReadWriteOnce"], "ReadWriteMany"),
        (["--set", "persistence.enabled=false"], "persistence.enabled=true"),
    ],
)
def test_bad_values_are_refused(helm, args: list[str], message: str) -> None:
    result = helm.run("template", "rel", str(CHART), *args, check=False)
    assert result.returncode != 0, f"helm accepted {args}"
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_notes_render(helm, variant: str) -> None:
    out = helm.run("install", "rel", str(CHART), "--dry-run=client", "--namespace", "ml", *VARIANTS[variant]).stdout
    notes = out.split("NOTES:", 1)[1]
    assert "helm test rel -n ml" in notes and "rel-unirec-trainer" in notes
