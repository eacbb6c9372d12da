#!/usr/bin/env bash
# Builds ksserve's `cuda` preset on an offline GPU host (Ubuntu 24.04 with its own PyTorch, CUDA
# and protobuf runtime; no gRPC, Abseil, prometheus-cpp or GoogleTest), from the .deb set that
# scripts/fetch-gpu-host-debs.sh downloaded: the packages are unpacked into a prefix, not
# installed. Usage: scripts/build-gpu-host.sh [DEB_DIR] [PREFIX]
# Afterwards:  source build/cuda/deps-env.sh && ctest --preset gpu   (or build/cuda/bin/ksserve)
# KSSERVE_BUILD_TARGETS="ksbench ..." builds only those targets (default: everything).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
debs=${1:-$repo/.deps/gpu-host}
prefix=${2:-/opt/ksserve-deps}

shopt -s nullglob
required=("$debs"/required/*.deb)
[ ${#required[@]} -gt 0 ] || { echo "no .deb set in $debs: run scripts/fetch-gpu-host-debs.sh first" >&2; exit 1; }
# A prefix this script made is rebuilt from scratch, so no file of an older package survives.
if [ -e "$prefix/.ksserve-deps" ]; then rm -rf "$prefix"; fi
[ ! -e "$prefix" ] || [ -z "$(ls -A "$prefix")" ] || { echo "$prefix exists and is not ours; pass another PREFIX" >&2; exit 1; }
mkdir -p "$prefix"
touch "$prefix/.ksserve-deps"
for f in "${required[@]}"; do dpkg -x "$f" "$prefix"; done
if [ ! -e /usr/include/curl/curl.h ] && [ ! -e /usr/include/x86_64-linux-gnu/curl/curl.h ]; then
  for f in "$debs"/optional/*.deb; do dpkg -x "$f" "$prefix"; done
fi

python=${KSSERVE_PYTHON:-$(command -v python3)}
lib="$prefix/usr/lib/x86_64-linux-gnu"
export CMAKE_PREFIX_PATH="$prefix/usr"
export LIBRARY_PATH="$lib${LIBRARY_PATH:+:$LIBRARY_PATH}"      # gRPC's CMake package links -lre2 by name
export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PATH="$prefix/usr/bin:$PATH"                             # protoc and grpc_cpp_plugin

cd "$repo"
# The prefix's protobuf must win over the host's own headers and library.
cmake --preset cuda \
  -DKSSERVE_PYTHON="$python" \
  -DCMAKE_CXX_COMPILER_LAUNCHER= -DCMAKE_CUDA_COMPILER_LAUNCHER= \
  -DProtobuf_PROTOC_EXECUTABLE="$prefix/usr/bin/protoc" \
  -DProtobuf_INCLUDE_DIR="$prefix/usr/include" \
  -DProtobuf_LIBRARY="$lib/libprotobuf.so" \
  -DGTest_DIR="$lib/cmake/GTest"
# shellcheck disable=SC2086
cmake --build --preset cuda -j "$(nproc)" ${KSSERVE_BUILD_TARGETS:+--target $KSSERVE_BUILD_TARGETS}
# The binaries find the prefix's libraries through LD_LIBRARY_PATH (RUNPATH does not cover the
# libraries' own dependencies, e.g. libgrpc++ -> libgrpc).
echo "export LD_LIBRARY_PATH=\"$lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\"" >"$repo/build/cuda/deps-env.sh"
echo "built $repo/build/cuda; before running: source build/cuda/deps-env.sh"
