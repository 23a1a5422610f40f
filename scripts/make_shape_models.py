#!/usr/bin/env python3
"""Random-weight ONNX models with the shapes of the two MLPerf Tiny models ../shared does not hold, for `kiln bench`.

- vww_shape.onnx: MobileNetV1 alpha 0.25 on 96x96x3 (NHWC input, as the MLPerf Tiny VWW model): a 3x3 stride-2
  conv to 8 channels, then 13 depthwise-separable blocks (3x3 depthwise, ReLU6; 1x1 pointwise, ReLU6), strides
  2 at blocks 2, 4, 6 and 12, global average pool, a 2-way dense layer, softmax: 7,489,664 MACs.
- ad_shape.onnx: the MLPerf Tiny anomaly-detection autoencoder: dense 640 -> 128 x4 -> 8 -> 128 x4 -> 640,
  BatchNorm folded (plain MatMul + Add), ReLU between layers: 264,192 MACs.

Weights are random (He-scaled, seed 0), so only speed, memory and code size mean anything; accuracy does not. The
calibration inputs (`*_calib.npy`, 16 random samples) are written beside them. Usage:
    python3 scripts/make_shape_models.py OUT_DIR
"""
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

rng = np.random.default_rng(0)
nodes, inits = [], []


def const(name, arr):
    inits.append(numpy_helper.from_array(arr.astype(np.float32), name))
    return name


def conv(x, cin, cout, k, stride, group, name):
    w = rng.normal(0, np.sqrt(2.0 / (k * k * cin / group)), (cout, cin // group, k, k))
    b = rng.normal(0, 0.05, cout)
    pad = (k - 1) // 2
    pads = [pad, pad, pad, pad] if stride == 1 else [0, 0, 1, 1]
    nodes.append(helper.make_node(
        "Conv", [x, const(name + "_w", w), const(name + "_b", b)], [name],
        kernel_shape=[k, k], strides=[stride, stride], pads=pads, group=group))
    nodes.append(helper.make_node("Clip", [name, const(name + "_lo", np.array(0.0)),
                                           const(name + "_hi", np.array(6.0))], [name + "_r"]))
    return name + "_r"


def vww(out):
    nodes.clear(); inits.clear()
    x = "input"
    nodes.append(helper.make_node("Transpose", [x], ["nchw"], perm=[0, 3, 1, 2]))
    y = conv("nchw", 3, 8, 3, 2, 1, "conv0")
    c = 8
    for i, (cout, s) in enumerate([(16, 1), (32, 2), (32, 1), (64, 2), (64, 1), (128, 2), (128, 1), (128, 1),
                                   (128, 1), (128, 1), (128, 1), (256, 2), (256, 1)]):
        y = conv(y, c, c, 3, s, c, f"dw{i}")
        y = conv(y, c, cout, 1, 1, 1, f"pw{i}")
        c = cout
    nodes.append(helper.make_node("GlobalAveragePool", [y], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"]))
    w = rng.normal(0, np.sqrt(2.0 / c), (c, 2))
    nodes.append(helper.make_node("MatMul", ["flat", const("fc_w", w)], ["fc"]))
    nodes.append(helper.make_node("Add", ["fc", const("fc_b", rng.normal(0, 0.05, 2))], ["logits"]))
    nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1))
    g = helper.make_graph(nodes, "vww_shape",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 96, 96, 3])],
                          [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 2])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(m)
    onnx.save(m, out / "vww_shape.onnx")
    np.save(out / "vww_calib.npy", rng.uniform(0, 1, (16, 96, 96, 3)).astype(np.float32))


def ad(out):
    nodes.clear(); inits.clear()
    dims = [640, 128, 128, 128, 128, 8, 128, 128, 128, 128, 640]
    x = "input"
    for i in range(len(dims) - 1):
        w = rng.normal(0, np.sqrt(2.0 / dims[i]), (dims[i], dims[i + 1]))
        nodes.append(helper.make_node("MatMul", [x, const(f"w{i}", w)], [f"mm{i}"]))
        nodes.append(helper.make_node("Add", [f"mm{i}", const(f"b{i}", rng.normal(0, 0.05, dims[i + 1]))],
                                      [f"fc{i}"]))
        x = f"fc{i}"
        if i < len(dims) - 2:
            nodes.append(helper.make_node("Relu", [x], [f"relu{i}"]))
            x = f"relu{i}"
    g = helper.make_graph(nodes, "ad_shape",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 640])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 640])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(m)
    onnx.save(m, out / "ad_shape.onnx")
    np.save(out / "ad_calib.npy", rng.normal(0, 1, (16, 640)).astype(np.float32))


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    out.mkdir(parents=True, exist_ok=True)
    vww(out)
    ad(out)
