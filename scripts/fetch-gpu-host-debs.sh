#!/usr/bin/env bash
# Downloads the Debian 12 .deb set that builds ksserve on an offline GPU host (nothing is
# installed here; run as root on Debian 12, which apt-get update needs). Usage: scripts/fetch-gpu-host-debs.sh [DIR]  (default .deps/gpu-host)
# Then carry DIR to the host and run scripts/build-gpu-host.sh there.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=deps.sh
source "$here/deps.sh"
. /etc/os-release
[ "${VERSION_CODENAME:-}" = bookworm ] || { echo "must run on Debian 12 (bookworm): the GPU host gets bookworm's packages" >&2; exit 1; }
dest=${1:-$here/../.deps/gpu-host}
mkdir -p "$dest/required" "$dest/optional"
dest=$(cd "$dest" && pwd)

apt-get -qq update
(cd "$dest/required" && rm -f ./*.deb &&
  apt-get -qq -o APT::Sandbox::User=root download "${KSSERVE_LIBRARY_DEBS[@]}")
(cd "$dest/optional" && rm -f ./*.deb &&
  apt-get -qq -o APT::Sandbox::User=root download "${KSSERVE_GPU_HOST_OPTIONAL_DEBS[@]}")
ksserve_fetch_prometheus_cpp "$dest/required"
echo "$(ls "$dest"/required/*.deb | wc -l) + $(ls "$dest"/optional/*.deb | wc -l) packages," \
     "$(du -sh "$dest" | cut -f1) in $dest"
