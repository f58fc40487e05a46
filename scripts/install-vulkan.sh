#!/usr/bin/env bash
# Installs a software Vulkan driver (Mesa 25 llvmpipe from bookworm-backports) so that Dawn (the `webgpu`
# npm package) finds an adapter on machines without a GPU (CI, dev boxes). Debian 12's own Mesa 22 is too
# old for Dawn. Idempotent and quiet: does nothing when the backports driver is already installed.
set -euo pipefail

if dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null | grep -q 'bpo' \
  && dpkg-query -W -f='${Status}' libvulkan1 2>/dev/null | grep -q 'install ok installed'; then
  exit 0
fi

SUDO=''
if [ "$(id -u)" -ne 0 ]; then SUDO='sudo'; fi

src=/etc/apt/sources.list.d/debian.sources
if [ ! -f "$src" ]; then
  echo "install-vulkan: $src not found (this script expects Debian 12 bookworm)" >&2
  exit 1
fi
# The mirror is read from the machine's own sources file, so no host is hard-coded here.
uri=$(awk '/^URIs:/{print $2; exit}' "$src")
echo "deb $uri bookworm-backports main" | $SUDO tee /etc/apt/sources.list.d/backports.list >/dev/null
# Output is kept and shown only on failure (debconf chatters on stderr even when all is well).
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
  -t bookworm-backports mesa-vulkan-drivers libvulkan1; } >"$log" 2>&1; then
  cat "$log" >&2
  echo "install-vulkan: apt-get failed" >&2
  exit 1
fi
