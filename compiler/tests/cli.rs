//! The `kiln` command line as scripts use it: exit codes, messages, nothing written on failure, batching, and
//! corrupted models refused.

use std::path::{Path, PathBuf};
use std::process::Output;

use ndarray::{ArrayD, Axis, IxDyn};
use ndarray_npy::{ReadNpyExt, WriteNpyExt};

mod common;
use common::{kiln, repo, s};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_exit(o: &Output, code: i32, what: &str) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "{what}: expected exit {code}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        stderr(o)
    );
    if code != 0 {
        let e = stderr(o);
        assert!(
            !e.contains("panicked") && !e.contains("RUST_BACKTRACE"),
            "{what}: a panic leaked: {e}"
        );
    }
}

fn read(p: &Path) -> ArrayD<f32> {
    ArrayD::<f32>::read_npy(std::fs::File::open(p).expect("open npy")).expect("read npy")
}

fn write(p: &Path, a: &ArrayD<f32>) {
    a.write_npy(std::fs::File::create(p).expect("create npy"))
        .expect("write npy");
}

/// The bundled MNIST CNN compiled to int8 once per test (small and quick).
fn compiled(dir: &Path) -> PathBuf {
    let out = dir.join("mnist.kiln");
    let model = repo().join("models/mnist_cnn.onnx");
    let calib = repo().join("data/mnist_calib.npy");
    let o = kiln(&["compile", s(&model), "-o", s(&out), "--calib", s(&calib)]);
    assert_exit(&o, 0, "compile");
    out
}

/// `n` MNIST-shaped inputs, `[n, 1, 1, 28, 28]` (N prepended to the input shape), deterministic.
fn inputs(n: usize) -> ArrayD<f32> {
    let mut seed = 7u32;
    ArrayD::from_shape_fn(IxDyn(&[n, 1, 1, 28, 28]), |_| {
        seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
        (seed >> 8) as f32 / (1u32 << 24) as f32
    })
}

#[test]
fn int8_without_calibration_is_refused_with_what_to_pass() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.kiln");
    let model = repo().join("models/mnist_cnn.onnx");
    let o = kiln(&["compile", s(&model), "-o", s(&out)]);
    assert_exit(&o, 2, "int8 without --calib");
    assert!(
        stderr(&o).contains("--calib"),
        "message should say what to pass: {}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("mnist_cnn.onnx"),
        "message should name the file: {}",
        stderr(&o)
    );
    assert!(!out.exists(), "nothing may be written on failure");
}

#[test]
fn unreadable_inputs_exit_2_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.onnx");
    let o = kiln(&[
        "compile",
        s(&missing),
        "-o",
        s(&dir.path().join("x.kiln")),
        "--precision",
        "f32",
    ]);
    assert_exit(&o, 2, "missing model");
    assert!(stderr(&o).contains("missing.onnx"), "{}", stderr(&o));

    let garbage = dir.path().join("garbage.onnx");
    std::fs::write(&garbage, b"this is not a protobuf at all \xff\xff\xff").unwrap();
    let o = kiln(&[
        "compile",
        s(&garbage),
        "-o",
        s(&dir.path().join("x.kiln")),
        "--precision",
        "f32",
    ]);
    assert_exit(&o, 2, "garbage model");
    assert!(stderr(&o).contains("garbage.onnx"), "{}", stderr(&o));

    let o = kiln(&["inspect", s(&garbage)]);
    assert_exit(&o, 2, "inspect garbage");
    assert!(stderr(&o).contains("garbage.onnx"), "{}", stderr(&o));
}

