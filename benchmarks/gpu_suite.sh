#!/usr/bin/env bash
# Runs a list of benchmark commands on a GPU machine, one process each, logging to $OUT.
# Usage: [SUITE_LIMIT=SECONDS] bash benchmarks/gpu_suite.sh "<cmd1>" "<cmd2>" ...
# Wheels in .whl/ (benchmarks/gpu_wheels.sh downloads those the GPU image lacks) are installed
# to /tmp/site; a missing module then stops the suite at once (exit 4), before any command.
# With SUITE_LIMIT, each command is stopped when the suite's time is up (its rc is then 124),
# and a command with less than 30 s left is skipped, so the suite ends within the limit.
set -u
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD} PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import muse_jax.training.loop, muse_jax.precompute.run" || exit 4
end=$(( $(date +%s) + ${SUITE_LIMIT:-999999} ))
i=0
for cmd in "$@"; do
  i=$((i+1))
  left=$(( end - $(date +%s) ))
  if [ "$left" -lt 30 ]; then
    echo "### [$i] skipped ($left s left): $cmd" | tee -a "$OUT/suite.log"
    continue
  fi
  echo "### [$i] $cmd" | tee -a "$OUT/suite.log"
  start=$(date +%s)
  timeout "$left" bash -c "$cmd" > "$OUT/run_$i.log" 2>&1
  rc=$?
  grep -v -E '^(I|W)[0-9]{4} ' "$OUT/run_$i.log" | tail -25 | tee -a "$OUT/suite.log"
  echo "### [$i] rc=$rc wall=$(( $(date +%s) - start ))s" | tee -a "$OUT/suite.log"
done
