//! Models on (emulated) microcontrollers: `kiln run --board` under QEMU gives bit-identical outputs to `kiln run`
//! on the host, its telemetry decodes with plausible figures, the fit check refuses what a board cannot hold,
//! the real boards' firmware builds, and the firmware's own log is pinned by snapshots (defmt's QEMU-test style:
//! expected output files in `tests/snapshots/`, diffed; `UPDATE_SNAPSHOTS=1` rewrites them).
//!
//! These need `qemu-system-arm` and a Cortex-M Rust toolchain (`scripts/test.sh` installs both); without them
//! they fail and say how to get them. The KWS tests read the MLPerf Tiny model from `../shared/models` and say
//! so when it is absent.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ndarray::{ArrayD, Axis};
use ndarray_npy::{NpzReader, WriteNpyExt};
use serde_json::Value;

mod common;
use common::{kiln, repo, s, text};

fn assert_exit(o: &Output, code: i32, what: &str) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "{what}: expected exit {code}\nstdout: {}\nstderr: {}",
        text(&o.stdout),
        text(&o.stderr)
    );
}

/// QEMU must be there: a missing tool fails the test with the way to install it, it never skips.
fn require_qemu() {
    let ok = Command::new("qemu-system-arm")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "qemu-system-arm is not installed: apt-get install qemu-system-arm (scripts/test.sh does it)"
    );
}

/// The first `n` samples of `key` in an .npz, written as one stacked .npy.
fn npz_slice(npz: &Path, key: &str, n: usize, out: &Path) -> ArrayD<f32> {
    let mut r = NpzReader::new(std::fs::File::open(npz).unwrap()).unwrap();
    let x: ArrayD<f32> = r
        .by_name(key)
        .or_else(|_| r.by_name(&format!("{key}.npy")))
        .unwrap();
    let x = x.slice_axis(Axis(0), (0..n).into()).to_owned();
    x.write_npy(std::fs::File::create(out).unwrap()).unwrap();
    x
}

fn compile_mnist(dir: &Path) -> PathBuf {
    let out = dir.join("mnist.kiln");
    let o = kiln(&[
        "compile",
        s(&repo().join("models/mnist_cnn.onnx")),
        "-o",
        s(&out),
        "--calib",
        s(&repo().join("data/mnist_calib.npy")),
    ]);
    assert_exit(&o, 0, "compile MNIST");
    out
}

