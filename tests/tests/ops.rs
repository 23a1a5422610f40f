//! End-to-end single-operator conformance: generated ONNX models, one operator (or attribute) each, plus a few
//! small chains where layout matters, compiled by `kiln` and run on the host runtime, against tract.
//!
//! * f32: every output element must satisfy `|kiln - tract| <= 1e-4 + 1e-3 * |tract|`.
//! * int8 (calibrated MinMax on 32 random samples from the inputs' distribution): the largest error must stay
//!   within a fraction (default 4%) of the float output's range, plus a small epsilon; for softmax-like outputs
//!   the argmax must agree unless the float values are within the int8 resolution of each other.
//!
//! Inputs and weights are deterministic: every case seeds its generator from its own name. All activations are
//! NCHW (or NCW), batch 2, with negative values.

use kiln_compiler::compile::{compile, CalibMethod, Options};
use kiln_compiler::emit::Precision;
use kiln_compiler::error::Error;
use kiln_compiler::reference::Reference;
use kiln_compiler::runner::{ModelBuf, Runner};
use kiln_tests::onnx::{attr, OnnxBuilder};
use ndarray::{ArrayD, IxDyn};
use prost::Message;
use tract_onnx::pb;

// ----- deterministic random numbers ---------------------------------------------------------------------------

/// SplitMix64: small, fast and good enough for test data.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn from_name(name: &str, salt: &str) -> Self {
        // FNV-1a of the case name, so each case has its own stream.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes().chain(salt.bytes()) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        Rng::new(h)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[-1, 1)`.
    fn sym(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// `n` values uniform in `[-scale, scale)`.
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.sym() * scale).collect()
    }

    fn array(&mut self, shape: &[usize], scale: f32) -> ArrayD<f32> {
        let n = shape.iter().product();
        ArrayD::from_shape_vec(IxDyn(shape), self.vec(n, scale)).expect("shape")
    }
}

// ----- the check ----------------------------------------------------------------------------------------------

/// How a case is checked.
#[derive(Clone, Copy, Debug)]
struct Tol {
    /// Inputs are uniform in `[-input_scale, input_scale)`.
    input_scale: f32,
    /// int8: allowed max abs error as a fraction of the float output's range (max - min). One output step is
    /// 1/255 of the range (0.4%); the default 3% allows about 8 steps.
    int8_rel: f32,
    /// int8: also check argmax agreement along this axis of every output (softmax-like outputs).
    argmax_axis: Option<isize>,
}

impl Default for Tol {
    fn default() -> Self {
        Tol {
            input_scale: 1.0,
            int8_rel: 0.03,
            argmax_axis: None,
        }
    }
}

impl Tol {
    fn scale(self, s: f32) -> Self {
        Tol {
            input_scale: s,
            ..self
        }
    }

    fn argmax(self, axis: isize) -> Self {
        Tol {
            argmax_axis: Some(axis),
            ..self
        }
    }
}

const TEST_SAMPLES: usize = 3;
const CALIB_SAMPLES: usize = 32;
const F32_ABS: f32 = 1e-4;
const F32_REL: f32 = 1e-3;
const MAX_LINES: usize = 20;
/// int8: allowed mean abs error as a fraction of the float output's range (about 4 output steps).
const MEAN_REL: f64 = 0.015;

/// Checks a single-op model with the default tolerances; see [`check_op_with`].
fn check_op(name: &str, model_bytes: &[u8], input_shapes: &[Vec<usize>]) {
    check_op_with(name, model_bytes, input_shapes, Tol::default());
}

/// Compiles `model_bytes` f32 and int8, runs both on the host runtime and compares them with tract. Panics with
/// every problem found (both precisions are always checked).
fn check_op_with(name: &str, model_bytes: &[u8], input_shapes: &[Vec<usize>], tol: Tol) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(format!("{name}.onnx"));
    std::fs::write(&path, model_bytes).expect("write model");
    let input_names = graph_input_names(model_bytes);
    assert_eq!(
        input_names.len(),
        input_shapes.len(),
        "{name}: input names vs shapes"
    );

    let mut rng = Rng::from_name(name, "inputs");
    let samples: Vec<Vec<ArrayD<f32>>> = (0..TEST_SAMPLES)
        .map(|_| {
            input_shapes
                .iter()
                .map(|s| rng.array(s, tol.input_scale))
                .collect()
        })
        .collect();

    let reference = match Reference::load(&path) {
        Ok(r) => r,
        Err(e) => panic!("{name}: tract cannot load the generated model (a test bug): {e}"),
    };
    let expected: Vec<Vec<ArrayD<f32>>> = samples
        .iter()
        .map(|s| {
            reference
                .run(s)
                .unwrap_or_else(|e| panic!("{name}: tract: {e}"))
        })
        .collect();

    let mut problems = Vec::new();

    // f32.
    let f32_opts = Options {
        precision: Precision::F32,
        calib: None,
        method: CalibMethod::MinMax,
        keep_f32: Default::default(),
    };
    match compile(&path, &f32_opts) {
        Err(e) => problems.push(format!("f32 compile failed: {e}")),
        Ok(c) => match run_all(&c.bytes, &samples) {
            Err(e) => problems.push(format!("f32 run failed: {e}")),
            Ok(got) => {
                if let Some(p) = compare_f32(&got, &expected) {
                    problems.push(p);
                }
            }
        },
    }

    // int8, calibrated on samples of the same distribution: fresh ones plus the test samples themselves, so no
    // tensor saturates on the test inputs and the check measures the int8 arithmetic, not calibration coverage.
    let mut crng = Rng::from_name(name, "calibration");
    let calib: Vec<ArrayD<f32>> = input_shapes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut views: Vec<ArrayD<f32>> = (0..CALIB_SAMPLES - TEST_SAMPLES)
                .map(|_| crng.array(s, tol.input_scale))
                .collect();
            views.extend(samples.iter().map(|t| t[i].clone()));
            let v: Vec<_> = views.iter().map(|a| a.view()).collect();
            ndarray::stack(ndarray::Axis(0), &v).expect("stack calibration samples")
        })
        .collect();
    let calib_path = if input_shapes.len() == 1 {
        let p = dir.path().join("calib.npy");
        kiln_compiler::npy::write_npy(&p, &calib[0]).expect("write calib");
        p
    } else {
        let p = dir.path().join("calib.npz");
        let mut w = ndarray_npy::NpzWriter::new(std::fs::File::create(&p).expect("create npz"));
        for (n, a) in input_names.iter().zip(&calib) {
            w.add_array(n.as_str(), a).expect("write npz");
        }
        w.finish().expect("finish npz");
        p
    };
    let int8_opts = Options {
        precision: Precision::Int8,
        calib: Some(calib_path),
        method: CalibMethod::MinMax,
        keep_f32: Default::default(),
    };
    match compile(&path, &int8_opts) {
        Err(e) => problems.push(format!("int8 compile failed: {e}")),
        Ok(c) => match run_all(&c.bytes, &samples) {
            Err(e) => problems.push(format!("int8 run failed: {e}")),
            Ok(got) => problems.extend(compare_int8(&got, &expected, tol)),
        },
    }

    if !problems.is_empty() {
        panic!(
            "{name}: {} problem(s):\n{}",
            problems.len(),
            problems.join("\n")
        );
    }
}

/// For features Kiln does not support by design: the compile must fail as the user's fault, with a message
/// naming the node and containing `needle` (never an internal error, never a wrong model).
fn expect_unsupported(name: &str, model_bytes: &[u8], needle: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(format!("{name}.onnx"));
    std::fs::write(&path, model_bytes).expect("write model");
    Reference::load(&path)
        .unwrap_or_else(|e| panic!("{name}: tract cannot load the generated model: {e}"));
    let opts = Options {
        precision: Precision::F32,
        calib: None,
        method: CalibMethod::MinMax,
        keep_f32: Default::default(),
    };
    match compile(&path, &opts) {
        Ok(_) => panic!("{name}: expected the compile to reject the model, it compiled"),
        Err(Error::Input(m)) => {
            println!("{m}");
            assert!(m.contains(needle), "{name}: message lacks '{needle}':\n{m}");
        }
        Err(e) => panic!("{name}: expected an input error, got {e}"),
    }
}

fn graph_input_names(model_bytes: &[u8]) -> Vec<String> {
    let m = pb::ModelProto::decode(model_bytes).expect("decode own model");
    let g = m.graph.expect("graph");
    let inits: Vec<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    g.input
        .iter()
        .map(|i| i.name.clone())
        .filter(|n| !inits.contains(&n.as_str()))
        .collect()
}

fn run_all(bytes: &[u8], samples: &[Vec<ArrayD<f32>>]) -> Result<Vec<Vec<ArrayD<f32>>>, String> {
    let buf = ModelBuf::new(bytes);
    let model = buf.model().map_err(|e| e.to_string())?;
    let mut runner = Runner::new(&model);
    samples
        .iter()
        .map(|s| runner.run(s, |_| {}).map_err(|e| e.to_string()))
        .collect()
}

/// Row-major multi-index of flat position `i` in `shape`.
fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        idx[d] = i % shape[d].max(1);
        i /= shape[d].max(1);
    }
    idx
}

fn compare_f32(got: &[Vec<ArrayD<f32>>], expected: &[Vec<ArrayD<f32>>]) -> Option<String> {
    let mut lines = Vec::new();
    let mut bad = 0usize;
    let mut total = 0usize;
    let mut max_err = 0f32;
    for (s, (g, e)) in got.iter().zip(expected).enumerate() {
        if g.len() != e.len() {
            return Some(format!("f32: {} outputs, tract has {}", g.len(), e.len()));
        }
        for (o, (g, e)) in g.iter().zip(e).enumerate() {
            if g.shape() != e.shape() {
                return Some(format!(
                    "f32: output {o} has shape {:?}, tract's is {:?}",
                    g.shape(),
                    e.shape()
                ));
            }
            for (i, (&k, &t)) in g.iter().zip(e.iter()).enumerate() {
                total += 1;
                let err = (k - t).abs();
                max_err = max_err.max(if err.is_nan() { f32::INFINITY } else { err });
                if err.is_nan() || err > F32_ABS + F32_REL * t.abs() {
                    bad += 1;
                    if lines.len() < MAX_LINES {
                        lines.push(format!(
                            "    sample {s} output {o} {:?}: kiln {k:.6} tract {t:.6} (diff {:.2e})",
                            unravel(i, e.shape()),
                            k - t
                        ));
                    }
                }
            }
        }
    }
    println!("f32: max abs error {max_err:.3e} over {total} values");
    if bad == 0 {
        return None;
    }
    let more = if bad > lines.len() {
        format!("\n    ... and {} more", bad - lines.len())
    } else {
        String::new()
    };
    Some(format!(
        "f32: {bad} of {total} values differ from tract by more than {F32_ABS:e} + {F32_REL:e}*|tract| (max {max_err:.3e}):\n{}{more}",
        lines.join("\n")
    ))
}

