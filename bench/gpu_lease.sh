#!/usr/bin/env bash
# The GPU measurement of a short lease, as one command (bench/README.md, "The GPU figures from another machine").
#
#   bash bench/gpu_lease.sh prepare   # here, once: the pure wheels the lent machine's image lacks, into .whl/
#   bash bench/gpu_lease.sh run       # there (the device tool, carry [".whl"]): figures into $OUT, under 8 minutes
#   bash bench/gpu_lease.sh smoke     # anywhere: the same steps on the tiny models, to check the script
#
# `run` writes $OUT/gpu.json (gpu_sd15.py: training projected from 50 and 200 steps, with its step profile:
# aten ops, host syncs and the GPU's busy share per step) and $OUT/gpu_sdxl.json; bring them back with
# `facechain bench --only gpu_sd15 --gpu-results gpu.json` and commit bench/results.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-run}
out=${OUT:-/tmp/facechain-gpu}
mkdir -p "$out"
python=${PYTHON:-python3}  # smoke here: PYTHON=.venv/bin/python

if [ "$what" = prepare ]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1 pydantic pydantic-core pydantic-settings \
    python-dotenv annotated-types typing-inspection importlib-metadata
  echo "wheels in .whl/: run with the device tool, carry [\".whl\"]: bash bench/gpu_lease.sh run"
  exit 0
fi

if [ -d .whl ] && [ "$what" = run ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:.
else
  export PYTHONPATH=.
fi
export PYTHONUNBUFFERED=1
if [ "$what" = smoke ]; then
  "$python" bench/gpu_sd15.py --smoke --no-compile --json "$out/gpu.json"
  "$python" bench/gpu_sdxl.py --smoke --json "$out/gpu_sdxl.json"
else
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
  # SD1.5 first (the issue's figures), within about 5 minutes; then SDXL with what is left.
  timeout 330 "$python" bench/gpu_sd15.py --no-compile --measure-steps 200 --json "$out/gpu.json" || true
  timeout 150 "$python" bench/gpu_sdxl.py --measure-steps 40 --json "$out/gpu_sdxl.json" || true
fi
ls -la "$out"
