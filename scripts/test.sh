#!/usr/bin/env bash
# The test suite, as CI runs it: build the `cpu` preset and run every test; then, where nvcc is
# installed, build the `cuda` preset too (compile and link, so GPU code never rots unseen) and
# run its tests: the CPU ones run against the CUDA build, the `gpu`-labelled ones skip without a
# GPU. Needs scripts/setup.sh to have run once.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# ccache hits across clones at different paths (CI clones afresh every run).
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$PWD} CCACHE_NOHASHDIR=${CCACHE_NOHASHDIR:-1}

cmake --preset cpu >/dev/null
cmake --build --preset cpu
ctest --preset cpu

if [ -x /usr/local/cuda/bin/nvcc ]; then  # where the cuda preset looks for it
  cmake --preset cuda >/dev/null
  cmake --build --preset cuda
  ctest --preset cuda
else
  echo "no /usr/local/cuda/bin/nvcc: the cuda preset was not built"
fi