fn compare_int8(got: &[Vec<ArrayD<f32>>], expected: &[Vec<ArrayD<f32>>], tol: Tol) -> Vec<String> {
    let mut problems = Vec::new();
    let n_out = expected[0].len();
    if got[0].len() != n_out {
        return vec![format!("int8: {} outputs, tract has {n_out}", got[0].len())];
    }
    for o in 0..n_out {
        if got[0][o].shape() != expected[0][o].shape() {
            problems.push(format!(
                "int8: output {o} has shape {:?}, tract's is {:?}",
                got[0][o].shape(),
                expected[0][o].shape()
            ));
            continue;
        }
        // The float output's range over all test samples sets the scale of the allowed error.
        let (lo, hi) = expected
            .iter()
            .flat_map(|e| e[o].iter().copied())
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            });
        let range = (hi - lo).max(0.0);
        let allowed = tol.int8_rel * range + 1e-3;
        let (mut max_err, mut sum_err, mut n) = (0f32, 0f64, 0usize);
        let mut lines = Vec::new();
        let mut bad = 0;
        for (s, (g, e)) in got.iter().zip(expected).enumerate() {
            for (i, (&k, &t)) in g[o].iter().zip(e[o].iter()).enumerate() {
                let err = (k - t).abs();
                let err = if err.is_nan() { f32::INFINITY } else { err };
                max_err = max_err.max(err);
                sum_err += err as f64;
                n += 1;
                if err > allowed {
                    bad += 1;
                    if lines.len() < MAX_LINES {
                        lines.push(format!(
                            "    sample {s} output {o} {:?}: kiln {k:.5} tract {t:.5} (diff {:.3e})",
                            unravel(i, e[o].shape()),
                            k - t
                        ));
                    }
                }
            }
        }
        let mean = sum_err / n.max(1) as f64;
        println!(
            "int8 output {o}: range {range:.4}, max abs error {max_err:.4e} ({:.2}% of range, allowed {:.1}%), mean abs \
             error {mean:.3e} ({:.2}% of range)",
            100.0 * max_err / range.max(1e-12),
            100.0 * tol.int8_rel,
            100.0 * mean as f32 / range.max(1e-12),
        );
        if bad > 0 {
            let more = if bad > lines.len() {
                format!("\n    ... and {} more", bad - lines.len())
            } else {
                String::new()
            };
            problems.push(format!(
                "int8 output {o}: {bad} of {n} values off by more than {allowed:.3e} ({}% of the float range {range:.4} \
                 + 1e-3); max error {max_err:.3e}:\n{}{more}",
                100.0 * tol.int8_rel,
                lines.join("\n")
            ));
        }
        // A systematic bias (a wrong zero point, a misplaced rescale) can hide under the max-error bound.
        let mean_allowed = MEAN_REL * range as f64 + 1e-3;
        if mean > mean_allowed {
            problems.push(format!(
                "int8 output {o}: mean abs error {mean:.3e} exceeds {mean_allowed:.3e} ({}% of the float range {range:.4} + 1e-3)",
                100.0 * MEAN_REL
            ));
        }
        if let Some(axis) = tol.argmax_axis {
            // A flip is only a failure when the float winner beats kiln's pick by more than the allowed element
            // error (quantising the logits alone moves near-equal values past each other).
            let tie = allowed;
            let (mut rows, mut agree, mut bad_rows) = (0, 0, Vec::new());
            for (s, (g, e)) in got.iter().zip(expected).enumerate() {
                let rank = e[o].ndim() as isize;
                let ax = ndarray::Axis(if axis < 0 {
                    (rank + axis) as usize
                } else {
                    axis as usize
                });
                for (lane, (gl, el)) in g[o].lanes(ax).into_iter().zip(e[o].lanes(ax)).enumerate() {
                    rows += 1;
                    let am = |v: &ndarray::ArrayView1<f32>| {
                        v.iter()
                            .enumerate()
                            .fold(
                                (0, f32::NEG_INFINITY),
                                |b, (i, &x)| if x > b.1 { (i, x) } else { b },
                            )
                            .0
                    };
                    let (kg, ke) = (am(&gl), am(&el));
                    if kg == ke {
                        agree += 1;
                    } else {
                        println!(
                            "    argmax flip, sample {s} lane {lane}: kiln {kg}, tract {ke} (float {:.4} vs {:.4})",
                            el[kg], el[ke]
                        );
                    }
                    if kg != ke && el[ke] - el[kg] > tie {
                        bad_rows.push(format!(
                            "    sample {s} lane {lane}: kiln argmax {kg}, tract argmax {ke} (float {:.4} vs {:.4})",
                            el[kg], el[ke]
                        ));
                    }
                }
            }
            println!("int8 output {o}: argmax agrees on {agree}/{rows} rows");
            if !bad_rows.is_empty() {
                problems.push(format!(
                    "int8 output {o}: argmax disagrees:\n{}",
                    bad_rows.join("\n")
                ));
            }
        }
    }
    problems
}

// ----- model building -----------------------------------------------------------------------------------------

/// A test model under construction: the ONNX builder, the case's weight generator and its input shapes.
struct M {
    name: &'static str,
    b: OnnxBuilder,
    rng: Rng,
    shapes: Vec<Vec<usize>>,
    tol: Tol,
}

fn model(name: &'static str) -> M {
    M {
        name,
        b: OnnxBuilder::new(13),
        rng: Rng::from_name(name, "weights"),
        shapes: vec![],
        tol: Tol::default(),
    }
}

impl M {
    /// Call first: starts the model over at opset `v`.
    fn opset(mut self, v: i64) -> Self {
        assert!(self.shapes.is_empty(), "set the opset first");
        self.b = OnnxBuilder::new(v);
        self
    }

    fn input(mut self, name: &str, shape: &[usize]) -> Self {
        self.b = self.b.input(name, shape);
        self.shapes.push(shape.to_vec());
        self
    }

    /// A random constant uniform in `[-scale, scale)`.
    fn weight(mut self, name: &str, shape: &[usize], scale: f32) -> Self {
        let v = self.rng.vec(shape.iter().product(), scale);
        self.b = self.b.initializer(name, shape, &v);
        self
    }

    /// A random constant uniform in `[lo, hi)`.
    fn weight_in(mut self, name: &str, shape: &[usize], lo: f32, hi: f32) -> Self {
        let v: Vec<f32> = (0..shape.iter().product())
            .map(|_| lo + (hi - lo) * (self.rng.sym() * 0.5 + 0.5))
            .collect();
        self.b = self.b.initializer(name, shape, &v);
        self
    }

    fn konst(mut self, name: &str, shape: &[usize], data: &[f32]) -> Self {
        self.b = self.b.initializer(name, shape, data);
        self
    }

    fn ints(mut self, name: &str, data: &[i64]) -> Self {
        self.b = self.b.initializer_i64(name, &[data.len()], data);
        self
    }

    fn node(
        mut self,
        op: &str,
        ins: &[&str],
        outs: &[&str],
        attrs: Vec<pb::AttributeProto>,
    ) -> Self {
        self.b = self.b.node(op, ins, outs, attrs);
        self
    }

    fn output(mut self, name: &str) -> Self {
        self.b = self.b.output_unshaped(name);
        self
    }

    fn tol(mut self, tol: Tol) -> Self {
        self.tol = tol;
        self
    }

    fn check(self) {
        check_op_with(self.name, &self.b.to_bytes(), &self.shapes, self.tol);
    }

    fn unsupported(self, needle: &str) {
        expect_unsupported(self.name, &self.b.to_bytes(), needle);
    }
}

use attr::{float, int, ints, string};

/// `y = Conv(x, w[, b])` with random weights; `w` is OIHW (or OIW).
fn conv(
    name: &'static str,
    x: &[usize],
    w: &[usize],
    bias: bool,
    attrs: Vec<pb::AttributeProto>,
) -> M {
    let m = model(name).input("x", x).weight("w", w, 0.5);
    if bias {
        m.weight("b", &[w[0]], 0.5)
            .node("Conv", &["x", "w", "b"], &["y"], attrs)
            .output("y")
    } else {
        m.node("Conv", &["x", "w"], &["y"], attrs).output("y")
    }
}

/// `x [2,4,5,5]` through one unary op.
fn unary(name: &'static str, op: &str, attrs: Vec<pb::AttributeProto>) -> M {
    model(name)
        .input("x", &[2, 4, 5, 5])
        .node(op, &["x"], &["y"], attrs)
        .output("y")
}

// ----- Conv ---------------------------------------------------------------------------------------------------

#[test]
fn conv2d_pads1() {
    conv(
        "conv2d_pads1",
        &[2, 3, 8, 8],
        &[4, 3, 3, 3],
        true,
        vec![ints("pads", &[1, 1, 1, 1])],
    )
    .check();
}

#[test]
fn conv1d_pads1() {
    conv(
        "conv1d_pads1",
        &[2, 3, 16],
        &[4, 3, 3],
        true,
        vec![ints("pads", &[1, 1])],
    )
    .check();
}

#[test]
fn conv2d_no_pads() {
    conv("conv2d_no_pads", &[2, 3, 7, 6], &[5, 3, 3, 3], true, vec![]).check();
}

#[test]
fn conv2d_stride2() {
    conv(
        "conv2d_stride2",
        &[2, 3, 9, 9],
        &[4, 3, 3, 3],
        true,
        vec![ints("strides", &[2, 2]), ints("pads", &[1, 1, 1, 1])],
    )
    .check();
}

#[test]
fn conv1d_stride2() {
    conv(
        "conv1d_stride2",
        &[2, 3, 15],
        &[4, 3, 3],
        true,
        vec![ints("strides", &[2]), ints("pads", &[1, 1])],
    )
    .check();
}

#[test]
fn conv2d_rect_kernel_stride_2x1() {
    conv(
        "conv2d_rect_kernel_stride_2x1",
        &[2, 3, 9, 8],
        &[4, 3, 2, 3],
        true,
        vec![ints("strides", &[2, 1])],
    )
    .check();
}

#[test]
fn conv2d_pads_asymmetric() {
    // [top, left, bottom, right]
    conv(
        "conv2d_pads_asymmetric",
        &[2, 3, 7, 8],
        &[4, 3, 3, 3],
        true,
        vec![ints("pads", &[1, 0, 2, 1])],
    )
    .check();
}

#[test]
fn conv1d_pads_asymmetric() {
    conv(
        "conv1d_pads_asymmetric",
        &[2, 3, 12],
        &[4, 3, 3],
        true,
        vec![ints("pads", &[0, 2])],
    )
    .check();
}

#[test]
fn conv2d_auto_pad_same_upper() {
    // Kernel 4: total padding 3 per axis, the odd one at the end.
    conv(
        "conv2d_auto_pad_same_upper",
        &[2, 3, 8, 7],
        &[4, 3, 4, 4],
        true,
        vec![string("auto_pad", "SAME_UPPER")],
    )
    .check();
}

#[test]
fn conv2d_auto_pad_same_lower() {
    conv(
        "conv2d_auto_pad_same_lower",
        &[2, 3, 8, 7],
        &[4, 3, 4, 4],
        true,
        vec![string("auto_pad", "SAME_LOWER")],
    )
    .check();
}

