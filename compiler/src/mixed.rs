//! Mixed precision: an int8 model that keeps the layers int8 hurts most in f32, within a flash and RAM budget.
//!
//! A kept layer computes in f32 with f32 weights (4 bytes instead of 1 per weight: flash) and f32 activations
//! (4 bytes per element: arena); `QuantizeS8` / `DequantizeS8` ops convert at its edges ([`emit::emit_mixed`]).
//! Which layers: those named by the user, then, greedily, up to `worst` more, each round the candidate whose f32
//! version raises the output SQNR against the float model most on the calibration data, among those that keep
//! the model within the budget. The per-layer SQNR table shows where error appears; the choice is made on what
//! keeping a layer actually does to the output, so a layer whose error later layers wash out is not paid for.

use std::collections::BTreeSet;

use ndarray::ArrayD;
use serde::Serialize;

use crate::emit::{self, Emitted, Ranges};
use crate::error::{input, Result};
use crate::lower::{Program, StepKind};
use crate::runner::{ModelBuf, Runner};

/// The most a mixed model may take. `None`: no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Budget {
    /// Model file bytes (what goes to flash).
    pub max_file_bytes: Option<usize>,
    /// Arena bytes (the model's RAM).
    pub max_arena_bytes: Option<usize>,
}

impl Budget {
    fn admits(&self, e: &Emitted) -> bool {
        self.max_file_bytes.is_none_or(|m| e.bytes.len() <= m)
            && self.max_arena_bytes.is_none_or(|m| e.arena_bytes <= m)
    }

    /// `model file <= N B, arena <= M B`, or `no limit`.
    pub fn describe(&self) -> String {
        let part = |what: &str, v: Option<usize>| v.map(|v| format!("{what} <= {v} B"));
        let parts: Vec<String> = [
            part("model file", self.max_file_bytes),
            part("arena", self.max_arena_bytes),
        ]
        .into_iter()
        .flatten()
        .collect();
        if parts.is_empty() {
            "no limit".to_string()
        } else {
            parts.join(", ")
        }
    }
}

/// What the user asked for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Request {
    /// Layers (node names) to keep in f32 whatever they measure.
    pub layers: Vec<String>,
    /// Up to this many more layers, chosen by measurement.
    pub worst: usize,
    pub budget: Budget,
}

impl Request {
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty() && self.worst == 0
    }
}

/// A model's size and its output's agreement with the float model.
#[derive(Clone, Debug, Serialize)]
pub struct Figures {
    /// Output signal-to-quantisation-noise ratio against the float model over the calibration samples.
    pub output_sqnr_db: f64,
    pub file_bytes: usize,
    pub arena_bytes: usize,
}

/// One layer kept in f32, with the model's figures once it (and those before it) was.
#[derive(Clone, Debug, Serialize)]
pub struct Kept {
    pub op: String,
    /// `asked` (named by the user) or `measured` (chosen for its gain).
    pub chosen: &'static str,
    pub after: Figures,
}

/// A layer that would have raised the output SQNR more than the one chosen in its round, left int8 because
/// keeping it in f32 breaks the budget.
#[derive(Clone, Debug, Serialize)]
pub struct OverBudget {
    pub op: String,
    pub would_be: Figures,
}

#[derive(Clone, Debug, Serialize)]
pub struct MixedReport {
    pub samples: usize,
    pub budget: Budget,
    pub int8: Figures,
    pub mixed: Figures,
    pub kept: Vec<Kept>,
    pub over_budget: Vec<OverBudget>,
}

/// Steps that may be kept in f32: those that compute (data movement and max pooling add no error of their own).
pub fn candidates(p: &Program) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for s in &p.steps {
        let computes = match &s.kind {
            StepKind::Pool { kind, .. } => !matches!(kind, crate::ir::PoolKind::Max),
            StepKind::Pad { .. }
            | StepKind::Concat { .. }
            | StepKind::Slice { .. }
            | StepKind::Transpose { .. } => false,
            _ => true,
        };
        if computes && !names.contains(&s.name) {
            names.push(s.name.clone());
        }
    }
    names
}

/// Output SQNR of models against the float model's outputs on fixed samples.
struct Scorer<'a> {
    samples: &'a [Vec<ArrayD<f32>>],
    reference: Vec<Vec<f32>>,
}

impl<'a> Scorer<'a> {
    fn new(float: &Emitted, samples: &'a [Vec<ArrayD<f32>>]) -> Result<Self> {
        Ok(Scorer {
            samples,
            reference: outputs(float, samples)?,
        })
    }

    fn figures(&self, e: &Emitted) -> Result<Figures> {
        let (mut signal, mut noise) = (0f64, 0f64);
        for (f, q) in self.reference.iter().zip(outputs(e, self.samples)?) {
            for (&a, &b) in f.iter().zip(&q) {
                signal += (a as f64).powi(2);
                noise += (a as f64 - b as f64).powi(2);
            }
        }
        Ok(Figures {
            output_sqnr_db: if noise == 0.0 {
                f64::INFINITY
            } else {
                10.0 * (signal / noise).log10()
            },
            file_bytes: e.bytes.len(),
            arena_bytes: e.arena_bytes,
        })
    }
}

