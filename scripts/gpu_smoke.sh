#!/usr/bin/env bash
# GPU smoke check, for whoever has a CUDA GPU: the study's notebooks with the smoke profile,
# then tests/test_cuda.py (every capability on CUDA against the CPU's float64 numbers) with the
# model copy on CUDA in float64, float32 and bfloat16 (LAYERIF_CUDA_DTYPE).
#
#   scripts/gpu_smoke.sh            # from the repository root, after `make install`
#   PYTHON=python3 scripts/gpu_smoke.sh
#
# The notebooks run in a fresh temporary root (copies of notebooks/ and params/), so nothing
# saved by an earlier CPU run is loaded instead of computed, and the checkout is left alone.
# Their models are float32 (the package's default: the notebooks have no dtype switch) on
# device "auto", i.e. CUDA. Exits non-zero at the first failure.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

step() { printf '\n== %s\n' "$*"; }

step "CUDA present?"
"$PYTHON" -c 'import torch, sys
ok = torch.cuda.is_available()
print(f"torch {torch.__version__}, CUDA available: {ok}" + (f", {torch.cuda.get_device_name(0)}" if ok else ""))
sys.exit(0 if ok else "gpu_smoke.sh: no CUDA device visible to torch: nothing to check")'

root="$(mktemp -d "${TMPDIR:-/tmp}/layerif-gpu-smoke.XXXXXX")"
trap 'rm -rf "$root"' EXIT
cp -r notebooks params "$root"/
rm -f "$root"/notebooks/*.ipynb

step "notebooks, smoke profile, on CUDA (float32 models), in $root"
start=$SECONDS
LAYERIF_ROOT="$root" "$PYTHON" -m layerif.cli book --profile smoke
LAYERIF_ROOT="$root" "$PYTHON" -m layerif.cli status --profile smoke
echo "notebooks: $((SECONDS - start)) s"

for dtype in float64 float32 bfloat16; do
    step "tests/test_cuda.py with the CUDA copy in $dtype"
    LAYERIF_CUDA_DTYPE="$dtype" "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_cuda.py -rs
done

step "gpu smoke: all passed"