#[test]
fn conv2d_auto_pad_same_upper_stride2() {
    conv(
        "conv2d_auto_pad_same_upper_stride2",
        &[2, 3, 8, 8],
        &[4, 3, 3, 3],
        true,
        vec![string("auto_pad", "SAME_UPPER"), ints("strides", &[2, 2])],
    )
    .check();
}

#[test]
fn conv2d_auto_pad_same_lower_stride2() {
    conv(
        "conv2d_auto_pad_same_lower_stride2",
        &[2, 3, 8, 8],
        &[4, 3, 3, 3],
        true,
        vec![string("auto_pad", "SAME_LOWER"), ints("strides", &[2, 2])],
    )
    .check();
}

#[test]
fn conv1d_auto_pad_same_upper() {
    conv(
        "conv1d_auto_pad_same_upper",
        &[2, 3, 10],
        &[4, 3, 4],
        true,
        vec![string("auto_pad", "SAME_UPPER")],
    )
    .check();
}

#[test]
fn conv1d_auto_pad_same_lower() {
    conv(
        "conv1d_auto_pad_same_lower",
        &[2, 3, 10],
        &[4, 3, 4],
        true,
        vec![string("auto_pad", "SAME_LOWER")],
    )
    .check();
}

#[test]
fn conv2d_auto_pad_valid() {
    conv(
        "conv2d_auto_pad_valid",
        &[2, 3, 8, 7],
        &[4, 3, 3, 3],
        true,
        vec![string("auto_pad", "VALID"), ints("strides", &[2, 2])],
    )
    .check();
}

#[test]
fn conv1d_auto_pad_valid() {
    conv(
        "conv1d_auto_pad_valid",
        &[2, 3, 11],
        &[4, 3, 3],
        true,
        vec![string("auto_pad", "VALID")],
    )
    .check();
}

#[test]
fn conv2d_dilation2() {
    conv(
        "conv2d_dilation2",
        &[2, 3, 9, 9],
        &[4, 3, 3, 3],
        true,
        vec![ints("dilations", &[2, 2]), ints("pads", &[2, 1, 2, 1])],
    )
    .check();
}

#[test]
fn conv1d_dilation2() {
    conv(
        "conv1d_dilation2",
        &[2, 3, 16],
        &[4, 3, 3],
        true,
        vec![ints("dilations", &[2]), ints("pads", &[2, 2])],
    )
    .check();
}

#[test]
fn conv2d_group2() {
    conv(
        "conv2d_group2",
        &[2, 4, 6, 6],
        &[6, 2, 3, 3],
        true,
        vec![int("group", 2), ints("pads", &[1, 1, 1, 1])],
    )
    .check();
}

#[test]
fn conv1d_group2() {
    conv(
        "conv1d_group2",
        &[2, 4, 12],
        &[6, 2, 3],
        true,
        vec![int("group", 2), ints("pads", &[1, 1])],
    )
    .check();
}

#[test]
fn conv2d_depthwise() {
    conv(
        "conv2d_depthwise",
        &[2, 3, 6, 6],
        &[3, 1, 3, 3],
        true,
        vec![int("group", 3), ints("pads", &[1, 1, 1, 1])],
    )
    .check();
}

#[test]
fn conv2d_depthwise_multiplier2() {
    conv(
        "conv2d_depthwise_multiplier2",
        &[2, 3, 6, 6],
        &[6, 1, 3, 3],
        true,
        vec![int("group", 3), ints("pads", &[1, 1, 1, 1])],
    )
    .check();
}

#[test]
fn conv1d_depthwise_multiplier2() {
    conv(
        "conv1d_depthwise_multiplier2",
        &[2, 3, 12],
        &[6, 1, 3],
        true,
        vec![int("group", 3), ints("pads", &[1, 1])],
    )
    .check();
}

#[test]
fn conv2d_depthwise_stride2() {
    conv(
        "conv2d_depthwise_stride2",
        &[2, 4, 9, 9],
        &[4, 1, 3, 3],
        true,
        vec![
            int("group", 4),
            ints("strides", &[2, 2]),
            ints("pads", &[1, 1, 1, 1]),
        ],
    )
    .check();
}

#[test]
fn conv2d_no_bias() {
    conv(
        "conv2d_no_bias",
        &[2, 3, 6, 6],
        &[4, 3, 3, 3],
        false,
        vec![ints("pads", &[1, 1, 1, 1])],
    )
    .check();
}

#[test]
fn conv1d_no_bias() {
    conv("conv1d_no_bias", &[2, 3, 10], &[4, 3, 3], false, vec![]).check();
}

#[test]
fn conv2d_1x1() {
    conv("conv2d_1x1", &[2, 3, 5, 5], &[4, 3, 1, 1], true, vec![]).check();
}

#[test]
fn conv2d_1x1_stride2() {
    conv(
        "conv2d_1x1_stride2",
        &[2, 3, 8, 7],
        &[4, 3, 1, 1],
        true,
        vec![ints("strides", &[2, 2])],
    )
    .check();
}

#[test]
fn conv1d_1x1_stride2() {
    conv(
        "conv1d_1x1_stride2",
        &[2, 3, 9],
        &[4, 3, 1],
        true,
        vec![ints("strides", &[2])],
    )
    .check();
}

#[test]
fn conv2d_1x1_no_bias() {
    conv(
        "conv2d_1x1_no_bias",
        &[2, 3, 5, 5],
        &[4, 3, 1, 1],
        false,
        vec![],
    )
    .check();
}

// ----- Gemm / MatMul ------------------------------------------------------------------------------------------

#[test]
fn gemm_transb1_alpha_beta_bias() {
    model("gemm_transb1_alpha_beta_bias")
        .input("x", &[2, 16])
        .weight("w", &[8, 16], 0.5)
        .weight("c", &[8], 0.5)
        .node(
            "Gemm",
            &["x", "w", "c"],
            &["y"],
            vec![
                int("transA", 0),
                int("transB", 1),
                float("alpha", 0.5),
                float("beta", 2.0),
            ],
        )
        .output("y")
        .check();
}

#[test]
fn gemm_transb0_bias_row() {
    model("gemm_transb0_bias_row")
        .input("x", &[2, 16])
        .weight("w", &[16, 8], 0.5)
        .weight("c", &[1, 8], 0.5)
        .node("Gemm", &["x", "w", "c"], &["y"], vec![])
        .output("y")
        .check();
}

#[test]
fn gemm_no_bias() {
    model("gemm_no_bias")
        .input("x", &[2, 16])
        .weight("w", &[8, 16], 0.5)
        .node(
            "Gemm",
            &["x", "w"],
            &["y"],
            vec![int("transB", 1), float("alpha", 1.5)],
        )
        .output("y")
        .check();
}

#[test]
fn matmul_rank2() {
    model("matmul_rank2")
        .input("x", &[2, 16])
        .weight("w", &[16, 8], 0.5)
        .node("MatMul", &["x", "w"], &["y"], vec![])
        .output("y")
        .check();
}

#[test]
fn matmul_rank3() {
    model("matmul_rank3")
        .input("x", &[2, 5, 16])
        .weight("w", &[16, 8], 0.5)
        .node("MatMul", &["x", "w"], &["y"], vec![])
        .output("y")
        .check();
}

#[test]
fn matmul_rank3_then_add_bias() {
    model("matmul_rank3_then_add_bias")
        .input("x", &[2, 5, 16])
        .weight("w", &[16, 8], 0.5)
        .weight("c", &[8], 0.5)
        .node("MatMul", &["x", "w"], &["h"], vec![])
        .node("Add", &["h", "c"], &["y"], vec![])
        .output("y")
        .check();
}

// ----- Add / Sub / Mul ----------------------------------------------------------------------------------------

fn binary_const(name: &'static str, op: &str, x: &[usize], c: &[usize], const_first: bool) -> M {
    let m = model(name).input("x", x).weight("c", c, 1.0);
    let ins: [&str; 2] = if const_first { ["c", "x"] } else { ["x", "c"] };
    m.node(op, &ins, &["y"], vec![]).output("y")
}

fn binary_two(name: &'static str, op: &str, a: &[usize], b: &[usize]) -> M {
    model(name)
        .input("a", a)
        .input("b", b)
        .node(op, &["a", "b"], &["y"], vec![])
        .output("y")
}

#[test]
fn add_const_c11() {
    binary_const("add_const_c11", "Add", &[2, 4, 5, 5], &[4, 1, 1], false).check();
}

#[test]
fn sub_const_c11() {
    binary_const("sub_const_c11", "Sub", &[2, 4, 5, 5], &[4, 1, 1], false).check();
}

#[test]
fn sub_const_c11_const_first() {
    binary_const(
        "sub_const_c11_const_first",
        "Sub",
        &[2, 4, 5, 5],
        &[4, 1, 1],
        true,
    )
    .check();
}

#[test]
fn mul_const_c11() {
    binary_const("mul_const_c11", "Mul", &[2, 4, 5, 5], &[4, 1, 1], false).check();
}

#[test]
fn add_const_c1_1d() {
    binary_const("add_const_c1_1d", "Add", &[2, 4, 10], &[4, 1], false).check();
}

#[test]
fn mul_const_full_shape() {
    binary_const(
        "mul_const_full_shape",
        "Mul",
        &[2, 4, 5, 5],
        &[4, 5, 5],
        true,
    )
    .check();
}

#[test]
fn add_const_scalar() {
    binary_const("add_const_scalar", "Add", &[2, 4, 5, 5], &[], false).check();
}

#[test]
fn sub_const_scalar() {
    binary_const("sub_const_scalar", "Sub", &[2, 4, 5, 5], &[], false).check();
}

#[test]
fn sub_const_scalar_const_first() {
    binary_const(
        "sub_const_scalar_const_first",
        "Sub",
        &[2, 4, 5, 5],
        &[1],
        true,
    )
    .check();
}

#[test]
fn mul_const_scalar() {
    binary_const("mul_const_scalar", "Mul", &[2, 4, 5, 5], &[], false).check();
}

#[test]
fn add_two_inputs_residual() {
    binary_two(
        "add_two_inputs_residual",
        "Add",
        &[2, 4, 5, 5],
        &[2, 4, 5, 5],
    )
    .check();
}

#[test]
fn sub_two_inputs() {
    binary_two("sub_two_inputs", "Sub", &[2, 4, 5, 5], &[2, 4, 5, 5]).check();
}

#[test]
fn mul_two_inputs() {
    binary_two("mul_two_inputs", "Mul", &[2, 4, 5, 5], &[2, 4, 5, 5]).check();
}

#[test]
fn add_two_inputs_bcast_nc11() {
    binary_two(
        "add_two_inputs_bcast_nc11",
        "Add",
        &[2, 4, 5, 5],
        &[2, 4, 1, 1],
    )
    .check();
}

#[test]
fn mul_two_inputs_bcast_nc11() {
    binary_two(
        "mul_two_inputs_bcast_nc11",
        "Mul",
        &[2, 4, 5, 5],
        &[2, 4, 1, 1],
    )
    .check();
}