#[test]
fn run_matches_reference_and_batches_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let m = compiled(dir.path());
    let onnx = repo().join("models/mnist_cnn.onnx");
    let x = inputs(6);
    let x_path = dir.path().join("x.npy");
    write(&x_path, &x);

    // [N] + input shape: N inferences, stacked on a new axis.
    let y_path = dir.path().join("y.npy");
    assert_exit(
        &kiln(&["run", s(&m), "--input", s(&x_path), "--output", s(&y_path)]),
        0,
        "run",
    );
    let y = read(&y_path);
    assert_eq!(y.shape(), &[6, 1, 10]);

    // Leading axis replaced by N (the model's batch is 1): same numbers, shape [N, 10].
    let flat = x
        .clone()
        .into_shape_with_order(IxDyn(&[6, 1, 28, 28]))
        .unwrap();
    let x2 = dir.path().join("x2.npy");
    write(&x2, &flat);
    let y2_path = dir.path().join("y2.npy");
    assert_exit(
        &kiln(&["run", s(&m), "--input", s(&x2), "--output", s(&y2_path)]),
        0,
        "run leading",
    );
    let y2 = read(&y2_path);
    assert_eq!(y2.shape(), &[6, 10]);
    assert_eq!(
        y2.as_slice().unwrap(),
        y.as_standard_layout().as_slice().unwrap(),
        "same inferences, same outputs"
    );

    // One inference at the model's own shape.
    let one = dir.path().join("one.npy");
    write(&one, &x.index_axis(Axis(0), 3).to_owned());
    let y1_path = dir.path().join("y1.npy");
    assert_exit(
        &kiln(&["run", s(&m), "--input", s(&one), "--output", s(&y1_path)]),
        0,
        "run single",
    );
    assert_eq!(read(&y1_path), y.index_axis(Axis(0), 3).to_owned());

    // The int8 model agrees with tract's float on the top class for these inputs.
    let r_path = dir.path().join("r.npy");
    assert_exit(
        &kiln(&[
            "reference",
            s(&onnx),
            "--input",
            s(&x_path),
            "--output",
            s(&r_path),
        ]),
        0,
        "reference",
    );
    let r = read(&r_path);
    assert_eq!(r.shape(), y.shape());
    let argmax = |v: ndarray::ArrayViewD<f32>| {
        v.iter()
            .enumerate()
            .fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b })
            .0
    };
    for i in 0..6 {
        assert_eq!(
            argmax(y.index_axis(Axis(0), i)),
            argmax(r.index_axis(Axis(0), i)),
            "sample {i}"
        );
    }
}

#[test]
fn wrong_shape_is_refused_and_existing_output_survives() {
    let dir = tempfile::tempdir().unwrap();
    let m = compiled(dir.path());
    let bad = dir.path().join("bad.npy");
    write(&bad, &ArrayD::zeros(IxDyn(&[1, 3, 28, 28])));
    let y = dir.path().join("y.npy");
    std::fs::write(&y, b"precious").unwrap();
    let o = kiln(&["run", s(&m), "--input", s(&bad), "--output", s(&y)]);
    assert_exit(&o, 2, "wrong shape");
    assert!(
        stderr(&o).contains("bad.npy") && stderr(&o).contains("[1, 3, 28, 28]"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        std::fs::read(&y).unwrap(),
        b"precious",
        "a failed run must not touch the output"
    );

    let o = kiln(&[
        "run",
        s(&m),
        "--input",
        s(&bad),
        "--input",
        s(&bad),
        "--output",
        s(&y),
    ]);
    assert_exit(&o, 2, "too many inputs");
}

#[test]
fn corrupted_truncated_or_extended_models_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = compiled(dir.path());
    let good = std::fs::read(&m).unwrap();
    let x = dir.path().join("x.npy");
    write(&x, &inputs(1).index_axis(Axis(0), 0).to_owned());
    let y = dir.path().join("y.npy");
    let bad = dir.path().join("bad.kiln");
    let mut seed = 99u64;
    let mut rnd = |m: usize| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 33) as usize) % m
    };
    for case in 0..60 {
        let mut b = good.clone();
        let what = match case % 3 {
            0 => {
                let at = rnd(b.len());
                b[at] ^= 1 + rnd(255) as u8;
                format!("byte {at} changed")
            }
            1 => {
                let n = rnd(b.len());
                b.truncate(n);
                format!("truncated to {n} bytes")
            }
            _ => {
                b.extend((0..1 + rnd(16)).map(|_| rnd(256) as u8));
                "bytes appended".to_string()
            }
        };
        std::fs::write(&bad, &b).unwrap();
        let cmd = if case % 2 == 0 {
            vec!["inspect", s(&bad)]
        } else {
            vec!["run", s(&bad), "--input", s(&x), "--output", s(&y)]
        };
        let o = kiln(&cmd);
        assert_exit(&o, 2, &format!("model with {what}"));
        let e = stderr(&o);
        assert!(
            e.contains("bad.kiln") && e.contains("invalid model"),
            "{what}: {e}"
        );
        assert!(!y.exists(), "{what}: no output may be written");
    }
}

