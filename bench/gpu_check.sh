#!/usr/bin/env bash
# The GPU check of the fast engine, on an H100/H200 in at most 5 minutes:
#   1. the tests marked `gpu` (CUDA paths, torch.compile, stacked models);
#   2. `privkit bench` on the GPU: a table on stdout, JSON and the table in $OUT (else results/bench).
# Prepare here with `bench/gpu_wheels.sh`, then run it there with carry [".whl", ".device"]:
#   bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
if [ -f .device/data/pneumoniamnist.npz ]; then export PRIVKIT_DATA="$PWD/.device/data"; fi
out="${OUT:-results/bench}"
mkdir -p "$out"
python3 -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.cuda.get_device_name())'
timeout 150 python3 -m pytest -q -p no:cacheprovider -o addopts="" -m gpu tests/ 2>&1 | tee "$out/gpu_tests.txt"
timeout 140 python3 -m privkit bench --device cuda --no-progress --json "$out/bench.json" | tee "$out/bench.txt"
