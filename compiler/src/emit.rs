//! Emission: a lowered [`Program`] becomes runtime ops (f32, or int8 with host-computed requantisation), an arena
//! plan and a weight blob, written as one `.kiln` file.

use std::collections::{BTreeSet, HashMap};

use kiln_runtime::format::{
    self, BinaryF32, ConcatParams, ConvF32, ConvGeom, ConvS8, DType, Dims, FullyConnectedF32,
    FullyConnectedS8, IoType, KernelS8, LookupS8, ModelDef, OpDef, OpKind, Operand, PadParams,
    PerChannel, Pool2d, Quant, ReduceMeanF32, ReduceMeanS8, SliceParams, Space, Span, TensorDef,
    TransposeParams, UnaryF32, BLOB_ALIGN, FORMAT_VERSION, HEADER_LEN, MAGIC,
};
use kiln_runtime::host;
use kiln_runtime::kernels::{fast, fast_elementwise};

use crate::error::{input, Result};
use crate::ir::{Activation, BinaryKind, PoolKind, UnaryKind};

fn runtime_kind(k: BinaryKind) -> format::BinaryKind {
    match k {
        BinaryKind::Add => format::BinaryKind::Add,
        BinaryKind::Sub => format::BinaryKind::Sub,
        BinaryKind::Mul => format::BinaryKind::Mul,
        BinaryKind::PRelu => format::BinaryKind::PRelu,
    }
}
use crate::lower::{PId, Program, StepKind};
use crate::plan::{self, Buffer};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    F32,
    Int8,
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "int8" => Ok(Precision::Int8),
            _ => Err(format!("unknown precision '{s}' (expected int8 or f32)")),
        }
    }
}

/// Observed float range of each computed tensor (graph inputs and step outputs), for int8.
pub type Ranges = HashMap<PId, (f32, f32)>;

/// What one emitted op is, for reports.
#[derive(Clone, Debug)]
pub struct OpInfo {
    pub name: String,
    pub kind: &'static str,
    pub macs: u64,
    pub weight_bytes: usize,
    pub bias_bytes: usize,
    pub output_bytes: usize,
}

/// An emitted model file and the figures that describe it.
#[derive(Clone, Debug)]
pub struct Emitted {
    pub bytes: Vec<u8>,
    pub arena_bytes: usize,
    pub arena_lower_bound: usize,
    /// int8 or f32 weight bytes (convolution and dense kernels).
    pub weight_bytes: usize,
    /// int32 or f32 bias bytes.
    pub bias_bytes: usize,
    pub blob_bytes: usize,
    pub macs: u64,
    pub ops: Vec<OpInfo>,
    /// Model-file tensor index of each program tensor that made it into the file.
    pub tensor_index: HashMap<PId, u16>,
}

/// Asymmetric int8 quantisation covering `[min, max]` (widened to include 0, so zero is exact).
pub fn choose_quant(min: f32, max: f32) -> Quant {
    let (min, max) = (min.min(0.0), max.max(0.0));
    let scale = ((max as f64 - min as f64) / 255.0).max(1e-9) as f32;
    let zero_point = (-128.0 - min as f64 / scale as f64)
        .round()
        .clamp(-128.0, 127.0) as i32;
    Quant { scale, zero_point }
}

/// The int8 clamp range of a fused activation on an output quantised with `q`.
fn act_range_s8(act: Activation, q: Quant) -> (i8, i8) {
    let (lo, hi) = act.range();
    host::act_range_s8(q, lo, hi)
}

#[derive(Default)]
struct Blob {
    bytes: Vec<u8>,
}

impl Blob {
    fn push(&mut self, data: &[u8]) -> Span {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
        let span = Span {
            offset: self.bytes.len() as u32,
            len: data.len() as u32,
        };
        self.bytes.extend_from_slice(data);
        span
    }