/// Every graph output of every sample, dequantised, one flat vector per sample.
fn outputs(e: &Emitted, samples: &[Vec<ArrayD<f32>>]) -> Result<Vec<Vec<f32>>> {
    let buf = ModelBuf::new(&e.bytes);
    let model = buf.model()?;
    let mut runner = Runner::new(&model);
    samples
        .iter()
        .map(|s| {
            let outs = runner.run(s, |_| {})?;
            Ok(outs.iter().flat_map(|o| o.iter().copied()).collect())
        })
        .collect()
}

/// The int8 model with the requested layers in f32 (see the module documentation), and what was done.
///
/// # Errors
/// An input error for a layer name the model lacks, or when the layers the user named already break the budget.
#[allow(clippy::too_many_arguments)]
pub fn choose(
    p: &Program,
    float: &Emitted,
    ranges: &Ranges,
    samples: &[Vec<ArrayD<f32>>],
    name: &str,
    req: &Request,
    mut progress: impl FnMut(&str),
) -> Result<(Emitted, MixedReport)> {
    let all = candidates(p);
    let mut keep = BTreeSet::new();
    for l in &req.layers {
        if !all.contains(l) {
            return Err(input(format!(
                "--keep-f32-layer '{l}': no such computing layer; the model's are: {}",
                all.join(", ")
            )));
        }
        keep.insert(l.clone());
    }
    let scorer = Scorer::new(float, samples)?;
    let int8 = emit::emit_mixed(p, ranges, &BTreeSet::new(), name)?;
    let int8_figures = scorer.figures(&int8)?;
    // The starting point: the layers the user named, or (none named) the all-int8 model just measured.
    let (mut current, mut now) = if keep.is_empty() {
        (int8, int8_figures.clone())
    } else {
        let e = emit::emit_mixed(p, ranges, &keep, name)?;
        let f = scorer.figures(&e)?;
        (e, f)
    };
    if !req.budget.admits(&current) {
        return Err(input(format!(
            "keeping {} in f32 needs a {} B model file and a {} B arena; the budget is {}",
            req.layers.join(", "),
            now.file_bytes,
            now.arena_bytes,
            req.budget.describe()
        )));
    }
    let mut kept: Vec<Kept> = req
        .layers
        .iter()
        .map(|l| Kept {
            op: l.clone(),
            chosen: "asked",
            after: now.clone(),
        })
        .collect();
    let mut over_budget: Vec<OverBudget> = Vec::new();
    for round in 0..req.worst {
        let mut best: Option<(String, Emitted, Figures)> = None;
        let mut refused: Vec<OverBudget> = Vec::new();
        let rest: Vec<&String> = all.iter().filter(|c| !keep.contains(*c)).collect();
        for (i, c) in rest.iter().enumerate() {
            progress(&format!(
                "f32 layer {}/{}: trying {c} ({}/{})",
                round + 1,
                req.worst,
                i + 1,
                rest.len()
            ));
            let mut with = keep.clone();
            with.insert((*c).clone());
            let e = emit::emit_mixed(p, ranges, &with, name)?;
            let f = scorer.figures(&e)?;
            if !req.budget.admits(&e) {
                refused.push(OverBudget {
                    op: (*c).clone(),
                    would_be: f,
                });
                continue;
            }
            if best
                .as_ref()
                .is_none_or(|b| f.output_sqnr_db > b.2.output_sqnr_db)
            {
                best = Some(((*c).clone(), e, f));
            }
        }
        // Worth a layer only if the output gets measurably closer to float (0.1 dB).
        let gain_floor = now.output_sqnr_db + 0.1;
        let chosen_sqnr = best
            .as_ref()
            .filter(|b| b.2.output_sqnr_db >= gain_floor)
            .map(|b| b.2.output_sqnr_db);
        let bar = chosen_sqnr.unwrap_or(gain_floor);
        for r in refused {
            if r.would_be.output_sqnr_db > bar {
                over_budget.retain(|o| o.op != r.op);
                over_budget.push(r);
            }
        }
        match best {
            Some((op, e, f)) if f.output_sqnr_db >= gain_floor => {
                keep.insert(op.clone());
                current = e;
                now = f.clone();
                kept.push(Kept {
                    op,
                    chosen: "measured",
                    after: f,
                });
            }
            _ => break,
        }
    }
    over_budget.retain(|o| !keep.contains(&o.op));
    let report = MixedReport {
        samples: samples.len(),
        budget: req.budget,
        int8: int8_figures,
        mixed: now,
        kept,
        over_budget,
    };
    Ok((current, report))
}
