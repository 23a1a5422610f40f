//! Mixed precision (`--keep-f32`, `--keep-f32-layer`, `--flash-budget`, `--ram-budget`) on the bundled MNIST CNN:
//! the layers kept in f32 are really f32 in the file, bring held-out outputs closer to the float model's, respect
//! the budget, and bad requests are refused with the numbers.

use std::path::Path;
use std::process::Output;

use ndarray::{ArrayD, Axis};
use ndarray_npy::{NpzReader, ReadNpyExt, WriteNpyExt};

mod common;
use common::{compile_mnist, kiln, ok, op_kinds, repo, s, text};

fn refused(o: &Output, what: &str) -> String {
    assert_eq!(
        o.status.code(),
        Some(2),
        "{what}: expected exit 2\nstdout: {}\nstderr: {}",
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stderr)
}

/// `kiln run` of `model` on `x`: its float32 outputs.
fn run(model: &Path, x: &Path, dir: &Path) -> ArrayD<f32> {
    let out = dir.join(format!(
        "{}.out.npy",
        model.file_stem().unwrap().to_string_lossy()
    ));
    ok(
        &kiln(&["run", s(model), "--input", s(x), "--output", s(&out)]),
        "run",
    );
    ArrayD::<f32>::read_npy(std::fs::File::open(&out).unwrap()).unwrap()
}

/// Mean squared difference.
fn mse(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b.iter())
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64
}

#[test]
fn kept_layers_are_f32_in_the_file_and_bring_held_out_outputs_closer_to_float() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (int8, r8) = compile_mnist(d, "int8", &[]);
    assert_eq!(r8["precision"], "int8");
    assert!(r8.get("mixed").is_none(), "no mixed section unless asked");
    // conv1 named by the user (its int8 input is dequantised, its f32 output quantised for the int8 conv2), then
    // one more layer by measurement.
    let (mixed, r) = compile_mnist(
        d,
        "mixed",
        &["--keep-f32-layer", "conv1", "--keep-f32", "1"],
    );
    assert_eq!(r["precision"], "int8+f32");
    let m = &r["mixed"];
    let kept = m["kept"].as_array().unwrap();
    assert_eq!(kept.len(), 2, "{m}");
    assert_eq!(kept[0]["op"], "conv1");
    assert_eq!(kept[0]["chosen"], "asked");
    assert_eq!(kept[1]["chosen"], "measured");
    let measured = kept[1]["op"].as_str().unwrap().to_string();
    assert_ne!(measured, "conv1");
    // Each step raised the output SQNR on the calibration data, and the file grew by the f32 weights.
    let sqnr = |f: &serde_json::Value| f["output_sqnr_db"].as_f64().unwrap();
    assert!(
        sqnr(&kept[1]["after"]) > sqnr(&kept[0]["after"]) + 0.1,
        "{m}"
    );
    assert!(sqnr(&m["mixed"]) > sqnr(&m["int8"]), "{m}");
    assert_eq!(
        m["mixed"]["file_bytes"].as_u64(),
        r["file_bytes"].as_u64(),
        "the figures are the written file's"
    );
    assert!(r["file_bytes"].as_u64() > r8["file_bytes"].as_u64());
    assert_eq!(m["int8"]["file_bytes"].as_u64(), r8["file_bytes"].as_u64());

    // The file: the kept layers run f32 kernels, with conversions at their edges; the rest stays int8.
    let kinds = op_kinds(&mixed);
    assert_eq!(kinds[0], "dequantize_s8", "{kinds:?}");
    assert_eq!(kinds[1], "conv2d_f32", "{kinds:?}");
    assert!(kinds.contains(&"quantize_s8".to_string()), "{kinds:?}");
    assert!(
        kinds.contains(&"conv2d_s8".to_string()) || measured == "conv2",
        "{kinds:?}"
    );
    assert!(
        op_kinds(&int8).iter().all(|k| k.ends_with("_s8")),
        "the plain int8 model has no f32 op"
    );
    // `kiln report` names the mix and shows the conversions in its graph.
    let page = d.join("mixed.html");
    ok(&kiln(&["report", s(&mixed), "-o", s(&page)]), "report");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("int8 + f32 model"), "report header");
    assert!(html.contains("dequantize_s8") && html.contains("conv2d_f32"));

    // Held out: 500 test digits (not the calibration set) through float, int8 and mixed models.
    let mut npz =
        NpzReader::new(std::fs::File::open(repo().join("data/mnist_test.npz")).unwrap()).unwrap();
    let x: ArrayD<f32> = npz.by_name("x").unwrap();
    let x = x.slice_axis(Axis(0), (0..500).into()).to_owned();
    let xp = d.join("x.npy");
    x.write_npy(std::fs::File::create(&xp).unwrap()).unwrap();
    let float = d.join("float.kiln");
    ok(
        &kiln(&[
            "compile",
            s(&repo().join("models/mnist_cnn.onnx")),
            "-o",
            s(&float),
            "--precision",
            "f32",
        ]),
        "f32",
    );
    let (yf, y8, ym) = (run(&float, &xp, d), run(&int8, &xp, d), run(&mixed, &xp, d));
    let (e8, em) = (mse(&yf, &y8), mse(&yf, &ym));
    eprintln!(
        "held-out output MSE against float: int8 {e8:.3e}, int8 + f32 ({measured}, conv1) {em:.3e}"
    );
    assert!(
        em < 0.8 * e8,
        "mixed output error {em:.3e} should be well below int8's {e8:.3e}"
    );
}

