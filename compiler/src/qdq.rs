//! int8 from a quantised (QDQ) model's own scales: what needs no calibration data, and what still would.
//!
//! [`crate::import`] turns the model's QuantizeLinear / DequantizeLinear nodes into [`Program::quant`] and
//! [`Program::weight_scales`]; [`crate::emit`] prefers them to calibrated ranges. A model that gives every
//! tensor emission asks a range for compiles to int8 without `--calib`.

use crate::emit::{self, Emitted, Precision};
use crate::error::{input, Result};
use crate::lower::{PId, Program, StepKind};

/// Tensors int8 emission needs a range for and the model does not quantise, by name. Ops whose output keeps
/// their input's quantisation (pools, slices, transposes, pads) and Softmax (a fixed one) need none.
pub fn unquantised(p: &Program) -> Vec<String> {
    let given = |t: PId| p.quant.contains_key(&t) || p.quant.contains_key(&p.root(t));
    let needs = p.inputs.iter().copied().chain(
        p.steps
            .iter()
            .filter(|s| {
                !matches!(
                    s.kind,
                    StepKind::Pool { .. }
                        | StepKind::Slice { .. }
                        | StepKind::Transpose { .. }
                        | StepKind::Pad { .. }
                        | StepKind::Softmax { log: false, .. }
                )
            })
            .map(|s| s.output),
    );
    let mut names: Vec<String> = needs
        .filter(|&t| !given(t))
        .map(|t| p.tensors[t].name.clone())
        .collect();
    names.dedup();
    names
}

/// Emits `p` in int8 with the quantisation the model gives, without calibration.
///
/// # Errors
/// [`crate::error::Error::Input`] naming every tensor the model leaves unquantised (those need `--calib`).
pub fn emit_given(p: &Program, name: &str) -> Result<Emitted> {
    let missing = unquantised(p);
    if !missing.is_empty() {
        return Err(input(format!(
            "int8 without --calib takes the quantisation from the model's QuantizeLinear/DequantizeLinear \
             nodes, but {} tensor{} {} none: {}; pass --calib DATA to calibrate {}",
            missing.len(),
            if missing.len() == 1 { "" } else { "s" },
            if missing.len() == 1 { "has" } else { "have" },
            missing.join(", "),
            if missing.len() == 1 { "it" } else { "them" },
        )));
    }
    emit::emit(p, Precision::Int8, None, name)
}
