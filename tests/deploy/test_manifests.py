"""Every manifest the chart renders, for the default, CPU and GPU values: valid against the Kubernetes
OpenAPI schemas of the versions the chart claims (kubernetes-validate, strict: no unknown fields), and
clean under checkov's Kubernetes policies (a policy the chart skips carries its reason in the
`checkov.io/skip<n>` annotation of the resource that skips it). The Dockerfile passes checkov's
Dockerfile policies (skips as `# checkov:skip=ID: reason` comments)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, all_versions, latest_version

from tests.deploy.test_helm import CHART, REPO, VARIANTS

# Custom resources of the Prometheus Operator: no schema in the Kubernetes OpenAPI documents; their
# fields are checked by test_helm.py::test_monitoring_resources.
CUSTOM_RESOURCES = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}


def claimed_versions() -> list[str]:
    """Every minor release from the chart's kubeVersion floor to the newest kubernetes-validate knows."""
    floor = re.fullmatch(r">=\s*(\d+)\.(\d+)\.\d+(-0)?", yaml.safe_load((CHART / "Chart.yaml").read_text())[
        "kubeVersion"])
    assert floor, "Chart.yaml kubeVersion must be of the form >=MAJOR.MINOR.PATCH-0"
    lowest = (int(floor[1]), int(floor[2]))
    known = sorted({tuple(int(x) for x in v.split(".")[:2]) for v in all_versions()})
    versions = [f"{major}.{minor}" for major, minor in known if (major, minor) >= lowest]
    assert versions and versions[-1] == ".".join(latest_version().split(".")[:2])
    return versions


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rendered_manifests_match_the_kubernetes_schemas(helm, variant: str) -> None:
    docs = helm.render(*VARIANTS[variant])
    checked, errors = 0, []
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_RESOURCES:
            continue
        for version in claimed_versions():
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except SchemaNotFoundError:
                errors.append(f"{where}: {doc['apiVersion']} does not exist in Kubernetes {version}")
            except kubernetes_validate.ValidationError as exc:
                errors.append(f"{where} (Kubernetes {version}): {exc.message} at "
                              f"{'/'.join(str(p) for p in exc.path)}")
        checked += 1
    assert checked >= 8, f"{variant}: only {checked} manifests rendered"
    assert not errors, f"{variant}:\n  " + "\n  ".join(errors[:40])


def test_schema_validation_catches_a_bad_manifest() -> None:
    """The check above can fail: an unknown field and a wrong type are refused."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
           "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": "http"}]}]}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, "1.27", strict=True)
    pod["spec"]["containers"][0]["ports"] = [{"containerPort": 80}]
    pod["spec"]["surprise"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, "1.27", strict=True)


def run_checkov(checkov: str, path: Path, framework: str) -> dict:
    result = subprocess.run([checkov, "--compact", "--output", "json", "--framework", framework,
                             "--skip-download", "--file", str(path)],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode in (0, 1), f"checkov failed (rc={result.returncode}):\n{result.stderr[-3000:]}"
    report = json.loads(result.stdout)
    report = report[0] if isinstance(report, list) else report
    return report.get("results", report)


def failed(results: dict) -> list[str]:
    return sorted(f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in results.get("failed_checks", []))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rendered_manifests_pass_checkov(helm, checkov: str, variant: str, tmp_path: Path) -> None:
    rendered = tmp_path / f"{variant}.yaml"
    rendered.write_text(helm.run("template", "rel", str(CHART), "--namespace", "ml", *VARIANTS[variant]).stdout)
    results = run_checkov(checkov, rendered, "kubernetes")
    assert results.get("passed_checks"), "checkov checked nothing"
    assert not failed(results), f"{variant}: checkov's Kubernetes policies fail:\n  " + "\n  ".join(failed(results))
    for check in results.get("skipped_checks", []):
        reason = (check.get("check_result") or {}).get("suppress_comment", "")
        assert len(reason.split()) >= 3, f"{variant}: {check['check_id']} skipped without a reason"


def test_dockerfile_passes_checkov(checkov: str) -> None:
    results = run_checkov(checkov, REPO / "deploy" / "docker" / "Dockerfile", "dockerfile")
    assert results.get("passed_checks"), "checkov checked nothing"
    assert not failed(results), "checkov's Dockerfile policies fail:\n  " + "\n  ".join(failed(results))
