//! Lowering: the logical IR graph becomes a [`Program`] of physical steps, still in float.
//!
//! This is where layout is decided. Each tensor gets a `perm`, the order in which its logical axes lie in memory.
//! Convolutions and pools want channels last, so an NCHW model's activations are laid out NHWC; ONNX Transposes
//! become free relabelings (the data stays, the `perm` changes); reshapes alias their input when the bytes already
//! are in the right order; a real transpose step is inserted only where an op needs an order the data is not in.
//! Graph inputs and outputs keep the model's own layout.

use std::collections::HashMap;

use kiln_runtime::format::{Broadcast, ConvGeom, Dims, FcGeom, Pool2d, MAX_OP_INPUTS, MAX_RANK};

use crate::error::{input, Result};
use crate::ir::{Activation, BinaryKind, DataFormat, Graph, Op, PoolKind, TensorId, UnaryKind};

pub type PId = usize;

#[derive(Clone, Debug)]
pub struct PTensor {
    pub name: String,
    /// Logical shape (the ONNX model's axis order).
    pub shape: Vec<usize>,
    /// Memory order of the logical axes: physical axis `i` is logical axis `perm[i]`.
    pub perm: Vec<usize>,
    /// Constant data in physical order.
    pub value: Option<Vec<f32>>,
    /// Shares the bytes of another tensor (a reshape or relabeling that moves no data).
    pub alias_of: Option<PId>,
}

impl PTensor {
    pub fn physical_shape(&self) -> Vec<usize> {
        self.perm.iter().map(|&p| self.shape[p]).collect()
    }

    pub fn elems(&self) -> usize {
        self.shape.iter().product()
    }
}

#[derive(Clone, Debug)]
pub enum StepKind {
    Conv {
        geom: ConvGeom,
        weights: Vec<f32>,
        bias: Option<Vec<f32>>,
        act: Activation,
    },
    Fc {
        geom: FcGeom,
        weights: Vec<f32>,
        bias: Option<Vec<f32>>,
        act: Activation,
    },
    Binary {
        kind: BinaryKind,
        bcast: Broadcast,
        act: Activation,
    },
    Unary(UnaryKind),
    Softmax {
        outer: u32,
        len: u32,
        inner: u32,
        log: bool,
    },
    Pool {
        kind: PoolKind,
        pool: Pool2d,
    },
    ReduceMean {
        dims: Dims,
        axes: u8,
    },
    Pad {
        dims: Dims,
        before: Dims,
        after: Dims,
        value: f32,
    },
    Concat {
        outer: u32,
        inner: u32,
        parts: Vec<u32>,
    },
    Slice {
        outer: u32,
        axis_len: u32,
        start: u32,
        len: u32,
        inner: u32,
    },
    Transpose {
        dims: Dims,
        perm: Dims,
    },
}

#[derive(Clone, Debug)]
pub struct Step {
    /// Name of the IR node this step comes from.
    pub name: String,
    pub kind: StepKind,
    pub inputs: Vec<PId>,
    pub output: PId,
}

