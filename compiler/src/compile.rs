//! `kiln compile`: the whole pipeline, calibration and the report.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kiln_runtime::format::{DType, TensorDef};
use ndarray::ArrayD;
use serde::Serialize;

use crate::emit::{self, Emitted, Precision, Ranges};
use crate::error::{input, Result};
use crate::lower::{PId, Program};
use crate::npy;
use crate::runner::{dequantize, ModelBuf, Runner};

/// How activation ranges are chosen from calibration data.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CalibMethod {
    /// The observed minimum and maximum.
    MinMax,
    /// Clip the rarest `100 - p` percent of values at each end (robust to outliers).
    Percentile(f64),
    /// The range (a shrunk min/max) that minimises the mean squared int8 quantisation error, clipping included,
    /// over the observed distribution.
    Mse,
}

impl std::str::FromStr for CalibMethod {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "minmax" => Ok(CalibMethod::MinMax),
            "percentile" => Ok(CalibMethod::Percentile(99.99)),
            "mse" => Ok(CalibMethod::Mse),
            _ => match s.strip_prefix("percentile:").and_then(|p| p.parse::<f64>().ok()) {
                Some(p) if p > 50.0 && p <= 100.0 => Ok(CalibMethod::Percentile(p)),
                _ => Err(format!("unknown calibration method '{s}' (expected minmax, mse, percentile or percentile:P)")),
            },
        }
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    pub precision: Precision,
    pub calib: Option<PathBuf>,
    pub method: CalibMethod,
    /// Layers of an int8 model to keep in f32 ([`crate::mixed`]); empty: none.
    pub keep_f32: crate::mixed::Request,
}

/// One layer's float-vs-int8 agreement.
#[derive(Clone, Debug, Serialize)]
pub struct LayerAgreement {
    pub op: String,
    pub tensor: String,
    pub sqnr_db: f64,
    pub max_abs_error: f64,
    /// Cosine similarity of the float and dequantised int8 values over every sample (1 = same direction).
    pub cosine: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Agreement {
    pub samples: usize,
    /// Fraction of output rows whose argmax is the same in float and int8.
    pub top1: f64,
    pub sqnr_db: f64,
    pub max_abs_error: f64,
    pub per_layer: Vec<LayerAgreement>,
}

#[derive(Clone, Debug, Serialize)]
pub struct OpReport {
    pub name: String,
    pub kind: &'static str,
    pub macs: u64,
    pub weight_bytes: usize,
    pub bias_bytes: usize,
    pub output_bytes: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub model: String,
    pub precision: &'static str,
    pub format_version: u16,
    pub checksum: String,
    pub file_bytes: usize,
    pub weight_bytes: usize,
    pub bias_bytes: usize,
    pub blob_bytes: usize,
    pub arena_bytes: usize,
    pub arena_lower_bound: usize,
    pub macs: u64,
    pub ops: Vec<OpReport>,
    pub calibration: Option<String>,
    pub agreement: Option<Agreement>,
    /// `--prune` / `--prune-budget`: channels removed per layer, sizes before and after.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pruning: Option<crate::prune::PruneReport>,
    /// `--keep-f32` / `--keep-f32-layer`: the layers kept in f32 and what they cost and gained.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mixed: Option<crate::mixed::MixedReport>,
}

pub struct Compiled {
    pub bytes: Vec<u8>,
    pub report: Report,
}

/// The front half of the pipeline: ONNX -> optimised IR -> lowered program.
pub fn lower_onnx(path: &Path) -> Result<Program> {
    let g = optimized_graph(path)?;
    crate::lower::lower(&g).map_err(|e| match e {
        crate::error::Error::Input(m) => input(format!("{}: {m}", path.display())),
        other => other,
    })
}

/// Makes an input error name the model file (import and lowering messages already do).
fn naming(path: &Path) -> impl Fn(crate::error::Error) -> crate::error::Error + '_ {
    move |e| match e {
        crate::error::Error::Input(m) if !m.starts_with(&path.display().to_string()) => {
            input(format!("{}: {m}", path.display()))
        }
        other => other,
    }
}

pub fn compile(path: &Path, opts: &Options) -> Result<Compiled> {
    compile_program(path, opts, None).map_err(naming(path))
}

