//! `kiln`: compile ONNX models to `.kiln` files, run them, inspect them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kiln_compiler::compile::{self, CalibMethod};
use kiln_compiler::device::Device;
use kiln_compiler::emit::Precision;
use kiln_compiler::error::{input, Error, Result};
use kiln_compiler::eval;
use kiln_compiler::firmware::{Options as FirmwareOptions, DEFAULT_STACK_BYTES};
use kiln_compiler::flash::{self, ModelSource};
use kiln_compiler::monitor;
use kiln_compiler::npy;
use kiln_compiler::reference::Reference;
use kiln_compiler::runner::{ModelBuf, Runner};
use kiln_runtime::format::IoType;
use ndarray::ArrayD;

/// Prints a line to stdout; a closed pipe (`kiln inspect m.kiln | head`) ends the program quietly instead of
/// panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

const AFTER_HELP: &str = "\
Exit codes: 0 success; 2 bad input (unreadable file, unsupported operator, wrong shape,
corrupted model); 1 internal error. Nothing is written on failure.

Example:
  kiln compile model.onnx -o model.kiln --calib samples.npy --report report.json
  kiln run model.kiln --input x.npy --output y.npy
  kiln reference model.onnx --input x.npy --output y_ref.npy
  kiln inspect model.kiln
  kiln report model.onnx --calib samples.npy --eval labelled.npz -o report.html
