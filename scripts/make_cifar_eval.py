#!/usr/bin/env python3
"""Extract real labelled CIFAR-10 test images for the MLPerf Tiny image-classification model.

Source: the `foolbox` wheel on PyPI (foolbox 3.3.4, MIT License; Rauber et al.). It ships, as
sample data for its `foolbox.utils.samples()` helper, 20 CIFAR-10 images as 32x32 8-bit RGB PNGs
named `foolbox/data/cifar10_<II>_<L>.png`: II is the position 00..19 and L the label. They are
the first 20 images of the official CIFAR-10 TEST split (their labels
3 8 8 0 6 6 1 6 3 1 0 9 5 7 9 8 5 7 8 6 are the first 20 of `test_batch`). The brief asked for
1000; no package on the registries reachable here was found that carries more CIFAR-10 test
images, so all 20 are used. The class counts are not balanced (e.g. no bird or deer).

CIFAR-10: Alex Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009.
Labels use the standard order
    0 airplane, 1 automobile, 2 bird, 3 cat, 4 deer, 5 dog, 6 frog, 7 horse, 8 ship, 9 truck.

Regenerate (from the repository root; needs only `pip install numpy`; `onnxruntime` is optional
and only used to score the float reference model on the result). The wheel is read as a zip;
foolbox is not installed and the PNGs are decoded with zlib + numpy (no Pillow):

    pip download --no-deps -d /tmp/foolbox foolbox==3.3.4
    python3 scripts/make_cifar_eval.py /tmp/foolbox/foolbox-3.3.4-py3-none-any.whl
    # options: --out data/cifar10_eval.npz --model /work/shared/models/ic_resnet8_f32.onnx

Output: data/cifar10_eval.npz (np.savez_compressed)
    x      uint8  N x 32 x 32 x 3   NHWC, RGB, 0-255 (the model takes x.astype(float32) as is)
    y      int64  N                 CIFAR-10 label, standard order above
    index  int64  N                 position of the image in the CIFAR-10 test split
"""

import argparse
import os
import re
import struct
import sys
import zipfile
import zlib

import numpy as np

CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck"]
NAME_RE = re.compile(r"^foolbox/data/cifar10_(\d+)_(\d)\.png$")
# First labels of the official CIFAR-10 test_batch, used as a sanity check on the source.
TEST_SPLIT_HEAD = [3, 8, 8, 0, 6, 6, 1, 6, 3, 1, 0, 9, 5, 7, 9, 8, 5, 7, 8, 6]


def decode_png_rgb8(data):
    """Decode a non-interlaced 8-bit RGB PNG into an HxWx3 uint8 array."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, header = 8, [], None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    width, height, depth, colour, _, _, interlace = header
    if depth != 8 or colour != 2 or interlace != 0:
        raise ValueError(f"unsupported PNG (depth {depth}, colour type {colour}, "
                         f"interlace {interlace})")
    bpp, stride = 3, width * 3
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), dtype=np.uint8)
    raw = raw.reshape(height, stride + 1)
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.int32)
    for r in range(height):
        ftype, line = raw[r, 0], raw[r, 1:].astype(np.int32)
        cur = np.zeros(stride, dtype=np.int32)
        for i in range(stride):
            a = cur[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if ftype == 0:
                pred = 0
            elif ftype == 1:
                pred = a
            elif ftype == 2:
                pred = b
            elif ftype == 3:
                pred = (a + b) // 2
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if (pa <= pb and pa <= pc) else (b if pb <= pc else c)
            else:
                raise ValueError(f"bad PNG filter {ftype}")
            cur[i] = (line[i] + pred) & 0xFF
        out[r] = cur
        prev = cur
    return out.reshape(height, width, 3)


def extract(wheel):
    items = []
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            m = NAME_RE.match(name)
            if m:
                img = decode_png_rgb8(zf.read(name))
                items.append((int(m.group(1)), int(m.group(2)), img))
    if not items:
        sys.exit(f"no foolbox/data/cifar10_*.png in {wheel}")
    items.sort(key=lambda t: t[0])
    index = np.array([t[0] for t in items], dtype=np.int64)
    y = np.array([t[1] for t in items], dtype=np.int64)
    x = np.stack([t[2] for t in items]).astype(np.uint8)
    if list(index) != list(range(len(items))) or \
            list(y) != TEST_SPLIT_HEAD[:len(y)]:
        sys.exit("images are not the expected head of the CIFAR-10 test split")
    return x, y, index


def score(model, x, y):
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime not installed: skipping the float model check")
        return
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0].name
    logits = np.concatenate([sess.run(None, {inp: x[i:i + 1].astype(np.float32)})[0]
                             for i in range(len(x))])
    pred = logits.argmax(axis=1)
    correct = int((pred == y).sum())
    print(f"float model {os.path.basename(model)}: top-1 {correct}/{len(y)} = "
          f"{100.0 * correct / len(y):.1f}%")
    for i in np.nonzero(pred != y)[0]:
        print(f"  miss: test image {i}: true {CLASSES[y[i]]}, predicted {CLASSES[pred[i]]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("wheel", help="path to foolbox-3.3.4-py3-none-any.whl")
    ap.add_argument("--out", default="data/cifar10_eval.npz")
    ap.add_argument("--model", default="/work/shared/models/ic_resnet8_f32.onnx")
    args = ap.parse_args()

    x, y, index = extract(args.wheel)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    np.savez_compressed(args.out, x=x, y=y, index=index)
    counts = np.bincount(y, minlength=10)
    print(f"wrote {args.out}: x {x.shape} {x.dtype}, y {y.shape} {y.dtype}, "
          f"{os.path.getsize(args.out)} bytes")
    print("per class: " + ", ".join(f"{c} {n}" for c, n in zip(CLASSES, counts)))
    if os.path.exists(args.model):
        score(args.model, x, y)


if __name__ == "__main__":
    main()
