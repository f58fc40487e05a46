#!/usr/bin/env bash
# Installs Debian's Chromium for the browser test (test/web.test.ts runs the page in it, headless, with WebGPU on
# the SwiftShader Vulkan that Chromium ships). Idempotent and quiet: does nothing when /usr/bin/chromium exists.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then exit 0; fi
SUDO=''
if [ "$(id -u)" -ne 0 ]; then SUDO='sudo'; fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium; } >"$log" 2>&1; then
  cat "$log" >&2
  echo "install-chromium: apt-get failed" >&2
  exit 1
fi
