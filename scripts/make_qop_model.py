#!/usr/bin/env python3
"""Quantise the bundled MNIST CNN with onnxruntime's static quantiser in the operator form (QOperator) and record
onnxruntime's outputs.

Regenerate every output (from the repository root; needs `pip install numpy onnx onnxruntime`):

    python3 scripts/make_qop_model.py

Made with Python 3.11.7, numpy 2.4.6, onnx 1.23.2, onnxruntime 1.32.0 (other versions may choose slightly different
scales, so regenerate the model and the reference outputs together).

Inputs:
    models/mnist_cnn.onnx    the float model (scripts/train_mnist_cnn.py)
    data/mnist_calib.npy     200 calibration images (train split)
    data/mnist_test.npz      `x`: held-out images

Outputs:
    models/mnist_cnn_qop.onnx  float32 input `input` [1,1,28,28], float32 output `logits` [1,10]: onnxruntime's
                               `quantize_static` with QuantFormat.QOperator (otherwise as scripts/make_qdq_model.py:
                               int8 activations, int8 per-channel symmetric weights, MinMax on data/mnist_calib.npy,
                               after `quant_pre_process`). Its nodes: QuantizeLinear, QLinearConv, MaxPool and
                               Flatten on int8 tensors, com.microsoft QGemm, DequantizeLinear.
    data/mnist_qop_ort.npz     onnxruntime (CPU, single thread) on the first N (1000) images of data/mnist_test.npz:
                                 `logits`   float32 [N,10]
                                 `logits_q` int8 [N,10], the int8 values of the final quantised tensor
                                 `scale`, `zero_point`: the output quantisation
    models/tiny_residual_qop.onnx  a small float network written here (seeded random weights: Conv, Relu, Conv,
                               residual Add, Mul by a constant, GlobalAveragePool, Flatten, MatMul on a 1x3x8x8
                               input), quantised the same way on 50 seeded random inputs: the rest of the QOperator
                               ops (QLinearAdd, QLinearMul, QLinearGlobalAveragePool, QLinearMatMul).
    data/tiny_residual_qop_ort.npz `x` float32 [200,3,8,8] seeded random inputs (200 inferences), `y` float32 [200,5] onnxruntime's
                               outputs, `scale`, `zero_point` of the output.
"""

import argparse
import os
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantFormat

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_qdq_model import N_TEST, initializer, quantize, session  # noqa: E402  (the same recipe)


def tiny_residual(rng):
    """The float network of models/tiny_residual_qop.onnx, before quantisation."""

    def weights(name, shape, scale):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [
        weights("w1", [8, 3, 3, 3], 0.3),
        weights("b1", [8], 0.1),
        weights("w2", [8, 8, 3, 3], 0.15),
        weights("b2", [8], 0.1),
        weights("w3", [8, 5], 0.3),
        weights("m", [1, 8, 1, 1], 0.5),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Add", ["c2", "r1"], ["a"], name="add"),
        helper.make_node("Mul", ["a", "m"], ["mm"], name="mul"),
        helper.make_node("GlobalAveragePool", ["mm"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "w3"], ["y"], name="matmul"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_residual",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="kiln make_qop_model.py")
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def make_tiny(root):
    rng = np.random.default_rng(7)
    model_path = os.path.join(root, "models/tiny_residual_qop.onnx")
    with tempfile.TemporaryDirectory() as tmp:
        float_path = os.path.join(tmp, "tiny.onnx")
        onnx.save(tiny_residual(rng), float_path)
        calib = rng.standard_normal((50, 3, 8, 8)).astype(np.float32)
        quantize(float_path, model_path, calib, QuantFormat.QOperator, pre_process=False)
    q = onnx.load(model_path)
    ops = sorted({(n.domain or "ai.onnx") + "." + n.op_type for n in q.graph.node})
    print(f"{model_path}: ops {ops}, {os.path.getsize(model_path)} bytes")
    x = rng.standard_normal((200, 3, 8, 8)).astype(np.float32)
    sess = session(model_path)
    y = np.stack([sess.run(None, {"x": x[i : i + 1]})[0][0] for i in range(len(x))]).astype(np.float32)
    (dq_out,) = [n for n in q.graph.node if n.op_type == "DequantizeLinear"]
    scale = np.float32(initializer(q, dq_out.input[1]))
    zero_point = initializer(q, dq_out.input[2]).astype(np.int32)
    out = os.path.join(root, "data/tiny_residual_qop_ort.npz")
    np.savez_compressed(out, x=x, y=y, scale=scale, zero_point=zero_point)
    print(f"{out}: {len(x)} inputs")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", default=".", help="repository root (default: the current directory)")
    ap.add_argument("-n", type=int, default=N_TEST, help=f"test images to run (default {N_TEST})")
    args = ap.parse_args()
    root = args.out_dir

    calib = np.load(os.path.join(root, "data/mnist_calib.npy")).astype(np.float32)
    x = np.load(os.path.join(root, "data/mnist_test.npz"))["x"][: args.n].astype(np.float32)
    float_path = os.path.join(root, "models/mnist_cnn.onnx")
    qop_path = os.path.join(root, "models/mnist_cnn_qop.onnx")

    input_name = quantize(float_path, qop_path, calib, QuantFormat.QOperator)

    qop = onnx.load(qop_path)
    ops = sorted({(n.domain or "ai.onnx") + "." + n.op_type for n in qop.graph.node})
    print(f"{qop_path}: ops {ops}, {os.path.getsize(qop_path)} bytes")

    (dq_out,) = [n for n in qop.graph.node if n.op_type == "DequantizeLinear"]
    final_q = dq_out.input[0]
    probe = onnx.load(qop_path)
    probe.graph.output.append(helper.make_tensor_value_info(final_q, onnx.TensorProto.INT8, None))
    with tempfile.TemporaryDirectory() as tmp:
        probe_path = os.path.join(tmp, "probe.onnx")
        onnx.save(probe, probe_path)
        sess = session(probe_path)
        logits, logits_q = [], []
        for i in range(len(x)):
            y, yq = sess.run([qop.graph.output[0].name, final_q], {input_name: x[i : i + 1]})
            logits.append(y[0])
            logits_q.append(yq[0])
    logits = np.stack(logits).astype(np.float32)
    logits_q = np.stack(logits_q).astype(np.int8)
    scale = np.float32(initializer(qop, dq_out.input[1]))
    zero_point = initializer(qop, dq_out.input[2]).astype(np.int32)
    assert np.array_equal((logits_q.astype(np.int32) - zero_point).astype(np.float32) * scale, logits)
    out = os.path.join(root, "data/mnist_qop_ort.npz")
    np.savez_compressed(out, logits=logits, logits_q=logits_q, scale=scale, zero_point=zero_point)
    labels = np.load(os.path.join(root, "data/mnist_test.npz"))["y"][: args.n]
    acc = float((logits.argmax(1) == labels).mean())
    print(f"{out}: {len(x)} images, onnxruntime {ort.__version__} top-1 {acc:.4f}, "
          f"output scale {float(scale):.6g} zero point {int(zero_point)}")

    make_tiny(root)


if __name__ == "__main__":
    sys.exit(main())
