#!/usr/bin/env bash
# One set-up step for every entry point (`make up`, `make test`, CI): creates .venv and installs
# the pinned dependencies of pyproject.toml. Idempotent: when neither pyproject.toml nor this
# script changed since the last successful run, it returns in well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.unirec-setup
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)

if [[ -f $STAMP && "$(cat "$STAMP")" == "$want" && -x $VENV/bin/unirec ]]; then
  exit 0
fi

echo "unirec setup: installing into $VENV (first run takes about two minutes)"
[[ -x $VENV/bin/python ]] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

# Split the pinned list: torchrec alone with --no-deps (see pyproject.toml), the rest normally.
mapfile -t deps < <("$VENV/bin/python" - <<'PY'
import tomllib
with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
for dep in project["dependencies"] + project["optional-dependencies"]["dev"]:
    print(dep)
PY
)
regular=()
nodeps=()
for d in "${deps[@]}"; do
  if [[ $d == torchrec==* ]]; then nodeps+=("$d"); else regular+=("$d"); fi
done
# torch first and alone, so nothing else can pull a CUDA build in.
"${PIP[@]}" install "torch==$(printf '%s\n' "${regular[@]}" | sed -n 's/^torch==//p')"
"${PIP[@]}" install "${regular[@]}"
"${PIP[@]}" install --no-deps "${nodeps[@]}"
"${PIP[@]}" install --no-deps --no-build-isolation -e .

"$VENV/bin/python" -c "import fbgemm_gpu, torchrec" \
  || { echo "unirec setup: torchrec/fbgemm_gpu failed to import after install" >&2; exit 1; }
echo "$want" > "$STAMP"
echo "unirec setup: done"
