//! Structured pruning: the least-squares solver, real shrinkage of the bundled MNIST CNN (read back from the
//! `.kiln` file), its accuracy on held-out digits, `--prune-budget`, and refused arguments.

use std::path::Path;

use kiln_compiler::prune::{ridge, solve_spd};

mod common;
use common::{compile_mnist, kiln, ok, repo, s};

/// `kiln eval` top-1 in percent.
fn accuracy(model: &Path) -> f64 {
    let data = repo().join("data/mnist_test.npz");
    let out = ok(&kiln(&["eval", s(model), "--data", s(&data)]), "eval");
    let pct = out
        .split("accuracy ")
        .nth(1)
        .and_then(|r| r.split('%').next())
        .expect("accuracy in eval output");
    pct.parse().expect("a number")
}

#[test]
fn cholesky_solves_a_known_system() {
    // A = M^T M + I (symmetric positive definite), X known, B = A X.
    let n = 6;
    let m = 2;
    let mut seed = 3u32;
    let mut rnd = || {
        seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
        (seed >> 8) as f64 / (1u32 << 24) as f64 - 0.5
    };
    let mm: Vec<f64> = (0..n * n).map(|_| rnd()).collect();
    let mut a = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..n {
            a[i * n + j] = (0..n).map(|k| mm[k * n + i] * mm[k * n + j]).sum::<f64>();
        }
        a[i * n + i] += 1.0;
    }
    let x: Vec<f64> = (0..n * m).map(|_| rnd() * 10.0).collect();
    let b: Vec<f64> = (0..n)
        .flat_map(|i| (0..m).map(move |c| (i, c)))
        .map(|(i, c)| (0..n).map(|k| a[i * n + k] * x[k * m + c]).sum())
        .collect();
    let mut got = b.clone();
    solve_spd(&mut a.clone(), n, &mut got, m).expect("positive definite");
    for (g, e) in got.iter().zip(&x) {
        assert!((g - e).abs() < 1e-9, "solve: {g} vs {e}");
    }
    // A ridge with lambda 0 is the plain solve; a huge lambda returns the prior.
    let plain = ridge(a.clone(), b.clone(), n, m, 0.0, &vec![0.0; n * m]).expect("solve");
    assert!(plain.iter().zip(&x).all(|(g, e)| (g - e).abs() < 1e-9));
    let prior: Vec<f64> = (0..n * m).map(|i| i as f64).collect();
    let shrunk = ridge(a.clone(), b, n, m, 1e12, &prior).expect("solve");
    assert!(shrunk.iter().zip(&prior).all(|(g, e)| (g - e).abs() < 1e-6));
    // Not positive definite: refused, not a wrong answer.
    let mut singular = vec![1.0, 2.0, 2.0, 4.0];
    assert!(solve_spd(&mut singular, 2, &mut [1.0, 1.0], 1).is_none());
}

#[test]
fn pruning_mnist_removes_a_quarter_of_macs_and_weights_and_keeps_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    let (base, base_r) = compile_mnist(dir.path(), "base", &[]);
    let (pruned, r) = compile_mnist(dir.path(), "pruned", &["--prune", "0.3"]);
    let macs = |r: &serde_json::Value| r["macs"].as_u64().expect("macs") as f64;
    let weights = |r: &serde_json::Value| r["weight_bytes"].as_u64().expect("weight_bytes") as f64;
    assert!(
        macs(&r) <= 0.75 * macs(&base_r),
        "MACs {} vs {}",
        macs(&r),
        macs(&base_r)
    );
    assert!(
        weights(&r) <= 0.75 * weights(&base_r),
        "weights {} vs {}",
        weights(&r),
        weights(&base_r)
    );
    let p = &r["pruning"];
    assert_eq!(p["before"]["macs"].as_u64(), base_r["macs"].as_u64());
    assert_eq!(
        p["before"]["weight_bytes"].as_u64(),
        base_r["weight_bytes"].as_u64()
    );
    assert_eq!(p["after"]["macs"].as_u64(), r["macs"].as_u64());
    // conv1 (8 filters) loses round(0.3 * 8) = 2, conv2 (16) loses 5; fc is the output and keeps its 10.
    let layer = |name: &str| {
        p["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .find(|l| l["name"] == name)
            .unwrap_or_else(|| panic!("layer {name}"))
            .clone()
    };
    assert_eq!(layer("conv1")["out_channels"], serde_json::json!([8, 6]));
    assert_eq!(layer("conv2")["in_channels"], serde_json::json!([8, 6]));
    assert_eq!(layer("conv2")["out_channels"], serde_json::json!([16, 11]));
    assert_eq!(layer("fc")["in_channels"], serde_json::json!([784, 539]));
    assert_eq!(
        layer("conv1")["removed_outputs"].as_array().map(Vec::len),
        Some(2)
    );

    // The file itself: the tensors between the layers are narrower.
    let inspect = |m: &Path| -> serde_json::Value {
        serde_json::from_str(&ok(&kiln(&["inspect", s(m), "--json"]), "inspect"))
            .expect("inspect json")
    };
    // Intermediate tensors carry no names in the file: compare the set of shapes.
    let shapes = |info: &serde_json::Value| -> Vec<serde_json::Value> {
        info["tensors"]
            .as_array()
            .expect("tensors")
            .iter()
            .map(|t| t["shape"].clone())
            .collect()
    };
    let (bi, pi) = (inspect(&base), inspect(&pruned));
    let (bs, ps) = (shapes(&bi), shapes(&pi));
    assert!(bs.contains(&serde_json::json!([1, 8, 14, 14])), "{bs:?}");
    assert!(bs.contains(&serde_json::json!([1, 16, 7, 7])), "{bs:?}");
    assert!(ps.contains(&serde_json::json!([1, 6, 14, 14])), "{ps:?}");
    assert!(ps.contains(&serde_json::json!([1, 11, 7, 7])), "{ps:?}");
    assert!(!ps.contains(&serde_json::json!([1, 8, 14, 14])), "{ps:?}");
    assert!(pi["arena_bytes"].as_u64() < bi["arena_bytes"].as_u64());
    assert_eq!(pi["macs"].as_u64(), r["macs"].as_u64());

    // Held-out digits (not the calibration ones): measured 98.10% before, see docs/BENCHMARKS.md.
    let (a0, a1) = (accuracy(&base), accuracy(&pruned));
    assert!(a1 >= a0 - 1.5, "pruned top-1 {a1}% vs {a0}%");
}