#[test]
fn sub_two_inputs_bcast_nc11_first() {
    binary_two(
        "sub_two_inputs_bcast_nc11_first",
        "Sub",
        &[2, 4, 1, 1],
        &[2, 4, 5, 5],
    )
    .check();
}

#[test]
fn mul_self_square() {
    model("mul_self_square")
        .input("x", &[2, 4, 5, 5])
        .node("Mul", &["x", "x"], &["y"], vec![])
        .output("y")
        .check();
}

/// Residual add of two convolution outputs (both channels-last inside Kiln).
#[test]
fn conv_add_conv_residual() {
    model("conv_add_conv_residual")
        .input("x", &[2, 3, 6, 6])
        .weight("w1", &[4, 3, 3, 3], 0.5)
        .weight("w2", &[4, 3, 1, 1], 0.5)
        .node(
            "Conv",
            &["x", "w1"],
            &["a"],
            vec![ints("pads", &[1, 1, 1, 1])],
        )
        .node("Conv", &["x", "w2"], &["b"], vec![])
        .node("Add", &["a", "b"], &["y"], vec![])
        .output("y")
        .check();
}

/// Squeeze-and-excitation style: conv output (channels-last) times a per-(n, c) gate (`[N, C, 1, 1]`).
#[test]
fn conv_mul_gap_gate_bcast() {
    model("conv_mul_gap_gate_bcast")
        .input("x", &[2, 3, 6, 6])
        .weight("w", &[4, 3, 3, 3], 0.5)
        .node(
            "Conv",
            &["x", "w"],
            &["a"],
            vec![ints("pads", &[1, 1, 1, 1])],
        )
        .node("GlobalAveragePool", &["a"], &["g"], vec![])
        .node("Sigmoid", &["g"], &["s"], vec![])
        .node("Mul", &["a", "s"], &["y"], vec![])
        .output("y")
        .check();
}

/// A channels-last conv output plus a graph input in NCHW order.
#[test]
fn conv_add_input_mixed_layout() {
    model("conv_add_input_mixed_layout")
        .input("x", &[2, 3, 6, 6])
        .input("r", &[2, 4, 6, 6])
        .weight("w", &[4, 3, 3, 3], 0.5)
        .node(
            "Conv",
            &["x", "w"],
            &["a"],
            vec![ints("pads", &[1, 1, 1, 1])],
        )
        .node("Add", &["r", "a"], &["y"], vec![])
        .output("y")
        .check();
}

// ----- activations --------------------------------------------------------------------------------------------

#[test]
fn relu() {
    let m = OnnxBuilder::new(13)
        .input("x", &[2, 4, 5, 5])
        .node("Relu", &["x"], &["y"], vec![])
        .output_unshaped("y");
    check_op("relu", &m.to_bytes(), &[vec![2, 4, 5, 5]]);
}

#[test]
fn relu_1d() {
    model("relu_1d")
        .input("x", &[2, 4, 10])
        .node("Relu", &["x"], &["y"], vec![])
        .output("y")
        .check();
}

#[test]
fn clip_min_max_inputs() {
    model("clip_min_max_inputs")
        .input("x", &[2, 4, 5, 5])
        .konst("lo", &[], &[-0.5])
        .konst("hi", &[], &[0.7])
        .node("Clip", &["x", "lo", "hi"], &["y"], vec![])
        .output("y")
        .check();
}

#[test]
fn clip_relu6() {
    model("clip_relu6")
        .input("x", &[2, 4, 5, 5])
        .konst("lo", &[], &[0.0])
        .konst("hi", &[], &[6.0])
        .node("Clip", &["x", "lo", "hi"], &["y"], vec![])
        .output("y")
        .tol(Tol::default().scale(8.0))
        .check();
}

#[test]
fn clip_max_only() {
    model("clip_max_only")
        .input("x", &[2, 4, 5, 5])
        .konst("hi", &[], &[0.3])
        .node("Clip", &["x", "", "hi"], &["y"], vec![])
        .output("y")
        .check();
}

#[test]
fn clip_min_only() {
    model("clip_min_only")
        .input("x", &[2, 4, 5, 5])
        .konst("lo", &[], &[-0.3])
        .node("Clip", &["x", "lo"], &["y"], vec![])
        .output("y")
        .check();
}

#[test]
fn clip_opset6_attributes() {
    model("clip_opset6_attributes")
        .opset(6)
        .input("x", &[2, 4, 5, 5])
        .node(
            "Clip",
            &["x"],
            &["y"],
            vec![float("min", -0.25), float("max", 0.5)],
        )
        .output("y")
        .check();
}

#[test]
fn leaky_relu_alpha0_1() {
    unary(
        "leaky_relu_alpha0_1",
        "LeakyRelu",
        vec![float("alpha", 0.1)],
    )
    .check();
}

#[test]
fn prelu_per_channel() {
    model("prelu_per_channel")
        .input("x", &[2, 4, 5, 5])
        .weight_in("slope", &[4, 1, 1], 0.05, 0.5)
        .node("PRelu", &["x", "slope"], &["y"], vec![])
        .output("y")
        .check();
}

#[test]
fn prelu_per_channel_1d() {
    model("prelu_per_channel_1d")
        .input("x", &[2, 4, 10])
        .weight_in("slope", &[4, 1], 0.05, 0.5)
        .node("PRelu", &["x", "slope"], &["y"], vec![])
        .output("y")
        .check();
}

#[test]
fn prelu_scalar_slope() {
    model("prelu_scalar_slope")
        .input("x", &[2, 4, 5, 5])
        .konst("slope", &[1], &[0.25])
        .node("PRelu", &["x", "slope"], &["y"], vec![])
        .output("y")
        .check();
}

#[test]
fn elu() {
    unary("elu", "Elu", vec![])
        .tol(Tol::default().scale(3.0))
        .check();
}

#[test]
fn elu_alpha0_5() {
    unary("elu_alpha0_5", "Elu", vec![float("alpha", 0.5)])
        .tol(Tol::default().scale(3.0))
        .check();
}

#[test]
fn sigmoid() {
    unary("sigmoid", "Sigmoid", vec![])
        .tol(Tol::default().scale(4.0))
        .check();
}

#[test]
fn tanh() {
    unary("tanh", "Tanh", vec![])
        .tol(Tol::default().scale(3.0))
        .check();
}

// ----- Softmax / LogSoftmax -----------------------------------------------------------------------------------

fn softmax(name: &'static str, op: &str, x: &[usize], axis: i64) -> M {
    model(name)
        .input("x", x)
        .node(op, &["x"], &["y"], vec![int("axis", axis)])
        .output("y")
        .tol(Tol::default().scale(3.0).argmax(axis as isize))
}

#[test]
fn softmax_2d_axis1() {
    softmax("softmax_2d_axis1", "Softmax", &[2, 10], 1).check();
}

#[test]
fn softmax_3d_axis_neg1() {
    softmax("softmax_3d_axis_neg1", "Softmax", &[2, 3, 10], -1).check();
}

#[test]
fn softmax_3d_axis1() {
    softmax("softmax_3d_axis1", "Softmax", &[2, 5, 7], 1).check();
}

#[test]
fn softmax_4d_axis1() {
    softmax("softmax_4d_axis1", "Softmax", &[2, 4, 3, 3], 1).check();
}

#[test]
fn logsoftmax_2d_axis1() {
    softmax("logsoftmax_2d_axis1", "LogSoftmax", &[2, 10], 1).check();
}

#[test]
fn logsoftmax_3d_axis_neg1() {
    softmax("logsoftmax_3d_axis_neg1", "LogSoftmax", &[2, 3, 10], -1).check();
}

#[test]
fn logsoftmax_3d_axis1() {
    softmax("logsoftmax_3d_axis1", "LogSoftmax", &[2, 5, 7], 1).check();
}

#[test]
fn logsoftmax_4d_axis1() {
    softmax("logsoftmax_4d_axis1", "LogSoftmax", &[2, 4, 3, 3], 1).check();
}

/// Softmax over the channels of a convolution output: Kiln holds it channels-last, so the axis must be remapped.
#[test]
fn conv_softmax_4d_axis1() {
    model("conv_softmax_4d_axis1")
        .input("x", &[2, 3, 5, 5])
        .weight("w", &[6, 3, 3, 3], 1.0)
        .node(
            "Conv",
            &["x", "w"],
            &["a"],
            vec![ints("pads", &[1, 1, 1, 1])],
        )
        .node("Softmax", &["a"], &["y"], vec![int("axis", 1)])
        .output("y")
        .tol(Tol::default().argmax(1))
        .check();
}

#[test]
fn conv_logsoftmax_4d_axis1() {
    model("conv_logsoftmax_4d_axis1")
        .input("x", &[2, 3, 5, 5])
        .weight("w", &[6, 3, 3, 3], 1.0)
        .node(
            "Conv",
            &["x", "w"],
            &["a"],
            vec![ints("pads", &[1, 1, 1, 1])],
        )
        .node("LogSoftmax", &["a"], &["y"], vec![int("axis", 1)])
        .output("y")
        .tol(Tol::default().argmax(1))
        .check();
}

#[test]
fn conv1d_softmax_axis_neg1() {
    model("conv1d_softmax_axis_neg1")
        .input("x", &[2, 3, 8])
        .weight("w", &[4, 3, 3], 1.0)
        .node("Conv", &["x", "w"], &["a"], vec![ints("pads", &[1, 1])])
        .node("Softmax", &["a"], &["y"], vec![int("axis", -1)])
        .output("y")
        .tol(Tol::default().argmax(-1))
        .check();
}

// ----- pools --------------------------------------------------------------------------------------------------

fn pool(name: &'static str, op: &str, x: &[usize], attrs: Vec<pb::AttributeProto>) -> M {
    model(name)
        .input("x", x)
        .node(op, &["x"], &["y"], attrs)
        .output("y")
}

#[test]
fn maxpool2d_k2_s2() {
    pool(
        "maxpool2d_k2_s2",
        "MaxPool",
        &[2, 3, 8, 8],
        vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])],
    )
    .check();
}

#[test]
fn maxpool2d_k3_s2_pads1() {
    pool(
        "maxpool2d_k3_s2_pads1",
        "MaxPool",
        &[2, 3, 9, 9],
        vec![
            ints("kernel_shape", &[3, 3]),
            ints("strides", &[2, 2]),
            ints("pads", &[1, 1, 1, 1]),
        ],
    )
    .check();
}

#[test]
fn maxpool2d_pads_asymmetric() {
    pool(
        "maxpool2d_pads_asymmetric",
        "MaxPool",
        &[2, 3, 7, 8],
        vec![
            ints("kernel_shape", &[2, 3]),
            ints("strides", &[1, 2]),
            ints("pads", &[1, 0, 0, 1]),
        ],
    )
    .check();
}

#[test]
fn maxpool1d_k3_s2_pads1() {
    pool(
        "maxpool1d_k3_s2_pads1",
        "MaxPool",
        &[2, 3, 15],
        vec![
            ints("kernel_shape", &[3]),
            ints("strides", &[2]),
            ints("pads", &[1, 1]),
        ],
    )
    .check();
}

