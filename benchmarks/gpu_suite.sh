#!/usr/bin/env bash
# Runs a list of benchmark commands on a GPU machine, one process each, logging to $OUT.
# Usage: bash benchmarks/gpu_suite.sh "<cmd1>" "<cmd2>" ...   (each cmd is a python invocation)
# Wheels in .whl/ (benchmarks/gpu_wheels.sh downloads those the GPU image lacks) are installed
# to /tmp/site.
set -u
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD} PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
i=0
for cmd in "$@"; do
  i=$((i+1))
  echo "### [$i] $cmd" | tee -a "$OUT/suite.log"
  start=$(date +%s)
  bash -c "$cmd" > "$OUT/run_$i.log" 2>&1
  rc=$?
  grep -v -E '^(I|W)[0-9]{4} ' "$OUT/run_$i.log" | tail -25 | tee -a "$OUT/suite.log"
  echo "### [$i] rc=$rc wall=$(( $(date +%s) - start ))s" | tee -a "$OUT/suite.log"
done
