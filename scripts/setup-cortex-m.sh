#!/usr/bin/env bash
# Makes this machine able to build Kiln's firmware and run it on the emulated boards:
#  - qemu-system-arm (Debian package), for mps2-an386, mps2-an500 and lm3s6965evb;
#  - a Rust toolchain for the boards' targets: rustup's (`rustup target add`) where it can be had, otherwise
#    Debian's rustc-web, cargo-web and rust-web-src (kiln then builds `core` itself with -Zbuild-std) and lld-19;
#    on Debian, as root, Debian's too (the test suite checks both paths there).
# Installs what is missing when run as root on Debian/Ubuntu; otherwise says what to install and fails.
set -euo pipefail
targets="thumbv7em-none-eabihf thumbv7m-none-eabi"

die() { printf 'setup-cortex-m.sh: %s\n' "$*" >&2; exit 1; }
updated=
apt_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    [ -n "$updated" ] || { apt-get update -qq; updated=1; }
    echo "installing $*"
    apt-get install -y -qq "$@" >/dev/null
  else
    die "missing: $* — install them (Debian/Ubuntu: sudo apt-get install $*)"
  fi
}

command -v qemu-system-arm >/dev/null || apt_install qemu-system-arm

missing=
for t in $targets; do
  if command -v rustup >/dev/null; then
    rustup target list --installed 2>/dev/null | grep -qx "$t" && continue
    rustup target add "$t" >/dev/null 2>&1 && continue
  fi
  missing="$missing $t"
done
# On Debian, Debian's toolchain is kiln's fallback and the test suite checks it too: have it whenever we can.
if [ -f /etc/debian_version ] && [ "$(id -u)" = 0 ] && [ -z "$missing" ]; then
  if [ ! -x /usr/bin/rustc ] || [ ! -x /usr/bin/cargo ] || [ ! -d /usr/lib/rustlib/src/rust/library/core ] || ! command -v ld.lld-19 >/dev/null; then
    apt_install rustc-web cargo-web rust-web-src lld-19
  fi
fi
if [ -n "$missing" ]; then
  have_lld=
  command -v ld.lld-19 >/dev/null || command -v ld.lld >/dev/null && have_lld=1
  if [ ! -x /usr/bin/rustc ] || [ ! -x /usr/bin/cargo ] || [ ! -d /usr/lib/rustlib/src/rust/library/core ] || [ -z "$have_lld" ]; then
    echo "rustup cannot provide$missing; using Debian's Rust toolchain with -Zbuild-std=core"
    apt_install rustc-web cargo-web rust-web-src lld-19
  fi
fi
if [ -n "$missing" ]; then how="Debian's toolchain for$missing"; else how="rustup's targets ($targets)"; fi
echo "Cortex-M set-up: QEMU $(qemu-system-arm --version | head -1 | awk '{print $4}'), firmware built with $how"