    fn push_f32(&mut self, v: &[f32]) -> Span {
        self.push(&v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
    }

    fn push_i32(&mut self, v: &[i32]) -> Span {
        self.push(&v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
    }

    fn push_i8(&mut self, v: &[i8]) -> Span {
        self.push(&v.iter().map(|&x| x as u8).collect::<Vec<u8>>())
    }

    fn push_i16(&mut self, v: &[i16]) -> Span {
        self.push(&v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
    }
}

/// A tensor of the emitted model.
#[derive(Clone, Debug)]
struct ETensor {
    name: String,
    shape: Vec<usize>,
    perm: Vec<usize>,
    dtype: DType,
    quant: Quant,
    /// Bytes in the blob, for constants.
    blob: Option<Span>,
    /// Shares the arena bytes of this tensor.
    alias_of: Option<usize>,
    /// For a constant's copy at another precision: the program tensor holding the values.
    const_of: Option<usize>,
}

impl ETensor {
    fn bytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size()
    }
}

struct EStep {
    name: String,
    kind: OpKind,
    inputs: Vec<usize>,
    output: usize,
    info: OpInfo,
}

struct Emitter<'p> {
    p: &'p Program,
    precision: Precision,
    /// Steps (by name) an int8 model keeps in f32.
    keep_f32: &'p BTreeSet<String>,
    ranges: Option<&'p Ranges>,
    blob: Blob,
    tensors: Vec<ETensor>,
    steps: Vec<EStep>,
    /// Requantised copies already made: (tensor, target zero point, target scale bits) -> copy.
    requantised: HashMap<(usize, i32, u32), usize>,
    /// Copies at the other precision already made (int8 <-> f32): (tensor, dtype) -> copy.
    converted: HashMap<(usize, DType), usize>,
}

/// Emits `p` as a model file. `ranges` must cover every computed tensor when `precision` is int8.
///
/// # Errors
/// [`crate::error::Error::Input`] for a model the format cannot hold.
pub fn emit(
    p: &Program,
    precision: Precision,
    ranges: Option<&Ranges>,
    name: &str,
) -> Result<Emitted> {
    emit_with(p, precision, ranges, &BTreeSet::new(), name)
}

/// An int8 model with the steps named in `keep_f32` computed in f32 (weights and activations): an int8 tensor a
/// kept step reads is dequantised first (`DequantizeS8`), an f32 tensor an int8 step reads is quantised with its
/// calibrated range (`QuantizeS8`). Data movement and pooling follow their input's precision. Graph inputs stay
/// int8; a graph output a kept step computes is f32.
///
/// # Errors
/// As [`emit`]; `ranges` must cover every computed tensor.
pub fn emit_mixed(
    p: &Program,
    ranges: &Ranges,
    keep_f32: &BTreeSet<String>,
    name: &str,
) -> Result<Emitted> {
    emit_with(p, Precision::Int8, Some(ranges), keep_f32, name)
}

fn emit_with(
    p: &Program,
    precision: Precision,
    ranges: Option<&Ranges>,
    keep_f32: &BTreeSet<String>,
    name: &str,
) -> Result<Emitted> {
    let mut e = Emitter {
        p,
        precision,
        keep_f32,
        ranges,
        blob: Blob::default(),
        tensors: Vec::new(),
        steps: Vec::new(),
        requantised: HashMap::new(),
        converted: HashMap::new(),
    };
    e.tensors = p
        .tensors
        .iter()
        .map(|t| ETensor {
            name: t.name.clone(),
            shape: t.shape.clone(),
            perm: t.perm.clone(),
            dtype: match precision {
                Precision::F32 => DType::F32,
                Precision::Int8 => DType::I8,
            },
            quant: Quant {
                scale: 1.0,
                zero_point: 0,
            },
            blob: None,
            alias_of: t.alias_of,
            const_of: None,
        })
        .collect();
    if precision == Precision::Int8 {
        for &i in &p.inputs {
            e.tensors[i].quant = e.range_quant(i)?;
        }
    }
    let io = p.inputs.iter().chain(&p.outputs);
    for (&t, &ty) in io.zip(&p.io_types) {
        // A float model exchanging int8 values: the host converts them with the model's quantisation.
        if precision == Precision::F32 && ty != IoType::F32 {
            let q = e.given_quant(t).copied().ok_or_else(|| {
                input(format!(
                    "graph input or output '{}' is int8 but has no quantisation",
                    p.tensors[t].name
                ))
            })?;
            e.tensors[t].quant = q;
        }
    }
    for step in &p.steps {
        e.step(step).map_err(|err| match err {
            crate::error::Error::Input(m) => input(format!("node '{}': {m}", step.name)),
            other => other,
        })?;
    }
    e.finish(name)
}

impl<'p> Emitter<'p> {
    fn range_quant(&self, t: PId) -> Result<Quant> {
        if let Some(&q) = self.given_quant(t) {
            return Ok(q);
        }
        let ranges = self
            .ranges
            .ok_or_else(|| input("int8 needs calibration ranges"))?;
        let root = self.p.root(t);
        let (lo, hi) = ranges
            .get(&t)
            .or_else(|| ranges.get(&root))
            .copied()
            .ok_or_else(|| {
                input(format!(
                    "no calibration range for tensor '{}'",
                    self.p.tensors[t].name
                ))
            })?;
        Ok(choose_quant(lo, hi))
    }

    /// The quantisation a quantised (QDQ) model gives `t` (or the tensor whose bytes it shares).
    fn given_quant(&self, t: PId) -> Option<&Quant> {
        self.p
            .quant
            .get(&t)
            .or_else(|| self.p.quant.get(&self.p.root(t)))
    }

    /// Quantisation of an existing tensor (aliases share their root's).
    fn quant(&self, t: usize) -> Quant {
        match self.tensors[t].alias_of {
            Some(r) => self.quant(r),
            None => self.tensors[t].quant,
        }
    }

    /// The element type of `t`'s bytes (an alias has its root's).
    fn dtype(&self, t: usize) -> DType {
        match self.tensors[t].alias_of {
            Some(r) => self.dtype(r),
            None => self.tensors[t].dtype,
        }
    }

    fn is_constant(&self, t: usize) -> bool {
        let source = self.tensors[t].const_of.unwrap_or(t);
        source < self.p.tensors.len() && self.p.tensors[source].value.is_some()
    }

    /// Whether step `s` computes in int8: in an int8 model, every step but those kept in f32; data movement and
    /// pooling follow their first input.
    fn computes_int8(&self, s: &crate::lower::Step) -> bool {
        if self.precision == Precision::F32 || self.keep_f32.contains(&s.name) {
            return false;
        }
        match s.kind {
            StepKind::Pool { .. }
            | StepKind::Pad { .. }
            | StepKind::Concat { .. }
            | StepKind::Slice { .. }
            | StepKind::Transpose { .. } => {
                let x = s.inputs[0];
                self.is_constant(x) || self.dtype(x) == DType::I8
            }
            _ => true,
        }
    }

    /// `t` as `dtype`: itself, or a copy converted by a `QuantizeS8` / `DequantizeS8` op (made once per tensor),
    /// or for a constant a copy stored at that precision.
    fn as_dtype(&mut self, t: usize, dtype: DType) -> Result<usize> {
        if self.precision == Precision::F32 {
            return Ok(t);
        }
        if self.is_constant(t)
            && self.tensors[t].blob.is_none()
            && !self.converted.contains_key(&(t, dtype))
        {
            // Not stored yet: stored at the precision its first reader needs.
            if self.tensors[t].const_of.is_none() && self.dtype(t) != dtype {
                self.tensors[t].dtype = dtype;
            }
        }
        if self.dtype(t) == dtype {
            return Ok(t);
        }
        if let Some(&done) = self.converted.get(&(t, dtype)) {
            return Ok(done);
        }
        let constant = self.is_constant(t);
        let source = self.tensors[t].name.clone();
        let mut copy = self.tensors[t].clone();
        copy.name = format!(
            "{source}.{}",
            if dtype == DType::F32 { "f32" } else { "int8" }
        );
        copy.dtype = dtype;
        copy.blob = None;
        copy.alias_of = None;
        copy.quant = Quant {
            scale: 1.0,
            zero_point: 0,
        };
        // A constant's copy is stored at `dtype` from the same values; an activation's is converted by an op.
        let convert = match (constant, dtype) {
            (true, _) => {
                copy.const_of = Some(self.tensors[t].const_of.unwrap_or(t));
                None
            }
            (false, DType::F32) => Some((
                OpKind::DequantizeS8(self.quant(t)),
                format!("{source}.dequantize"),
            )),
            (false, _) => {
                copy.quant = self.range_quant(t)?;
                Some((OpKind::QuantizeS8(copy.quant), format!("{source}.quantize")))
            }
        };
        self.tensors.push(copy);
        let out = self.tensors.len() - 1;
        if let Some((kind, name)) = convert {
            self.push(&name, kind, vec![t], out);
        }
        self.converted.insert((t, dtype), out);
        Ok(out)
    }

