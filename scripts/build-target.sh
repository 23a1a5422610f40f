#!/usr/bin/env bash
# Builds workspace packages for a bare-metal Arm target:  scripts/build-target.sh TARGET [cargo build args...]
# Uses rustup's installed target when there is one (the normal path on a developer's machine), otherwise Debian's
# toolchain with -Zbuild-std=core (packages rustc-web, cargo-web, rust-web-src; installed here when run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?usage: scripts/build-target.sh TARGET [cargo build args...]}
shift

if command -v rustup >/dev/null && rustup target list --installed 2>/dev/null | grep -qx "$target"; then
  echo "using rustup's $target"
  exec cargo build --release --target "$target" "$@"
fi

if [ ! -x /usr/bin/rustc ] || [ ! -x /usr/bin/cargo ] || [ ! -d /usr/lib/rustlib/src/rust/library/core ]; then
  scripts/setup-cortex-m.sh
fi
echo "using Debian's rustc $(/usr/bin/rustc --version | cut -d' ' -f2) with -Zbuild-std=core"
RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/debian-toolchain" \
  exec /usr/bin/cargo build --release -Zbuild-std=core --target "$target" "$@"