#[test]
fn maxpool1d_k2_s2() {
    pool(
        "maxpool1d_k2_s2",
        "MaxPool",
        &[2, 3, 16],
        vec![ints("kernel_shape", &[2]), ints("strides", &[2])],
    )
    .check();
}

#[test]
fn avgpool2d_k2_s2() {
    pool(
        "avgpool2d_k2_s2",
        "AveragePool",
        &[2, 3, 8, 8],
        vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])],
    )
    .check();
}

#[test]
fn avgpool2d_pads_count_include_pad0() {
    pool(
        "avgpool2d_pads_count_include_pad0",
        "AveragePool",
        &[2, 3, 9, 9],
        vec![
            ints("kernel_shape", &[3, 3]),
            ints("strides", &[2, 2]),
            ints("pads", &[1, 1, 1, 1]),
            int("count_include_pad", 0),
        ],
    )
    .check();
}

#[test]
fn avgpool2d_pads_count_include_pad1() {
    pool(
        "avgpool2d_pads_count_include_pad1",
        "AveragePool",
        &[2, 3, 9, 9],
        vec![
            ints("kernel_shape", &[3, 3]),
            ints("strides", &[2, 2]),
            ints("pads", &[1, 1, 1, 1]),
            int("count_include_pad", 1),
        ],
    )
    .check();
}

#[test]
fn avgpool2d_pads_asymmetric_count_include_pad1() {
    pool(
        "avgpool2d_pads_asymmetric_count_include_pad1",
        "AveragePool",
        &[2, 3, 7, 8],
        vec![
            ints("kernel_shape", &[3, 2]),
            ints("strides", &[1, 2]),
            ints("pads", &[0, 1, 2, 0]),
            int("count_include_pad", 1),
        ],
    )
    .check();
}

#[test]
fn avgpool1d_pads_count_include_pad0() {
    pool(
        "avgpool1d_pads_count_include_pad0",
        "AveragePool",
        &[2, 3, 15],
        vec![
            ints("kernel_shape", &[3]),
            ints("strides", &[2]),
            ints("pads", &[1, 1]),
            int("count_include_pad", 0),
        ],
    )
    .check();
}

#[test]
fn avgpool1d_pads_count_include_pad1() {
    pool(
        "avgpool1d_pads_count_include_pad1",
        "AveragePool",
        &[2, 3, 15],
        vec![
            ints("kernel_shape", &[3]),
            ints("strides", &[2]),
            ints("pads", &[1, 1]),
            int("count_include_pad", 1),
        ],
    )
    .check();
}

#[test]
fn global_avgpool2d() {
    pool(
        "global_avgpool2d",
        "GlobalAveragePool",
        &[2, 3, 5, 7],
        vec![],
    )
    .check();
}

#[test]
fn global_avgpool1d() {
    pool("global_avgpool1d", "GlobalAveragePool", &[2, 3, 11], vec![]).check();
}

#[test]
fn global_maxpool2d() {
    pool("global_maxpool2d", "GlobalMaxPool", &[2, 3, 5, 7], vec![]).check();
}

#[test]
fn global_maxpool1d() {
    pool("global_maxpool1d", "GlobalMaxPool", &[2, 3, 11], vec![]).check();
}

// ----- BatchNormalization -------------------------------------------------------------------------------------

fn bn_params(m: M, c: usize) -> M {
    m.weight_in("scale", &[c], 0.5, 1.5)
        .weight("bias", &[c], 0.5)
        .weight("mean", &[c], 0.5)
        .weight_in("var", &[c], 0.25, 1.5)
}

#[test]
fn batchnorm2d_standalone() {
    bn_params(model("batchnorm2d_standalone").input("x", &[2, 4, 5, 5]), 4)
        .node(
            "BatchNormalization",
            &["x", "scale", "bias", "mean", "var"],
            &["y"],
            vec![float("epsilon", 1e-3)],
        )
        .output("y")
        .check();
}

#[test]
fn batchnorm1d_standalone() {
    bn_params(model("batchnorm1d_standalone").input("x", &[2, 4, 10]), 4)
        .node(
            "BatchNormalization",
            &["x", "scale", "bias", "mean", "var"],
            &["y"],
            vec![],
        )
        .output("y")
        .check();
}

#[test]
fn conv2d_batchnorm_folded() {
    bn_params(
        model("conv2d_batchnorm_folded")
            .input("x", &[2, 3, 6, 6])
            .weight("w", &[4, 3, 3, 3], 0.5),
        4,
    )
    .weight("b", &[4], 0.5)
    .node(
        "Conv",
        &["x", "w", "b"],
        &["c"],
        vec![ints("pads", &[1, 1, 1, 1])],
    )
    .node(
        "BatchNormalization",
        &["c", "scale", "bias", "mean", "var"],
        &["y"],
        vec![float("epsilon", 1e-3)],
    )
    .output("y")
    .check();
}

#[test]
fn conv1d_batchnorm_relu_folded() {
    bn_params(
        model("conv1d_batchnorm_relu_folded")
            .input("x", &[2, 3, 12])
            .weight("w", &[4, 3, 3], 0.5),
        4,
    )
    .node("Conv", &["x", "w"], &["c"], vec![ints("pads", &[1, 1])])
    .node(
        "BatchNormalization",
        &["c", "scale", "bias", "mean", "var"],
        &["n"],
        vec![],
    )
    .node("Relu", &["n"], &["y"], vec![])
    .output("y")
    .check();
}

// ----- Pad ----------------------------------------------------------------------------------------------------

#[test]
fn pad_constant_nchw_spatial() {
    model("pad_constant_nchw_spatial")
        .input("x", &[2, 3, 5, 5])
        .ints("pads", &[0, 0, 1, 2, 0, 0, 2, 1])
        .konst("v", &[], &[0.5])
        .node("Pad", &["x", "pads", "v"], &["y"], vec![])
        .output("y")
        .check();
}

#[test]
fn pad_constant_nchw_channels() {
    model("pad_constant_nchw_channels")
        .input("x", &[2, 3, 4, 4])
        .ints("pads", &[0, 1, 0, 1, 0, 2, 1, 0])
        .konst("v", &[], &[-0.75])
        .node("Pad", &["x", "pads", "v"], &["y"], vec![])
        .output("y")
        .check();
}

#[test]
fn pad_constant_ncw() {
    model("pad_constant_ncw")
        .input("x", &[2, 3, 10])
        .ints("pads", &[0, 0, 3, 0, 0, 1])
        .konst("v", &[], &[0.25])
        .node("Pad", &["x", "pads", "v"], &["y"], vec![])
        .output("y")
        .check();
}

/// Pad of a convolution output (channels-last inside Kiln).
#[test]
fn conv_pad_constant() {
    model("conv_pad_constant")
        .input("x", &[2, 3, 6, 6])
        .weight("w", &[4, 3, 3, 3], 0.5)
        .ints("pads", &[0, 0, 1, 0, 0, 0, 2, 3])
        .konst("v", &[], &[0.5])
        .node("Conv", &["x", "w"], &["c"], vec![])
        .node("Pad", &["c", "pads", "v"], &["y"], vec![])
        .output("y")
        .check();
}

// ----- Concat -------------------------------------------------------------------------------------------------

#[test]
fn concat_axis1_two_inputs() {
    model("concat_axis1_two_inputs")
        .input("a", &[2, 3, 4, 4])
        .input("b", &[2, 5, 4, 4])
        .node("Concat", &["a", "b"], &["y"], vec![int("axis", 1)])
        .output("y")
        .check();
}

#[test]
fn concat_axis1_1d_two_inputs() {
    model("concat_axis1_1d_two_inputs")
        .input("a", &[2, 3, 10])
        .input("b", &[2, 2, 10])
        .node("Concat", &["a", "b"], &["y"], vec![int("axis", 1)])
        .output("y")
        .check();
}

#[test]
fn concat_axis1_with_constant() {
    model("concat_axis1_with_constant")
        .input("x", &[2, 3, 4, 4])
        .weight("c", &[2, 2, 4, 4], 1.0)
        .node("Concat", &["x", "c"], &["y"], vec![int("axis", 1)])
        .output("y")
        .check();
}

#[test]
fn concat_axis_neg1() {
    model("concat_axis_neg1")
        .input("a", &[2, 3, 4, 4])
        .input("b", &[2, 3, 4, 2])
        .node("Concat", &["a", "b"], &["y"], vec![int("axis", -1)])
        .output("y")
        .check();
}

/// Concatenating two convolution outputs on the channel axis.
#[test]
fn conv_concat_axis1() {
    model("conv_concat_axis1")
        .input("x", &[2, 3, 6, 6])
        .weight("w1", &[4, 3, 3, 3], 0.5)
        .weight("w2", &[2, 3, 1, 1], 0.5)
        .node(
            "Conv",
            &["x", "w1"],
            &["a"],
            vec![ints("pads", &[1, 1, 1, 1])],
        )
        .node("Conv", &["x", "w2"], &["b"], vec![])
        .node("Concat", &["a", "b"], &["y"], vec![int("axis", 1)])
        .output("y")
        .check();
}

/// A channels-last conv output next to an NCHW graph input.
#[test]
fn conv_concat_with_input() {
    model("conv_concat_with_input")
        .input("x", &[2, 3, 6, 6])
        .weight("w", &[4, 3, 3, 3], 0.5)
        .node(
            "Conv",
            &["x", "w"],
            &["a"],
            vec![ints("pads", &[1, 1, 1, 1])],
        )
        .node("Concat", &["x", "a"], &["y"], vec![int("axis", 1)])
        .output("y")
        .check();
}

// ----- Reshape / Flatten / Squeeze / Unsqueeze / Transpose ----------------------------------------------------

#[test]
fn reshape_flat() {
    model("reshape_flat")
        .input("x", &[2, 4, 5, 5])
        .ints("s", &[2, -1])
        .node("Reshape", &["x", "s"], &["y"], vec![])
        .output("y")
        .check();
}

#[test]
fn reshape_3d() {
    model("reshape_3d")
        .input("x", &[2, 4, 5, 5])
        .ints("s", &[2, 4, 25])
        .node("Reshape", &["x", "s"], &["y"], vec![])
        .output("y")
        .check();
}

#[test]
fn flatten_axis1() {
    model("flatten_axis1")
        .input("x", &[2, 4, 5, 5])
        .node("Flatten", &["x"], &["y"], vec![int("axis", 1)])
        .output("y")
        .check();
}

#[test]
fn flatten_axis2() {
    model("flatten_axis2")
        .input("x", &[2, 4, 5, 5])
        .node("Flatten", &["x"], &["y"], vec![int("axis", 2)])
        .output("y")
        .check();
}

#[test]
fn squeeze_axis1() {
    model("squeeze_axis1")
        .input("x", &[2, 1, 5, 5])
        .ints("axes", &[1])
        .node("Squeeze", &["x", "axes"], &["y"], vec![])
        .output("y")
        .check();
}

