#!/usr/bin/env bash
# On the offline GPU host: build the `cuda` preset, run the GPU-labelled tests and the rest of the
# suite against the CUDA build, then the KS benchmark. Logs and results go to OUT_DIR.
# Usage: scripts/gpu-host-check.sh OUT_DIR [ksbench flags...]   (KSSERVE_SKIP_TESTS=1: bench only)
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
out=${1:?usage: gpu-host-check.sh OUT_DIR [ksbench flags...]}
shift
mkdir -p "$out"
cd "$repo"
[ -d /opt/gcc/bin ] && export PATH=/opt/gcc/bin:$PATH
status=0
if ! bash scripts/build-gpu-host.sh >"$out/build.log" 2>&1; then
  tail -40 "$out/build.log"
  exit 1
fi
# shellcheck disable=SC1091
source build/cuda/deps-env.sh
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv >"$out/device.txt" 2>&1
if [ "${KSSERVE_SKIP_TESTS:-0}" != 1 ]; then
  ctest --preset gpu --output-on-failure >"$out/ctest-gpu.log" 2>&1 || status=1
  tail -5 "$out/ctest-gpu.log"
fi
build/cuda/bin/ksbench --csv="$out/ksbench.csv" "$@" >"$out/ksbench-summary.txt" 2>"$out/ksbench.log" || status=1
cat "$out/ksbench-summary.txt"
tail -3 "$out/ksbench.log"
exit $status