#[test]
fn the_budget_decides_what_stays_int8_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, free) = compile_mnist(d, "free", &["--keep-f32", "3"]);
    let kept = free["mixed"]["kept"].as_array().unwrap();
    assert!(!kept.is_empty());
    let int8_file = free["mixed"]["int8"]["file_bytes"].as_u64().unwrap();
    let int8_arena = free["mixed"]["int8"]["arena_bytes"].as_u64().unwrap();
    let first = &kept[0];
    let (first_file, first_arena) = (
        first["after"]["file_bytes"].as_u64().unwrap(),
        first["after"]["arena_bytes"].as_u64().unwrap(),
    );
    assert!(first_file > int8_file || first_arena > int8_arena);

    // A budget just below what the unconstrained first choice needs: it is left int8 and listed as over budget.
    let (flash, ram) = if first_file > int8_file {
        (first_file - 1, u64::MAX / 4)
    } else {
        (u64::MAX / 4, first_arena - 1)
    };
    let (flash_s, ram_s) = (flash.to_string(), ram.to_string());
    let (model, tight) = compile_mnist(
        d,
        "tight",
        &[
            "--keep-f32",
            "3",
            "--flash-budget",
            &flash_s,
            "--ram-budget",
            &ram_s,
        ],
    );
    let m = &tight["mixed"];
    assert_eq!(m["budget"]["max_file_bytes"].as_u64(), Some(flash));
    let over: Vec<&str> = m["over_budget"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["op"].as_str().unwrap())
        .collect();
    assert!(over.contains(&first["op"].as_str().unwrap()), "{m}");
    for k in m["kept"].as_array().unwrap() {
        assert_ne!(k["op"], first["op"]);
        assert!(k["after"]["file_bytes"].as_u64().unwrap() <= flash);
        assert!(k["after"]["arena_bytes"].as_u64().unwrap() <= ram);
    }
    assert!(std::fs::metadata(&model).unwrap().len() <= flash);
    assert!(tight["arena_bytes"].as_u64().unwrap() <= ram);
}