#[test]
fn unsqueeze_axis1() {
    model("unsqueeze_axis1")
        .input("x", &[2, 10])
        .ints("axes", &[1])
        .node("Unsqueeze", &["x", "axes"], &["y"], vec![])
        .output("y")
        .check();
}

#[test]
fn transpose_0231() {
    model("transpose_0231")
        .input("x", &[2, 3, 4, 5])
        .node(
            "Transpose",
            &["x"],
            &["y"],
            vec![ints("perm", &[0, 2, 3, 1])],
        )
        .output("y")
        .check();
}

#[test]
fn transpose_0231_and_back() {
    model("transpose_0231_and_back")
        .input("x", &[2, 3, 4, 5])
        .node(
            "Transpose",
            &["x"],
            &["t"],
            vec![ints("perm", &[0, 2, 3, 1])],
        )
        .node(
            "Transpose",
            &["t"],
            &["y"],
            vec![ints("perm", &[0, 3, 1, 2])],
        )
        .output("y")
        .check();
}

/// Transposes around a Relu: the intermediate layouts are real (not a no-op folded away).
#[test]
fn transpose_relu_transpose_back() {
    model("transpose_relu_transpose_back")
        .input("x", &[2, 3, 4, 5])
        .node(
            "Transpose",
            &["x"],
            &["t"],
            vec![ints("perm", &[0, 2, 3, 1])],
        )
        .node("Relu", &["t"], &["r"], vec![])
        .node(
            "Transpose",
            &["r"],
            &["y"],
            vec![ints("perm", &[0, 3, 1, 2])],
        )
        .output("y")
        .check();
}

#[test]
fn transpose_3d_021() {
    model("transpose_3d_021")
        .input("x", &[2, 3, 7])
        .node("Transpose", &["x"], &["y"], vec![ints("perm", &[0, 2, 1])])
        .output("y")
        .check();
}

/// A conv output (channels-last inside Kiln) transposed to NHWC: a free relabeling.
#[test]
fn conv_transpose_0231() {
    model("conv_transpose_0231")
        .input("x", &[2, 3, 6, 6])
        .weight("w", &[4, 3, 3, 3], 0.5)
        .node("Conv", &["x", "w"], &["c"], vec![])
        .node(
            "Transpose",
            &["c"],
            &["y"],
            vec![ints("perm", &[0, 2, 3, 1])],
        )
        .output("y")
        .check();
}

#[test]
fn conv_reshape() {
    model("conv_reshape")
        .input("x", &[2, 3, 6, 6])
        .weight("w", &[4, 3, 3, 3], 0.5)
        .ints("s", &[2, 4, 16])
        .node("Conv", &["x", "w"], &["c"], vec![])
        .node("Reshape", &["c", "s"], &["y"], vec![])
        .output("y")
        .check();
}

// ----- ReduceMean ---------------------------------------------------------------------------------------------

fn reduce_mean(name: &'static str, x: &[usize], axes: &[i64], keepdims: i64) -> M {
    model(name)
        .input("x", x)
        .node(
            "ReduceMean",
            &["x"],
            &["y"],
            vec![ints("axes", axes), int("keepdims", keepdims)],
        )
        .output("y")
}

#[test]
fn reducemean_axes23_keepdims1() {
    reduce_mean("reducemean_axes23_keepdims1", &[2, 4, 5, 6], &[2, 3], 1).check();
}

#[test]
fn reducemean_axes23_keepdims0() {
    reduce_mean("reducemean_axes23_keepdims0", &[2, 4, 5, 6], &[2, 3], 0).check();
}

#[test]
fn reducemean_axis_neg1_keepdims1() {
    reduce_mean("reducemean_axis_neg1_keepdims1", &[2, 4, 5, 6], &[-1], 1).check();
}

#[test]
fn reducemean_axis_neg1_keepdims0() {
    reduce_mean("reducemean_axis_neg1_keepdims0", &[2, 4, 5, 6], &[-1], 0).check();
}

#[test]
fn reducemean_axis1_keepdims1() {
    reduce_mean("reducemean_axis1_keepdims1", &[2, 4, 5, 6], &[1], 1).check();
}

#[test]
fn reducemean_3d_axis_neg1_keepdims0() {
    reduce_mean("reducemean_3d_axis_neg1_keepdims0", &[2, 4, 10], &[-1], 0).check();
}

/// ReduceMean over H, W of a conv output (channels-last inside Kiln), dropping the axes.
#[test]
fn conv_reducemean_axes23_keepdims0() {
    model("conv_reducemean_axes23_keepdims0")
        .input("x", &[2, 3, 6, 6])
        .weight("w", &[4, 3, 3, 3], 0.5)
        .node("Conv", &["x", "w"], &["c"], vec![])
        .node(
            "ReduceMean",
            &["c"],
            &["y"],
            vec![ints("axes", &[2, 3]), int("keepdims", 0)],
        )
        .output("y")
        .check();
}

#[test]
fn conv_reducemean_axis1_keepdims0() {
    model("conv_reducemean_axis1_keepdims0")
        .input("x", &[2, 3, 6, 6])
        .weight("w", &[4, 3, 3, 3], 0.5)
        .node("Conv", &["x", "w"], &["c"], vec![])
        .node(
            "ReduceMean",
            &["c"],
            &["y"],
            vec![ints("axes", &[1]), int("keepdims", 0)],
        )
        .output("y")
        .check();
}

// ----- Split (GLU) --------------------------------------------------------------------------------------------

fn glu(name: &'static str, x: &[usize], axis: i64, half: i64) -> M {
    model(name)
        .input("x", x)
        .ints("split", &[half, half])
        .node(
            "Split",
            &["x", "split"],
            &["a", "b"],
            vec![int("axis", axis)],
        )
        .node("Sigmoid", &["b"], &["s"], vec![])
        .node("Mul", &["a", "s"], &["y"], vec![])
        .output("y")
        .tol(Tol::default().scale(2.0))
}

#[test]
fn split_glu_3d_axis1() {
    glu("split_glu_3d_axis1", &[2, 8, 10], 1, 4).check();
}

#[test]
fn split_glu_2d_axis_neg1() {
    glu("split_glu_2d_axis_neg1", &[2, 16], -1, 8).check();
}

#[test]
fn split_glu_4d_axis1() {
    glu("split_glu_4d_axis1", &[2, 6, 3, 3], 1, 3).check();
}

#[test]
fn split_equal_no_sizes_opset13() {
    model("split_equal_no_sizes_opset13")
        .input("x", &[2, 6, 5])
        .node("Split", &["x"], &["a", "b"], vec![int("axis", 1)])
        .node("Sub", &["a", "b"], &["y"], vec![])
        .output("y")
        .check();
}

/// GLU over the channels of a 1D convolution (channels-last inside Kiln).
#[test]
fn conv1d_split_glu() {
    model("conv1d_split_glu")
        .input("x", &[2, 3, 10])
        .weight("w", &[8, 3, 3], 0.5)
        .ints("split", &[4, 4])
        .node("Conv", &["x", "w"], &["c"], vec![ints("pads", &[1, 1])])
        .node("Split", &["c", "split"], &["a", "b"], vec![int("axis", 1)])
        .node("Sigmoid", &["b"], &["s"], vec![])
        .node("Mul", &["a", "s"], &["y"], vec![])
        .output("y")
        .check();
}

// ----- chains where layout matters ----------------------------------------------------------------------------

#[test]
fn chain_conv_transpose_reshape_gemm() {
    model("chain_conv_transpose_reshape_gemm")
        .input("x", &[2, 3, 6, 6])
        .weight("w", &[4, 3, 3, 3], 0.5)
        .weight("b", &[4], 0.5)
        .ints("s", &[2, 144])
        .weight("fw", &[10, 144], 0.2)
        .weight("fb", &[10], 0.5)
        .node(
            "Conv",
            &["x", "w", "b"],
            &["c"],
            vec![ints("pads", &[1, 1, 1, 1])],
        )
        .node(
            "Transpose",
            &["c"],
            &["t"],
            vec![ints("perm", &[0, 2, 3, 1])],
        )
        .node("Reshape", &["t", "s"], &["r"], vec![])
        .node("Gemm", &["r", "fw", "fb"], &["y"], vec![int("transB", 1)])
        .output("y")
        .check();
}

#[test]
fn chain_conv_flatten_gemm() {
    model("chain_conv_flatten_gemm")
        .input("x", &[2, 3, 6, 6])
        .weight("w", &[4, 3, 3, 3], 0.5)
        .weight("b", &[4], 0.5)
        .weight("fw", &[10, 36], 0.2)
        .weight("fb", &[10], 0.5)
        .node(
            "Conv",
            &["x", "w", "b"],
            &["c"],
            vec![ints("strides", &[2, 2]), ints("pads", &[1, 1, 1, 1])],
        )
        .node("Flatten", &["c"], &["f"], vec![int("axis", 1)])
        .node("Gemm", &["f", "fw", "fb"], &["y"], vec![int("transB", 1)])
        .output("y")
        .check();
}

#[test]
fn chain_conv1d_relu_maxpool_flatten_gemm() {
    model("chain_conv1d_relu_maxpool_flatten_gemm")
        .input("x", &[2, 3, 16])
        .weight("w", &[4, 3, 3], 0.5)
        .weight("fw", &[32, 8], 0.3)
        .node("Conv", &["x", "w"], &["c"], vec![ints("pads", &[1, 1])])
        .node("Relu", &["c"], &["r"], vec![])
        .node(
            "MaxPool",
            &["r"],
            &["p"],
            vec![ints("kernel_shape", &[2]), ints("strides", &[2])],
        )
        .node("Flatten", &["p"], &["f"], vec![int("axis", 1)])
        .node("MatMul", &["f", "fw"], &["y"], vec![])
        .output("y")
        .check();
}

#[test]
fn chain_conv_relu_residual_gap_flatten_gemm_softmax() {
    model("chain_conv_relu_residual_gap_flatten_gemm_softmax")
        .input("x", &[2, 4, 6, 6])
        .weight("w", &[4, 4, 3, 3], 0.5)
        .weight("b", &[4], 0.5)
        .weight("fw", &[10, 4], 1.0)
        .weight("fb", &[10], 0.5)
        .node(
            "Conv",
            &["x", "w", "b"],
            &["c"],
            vec![ints("pads", &[1, 1, 1, 1])],
        )
        .node("Relu", &["c"], &["r"], vec![])
        .node("Add", &["r", "x"], &["s"], vec![])
        .node("GlobalAveragePool", &["s"], &["g"], vec![])
        .node("Flatten", &["g"], &["f"], vec![int("axis", 1)])
        .node("Gemm", &["f", "fw", "fb"], &["l"], vec![int("transB", 1)])
        .node("Softmax", &["l"], &["y"], vec![int("axis", 1)])
        .output("y")
        .tol(Tol::default().argmax(1))
        .check();
}

