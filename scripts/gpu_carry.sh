#!/usr/bin/env bash
# Run HERE (with the package registry): fetch what the GPU machine lacks into the ignored folder
# .unirec/gpu-carry/, as parts that each fit one device call (docs/gpu.md has the sequence).
#
# The bundle (bundle.tar, never kept whole) holds:
#   fbgemm_gpu-1.6.0-cp312-cp312-manylinux_2_28_x86_64.whl   the CUDA build (465 MB)
#   wheels/   torchrec 1.6.1 (the release paired with fbgemm-gpu 1.6.0 / torch 2.11; PyPI has no
#             1.6.0) and the cp312 wheels of every other runtime and test requirement, at the
#             versions .venv pins, minus torch and what torch itself brings (about 65 MB)
# and is split into parts/part-NN of 58 MiB; SHA256SUMS checks the joined bundle there.
#
# Idempotent: an existing split is kept (delete .unirec/gpu-carry to refetch). Needs .venv
# (scripts/setup.sh) to read the pins.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=.unirec/gpu-carry
PART_SIZE=${PART_SIZE:-58M}   # + the working tree (~2.3 MB) must stay under a call's 64 MiB
FBGEMM=fbgemm-gpu==1.6.0
TORCHREC=torchrec==1.6.1
PY=.venv/bin/python
PLATFORM=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none
          --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
          --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 --platform any)
PIP=("$PY" -m pip --disable-pip-version-check -q download --no-deps "${PLATFORM[@]}")
if ls "$OUT"/parts/part-* >/dev/null 2>&1; then
  echo "gpu-carry: $(ls "$OUT"/parts | wc -l) parts already in $OUT/parts"
  exit 0
fi
STAGE=$OUT/bundle
mkdir -p "$STAGE/wheels" "$OUT/parts"

# 1. fbgemm-gpu, the CUDA build
"${PIP[@]}" -d "$STAGE" "$FBGEMM"

# 2. the requirement closure, at .venv's versions, without torch's own stack (the device has torch)
mapfile -t pins < <("$PY" - <<'PY'
import re
import tomllib
from importlib.metadata import PackageNotFoundError, distribution

TORCH_STACK = {"torch", "fbgemm-gpu-cpu", "fbgemm-gpu", "triton", "sympy", "mpmath", "networkx", "jinja2",
               "markupsafe", "filelock", "fsspec", "typing-extensions", "setuptools"}
canon = lambda n: re.sub(r"[-_.]+", "-", n).lower()
with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
wanted = project["dependencies"] + ["pytest", "pytest-timeout", "hypothesis"]
seen: dict[str, str] = {}
todo = [re.split(r"[\s\[<>=!;~]", r, maxsplit=1)[0] for r in wanted]
while todo:
    name = canon(todo.pop())
    if name in seen or name in TORCH_STACK or name.startswith("nvidia-"):
        continue
    try:
        dist = distribution(name)
    except PackageNotFoundError:
        continue  # an optional extra's requirement .venv did not install
    seen[name] = dist.version
    for req in dist.requires or []:
        if "extra ==" in req and "extra == \"standard\"" not in req:
            continue
        todo.append(re.split(r"[\s\[<>=!;~(]", req, maxsplit=1)[0])
seen.pop("torchrec", None)
for name, version in sorted(seen.items()):
    print(f"{name}=={version}")
PY
)
for pin in "$TORCHREC" "${pins[@]}"; do
  "${PIP[@]}" -d "$STAGE/wheels" "$pin" 2>/dev/null && continue
  # no cp312 wheel on the index (e.g. iopath ships an sdist only): build one here, pure-Python only
  "$PY" -m pip --disable-pip-version-check -q wheel --no-deps -w "$STAGE/wheels" "$pin" 2>/dev/null
  built=$(ls "$STAGE"/wheels/"$(echo "${pin%%==*}" | tr '-' '_')"-*.whl 2>/dev/null | head -1)
  [[ $built == *-py3-none-any.whl || $built == *-py2.py3-none-any.whl ]] \
    || { echo "gpu-carry: no cp312 wheel for $pin and it is not pure Python" >&2; exit 1; }
done
printf '%s\n' "$TORCHREC" "${pins[@]}" > "$STAGE/wheels/REQUIREMENTS"

# 3. one tar, checksummed, split
tar -cf "$OUT/bundle.tar" -C "$STAGE" .
(cd "$OUT" && sha256sum bundle.tar) > "$OUT/SHA256SUMS"
split -b "$PART_SIZE" -d -a 2 "$OUT/bundle.tar" "$OUT/parts/part-"
rm -rf "$STAGE" "$OUT/bundle.tar"
echo "gpu-carry: $(ls "$OUT"/parts | wc -l) parts of <= $PART_SIZE in $OUT/parts ($(du -sh "$OUT/parts" | cut -f1))"
