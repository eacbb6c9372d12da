#!/usr/bin/env bash
# Prepares a Debian 12 (bookworm) machine to build, test and run ksserve. Idempotent; run as root.
#
#   Debian packages      gRPC 1.51, protobuf 3.21, Abseil, GoogleTest, civetweb, ninja, ccache,
#                        the Prometheus server (for integration tests)
#   prometheus-cpp       1.0.2 from trixie, installed through a private apt state
#   $KSSERVE_VENV        Python venv with torch 2.11.0 (its LibTorch is what we link), the
#                        reference/test tools, and nvml.h (nvidia-nvml-dev)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=deps.sh
source "$here/deps.sh"
KSSERVE_VENV=${KSSERVE_VENV:-/opt/ksserve/venv}
requirements="$here/python-requirements.txt"

step() { printf '\n== %s\n' "$*"; }
die() { echo "setup: error: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (it installs Debian packages)"
. /etc/os-release
[ "${VERSION_CODENAME:-}" = bookworm ] || echo "setup: warning: written for Debian 12 (bookworm), this is ${PRETTY_NAME:-unknown}" >&2
export DEBIAN_FRONTEND=noninteractive

step "Debian packages"
wanted=("${KSSERVE_LIBRARY_DEBS[@]}" "${KSSERVE_TOOL_DEBS[@]}")
missing=()
for pkg in "${wanted[@]}"; do
  dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null | grep -qx installed || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get -qq update
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "all ${#wanted[@]} present"
fi

step "prometheus-cpp $KSSERVE_PROMETHEUS_CPP_VERSION (from trixie)"
installed=$(dpkg-query -W -f='${Version}' prometheus-cpp-dev 2>/dev/null || true)
if [ "$installed" != "$KSSERVE_PROMETHEUS_CPP_VERSION" ]; then
  debs=$(mktemp -d)
  ksserve_fetch_prometheus_cpp "$debs"
  apt-get install -y -qq --no-install-recommends "$debs"/*.deb >/dev/null
  rm -rf "$debs"
  installed=$(dpkg-query -W -f='${Version}' prometheus-cpp-dev)
  [ "$installed" = "$KSSERVE_PROMETHEUS_CPP_VERSION" ] || die "prometheus-cpp $installed installed, expected $KSSERVE_PROMETHEUS_CPP_VERSION"
fi
echo "prometheus-cpp-dev $installed"

# torch's CUDA libraries are ~3 GB of wheels. A CPU machine needs only the ones its dynamic
# loader cannot already find (libtorch_cpu itself needs libcudart and libcupti; `import torch`
# needs all that libtorch_cuda names). Map each missing soname to the wheel torch 2.11.0 pins.
cuda_wheel_for() {
  case $1 in
    libcudart.so.13) echo "nvidia-cuda-runtime==13.0.96.*" ;;
    libcupti.so.13) echo "nvidia-cuda-cupti==13.0.85.*" ;;
    libcublas.so.13 | libcublasLt.so.13) echo "nvidia-cublas==13.1.0.3.*" ;;
    libcufft.so.12) echo "nvidia-cufft==12.0.0.61.*" ;;
    libcufile.so.0) echo "nvidia-cufile==1.15.1.6.*" ;;
    libcurand.so.10) echo "nvidia-curand==10.4.0.35.*" ;;
    libcusparse.so.12) echo "nvidia-cusparse==12.6.3.3.*" ;;
    libcusolver.so.12) echo "nvidia-cusolver==12.0.4.66.*" ;;
    libnvJitLink.so.13) echo "nvidia-nvjitlink==13.0.88.*" ;;
    libnvrtc.so.13) echo "nvidia-cuda-nvrtc==13.0.88.*" ;;
    libcudnn.so.9) echo "nvidia-cudnn-cu13==9.19.0.56" ;;
    libcusparseLt.so.0) echo "nvidia-cusparselt-cu13==0.8.0" ;;
    libnccl.so.2) echo "nvidia-nccl-cu13==2.28.9" ;;
    libnvshmem_host.so.3) echo "nvidia-nvshmem-cu13==3.4.5" ;;
    *) return 1 ;;
  esac
}

step "Python venv $KSSERVE_VENV"
stamp="$KSSERVE_VENV/.ksserve-requirements"
if [ -f "$stamp" ] && cmp -s "$stamp" "$requirements" && "$KSSERVE_VENV/bin/python" -c 'import torch' 2>/dev/null; then
  echo "up to date"
else
  rm -rf "$KSSERVE_VENV"
  mkdir -p "$(dirname "$KSSERVE_VENV")"
  /usr/bin/python3 -m venv "$KSSERVE_VENV"
  pip=("$KSSERVE_VENV/bin/python" -m pip --disable-pip-version-check)
  "${pip[@]}" install -q --upgrade "pip==25.3"
  # --no-deps: the pins are the whole closure; without it pip would pull torch's CUDA wheels.
  "${pip[@]}" install -q --no-deps -r "$requirements"
  torch_python_lib=$("$KSSERVE_VENV/bin/python" -c 'import importlib.util as u, os; print(os.path.join(u.find_spec("torch").submodule_search_locations[0], "lib", "libtorch_python.so"))')
  for _ in 1 2 3; do
    mapfile -t absent < <(ldd "$torch_python_lib" | awk '/not found/ {print $1}' | sort -u)
    [ ${#absent[@]} -gt 0 ] || break
    wheels=()
    for lib in "${absent[@]}"; do
      wheel=$(cuda_wheel_for "$lib") || die "libtorch needs $lib and no wheel is known for it (scripts/setup.sh: cuda_wheel_for)"
      wheels+=("$wheel")
    done
    mapfile -t wheels < <(printf '%s\n' "${wheels[@]}" | sort -u)
    echo "CUDA libraries this machine lacks: ${absent[*]}"
    "${pip[@]}" install -q --no-deps "${wheels[@]}"
  done
  "$KSSERVE_VENV/bin/python" -c 'import torch, torchvision, timm, transformers; assert float(torch.ones(3).sum()) == 3.0' \
    || die "the venv's torch does not import"
  cp "$requirements" "$stamp"
fi
"$KSSERVE_VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'
echo
echo "setup done: build with  cmake --preset cpu && cmake --build --preset cpu"