#[test]
fn chain_conv_bn_relu_maxpool_conv() {
    bn_params(
        model("chain_conv_bn_relu_maxpool_conv")
            .input("x", &[2, 3, 8, 8])
            .weight("w", &[4, 3, 3, 3], 0.5),
        4,
    )
    .weight("w2", &[6, 4, 3, 3], 0.5)
    .node(
        "Conv",
        &["x", "w"],
        &["c"],
        vec![ints("pads", &[1, 1, 1, 1])],
    )
    .node(
        "BatchNormalization",
        &["c", "scale", "bias", "mean", "var"],
        &["n"],
        vec![],
    )
    .node("Relu", &["n"], &["r"], vec![])
    .node(
        "MaxPool",
        &["r"],
        &["p"],
        vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])],
    )
    .node(
        "Conv",
        &["p", "w2"],
        &["y"],
        vec![ints("pads", &[1, 1, 1, 1])],
    )
    .output("y")
    .check();
}

// ----- more attributes and operator versions ------------------------------------------------------------------

/// Not supported (by design, for now): a matrix product on a transposed activation.
#[test]
fn gemm_transa1_is_rejected() {
    model("gemm_transa1_is_rejected")
        .input("x", &[16, 2])
        .weight("w", &[8, 16], 0.5)
        .weight("c", &[8], 0.5)
        .node(
            "Gemm",
            &["x", "w", "c"],
            &["y"],
            vec![int("transA", 1), int("transB", 1)],
        )
        .output("y")
        .unsupported("transA");
}

#[test]
fn gemm_bias_scalar() {
    model("gemm_bias_scalar")
        .input("x", &[2, 16])
        .weight("w", &[8, 16], 0.5)
        .konst("c", &[], &[0.75])
        .node(
            "Gemm",
            &["x", "w", "c"],
            &["y"],
            vec![int("transB", 1), float("beta", 0.5)],
        )
        .output("y")
        .check();
}

/// C of the full output shape `[M, N]`: a per-row bias that a dense layer's per-column bias cannot hold.
#[test]
fn gemm_bias_matrix() {
    model("gemm_bias_matrix")
        .input("x", &[2, 16])
        .weight("w", &[8, 16], 0.5)
        .weight("c", &[2, 8], 0.5)
        .node("Gemm", &["x", "w", "c"], &["y"], vec![int("transB", 1)])
        .output("y")
        .check();
}

#[test]
fn leaky_relu_default_alpha() {
    unary("leaky_relu_default_alpha", "LeakyRelu", vec![])
        .tol(Tol::default().scale(4.0))
        .check();
}

#[test]
fn softmax_opset11_4d_axis1() {
    model("softmax_opset11_4d_axis1")
        .opset(11)
        .input("x", &[2, 3, 2, 2])
        .node("Softmax", &["x"], &["y"], vec![int("axis", 1)])
        .output("y")
        .tol(Tol::default().scale(3.0))
        .check();
}

#[test]
fn logsoftmax_opset11_3d_axis1() {
    model("logsoftmax_opset11_3d_axis1")
        .opset(11)
        .input("x", &[2, 3, 4])
        .node("LogSoftmax", &["x"], &["y"], vec![int("axis", 1)])
        .output("y")
        .tol(Tol::default().scale(3.0))
        .check();
}

#[test]
fn maxpool2d_ceil_mode() {
    pool(
        "maxpool2d_ceil_mode",
        "MaxPool",
        &[2, 3, 8, 8],
        vec![
            ints("kernel_shape", &[3, 3]),
            ints("strides", &[2, 2]),
            int("ceil_mode", 1),
        ],
    )
    .check();
}

#[test]
fn avgpool2d_ceil_mode() {
    pool(
        "avgpool2d_ceil_mode",
        "AveragePool",
        &[2, 3, 8, 8],
        vec![
            ints("kernel_shape", &[3, 3]),
            ints("strides", &[2, 2]),
            int("ceil_mode", 1),
        ],
    )
    .check();
}

/// Not supported (by design, for now): dilated pooling.
#[test]
fn maxpool2d_dilation2_is_rejected() {
    pool(
        "maxpool2d_dilation2_is_rejected",
        "MaxPool",
        &[2, 3, 9, 9],
        vec![ints("kernel_shape", &[2, 2]), ints("dilations", &[2, 2])],
    )
    .unsupported("dilated pooling");
}

#[test]
fn maxpool2d_auto_pad_same_upper() {
    pool(
        "maxpool2d_auto_pad_same_upper",
        "MaxPool",
        &[2, 3, 7, 7],
        vec![
            ints("kernel_shape", &[2, 2]),
            ints("strides", &[2, 2]),
            string("auto_pad", "SAME_UPPER"),
        ],
    )
    .check();
}

#[test]
fn avgpool1d_auto_pad_same_lower() {
    pool(
        "avgpool1d_auto_pad_same_lower",
        "AveragePool",
        &[2, 3, 9],
        vec![ints("kernel_shape", &[2]), string("auto_pad", "SAME_LOWER")],
    )
    .check();
}

#[test]
fn pad_default_zero_value() {
    model("pad_default_zero_value")
        .input("x", &[2, 3, 5, 5])
        .ints("pads", &[0, 0, 2, 1, 0, 0, 0, 1])
        .node("Pad", &["x", "pads"], &["y"], vec![])
        .output("y")
        .check();
}

#[test]
fn pad_opset2_attributes() {
    model("pad_opset2_attributes")
        .opset(2)
        .input("x", &[2, 3, 5, 5])
        .node(
            "Pad",
            &["x"],
            &["y"],
            vec![
                ints("pads", &[0, 0, 1, 1, 0, 0, 1, 1]),
                float("value", 0.25),
            ],
        )
        .output("y")
        .check();
}

#[test]
fn reducemean_opset18_axes_input() {
    model("reducemean_opset18_axes_input")
        .opset(18)
        .input("x", &[2, 4, 5, 6])
        .ints("axes", &[2, 3])
        .node(
            "ReduceMean",
            &["x", "axes"],
            &["y"],
            vec![int("keepdims", 1)],
        )
        .output("y")
        .check();
}

#[test]
fn squeeze_opset11_attribute() {
    model("squeeze_opset11_attribute")
        .opset(11)
        .input("x", &[2, 1, 5, 1])
        .node("Squeeze", &["x"], &["y"], vec![ints("axes", &[1, 3])])
        .output("y")
        .check();
}

#[test]
fn unsqueeze_opset11_attribute() {
    model("unsqueeze_opset11_attribute")
        .opset(11)
        .input("x", &[2, 10])
        .node("Unsqueeze", &["x"], &["y"], vec![ints("axes", &[1, 3])])
        .output("y")
        .check();
}

#[test]
fn split_opset11_attribute_glu() {
    model("split_opset11_attribute_glu")
        .opset(11)
        .input("x", &[2, 8, 5])
        .node(
            "Split",
            &["x"],
            &["a", "b"],
            vec![int("axis", 1), ints("split", &[4, 4])],
        )
        .node("Sigmoid", &["b"], &["s"], vec![])
        .node("Mul", &["a", "s"], &["y"], vec![])
        .output("y")
        .check();
}

#[test]
fn split_unequal_three_way_concat() {
    model("split_unequal_three_way_concat")
        .input("x", &[2, 9, 4])
        .ints("split", &[2, 3, 4])
        .node(
            "Split",
            &["x", "split"],
            &["a", "b", "c"],
            vec![int("axis", 1)],
        )
        .node("Relu", &["b"], &["rb"], vec![])
        .node("Concat", &["c", "rb", "a"], &["y"], vec![int("axis", 1)])
        .output("y")
        .check();
}

#[test]
fn slice_axis1() {
    model("slice_axis1")
        .input("x", &[2, 6, 5, 5])
        .ints("starts", &[1])
        .ints("ends", &[4])
        .ints("axes", &[1])
        .node("Slice", &["x", "starts", "ends", "axes"], &["y"], vec![])
        .output("y")
        .check();
}

#[test]
fn slice_last_axis_negative_start() {
    model("slice_last_axis_negative_start")
        .input("x", &[2, 3, 10])
        .ints("starts", &[-4])
        .ints("ends", &[100])
        .ints("axes", &[-1])
        .node("Slice", &["x", "starts", "ends", "axes"], &["y"], vec![])
        .output("y")
        .check();
}

/// Ten parts: more than one runtime op takes, so lowering chains concatenations.
#[test]
fn concat_ten_parts() {
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
    let mut m = model("concat_ten_parts").input("x", &[2, 2, 3, 3]);
    for (k, n) in names.iter().enumerate() {
        m = m
            .konst(&format!("k{n}"), &[], &[k as f32 * 0.25 - 1.0])
            .node("Add", &["x", &format!("k{n}")], &[n], vec![]);
    }
    m.node("Concat", &names, &["y"], vec![int("axis", 1)])
        .output("y")
        .check();
}

#[test]
fn identity_dropout_relu() {
    model("identity_dropout_relu")
        .input("x", &[2, 4, 5])
        .node("Identity", &["x"], &["i"], vec![])
        .node("Dropout", &["i"], &["d"], vec![])
        .node("Relu", &["d"], &["y"], vec![])
        .output("y")
        .check();
}

/// A conv output (channels-last inside Kiln) after a Relu plus a `[1, C, 1, 1]` constant: the Add cannot be
/// folded into the conv, so the broadcast strides must follow the layout.
#[test]
fn conv_relu_add_const_c11() {
    model("conv_relu_add_const_c11")
        .input("x", &[2, 3, 6, 6])
        .weight("w", &[4, 3, 3, 3], 0.5)
        .weight("c", &[1, 4, 1, 1], 1.0)
        .node("Conv", &["x", "w"], &["a"], vec![])
        .node("Relu", &["a"], &["r"], vec![])
        .node("Add", &["r", "c"], &["y"], vec![])
        .output("y")
        .check();
}

#[test]
fn conv_prelu() {
    model("conv_prelu")
        .input("x", &[2, 3, 6, 6])
        .weight("w", &[4, 3, 3, 3], 0.5)
        .weight_in("slope", &[4, 1, 1], 0.05, 0.5)
        .node(
            "Conv",
            &["x", "w"],
            &["a"],
            vec![ints("pads", &[1, 1, 1, 1])],
        )
        .node("PRelu", &["a", "slope"], &["y"], vec![])
        .output("y")
        .check();
}

#[test]
fn conv_sub_input_mixed_layout() {
    model("conv_sub_input_mixed_layout")
        .input("x", &[2, 3, 6, 6])
        .input("r", &[2, 4, 6, 6])
        .weight("w", &[4, 3, 3, 3], 0.5)
        .node(
            "Conv",
            &["x", "w"],
            &["a"],
            vec![ints("pads", &[1, 1, 1, 1])],
        )
        .node("Sub", &["r", "a"], &["y"], vec![])
        .output("y")
        .check();
}

/// An NHWC view (a transposed input) added to an input that is NHWC in the model.
#[test]
fn transpose_add_input() {
    model("transpose_add_input")
        .input("x", &[2, 3, 4, 5])
        .input("r", &[2, 4, 5, 3])
        .node(
            "Transpose",
            &["x"],
            &["t"],
            vec![ints("perm", &[0, 2, 3, 1])],
        )
        .node("Add", &["t", "r"], &["y"], vec![])
        .output("y")
        .check();
}