    /// Puts constant tensor `t` in the blob (once), at its precision.
    fn materialise(&mut self, t: usize) {
        let source = self.tensors[t].const_of.unwrap_or(t);
        if self.tensors[t].blob.is_some() || source >= self.p.tensors.len() {
            return;
        }
        let Some(v) = &self.p.tensors[source].value else {
            return;
        };
        let span = match self.tensors[t].dtype {
            DType::F32 | DType::I32 => self.blob.push_f32(v),
            DType::I8 => {
                // A quantised model's own int8 constant keeps its scale (its values come back exactly).
                let q = self.given_quant(source).copied().unwrap_or_else(|| {
                    let (lo, hi) = v
                        .iter()
                        .fold((0f32, 0f32), |(a, b), &x| (a.min(x), b.max(x)));
                    choose_quant(lo, hi)
                });
                self.tensors[t].quant = q;
                let qv: Vec<i8> = v.iter().map(|&x| host::quantize(q, x)).collect();
                self.blob.push_i8(&qv)
            }
        };
        self.tensors[t].blob = Some(span);
    }

    /// Adds an op without weights.
    fn push(&mut self, name: &str, kind: OpKind, inputs: Vec<usize>, output: usize) {
        self.push_weighted(name, kind, inputs, output, Weighted::default());
    }

    fn push_weighted(
        &mut self,
        name: &str,
        kind: OpKind,
        inputs: Vec<usize>,
        output: usize,
        w: Weighted,
    ) {
        for &i in &inputs {
            self.materialise(i);
        }
        let info = OpInfo {
            name: name.to_string(),
            kind: kind.name(),
            macs: w.macs,
            weight_bytes: w.weight_bytes,
            bias_bytes: w.bias_bytes,
            output_bytes: self.tensors[output].bytes(),
        };
        self.steps.push(EStep {
            name: name.to_string(),
            kind,
            inputs,
            output,
            info,
        });
    }

    /// `t` requantised to `q` (a lookup-table copy), or `t` itself when it already is.
    fn requantise(&mut self, t: usize, q: Quant, name: &str) -> usize {
        self.materialise(t);
        let have = self.quant(t);
        if have == q {
            return t;
        }
        let key = (t, q.zero_point, q.scale.to_bits());
        if let Some(&done) = self.requantised.get(&key) {
            return done;
        }
        let table = host::lookup_table(have, q, |x| x);
        let span = self.blob.push_i8(&table);
        let mut copy = self.tensors[t].clone();
        copy.name = format!("{}.requantised", copy.name);
        copy.quant = q;
        copy.blob = None;
        copy.alias_of = None;
        self.tensors.push(copy);
        let out = self.tensors.len() - 1;
        self.push(
            &format!("{name}.requantise"),
            OpKind::LookupS8(LookupS8 { table: span }),
            vec![t],
            out,
        );
        self.requantised.insert(key, out);
        out
    }