impl Step {
    pub fn macs(&self) -> u64 {
        match &self.kind {
            StepKind::Conv { geom: g, .. } => {
                (g.batch * g.out_h * g.out_w * g.out_c) as u64
                    * (g.kernel_h * g.kernel_w * (g.in_c / g.groups)) as u64
            }
            StepKind::Fc { geom: g, .. } => {
                g.rows as u64 * g.in_features as u64 * g.out_features as u64
            }
            _ => 0,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Program {
    pub tensors: Vec<PTensor>,
    pub steps: Vec<Step>,
    pub inputs: Vec<PId>,
    pub outputs: Vec<PId>,
    /// The IR tensor each program tensor stands for, where there is one (for per-layer comparisons).
    pub ir_of: HashMap<PId, TensorId>,
    /// The int8 quantisation a quantised (QDQ) model gives these tensors (see [`crate::ir::Tensor::quant`]).
    pub quant: HashMap<PId, crate::ir::Quant>,
    /// As [`Graph::weight_scales`], by step name.
    pub weight_scales: HashMap<String, Vec<f32>>,
    /// As [`Graph::io_types`].
    pub io_types: Vec<crate::ir::IoType>,
}

impl Program {
    /// The tensor whose bytes `t` uses.
    pub fn root(&self, mut t: PId) -> PId {
        while let Some(a) = self.tensors[t].alias_of {
            t = a;
        }
        t
    }

    fn add(&mut self, t: PTensor) -> PId {
        self.tensors.push(t);
        self.tensors.len() - 1
    }
}

fn dims(v: &[usize]) -> Result<Dims> {
    if v.len() > MAX_RANK {
        return Err(input(format!(
            "rank {} exceeds Kiln's maximum of {MAX_RANK}",
            v.len()
        )));
    }
    Ok(v.iter().map(|&d| d as u32).collect())
}

fn u(x: usize) -> u32 {
    x as u32
}

fn identity(rank: usize) -> Vec<usize> {
    (0..rank).collect()
}

/// Whether data laid out in `from` order is byte-identical to `to` order (they differ only in where size-1 axes go).
fn same_bytes(shape: &[usize], from: &[usize], to: &[usize]) -> bool {
    let a: Vec<usize> = from.iter().copied().filter(|&p| shape[p] != 1).collect();
    let b: Vec<usize> = to.iter().copied().filter(|&p| shape[p] != 1).collect();
    a == b
}

/// Row-major strides of physical dims.
fn strides(phys: &[usize]) -> Vec<usize> {
    let mut s = vec![1; phys.len()];
    for i in (0..phys.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * phys[i + 1];
    }
    s
}

struct Lowerer<'g> {
    g: &'g Graph,
    p: Program,
    /// IR tensor -> its program tensor.
    map: HashMap<TensorId, PId>,
    /// (tensor, perm) -> a version of it in that order, so a transpose is inserted once.
    relaid: HashMap<(PId, Vec<usize>), PId>,
    /// Flattened tensors left in their producer's memory order for the one dense layer that reads them: for each
    /// physical feature, the logical feature it holds. The dense layer permutes its weight columns to match.
    flat_features: HashMap<PId, Vec<usize>>,
}

/// Lowers an optimised IR graph.
///
/// # Errors
/// [`crate::error::Error::Input`] naming the node for shapes Kiln's kernels cannot run.
pub fn lower(g: &Graph) -> Result<Program> {
    let mut l = Lowerer {
        g,
        p: Program::default(),
        map: HashMap::new(),
        relaid: HashMap::new(),
        flat_features: HashMap::new(),
    };
    for &t in &g.inputs {
        let ir = &g.tensors[t];
        let id = l.p.add(PTensor {
            name: ir.name.clone(),
            shape: ir.shape.clone(),
            perm: identity(ir.shape.len()),
            value: None,
            alias_of: None,
        });
        l.map.insert(t, id);
        l.p.ir_of.insert(id, t);
        l.p.inputs.push(id);
    }
    for node in &g.nodes {
        l.node(node).map_err(|e| match e {
            crate::error::Error::Input(m) => input(format!(
                "node '{}' ({}): {m}",
                node.name,
                node.op.kind_name()
            )),
            other => other,
        })?;
    }
    for &t in &g.outputs {
        let id = l.operand(t)?;
        let rank = g.tensors[t].shape.len();
        let out = l.relayout(id, &identity(rank), &g.tensors[t].name)?;
        l.p.outputs.push(out);
    }
    l.p.quant =
        l.p.ir_of
            .iter()
            .filter_map(|(&p, &t)| Some((p, g.tensors[t].quant?)))
            .collect();
    l.p.weight_scales = g.weight_scales.clone();
    l.p.io_types = g.io_types.clone();
    Ok(l.p)
}

impl<'g> Lowerer<'g> {
    /// The program tensor for IR tensor `t`, materialising constants on first use (identity order).
    fn operand(&mut self, t: TensorId) -> Result<PId> {
        if let Some(&id) = self.map.get(&t) {
            return Ok(id);
        }
        let ir = &self.g.tensors[t];
        let Some(value) = &ir.value else {
            return Err(input(format!(
                "tensor '{}' is used before it is computed",
                ir.name
            )));
        };
        let id = self.p.add(PTensor {
            name: ir.name.clone(),
            shape: ir.shape.clone(),
            perm: identity(ir.shape.len()),
            value: Some(value.clone()),
            alias_of: None,
        });
        self.bind(t, id);
        Ok(id)
    }

    fn new_tensor(&mut self, name: &str, shape: Vec<usize>, perm: Vec<usize>) -> PId {
        self.p.add(PTensor {
            name: name.to_string(),
            shape,
            perm,
            value: None,
            alias_of: None,
        })
    }

    fn alias(&mut self, of: PId, name: &str, shape: Vec<usize>, perm: Vec<usize>) -> PId {
        let root = self.p.root(of);
        self.p.add(PTensor {
            name: name.to_string(),
            shape,
            perm,
            value: None,
            alias_of: Some(root),
        })
    }

    /// `t` with its data in `perm` order: itself, an alias, a permuted constant, or the output of a new transpose.
    fn relayout(&mut self, t: PId, perm: &[usize], name: &str) -> Result<PId> {
        let cur = self.p.tensors[t].clone();
        if cur.perm == perm {
            return Ok(t);
        }
        if let Some(&done) = self.relaid.get(&(t, perm.to_vec())) {
            return Ok(done);
        }
        let id = if same_bytes(&cur.shape, &cur.perm, perm) {
            if let Some(v) = cur.value.clone() {
                let id = self.p.add(PTensor {
                    perm: perm.to_vec(),
                    value: Some(v),
                    ..cur.clone()
                });
                self.same_constant(t, id);
                id
            } else {
                self.alias(t, &cur.name, cur.shape.clone(), perm.to_vec())
            }
        } else {
            // Physical step perm: output physical axis i holds logical axis perm[i], found at cur.perm.position.
            let step_perm: Vec<usize> = perm
                .iter()
                .map(|a| cur.perm.iter().position(|c| c == a).unwrap_or(0))
                .collect();
            let phys = cur.physical_shape();
            if let Some(v) = &cur.value {
                let out_phys: Vec<usize> = step_perm.iter().map(|&i| phys[i]).collect();
                let value = permute(v, &phys, &step_perm, &out_phys);
                let id = self.p.add(PTensor {
                    perm: perm.to_vec(),
                    value: Some(value),
                    alias_of: None,
                    ..cur.clone()
                });
                self.same_constant(t, id);
                id
            } else {
                let out = self.new_tensor(
                    &format!("{}.relayout", cur.name),
                    cur.shape.clone(),
                    perm.to_vec(),
                );
                self.p.steps.push(Step {
                    name: format!("{name}.relayout"),
                    kind: StepKind::Transpose {
                        dims: dims(&phys)?,
                        perm: dims(&step_perm)?,
                    },
                    inputs: vec![t],
                    output: out,
                });
                out
            }
        };
        self.relaid.insert((t, perm.to_vec()), id);
        Ok(id)
    }

    fn emit(
        &mut self,
        name: &str,
        kind: StepKind,
        inputs: Vec<PId>,
        out_ir: TensorId,
        perm: Vec<usize>,
    ) -> PId {
        let ir = &self.g.tensors[out_ir];
        let out = self.new_tensor(&ir.name, ir.shape.clone(), perm);
        self.p.steps.push(Step {
            name: name.to_string(),
            kind,
            inputs,
            output: out,
        });
        self.bind(out_ir, out);
        out
    }

    fn bind(&mut self, ir: TensorId, id: PId) {
        self.map.insert(ir, id);
        self.p.ir_of.insert(id, ir);
    }

    /// `copy` holds constant `t`'s values in another layout: the same IR tensor (and quantisation).
    fn same_constant(&mut self, t: PId, copy: PId) {
        if let Some(&ir) = self.p.ir_of.get(&t) {
            self.p.ir_of.insert(copy, ir);
        }
    }

    fn node(&mut self, node: &crate::ir::Node) -> Result<()> {
        let g = self.g;
        let out_shape = g.tensors[node.output].shape.clone();
        let name = node.name.as_str();
        match &node.op {
            Op::Conv(c) => {
                let x = self.operand(node.inputs[0])?;
                let in_shape = self.p.tensors[x].shape.clone();
                let (perm, geom) = conv_layout(&in_shape, &out_shape, c.data_format, &c.kernel)?;
                let x = self.relayout(x, &perm, name)?;
                let two = c.kernel.len() == 2;
                let geom = ConvGeom {
                    kernel_h: if two { u(c.kernel[0]) } else { 1 },
                    kernel_w: u(*c.kernel.last().unwrap_or(&1)),
                    stride_h: if two { u(c.strides[0]) } else { 1 },
                    stride_w: u(*c.strides.last().unwrap_or(&1)),
                    dilation_h: if two { u(c.dilations[0]) } else { 1 },
                    dilation_w: u(*c.dilations.last().unwrap_or(&1)),
                    pad_top: if two { u(c.pads_begin[0]) } else { 0 },
                    pad_left: u(*c.pads_begin.last().unwrap_or(&0)),
                    groups: u(c.group),
                    ..geom
                };
                let kind = StepKind::Conv {
                    geom,
                    weights: c.weights.clone(),
                    bias: c.bias.clone(),
                    act: c.act,
                };
                self.emit(name, kind, vec![x], node.output, perm);
            }
            Op::Pool(pa) => {
                let x = self.operand(node.inputs[0])?;
                let in_shape = self.p.tensors[x].shape.clone();
                let (perm, geom) = conv_layout(&in_shape, &out_shape, pa.data_format, &pa.kernel)?;
                let x = self.relayout(x, &perm, name)?;
                let two = pa.kernel.len() == 2;
                let pool = Pool2d {
                    batch: geom.batch,
                    in_h: geom.in_h,
                    in_w: geom.in_w,
                    channels: geom.in_c,
                    out_h: geom.out_h,
                    out_w: geom.out_w,
                    kernel_h: if two { u(pa.kernel[0]) } else { 1 },
                    kernel_w: u(*pa.kernel.last().unwrap_or(&1)),
                    stride_h: if two { u(pa.strides[0]) } else { 1 },
                    stride_w: u(*pa.strides.last().unwrap_or(&1)),
                    pad_top: if two { u(pa.pads_begin[0]) } else { 0 },
                    pad_left: u(*pa.pads_begin.last().unwrap_or(&0)),
                    count_include_pad: matches!(
                        pa.kind,
                        PoolKind::Avg {
                            count_include_pad: true
                        }
                    ),
                    zero_point: 0,
                    kernel: kiln_runtime::format::KernelS8::Reference,
                };
                self.emit(
                    name,
                    StepKind::Pool {
                        kind: pa.kind,
                        pool,
                    },
                    vec![x],
                    node.output,
                    perm,
                );
            }
            Op::Dense {
                weights,
                in_features,
                out_features,
                bias,
                act,
            } => {
                let x = self.operand(node.inputs[0])?;
                let t = &self.p.tensors[x];
                let rank = t.shape.len();
                // Rows may lie in any order as long as the feature axis is innermost.
                let x = if t.perm.last() == Some(&(rank - 1)) {
                    x
                } else {
                    self.relayout(x, &identity(rank), name)?
                };
                let perm = self.p.tensors[x].perm.clone();
                let rows = u(self.p.tensors[x].elems() / in_features.max(&1));
                let geom = FcGeom {
                    rows,
                    in_features: u(*in_features),
                    out_features: u(*out_features),
                };
                let weights = match self.flat_features.get(&x) {
                    // Column k of the weights must read the logical feature held at physical position k.
                    Some(features) => weights
                        .chunks(*in_features)
                        .flat_map(|row| features.iter().map(move |&f| row[f]))
                        .collect(),
                    None => weights.clone(),
                };
                let kind = StepKind::Fc {
                    geom,
                    weights,
                    bias: bias.clone(),
                    act: *act,
                };
                self.emit(name, kind, vec![x], node.output, perm);
            }
            Op::Binary { kind, act } => {
                let a = self.operand(node.inputs[0])?;
                let b = self.operand(node.inputs[1])?;
                let rank = out_shape.len();
                // Output order: that of the first full-rank computed operand, else the model's own.
                let perm = [a, b]
                    .iter()
                    .map(|&t| &self.p.tensors[t])
                    .find(|t| t.value.is_none() && t.shape.len() == rank)
                    .map(|t| t.perm.clone())
                    .unwrap_or_else(|| identity(rank));
                let out_phys: Vec<usize> = perm.iter().map(|&p| out_shape[p]).collect();
                let sa = self.broadcast_strides(a, &perm, &out_shape);
                let sb = self.broadcast_strides(b, &perm, &out_shape);
                let (o, sa, sb) = merge_axes(&out_phys, &sa, &sb);
                let bcast = Broadcast {
                    out: dims(&o)?,
                    a_strides: dims(&sa)?,
                    b_strides: dims(&sb)?,
                };
                self.emit(
                    name,
                    StepKind::Binary {
                        kind: *kind,
                        bcast,
                        act: *act,
                    },
                    vec![a, b],
                    node.output,
                    perm,
                );
            }
            Op::Unary(k) => {
                let x = self.operand(node.inputs[0])?;
                let perm = self.p.tensors[x].perm.clone();
                self.emit(name, StepKind::Unary(*k), vec![x], node.output, perm);
            }
            Op::Softmax { axis, log } => {
                let x = self.operand(node.inputs[0])?;
                let (outer, len, inner, perm) = self.split_at_axis(x, *axis);
                let kind = StepKind::Softmax {
                    outer,
                    len,
                    inner,
                    log: *log,
                };
                self.emit(name, kind, vec![x], node.output, perm);
            }
            Op::Pad {
                pads_begin,
                pads_end,
                value,
            } => {
                let x = self.operand(node.inputs[0])?;
                let t = self.p.tensors[x].clone();
                let before: Vec<usize> = t.perm.iter().map(|&p| pads_begin[p]).collect();
                let after: Vec<usize> = t.perm.iter().map(|&p| pads_end[p]).collect();
                let kind = StepKind::Pad {
                    dims: dims(&t.physical_shape())?,
                    before: dims(&before)?,
                    after: dims(&after)?,
                    value: *value,
                };
                self.emit(name, kind, vec![x], node.output, t.perm.clone());
            }
            Op::Concat { axis } => {
                let mut parts = Vec::new();
                for &i in &node.inputs {
                    parts.push(self.operand(i)?);
                }
                let perm = parts
                    .iter()
                    .map(|&t| &self.p.tensors[t])
                    .find(|t| t.value.is_none())
                    .map(|t| t.perm.clone())
                    .unwrap_or_else(|| identity(out_shape.len()));
                for part in parts.iter_mut() {
                    *part = self.relayout(*part, &perm, name)?;
                }
                let pos = perm.iter().position(|&p| p == *axis).unwrap_or(0);
                let out_phys: Vec<usize> = perm.iter().map(|&p| out_shape[p]).collect();
                let outer = u(out_phys[..pos].iter().product());
                let inner = u(out_phys[pos + 1..].iter().product());
                // Kernels take at most MAX_OP_INPUTS parts: wider concatenations become a chain.
                let mut acc: Option<(PId, u32)> = None;
                let mut rest = parts.as_slice();
                while !rest.is_empty() {
                    let room = MAX_OP_INPUTS - usize::from(acc.is_some());
                    let (now, later) = rest.split_at(room.min(rest.len()));
                    let mut ins: Vec<PId> = acc.map(|(t, _)| t).into_iter().collect();
                    ins.extend_from_slice(now);
                    let sizes: Vec<u32> = acc
                        .map(|(_, n)| n)
                        .into_iter()
                        .chain(now.iter().map(|&t| u(self.p.tensors[t].shape[*axis])))
                        .collect();
                    let total: u32 = sizes.iter().sum();
                    let kind = StepKind::Concat {
                        outer,
                        inner,
                        parts: sizes,
                    };
                    let out = if later.is_empty() {
                        self.emit(name, kind, ins, node.output, perm.clone())
                    } else {
                        let mut shape = out_shape.clone();
                        shape[*axis] = total as usize;
                        let t = self.new_tensor(&format!("{name}.part"), shape, perm.clone());
                        self.p.steps.push(Step {
                            name: name.to_string(),
                            kind,
                            inputs: ins,
                            output: t,
                        });
                        t
                    };
                    acc = Some((out, total));
                    rest = later;
                }
            }
            Op::Slice { axis, start, end } => {
                let x = self.operand(node.inputs[0])?;
                let (outer, axis_len, inner, perm) = self.split_at_axis(x, *axis);
                let kind = StepKind::Slice {
                    outer,
                    axis_len,
                    start: u(*start),
                    len: u(end - start),
                    inner,
                };
                self.emit(name, kind, vec![x], node.output, perm);
            }
            Op::Reshape => {
                let x = self.operand(node.inputs[0])?;
                if let Some(features) = self.flatten_for_dense(node, x) {
                    let out = self.alias(
                        x,
                        &g.tensors[node.output].name,
                        out_shape.clone(),
                        vec![0, 1],
                    );
                    self.flat_features.insert(out, features);
                    self.bind(node.output, out);
                    return Ok(());
                }
                let rank = self.p.tensors[x].shape.len();
                let x = self.relayout(x, &identity(rank), name)?;
                let out_name = &g.tensors[node.output].name;
                let out = match self.p.tensors[x].value.clone() {
                    Some(v) => self.p.add(PTensor {
                        name: out_name.clone(),
                        shape: out_shape.clone(),
                        perm: identity(out_shape.len()),
                        value: Some(v),
                        alias_of: None,
                    }),
                    None => self.alias(x, out_name, out_shape.clone(), identity(out_shape.len())),
                };
                self.bind(node.output, out);
            }
            Op::Transpose { perm: tp } => {
                let x = self.operand(node.inputs[0])?;
                let cur = self.p.tensors[x].perm.clone();
                // Output logical axis k is input axis tp[k]; keep the bytes where they are.
                let mut inv = vec![0; tp.len()];
                for (k, &a) in tp.iter().enumerate() {
                    inv[a] = k;
                }
                let perm: Vec<usize> = cur.iter().map(|&a| inv[a]).collect();
                let out = if let Some(v) = self.p.tensors[x].value.clone() {
                    let t = self.p.tensors[x].clone();
                    self.p.add(PTensor {
                        shape: out_shape.clone(),
                        perm,
                        value: Some(v),
                        ..t
                    })
                } else {
                    self.alias(x, &g.tensors[node.output].name, out_shape.clone(), perm)
                };
                self.bind(node.output, out);
            }
            Op::ReduceMean { axes } => {
                let x = self.operand(node.inputs[0])?;
                let t = self.p.tensors[x].clone();
                let mut mask = 0u8;
                for (i, &p) in t.perm.iter().enumerate() {
                    if axes.contains(&p) {
                        mask |= 1 << i;
                    }
                }
                let kept = out_shape.len() == t.shape.len();
                let perm = if kept {
                    t.perm.clone()
                } else {
                    // Drop the reduced axes and renumber the rest.
                    t.perm
                        .iter()
                        .filter(|p| !axes.contains(p))
                        .map(|&p| p - axes.iter().filter(|&&a| a < p).count())
                        .collect()
                };
                let kind = StepKind::ReduceMean {
                    dims: dims(&t.physical_shape())?,
                    axes: mask,
                };
                self.emit(name, kind, vec![x], node.output, perm);
            }
        }
        Ok(())
    }

    /// A flatten `[N, d1, d2, ..] -> [N, d1 * d2 * ..]` of data not in logical order, whose only reader is a dense
    /// layer: instead of transposing the data, the dense layer can take the features in memory order. Returns, for
    /// each physical feature, the logical feature index.
    fn flatten_for_dense(&self, node: &crate::ir::Node, x: PId) -> Option<Vec<usize>> {
        let t = &self.p.tensors[x];
        let out_shape = &self.g.tensors[node.output].shape;
        let rank = t.shape.len();
        let flattens =
            out_shape.len() == 2 && rank > 2 && out_shape[0] == t.shape[0] && t.perm[0] == 0;
        if !flattens || t.value.is_some() || same_bytes(&t.shape, &t.perm, &identity(rank)) {
            return None;
        }
        if self.g.outputs.contains(&node.output) {
            return None;
        }
        let mut readers = self.g.consumers(node.output);
        let reader = readers.next()?;
        let only_dense = readers.next().is_none()
            && matches!(self.g.nodes[reader].op, Op::Dense { .. })
            && self.g.nodes[reader].inputs == [node.output];
        if !only_dense {
            return None;
        }
        // Logical feature indices laid out as the data is: transpose an iota of the per-sample logical shape.
        let logical: Vec<usize> = t.shape[1..].to_vec();
        let order: Vec<usize> = t.perm[1..].iter().map(|&p| p - 1).collect();
        let iota: Vec<usize> = (0..logical.iter().product::<usize>()).collect();
        let phys: Vec<usize> = order.iter().map(|&a| logical[a]).collect();
        Some(permute(&iota, &logical, &order, &phys))
    }

    /// `[outer, len, inner]` of tensor `t` around logical `axis`, in its memory order.
    fn split_at_axis(&self, t: PId, axis: usize) -> (u32, u32, u32, Vec<usize>) {
        let t = &self.p.tensors[t];
        let phys = t.physical_shape();
        let pos = t.perm.iter().position(|&p| p == axis).unwrap_or(0);
        let outer = phys[..pos].iter().product::<usize>();
        let inner = phys[pos + 1..].iter().product::<usize>();
        (u(outer), u(phys[pos]), u(inner), t.perm.clone())
    }

    /// Element strides of operand `t` for each physical axis of an output laid out in `out_perm` (numpy
    /// broadcasting: `t` is right-aligned against the output; broadcast axes get stride 0).
    fn broadcast_strides(&self, t: PId, out_perm: &[usize], out_shape: &[usize]) -> Vec<usize> {
        let t = &self.p.tensors[t];
        let rank = out_shape.len();
        let lead = rank - t.shape.len();
        let phys_strides = strides(&t.physical_shape());
        out_perm
            .iter()
            .map(|&axis| {
                if axis < lead || t.shape[axis - lead] == 1 {
                    0
                } else {
                    let la = axis - lead;
                    let pos = t.perm.iter().position(|&p| p == la).unwrap_or(0);
                    phys_strides[pos]
                }
            })
            .collect()
    }
}

/// Channels-last order and NHWC geometry (sizes only) of a conv or pool on `in_shape` -> `out_shape`.
fn conv_layout(
    in_shape: &[usize],
    out_shape: &[usize],
    fmt: DataFormat,
    kernel: &[usize],
) -> Result<(Vec<usize>, ConvGeom)> {
    let rank = in_shape.len();
    if !(rank == 3 || rank == 4) || kernel.len() != rank - 2 {
        return Err(input(format!(
            "only 1D and 2D are supported (input shape {in_shape:?})"
        )));
    }
    let perm = match fmt {
        DataFormat::ChannelsFirst if rank == 4 => vec![0, 2, 3, 1],
        DataFormat::ChannelsFirst => vec![0, 2, 1],
        DataFormat::ChannelsLast => identity(rank),
    };
    let phys_in: Vec<usize> = perm.iter().map(|&p| in_shape[p]).collect();
    let phys_out: Vec<usize> = perm.iter().map(|&p| out_shape[p]).collect();
    let (ih, iw, oh, ow) = if rank == 4 {
        (phys_in[1], phys_in[2], phys_out[1], phys_out[2])
    } else {
        (1, phys_in[1], 1, phys_out[1])
    };
    let geom = ConvGeom {
        batch: u(phys_in[0]),
        in_h: u(ih),
        in_w: u(iw),
        in_c: u(phys_in[rank - 1]),
        out_h: u(oh),
        out_w: u(ow),
        out_c: u(phys_out[rank - 1]),
        kernel_h: 1,
        kernel_w: 1,
        stride_h: 1,
        stride_w: 1,
        dilation_h: 1,
        dilation_w: 1,
        pad_top: 0,
        pad_left: 0,
        groups: 1,
    };
    Ok((perm, geom))
}

/// Merges adjacent axes that are contiguous for the output and both operands (fewer, longer inner loops).
fn merge_axes(out: &[usize], a: &[usize], b: &[usize]) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
    let (mut o, mut sa, mut sb) = (vec![out[0]], vec![a[0]], vec![b[0]]);
    for i in 1..out.len() {
        let last = o.len() - 1;
        let fits = |s: &[usize], prev: usize| prev == s[i] * out[i];
        if fits(a, sa[last]) && fits(b, sb[last]) {
            o[last] *= out[i];
            sa[last] = a[i];
            sb[last] = b[i];
        } else {
            o.push(out[i]);
            sa.push(a[i]);
            sb.push(b[i]);
        }
    }
    (o, sa, sb)
}

/// Physically transposes row-major `v` of dims `phys`: output axis i is input axis `perm[i]`.
pub fn permute<T: Copy>(v: &[T], phys: &[usize], perm: &[usize], out_phys: &[usize]) -> Vec<T> {
    let in_strides = strides(phys);
    let mut out = Vec::with_capacity(v.len());
    let mut idx = vec![0usize; out_phys.len()];
    for _ in 0..v.len() {
        let src: usize = idx.iter().zip(perm).map(|(&i, &p)| i * in_strides[p]).sum();
        out.push(v[src]);
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < out_phys[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}