/// The keyword-spotting shape: Conv1D over [N, C, T], then time-major features into a dense layer.
#[test]
fn chain_conv1d_transpose_matmul() {
    model("chain_conv1d_transpose_matmul")
        .input("x", &[2, 3, 10])
        .weight("w", &[6, 3, 3], 0.5)
        .weight("fw", &[6, 5], 0.5)
        .node("Conv", &["x", "w"], &["c"], vec![ints("pads", &[1, 1])])
        .node("Transpose", &["c"], &["t"], vec![ints("perm", &[0, 2, 1])])
        .node("MatMul", &["t", "fw"], &["y"], vec![])
        .output("y")
        .check();
}

#[test]
fn chain_conv_reshape_softmax_last_axis() {
    model("chain_conv_reshape_softmax_last_axis")
        .input("x", &[2, 3, 4, 4])
        .weight("w", &[5, 3, 3, 3], 1.0)
        .ints("s", &[2, 5, 16])
        .node(
            "Conv",
            &["x", "w"],
            &["c"],
            vec![ints("pads", &[1, 1, 1, 1])],
        )
        .node("Reshape", &["c", "s"], &["r"], vec![])
        .node("Softmax", &["r"], &["y"], vec![int("axis", -1)])
        .output("y")
        .tol(Tol::default().argmax(-1))
        .check();
}

#[test]
fn chain_depthwise_pointwise_relu6_gap() {
    model("chain_depthwise_pointwise_relu6_gap")
        .input("x", &[2, 4, 8, 8])
        .weight("dw", &[4, 1, 3, 3], 1.0)
        .weight("pw", &[8, 4, 1, 1], 1.0)
        .konst("lo", &[], &[0.0])
        .konst("hi", &[], &[6.0])
        .node(
            "Conv",
            &["x", "dw"],
            &["d"],
            vec![
                int("group", 4),
                ints("strides", &[2, 2]),
                ints("pads", &[1, 1, 1, 1]),
            ],
        )
        .node("Clip", &["d", "lo", "hi"], &["d6"], vec![])
        .node("Conv", &["d6", "pw"], &["p"], vec![])
        .node("Clip", &["p", "lo", "hi"], &["p6"], vec![])
        .node("GlobalAveragePool", &["p6"], &["y"], vec![])
        .output("y")
        .tol(Tol::default().scale(3.0))
        .check();
}

#[test]
fn pad_value_outside_input_range() {
    model("pad_value_outside_input_range")
        .input("x", &[2, 3, 4, 4])
        .ints("pads", &[0, 0, 1, 1, 0, 0, 1, 1])
        .konst("v", &[], &[3.0])
        .node("Pad", &["x", "pads", "v"], &["y"], vec![])
        .output("y")
        .check();
}

#[test]
fn reducemean_axes13_keepdims1() {
    reduce_mean("reducemean_axes13_keepdims1", &[2, 4, 5, 6], &[1, 3], 1).check();
}

#[test]
fn reducemean_all_but_batch_keepdims0() {
    reduce_mean(
        "reducemean_all_but_batch_keepdims0",
        &[2, 4, 5, 6],
        &[1, 2, 3],
        0,
    )
    .check();
}

#[test]
fn concat_axis0_batch() {
    model("concat_axis0_batch")
        .input("a", &[2, 3, 4])
        .input("b", &[1, 3, 4])
        .node("Concat", &["a", "b"], &["y"], vec![int("axis", 0)])
        .output("y")
        .check();
}

/// Both operands broadcast: `[N, 1, H, W] + [N, C, 1, 1]`.
#[test]
fn add_outer_broadcast() {
    binary_two("add_outer_broadcast", "Add", &[2, 1, 5, 5], &[2, 4, 1, 1]).check();
}

/// The activation has a lower rank than the constant: the output is bigger than either operand.
#[test]
fn mul_const_higher_rank() {
    binary_const(
        "mul_const_higher_rank",
        "Mul",
        &[5, 5],
        &[2, 3, 1, 1],
        false,
    )
    .check();
}

/// Spatial attention: a conv output (channels-last inside Kiln) times an `[N, 1, H, W]` input.
#[test]
fn conv_mul_spatial_gate() {
    model("conv_mul_spatial_gate")
        .input("x", &[2, 3, 6, 6])
        .input("g", &[2, 1, 6, 6])
        .weight("w", &[4, 3, 3, 3], 0.5)
        .node(
            "Conv",
            &["x", "w"],
            &["a"],
            vec![ints("pads", &[1, 1, 1, 1])],
        )
        .node("Mul", &["a", "g"], &["y"], vec![])
        .output("y")
        .check();
}

#[test]
fn matmul_rank4() {
    model("matmul_rank4")
        .input("x", &[2, 3, 4, 16])
        .weight("w", &[16, 8], 0.5)
        .node("MatMul", &["x", "w"], &["y"], vec![])
        .output("y")
        .check();
}

#[test]
fn conv2d_wide_channels() {
    conv(
        "conv2d_wide_channels",
        &[2, 16, 5, 5],
        &[32, 16, 3, 3],
        true,
        vec![ints("pads", &[1, 1, 1, 1])],
    )
    .check();
}

#[test]
fn conv2d_group2_stride2_dilation2() {
    conv(
        "conv2d_group2_stride2_dilation2",
        &[2, 4, 11, 11],
        &[6, 2, 3, 3],
        true,
        vec![
            int("group", 2),
            ints("strides", &[2, 2]),
            ints("dilations", &[2, 2]),
            ints("pads", &[2, 1, 1, 2]),
        ],
    )
    .check();
}

#[test]
fn conv2d_pads_larger_than_half_kernel() {
    conv(
        "conv2d_pads_larger_than_half_kernel",
        &[2, 3, 4, 4],
        &[4, 3, 3, 3],
        true,
        vec![ints("pads", &[2, 3, 2, 3])],
    )
    .check();
}

#[test]
fn identity_only() {
    model("identity_only")
        .input("x", &[2, 4, 5])
        .node("Identity", &["x"], &["y"], vec![])
        .output("y")
        .check();
}

// ----- fusions (passes.rs) ------------------------------------------------------------------------------------

/// ResNet's residual join: Add of two activations, then Relu (fused into the Add).
#[test]
fn add_two_inputs_then_relu() {
    model("add_two_inputs_then_relu")
        .input("a", &[2, 4, 5, 5])
        .input("b", &[2, 4, 5, 5])
        .node("Add", &["a", "b"], &["s"], vec![])
        .node("Relu", &["s"], &["y"], vec![])
        .output("y")
        .check();
}

#[test]
fn gemm_relu() {
    model("gemm_relu")
        .input("x", &[2, 16])
        .weight("w", &[8, 16], 0.5)
        .weight("c", &[8], 0.5)
        .node("Gemm", &["x", "w", "c"], &["g"], vec![int("transB", 1)])
        .node("Relu", &["g"], &["y"], vec![])
        .output("y")
        .check();
}

#[test]
fn conv_relu_clip6() {
    model("conv_relu_clip6")
        .input("x", &[2, 3, 6, 6])
        .weight("w", &[4, 3, 3, 3], 1.0)
        .konst("lo", &[], &[-1.0])
        .konst("hi", &[], &[2.0])
        .node("Conv", &["x", "w"], &["c"], vec![])
        .node("Relu", &["c"], &["r"], vec![])
        .node("Clip", &["r", "lo", "hi"], &["y"], vec![])
        .output("y")
        .check();
}

/// BatchNormalization after a Relu cannot fold into the conv (the Relu sits between them).
#[test]
fn conv_relu_batchnorm_not_folded() {
    bn_params(
        model("conv_relu_batchnorm_not_folded")
            .input("x", &[2, 3, 6, 6])
            .weight("w", &[4, 3, 3, 3], 0.5),
        4,
    )
    .node("Conv", &["x", "w"], &["c"], vec![])
    .node("Relu", &["c"], &["r"], vec![])
    .node(
        "BatchNormalization",
        &["r", "scale", "bias", "mean", "var"],
        &["y"],
        vec![],
    )
    .output("y")
    .check();
}

/// A negative per-channel scale folded into the weights, then a Relu fused: the order of the two matters.
#[test]
fn conv_mul_negative_scale_relu() {
    model("conv_mul_negative_scale_relu")
        .input("x", &[2, 3, 6, 6])
        .weight("w", &[4, 3, 3, 3], 0.5)
        .konst("k", &[4, 1, 1], &[-1.5, 0.5, -0.25, 2.0])
        .node("Conv", &["x", "w"], &["c"], vec![])
        .node("Mul", &["c", "k"], &["m"], vec![])
        .node("Relu", &["m"], &["y"], vec![])
        .output("y")
        .check();
}

/// A Conv whose output is also a graph output must not absorb the Add that follows it.
#[test]
fn conv_two_outputs_no_fold() {
    model("conv_two_outputs_no_fold")
        .input("x", &[2, 3, 6, 6])
        .weight("w", &[4, 3, 3, 3], 0.5)
        .weight("k", &[4, 1, 1], 1.0)
        .node("Conv", &["x", "w"], &["c"], vec![])
        .node("Add", &["c", "k"], &["y"], vec![])
        .output("c")
        .output("y")
        .check();
}

/// tf2onnx's shape: an NHWC graph input transposed to NCHW for the conv and back to NHWC after it.
#[test]
fn chain_nhwc_transpose_conv_transpose() {
    model("chain_nhwc_transpose_conv_transpose")
        .input("x", &[2, 6, 6, 3])
        .weight("w", &[4, 3, 3, 3], 0.5)
        .weight("b", &[4], 0.5)
        .node(
            "Transpose",
            &["x"],
            &["t"],
            vec![ints("perm", &[0, 3, 1, 2])],
        )
        .node(
            "Conv",
            &["t", "w", "b"],
            &["c"],
            vec![ints("pads", &[1, 1, 1, 1]), ints("strides", &[2, 2])],
        )
        .node("Relu", &["c"], &["r"], vec![])
        .node(
            "Transpose",
            &["r"],
            &["y"],
            vec![ints("perm", &[0, 2, 3, 1])],
        )
        .output("y")
        .check();
}

// ----- the harness itself -------------------------------------------------------------------------------------

/// A wrong kernel must fail the check: compare a model against tract results of a *different* model.
#[test]
fn harness_detects_wrong_results() {
    let mut rng = Rng::new(7);
    let e = vec![vec![rng.array(&[2, 10], 1.0)]];
    let mut g = e.clone();
    g[0][0][[1, 3]] += 0.01;
    let msg = compare_f32(&g, &e).expect("an f32 mismatch must be reported");
    assert!(msg.contains("[1, 3]"), "{msg}");
    // int8 with every value off by 10% of the range.
    let g: Vec<Vec<ArrayD<f32>>> = vec![vec![e[0][0].mapv(|v| v + 0.2)]];
    assert!(!compare_int8(&g, &e, Tol::default()).is_empty());
    assert!(compare_int8(&e, &e, Tol::default()).is_empty());
}