    fn step(&mut self, s: &crate::lower::Step) -> Result<()> {
        let int8 = self.computes_int8(s);
        let dtype = if int8 { DType::I8 } else { DType::F32 };
        let mut converted = s.clone();
        for i in converted.inputs.iter_mut() {
            *i = self.as_dtype(*i, dtype)?;
        }
        let s = &converted;
        if !int8 {
            self.tensors[s.output].dtype = DType::F32;
        }
        let x = s.inputs[0];
        let out = s.output;
        let in_q = self.quant(x);
        // Ops whose int8 output keeps the input's quantisation.
        // A pad value the input's quantisation cannot hold (3.0 around data in [-1, 1]) takes the output's
        // calibrated range instead, and the input is requantised to it first.
        let pad_fits = match s.kind {
            StepKind::Pad { value, .. } => {
                let q = in_q;
                let (lo, hi) = (
                    q.scale * (-128 - q.zero_point) as f32,
                    q.scale * (127 - q.zero_point) as f32,
                );
                (lo - q.scale / 2.0..=hi + q.scale / 2.0).contains(&value)
            }
            _ => false,
        };
        // An average a quantised model gives a quantisation of its own (onnxruntime does) is requantised to it:
        // the mean is finer than its input's scale.
        let avg_own_quant =
            int8 && matches!(
                s.kind,
                StepKind::Pool {
                    kind: PoolKind::Avg { .. },
                    ..
                }
            ) && self.given_quant(out).is_some_and(|q| *q != in_q);
        let keeps_quant = !avg_own_quant
            && (pad_fits
                || matches!(
                    s.kind,
                    StepKind::Pool { .. } | StepKind::Slice { .. } | StepKind::Transpose { .. }
                ));
        if int8 {
            self.tensors[out].quant = match &s.kind {
                _ if keeps_quant => in_q,
                StepKind::Softmax { log: false, .. } => host::SOFTMAX_OUTPUT,
                _ => self.range_quant(out)?,
            };
        }
        let out_q = self.quant(out);
        let macs = s.macs();
        match (&s.kind, int8) {
            (
                StepKind::Conv {
                    geom,
                    weights,
                    bias,
                    act,
                },
                _,
            ) => {
                let channels = geom.out_c as usize;
                let kernel = conv_kernel(geom);
                let (params, w) = self.weighted(
                    weights,
                    self.p.weight_scales.get(&s.name).map(Vec::as_slice),
                    bias.as_deref(),
                    channels,
                    *act,
                    in_q,
                    out_q,
                    macs,
                    kernel,
                    int8,
                )?;
                let kind = conv_op(geom, params, in_q, out_q);
                self.push_weighted(&s.name, kind, vec![x], out, w);
            }
            (
                StepKind::Fc {
                    geom,
                    weights,
                    bias,
                    act,
                },
                _,
            ) => {
                let channels = geom.out_features as usize;
                let kernel = fc_kernel(geom);
                let (params, w) = self.weighted(
                    weights,
                    self.p.weight_scales.get(&s.name).map(Vec::as_slice),
                    bias.as_deref(),
                    channels,
                    *act,
                    in_q,
                    out_q,
                    macs,
                    kernel,
                    int8,
                )?;
                let kind = match params {
                    Params::F32 {
                        weights,
                        bias,
                        act_min,
                        act_max,
                    } => OpKind::FullyConnectedF32(FullyConnectedF32 {
                        geom: geom.clone(),
                        weights,
                        bias,
                        act_min,
                        act_max,
                    }),
                    Params::S8(q) => OpKind::FullyConnectedS8(FullyConnectedS8 {
                        geom: geom.clone(),
                        weights: q.weights,
                        bias: q.bias,
                        requant: q.requant,
                        input_zero_point: in_q.zero_point,
                        output_zero_point: out_q.zero_point,
                        act_min: q.act_min,
                        act_max: q.act_max,
                        kernel: q.kernel,
                    }),
                };
                self.push_weighted(&s.name, kind, vec![x], out, w);
            }
            (StepKind::Binary { kind, bcast, act }, false) => {
                let (lo, hi) = act.range();
                let op = OpKind::BinaryF32(BinaryF32 {
                    kind: runtime_kind(*kind),
                    bcast: bcast.clone(),
                    act_min: lo,
                    act_max: hi,
                });
                self.push(&s.name, op, s.inputs.clone(), out);
            }
            (StepKind::Binary { kind, bcast, act }, true) => {
                let b = s.inputs[1];
                self.materialise(x);
                self.materialise(b);
                let (a_q, b_q) = (self.quant(x), self.quant(b));
                let (act_min, act_max) = act_range_s8(*act, out_q);
                let quant = match kind {
                    BinaryKind::Add | BinaryKind::Sub => host::add_sub_s8(a_q, b_q, out_q),
                    BinaryKind::Mul => host::mul_s8(a_q, b_q, out_q),
                    BinaryKind::PRelu => host::prelu_s8(a_q, b_q, out_q),
                }
                .map_err(|e| input(format!("int8 parameters: {e}")))?;
                let mut op = quant.into_op(runtime_kind(*kind), bcast.clone(), act_min, act_max);
                if fast_elementwise::add_table_fits(&op) {
                    op.kernel = KernelS8::Table;
                }
                let op = OpKind::BinaryS8(op);
                self.push(&s.name, op, s.inputs.clone(), out);
            }
            (StepKind::Unary(k), false) => {
                let op = match *k {
                    UnaryKind::Relu => UnaryF32::Relu,
                    UnaryKind::Clip { min, max } => UnaryF32::Clip { min, max },
                    UnaryKind::LeakyRelu { alpha } => UnaryF32::LeakyRelu { alpha },
                    UnaryKind::Elu { alpha } => UnaryF32::Elu { alpha },
                    UnaryKind::Sigmoid => UnaryF32::Sigmoid,
                    UnaryKind::Tanh => UnaryF32::Tanh,
                };
                self.push(&s.name, OpKind::UnaryF32(op), vec![x], out);
            }
            (StepKind::Unary(k), true) => {
                let k = *k;
                let table = host::lookup_table(in_q, out_q, |v| k.apply(v));
                let span = self.blob.push_i8(&table);
                self.push(
                    &s.name,
                    OpKind::LookupS8(LookupS8 { table: span }),
                    vec![x],
                    out,
                );
            }
            (
                StepKind::Softmax {
                    outer,
                    len,
                    inner,
                    log,
                },
                false,
            ) => {
                let op = format::SoftmaxF32 {
                    outer: *outer,
                    len: *len,
                    inner: *inner,
                    log: *log,
                };
                self.push(&s.name, OpKind::SoftmaxF32(op), vec![x], out);
            }
            (
                StepKind::Softmax {
                    outer,
                    len,
                    inner,
                    log,
                },
                true,
            ) => {
                // ONNX Softmax has no temperature: beta 1.
                let host = if *log {
                    host::log_softmax_s8(in_q.scale, 1.0, out_q)
                } else {
                    host::softmax_s8(in_q.scale, 1.0)
                }
                .map_err(|e| input(format!("int8 parameters: {e}")))?;
                let exp_table = self.blob.push(&host.exp_table_bytes());
                let op = host.into_op(*outer, *len, *inner, exp_table);
                self.push(&s.name, OpKind::SoftmaxS8(op), vec![x], out);
            }
            (
                StepKind::Pool {
                    kind: PoolKind::Avg { .. },
                    pool,
                },
                true,
            ) if avg_own_quant => self.average_to(s, pool, in_q, out_q)?,
            (StepKind::Pool { kind, pool }, _) => {
                let op = match (kind, int8) {
                    (PoolKind::Max, false) => OpKind::MaxPoolF32(pool.clone()),
                    (PoolKind::Max, true) => OpKind::MaxPoolS8(pool_kernel(
                        pool.clone(),
                        fast_elementwise::max_pool_fast_fits,
                    )),
                    (PoolKind::Avg { .. }, false) => OpKind::AvgPoolF32(pool.clone()),
                    // Padded taps of an int8 average count as the real value 0, i.e. the zero point.
                    (PoolKind::Avg { .. }, true) => OpKind::AvgPoolS8(pool_kernel(
                        Pool2d {
                            zero_point: in_q.zero_point,
                            ..pool.clone()
                        },
                        fast_elementwise::avg_pool_fast_fits,
                    )),
                };
                self.push(&s.name, op, vec![x], out);
            }
            (StepKind::ReduceMean { dims, axes }, false) => {
                let op = OpKind::ReduceMeanF32(ReduceMeanF32 {
                    dims: dims.clone(),
                    axes: *axes,
                });
                self.push(&s.name, op, vec![x], out);
            }
            (StepKind::ReduceMean { dims, axes }, true) => {
                let count: u32 = dims
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| axes & (1 << i) != 0)
                    .map(|(_, &d)| d)
                    .product();
                let real = in_q.scale as f64 / (out_q.scale as f64 * count.max(1) as f64);
                let (multiplier, shift) = host::quantize_multiplier(real);
                let op = OpKind::ReduceMeanS8(ReduceMeanS8 {
                    dims: dims.clone(),
                    axes: *axes,
                    input_zero_point: in_q.zero_point,
                    output_zero_point: out_q.zero_point,
                    multiplier,
                    shift,
                });
                self.push(&s.name, op, vec![x], out);
            }
            (
                StepKind::Pad {
                    dims,
                    before,
                    after,
                    value,
                },
                _,
            ) => {
                let x = if int8 {
                    self.requantise(x, out_q, &s.name)
                } else {
                    x
                };
                let (elem_bytes, value) = if int8 {
                    (1, host::quantize(out_q, *value) as u8 as u32)
                } else {
                    (4, value.to_bits())
                };
                let op = OpKind::Pad(PadParams {
                    dims: dims.clone(),
                    before: before.clone(),
                    after: after.clone(),
                    elem_bytes,
                    value,
                });
                self.push(&s.name, op, vec![x], out);
            }
            (
                StepKind::Concat {
                    outer,
                    inner,
                    parts,
                },
                _,
            ) => {
                let mut ins = s.inputs.clone();
                if int8 {
                    for i in ins.iter_mut() {
                        *i = self.requantise(*i, out_q, &s.name);
                    }
                }
                let elem = if int8 { 1 } else { 4 };
                let op = OpKind::Concat(ConcatParams {
                    outer: *outer,
                    inner_bytes: inner * elem,
                    parts: parts.iter().copied().collect(),
                });
                self.push(&s.name, op, ins, out);
            }
            (
                StepKind::Slice {
                    outer,
                    axis_len,
                    start,
                    len,
                    inner,
                },
                _,
            ) => {
                let elem = if int8 { 1 } else { 4 };
                let op = OpKind::Slice(SliceParams {
                    outer: *outer,
                    axis_len: *axis_len,
                    start: *start,
                    len: *len,
                    inner_bytes: inner * elem,
                });
                self.push(&s.name, op, vec![x], out);
            }
            (StepKind::Transpose { dims, perm }, _) => {
                let op = OpKind::Transpose(TransposeParams {
                    dims: dims.clone(),
                    perm: perm.clone(),
                    elem_bytes: if int8 { 1 } else { 4 },
                });
                self.push(&s.name, op, vec![x], out);
            }
        }
        Ok(())
    }

