#!/usr/bin/env bash
# Makes this machine able to run the `kiln report` browser test (compiler/tests/report.rs): headless Chromium
# renders the report page, its console must stay silent and its screenshot must show the charts.
# Installs Debian's `chromium` when run as root on Debian/Ubuntu; otherwise says what to install and fails.
set -euo pipefail

die() { printf 'setup-browser.sh: %s\n' "$*" >&2; exit 1; }

if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  echo "installing chromium"
  apt-get install -y -qq chromium >/dev/null
else
  die "missing: chromium — install it (Debian/Ubuntu: sudo apt-get install chromium)"
fi