/// [`compile`], first removing fraction `prune` of the prunable channels ([`crate::prune`]) when given.
pub fn compile_with(path: &Path, opts: &Options, prune: Option<f64>) -> Result<Compiled> {
    compile_program(path, opts, prune).map_err(naming(path))
}

/// The pipeline from an imported, optimised graph (what `--prune-budget` compiles again and again).
pub fn compile_graph(
    path: &Path,
    g: crate::ir::Graph,
    opts: &Options,
    prune: Option<f64>,
) -> Result<Compiled> {
    compile_ir(path, g, opts, prune).map_err(naming(path))
}

/// The ONNX model imported and optimised (BatchNorm folded, activations fused): the float IR every later step
/// (lowering, pruning) starts from.
pub fn optimized_graph(path: &Path) -> Result<crate::ir::Graph> {
    let mut g = crate::import::import_onnx(path)?;
    crate::passes::optimize(&mut g);
    Ok(g)
}

fn compile_program(path: &Path, opts: &Options, prune: Option<f64>) -> Result<Compiled> {
    compile_ir(path, optimized_graph(path)?, opts, prune)
}

fn compile_ir(
    path: &Path,
    mut g: crate::ir::Graph,
    opts: &Options,
    prune: Option<f64>,
) -> Result<Compiled> {
    let pruning = match prune {
        Some(f) => Some(crate::prune::prune_for_compile(path, &mut g, f, opts)?),
        None => None,
    };
    let program = crate::lower::lower(&g)?;
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let float = emit::emit(&program, Precision::F32, None, &name)?;
    let wants_mixed = !opts.keep_f32.is_empty();
    let mut mixed = None;
    let (emitted, calibration, agreement) = match opts.precision {
        Precision::F32 if wants_mixed => {
            return Err(input(
                "--keep-f32 / --keep-f32-layer choose layers of an int8 model to keep in f32; with --precision \
                 f32 every layer already is",
            ))
        }
        Precision::F32 => (float, None, None),
        Precision::Int8 if opts.calib.is_none() && !program.quant.is_empty() && wants_mixed => {
            return Err(input(
                "--keep-f32 / --keep-f32-layer need --calib: a quantised (QDQ) model's own scales do not say how \
                 much each layer costs in accuracy",
            ))
        }
        // A quantised (QDQ) model: its own scales and zero points, no calibration data.
        Precision::Int8 if opts.calib.is_none() && !program.quant.is_empty() => {
            let int8 = crate::qdq::emit_given(&program, &name)?;
            (int8, Some("the model's own (QDQ)".to_string()), None)
        }
        Precision::Int8 => {
            let Some(calib) = &opts.calib else {
                return Err(input(format!(
                    "{}: int8 needs calibration data: pass --calib DATA.npy (samples stacked on a leading axis, each \
                     shaped like the model input) or --calib DATA.npz (one such array per input name), or compile \
                     with --precision f32",
                    path.display()
                )));
            };
            let samples = load_samples(calib, &program)?;
            let ranges = calibrate(&program, &float, &samples, opts.method)?;
            let int8 = if wants_mixed {
                let bar = progress(0, "f32 layers");
                let (e, r) = crate::mixed::choose(
                    &program,
                    &float,
                    &ranges,
                    &samples,
                    &name,
                    &opts.keep_f32,
                    |m| bar.set_message(m.to_string()),
                )?;
                bar.finish_and_clear();
                mixed = Some(r);
                e
            } else {
                emit::emit(&program, Precision::Int8, Some(&ranges), &name)?
            };
            let agreement = agreement(&program, &float, &int8, &samples)?;
            let how = format!(
                "{} samples from {}, {:?}",
                samples.len(),
                calib.display(),
                opts.method
            );
            (int8, Some(how), Some(agreement))
        }
    };
    let model = ModelBuf::new(&emitted.bytes);
    let checksum = model.model()?.checksum();
    let report = Report {
        model: path.display().to_string(),
        precision: match opts.precision {
            Precision::F32 => "f32",
            Precision::Int8 if mixed.as_ref().is_some_and(|m| !m.kept.is_empty()) => "int8+f32",
            Precision::Int8 => "int8",
        },
        format_version: kiln_runtime::format::FORMAT_VERSION,
        checksum: format!("{checksum:08x}"),
        file_bytes: emitted.bytes.len(),
        weight_bytes: emitted.weight_bytes,
        bias_bytes: emitted.bias_bytes,
        blob_bytes: emitted.blob_bytes,
        arena_bytes: emitted.arena_bytes,
        arena_lower_bound: emitted.arena_lower_bound,
        macs: emitted.macs,
        ops: emitted
            .ops
            .iter()
            .map(|o| OpReport {
                name: o.name.clone(),
                kind: o.kind,
                macs: o.macs,
                weight_bytes: o.weight_bytes,
                bias_bytes: o.bias_bytes,
                output_bytes: o.output_bytes,
            })
            .collect(),
        calibration,
        agreement,
        pruning: pruning.map(|mut p| {
            p.after = crate::prune::Sizes::of(&g, &emitted);
            p
        }),
        mixed,
    };
    Ok(Compiled {
        bytes: emitted.bytes,
        report,
    })
}