    /// An int8 average pool whose output has its own quantisation `out_q`, with one rounding as onnxruntime
    /// computes it: a global one is a `ReduceMeanS8` over height and width; a windowed one a depthwise convolution
    /// whose weights are all `1 / taps` (padded taps count as 0, so only where the pool divides by the whole
    /// window, or has no padding). An average over the taps inside the input only, with padding, pools at the
    /// input's quantisation and requantises with a table: two roundings, up to about half an input step off.
    fn average_to(
        &mut self,
        s: &crate::lower::Step,
        pool: &Pool2d,
        in_q: Quant,
        out_q: Quant,
    ) -> Result<()> {
        let (x, out) = (s.inputs[0], s.output);
        let global = (pool.out_h, pool.out_w, pool.pad_top, pool.pad_left) == (1, 1, 0, 0)
            && (pool.kernel_h, pool.kernel_w) == (pool.in_h, pool.in_w);
        if global {
            let count = (pool.in_h * pool.in_w).max(1);
            let real = in_q.scale as f64 / (out_q.scale as f64 * count as f64);
            let (multiplier, shift) = host::quantize_multiplier(real);
            let dims = [pool.batch, pool.in_h, pool.in_w, pool.channels];
            let op = OpKind::ReduceMeanS8(ReduceMeanS8 {
                dims: dims.iter().copied().collect(),
                axes: 0b0110,
                input_zero_point: in_q.zero_point,
                output_zero_point: out_q.zero_point,
                multiplier,
                shift,
            });
            self.push(&s.name, op, vec![x], out);
            return Ok(());
        }
        let reach = |o: u32, stride: u32, k: u32| (o.max(1) - 1) * stride + k;
        let padded = pool.pad_top > 0
            || pool.pad_left > 0
            || reach(pool.out_h, pool.stride_h, pool.kernel_h) > pool.in_h
            || reach(pool.out_w, pool.stride_w, pool.kernel_w) > pool.in_w;
        if pool.count_include_pad || !padded {
            let c = pool.channels;
            let geom = ConvGeom {
                batch: pool.batch,
                in_h: pool.in_h,
                in_w: pool.in_w,
                in_c: c,
                out_h: pool.out_h,
                out_w: pool.out_w,
                out_c: c,
                kernel_h: pool.kernel_h,
                kernel_w: pool.kernel_w,
                stride_h: pool.stride_h,
                stride_w: pool.stride_w,
                dilation_h: 1,
                dilation_w: 1,
                pad_top: pool.pad_top,
                pad_left: pool.pad_left,
                groups: c,
            };
            let taps = (pool.kernel_h * pool.kernel_w) as usize;
            let weights = vec![1.0 / taps as f32; c as usize * taps];
            let macs = (pool.batch * pool.out_h * pool.out_w * c) as u64 * taps as u64;
            let (params, w) = self.weighted(
                &weights,
                None,
                None,
                c as usize,
                Activation::None,
                in_q,
                out_q,
                macs,
                conv_kernel(&geom),
                true,
            )?;
            let kind = conv_op(&geom, params, in_q, out_q);
            self.push_weighted(&s.name, kind, vec![x], out, w);
            return Ok(());
        }
        let mut pooled = self.tensors[out].clone();
        pooled.name = format!("{}.pooled", pooled.name);
        pooled.quant = in_q;
        self.tensors.push(pooled);
        let tmp = self.tensors.len() - 1;
        let op = OpKind::AvgPoolS8(pool_kernel(
            Pool2d {
                zero_point: in_q.zero_point,
                ..pool.clone()
            },
            fast_elementwise::avg_pool_fast_fits,
        ));
        self.push(&s.name, op, vec![x], tmp);
        let table = host::lookup_table(in_q, out_q, |v| v);
        let span = self.blob.push_i8(&table);
        self.push(
            &format!("{}.requantise", s.name),
            OpKind::LookupS8(LookupS8 { table: span }),
            vec![tmp],
            out,
        );
        Ok(())
    }