#[test]
fn prune_budget_finds_a_fraction_within_budget() {
    let dir = tempfile::tempdir().unwrap();
    let data = repo().join("data/mnist_test.npz");
    let (model, r) = compile_mnist(
        dir.path(),
        "budget",
        &["--prune-budget", "1.0", "--eval", s(&data)],
    );
    let p = &r["pruning"];
    let probes = p["search"].as_array().expect("probes");
    assert!(probes.len() >= 2, "{probes:?}");
    let base = probes[0]["accuracy"].as_f64().expect("accuracy");
    assert_eq!(probes[0]["fraction"].as_f64(), Some(0.0));
    let chosen = p["fraction"].as_f64().expect("fraction");
    let probe = probes
        .iter()
        .find(|q| q["fraction"].as_f64() == Some(chosen))
        .expect("the chosen fraction was probed");
    assert_eq!(probe["within_budget"], true);
    assert!(chosen > 0.0, "no pruning within 1 point: {probes:?}");
    // No probe within budget was passed over for a smaller one.
    for q in probes {
        if q["within_budget"] == true {
            assert!(q["fraction"].as_f64().unwrap_or(0.0) <= chosen);
        }
    }
    let a = accuracy(&model);
    assert!(
        a >= base * 100.0 - 1.0 - 1e-9,
        "{a}% vs unpruned {}%",
        base * 100.0
    );
}