/// Calibration samples: one `Vec` of input arrays per inference.
pub fn load_samples(path: &Path, program: &Program) -> Result<Vec<Vec<ArrayD<f32>>>> {
    let what = path.display().to_string();
    let shapes: Vec<Vec<usize>> = program
        .inputs
        .iter()
        .map(|&i| program.tensors[i].shape.clone())
        .collect();
    let names: Vec<String> = program
        .inputs
        .iter()
        .map(|&i| program.tensors[i].name.clone())
        .collect();
    let is_npz = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npz"));
    let arrays: Vec<ArrayD<f32>> = if is_npz {
        let mut all = npy::read_npz(path)?;
        let mut picked = Vec::new();
        for name in &names {
            match all.iter().position(|(k, _)| k == name) {
                Some(i) => picked.push(all.swap_remove(i).1),
                None if names.len() == 1 && all.len() == 1 => picked.push(all.remove(0).1),
                None if names.len() == 1 && all.iter().any(|(k, _)| k == "x") => {
                    let i = all.iter().position(|(k, _)| k == "x").unwrap_or(0);
                    picked.push(all.swap_remove(i).1);
                }
                None => {
                    let keys: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
                    return Err(input(format!(
                        "{what}: no array named '{name}' (the model's input); it has {keys:?}"
                    )));
                }
            }
        }
        picked
    } else {
        if names.len() != 1 {
            return Err(input(format!(
                "{what}: the model has {} inputs ({names:?}); give calibration data as .npz keyed by input name",
                names.len()
            )));
        }
        vec![npy::read_npy(path)?]
    };
    let mut per_input = Vec::new();
    for (i, a) in arrays.iter().enumerate() {
        let b = npy::batching(
            a.shape(),
            &shapes[i],
            &format!("{what} (input '{}')", names[i]),
        )?;
        per_input.push(npy::split(a, b, &shapes[i]));
    }
    let n = per_input[0].len();
    if per_input.iter().any(|p| p.len() != n) {
        return Err(input(format!(
            "{what}: the inputs have different sample counts"
        )));
    }
    if n == 0 {
        return Err(input(format!("{what}: no samples")));
    }
    Ok((0..n)
        .map(|s| per_input.iter().map(|p| p[s].clone()).collect())
        .collect())
}

/// Model-file tensor index -> program tensor.
fn pid_of(e: &Emitted) -> HashMap<u16, PId> {
    e.tensor_index.iter().map(|(&p, &i)| (i, p)).collect()
}

