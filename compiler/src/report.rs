//! `kiln report`: one self-contained HTML page on a compiled model — the operator graph, per-layer cost, the
//! arena over time, float-vs-int8 quality per layer, weight histograms, accuracy, and the fit on a board.
//!
//! [`gather`] collects everything from the model file as the runtime reads it ([`layout`]), the compiler's
//! float-vs-int8 agreement ([`crate::compile::Agreement`]), labelled data and a firmware build;
//! [`html::render`] draws it with [`svg`]'s charts. The page has no scripts and loads nothing: its
//! Content-Security-Policy forbids every fetch, so a browser would report any reference that slipped in.
//!
//! Accuracy against pruning: for an ONNX model with `--calib` and `--eval`, [`gather`] measures the unpruned
//! model and each of `CURVE_FRACTIONS` compiled with structured pruning ([`crate::prune::accuracy_curve`]);
//! [`html::render`] plots whatever points there are ([`svg::accuracy_curve`]). Another measured compilation can
//! add its point with [`crate::eval::kiln_top1`] and [`Accuracy::add_point`].

pub mod html;
pub mod layout;
pub mod svg;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use kiln_boards::Board;
use kiln_runtime::format::DType;

use crate::compile::{self, Agreement, CalibMethod};
use crate::emit::Precision;
use crate::error::{input, Result};
use crate::eval::{kiln_top1, read_labelled, top1};
use crate::firmware::{self, BuildRequest, Footprint};
use crate::reference::Reference;
use crate::runner::ModelBuf;
use layout::Layout;

/// What to report on.
#[derive(Clone, Debug)]
pub struct Options {
    /// An ONNX model (compiled here: int8 with `calib`, else f32) or a `.kiln` file.
    pub model: PathBuf,
    pub calib: Option<PathBuf>,
    pub method: CalibMethod,
    /// Labelled data (`x`, `y`) for the accuracy section.
    pub eval: Option<PathBuf>,
    /// Board name or file for the fit.
    pub board: String,
    pub stack: u32,
}

/// Per-layer float-vs-int8 quality, or why the page has none.
#[derive(Clone, Debug)]
pub enum Quality {
    Measured {
        agreement: Agreement,
        calibration: String,
    },
    Unavailable(String),
}

/// Top-1 accuracy on labelled data.
#[derive(Clone, Debug)]
pub struct Accuracy {
    pub data: String,
    pub samples: usize,
    /// The float ONNX model through tract (the yardstick); `None` for a `.kiln` file.
    pub float_top1: Option<f64>,
    /// The compiled model on Kiln's runtime.
    pub model_top1: f64,
    /// Accuracy against prune fraction, sorted by fraction. Only the unpruned model (0.0) is measured here;
    /// structured pruning adds a point per fraction it compiles ([`Accuracy::add_point`]).
    pub curve: Vec<(f64, f64)>,
}