#[test]
fn bad_prune_arguments_exit_2_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.kiln");
    let model = repo().join("models/mnist_cnn.onnx");
    let calib = repo().join("data/mnist_calib.npy");
    let data = repo().join("data/mnist_test.npz");
    // `kiln compile SOURCE -o OUT [--calib CALIB] EXTRA...`: exit 2, nothing written; its stderr.
    let refused = |source: &Path, calibrated: bool, extra: &[&str]| {
        let mut args = vec!["compile", s(source), "-o", s(&out)];
        if calibrated {
            args.extend(["--calib", s(&calib)]);
        }
        args.extend_from_slice(extra);
        let o = kiln(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(!out.exists(), "{args:?}: nothing written");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let e = refused(&model, true, &["--prune", "1.5"]);
    assert!(
        e.contains("--prune 1.5") && e.contains("between 0 and 0.75"),
        "{e}"
    );
    let e = refused(&model, false, &["--precision", "f32", "--prune", "0.3"]);
    assert!(e.contains("--prune needs calibration data"), "{e}");

    // --prune-budget needs --eval; the two pruning flags exclude each other.
    let e = refused(&model, true, &["--prune-budget", "1"]);
    assert!(e.contains("--eval"), "{e}");
    refused(
        &model,
        true,
        &["--prune", "0.3", "--prune-budget", "1", "--eval", s(&data)],
    );
    let e = refused(&model, true, &["--prune-budget=-1", "--eval", s(&data)]);
    assert!(e.contains("--prune-budget -1"), "{e}");

    // An already-quantised (QDQ) model: its scales belong to its channels.
    let qdq = repo().join("models/mnist_cnn_qdq.onnx");
    let e = refused(&qdq, true, &["--prune", "0.3"]);
    assert!(e.contains("already quantised"), "{e}");
}

/// Deterministic values in [-0.5, 0.5).
fn noise(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1664525).wrapping_add(1013904223);
            (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

#[test]
fn residual_and_depthwise_channels_are_pruned_jointly() {
    use kiln_compiler::compile::{compile_graph, CalibMethod, Options};
    use kiln_compiler::emit::Precision;
    use kiln_tests::onnx::{attr, OnnxBuilder};
    use ndarray_npy::WriteNpyExt;

    // a: Conv 3->8, Relu; b: Conv 8->8 on a's output; Add(a, b), Relu; depthwise 3x3 on the sum; c: Conv 8->4 1x1;
    // global average pool, flatten, Gemm 4->3 (the output).
    let pad = || vec![attr::ints("pads", &[1, 1, 1, 1])];
    let b = OnnxBuilder::new(13)
        .input("x", &[1, 3, 8, 8])
        .initializer("wa", &[8, 3, 3, 3], &noise(8 * 27, 1))
        .initializer("ba", &[8], &noise(8, 2))
        .initializer("wb", &[8, 8, 3, 3], &noise(8 * 72, 3))
        .initializer("wd", &[8, 1, 3, 3], &noise(72, 4))
        .initializer("wc", &[4, 8, 1, 1], &noise(32, 5))
        .initializer("wg", &[4, 3], &noise(12, 6))
        .initializer("bg", &[3], &noise(3, 7))
        .node("Conv", &["x", "wa", "ba"], &["a"], pad())
        .node("Relu", &["a"], &["ar"], vec![])
        .node("Conv", &["ar", "wb"], &["b"], pad())
        .node("Add", &["ar", "b"], &["s"], vec![])
        .node("Relu", &["s"], &["sr"], vec![])
        .node("Conv", &["sr", "wd"], &["d"], {
            let mut a = pad();
            a.push(attr::int("group", 8));
            a
        })
        .node("Conv", &["d", "wc"], &["c"], vec![])
        .node("GlobalAveragePool", &["c"], &["p"], vec![])
        .node("Flatten", &["p"], &["f"], vec![attr::int("axis", 1)])
        .node("Gemm", &["f", "wg", "bg"], &["y"], vec![])
        .output_unshaped("y");
    let (dir, path) = b.write_temp().expect("write model");
    let calib = dir.path().join("calib.npy");
    let x =
        ndarray::ArrayD::from_shape_vec(vec![16, 1, 3, 8, 8], noise(16 * 192, 8)).expect("shape");
    x.write_npy(std::fs::File::create(&calib).expect("create"))
        .expect("write npy");

    let mut g = kiln_compiler::import::import_onnx(&path).expect("import");
    kiln_compiler::passes::optimize(&mut g);
    let opts = Options {
        precision: Precision::F32,
        calib: Some(calib),
        method: CalibMethod::MinMax,
        keep_f32: Default::default(),
    };
    let c = compile_graph(&path, g, &opts, Some(0.5)).expect("compile pruned");
    let p = c.report.pruning.as_ref().expect("pruning report");
    // The 8 channels of a, b, the Add and the depthwise conv are one group; c's 4 reach the Gemm (the output's
    // writer, kept) through the pool and flatten.
    let coupled: Vec<_> = p.groups.iter().filter(|g| g.coupled).collect();
    assert_eq!(coupled.len(), 1, "{:?}", p.groups);
    assert_eq!(coupled[0].channels, 8);
    assert_eq!(coupled[0].removed.len(), 4);
    assert_eq!(coupled[0].producers.len(), 2);
    assert_eq!(p.groups.len(), 2, "{:?}", p.groups);
    let layer = |i: usize| &p.layers[i];
    assert_eq!(
        (
            layer(0).out_channels,
            layer(1).in_channels,
            layer(1).out_channels
        ),
        ([8, 4], [8, 4], [8, 4])
    );
    assert_eq!(
        (layer(2).in_channels, layer(2).out_channels),
        ([8, 4], [8, 4]),
        "depthwise"
    );
    assert_eq!(
        (layer(3).in_channels, layer(3).out_channels),
        ([8, 4], [4, 2])
    );
    assert_eq!(
        (layer(4).in_channels, layer(4).out_channels),
        ([4, 2], [3, 3])
    );
    assert!(
        p.after.macs < p.before.macs / 2,
        "{} vs {}",
        p.after.macs,
        p.before.macs
    );
    assert!(p.after.weight_bytes < p.before.weight_bytes / 2);
    // The pruned model loads and runs.
    let buf = kiln_compiler::runner::ModelBuf::new(&c.bytes);
    let m = buf.model().expect("model");
    let mut r = kiln_compiler::runner::Runner::new(&m);
    let y = r
        .run(
            &[ndarray::ArrayD::from_shape_vec(vec![1, 3, 8, 8], noise(192, 9)).expect("shape")],
            |_| {},
        )
        .expect("run");
    assert_eq!(y[0].shape(), &[1, 3]);
    assert!(y[0].iter().all(|v| v.is_finite()));
}
