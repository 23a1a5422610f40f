//! `kiln reference`: the float yardstick, computed by tract from the ONNX model itself.

use std::path::Path;

use ndarray::ArrayD;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use crate::error::{input, Error, Result};

/// A runnable tract plan with concrete input shapes (symbolic dimensions fixed to 1, as the compiler does).
pub struct Reference {
    plan: std::sync::Arc<TypedSimplePlan>,
    pub input_shapes: Vec<Vec<usize>>,
}

impl Reference {
    pub fn load(path: &Path) -> Result<Self> {
        let what = path.display();
        let bad = |e: anyhow::Error| input(format!("{what}: tract cannot load the model: {e:#}"));
        let mut model = tract_onnx::onnx().model_for_path(path).map_err(&bad)?;
        let mut input_shapes = Vec::new();
        for i in 0..model.inputs.len() {
            let fact = model.input_fact(i).map_err(&bad)?.clone();
            if fact.shape.is_open() {
                return Err(input(format!("{what}: input {i} has no known rank")));
            }
            // Symbolic dimensions (a free batch size) become 1, as the compiler makes them.
            let shape: Vec<usize> = fact
                .shape
                .dims()
                .map(|d| {
                    d.concretize()
                        .and_then(|t| t.to_i64().ok())
                        .map_or(1, |v| v.max(1) as usize)
                })
                .collect();
            model
                .set_input_fact(i, f32::fact(&shape).into())
                .map_err(&bad)?;
            input_shapes.push(shape);
        }
        let plan = model
            .into_typed()
            .and_then(|m| m.into_decluttered())
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(&bad)?;
        Ok(Reference { plan, input_shapes })
    }

    /// Number of model outputs.
    pub fn plan_outputs(&self) -> usize {
        self.plan.model().outputs.len()
    }

    /// One inference.
    pub fn run(&self, inputs: &[ArrayD<f32>]) -> Result<Vec<ArrayD<f32>>> {
        let tvs: TVec<TValue> = inputs
            .iter()
            .map(|a| Tensor::from(a.clone()).into())
            .collect();
        let outs = self
            .plan
            .run(tvs)
            .map_err(|e| Error::Internal(anyhow::anyhow!("tract: {e:#}")))?;
        outs.iter()
            .map(|t| {
                let t = t
                    .cast_to::<f32>()
                    .map_err(|e| Error::Internal(anyhow::anyhow!("tract: {e:#}")))?;
                let view = t
                    .to_plain_array_view::<f32>()
                    .map_err(|e| Error::Internal(anyhow::anyhow!("tract: {e:#}")))?;
                Ok(view.to_owned())
            })
            .collect()
    }
}