impl Accuracy {
    /// Adds (or replaces) the accuracy measured at a prune fraction.
    pub fn add_point(&mut self, fraction: f64, top1: f64) {
        self.curve.retain(|p| p.0 != fraction);
        self.curve.push((fraction, top1));
        self.curve.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
}

/// The model against a board, or why it could not be measured.
#[derive(Clone, Debug)]
pub enum Fit {
    Measured {
        board: Box<Board>,
        footprint: Footprint,
    },
    Unavailable {
        board: Box<Board>,
        why: String,
    },
}

/// Everything the page shows.
#[derive(Clone, Debug)]
pub struct Report {
    pub source: String,
    pub model_name: String,
    pub precision: &'static str,
    pub checksum: String,
    pub format_version: u16,
    pub file_bytes: usize,
    pub macs: u64,
    pub layout: Layout,
    pub quality: Quality,
    pub accuracy: Option<Accuracy>,
    pub fit: Fit,
}

fn is_onnx(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}

/// The prune fractions the accuracy curve measures (besides the unpruned model).
const CURVE_FRACTIONS: [f64; 5] = [0.1, 0.2, 0.3, 0.4, 0.5];

/// Compiles or reads the model, measures what the options ask for, and builds the firmware for the fit.
///
/// # Errors
/// Bad input (exit 2) for unreadable or invalid models and data and an unknown board; a firmware that cannot
/// be built (no Cortex-M toolchain, say) is not an error: the page says why the fit is missing.
pub fn gather(opts: &Options, mut progress: impl FnMut(&str)) -> Result<Report> {
    let board = crate::flash::board(&opts.board)?;
    let onnx = is_onnx(&opts.model);
    let (buf, quality) = if onnx {
        let precision = if opts.calib.is_some() {
            Precision::Int8
        } else {
            Precision::F32
        };
        progress(&format!(
            "compiling {} ({})",
            opts.model.display(),
            if opts.calib.is_some() { "int8" } else { "f32" }
        ));
        let compiled = compile::compile(
            &opts.model,
            &compile::Options {
                precision,
                calib: opts.calib.clone(),
                method: opts.method,
                keep_f32: Default::default(),
            },
        )?;
        let quality = match (compiled.report.agreement, compiled.report.calibration) {
            (Some(agreement), Some(calibration)) => Quality::Measured {
                agreement,
                calibration,
            },
            _ => Quality::Unavailable(
                "f32 model: nothing is quantised. Pass --calib DATA to compile int8 and see each layer's \
                 float-vs-int8 agreement."
                    .into(),
            ),
        };
        (ModelBuf::new(&compiled.bytes), quality)
    } else {
        if opts.calib.is_some() {
            return Err(input(format!(
                "{}: --calib compiles an ONNX model; a .kiln file is already compiled (give the .onnx to see \
                 per-layer quality)",
                opts.model.display()
            )));
        }
        let quality = Quality::Unavailable(
            "A .kiln file holds no float model to compare with: run `kiln report MODEL.onnx --calib DATA` for \
             per-layer SQNR, cosine similarity and error."
                .into(),
        );
        (ModelBuf::read(&opts.model)?, quality)
    };
    let model = buf.model()?;
    let layout = layout::layout(&model);

    let accuracy = match &opts.eval {
        Some(data) => {
            progress(&format!("evaluating on {}", data.display()));
            let mut acc = evaluate(&opts.model, onnx, &buf, data)?;
            if onnx && opts.calib.is_some() {
                progress("accuracy against structured pruning (compiling each fraction)");
                let int8 = compile::Options {
                    precision: Precision::Int8,
                    calib: opts.calib.clone(),
                    method: opts.method,
                    keep_f32: Default::default(),
                };
                match crate::prune::accuracy_curve(&opts.model, &int8, data, &CURVE_FRACTIONS) {
                    Ok(points) => points
                        .into_iter()
                        .for_each(|(f, top1, _)| acc.add_point(f, top1)),
                    // (A quantised model cannot be pruned: the page plots the unpruned point only.)
                    Err(e) => progress(&format!("no pruning curve: {e}")),
                }
            }
            Some(acc)
        }
        None => None,
    };

    progress(&format!("building firmware for {}", board.name));
    let fit = match measure_fit(&board, &opts.board, buf.bytes(), opts.stack) {
        Ok(footprint) => Fit::Measured {
            board: Box::new(board),
            footprint,
        },
        Err(why) => Fit::Unavailable {
            board: Box::new(board),
            why,
        },
    };

    Ok(Report {
        source: opts.model.display().to_string(),
        model_name: model.name().to_string(),
        precision: {
            let has = |d: DType| layout.tensors.iter().any(|t| t.dtype == d.name());
            match (has(DType::I8), has(DType::F32)) {
                (true, true) => "int8 + f32",
                (true, false) => "int8",
                _ => "f32",
            }
        },
        checksum: format!("{:08x}", model.checksum()),
        format_version: model.format_version(),
        file_bytes: model.file_len(),
        macs: model.macs(),
        layout,
        quality,
        accuracy,
        fit,
    })
}

/// Builds the firmware around the model and reads its footprint; `Err` says why it could not.
fn measure_fit(
    board: &Board,
    board_arg: &str,
    model: &[u8],
    stack: u32,
) -> std::result::Result<Footprint, String> {
    let why = |e: crate::error::Error| e.to_string();
    if let Err(e) = firmware::toolchain(&board.target) {
        return Err(format!(
            "no Cortex-M toolchain to build the firmware, so code bytes are unknown: {}",
            why(e)
        ));
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let model_path = dir.path().join("model.kiln");
    std::fs::write(&model_path, model).map_err(|e| e.to_string())?;
    let fw = firmware::build(
        &BuildRequest {
            board,
            board_arg,
            model: &model_path,
            options: firmware::Options::with_stack(stack),
        },
        &dir.path().join("firmware.elf"),
    )
    .map_err(|e| format!("building the firmware failed: {}", why(e)))?;
    Ok(fw.footprint)
}

fn evaluate(model_path: &Path, onnx: bool, buf: &ModelBuf, data: &Path) -> Result<Accuracy> {
    let what = data.display().to_string();
    let (x, labels) = read_labelled(data)?;
    let model_top1 = kiln_top1(buf.bytes(), &x, &labels, &what)?;
    let float_top1 = if onnx {
        let r = Reference::load(model_path)?;
        let shape = r.input_shapes[0].clone();
        Some(top1(&x, &labels, &shape, &what, |s| r.run(s))?)
    } else {
        None
    };
    Ok(Accuracy {
        data: what,
        samples: labels.len(),
        float_top1,
        model_top1,
        curve: vec![(0.0, model_top1)],
    })
}

/// The per-layer float-vs-int8 table `kiln compile --layers` prints: SQNR, cosine similarity and max abs error
/// of every int8 layer, lowest SQNR marked.
pub fn layer_table(a: &Agreement) -> String {
    let worst = a
        .per_layer
        .iter()
        .enumerate()
        .min_by(|x, y| x.1.sqnr_db.total_cmp(&y.1.sqnr_db))
        .map(|(i, _)| i);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "  {:>3}  {:<32} {:>9} {:>9} {:>11}",
        "#", "layer", "SQNR dB", "cosine", "max |err|"
    );
    for (i, l) in a.per_layer.iter().enumerate() {
        let _ = writeln!(
            s,
            "  {:>3}  {:<32} {:>9.1} {:>9.5} {:>11.4}{}",
            i,
            l.op,
            l.sqnr_db,
            l.cosine,
            l.max_abs_error,
            if Some(i) == worst { "  <- lowest" } else { "" }
        );
    }
    s
}