#[test]
fn impossible_requests_are_refused_with_the_numbers_and_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = d.join("never.kiln");
    let model = repo().join("models/mnist_cnn.onnx");
    let calib = repo().join("data/mnist_calib.npy");
    let base = ["compile", s(&model), "-o", s(&out), "--calib", s(&calib)];
    let with = |extra: &[&str]| {
        let mut a = base.to_vec();
        a.extend_from_slice(extra);
        kiln(&a)
    };
    let err = refused(
        &with(&["--keep-f32-layer", "fc", "--flash-budget", "10K"]),
        "named layer over budget",
    );
    assert!(
        err.contains("keeping fc in f32 needs a") && err.contains("model file <= 10240 B"),
        "{err}"
    );
    let err = refused(&with(&["--keep-f32-layer", "conv9"]), "unknown layer");
    assert!(
        err.contains("'conv9'") && err.contains("conv1, conv2, fc"),
        "{err}"
    );
    let err = refused(&with(&["--ram-budget", "64K"]), "budget alone");
    assert!(err.contains("--keep-f32"), "{err}");
    let err = refused(
        &kiln(&[
            "compile",
            s(&model),
            "-o",
            s(&out),
            "--precision",
            "f32",
            "--keep-f32",
            "1",
        ]),
        "f32 model",
    );
    assert!(err.contains("every layer already is"), "{err}");
    let err = refused(
        &with(&["--keep-f32", "1", "--flash-budget", "12Q"]),
        "bad size",
    );
    assert!(err.contains("expected bytes"), "{err}");
    assert!(!out.exists(), "nothing written");
}

#[test]
fn a_constant_read_by_f32_and_int8_layers_is_stored_at_both_precisions() {
    // y = ((x + c) * c) + c with the first Add kept in f32: `c` is read by an f32 op and two int8 ops, so the
    // file holds it once as f32 and once as int8; the Mul reads the Add's f32 output through a QuantizeS8.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let c: Vec<f32> = (0..8).map(|i| 0.25 * i as f32 - 1.0).collect();
    let onnx = d.join("chain.onnx");
    kiln_tests::onnx::OnnxBuilder::new(13)
        .input("x", &[1, 8])
        .initializer("c", &[8], &c)
        .node("Add", &["x", "c"], &["add1"], vec![])
        .node("Mul", &["add1", "c"], &["mul"], vec![])
        .node("Add", &["mul", "c"], &["y"], vec![])
        .output("y", &[1, 8])
        .write(&onnx)
        .unwrap();
    let x = ndarray::Array::from_shape_fn((64, 1, 8), |(n, _, i)| {
        ((n * 7 + i * 3) % 17) as f32 / 8.0 - 1.0
    })
    .into_dyn();
    let xp = d.join("x.npy");
    x.write_npy(std::fs::File::create(&xp).unwrap()).unwrap();
    let compile = |name: &str, extra: &[&str]| {
        let out = d.join(format!("{name}.kiln"));
        let mut args = vec!["compile", s(&onnx), "-o", s(&out)];
        args.extend_from_slice(extra);
        ok(&kiln(&args), name);
        out
    };
    let float = compile("float", &["--precision", "f32"]);
    let int8 = compile("int8", &["--calib", s(&xp)]);
    let mixed = compile("mixed", &["--calib", s(&xp), "--keep-f32-layer", "add1"]);
    assert_eq!(
        op_kinds(&mixed),
        [
            "dequantize_s8",
            "binary_f32",
            "quantize_s8",
            "binary_s8",
            "binary_s8"
        ]
    );
    let (yf, y8, ym) = (run(&float, &xp, d), run(&int8, &xp, d), run(&mixed, &xp, d));
    let (e8, em) = (mse(&yf, &y8), mse(&yf, &ym));
    // The int8 ops downstream still quantise; the mixed model is no worse than int8 (within rounding noise).
    assert!(em <= 1.2 * e8, "mixed {em:.3e} vs int8 {e8:.3e}");
    let worst = yf
        .iter()
        .zip(ym.iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let range = yf.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(worst < range / 32.0, "max error {worst} of range {range}");
}
