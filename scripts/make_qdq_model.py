#!/usr/bin/env python3
"""Quantise the bundled MNIST CNN with onnxruntime's static quantiser (QDQ format) and record onnxruntime's outputs.

Regenerate every output (from the repository root; needs `pip install numpy onnx onnxruntime`):

    python3 scripts/make_qdq_model.py

Made with Python 3.11.7, numpy 2.4.6, onnx 1.23.2, onnxruntime 1.32.0 (other versions may choose slightly different
scales, so regenerate the model and the reference outputs together).

Inputs:
    models/mnist_cnn.onnx    the float model (scripts/train_mnist_cnn.py)
    data/mnist_calib.npy     200 calibration images (train split)
    data/mnist_test.npz      `x`: held-out images

Outputs:
    models/mnist_cnn_qdq.onnx        float32 input `input` [1,1,28,28], float32 output `logits` [1,10]: onnxruntime's
                                     `quantize_static` (QuantFormat.QDQ, int8 activations (asymmetric), int8
                                     per-channel symmetric weights, MinMax calibration on data/mnist_calib.npy),
                                     after `quant_pre_process` (which folds the BatchNormalization into conv1).
    models/mnist_cnn_qdq_int8io.onnx the same network with int8 I/O: the graph input is the int8 tensor the first
                                     QuantizeLinear produced (it now feeds the DequantizeLinear directly) and the
                                     graph output is the int8 tensor of the last QuantizeLinear (its
                                     DequantizeLinear removed).
    data/mnist_qdq_ort.npz           onnxruntime (CPU, all graph optimisations disabled, so it computes the QDQ
                                     graph as written) on the first N (1000) images of data/mnist_test.npz:
                                       `logits`   float32 [N,10], the QDQ model's outputs
                                       `logits_q` int8 [N,10], the int8 values of the final quantised tensor
                                       `x_q`      int8 [N,1,28,28], the images quantised as the model's input
                                                  QuantizeLinear does (the int8-I/O model's input)
                                       `scale`, `zero_point`: the output quantisation (logits = (logits_q - zp) * scale)
"""

import argparse
import os
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

N_TEST = 1000


class CalibReader(CalibrationDataReader):
    def __init__(self, images, input_name):
        self.samples = iter([{input_name: images[i : i + 1]} for i in range(len(images))])

    def get_next(self):
        return next(self.samples, None)


def session(model_path):
    opts = ort.SessionOptions()
    # Computes the QDQ graph as written (no QLinear fusion), single-threaded so runs repeat exactly.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])


def int8_io_variant(model):
    """The QDQ model with its first QuantizeLinear and its last DequantizeLinear cut off: int8 in, int8 out."""
    g = model.graph
    (inp,) = g.input
    (out,) = g.output
    q_in = [n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] == inp.name]
    dq_out = [n for n in g.node if n.op_type == "DequantizeLinear" and n.output[0] == out.name]
    assert len(q_in) == 1 and len(dq_out) == 1, (q_in, dq_out)
    q_in, dq_out = q_in[0], dq_out[0]
    # Whatever read the input's QuantizeLinear output now reads the (int8) graph input.
    new_input_name = q_in.output[0]
    new_output_name = dq_out.input[0]
    nodes = [n for n in g.node if n is not q_in and n is not dq_out]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    out_shape = [d.dim_value for d in out.type.tensor_type.shape.dim]
    graph = helper.make_graph(
        nodes,
        g.name + "_int8io",
        [helper.make_tensor_value_info(new_input_name, onnx.TensorProto.INT8, shape)],
        [helper.make_tensor_value_info(new_output_name, onnx.TensorProto.INT8, out_shape)],
        initializer=list(g.initializer),
    )
    m = helper.make_model(graph, opset_imports=list(model.opset_import), producer_name="kiln make_qdq_model.py")
    m.ir_version = model.ir_version
    onnx.checker.check_model(m)
    return m, q_in, dq_out


def initializer(model, name):
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    raise KeyError(name)


