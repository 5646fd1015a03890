#!/usr/bin/env bash
# A Python 3.11 base image made from Debian's own packages, for building deploy/docker/Dockerfile
# where Docker Hub (python:3.11-slim-bookworm) is out of reach but a Debian mirror is not:
#
#   deploy/docker/base-image.sh [IMAGE]      # default localhost/debian-py:bookworm
#   podman build --build-arg PYTHON_IMAGE=localhost/debian-py:bookworm ...
#
# mmdebstrap builds a minbase bookworm root file system (Python 3.11.2, its venv module, CA
# certificates, and the runtime stage's tini and libgomp1, so that stage needs no mirror either);
# `podman import` (or `docker import`) turns the tarball into an image. About 30 s; needs root or
# mmdebstrap's unshare mode. ENGINE=docker uses docker instead of podman.
set -euo pipefail

image=${1:-localhost/debian-py:bookworm}
engine=${ENGINE:-podman}
suite=${SUITE:-bookworm}
packages=python3,python3-venv,ca-certificates,tini,libgomp1

for tool in mmdebstrap "$engine"; do
  command -v "$tool" >/dev/null || { echo "base-image.sh: '$tool' not found (apt-get install $tool)" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mmdebstrap --quiet --variant=minbase --include="$packages" "$suite" "$work/rootfs.tar"
"$engine" import --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' "$work/rootfs.tar" "$image" >/dev/null
"$engine" run --rm --network=none "$image" python3 -c 'import sys, venv, ssl; assert sys.version_info[:2] == (3, 11), sys.version' \
  || { echo "base-image.sh: $image has no usable Python 3.11" >&2; exit 1; }
echo "$image"
