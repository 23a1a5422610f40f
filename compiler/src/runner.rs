//! Running `.kiln` files on the host with `kiln-runtime` — the same code the device runs.

use std::path::Path;

use kiln_runtime::format::{DType, IoType, Quant, TensorDef};
use kiln_runtime::{Interpreter, Model, TensorView};
use ndarray::{ArrayD, IxDyn};

use crate::error::{input, Error, Result};

/// Model bytes held 4-byte aligned, as the runtime requires.
pub struct ModelBuf {
    words: Vec<u32>,
    len: usize,
}

impl ModelBuf {
    pub fn new(bytes: &[u8]) -> Self {
        let mut words = vec![0u32; bytes.len().div_ceil(4)];
        bytemuck::cast_slice_mut::<u32, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
        ModelBuf {
            words,
            len: bytes.len(),
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice::<u32, u8>(&self.words)[..self.len]
    }

    /// Reads and checks a model file; every failure is the user's input being bad.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| input(format!("{}: {e}", path.display())))?;
        let buf = ModelBuf::new(&bytes);
        Model::from_bytes(buf.bytes())
            .map_err(|e| input(format!("{}: invalid model: {e}", path.display())))?;
        Ok(buf)
    }

    pub fn model(&self) -> Result<Model<'_>> {
        Model::from_bytes(self.bytes()).map_err(|e| input(format!("invalid model: {e}")))
    }
}

/// Float value of element `i` of a tensor's bytes.
pub fn dequantize(bytes: &[u8], dtype: DType, q: Quant) -> Vec<f32> {
    match dtype {
        DType::I8 => bytes
            .iter()
            .map(|&b| kiln_runtime::host::dequantize(q, b as i8))
            .collect(),
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        DType::I32 => bytes
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
            .collect(),
    }
}

/// The bytes a float array becomes as a tensor of `dtype` quantised with `q` (round half away, saturating).
pub fn quantize(values: impl Iterator<Item = f32>, dtype: DType, q: Quant) -> Vec<u8> {
    match dtype {
        DType::I8 => values
            .map(|v| kiln_runtime::host::quantize(q, v) as u8)
            .collect(),
        DType::F32 => values.flat_map(|v| v.to_le_bytes()).collect(),
        DType::I32 => values
            .flat_map(|v| (v.round() as i32).to_le_bytes())
            .collect(),
    }
}

/// Rearranges physically-ordered values of a tensor into its logical (model) order.
pub fn to_logical(values: Vec<f32>, t: &TensorDef<'_>) -> ArrayD<f32> {
    let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
    let perm: Vec<usize> = t.perm.iter().map(|&p| p as usize).collect();
    let phys: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let a = ArrayD::from_shape_vec(IxDyn(&phys), values)
        .unwrap_or_else(|_| ArrayD::zeros(IxDyn(&phys)));
    // Physical axis i is logical axis perm[i]; logical axis j is physical axis inv[j].
    let mut inv = vec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inv[p] = i;
    }
    a.permuted_axes(IxDyn(&inv)).as_standard_layout().to_owned()
}

/// A loaded model with its arena, ready to run inference after inference.
pub struct Runner<'m> {
    model: &'m Model<'m>,
    arena: Vec<u32>,
}

impl<'m> Runner<'m> {
    pub fn new(model: &'m Model<'m>) -> Self {
        Runner {
            model,
            arena: vec![0u32; model.arena_bytes().div_ceil(4)],
        }
    }

    /// Logical input shapes.
    pub fn input_shapes(&self) -> Result<Vec<Vec<usize>>> {
        (0..self.model.input_count())
            .map(|i| {
                let t = self
                    .model
                    .input(i)
                    .map_err(|e| Error::Internal(anyhow::anyhow!("{e}")))?;
                Ok(t.shape.iter().map(|&d| d as usize).collect())
            })
            .collect()
    }

