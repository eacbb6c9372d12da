#!/usr/bin/env bash
# On the offline GPU host: build ksbench only and profile one kernel of one pattern with Nsight
# Compute: the first launch whose mangled name matches KERNEL_REGEX,
# e.g. "KsFactorFusedKernelIfNS2_4TileILi4ELi64ELi64" (FP32 j4m64n64) or "TcTileILi32ELi32ELi32ELi32EE".
# Usage: scripts/gpu-host-profile.sh OUT_DIR "a,b,c,d" DTYPE KERNEL_REGEX [BATCH]
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
out=${1:?usage: gpu-host-profile.sh OUT_DIR a,b,c,d DTYPE KERNEL_REGEX [BATCH]}
pattern=${2:?pattern a,b,c,d}
dtype=${3:?dtype}
kernel=${4:?kernel regex}
batch=${5:-25088}
mkdir -p "$out"
cd "$repo"
[ -d /opt/gcc/bin ] && export PATH=/opt/gcc/bin:$PATH
if [ ! -x build/cuda/bin/ksbench ]; then
  KSSERVE_BUILD_TARGETS=ksbench bash scripts/build-gpu-host.sh >"$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
fi
# shellcheck disable=SC1091
source build/cuda/deps-env.sh
patterns=$(mktemp)
echo "$pattern" >"$patterns"
name=$(echo "$pattern-$dtype" | tr ',' '-')
ncu=${NCU:-/usr/local/cuda/bin/ncu}
"$ncu" --kernel-name-base mangled -k "regex:$kernel" -c 1 \
  --section SpeedOfLight --section MemoryWorkloadAnalysis --section MemoryWorkloadAnalysis_Tables \
  --section WarpStateStats --section SchedulerStats --section Occupancy --section LaunchStats \
  --section ComputeWorkloadAnalysis --section InstructionStats \
  build/cuda/bin/ksbench --patterns_file="$patterns" --paper_sample=1 --model_patterns=false --pairs=false \
  --batches="$batch" --dtypes="$dtype" --repetitions=1 --csv="$out/ncu-$name.csv" >"$out/ncu-$name.txt" 2>&1
status=$?
grep -E "Duration|Throughput|Registers Per|Occupancy|Spilling Requests |Bank|Wavefronts|Stall|Issued|Eligible|Shared" "$out/ncu-$name.txt" | head -60
exit $status