#[test]
fn inspect_json_and_report_describe_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.kiln");
    let report = dir.path().join("report.json");
    let model = repo().join("models/mnist_cnn.onnx");
    let calib = repo().join("data/mnist_calib.npy");
    let o = kiln(&[
        "compile",
        s(&model),
        "-o",
        s(&out),
        "--calib",
        s(&calib),
        "--report",
        s(&report),
    ]);
    assert_exit(&o, 0, "compile with report");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let a = &r["agreement"];
    assert_eq!(a["samples"], 200);
    assert!(a["top1"].as_f64().unwrap() >= 0.97, "{a}");
    assert!(a["sqnr_db"].as_f64().unwrap() > 15.0, "{a}");
    assert!(!a["per_layer"].as_array().unwrap().is_empty());
    assert_eq!(
        r["file_bytes"].as_u64().unwrap(),
        std::fs::metadata(&out).unwrap().len()
    );

    let o = kiln(&["inspect", s(&out), "--json"]);
    assert_exit(&o, 0, "inspect --json");
    let i: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(i["format_version"], kiln_runtime::format::FORMAT_VERSION);
    assert_eq!(i["arena_bytes"], r["arena_bytes"]);
    assert_eq!(i["macs"], r["macs"]);
    assert_eq!(i["checksum"], r["checksum"]);
    let kinds: Vec<&str> = i["ops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"conv2d_s8") && kinds.contains(&"fully_connected_s8"),
        "{kinds:?}"
    );
    // The convs and the dense layer run the dot-product kernel (one group, patches of 9 and 72 elements), the
    // max pools the fast pool kernel.
    let kernels: Vec<(&str, &str)> = i["ops"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| Some((o["kind"].as_str()?, o["kernel"].as_str()?)))
        .collect();
    assert_eq!(
        kernels,
        [
            ("conv2d_s8", "dot"),
            ("max_pool_s8", "fast"),
            ("conv2d_s8", "dot"),
            ("max_pool_s8", "fast"),
            ("fully_connected_s8", "dot")
        ]
    );
    // BatchNorm was folded and the Relus fused: no op of their own. The NCHW model runs channels-last, and the
    // flatten before the dense layer moves no data: its weights take the features in memory order.
    assert_eq!(
        kinds,
        [
            "conv2d_s8",
            "max_pool_s8",
            "conv2d_s8",
            "max_pool_s8",
            "fully_connected_s8"
        ]
    );
    assert!(
        !kinds.contains(&"binary_s8") && !kinds.contains(&"lookup_s8"),
        "{kinds:?}"
    );

    let o = kiln(&["inspect", s(&out)]);
    assert_exit(&o, 0, "inspect");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("arena") && text.contains("conv2d_s8"),
        "{text}"
    );
}

#[test]
fn unsupported_model_lists_every_node_and_exits_2() {
    use kiln_tests::onnx::OnnxBuilder;
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("odd.onnx");
    OnnxBuilder::new(13)
        .input("x", &[1, 4])
        .named_node("first_odd", "Hardmax", &["x"], &["a"], vec![])
        .named_node("fine", "Relu", &["a"], &["b"], vec![])
        .named_node("second_odd", "Erf", &["b"], &["y"], vec![])
        .output("y", &[1, 4])
        .write(&model)
        .unwrap();
    let out = dir.path().join("odd.kiln");
    let o = kiln(&["compile", s(&model), "-o", s(&out), "--precision", "f32"]);
    assert_exit(&o, 2, "unsupported ops");
    let e = stderr(&o);
    assert!(e.contains("odd.onnx"), "{e}");
    assert!(e.contains("first_odd") && e.contains("Hardmax"), "{e}");
    assert!(e.contains("second_odd") && e.contains("Erf"), "{e}");
    assert!(!e.contains("'fine'"), "{e}");
    assert!(!out.exists());
}