def quantize(float_path, out_path, calib, quant_format, pre_process=True):
    """onnxruntime's static quantiser as this project uses it: int8 activations, per-channel symmetric int8
    weights, MinMax calibration on `calib`; first `quant_pre_process` (folds BatchNormalization) unless told
    not to. Returns the input name."""
    with tempfile.TemporaryDirectory() as tmp:
        src = float_path
        if pre_process:
            src = os.path.join(tmp, "pre.onnx")
            quant_pre_process(float_path, src, skip_symbolic_shape=True)
        input_name = onnx.load(src).graph.input[0].name
        quantize_static(
            src,
            out_path,
            CalibReader(calib, input_name),
            quant_format=quant_format,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    return input_name


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", default=".", help="repository root (default: the current directory)")
    ap.add_argument("-n", type=int, default=N_TEST, help=f"test images to run (default {N_TEST})")
    args = ap.parse_args()
    root = args.out_dir

    calib = np.load(os.path.join(root, "data/mnist_calib.npy")).astype(np.float32)
    x = np.load(os.path.join(root, "data/mnist_test.npz"))["x"][: args.n].astype(np.float32)
    float_path = os.path.join(root, "models/mnist_cnn.onnx")
    qdq_path = os.path.join(root, "models/mnist_cnn_qdq.onnx")
    int8io_path = os.path.join(root, "models/mnist_cnn_qdq_int8io.onnx")

    input_name = quantize(float_path, qdq_path, calib, QuantFormat.QDQ)

    qdq = onnx.load(qdq_path)
    ops = sorted({n.op_type for n in qdq.graph.node})
    print(f"{qdq_path}: ops {ops}, {os.path.getsize(qdq_path)} bytes")

    int8io, q_in, dq_out = int8_io_variant(qdq)
    onnx.save(int8io, int8io_path)
    print(f"{int8io_path}: {os.path.getsize(int8io_path)} bytes")

    # The int8 values of the final quantised tensor: run a copy of the QDQ model that also outputs them.
    final_q = dq_out.input[0]
    probe = onnx.load(qdq_path)
    probe.graph.output.append(helper.make_tensor_value_info(final_q, onnx.TensorProto.INT8, None))
    input_q = q_in.output[0]
    probe.graph.output.append(helper.make_tensor_value_info(input_q, onnx.TensorProto.INT8, None))
    with tempfile.TemporaryDirectory() as tmp:
        probe_path = os.path.join(tmp, "probe.onnx")
        onnx.save(probe, probe_path)
        sess = session(probe_path)
        logits, logits_q, x_q = [], [], []
        for i in range(len(x)):
            y, yq, xq = sess.run([qdq.graph.output[0].name, final_q, input_q], {input_name: x[i : i + 1]})
            logits.append(y[0])
            logits_q.append(yq[0])
            x_q.append(xq[0])
    logits = np.stack(logits).astype(np.float32)
    logits_q = np.stack(logits_q).astype(np.int8)
    x_q = np.stack(x_q).astype(np.int8)

    # The int8-I/O model computes the same int8 values from the quantised images.
    sess = session(int8io_path)
    io_in = int8io.graph.input[0].name
    for i in range(min(len(x), 20)):
        (yq,) = sess.run(None, {io_in: x_q[i : i + 1]})
        assert np.array_equal(yq[0], logits_q[i]), i

    scale = np.float32(initializer(qdq, dq_out.input[1]))
    zero_point = initializer(qdq, dq_out.input[2]).astype(np.int32)
    assert np.array_equal((logits_q.astype(np.int32) - zero_point).astype(np.float32) * scale, logits)
    out = os.path.join(root, "data/mnist_qdq_ort.npz")
    np.savez_compressed(out, logits=logits, logits_q=logits_q, x_q=x_q, scale=scale, zero_point=zero_point)
    labels = np.load(os.path.join(root, "data/mnist_test.npz"))["y"][: args.n]
    acc = float((logits.argmax(1) == labels).mean())
    print(f"{out}: {len(x)} images, onnxruntime {ort.__version__} top-1 {acc:.4f}, "
          f"output scale {float(scale):.6g} zero point {int(zero_point)}")


if __name__ == "__main__":
    sys.exit(main())
