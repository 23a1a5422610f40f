//! `kiln`: compile ONNX models to `.kiln` files, run them, inspect them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kiln_compiler::compile::{self, CalibMethod};
use kiln_compiler::emit::Precision;
use kiln_compiler::error::{input, Error, Result};
use kiln_compiler::npy;
use kiln_compiler::reference::Reference;
use kiln_compiler::runner::{ModelBuf, Runner};
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
  kiln inspect model.kiln";

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
The report (--report) holds sizes, arena bytes, MACs per op, and float-vs-int8 agreement on
the calibration data (top-1, SQNR, max abs error), overall and per layer.

Example:
  kiln compile model.onnx -o model.kiln --calib samples.npy --report report.json")]
    Compile {
        /// The ONNX model.
        model: PathBuf,
        /// Where to write the .kiln file.
        #[arg(short, long)]
        output: PathBuf,
        /// int8 (needs --calib) or f32.
        #[arg(long, default_value = "int8")]
        precision: Precision,
        /// Calibration data (.npy or .npz), required for int8.
        #[arg(long)]
        calib: Option<PathBuf>,
        /// How activation ranges are chosen: minmax, mse, percentile (99.99) or percentile:P.
        #[arg(long, default_value = "minmax")]
        calib_method: CalibMethod,
        /// Write a JSON report here.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Run a .kiln model on the host with Kiln's runtime (the code the device runs).
    #[command(after_help = "\
Inputs are float32 .npy in the ONNX model's own layout, each either the model input's shape
(one inference), that shape with N prepended, or that shape with its leading (batch) dimension
multiplied by N (N inferences; outputs are stacked the same way). Outputs are float32 .npy
(int8 models are dequantised at the boundary).")]
    Run {
        model: PathBuf,
        /// One per model input, in order.
        #[arg(long = "input", required = true)]
        inputs: Vec<PathBuf>,
        /// One per model output, in order.
        #[arg(long = "output", required = true)]
        outputs: Vec<PathBuf>,
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
        } => {
            let opts = compile::Options {
                precision,
                calib,
                method: calib_method,
            };
            let compiled = compile::compile(&model, &opts)?;
            let report_json = serde_json::to_string_pretty(&compiled.report)
                .map_err(|e| Error::Internal(e.into()))?;
            npy::write_atomic(&output, &compiled.bytes)?;
            if let Some(r) = &report {
                npy::write_atomic(r, report_json.as_bytes())?;
            }
            print_summary(&compiled.report, &output);
            Ok(())
        }
        Command::Run {
            model,
            inputs,
            outputs,
        } => {
            let buf = ModelBuf::read(&model)?;
            let m = buf.model()?;
            let mut runner = Runner::new(&m);
            let shapes = runner.input_shapes()?;
            let outs = run_batched(&model, &inputs, &outputs, m.output_count(), &shapes, |x| {
                runner.run(x, |_| {})
            })?;
            write_outputs(&outputs, &outs)
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
            write_outputs(&outputs, &outs)
        }
        Command::Eval { model, data } => {
            let arrays = npy::read_npz(&data)?;
            let get = |k: &str| {
                arrays
                    .iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, a)| a.clone())
                    .ok_or_else(|| {
                        input(format!(
                            "{}: no array '{k}' (labelled data needs `x` and `y`)",
                            data.display()
                        ))
                    })
            };
            let (x, y) = (get("x")?, get("y")?);
            let is_onnx = model
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("onnx"));
            let predict: Vec<usize> = if is_onnx {
                let r = Reference::load(&model)?;
                let shape = r.input_shapes[0].clone();
                top1(&x, &shape, &data, |s| r.run(s))?
            } else {
                let buf = ModelBuf::read(&model)?;
                let m = buf.model()?;
                let mut runner = Runner::new(&m);
                let shape = runner.input_shapes()?[0].clone();
                top1(&x, &shape, &data, |s| runner.run(s, |_| {}))?
            };
            if predict.len() != y.len() {
                return Err(input(format!(
                    "{}: {} predictions but {} labels",
                    data.display(),
                    predict.len(),
                    y.len()
                )));
            }
            let correct = predict
                .iter()
                .zip(y.iter())
                .filter(|(&p, &l)| p as f32 == l)
                .count();
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

/// Argmax over the last axis of output 0, for every row of every sample of `x`.
fn top1(
    x: &ArrayD<f32>,
    shape: &[usize],
    data: &Path,
    mut infer: impl FnMut(&[ArrayD<f32>]) -> Result<Vec<ArrayD<f32>>>,
) -> Result<Vec<usize>> {
    let b = npy::batching(x.shape(), shape, &format!("{}[x]", data.display()))?;
    let mut out = Vec::new();
    for s in npy::split(x, b, shape) {
        let y = infer(&[s])?
            .into_iter()
            .next()
            .ok_or_else(|| input("the model has no output"))?;
        let y = y.as_standard_layout();
        let last = y.shape().last().copied().unwrap_or(1).max(1);
        for row in y.as_slice().unwrap_or(&[]).chunks(last) {
            let best = row
                .iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |b, (i, &v)| if v > b.1 { (i, v) } else { b },
                );
            out.push(best.0);
        }
    }
    Ok(out)
}

fn write_outputs(paths: &[PathBuf], outs: &[ArrayD<f32>]) -> Result<()> {
    for (p, y) in paths.iter().zip(outs) {
        npy::write_npy(p, y)?;
    }
    Ok(())
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
    if let Some(a) = &r.agreement {
        say!(
            "  float vs int8 on {} samples: top-1 agreement {:.2}%, SQNR {:.1} dB, max abs error {:.4}",
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
}