On a board (boards/*.toml; mps2-an386 and the other QEMU boards need qemu-system-arm):
  kiln compile model.onnx -o model.kiln --calib samples.npy --board lm3s6965evb
  kiln run model.kiln --board mps2-an386 --input x.npy --output y.npy --telemetry t.jsonl
  kiln flash model.onnx --calib samples.npy --board nrf52840-dk
  kiln monitor --port /dev/ttyACM0";

#[derive(Parser)]
#[command(name = "kiln", version, about = "Kiln: ONNX models compiled to int8 for microcontrollers", after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compile an ONNX model to a .kiln file (int8 by default, calibrated on your data).
    #[command(after_help = "\
int8 quantisation: weights symmetric per output channel, activations asymmetric per tensor,
int32 biases, integer-only inference. Activation ranges come from running the float model
on the --calib data:
  --calib X.npy   one array: samples stacked on a leading axis, each shaped like the model
                  input (or the input shape with its batch dimension multiplied by N)
  --calib X.npz   one such array per model input, keyed by input name (or `x`)
A quantised ONNX model (QuantizeLinear/DequantizeLinear, QDQ, or the operator form:
QLinearConv, QLinearMatMul, QGemm, ...) keeps its own scales and zero points; it needs no
--calib when they cover every tensor (the error names those they miss).
The report (--report) holds sizes, arena bytes, MACs per op, and float-vs-int8 agreement on
the calibration data (top-1, SQNR, max abs error), overall and per layer.

Pruning (--prune F, --prune-budget P): whole channels (conv filters, dense units) are removed
with everything they pass through (activations, pools, depthwise convs, residual adds, the
next layer's inputs), so MACs, weight bytes and arena really fall. Channels are ranked on the
--calib data by the energy they carry into the next layers; the same fraction goes from each
group (every group keeps at least a quarter); the next layers are refitted by least squares
to reproduce their original outputs. No retraining. The report's `pruning` section lists the
channels removed per layer and MACs/weights/arena before and after. Unstructured (zeroed
weights) pruning is not offered: Kiln's kernels are dense, so it would gain nothing.

Mixed precision (--keep-f32 N, --keep-f32-layer NAME): the layers int8 hurts most stay in
f32 (f32 weights, 4 bytes each; f32 activations, 4 bytes per element; int8 <-> f32 conversions
at their edges). Each round tries every remaining layer in f32 on the --calib data and keeps
the one that brings the output closest to the float model (output SQNR), if it gains 0.1 dB
and the model stays within --flash-budget (model file bytes) and --ram-budget (arena bytes).
The summary and the report's `mixed` section give the figures after each choice and the
layers the budget left int8. f32 layers run Kiln's portable f32 kernels: slower per MAC than
the int8 ones, much slower on a core without an FPU.

Example:
  kiln compile model.onnx -o model.kiln --calib samples.npy --report report.json
  kiln compile model.onnx -o small.kiln --calib samples.npy --prune 0.3
  kiln compile model.onnx -o small.kiln --calib samples.npy --prune-budget 1.0 --eval test.npz
  kiln compile model.onnx -o mixed.kiln --calib samples.npy --keep-f32 2 --ram-budget 64K")]
    Compile {
        /// The ONNX model.
        model: PathBuf,
        /// Where to write the .kiln file.
        #[arg(short, long)]
        output: PathBuf,
        /// int8 (needs --calib, unless the model is quantised: QDQ or QLinear ops) or f32.
        #[arg(long, default_value = "int8")]
        precision: Precision,
        /// Calibration data (.npy or .npz), required for int8 unless the model is quantised (QDQ or QLinear ops).
        #[arg(long)]
        calib: Option<PathBuf>,
        /// How activation ranges are chosen: minmax, mse, percentile (99.99) or percentile:P.
        #[arg(long, default_value = "minmax")]
        calib_method: CalibMethod,
        /// Write a JSON report here.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Also check that the model fits this board (name or board file): builds its firmware and compares
        /// flash (code + model) and RAM (arena + statics + stack) with the board's; exit 2 if it does not fit.
        #[arg(long)]
        board: Option<String>,
        /// Stack bytes the firmware reserves (with --board).
        #[arg(long, default_value_t = DEFAULT_STACK_BYTES)]
        stack: u32,
        /// Print every int8 layer's float-vs-int8 SQNR, cosine similarity and max abs error.
        #[arg(long)]
        layers: bool,
        /// Structured pruning: remove this fraction (0 to 0.75) of the prunable channels of every layer group,
        /// choosing and refitting on --calib (see below).
        #[arg(long, value_name = "F", conflicts_with = "prune_budget")]
        prune: Option<f64>,
        /// Prune as much as possible while top-1 accuracy on --eval stays within this many percentage points of
        /// the unpruned model (binary search over the fraction; each probe is printed).
        #[arg(long, value_name = "POINTS", requires = "eval")]
        prune_budget: Option<f64>,
        /// Labelled data for --prune-budget: .npz with `x` (samples) and `y` (integer labels), ideally not the
        /// calibration data.
        #[arg(long, value_name = "DATA.npz", requires = "prune_budget")]
        eval: Option<PathBuf>,
        /// Mixed precision: keep up to N more layers in f32, chosen one at a time as the layer whose f32 version
        /// brings the output closest to the float model's on --calib (output SQNR), while the model stays
        /// within --flash-budget and --ram-budget. Stops early when no layer gains 0.1 dB.
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_f32: usize,
        /// Keep this layer (node name, as --layers prints) in f32; repeatable.
        #[arg(long, value_name = "NAME")]
        keep_f32_layer: Vec<String>,
        /// With --keep-f32: the largest model file allowed, in bytes (K and M suffixes: 1024, 1024^2).
        #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
        flash_budget: Option<usize>,
        /// With --keep-f32: the largest arena allowed, in bytes (K and M suffixes: 1024, 1024^2).
        #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
        ram_budget: Option<usize>,
    },
    /// One self-contained HTML page on a model: operator graph, per-layer MACs and bytes, arena over time,
    /// per-layer quantisation quality, weight histograms, accuracy, and the fit on a board.
    #[command(after_help = REPORT_HELP)]
    Report {
        /// An ONNX model (compiled first: int8 with --calib, else f32) or a .kiln file.
        model: PathBuf,
        /// Where to write the HTML page.
        #[arg(short, long)]
        output: PathBuf,
        /// Calibration data for an ONNX model (.npy or .npz): compiles int8 and measures each layer against float.
        #[arg(long)]
        calib: Option<PathBuf>,
        /// How activation ranges are chosen: minmax, mse, percentile (99.99) or percentile:P.
        #[arg(long, default_value = "minmax")]
        calib_method: CalibMethod,
        /// Labelled data (.npz with `x` and `y`): top-1 accuracy of the float and the compiled model.
        #[arg(long)]
        eval: Option<PathBuf>,
        /// Board (name or board file) whose flash and RAM the model is checked against.
        #[arg(long, default_value = kiln_boards::DEFAULT_BOARD)]
        board: String,
        /// Stack bytes the firmware reserves.
        #[arg(long, default_value_t = DEFAULT_STACK_BYTES)]
        stack: u32,
    },
    /// Build the firmware for a board with a model inside, and check it fits (no device needed).
    #[command(after_help = BOARD_HELP)]
    Firmware {
        /// A .kiln file, or an ONNX model to compile first.
        model: PathBuf,
        /// Board name (a file in boards/) or the path of a board file.
        #[arg(long, default_value = kiln_boards::DEFAULT_BOARD)]
        board: String,
        /// Where to write the firmware ELF.
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        compile: CompileArgs,
        /// Stack bytes the firmware reserves (its high-water mark is reported in telemetry).
        #[arg(long, default_value_t = DEFAULT_STACK_BYTES)]
        stack: u32,
    },
    /// Build the firmware for a board with a model inside, check it fits, then run it (QEMU boards) or flash it
    /// (probe-rs boards), and show its logs and telemetry until stopped (Ctrl-C).
    #[command(after_help = BOARD_HELP)]
    Flash {
        /// A .kiln file, or an ONNX model to compile first.
        model: PathBuf,
        /// Board name (a file in boards/) or the path of a board file.
        #[arg(long, default_value = kiln_boards::DEFAULT_BOARD)]
        board: String,
        #[command(flatten)]
        compile: CompileArgs,
        /// Stack bytes the firmware reserves (its high-water mark is reported in telemetry).
        #[arg(long, default_value_t = DEFAULT_STACK_BYTES)]
        stack: u32,
        /// Real boards: the serial port carrying telemetry (default: the only USB serial port).
        #[arg(long)]
        port: Option<PathBuf>,
        /// Baud rate of --port.
        #[arg(long, default_value_t = 115_200)]
        baud: u32,
        /// Also keep the firmware ELF here.
        #[arg(long)]
        elf: Option<PathBuf>,
        /// Append every telemetry frame as one JSON object per line.
        #[arg(long)]
        jsonl: Option<PathBuf>,
    },
    /// Count instructions per inference (whole and per op) on an emulated board, on the recipe TFLM + CMSIS-NN
    /// was measured with; also arena, peak stack, code and model bytes. Two runs print the same numbers.
    #[command(after_help = "\
The firmware runs the model twice at boot on the baseline input (int8 bytes from the LCG
s = s * 1664525 + 1013904223, x = (int8)(s >> 24), s from 12345) under QEMU with
-icount shift=0,align=off,sleep=off; instructions = SysTick ticks x 1e9 / clock_hz (40 on the
MPS2 boards). The first inference is reported; the second must agree within a tick.

Example:
  kiln bench ../shared/models/kws_dscnn_f32.onnx --calib data/kws_speech.npz --json kws.json")]
    Bench {
        /// A .kiln file, or an ONNX model to compile first.
        model: PathBuf,
        /// An emulated board (name or board file).
        #[arg(long, default_value = kiln_boards::DEFAULT_BOARD)]
        board: String,
        #[command(flatten)]
        compile: CompileArgs,
        /// Stack bytes the firmware reserves.
        #[arg(long, default_value_t = DEFAULT_STACK_BYTES)]
        stack: u32,
        /// Also write the figures as JSON (keys instructions, arena_bytes, stack_bytes, code_bytes,
        /// model_bytes, macs, ops[{op, kind, macs, instructions}], ...).
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Decode a device's telemetry stream (from a serial port or a TCP socket) until it ends.
    #[command(after_help = "\
A malformed, damaged or truncated frame is counted and skipped, never fatal; the summary at the
end says how many. With --jsonl every frame is also written as one JSON object per line (bad
ones as {\"type\":\"bad_frame\",...}).

Example:
  kiln monitor --port /dev/ttyACM0 --jsonl telemetry.jsonl
  kiln monitor --tcp 192.168.1.20:4000")]
    Monitor {
        /// Serial port the device's telemetry UART is connected to (e.g. /dev/ttyACM0).
        #[arg(long, conflicts_with = "tcp", required_unless_present = "tcp")]
        port: Option<PathBuf>,
        /// Baud rate of --port (the board file's `uart.baud`; Kiln's boards use 115200).
        #[arg(long, default_value_t = 115_200)]
        baud: u32,
        /// HOST:PORT of a TCP server streaming the telemetry (e.g. a serial-to-network bridge).
        #[arg(long)]
        tcp: Option<String>,
        /// Also write every frame as one JSON object per line to this file.
        #[arg(long)]
        jsonl: Option<PathBuf>,
    },
    /// Run a .kiln model on the host with Kiln's runtime (the code the device runs).
    #[command(after_help = "\
Inputs are float32 .npy in the ONNX model's own layout, each either the model input's shape
(one inference), that shape with N prepended, or that shape with its leading (batch) dimension
multiplied by N (N inferences; outputs are stacked the same way). Outputs are float32 .npy
(int8 models are dequantised at the boundary). A quantised ONNX model whose graph input or
output is int8 (or uint8) takes or gives .npy of that type instead.

With --board the inferences run on that board instead: its firmware is built around the
model (fit checked), started under QEMU or flashed with probe-rs, fed every input over its
UART, and its outputs come back bit for bit. --telemetry keeps every frame it sent.

Example:
  kiln run model.kiln --board mps2-an386 --input x.npy --output y.npy --telemetry t.jsonl")]
    Run {
        model: PathBuf,
        /// One per model input, in order.
        #[arg(long = "input", required = true)]
        inputs: Vec<PathBuf>,
        /// One per model output, in order.
        #[arg(long = "output", required = true)]
        outputs: Vec<PathBuf>,
        /// Run on this board (name or board file) instead of the host.
        #[arg(long)]
        board: Option<String>,
        /// With --board: write every telemetry frame as one JSON object per line.
        #[arg(long, requires = "board")]
        telemetry: Option<PathBuf>,
        /// With --board: write the firmware's decoded log lines.
        #[arg(long, requires = "board")]
        log: Option<PathBuf>,
        /// With --board: ask for cycles per op too.
        #[arg(long, requires = "board")]
        per_op: bool,
        /// Stack bytes the firmware reserves (its high-water mark is reported in telemetry).
        #[arg(long, default_value_t = DEFAULT_STACK_BYTES)]
        stack: u32,
        /// Real boards: the serial port carrying telemetry (default: the only USB serial port).
        #[arg(long)]
        port: Option<PathBuf>,
        /// Baud rate of --port.
        #[arg(long, default_value_t = 115_200)]
        baud: u32,
    },
    /// Run the ONNX model in float with tract: the yardstick Kiln is checked against.
    Reference {
        model: PathBuf,
        #[arg(long = "input", required = true)]
        inputs: Vec<PathBuf>,
        #[arg(long = "output", required = true)]
        outputs: Vec<PathBuf>,
    },
    /// Top-1 accuracy of a .kiln model (Kiln's runtime) or an .onnx model (tract, float) on labelled data.
    #[command(
        after_help = "DATA.npz holds `x` (samples stacked on a leading axis, as for `kiln run`) and `y` (integer labels)."
    )]
    Eval {
        model: PathBuf,
        /// Labelled data: keys `x` and `y`.
        #[arg(long)]
        data: PathBuf,
    },
    /// Show what a .kiln file holds: header, ops, tensors, arena and weight bytes, MACs.
    Inspect {
        model: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

const REPORT_HELP: &str = "\
The page is one HTML file with its charts (inline SVG) and styles inside: no scripts, no
network, nothing else to copy. Sections:
  operator graph   ops in execution order, kernels chosen, the tensors between them
  per-layer cost   MACs, weight bytes and output bytes of every op
  arena            where each activation lives in the arena over the op sequence, and the
                   lower bound no plan can beat
  quantisation     per-layer float-vs-int8 SQNR, cosine similarity and max abs error on the
                   --calib data (ONNX with --calib only: a .kiln file has no float model)
  weights          histograms of each layer's stored weights
  accuracy         top-1 on --eval data, float (tract) and compiled (Kiln's runtime)
  fit              flash (code + model) and RAM (arena + statics + stack) against --board,
                   from a firmware build (needs a Cortex-M toolchain; without one the page
                   says so)

Exit codes: 0 success; 2 bad input (unreadable model or data, unknown board); 1 internal
error. The page is written only when complete.

Example:
  kiln report model.onnx --calib samples.npy --eval labelled.npz -o report.html
  kiln report model.kiln --board lm3s6965evb -o report.html";

const BOARD_HELP: &str = "\
Boards are files in boards/ (or give a path): mps2-an386 (Cortex-M4F, the default),
mps2-an500 (Cortex-M7) and lm3s6965evb (Cortex-M3, 256 KB / 64 KB) run under QEMU
(apt-get install qemu-system-arm); nrf52840-dk and stm32f411-nucleo are flashed with probe-rs
(cargo install probe-rs-tools), their telemetry read from the board's USB serial port.
The firmware is built with rustup's target when installed (rustup target add TARGET),
otherwise with Debian's toolchain (apt-get install rustc-web cargo-web rust-web-src lld-19).

Example:
  kiln flash model.onnx --calib samples.npy --board mps2-an386
  kiln firmware model.kiln --board stm32f411-nucleo -o fw.elf";

/// How to compile an ONNX model given to a board command.
#[derive(clap::Args)]
struct CompileArgs {
    /// int8 (needs --calib, unless the model is quantised: QDQ or QLinear ops) or f32 (ONNX models only).
    #[arg(long, default_value = "int8")]
    precision: Precision,
    /// Calibration data for ONNX models (.npy or .npz).
    #[arg(long)]
    calib: Option<PathBuf>,
    /// How activation ranges are chosen: minmax, mse, percentile (99.99) or percentile:P.
    #[arg(long, default_value = "minmax")]
    calib_method: CalibMethod,
}

impl CompileArgs {
    fn source<'a>(&self, path: &'a Path) -> ModelSource<'a> {
        ModelSource {
            path,
            precision: self.precision,
            calib: self.calib.clone(),
            method: self.calib_method,
        }
    }
}

/// Bytes, with an optional K (1024) or M (1024^2) suffix.
fn parse_bytes(s: &str) -> std::result::Result<usize, String> {
    let t = s.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let scale = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1024,
        "M" | "MB" | "MIB" => 1024 * 1024,
        _ => return Err(format!("'{s}': expected bytes, e.g. 65536, 64K or 1M")),
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("'{s}': expected bytes, e.g. 65536, 64K or 1M"))
}

fn main() -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("kiln: internal error: {info}");
    }));
    let cli = Cli::parse();
    match std::panic::catch_unwind(|| run(cli)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("kiln: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
        Err(_) => ExitCode::from(1),
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Compile {
            model,
            output,
            precision,
            calib,
            calib_method,
            report,
            board,
            stack,
            layers,
            prune,
            prune_budget,
            eval,
            keep_f32,
            keep_f32_layer,
            flash_budget,
            ram_budget,
        } => {
            let keep_f32 = kiln_compiler::mixed::Request {
                layers: keep_f32_layer,
                worst: keep_f32,
                budget: kiln_compiler::mixed::Budget {
                    max_file_bytes: flash_budget,
                    max_arena_bytes: ram_budget,
                },
            };
            if keep_f32.is_empty() && (flash_budget.is_some() || ram_budget.is_some()) {
                return Err(input(
                    "--flash-budget and --ram-budget bound the layers --keep-f32 N or --keep-f32-layer NAME keep \
                     in f32; give one of those too",
                ));
            }
            let opts = compile::Options {
                precision,
                calib,
                method: calib_method,
                keep_f32,
            };
            let compiled = match (prune_budget, &eval) {
                (Some(budget), Some(data)) => {
                    kiln_compiler::prune::compile_within_budget(&model, &opts, budget, data, |p| {
                        say!("{}", probe_line(p))
                    })?
                }
                _ => compile::compile_with(&model, &opts, prune)?,
            };
            let report_json = serde_json::to_string_pretty(&compiled.report)
                .map_err(|e| Error::Internal(e.into()))?;
            if let Some(b) = &board {
                // The fit is checked before anything is written.
                flash::build_checked(
                    b,
                    &compiled.bytes,
                    FirmwareOptions::with_stack(stack),
                    None,
                    |t| say!("{t}"),
                )?;
            }
            npy::write_atomic(&output, &compiled.bytes)?;
            if let Some(r) = &report {
                npy::write_atomic(r, report_json.as_bytes())?;
            }
            print_summary(&compiled.report, &output);
            if let (true, Some(a)) = (layers, &compiled.report.agreement) {
                say!("{}", kiln_compiler::report::layer_table(a).trim_end());
            }
            Ok(())
        }
        Command::Report {
            model,
            output,
            calib,
            calib_method,
            eval,
            board,
            stack,
        } => {
            let opts = kiln_compiler::report::Options {
                model,
                calib,
                method: calib_method,
                eval,
                board,
                stack,
            };
            let report = kiln_compiler::report::gather(&opts, |m| eprintln!("{m}"))?;
            let page = kiln_compiler::report::html::render(&report);
            npy::write_atomic(&output, page.as_bytes())?;
            if let kiln_compiler::report::Fit::Unavailable { why, .. } = &report.fit {
                eprintln!("kiln: warning: no fit section: {why}");
            }
            say!("wrote {} ({} bytes)", output.display(), page.len());
            Ok(())
        }
        Command::Firmware {
            model,
            board,
            output,
            compile,
            stack,
        } => {
            let bytes = flash::model_bytes(&compile.source(&model))?;
            let built = flash::build_checked(
                &board,
                &bytes,
                FirmwareOptions::with_stack(stack),
                Some(&output),
                |t| say!("{t}"),
            )?;
            say!(
                "wrote {} for {} ({})",
                output.display(),
                built.board.name,
                built.board.target
            );
            Ok(())
        }
        Command::Flash {
            model,
            board,
            compile,
            stack,
            port,
            baud,
            elf,
            jsonl,
        } => {
            let bytes = flash::model_bytes(&compile.source(&model))?;
            let built = flash::build_checked(
                &board,
                &bytes,
                FirmwareOptions::with_stack(stack),
                elf.as_deref(),
                |t| say!("{t}"),
            )?;
            let mut dev = start_device(&built, port.as_deref(), baud, true)?;
            if let Some(path) = &jsonl {
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| input(format!("{}: {e}", path.display())))?;
                dev.on_frame(Box::new(move |frame| {
                    use std::io::Write;
                    let json = monitor::frame_result_json(frame);
                    // One write per line: a line in the file is whole or absent.
                    let _ = file.write_all(format!("{json}\n").as_bytes());
                }));
            }
            say!(
                "{} running on {}; telemetry follows (Ctrl-C stops)",
                model.display(),
                built.board.name
            );
            dev.watch(|f| say!("{}", monitor::frame_line(f)))
        }
        Command::Bench {
            model,
            board,
            compile,
            stack,
            json,
        } => {
            let bytes = flash::model_bytes(&compile.source(&model))?;
            let b = kiln_compiler::bench::bench(&board, &bytes, stack, |t| say!("{t}"))?;
            if let Some(path) = &json {
                let text =
                    serde_json::to_string_pretty(&b).map_err(|e| Error::Internal(e.into()))?;
                npy::write_atomic(path, text.as_bytes())?;
            }
            say!("{}", kiln_compiler::bench::render(&b).trim_end());
            Ok(())
        }
        Command::Monitor {
            port,
            baud,
            tcp,
            jsonl,
        } => {
            let source = match (port, tcp) {
                (Some(path), _) => monitor::Source::Serial { path, baud },
                (None, Some(addr)) => monitor::Source::Tcp(addr),
                (None, None) => return Err(input("give --port PATH or --tcp ADDR")),
            };
            let mut out = std::io::stdout();
            monitor::monitor(&source, jsonl.as_deref(), &mut out)?;
            Ok(())
        }
        Command::Run {
            model,
            inputs,
            outputs,
            board: Some(board),
            telemetry,
            log,
            per_op,
            stack,
            port,
            baud,
        } => run_on_board(
            &model,
            &inputs,
            &outputs,
            &board,
            telemetry.as_deref(),
            log.as_deref(),
            per_op,
            stack,
            port.as_deref(),
            baud,
        ),
        Command::Run {
            model,
            inputs,
            outputs,
            ..
        } => {
            let buf = ModelBuf::read(&model)?;
            let m = buf.model()?;
            let mut runner = Runner::new(&m);
            let shapes = runner.input_shapes()?;
            let outs = run_batched(&model, &inputs, &outputs, m.output_count(), &shapes, |x| {
                runner.run(x, |_| {})
            })?;
            write_outputs(&outputs, &outs, &output_types(&m))
        }
        Command::Reference {
            model,
            inputs,
            outputs,
        } => {
            let r = Reference::load(&model)?;
            let n_out = r.plan_outputs();
            let outs = run_batched(
                &model,
                &inputs,
                &outputs,
                n_out,
                &r.input_shapes.clone(),
                |x| r.run(x),
            )?;
            write_outputs(&outputs, &outs, &[])
        }
        Command::Eval { model, data } => {
            let what = data.display().to_string();
            let (x, y) = eval::read_labelled(&data)?;
            let is_onnx = model
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("onnx"));
            let predict: Vec<usize> = if is_onnx {
                let r = Reference::load(&model)?;
                let shape = r.input_shapes[0].clone();
                eval::predictions(&x, &shape, &what, |s| r.run(s))?
            } else {
                let buf = ModelBuf::read(&model)?;
                let m = buf.model()?;
                let mut runner = Runner::new(&m);
                let shape = runner.input_shapes()?[0].clone();
                eval::predictions(&x, &shape, &what, |s| runner.run(s, |_| {}))?
            };
            let correct = eval::correct(&predict, &y, &what)?;
            say!(
                "{}: top-1 accuracy {:.2}% ({correct}/{}) on {}",
                model.display(),
                100.0 * correct as f64 / y.len().max(1) as f64,
                y.len(),
                data.display()
            );
            Ok(())
        }
        Command::Inspect { model, json } => {
            let buf = ModelBuf::read(&model)?;
            let info = kiln_compiler::inspect::inspect(&buf.model()?);
            if json {
                say!(
                    "{}",
                    serde_json::to_string_pretty(&info).map_err(|e| Error::Internal(e.into()))?
                );
            } else {
                say!(
                    "{}",
                    kiln_compiler::inspect::render(&info, &model).trim_end()
                );
            }
            Ok(())
        }
    }
}

fn start_device(
    built: &flash::Built,
    port: Option<&Path>,
    baud: u32,
    echo_logs: bool,
) -> Result<Device> {
    if built.board.is_emulated() {
        Device::start_qemu(&built.board, &built.firmware.elf, echo_logs)
    } else {
        let port = match port {
            Some(p) => p.to_owned(),
            None => kiln_compiler::device::default_port()?,
        };
        Device::start_probe(&built.board, &built.firmware.elf, &port, baud)
    }
}

/// `kiln run --board`: every sample through the board, outputs bit for bit as it computed them.
#[allow(clippy::too_many_arguments)]
fn run_on_board(
    model: &Path,
    inputs: &[PathBuf],
    outputs: &[PathBuf],
    board: &str,
    telemetry: Option<&Path>,
    log: Option<&Path>,
    per_op: bool,
    stack: u32,
    port: Option<&Path>,
    baud: u32,
) -> Result<()> {
    use kiln_compiler::runner::{input_bytes, output_arrays, output_sizes};
    use std::sync::{Arc, Mutex};

    let buf = ModelBuf::read(model)?;
    let m = buf.model()?;
    let shapes = Runner::new(&m).input_shapes()?;
    let built = flash::build_checked(
        board,
        buf.bytes(),
        FirmwareOptions::with_stack(stack),
        None,
        |t| eprintln!("{t}"),
    )?;
    let mut dev = start_device(&built, port, baud, false)?;
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    if telemetry.is_some() {
        let lines = lines.clone();
        dev.on_frame(Box::new(move |frame| {
            let json = monitor::frame_result_json(frame);
            if let Ok(mut l) = lines.lock() {
                l.push(json.to_string());
            }
        }));
    }
    let hello = dev.hello()?;
    if hello.model_id != m.checksum() {
        return Err(Error::Internal(anyhow::anyhow!(
            "the board runs model {:08x}, not {} ({:08x})",
            hello.model_id,
            model.display(),
            m.checksum()
        )));
    }
    let sizes = output_sizes(&m)?;
    let mut sequence = 0u32;
    let mut cycles = Vec::new();
    let mut stack_high = 0;
    let outs = run_batched(model, inputs, outputs, m.output_count(), &shapes, |x| {
        let bytes = input_bytes(&m, x)?.concat();
        let (raw, report) = dev.infer(sequence, &bytes, &sizes, per_op)?;
        sequence += 1;
        cycles.push(report.cycles);
        stack_high = stack_high.max(report.stack_high_water);
        let refs: Vec<&[u8]> = raw.iter().map(Vec::as_slice).collect();
        output_arrays(&m, &refs)
    })?;
    let (good, bad) = dev.frame_counts();
    let logs = dev.finish()?;
    write_outputs(outputs, &outs, &output_types(&m))?;
    if let Some(path) = telemetry {
        let mut text = lines.lock().map(|l| l.join("\n")).unwrap_or_default();
        text.push('\n');
        npy::write_atomic(path, text.as_bytes())?;
    }
    if let Some(path) = log {
        let mut text = logs.join("\n");
        text.push('\n');
        npy::write_atomic(path, text.as_bytes())?;
    }
    cycles.sort_unstable();
    let n = kiln_compiler::inspect::thousands;
    eprintln!(
        "{} inferences on {}: cycles min {} / median {} / max {}, stack high-water {} B, arena {} B; {good} frames{}",
        cycles.len(),
        built.board.name,
        n(cycles.first().copied().unwrap_or(0)),
        n(cycles.get(cycles.len() / 2).copied().unwrap_or(0)),
        n(cycles.last().copied().unwrap_or(0)),
        n(u64::from(stack_high)),
        n(u64::from(hello.arena_bytes)),
        if bad > 0 { format!(", {bad} bad frames skipped") } else { String::new() }
    );
    Ok(())
}

/// Reads the inputs, runs one inference per sample, stacks the outputs the way the inputs were batched.
fn run_batched(
    model: &Path,
    inputs: &[PathBuf],
    outputs: &[PathBuf],
    n_outputs: usize,
    shapes: &[Vec<usize>],
    mut infer: impl FnMut(&[ArrayD<f32>]) -> Result<Vec<ArrayD<f32>>>,
) -> Result<Vec<ArrayD<f32>>> {
    if inputs.len() != shapes.len() {
        return Err(input(format!(
            "{}: the model has {} inputs, {} --input given",
            model.display(),
            shapes.len(),
            inputs.len()
        )));
    }
    if outputs.len() != n_outputs {
        return Err(input(format!(
            "{}: the model has {n_outputs} outputs, {} --output given",
            model.display(),
            outputs.len()
        )));
    }
    let mut per_input = Vec::new();
    let mut batching = None;
    for (path, shape) in inputs.iter().zip(shapes) {
        let x = npy::read_npy(path)?;
        let b = npy::batching(x.shape(), shape, &path.display().to_string())?;
        let samples = npy::split(&x, b, shape);
        if let Some((_, n)) = batching {
            if n != samples.len() {
                return Err(input(format!(
                    "{}: {} samples, the first input has {n}",
                    path.display(),
                    samples.len()
                )));
            }
        }
        batching = Some((b, samples.len()));
        per_input.push(samples);
    }
    let (b, n) = batching.ok_or_else(|| input("no inputs"))?;
    let mut per_output: Vec<Vec<ArrayD<f32>>> = vec![Vec::new(); n_outputs];
    for s in 0..n {
        let x: Vec<ArrayD<f32>> = per_input.iter().map(|p| p[s].clone()).collect();
        for (o, y) in infer(&x)?.into_iter().enumerate() {
            per_output[o].push(y);
        }
    }
    per_output
        .iter()
        .map(|parts| npy::stack(parts, b))
        .collect()
}

/// Writes each output as `.npy` of its type (`types[i]`, float32 where absent).
fn write_outputs(paths: &[PathBuf], outs: &[ArrayD<f32>], types: &[IoType]) -> Result<()> {
    for (i, (p, y)) in paths.iter().zip(outs).enumerate() {
        npy::write_npy_as(p, y, types.get(i).copied().unwrap_or_default())?;
    }
    Ok(())
}

/// The element type the source model gives each output (int8 for a quantised model's int8 outputs).
fn output_types(m: &kiln_runtime::Model<'_>) -> Vec<IoType> {
    (0..m.output_count()).map(|i| m.output_type(i)).collect()
}

fn probe_line(p: &kiln_compiler::prune::Probe) -> String {
    let n = kiln_compiler::inspect::thousands;
    format!(
        "prune {:.3}: top-1 {:.2}%, {} MACs, weights {} B{}",
        p.fraction,
        p.accuracy * 100.0,
        n(p.macs),
        n(p.weight_bytes as u64),
        if p.within_budget {
            ""
        } else {
            " (over budget)"
        }
    )
}

fn print_summary(r: &compile::Report, out: &Path) {
    say!(
        "wrote {} ({} bytes, {}, format v{}, crc32 {})",
        out.display(),
        r.file_bytes,
        r.precision,
        r.format_version,
        r.checksum
    );
    say!(
        "  weights {} B + biases {} B, arena {} B (lower bound {} B), {} MACs, {} ops",
        r.weight_bytes,
        r.bias_bytes,
        r.arena_bytes,
        r.arena_lower_bound,
        r.macs,
        r.ops.len()
    );
    if let Some(p) = &r.pruning {
        let pct = |a: f64, b: f64| if a > 0.0 { 100.0 * (a - b) / a } else { 0.0 };
        say!(
            "  pruned {:.3}: {} of {} prunable channels; MACs {} -> {} (-{:.1}%), weights {} -> {} B (-{:.1}%), arena {} -> {} B",
            p.fraction,
            p.removed_channels,
            p.prunable_channels,
            p.before.macs,
            p.after.macs,
            pct(p.before.macs as f64, p.after.macs as f64),
            p.before.weight_bytes,
            p.after.weight_bytes,
            pct(p.before.weight_bytes as f64, p.after.weight_bytes as f64),
            p.before.arena_bytes,
            p.after.arena_bytes
        );
    }
    if let Some(a) = &r.agreement {
        say!(
            "  float vs {} on {} samples: top-1 agreement {:.2}%, SQNR {:.1} dB, max abs error {:.4}",
            r.precision,
            a.samples,
            a.top1 * 100.0,
            a.sqnr_db,
            a.max_abs_error
        );
        if let Some(worst) = a
            .per_layer
            .iter()
            .min_by(|x, y| x.sqnr_db.total_cmp(&y.sqnr_db))
        {
            say!(
                "  lowest layer SQNR: {:.1} dB at '{}'",
                worst.sqnr_db,
                worst.op
            );
        }
    }
    if let Some(m) = &r.mixed {
        let f = |x: &kiln_compiler::mixed::Figures| {
            format!(
                "output SQNR {:.1} dB, file {} B, arena {} B",
                x.output_sqnr_db, x.file_bytes, x.arena_bytes
            )
        };
        say!("  all int8: {}", f(&m.int8));
        for k in &m.kept {
            say!("  + '{}' in f32 ({}): {}", k.op, k.chosen, f(&k.after));
        }
        if m.kept.is_empty() {
            say!("  no layer kept in f32: none raised the output SQNR by 0.1 dB within the budget");
        }
        for o in &m.over_budget {
            say!(
                "  over budget ({}), left int8: '{}' would give {}",
                m.budget.describe(),
                o.op,
                f(&o.would_be)
            );
        }
    }
}