fn progress(len: usize, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} ({eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

fn decode_f32(bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

/// Runs the float model on every sample and picks each computed tensor's range.
pub fn calibrate(
    program: &Program,
    float: &Emitted,
    samples: &[Vec<ArrayD<f32>>],
    method: CalibMethod,
) -> Result<Ranges> {
    let buf = ModelBuf::new(&float.bytes);
    let model = buf.model()?;
    let pid = pid_of(float);
    let mut runner = Runner::new(&model);
    let mut minmax: HashMap<PId, (f32, f32)> = HashMap::new();
    let mut widen = |p: PId, v: &mut dyn Iterator<Item = f32>| {
        let e = minmax
            .entry(p)
            .or_insert((f32::INFINITY, f32::NEG_INFINITY));
        for x in v {
            e.0 = e.0.min(x);
            e.1 = e.1.max(x);
        }
    };
    let bar = progress(samples.len(), "calibrating");
    for s in samples {
        for (i, x) in s.iter().enumerate() {
            widen(program.inputs[i], &mut x.iter().copied());
        }
        runner.run(s, |v| widen(pid[&v.tensor], &mut decode_f32(v.bytes)))?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    if method == CalibMethod::MinMax {
        return Ok(minmax);
    }

    // Second pass: histograms over the observed ranges, then clip both tails.
    const BINS: usize = 2048;
    let mut hists: HashMap<PId, Vec<u64>> = minmax.keys().map(|&k| (k, vec![0u64; BINS])).collect();
    let mut add = |p: PId, v: &mut dyn Iterator<Item = f32>| {
        let (lo, hi) = minmax[&p];
        let h = hists
            .get_mut(&p)
            .map(|h| h.as_mut_slice())
            .unwrap_or(&mut []);
        if h.is_empty() || hi <= lo {
            return;
        }
        let k = BINS as f32 / (hi - lo);
        for x in v {
            let b = (((x - lo) * k) as usize).min(BINS - 1);
            h[b] += 1;
        }
    };
    let bar = progress(samples.len(), "histograms");
    for s in samples {
        for (i, x) in s.iter().enumerate() {
            add(program.inputs[i], &mut x.iter().copied());
        }
        runner.run(s, |v| add(pid[&v.tensor], &mut decode_f32(v.bytes)))?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(minmax
        .iter()
        .map(|(&k, &(lo, hi))| {
            let h = &hists[&k];
            let range = match method {
                _ if hi <= lo || h.iter().all(|&c| c == 0) => (lo, hi),
                CalibMethod::Percentile(p) => percentile_range(h, lo, hi, p),
                _ => mse_range(h, lo, hi),
            };
            (k, range)
        })
        .collect())
}

fn bin_center(lo: f32, hi: f32, b: usize, bins: usize) -> f64 {
    lo as f64 + (b as f64 + 0.5) * (hi as f64 - lo as f64) / bins as f64
}

/// Clips `100 - p` percent of the histogram's mass at each end.
fn percentile_range(h: &[u64], lo: f32, hi: f32, p: f64) -> (f32, f32) {
    let total: u64 = h.iter().sum();
    let cut = (total as f64 * (100.0 - p) / 100.0).floor() as u64;
    let first = |it: &mut dyn Iterator<Item = (usize, &u64)>| {
        let mut acc = 0;
        for (b, &c) in it {
            acc += c;
            if acc > cut {
                return b;
            }
        }
        0
    };
    let lo_bin = first(&mut h.iter().enumerate());
    let hi_bin = first(&mut h.iter().enumerate().rev());
    let width = (hi - lo) / h.len() as f32;
    (lo + lo_bin as f32 * width, lo + (hi_bin + 1) as f32 * width)
}

/// Shrinks `[lo, hi]` towards 0 by the factor that minimises the expected squared error of int8 quantisation
/// (rounding inside the range, clipping outside) under the histogram.
fn mse_range(h: &[u64], lo: f32, hi: f32) -> (f32, f32) {
    let bins = h.len();
    let error = |a: f32, b: f32| -> f64 {
        let q = crate::emit::choose_quant(a, b);
        let (s, z) = (q.scale as f64, q.zero_point as f64);
        h.iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(i, &c)| {
                let v = bin_center(lo, hi, i, bins);
                let qv = ((v / s).round() + z).clamp(-128.0, 127.0);
                c as f64 * (v - (qv - z) * s).powi(2)
            })
            .sum()
    };
    let mut best = (error(lo, hi), 1.0f32);
    for step in 1..80 {
        let f = 1.0 - step as f32 * 0.01;
        let e = error(lo * f, hi * f);
        if e < best.0 {
            best = (e, f);
        }
    }
    (lo * best.1, hi * best.1)
}

#[derive(Default)]
struct ErrAcc {
    signal: f64,
    noise: f64,
    max_abs: f64,
    /// Sum of float * int8 and of int8 squared, for the cosine similarity.
    dot: f64,
    quantised: f64,
}

impl ErrAcc {
    fn add(&mut self, f: f32, q: f32) {
        self.signal += (f as f64).powi(2);
        self.noise += (f as f64 - q as f64).powi(2);
        self.max_abs = self.max_abs.max((f as f64 - q as f64).abs());
        self.dot += f as f64 * q as f64;
        self.quantised += (q as f64).powi(2);
    }

    fn cosine(&self) -> f64 {
        let norms = (self.signal * self.quantised).sqrt();
        match (self.signal == 0.0, self.quantised == 0.0) {
            (true, true) => 1.0,
            _ if norms == 0.0 => 0.0,
            _ => self.dot / norms,
        }
    }

    fn sqnr_db(&self) -> f64 {
        if self.noise == 0.0 {
            return f64::INFINITY;
        }
        10.0 * (self.signal / self.noise).log10()
    }
}

/// Runs float and int8 models side by side on `samples`: output agreement and per-layer error.
pub fn agreement(
    program: &Program,
    float: &Emitted,
    int8: &Emitted,
    samples: &[Vec<ArrayD<f32>>],
) -> Result<Agreement> {
    let fbuf = ModelBuf::new(&float.bytes);
    let qbuf = ModelBuf::new(&int8.bytes);
    let (fmodel, qmodel) = (fbuf.model()?, qbuf.model()?);
    let (fpid, qpid) = (pid_of(float), pid_of(int8));
    let qdefs: Vec<TensorDef<'_>> = qmodel.tensors().collect();
    let names: HashMap<PId, String> = float
        .ops
        .iter()
        .zip(fmodel.ops())
        .map(|(o, d)| (fpid[&d.output_tensor], o.name.clone()))
        .collect();
    let mut frunner = Runner::new(&fmodel);
    let mut qrunner = Runner::new(&qmodel);
    let mut layers: HashMap<PId, ErrAcc> = HashMap::new();
    let mut out_err = ErrAcc::default();
    let (mut agree, mut rows) = (0usize, 0usize);
    let bar = progress(samples.len(), "comparing");
    for s in samples {
        let mut fvals: HashMap<PId, Vec<f32>> = HashMap::new();
        let fout = frunner.run(s, |v| {
            fvals.insert(fpid[&v.tensor], decode_f32(v.bytes).collect());
        })?;
        let qout = qrunner.run(s, |v| {
            let p = qpid[&v.tensor];
            let (Some(f), Some(def)) = (fvals.get(&p), qdefs.get(v.tensor as usize)) else {
                return;
            };
            // int8 layers and, in a mixed model, the layers kept in f32.
            if def.dtype == DType::I32 {
                return;
            }
            let acc = layers.entry(p).or_default();
            for (&fv, qv) in f.iter().zip(dequantize(v.bytes, def.dtype, def.quant)) {
                acc.add(fv, qv);
            }
        })?;
        for (f, q) in fout.iter().zip(&qout) {
            f.iter()
                .zip(q.iter())
                .for_each(|(&a, &b)| out_err.add(a, b));
            let last = f.shape().last().copied().unwrap_or(1).max(1);
            let (fs, qs) = (f.as_standard_layout(), q.as_standard_layout());
            for (fr, qr) in fs
                .as_slice()
                .unwrap_or(&[])
                .chunks(last)
                .zip(qs.as_slice().unwrap_or(&[]).chunks(last))
            {
                rows += 1;
                agree += usize::from(crate::eval::argmax(fr) == crate::eval::argmax(qr));
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let mut per_layer: Vec<(usize, LayerAgreement)> = layers
        .iter()
        .filter_map(|(p, acc)| {
            let op = names.get(p)?.clone();
            let order = float
                .ops
                .iter()
                .position(|o| o.name == op)
                .unwrap_or(usize::MAX);
            Some((
                order,
                LayerAgreement {
                    op,
                    tensor: program.tensors[*p].name.clone(),
                    sqnr_db: acc.sqnr_db(),
                    max_abs_error: acc.max_abs,
                    cosine: acc.cosine(),
                },
            ))
        })
        .collect();
    per_layer.sort_by_key(|(o, _)| *o);
    Ok(Agreement {
        samples: samples.len(),
        top1: if rows == 0 {
            1.0
        } else {
            agree as f64 / rows as f64
        },
        sqnr_db: out_err.sqnr_db(),
        max_abs_error: out_err.max_abs,
        per_layer: per_layer.into_iter().map(|(_, l)| l).collect(),
    })
}