    /// The blob parameters of a convolution or dense layer, in the model's precision, and its report figures.
    #[allow(clippy::too_many_arguments)]
    /// `kernel`: the int8 kernel asked for (the result says which one the weights were laid out for).
    #[allow(clippy::too_many_arguments)]
    fn weighted(
        &mut self,
        weights: &[f32],
        given_scales: Option<&[f32]>,
        bias: Option<&[f32]>,
        channels: usize,
        act: Activation,
        in_q: Quant,
        out_q: Quant,
        macs: u64,
        kernel: KernelS8,
        int8: bool,
    ) -> Result<(Params, Weighted)> {
        if !int8 {
            let (act_min, act_max) = act.range();
            let w = Weighted {
                macs,
                weight_bytes: weights.len() * 4,
                bias_bytes: bias.map_or(0, |b| b.len() * 4),
            };
            let params = Params::F32 {
                weights: self.blob.push_f32(weights),
                bias: bias.map(|b| self.blob.push_f32(b)),
                act_min,
                act_max,
            };
            return Ok((params, w));
        }
        let w = Weighted {
            macs,
            weight_bytes: weights.len(),
            bias_bytes: channels * 4,
        };
        let (act_min, act_max) = act_range_s8(act, out_q);
        let pc = self.per_channel(weights, given_scales, bias, channels, in_q, out_q, kernel)?;
        Ok((
            Params::S8(PerChannelOut {
                act_min,
                act_max,
                ..pc
            }),
            w,
        ))
    }

    /// Symmetric per-output-channel int8 weights, int32 bias at `in_scale * w_scale[c]`, and the requantisation
    /// multipliers to the output scale (15-bit, from `host::per_channel_multipliers`). The weight scales are
    /// `given_scales` where a quantised model states them (its int8 weights come back exactly), else
    /// `absmax / 127` per channel.
    #[allow(clippy::too_many_arguments)]
    fn per_channel(
        &mut self,
        weights: &[f32],
        given_scales: Option<&[f32]>,
        bias: Option<&[f32]>,
        channels: usize,
        in_q: Quant,
        out_q: Quant,
        kernel: KernelS8,
    ) -> Result<PerChannelOut> {
        if let Some(bad) = weights
            .iter()
            .chain(bias.unwrap_or(&[]))
            .find(|v| !v.is_finite())
        {
            return Err(input(format!("a weight or bias is {bad}")));
        }
        let per = weights.len() / channels.max(1);
        let mut qw = Vec::with_capacity(weights.len());
        let mut qb = Vec::with_capacity(channels);
        let mut w_scales = Vec::with_capacity(channels);
        for c in 0..channels {
            let block = &weights[c * per..(c + 1) * per];
            let absmax = block.iter().fold(0f32, |m, &w| m.max(w.abs()));
            // An all-zero channel gets scale 1: its weights quantise to 0, its bias to round(b / in_scale).
            let (w_scale, lowest) = match given_scales.and_then(|s| s.get(c)) {
                Some(&s) if s.is_finite() && s > 0.0 => (s as f64, -128.0),
                Some(&s) => return Err(input(format!("weight scale {s} of channel {c}"))),
                None if absmax > 0.0 => (absmax as f64 / 127.0, -127.0),
                None => (1.0, -127.0),
            };
            qw.extend(
                block
                    .iter()
                    .map(|&w| (w as f64 / w_scale).round().clamp(lowest, 127.0) as i8),
            );
            let acc_scale = in_q.scale as f64 * w_scale;
            let b = bias.map_or(0.0, |b| b[c] as f64);
            qb.push(
                (b / acc_scale)
                    .round()
                    .clamp(i32::MIN as f64, i32::MAX as f64) as i32,
            );
            w_scales.push(w_scale);
        }
        let w_scales_f32: Vec<f32> = w_scales.iter().map(|&w| w as f32).collect();
        let (mult, shift) = host::per_channel_multipliers(in_q.scale, &w_scales_f32, out_q.scale)
            .map_err(|e| input(format!("int8 parameters: {e}")))?;
        // Packed for an optimised kernel: weights, bias and requantisation in one block, the separate spans
        // empty.
        let packed = match kernel {
            KernelS8::Dot => {
                let mut buf = vec![0u8; fast::dot_packed_len(per, channels)];
                fast::pack_dot(&qw, per, channels, Some(&qb), &mult, &shift, &mut buf)
                    .then_some(buf)
            }
            KernelS8::Depthwise => {
                let mut buf = vec![0u8; fast::depthwise_packed_len(per, channels)];
                fast::pack_depthwise(
                    &qw,
                    per,
                    channels,
                    in_q.zero_point,
                    Some(&qb),
                    &mult,
                    &shift,
                    &mut buf,
                )
                .then_some(buf)
            }
            _ => None,
        };
        if let Some(buf) = packed {
            let empty = Span { offset: 0, len: 0 };
            return Ok(PerChannelOut {
                weights: self.blob.push(&buf),
                bias: None,
                requant: PerChannel {
                    multipliers: empty,
                    shifts: empty,
                },
                act_min: i8::MIN,
                act_max: i8::MAX,
                kernel,
            });
        }
        Ok(PerChannelOut {
            weights: self.blob.push_i8(&qw),
            bias: Some(self.blob.push_i32(&qb)),
            requant: PerChannel {
                multipliers: self.blob.push_i16(&mult),
                shifts: self.blob.push_i8(&shift),
            },
            act_min: i8::MIN,
            act_max: i8::MAX,
            kernel: KernelS8::Reference,
        })
    }