    /// One inference on float inputs (quantised here for int8 models); float outputs in the model's layout.
    /// `observer` sees every op's output as it is produced.
    pub fn run(
        &mut self,
        inputs: &[ArrayD<f32>],
        observer: impl FnMut(TensorView<'_>),
    ) -> Result<Vec<ArrayD<f32>>> {
        let model = self.model;
        let internal = |e: kiln_runtime::Error| Error::Internal(anyhow::anyhow!("runtime: {e}"));
        let arena = bytemuck::cast_slice_mut::<u32, u8>(&mut self.arena);
        let mut interp = Interpreter::new(model, arena).map_err(internal)?;
        for (i, bytes) in input_bytes(model, inputs)?.iter().enumerate() {
            interp.set_input(i, bytes).map_err(internal)?;
        }
        interp.invoke_observed(observer).map_err(internal)?;
        let mut raw = Vec::new();
        for i in 0..model.output_count() {
            raw.push(interp.output(i).map_err(internal)?);
        }
        let outs = output_arrays(model, &raw)?;
        Ok(outs)
    }
}

/// The bytes each graph input takes for these inputs, checking their shapes: float values (quantised for int8
/// models), or int8 / uint8 values for inputs the source model takes in those types.
pub fn input_bytes(model: &Model<'_>, inputs: &[ArrayD<f32>]) -> Result<Vec<Vec<u8>>> {
    let internal = |e: kiln_runtime::Error| Error::Internal(anyhow::anyhow!("runtime: {e}"));
    if inputs.len() != model.input_count() {
        return Err(input(format!(
            "the model has {} inputs, {} given",
            model.input_count(),
            inputs.len()
        )));
    }
    let mut all = Vec::new();
    for (i, x) in inputs.iter().enumerate() {
        let t = model.input(i).map_err(internal)?;
        let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
        if x.shape() != shape.as_slice() {
            return Err(input(format!(
                "input {i} ('{}'): shape {:?}, the model wants {shape:?}",
                t.name,
                x.shape()
            )));
        }
        let bytes = match model.input_type(i) {
            IoType::F32 => quantize(x.iter().copied(), t.dtype, t.quant),
            ty => {
                let what = format!("input {i} ('{}')", t.name);
                let ints = from_user_ints(x.iter().copied(), ty, &what)?;
                match t.dtype {
                    DType::I8 => ints.iter().map(|&v| v as u8).collect(),
                    _ => quantize(
                        ints.iter()
                            .map(|&v| kiln_runtime::host::dequantize(t.quant, v)),
                        t.dtype,
                        t.quant,
                    ),
                }
            }
        };
        all.push(bytes);
    }
    Ok(all)
}

/// The int8 values of a model input of type `ty` (int8, or uint8 shifted by -128) from the user's values.
///
/// # Errors
/// [`Error::Input`] for a value that is not an integer of the input's type.
fn from_user_ints(values: impl Iterator<Item = f32>, ty: IoType, what: &str) -> Result<Vec<i8>> {
    let (lo, hi, shift, name) = match ty {
        IoType::U8 => (0.0, 255.0, 128, "uint8"),
        _ => (-128.0, 127.0, 0, "int8"),
    };
    values
        .map(|v| {
            if v.fract() != 0.0 || !(lo..=hi).contains(&v) {
                return Err(input(format!(
                    "{what}: value {v} is not {name} (the model takes {name} values: give an {name} .npy)"
                )));
            }
            Ok((v as i32 - shift) as i8)
        })
        .collect()
}

/// A model output's values as the user receives them: float, or int8 / uint8 values (as f32) for outputs the
/// model gives in those types.
fn to_user(bytes: &[u8], t: &TensorDef<'_>, ty: IoType) -> Vec<f32> {
    let ints: Vec<i8> = match (ty, t.dtype) {
        (IoType::F32, _) => return dequantize(bytes, t.dtype, t.quant),
        (_, DType::I8) => bytes.iter().map(|&b| b as i8).collect(),
        (_, dtype) => dequantize(
            bytes,
            dtype,
            Quant {
                scale: 1.0,
                zero_point: 0,
            },
        )
        .into_iter()
        .map(|v| kiln_runtime::host::quantize(t.quant, v))
        .collect(),
    };
    let shift = if ty == IoType::U8 { 128.0 } else { 0.0 };
    ints.into_iter().map(|v| v as f32 + shift).collect()
}

/// Outputs in the model's logical layout from the raw bytes of each graph output: float (dequantised for int8
/// models), or the int8 / uint8 values of outputs the source model gives in those types.
pub fn output_arrays(model: &Model<'_>, raw: &[&[u8]]) -> Result<Vec<ArrayD<f32>>> {
    let internal = |e: kiln_runtime::Error| Error::Internal(anyhow::anyhow!("runtime: {e}"));
    let mut outs = Vec::new();
    for (i, bytes) in raw.iter().enumerate() {
        let t = model.output(i).map_err(internal)?;
        outs.push(to_logical(to_user(bytes, &t, model.output_type(i)), &t));
    }
    Ok(outs)
}

/// Bytes of each graph output.
pub fn output_sizes(model: &Model<'_>) -> Result<Vec<usize>> {
    (0..model.output_count())
        .map(|i| {
            model
                .output(i)
                .map(|t| (t.data.end() - t.data.offset) as usize)
                .map_err(|e| Error::Internal(anyhow::anyhow!("runtime: {e}")))
        })
        .collect()
}
