#!/usr/bin/env bash
# Downloads into .whl/ the wheels that the CUDA machines' image lacks (Python 3.12, x86_64
# Linux, no network there), at requirements.txt's pins where it pins them; gpu_suite.sh
# installs .whl/*.whl to /tmp/site on the machine. The image has jax, flax, optax, orbax,
# etils, pyarrow, tensorstore, msgpack, safetensors, sentencepiece and torch; it lacks these.
# Usage: bash benchmarks/gpu_wheels.sh [--peer]   (--peer adds diffusers, for peer_amused.py)
# Exit status: 0 when every wheel was downloaded, pip's otherwise.
set -eu
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then sed -n '2,7s/^# \{0,1\}//p' "$0"; exit 0; fi
cd "$(dirname "$0")/.."
pin() {  # NAME -> NAME==VERSION from requirements.txt, or NAME if it is not pinned there
  local line; line=$(grep -i -E "^$1==" requirements.txt || true)
  echo "${line:-$1}"
}
names="ml-collections tensorboardX google-crc32c grain array-record portpicker braceexpand"
if [ "${1:-}" = "--peer" ]; then names="$names diffusers importlib-metadata"; fi
specs=$(for n in $names; do pin "$n"; done)
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: -d .whl --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any $specs
ls .whl/*.whl
