#!/usr/bin/env bash
# Quick start, first command: compile the bundled default model (a small MNIST CNN Kiln trains itself, see
# scripts/train_mnist_cnn.py) to int8, calibrated on bundled data, print the report, inspect the file, and compare
# int8 accuracy with float on 1,000 held-out digits; then run it on the default board (a Cortex-M4F under QEMU) and
# check the board's outputs are bit-identical to the host's; finally write the HTML report (kiln report).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "demo.sh: cargo not found: install Rust from https://rustup.rs" >&2; exit 1; }

echo "== building kiln (the first build compiles tract and takes a few minutes)"
cargo build -q -p kiln-compiler --bin kiln
kiln=target/debug/kiln
out=target/demo
mkdir -p "$out"

echo "== kiln compile models/mnist_cnn.onnx (int8, calibrated on data/mnist_calib.npy)"
"$kiln" compile models/mnist_cnn.onnx -o "$out/mnist_cnn.kiln" --calib data/mnist_calib.npy --report "$out/report.json"
echo
echo "== report ($out/report.json)"
cat "$out/report.json"
echo
echo "== kiln inspect"
"$kiln" inspect "$out/mnist_cnn.kiln"
echo
echo "== accuracy on data/mnist_test.npz: float (tract) vs int8 (Kiln runtime)"
"$kiln" eval models/mnist_cnn.onnx --data data/mnist_test.npz
"$kiln" eval "$out/mnist_cnn.kiln" --data data/mnist_test.npz
echo
echo "== on the default board: mps2-an386 (Cortex-M4F, QEMU); installs QEMU and a firmware toolchain if needed"
scripts/setup-cortex-m.sh
"$kiln" run "$out/mnist_cnn.kiln" --input data/mnist_calib.npy --output "$out/host.npy"
"$kiln" run "$out/mnist_cnn.kiln" --board mps2-an386 --input data/mnist_calib.npy --output "$out/board.npy" \
  --telemetry "$out/telemetry.jsonl" --log "$out/firmware.log"
cmp "$out/host.npy" "$out/board.npy" && echo "board outputs are bit-identical to the host's ($out/board.npy)"
echo "firmware log ($out/firmware.log):"
head -3 "$out/firmware.log"
echo "first inference report ($out/telemetry.jsonl):"
grep -m1 '"type":"inference"' "$out/telemetry.jsonl"
echo
echo "== kiln report: the whole picture on one page (graph, per-layer cost and quality, arena, accuracy, fit)"
"$kiln" report models/mnist_cnn.onnx --calib data/mnist_calib.npy --eval data/mnist_test.npz -o "$out/report.html"
echo "open $out/report.html in a browser"
