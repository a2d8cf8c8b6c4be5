#!/usr/bin/env bash
# Download, here, the wheels the GPU machine lacks (it has torch, numpy, scipy, pandas, pytest,
# seaborn, tqdm, pyyaml, but no opacus, medmnist or kymatio) into .whl/, and copy the data into
# .device/data/. Both folders are git-ignored; name them in the device tool's `carry`.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir -p .whl
for pkg in "opacus==$(python3 -c 'import opacus; print(opacus.__version__)' 2>/dev/null || echo 1.6.0)" medmnist==3.0.2 kymatio==0.3.0 appdirs configparser; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl "$pkg"
done
if [ -f ../shared/data/pneumoniamnist.npz ]; then
  mkdir -p .device/data && cp ../shared/data/pneumoniamnist.npz .device/data/
fi
ls -l .whl .device/data 2>/dev/null