    fn finish(mut self, name: &str) -> Result<Emitted> {
        // An alias has its root's element type (a kept f32 step may have changed it).
        for t in 0..self.tensors.len() {
            self.tensors[t].dtype = self.dtype(t);
        }
        for &o in &self.p.outputs {
            if self.tensors[o].alias_of.is_none() && self.tensors[o].blob.is_some() {
                return Err(input(format!(
                    "output '{}' is a constant; there is nothing to compute",
                    self.tensors[o].name
                )));
            }
        }
        // Arena: one buffer per root tensor that is not a constant; liveness over step indices shifted by one so
        // graph inputs are live "before" step 0.
        let root = |t: usize, ts: &[ETensor]| {
            let mut t = t;
            while let Some(a) = ts[t].alias_of {
                t = a;
            }
            t
        };
        let n = self.steps.len();
        let mut live: HashMap<usize, (usize, usize)> = HashMap::new();
        let touch = |t: usize, time: usize, live: &mut HashMap<usize, (usize, usize)>| {
            let e = live.entry(t).or_insert((time, time));
            e.0 = e.0.min(time);
            e.1 = e.1.max(time);
        };
        for &i in &self.p.inputs {
            touch(root(i, &self.tensors), 0, &mut live);
        }
        for (k, s) in self.steps.iter().enumerate() {
            for &i in &s.inputs {
                if self.tensors[root(i, &self.tensors)].blob.is_none() {
                    touch(root(i, &self.tensors), k + 1, &mut live);
                }
            }
            touch(root(s.output, &self.tensors), k + 1, &mut live);
        }
        for &o in &self.p.outputs {
            touch(root(o, &self.tensors), n + 1, &mut live);
        }
        // In place: an op whose kernel may write over its input (`ops::in_place_ok`) takes the input's buffer when
        // that input dies at this op and has the output's size; the buffer then lives on as the output's.
        let mut shares: HashMap<usize, usize> = HashMap::new();
        let owner = |mut r: usize, shares: &HashMap<usize, usize>| {
            while let Some(&s) = shares.get(&r) {
                r = s;
            }
            r
        };
        for (k, s) in self.steps.iter().enumerate() {
            let Some(&x) = s.inputs.first() else { continue };
            if !kiln_runtime::ops::in_place_ok(&s.kind) {
                continue;
            }
            let (rx, ry) = (
                owner(root(x, &self.tensors), &shares),
                root(s.output, &self.tensors),
            );
            let dies_here = live.get(&rx).is_some_and(|l| l.1 == k + 1);
            if rx != ry
                && dies_here
                && self.tensors[rx].blob.is_none()
                && self.tensors[rx].bytes() == self.tensors[ry].bytes()
                && live.contains_key(&ry)
            {
                let end = live[&ry].1;
                if let Some(l) = live.get_mut(&rx) {
                    l.1 = end;
                }
                live.remove(&ry);
                shares.insert(ry, rx);
            }
        }
        let mut roots: Vec<usize> = live.keys().copied().collect();
        roots.sort_unstable();
        let buffers: Vec<Buffer> = roots
            .iter()
            .map(|&r| Buffer {
                size: self.tensors[r].bytes(),
                first: live[&r].0,
                last: live[&r].1,
            })
            .collect();
        let arena = plan::plan(&buffers);
        let mut offset_of: HashMap<usize, usize> = roots
            .iter()
            .zip(&arena.offsets)
            .map(|(&r, &o)| (r, o))
            .collect();
        for &r in shares.keys() {
            let o = offset_of[&owner(r, &shares)];
            offset_of.insert(r, o);
        }

        let operand = |t: usize, ts: &[ETensor]| -> Option<Operand> {
            let r = root(t, ts);
            let len = ts[t].bytes() as u32;
            match (ts[r].blob, offset_of.get(&r)) {
                (Some(span), _) => Some(Operand {
                    space: Space::Blob,
                    offset: span.offset,
                    len,
                }),
                (None, Some(&off)) => Some(Operand {
                    space: Space::Arena,
                    offset: off as u32,
                    len,
                }),
                (None, None) => None,
            }
        };

        // Tensor table: the graph inputs and outputs (named, so tools can show them) and every op's output (for
        // observers; the op carries the name). Aliases and constants need no entry: ops address bytes directly.
        let io: Vec<usize> = self
            .p
            .inputs
            .iter()
            .chain(&self.p.outputs)
            .copied()
            .collect();
        let listed: Vec<usize> = {
            let mut v: Vec<usize> = io
                .iter()
                .copied()
                .chain(self.steps.iter().map(|s| s.output))
                .collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        let mut tensor_index = HashMap::new();
        let mut tensor_records = Vec::new();
        let mut count = 0u16;
        for i in listed {
            let t = &self.tensors[i];
            let data = operand(i, &self.tensors)
                .ok_or_else(|| input(format!("tensor '{}' has no storage", t.name)))?;
            let def = TensorDef {
                name: if io.contains(&i) { &t.name } else { "" },
                dtype: t.dtype,
                shape: dims_of(&t.shape)?,
                perm: dims_of(&t.perm)?,
                data,
                quant: self.quant(i),
            };
            tensor_records.extend(postcard::to_stdvec(&def).map_err(anyhow::Error::from)?);
            tensor_index.insert(i, count);
            count = count
                .checked_add(1)
                .ok_or_else(|| input("more than 65535 tensors"))?;
        }

        let mut op_records = Vec::new();
        let mut infos = Vec::new();
        let mut macs = 0;
        for s in &self.steps {
            let mut inputs = heapless::Vec::new();
            for &i in &s.inputs {
                let o = operand(i, &self.tensors)
                    .ok_or_else(|| input(format!("tensor {i} has no storage")))?;
                inputs.push(o).map_err(|_| input("too many op inputs"))?;
            }
            let output =
                operand(s.output, &self.tensors).ok_or_else(|| input("output has no storage"))?;
            let def = OpDef {
                name: &s.name,
                kind: s.kind.clone(),
                inputs,
                output,
                output_tensor: tensor_index[&s.output],
                macs: s.info.macs,
            };
            op_records.extend(postcard::to_stdvec(&def).map_err(anyhow::Error::from)?);
            macs += s.info.macs;
            infos.push(s.info.clone());
        }
        let io = |list: &[usize]| -> Result<heapless::Vec<u16, { format::MAX_IO }>> {
            let mut v = heapless::Vec::new();
            for t in list {
                let idx = tensor_index
                    .get(t)
                    .copied()
                    .ok_or_else(|| input("graph input/output has no storage"))?;
                v.push(idx).map_err(|_| {
                    input(format!(
                        "more than {} graph inputs or outputs",
                        format::MAX_IO
                    ))
                })?;
            }
            Ok(v)
        };
        let op_count = u16::try_from(self.steps.len()).map_err(|_| input("more than 65535 ops"))?;
        let def = ModelDef {
            name,
            arena_bytes: arena.total as u32,
            macs,
            tensor_count: count,
            tensors: &tensor_records,
            op_count,
            ops: &op_records,
            inputs: io(&self.p.inputs)?,
            outputs: io(&self.p.outputs)?,
            io_types: heapless::Vec::from_slice(&self.p.io_types)
                .map_err(|_| input("too many graph inputs and outputs"))?,
        };
        let meta = postcard::to_stdvec(&def).map_err(anyhow::Error::from)?;
        let bytes = write_file(&meta, &self.blob.bytes);
        let weight_bytes = infos.iter().map(|i| i.weight_bytes).sum();
        let bias_bytes = infos.iter().map(|i| i.bias_bytes).sum();
        Ok(Emitted {
            bytes,
            arena_bytes: arena.total,
            arena_lower_bound: arena.lower_bound,
            weight_bytes,
            bias_bytes,
            blob_bytes: std::mem::take(&mut self.blob.bytes).len(),
            macs,
            ops: infos,
            tensor_index,
        })
    }
}

/// MACs and parameter bytes of an op, for reports.
#[derive(Default)]
struct Weighted {
    macs: u64,
    weight_bytes: usize,
    bias_bytes: usize,
}

/// What a convolution or dense layer carries in the blob.
enum Params {
    F32 {
        weights: Span,
        bias: Option<Span>,
        act_min: f32,
        act_max: f32,
    },
    S8(PerChannelOut),
}

struct PerChannelOut {
    weights: Span,
    bias: Option<Span>,
    requant: PerChannel,
    act_min: i8,
    act_max: i8,
    /// The kernel the weights are laid out for: the one asked for, or the reference when packing for it was
    /// not possible (see `fast::pack_dot` / `fast::pack_depthwise`).
    kernel: KernelS8,
}

fn dims_of(v: &[usize]) -> Result<Dims> {
    v.iter()
        .map(|&d| u32::try_from(d).map_err(|_| input("dimension too large")))
        .collect::<Result<Vec<u32>>>()?
        .into_iter()
        .try_fold(Dims::new(), |mut acc, d| acc.push(d).map(|_| acc))
        .map_err(|_| input(format!("rank {} exceeds {}", v.len(), format::MAX_RANK)))
}

/// Header + metadata + padding + blob, with the CRC over everything after the CRC field.
pub fn write_file(meta: &[u8], blob: &[u8]) -> Vec<u8> {
    let blob_offset = (HEADER_LEN + meta.len()).div_ceil(BLOB_ALIGN) * BLOB_ALIGN;
    let file_len = blob_offset + blob.len();
    let mut out = Vec::with_capacity(file_len);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(file_len as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // CRC, filled below
    out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    out.extend_from_slice(&(blob_offset as u32).to_le_bytes());
    out.extend_from_slice(meta);
    out.resize(blob_offset, 0);
    out.extend_from_slice(blob);
    let crc = kiln_runtime::crc32::crc32(&out[16..]);
    out[12..16].copy_from_slice(&crc.to_le_bytes());
    out
}

/// The int8 conv kernel for this geometry: depthwise where it is one, the dot-product kernel where the patch fits
/// its buffer, the reference otherwise.
/// The conv op for `params` (f32, or int8 between `in_q` and `out_q`).
fn conv_op(geom: &ConvGeom, params: Params, in_q: Quant, out_q: Quant) -> OpKind {
    match params {
        Params::F32 {
            weights,
            bias,
            act_min,
            act_max,
        } => OpKind::Conv2dF32(ConvF32 {
            geom: geom.clone(),
            weights,
            bias,
            act_min,
            act_max,
        }),
        Params::S8(q) => OpKind::Conv2dS8(ConvS8 {
            geom: geom.clone(),
            weights: q.weights,
            bias: q.bias,
            requant: q.requant,
            input_zero_point: in_q.zero_point,
            output_zero_point: out_q.zero_point,
            act_min: q.act_min,
            act_max: q.act_max,
            kernel: q.kernel,
        }),
    }
}

fn conv_kernel(geom: &kiln_runtime::format::ConvGeom) -> KernelS8 {
    if fast::depthwise_fits(geom) {
        KernelS8::Depthwise
    } else if fast::dot_conv_fits(geom) {
        KernelS8::Dot
    } else {
        KernelS8::Reference
    }
}

/// An int8 pool on the fast kernel where it takes the geometry (`fits`, the kernel's predicate).
fn pool_kernel(p: Pool2d, fits: fn(&Pool2d) -> bool) -> Pool2d {
    let kernel = if fits(&p) {
        KernelS8::Fast
    } else {
        KernelS8::Reference
    };
    Pool2d { kernel, ..p }
}

/// The int8 fully connected kernel for this geometry: the dot-product kernel where a row fits its buffer.
fn fc_kernel(geom: &kiln_runtime::format::FcGeom) -> KernelS8 {
    if fast::dot_fc_fits(geom) {
        KernelS8::Dot
    } else {
        KernelS8::Reference
    }
}
