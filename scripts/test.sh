#!/usr/bin/env bash
# The whole test suite, as the README's Quick start and CI (.ci/run) run it.
#  1. every Rust test in the workspace (unit, property, end-to-end through the `kiln` binary, and firmware on
#     QEMU boards: mps2-an386, mps2-an500, lm3s6965evb; real-board firmware built for nrf52840-dk, stm32f411-nucleo);
#     the `kiln report` page rendered in headless Chromium;
#  2. kiln-runtime built for a Cortex-M4F (thumbv7em-none-eabihf) with only `core`, proving it is no_std and alloc-free.
# It installs what it needs where it can (Debian packages, as root) and otherwise stops with a message saying how.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n== %s\n' "$*"; }
die() { printf 'test.sh: %s\n' "$*" >&2; exit 1; }

command -v cargo >/dev/null || die "cargo not found: install Rust from https://rustup.rs"

say "Cortex-M set-up (QEMU, firmware toolchain)"
scripts/setup-cortex-m.sh

say "Browser set-up (headless Chromium, for the kiln report test)"
scripts/setup-browser.sh

say "cargo test --workspace (optimised, with overflow checks and debug assertions)"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace 2>&1 | tee "$log"
passed=$(awk '/^test result:/ {s += $4} END {print s + 0}' "$log")
failed=$(awk '/^test result:/ {s += $6} END {print s + 0}' "$log")

say "kiln-runtime for thumbv7em-none-eabihf (core only)"
scripts/build-target.sh thumbv7em-none-eabihf -p kiln-runtime

say "all tests passed"
echo "$passed passed, $failed failed"
