# Dependency lists shared by setup.sh (this machine) and fetch-gpu-host-debs.sh (an offline
# GPU host). Sourced, not run. One place to change a version.

# Debian 12 (bookworm) libraries the project builds against. The GPU host gets exactly this set
# as .deb files (runtime libraries are named because nothing resolves dependencies there).
KSSERVE_LIBRARY_DEBS=(
  libgrpc++1.51 libgrpc++-dev libgrpc29 libgrpc-dev protobuf-compiler-grpc
  libprotobuf32 libprotobuf-lite32 libprotobuf-dev libprotoc32 protobuf-compiler
  libabsl20220623 libabsl-dev libre2-9 libre2-dev libc-ares2 libc-ares-dev libssl-dev
  libcivetweb1 libcivetweb-dev civetweb nlohmann-json3-dev libgtest-dev libgmock-dev
  zlib1g-dev
)

# Unpacked on a GPU host only when it lacks curl's headers: prometheus-cpp's CMake package looks
# for CURL (for its push library, which ksserve does not link).
KSSERVE_GPU_HOST_OPTIONAL_DEBS=(libcurl4-openssl-dev)

# Tools only this machine needs: build tools, the Python for the test venv, and the real
# Prometheus server (integration tests; its promtool validates exposition text).
KSSERVE_TOOL_DEBS=(
  build-essential cmake ninja-build ccache pkg-config git curl ca-certificates
  python3 python3-venv python3-dev prometheus
)

# prometheus-cpp is not in bookworm; trixie's build installs on bookworm. Pinned: a change in
# trixie must be noticed, not silently picked up.
KSSERVE_PROMETHEUS_CPP_VERSION="1.0.2-2+b3"
KSSERVE_PROMETHEUS_CPP_DEBS=(
  libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 libprometheus-cpp-push1.0
  prometheus-cpp-dev
)

# Download the pinned prometheus-cpp .debs from trixie into $1 through a private apt state
# (the system's own sources never see trixie), repacking push's dependency on trixie's
# libcurl4t64 to bookworm's libcurl4.
ksserve_fetch_prometheus_cpp() {
  local dest=$1 state=${KSSERVE_CACHE:-/var/cache/ksserve}/trixie-apt
  mkdir -p "$dest" "$state/lists/partial" "$state/cache/archives/partial"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
    >"$state/sources.list"
  local apt_opts=(-o "Dir::Etc::SourceList=$state/sources.list" -o Dir::Etc::SourceParts=/dev/null
                  -o "Dir::State::Lists=$state/lists" -o "Dir::Cache=$state/cache"
                  -o APT::Sandbox::User=root)
  apt-get "${apt_opts[@]}" -qq update
  local pkg specs=()
  for pkg in "${KSSERVE_PROMETHEUS_CPP_DEBS[@]}"; do specs+=("$pkg=$KSSERVE_PROMETHEUS_CPP_VERSION"); done
  if ! (cd "$dest" && apt-get "${apt_opts[@]}" -qq download "${specs[@]}"); then
    echo "error: prometheus-cpp $KSSERVE_PROMETHEUS_CPP_VERSION is no longer in trixie;" \
         "update KSSERVE_PROMETHEUS_CPP_VERSION in scripts/deps.sh after checking the new one" >&2
    return 1
  fi
  local push=("$dest"/libprometheus-cpp-push1.0_*.deb) tmp status=0
  tmp=$(mktemp -d)
  { dpkg-deb -R "${push[0]}" "$tmp/pkg" &&
    sed -i 's/libcurl4t64/libcurl4/' "$tmp/pkg/DEBIAN/control" &&
    dpkg-deb -b "$tmp/pkg" "${push[0]}" >/dev/null; } || status=$?
  rm -rf "$tmp"
  return $status
}