fn inspect(model: &Path) -> Value {
    let o = kiln(&["inspect", s(model), "--json"]);
    assert_exit(&o, 0, "inspect");
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Runs `x` through `model` on the host and on `board`; asserts the output files are byte-identical and the
/// telemetry is whole and plausible. Returns the telemetry frames.
fn host_vs_board(dir: &Path, model: &Path, x: &Path, n: usize, board: &str) -> Vec<Value> {
    let host = dir.join(format!("host-{board}.npy"));
    assert_exit(
        &kiln(&["run", s(model), "--input", s(x), "--output", s(&host)]),
        0,
        "host run",
    );
    let on_board = dir.join(format!("board-{board}.npy"));
    let telemetry = dir.join(format!("{board}.jsonl"));
    let log = dir.join(format!("{board}.log"));
    let o = kiln(&[
        "run",
        s(model),
        "--board",
        board,
        "--input",
        s(x),
        "--output",
        s(&on_board),
        "--telemetry",
        s(&telemetry),
        "--log",
        s(&log),
        "--per-op",
    ]);
    assert_exit(&o, 0, &format!("run on {board}"));
    let err = text(&o.stderr);
    assert!(err.contains(&format!("{n} inferences on {board}")), "{err}");
    assert!(err.contains("fits"), "the fit table is shown: {err}");

    // Bit-identical: the same float32 .npy bytes (the same int8 outputs, dequantised the same way).
    let (a, b) = (
        std::fs::read(&host).unwrap(),
        std::fs::read(&on_board).unwrap(),
    );
    assert!(a == b, "{board}: outputs differ from the host's");

    let info = inspect(model);
    let arena = info["arena_bytes"].as_u64().unwrap();
    let macs = info["macs"].as_u64().unwrap();
    let ops = info["ops"].as_array().unwrap().len();
    let frames: Vec<Value> = std::fs::read_to_string(&telemetry)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let hello: Vec<&Value> = frames.iter().filter(|f| f["type"] == "hello").collect();
    assert_eq!(hello.len(), 1, "one hello");
    assert_eq!(
        hello[0]["model_id"],
        format!("0x{}", info["checksum"].as_str().unwrap()),
        "the board runs this model"
    );
    assert_eq!(hello[0]["arena_bytes"], arena);
    assert!(
        frames.iter().all(|f| f["type"] != "bad_frame"),
        "no damaged frames"
    );
    let reports: Vec<&Value> = frames.iter().filter(|f| f["type"] == "inference").collect();
    assert_eq!(reports.len(), n);
    for (i, r) in reports.iter().enumerate() {
        assert_eq!(r["sequence"], i as u64);
        assert_eq!(r["arena_bytes"], arena);
        let cycles = r["cycles"].as_u64().unwrap();
        // Under QEMU (-icount shift=0) a SysTick tick is 1e9 / clock_hz instructions (40 on the MPS2 boards); a
        // kernel spends at least one instruction per MAC and, for these reference kernels, far fewer than 100.
        let per_tick = kiln_boards::Board::load(board)
            .unwrap()
            .qemu_instructions_per_tick();
        let instructions = (cycles as f64 * per_tick) as u64;
        assert!(
            instructions >= macs && instructions <= 100 * macs,
            "{board}: {instructions} instructions for {macs} MACs"
        );
        let op_cycles: Vec<u64> = r["op_cycles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_u64().unwrap())
            .collect();
        assert_eq!(op_cycles.len(), ops.min(64), "one figure per op");
        let sum: u64 = op_cycles.iter().sum();
        assert!(
            sum <= cycles && sum + 64 >= cycles,
            "{board}: per-op {sum} vs whole {cycles}"
        );
        let stack = r["stack_high_water"].as_u64().unwrap();
        assert!(
            (256..kiln_compiler::firmware::DEFAULT_STACK_BYTES as u64).contains(&stack),
            "{board}: stack high water {stack} B"
        );
    }
    frames
}

#[test]
fn mnist_on_mps2_an386_and_an500_is_bit_identical_to_the_host() {
    require_qemu();
    let dir = tempfile::tempdir().unwrap();
    let model = compile_mnist(dir.path());
    let x = dir.path().join("x.npy");
    npz_slice(&repo().join("data/mnist_test.npz"), "x", 50, &x);
    for board in ["mps2-an386", "mps2-an500"] {
        let frames = host_vs_board(dir.path(), &model, &x, 50, board);
        // Whole outputs came as chunks: one per inference (10 int8 values each).
        let chunks = frames
            .iter()
            .filter(|f| f["type"] == "output_chunk")
            .count();
        assert_eq!(chunks, 50, "{board}");
    }
}

#[test]
fn f32_mnist_on_mps2_an386_is_bit_identical_to_the_host() {
    // The float path too: the same IEEE operations in the same order on the M4F's FPU as on the host.
    require_qemu();
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("mnist_f32.kiln");
    let o = kiln(&[
        "compile",
        s(&repo().join("models/mnist_cnn.onnx")),
        "-o",
        s(&model),
        "--precision",
        "f32",
    ]);
    assert_exit(&o, 0, "compile MNIST f32");
    let x = dir.path().join("x.npy");
    npz_slice(&repo().join("data/mnist_test.npz"), "x", 10, &x);
    let frames = host_vs_board(dir.path(), &model, &x, 10, "mps2-an386");
    // 10 f32 outputs = 40 bytes, one chunk each.
    let chunk = frames.iter().find(|f| f["type"] == "output_chunk").unwrap();
    assert_eq!(chunk["data"].as_array().unwrap().len(), 40);
}

#[test]
fn mixed_precision_mnist_on_mps2_an386_is_bit_identical_to_the_host() {
    // int8 with conv1 and fc kept in f32: the board's conversions (int8 -> f32 -> int8) and f32 layers compute
    // the same bytes as the host's.
    require_qemu();
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("mnist_mixed.kiln");
    let o = kiln(&[
        "compile",
        s(&repo().join("models/mnist_cnn.onnx")),
        "-o",
        s(&model),
        "--calib",
        s(&repo().join("data/mnist_calib.npy")),
        "--keep-f32-layer",
        "conv1",
        "--keep-f32-layer",
        "fc",
    ]);
    assert_exit(&o, 0, "compile MNIST int8 + f32");
    let kinds = common::op_kinds(&model);
    for k in [
        "dequantize_s8",
        "conv2d_f32",
        "quantize_s8",
        "conv2d_s8",
        "fully_connected_f32",
    ] {
        assert!(kinds.iter().any(|x| x == k), "{k} in {kinds:?}");
    }
    let x = dir.path().join("x.npy");
    npz_slice(&repo().join("data/mnist_test.npz"), "x", 10, &x);
    let frames = host_vs_board(dir.path(), &model, &x, 10, "mps2-an386");
    // The output is fc's: 10 f32 values, 40 bytes.
    let chunk = frames.iter().find(|f| f["type"] == "output_chunk").unwrap();
    assert_eq!(chunk["data"].as_array().unwrap().len(), 40);
}

#[test]
fn mnist_on_the_cortex_m3_lm3s6965evb_is_bit_identical_to_the_host() {
    require_qemu();
    let dir = tempfile::tempdir().unwrap();
    let model = compile_mnist(dir.path());
    let x = dir.path().join("x.npy");
    npz_slice(&repo().join("data/mnist_test.npz"), "x", 10, &x);
    host_vs_board(dir.path(), &model, &x, 10, "lm3s6965evb");
}

#[test]
fn kws_on_mps2_an386_and_an500_is_bit_identical_to_the_host() {
    require_qemu();
    let onnx = repo().join("../shared/models/kws_dscnn_f32.onnx");
    if !onnx.exists() {
        eprintln!(
            "NOT RUN: {} is absent (the MLPerf Tiny models live in ../shared/models)",
            onnx.display()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let calib = dir.path().join("calib.npy");
    npz_slice(&repo().join("data/kws_speech.npz"), "x", 100, &calib);
    let model = dir.path().join("kws.kiln");
    assert_exit(
        &kiln(&["compile", s(&onnx), "-o", s(&model), "--calib", s(&calib)]),
        0,
        "compile KWS",
    );
    let x = dir.path().join("x.npy");
    npz_slice(&repo().join("data/kws_speech.npz"), "x", 50, &x);
    for board in ["mps2-an386", "mps2-an500"] {
        host_vs_board(dir.path(), &model, &x, 50, board);
    }
}

fn compile_f32_for_lm3s6965evb(onnx: &Path, out: &Path) -> Output {
    kiln(&[
        "compile",
        s(onnx),
        "-o",
        s(out),
        "--precision",
        "f32",
        "--board",
        "lm3s6965evb",
    ])
}

#[test]
fn fit_check_rejects_what_lm3s6965evb_cannot_hold_with_the_numbers() {
    use kiln_tests::onnx::OnnxBuilder;
    let dir = tempfile::tempdir().unwrap();

    // 300 x 300 float weights: 360,000 bytes of model for 262,144 bytes of flash.
    let big_weights = dir.path().join("big_weights.onnx");
    let w: Vec<f32> = (0..300 * 300)
        .map(|i| ((i % 13) as f32 - 6.0) / 7.0)
        .collect();
    OnnxBuilder::new(13)
        .input("x", &[1, 300])
        .initializer("w", &[300, 300], &w)
        .node("MatMul", &["x", "w"], &["y"], vec![])
        .output("y", &[1, 300])
        .write(&big_weights)
        .unwrap();
    let out = dir.path().join("big_weights.kiln");
    let o = compile_f32_for_lm3s6965evb(&big_weights, &out);
    assert_exit(&o, 2, "model too big for flash");
    let (stdout, stderr) = (text(&o.stdout), text(&o.stderr));
    assert!(
        stderr.contains("does not fit lm3s6965evb") && stderr.contains("flash needs"),
        "{stderr}"
    );
    assert!(stderr.contains("the board has 262,144 B"), "{stderr}");
    assert!(
        stdout.contains("DOES NOT FIT") && stdout.contains("262,144"),
        "{stdout}"
    );
    assert!(!out.exists(), "nothing written when it does not fit");

    // 1 x 8 x 48 x 48 float activations twice over: a 147,456-byte arena for 65,536 bytes of RAM.
    let big_arena = dir.path().join("big_arena.onnx");
    OnnxBuilder::new(13)
        .input("x", &[1, 8, 48, 48])
        .node("Relu", &["x"], &["y"], vec![])
        .output("y", &[1, 8, 48, 48])
        .write(&big_arena)
        .unwrap();
    let out = dir.path().join("big_arena.kiln");
    let o = compile_f32_for_lm3s6965evb(&big_arena, &out);
    assert_exit(&o, 2, "model too big for RAM");
    let stderr = text(&o.stderr);
    assert!(
        stderr.contains("RAM needs") && stderr.contains("the board has 65,536 B"),
        "{stderr}"
    );
    assert!(!stderr.contains("flash needs"), "flash fits: {stderr}");
    assert!(!out.exists());

    // The MNIST CNN fits, and the table says by how much.
    let out = dir.path().join("mnist.kiln");
    let o = kiln(&[
        "compile",
        s(&repo().join("models/mnist_cnn.onnx")),
        "-o",
        s(&out),
        "--calib",
        s(&repo().join("data/mnist_calib.npy")),
        "--board",
        "lm3s6965evb",
    ]);
    assert_exit(&o, 0, "MNIST fits lm3s6965evb");
    let stdout = text(&o.stdout);
    assert!(
        stdout.contains("fit on lm3s6965evb") && !stdout.contains("DOES NOT FIT"),
        "{stdout}"
    );
    assert!(out.exists());
}

#[test]
fn real_board_firmware_builds() {
    let dir = tempfile::tempdir().unwrap();
    let model = compile_mnist(dir.path());
    for (board, flash_origin, flash_size) in [
        ("nrf52840-dk", 0u32, 0x10_0000u32),
        ("stm32f411-nucleo", 0x0800_0000, 0x8_0000),
    ] {
        let elf = dir.path().join(format!("{board}.elf"));
        let o = kiln(&["firmware", s(&model), "--board", board, "-o", s(&elf)]);
        assert_exit(&o, 0, board);
        assert!(
            text(&o.stdout).contains(&format!("fit on {board}")),
            "{}",
            text(&o.stdout)
        );
        let bytes = std::fs::read(&elf).unwrap();
        assert_eq!(&bytes[..4], b"\x7fELF", "{board}: an ELF");
        assert_eq!(
            u16::from_le_bytes([bytes[18], bytes[19]]),
            40,
            "{board}: for Arm"
        );
        let entry = u32::from_le_bytes([bytes[24], bytes[25], bytes[26], bytes[27]]);
        assert!(
            (flash_origin..flash_origin + flash_size).contains(&entry),
            "{board}: entry {entry:#x} in its flash"
        );
    }
}

/// Compares `actual` with the snapshot file, or rewrites it when `UPDATE_SNAPSHOTS` is set.
fn snapshot(name: &str, actual: &str) {
    let path = repo().join("compiler/tests/snapshots").join(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_SNAPSHOTS=1 writes it)", path.display()));
    if expected != actual {
        panic!(
            "{name}: the firmware's output changed (UPDATE_SNAPSHOTS=1 accepts it)\n--- expected\n{expected}\n--- actual\n{actual}"
        );
    }
}

/// Ids change with every firmware or compiler edit; the test checks them itself and pins the rest.
fn normalise(log: &str, model_id: &str, firmware_id: &str) -> String {
    assert!(
        log.contains(model_id),
        "the log names model {model_id}:\n{log}"
    );
    assert!(
        log.contains(firmware_id),
        "the log names firmware {firmware_id}:\n{log}"
    );
    log.replace(model_id, "{model_id}")
        .replace(firmware_id, "{firmware_id}")
}

#[test]
fn snapshot_of_a_firmware_session_on_mps2_an386() {
    require_qemu();
    let dir = tempfile::tempdir().unwrap();
    let model = compile_mnist(dir.path());
    let x = dir.path().join("x.npy");
    npz_slice(&repo().join("data/mnist_test.npz"), "x", 4, &x);
    let (y, telemetry, log) = (
        dir.path().join("y.npy"),
        dir.path().join("t.jsonl"),
        dir.path().join("log.txt"),
    );
    let o = kiln(&[
        "run",
        s(&model),
        "--board",
        "mps2-an386",
        "--input",
        s(&x),
        "--output",
        s(&y),
        "--telemetry",
        s(&telemetry),
        "--log",
        s(&log),
    ]);
    assert_exit(&o, 0, "run");
    let hello: Value = serde_json::from_str(
        std::fs::read_to_string(&telemetry)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let model_id = hello["model_id"]
        .as_str()
        .unwrap()
        .trim_start_matches("0x")
        .to_owned();
    let firmware_id = hello["firmware_id"]
        .as_str()
        .unwrap()
        .trim_start_matches("0x")
        .to_owned();
    let log = std::fs::read_to_string(&log).unwrap();
    snapshot(
        "mnist_mps2-an386.log",
        &normalise(&log, &model_id, &firmware_id),
    );
}

#[test]
fn snapshot_of_the_firmware_refusing_bad_commands() {
    use kiln_compiler::device::Device;
    use kiln_compiler::flash;
    use kiln_runtime::telemetry::{encode_command, Command, Frame};
    require_qemu();
    let dir = tempfile::tempdir().unwrap();
    let model = compile_mnist(dir.path());
    let bytes = std::fs::read(&model).unwrap();
    let built = flash::build_checked(
        "mps2-an386",
        &bytes,
        kiln_compiler::firmware::Options::with_stack(kiln_compiler::firmware::DEFAULT_STACK_BYTES),
        None,
        |_| {},
    )
    .unwrap();
    let mut dev = Device::start_qemu(&built.board, &built.firmware.elf, false).unwrap();
    let hello = dev.hello().unwrap();

    let mut buf = vec![0u8; 2048];
    // No zero bytes, so COBS code bytes sit only every 254 bytes and byte 100 below is input data.
    let image = vec![0x55u8; 784];
    let good = encode_command(
        &Command::Infer {
            sequence: 7,
            per_op: false,
            full_output: false,
            input: &image,
        },
        &mut buf,
    )
    .unwrap()
    .to_vec();
    // Noise, then a damaged copy of a good command (one input byte flipped: its checksum no longer matches).
    dev.send_raw(&[0x13, 0x37, 0x42, 0x00]).unwrap();
    let mut damaged = good.clone();
    damaged[100] ^= 0x01;
    dev.send_raw(&damaged).unwrap();
    // A well-formed command with the wrong number of input bytes.
    let short = encode_command(
        &Command::Infer {
            sequence: 8,
            per_op: false,
            full_output: false,
            input: &[1, 2, 3],
        },
        &mut buf,
    )
    .unwrap()
    .to_vec();
    dev.send_raw(&short).unwrap();
    // Then a good one: the firmware is still serving.
    dev.send_raw(&good).unwrap();

    let mut seen = Vec::new();
    loop {
        match dev.next_frame().unwrap() {
            Frame::Error { code, detail } => seen.push(format!("error {code} {detail}")),
            Frame::Inference(r) => {
                seen.push(format!("inference {}", r.sequence));
                break;
            }
            Frame::Heartbeat { .. } => {}
            other => seen.push(format!("{other:?}")),
        }
    }
    // Malformed noise (4/1), damaged command (4/2), 3 input bytes (2/3), then the inference.
    assert_eq!(seen, ["error 4 1", "error 4 2", "error 2 3", "inference 7"]);
    // Left idle, it sends a heartbeat that counts all of it.
    loop {
        if let Frame::Heartbeat {
            uptime_ms,
            inferences,
            errors,
        } = dev.next_frame().unwrap()
        {
            assert!(uptime_ms >= 1000, "{uptime_ms} ms");
            assert_eq!((inferences, errors), (1, 3));
            break;
        }
    }
    let logs = dev.finish().unwrap().join("\n") + "\n";
    let (model_id, firmware_id) = (
        format!("{:08x}", hello.model_id),
        format!("{:08x}", hello.firmware_id),
    );
    snapshot(
        "bad_commands_mps2-an386.log",
        &normalise(&logs, &model_id, &firmware_id),
    );
}

#[test]
fn flash_on_an_emulated_board_streams_logs_and_telemetry_until_stopped() {
    use std::io::{BufRead, BufReader};
    require_qemu();
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("flash.jsonl");
    // An ONNX model: compiled, built, started, watched.
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "flash",
            s(&repo().join("models/mnist_cnn.onnx")),
            "--calib",
            s(&repo().join("data/mnist_calib.npy")),
            "--board",
            "mps2-an386",
            "--jsonl",
            s(&jsonl),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        let done = line.starts_with("heartbeat:");
        lines.push(line);
        if done {
            break;
        }
    }
    // The emulator kiln started does not outlive it.
    let children = Command::new("pgrep")
        .args(["-P", &child.id().to_string()])
        .output()
        .unwrap();
    let qemu: Vec<String> = text(&children.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(qemu.len(), 1, "kiln runs one emulator");
    child.kill().unwrap();
    let status = child.wait().unwrap();
    let gone = (0..50).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", qemu[0])).unwrap_or_default();
        // Gone, or a zombie waiting for its new parent to reap it.
        stat.is_empty() || stat.split_whitespace().nth(2) == Some("Z")
    });
    assert!(gone, "QEMU ({}) outlived kiln", qemu[0]);
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    let out = lines.join("\n");
    assert!(out.contains("fit on mps2-an386"), "{out}\n{stderr}");
    assert!(out.contains("running on mps2-an386"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("hello: ")), "{out}");
    assert!(
        out.lines().last().unwrap().starts_with("heartbeat: "),
        "{out}"
    );
    // The firmware's defmt logs, decoded, on stderr.
    assert!(
        stderr.contains("[mps2-an386] INFO  kiln firmware"),
        "{stderr} ({status})"
    );
    let frames: Vec<Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(frames[0]["type"], "hello");
    assert!(frames.iter().any(|f| f["type"] == "heartbeat"));
}

#[test]
fn bench_counts_the_same_instructions_twice_and_writes_its_json() {
    require_qemu();
    let dir = tempfile::tempdir().unwrap();
    let model = compile_mnist(dir.path());
    let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
    let first = kiln(&["bench", s(&model), "--board", "mps2-an386", "--json", s(&a)]);
    assert_exit(&first, 0, "bench");
    let second = kiln(&["bench", s(&model), "--board", "mps2-an386", "--json", s(&b)]);
    assert_exit(&second, 0, "bench again");
    assert_eq!(
        text(&first.stdout),
        text(&second.stdout),
        "two runs print the same"
    );
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        "and write the same"
    );

    let j: Value = serde_json::from_slice(&std::fs::read(&a).unwrap()).unwrap();
    let info = inspect(&model);
    assert_eq!(j["macs"], info["macs"]);
    assert_eq!(j["arena_bytes"], info["arena_bytes"]);
    assert_eq!(
        j["model_bytes"].as_u64().unwrap(),
        std::fs::metadata(&model)
            .unwrap()
            .len()
            .next_multiple_of(16)
    );
    let ops = j["ops"].as_array().unwrap();
    assert_eq!(ops.len(), info["ops"].as_array().unwrap().len());
    let per_op: u64 = ops
        .iter()
        .map(|o| o["instructions"].as_u64().unwrap())
        .sum();
    let whole = j["instructions"].as_u64().unwrap();
    assert_eq!(
        whole,
        j["ticks"].as_u64().unwrap() * 40,
        "instructions = ticks x 40 on mps2-an386"
    );
    assert_eq!(per_op, whole, "the ops add up to the inference");
    for o in ops {
        assert!(
            o["op"].is_string() && o["kind"].is_string() && o["macs"].is_u64(),
            "{o}"
        );
    }
    let stack = j["stack_bytes"].as_u64().unwrap();
    assert!(
        (256..kiln_compiler::firmware::DEFAULT_STACK_BYTES as u64).contains(&stack),
        "{stack}"
    );
    // The benchmark image (no logs, no command loop) is smaller than the firmware `kiln flash` builds.
    let (code, firmware_code) = (
        j["code_bytes"].as_u64().unwrap(),
        j["firmware_code_bytes"].as_u64().unwrap(),
    );
    assert!(
        1000 < code && code < firmware_code,
        "{code} vs {firmware_code}"
    );
    // A real board has no instruction count: refused with the reason.
    let o = kiln(&["bench", s(&model), "--board", "nrf52840-dk"]);
    assert_exit(&o, 2, "bench on a real board");
    assert!(
        text(&o.stderr).contains("real board"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn debian_toolchain_builds_the_same_firmware_behaviour() {
    // kiln's fallback when rustup has no Cortex-M target: Debian's rustc building `core` with -Zbuild-std.
    // scripts/setup-cortex-m.sh installs it on Debian; elsewhere that path does not exist.
    if !Path::new("/etc/debian_version").exists() {
        eprintln!("NOT RUN: not a Debian system, so there is no Debian toolchain path to check");
        return;
    }
    require_qemu();
    let dir = tempfile::tempdir().unwrap();
    let model = compile_mnist(dir.path());
    let x = dir.path().join("x.npy");
    npz_slice(&repo().join("data/mnist_test.npz"), "x", 5, &x);
    let host = dir.path().join("host.npy");
    assert_exit(
        &kiln(&["run", s(&model), "--input", s(&x), "--output", s(&host)]),
        0,
        "host",
    );
    let board = dir.path().join("board.npy");
    let o = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .env("KILN_TOOLCHAIN", "debian")
        .args([
            "run",
            s(&model),
            "--board",
            "mps2-an386",
            "--input",
            s(&x),
            "--output",
            s(&board),
        ])
        .output()
        .unwrap();
    assert_exit(
        &o,
        0,
        "run with Debian's toolchain (apt-get install rustc-web cargo-web rust-web-src lld-19)",
    );
    assert!(std::fs::read(&host).unwrap() == std::fs::read(&board).unwrap());
}

#[test]
fn a_stack_reserve_too_small_is_reported_not_trusted() {
    require_qemu();
    let dir = tempfile::tempdir().unwrap();
    let model = compile_mnist(dir.path());
    let x = dir.path().join("x.npy");
    npz_slice(&repo().join("data/mnist_test.npz"), "x", 2, &x);
    let y = dir.path().join("y.npy");
    // The firmware needs several KiB of stack; 1 KiB of reserve is used up by the first inference.
    let o = kiln(&[
        "run",
        s(&model),
        "--board",
        "mps2-an386",
        "--stack",
        "1024",
        "--input",
        s(&x),
        "--output",
        s(&y),
    ]);
    assert_exit(&o, 2, "stack reserve too small");
    let e = text(&o.stderr);
    assert!(
        e.contains("whole stack reserve") && e.contains("1024 bytes"),
        "{e}"
    );
    assert!(!y.exists(), "no outputs from an untrustworthy run");
    // Nor figures from an untrustworthy benchmark.
    let o = kiln(&[
        "bench",
        s(&model),
        "--board",
        "mps2-an386",
        "--stack",
        "1024",
    ]);
    assert_exit(&o, 2, "benchmark with a stack reserve too small");
    let e = text(&o.stderr);
    assert!(
        e.contains("whole stack reserve") && e.contains("1024 bytes"),
        "{e}"
    );
}
