//! What the `kiln` command-line tests share: running the binary, the repository root, paths as arguments.
#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs the `kiln` binary under test.
pub fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .expect("run kiln")
}

/// The repository root (bundled models and data are relative to it).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// A path as a command-line argument.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Process output as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts exit 0; returns stdout.
pub fn ok(o: &Output, what: &str) -> String {
    assert_eq!(
        o.status.code(),
        Some(0),
        "{what}\nstdout: {}\nstderr: {}",
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stdout)
}

/// A JSON file.
pub fn json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).expect("read json")).expect("parse json")
}

/// Compiles the bundled MNIST CNN to int8 (calibrated on `data/mnist_calib.npy`) with `extra` arguments into
/// `dir/NAME.kiln`; returns its path and its JSON report.
pub fn compile_mnist(dir: &Path, name: &str, extra: &[&str]) -> (PathBuf, serde_json::Value) {
    let out = dir.join(format!("{name}.kiln"));
    let report = dir.join(format!("{name}.json"));
    let model = repo().join("models/mnist_cnn.onnx");
    let calib = repo().join("data/mnist_calib.npy");
    let mut args = vec![
        "compile",
        s(&model),
        "-o",
        s(&out),
        "--calib",
        s(&calib),
        "--report",
        s(&report),
    ];
    args.extend_from_slice(extra);
    ok(&kiln(&args), name);
    (out, json(&report))
}

/// The op kinds of a model file, in order (`kiln inspect --json`).
pub fn op_kinds(model: &Path) -> Vec<String> {
    let info: serde_json::Value =
        serde_json::from_str(&ok(&kiln(&["inspect", s(model), "--json"]), "inspect"))
            .expect("json");
    info["ops"]
        .as_array()
        .expect("ops")
        .iter()
        .map(|o| o["kind"].as_str().expect("kind").to_string())
        .collect()
}
