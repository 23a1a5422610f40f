//! Lowering of tract's decluttered typed model to Kiln's IR.
//!
//! Nodes are visited in tract's evaluation order. Most tract ops map to one IR op; a few ONNX ops reach us as
//! small tract subgraphs that are folded back into one IR node:
//!
//! | ONNX op                  | after tract's declutter                        | IR                               |
//! |--------------------------|------------------------------------------------|----------------------------------|
//! | Relu                     | `Max(x, 0)`                                    | `Unary(Relu)`                    |
//! | Clip                     | `Max(x, lo)` then `Min(·, hi)` (either alone)  | `Unary(Clip)`                    |
//! | Elu                      | `Iff(0 < x, x, alpha * (exp(x) - 1))`          | `Unary(Elu)`                     |
//! | PRelu                    | `Iff(0 > x, x * slope, x)`                     | `Binary(PRelu)`                  |
//! | LogSoftmax               | `Softmax` then `Ln`                            | `Softmax { log: true }`          |
//! | ReduceMean               | `Reduce<Sum>` then `Mul(1/n)` [then `Rm` axes] | `ReduceMean`                     |
//! | ReduceMean of Mul(x, x)  | `Reduce<MeanOfSquares>` [then `Rm` axes]       | `Binary(Mul)` then `ReduceMean`  |
//! | GlobalAveragePool        | `Reduce<Sum>` then `Mul(1/n)`                  | `Pool(Avg)` over the whole input |
//! | GlobalMaxPool            | `Reduce<Max>`                                  | `Pool(Max)` over the whole input |
//! | MatMul / Gemm            | `EinSum` [then `Mul(alpha)`] [then `Add(c)`]   | `Dense` (see [`super::conv`])    |
//! | 1x1 Conv                 | [`Downsample`s then] `EinSum` then `Add(bias)` | `Conv` (see [`super::conv`])     |
//! | Mul(x, x)                | `Square`                                       | `Binary(Mul)` of x with itself   |
//! | Squeeze/Unsqueeze/...    | `AxisOp` Add / Rm / Reshape                    | `Reshape`                        |
//! | Transpose                | one `AxisOp::Move` per displaced axis          | `Transpose` (consecutive merged) |
//! | Split                    | one `Slice` per output                         | `Slice`s                         |
//! | BatchNormalization       | `Mul` then `Add` by `[1, C, 1..]` constants    | `Binary` Mul and Add             |
//!
//! Constants are materialised in the IR on first use, with the shape tract gives them (tract already ranks
//! broadcast operands to their consumer's rank, e.g. `[1, C, 1, 1]`).

use std::collections::{HashMap, HashSet};

use anyhow::anyhow;
use tract_onnx::pb;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{AxisOp, DimLike};
use tract_onnx::tract_core::ops::array::{Pad, PadMode, Slice, TypedConcat};
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cast::Cast;
use tract_onnx::tract_core::ops::cnn::{Conv, MaxPool, SumPool};
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::identity::Identity;
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_core::ops::logic::{CompGT, CompLT, Iff};
use tract_onnx::tract_core::ops::math::{Add, Exp, Ln, Max, Min, Mul, Square, Sub, Tanh};
use tract_onnx::tract_core::ops::nn::{LeakyRelu, Reduce, Reducer, Sigmoid, Softmax, SoftmaxKind};
use tract_onnx::tract_core::ops::source::TypedSource;
use tract_onnx::tract_core::ops::Downsample;

use crate::error::{Error, Result};
use crate::ir::{self, BinaryKind, DataFormat, Op, PoolAttrs, PoolKind, TensorId, UnaryKind};

/// Why a node could not be lowered.
pub(super) enum Fail {
    /// The model uses something Kiln does not support; reported to the user with the node.
    Unsupported(String),
    /// A fault in Kiln.
    Internal(anyhow::Error),
}

impl From<anyhow::Error> for Fail {
    fn from(e: anyhow::Error) -> Self {
        Fail::Internal(e)
    }
}

pub(super) type LResult<T> = std::result::Result<T, Fail>;

macro_rules! unsupported {
    ($($arg:tt)*) => { return Err(Fail::Unsupported(format!($($arg)*))) };
}
pub(super) use unsupported;

/// A composite recognised before the walk, emitted when the walk reaches the node that completes it.
enum Pattern {
    Elu { x: OutletId, alpha: f32 },
    PRelu { x: OutletId, slope: OutletId },
}

pub(super) struct Lowerer<'a> {
    pub(super) model: &'a TypedModel,
    /// ONNX node name -> op type, to say which ONNX node a tract node came from.
    onnx_ops: HashMap<String, String>,
    pub(super) g: ir::Graph,
    /// The IR tensor holding each lowered tract outlet.
    values: HashMap<OutletId, TensorId>,
    /// tract nodes folded into an IR node emitted for another tract node.
    pub(super) absorbed: HashSet<usize>,
    patterns: HashMap<usize, Pattern>,
    /// Outputs of tract `Downsample` ops. They are not lowered: the convolutions reading them fold them into
    /// their strides (tract turns a strided 1x1 convolution into `Downsample`s and an unstrided one).
    pub(super) downsampled: HashSet<OutletId>,
    model_outputs: HashSet<OutletId>,
    used_names: HashSet<String>,
    /// ONNX node name -> the weight scales a quantised model gives it (see [`super::qdq`]).
    weight_scales: &'a HashMap<String, Vec<f32>>,
}

/// Lowers the decluttered `model` (from the ONNX `graph` in `file`) to Kiln's IR.
pub(super) fn lower(
    file: &str,
    graph: &pb::GraphProto,
    model: &TypedModel,
    weight_scales: &HashMap<String, Vec<f32>>,
) -> Result<ir::Graph> {
    let mut l = Lowerer {
        model,
        onnx_ops: graph
            .node
            .iter()
            .enumerate()
            .map(|(ix, n)| (super::onnx_node_name(n, ix), n.op_type.clone()))
            .collect(),
        g: ir::Graph::default(),
        values: HashMap::new(),
        absorbed: HashSet::new(),
        patterns: HashMap::new(),
        downsampled: HashSet::new(),
        model_outputs: model.output_outlets()?.iter().copied().collect(),
        used_names: HashSet::new(),
        weight_scales,
    };

    for &outlet in model.input_outlets()? {
        let name = model.node(outlet.node).name.clone();
        let shape = match l.shape(outlet) {
            Ok(s) => s,
            Err(_) => {
                return Err(Error::Input(format!(
                    "{file}: input '{name}' does not have a fixed shape"
                )))
            }
        };
        let t = l.g.add_tensor(name, shape, None);
        l.g.inputs.push(t);
        l.values.insert(outlet, t);
    }

    l.find_patterns()?;

    let mut errors = vec![];
    let mut failed: HashSet<OutletId> = HashSet::new();
    for id in model.eval_order()? {
        let node = model.node(id);
        if l.absorbed.contains(&id) || node.op_is::<TypedSource>() || node.op_is::<Const>() {
            continue;
        }
        // A node reading a failed node's output is not reported again.
        if node.inputs.iter().any(|i| failed.contains(i)) {
            failed.extend((0..node.outputs.len()).map(|slot| OutletId::new(id, slot)));
            continue;
        }
        match l.lower_node(node) {
            Ok(()) => {}
            Err(Fail::Unsupported(why)) => {
                errors.push(format!("  {}: {why}", l.describe(node)));
                failed.extend((0..node.outputs.len()).map(|slot| OutletId::new(id, slot)));
                // Nodes it claimed for a fold have no value either.
                for &a in &l.absorbed {
                    for slot in 0..model.node(a).outputs.len() {
                        let o = OutletId::new(a, slot);
                        if !l.values.contains_key(&o) {
                            failed.insert(o);
                        }
                    }
                }
            }
            Err(Fail::Internal(e)) => {
                return Err(Error::Internal(
                    e.context(format!("{file}: lowering {}", l.describe(node))),
                ))
            }
        }
    }
    if !errors.is_empty() {
        let plural = if errors.len() == 1 { "" } else { "s" };
        return Err(Error::Input(format!(
            "{file}: {} node{plural} cannot be imported (after tract's simplification):\n{}",
            errors.len(),
            errors.join("\n")
        )));
    }

    for &outlet in model.output_outlets()? {
        match l.tensor(outlet) {
            Ok(t) => l.g.outputs.push(t),
            Err(Fail::Unsupported(why)) => {
                return Err(Error::Input(format!("{file}: model output: {why}")))
            }
            Err(Fail::Internal(e)) => return Err(Error::Internal(e.context("model output"))),
        }
    }
    compact(&mut l.g);
    Ok(l.g)
}

/// Drops tensors nothing refers to (outputs of nodes merged away), renumbering the rest in order.
fn compact(g: &mut ir::Graph) {
    let mut used = vec![false; g.tensors.len()];
    for n in &g.nodes {
        n.inputs
            .iter()
            .chain([&n.output])
            .for_each(|&t| used[t] = true);
    }
    g.inputs
        .iter()
        .chain(&g.outputs)
        .for_each(|&t| used[t] = true);
    if used.iter().all(|&u| u) {
        return;
    }
    let mut new_id = vec![usize::MAX; g.tensors.len()];
    let mut kept = Vec::new();
    for (t, tensor) in std::mem::take(&mut g.tensors).into_iter().enumerate() {
        if used[t] {
            new_id[t] = kept.len();
            kept.push(tensor);
        }
    }
    g.tensors = kept;
    for n in &mut g.nodes {
        n.inputs.iter_mut().for_each(|t| *t = new_id[*t]);
        n.output = new_id[n.output];
    }
    g.inputs
        .iter_mut()
        .chain(g.outputs.iter_mut())
        .for_each(|t| *t = new_id[*t]);
}

impl<'a> Lowerer<'a> {
    // ----- naming and messages -------------------------------------------------------------------------------

    /// The ONNX node a tract node comes from: tract names expansion nodes `<onnx name>.<suffix>`.
    fn origin(&self, tract_name: &str) -> Option<(&str, &str)> {
        let mut name = tract_name;
        loop {
            if let Some((k, v)) = self.onnx_ops.get_key_value(name) {
                return Some((k.as_str(), v.as_str()));
            }
            name = &name[..name.rfind('.')?];
        }
    }

    pub(super) fn origin_op(&self, node: &TypedNode) -> Option<&str> {
        self.origin(&node.name).map(|(_, op)| op)
    }

    /// "node 'y.low' (tract op Max, from ONNX Relu 'y')".
    fn describe(&self, node: &TypedNode) -> String {
        let origin = match self.origin(&node.name) {
            Some((name, op)) if name == node.name => format!(", ONNX op {op}"),
            Some((name, op)) => format!(", from ONNX {op} node '{name}'"),
            None => String::new(),
        };
        format!("node '{}' (tract op {}{origin})", node.name, node.op.name())
    }

    /// A unique IR node name based on `base`.
    fn unique_name(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut n = 1;
        while self.used_names.contains(&name) {
            name = format!("{base}#{n}");
            n += 1;
        }
        self.used_names.insert(name.clone());
        name
    }

    /// An outlet's tensor name: its ONNX tensor name when it has one, else its node's name.
    fn outlet_name(&self, outlet: OutletId) -> String {
        match self.model.outlet_label(outlet) {
            Some(l) => l.to_string(),
            None if outlet.slot == 0 => self.model.node(outlet.node).name.clone(),
            None => format!("{}:{}", self.model.node(outlet.node).name, outlet.slot),
        }
    }

    // ----- facts and constants -------------------------------------------------------------------------------

    pub(super) fn shape(&self, outlet: OutletId) -> LResult<Vec<usize>> {
        let fact = self.model.outlet_fact(outlet)?;
        match fact.shape.as_concrete() {
            Some(s) => Ok(s.to_vec()),
            None => unsupported!(
                "tensor '{}' has a symbolic shape {:?}",
                self.outlet_name(outlet),
                fact.shape
            ),
        }
    }

    /// The constant value of an outlet, if tract knows it.
    pub(super) fn konst(&self, outlet: OutletId) -> LResult<Option<Arc<Tensor>>> {
        Ok(self.model.outlet_fact(outlet)?.konst.clone())
    }

    /// The value of an outlet that is a constant with all elements equal.
    fn uniform(&self, outlet: OutletId) -> LResult<Option<f32>> {
        let Some(k) = self.konst(outlet)? else {
            return Ok(None);
        };
        let v = to_f32_vec(&k)?;
        Ok(match v.first() {
            Some(&first) if v.iter().all(|&x| x == first) => Some(first),
            _ => None,
        })
    }

    /// The IR tensor for a tract outlet; constants are materialised on first use.
    pub(super) fn tensor(&mut self, outlet: OutletId) -> LResult<TensorId> {
        if let Some(&t) = self.values.get(&outlet) {
            return Ok(t);
        }
        if let Some(k) = self.konst(outlet)? {
            let t = self.g.add_tensor(
                self.outlet_name(outlet),
                k.shape().to_vec(),
                Some(to_f32_vec(&k)?),
            );
            self.values.insert(outlet, t);
            return Ok(t);
        }
        if self.downsampled.contains(&outlet) {
            unsupported!(
                "reads a strided subsampling (tract Downsample) of its input, which Kiln only folds into convolutions"
            );
        }
        Err(Fail::Internal(anyhow!(
            "no IR tensor for {outlet:?} ('{}')",
            self.outlet_name(outlet)
        )))
    }

    /// The node consuming `outlet`, if it is the only consumer and `outlet` is not a model output: such a
    /// consumer can be folded into the node producing `outlet`.
    pub(super) fn sole_consumer(&self, outlet: OutletId) -> Option<&'a TypedNode> {
        let succ = self.model.outlet_successors(outlet);
        if succ.len() != 1 || self.model_outputs.contains(&outlet) {
            return None;
        }
        let node = self.model.node(succ[0].node);
        (node.outputs.len() == 1).then_some(node)
    }

    /// For a binary node with one constant, uniform operand: `(other operand, constant value)`.
    pub(super) fn var_and_uniform(&self, node: &TypedNode) -> LResult<Option<(OutletId, f32)>> {
        if node.inputs.len() != 2 {
            return Ok(None);
        }
        for (c, v) in [(1, 0), (0, 1)] {
            if let Some(u) = self.uniform(node.inputs[c])? {
                if self.konst(node.inputs[v])?.is_none() {
                    return Ok(Some((node.inputs[v], u)));
                }
            }
        }
        Ok(None)
    }

    // ----- emitting ------------------------------------------------------------------------------------------

    /// Emits an IR node named after `node`, whose output is the value of tract outlet `out`.
    pub(super) fn emit(
        &mut self,
        node: &TypedNode,
        op: Op,
        inputs: Vec<TensorId>,
        out: OutletId,
    ) -> LResult<TensorId> {
        let shape = self.shape(out)?;
        self.check_reshape(&op, &inputs, &shape)?;
        let t = self.g.add_tensor(self.outlet_name(out), shape, None);
        // A folded composite is named after its first tract node, unless only the node producing its result
        // carries an ONNX node's own name (Gemm's `y.ab` ... `y`; a 1x1 Conv's `c.einsum` ... `c`).
        let model = self.model;
        let last = &model.node(out.node).name;
        let base = if !self.onnx_ops.contains_key(&node.name) && self.onnx_ops.contains_key(last) {
            last
        } else {
            &node.name
        };
        let name = self.unique_name(base);
        let origin = node.name.clone();
        self.given_weight_scales(&[&origin, last], &name, &op)?;
        self.g.nodes.push(ir::Node {
            name,
            op,
            inputs,
            output: t,
        });
        self.values.insert(out, t);
        Ok(t)
    }

    /// Records the weight scales a quantised model gives the Conv or Dense `op` (from the ONNX node one of the
    /// tract nodes `tract_names` comes from) as those of IR node `name`.
    fn given_weight_scales(&mut self, tract_names: &[&str], name: &str, op: &Op) -> LResult<()> {
        let channels = match op {
            Op::Conv(c) => c.out_channels,
            Op::Dense { out_features, .. } => *out_features,
            _ => return Ok(()),
        };
        let found = tract_names.iter().find_map(|n| {
            let (onnx, _) = self.origin(n)?;
            self.weight_scales.get(onnx).map(|s| (onnx, s))
        });
        let Some((onnx, scales)) = found else {
            return Ok(());
        };
        if scales.len() != channels {
            unsupported!(
                "the weight scales of ONNX node '{onnx}' are {} for {channels} output channels",
                scales.len()
            );
        }
        self.g
            .weight_scales
            .insert(name.to_string(), scales.clone());
        Ok(())
    }

    /// Emits an IR node with a fresh intermediate output tensor (no tract outlet holds its value).
    pub(super) fn emit_tmp(
        &mut self,
        name: &str,
        op: Op,
        inputs: Vec<TensorId>,
        shape: Vec<usize>,
    ) -> LResult<TensorId> {
        self.check_reshape(&op, &inputs, &shape)?;
        let base = name;
        let name = self.unique_name(name);
        self.given_weight_scales(&[base], &name, &op)?;
        let t = self.g.add_tensor(name.clone(), shape, None);
        self.g.nodes.push(ir::Node {
            name,
            op,
            inputs,
            output: t,
        });
        Ok(t)
    }

    /// A reshape must keep the element count (a lowering bug otherwise).
    fn check_reshape(&self, op: &Op, inputs: &[TensorId], shape: &[usize]) -> LResult<()> {
        if *op == Op::Reshape {
            let from = &self.g.tensors[inputs[0]].shape;
            if from.iter().product::<usize>() != shape.iter().product::<usize>() {
                return Err(Fail::Internal(anyhow!(
                    "reshape from {from:?} to {shape:?}"
                )));
            }
        }
        Ok(())
    }

    /// A reshape of `t` to `shape` (no node when the shape is already right).
    pub(super) fn reshape_tmp(
        &mut self,
        name: &str,
        t: TensorId,
        shape: Vec<usize>,
    ) -> LResult<TensorId> {
        if self.g.tensors[t].shape == shape {
            return Ok(t);
        }
        self.emit_tmp(name, Op::Reshape, vec![t], shape)
    }

    pub(super) fn mark_absorbed(&mut self, node: &TypedNode) {
        self.absorbed.insert(node.id);
    }

    // ----- patterns ------------------------------------------------------------------------------------------

    /// Finds the composites that must be recognised from their last node (Elu and PRelu end in an `Iff` whose
    /// inner nodes come before it in evaluation order).
    fn find_patterns(&mut self) -> TractResult<()> {
        for node in self.model.nodes() {
            if !node.op_is::<Iff>() || node.inputs.len() != 3 {
                continue;
            }
            let found = match self.match_elu(node) {
                Ok(Some(p)) => Some(p),
                _ => self.match_prelu(node).ok().flatten(),
            };
            if let Some((pattern, inner)) = found {
                self.patterns.insert(node.id, pattern);
                self.absorbed.extend(inner);
            }
        }
        Ok(())
    }

    /// The node producing `outlet` if `outlet` is read by nothing but its consumer in a pattern.
    fn private_producer(&self, outlet: OutletId) -> Option<&'a TypedNode> {
        self.sole_consumer(outlet)?;
        Some(self.model.node(outlet.node))
    }

    fn bin_op<'n>(&self, node: &'n TypedNode) -> Option<&'n TypedBinOp> {
        node.op_as::<TypedBinOp>()
    }

    /// `x > 0` as tract writes it: `0 < x` or `x > 0`. Returns `x`.
    fn is_positive_test(&self, node: &TypedNode) -> LResult<Option<OutletId>> {
        let Some(b) = self.bin_op(node) else {
            return Ok(None);
        };
        let (zero_slot, x_slot) = if b.0.is::<CompLT>() {
            (0, 1)
        } else if b.0.is::<CompGT>() {
            (1, 0)
        } else {
            return Ok(None);
        };
        Ok((self.uniform(node.inputs[zero_slot])? == Some(0.0)).then_some(node.inputs[x_slot]))
    }

    /// `x < 0` as tract writes it: `0 > x` or `x < 0`. Returns `x`.
    fn is_negative_test(&self, node: &TypedNode) -> LResult<Option<OutletId>> {
        let Some(b) = self.bin_op(node) else {
            return Ok(None);
        };
        let (zero_slot, x_slot) = if b.0.is::<CompGT>() {
            (0, 1)
        } else if b.0.is::<CompLT>() {
            (1, 0)
        } else {
            return Ok(None);
        };
        Ok((self.uniform(node.inputs[zero_slot])? == Some(0.0)).then_some(node.inputs[x_slot]))
    }

    /// Elu: `Iff(x > 0, x, alpha * (exp(x) - 1))`.
    fn match_elu(&self, iff: &TypedNode) -> LResult<Option<(Pattern, Vec<usize>)>> {
        let (c, t, f) = (iff.inputs[0], iff.inputs[1], iff.inputs[2]);
        let Some(test) = self.private_producer(c) else {
            return Ok(None);
        };
        let Some(x) = self.is_positive_test(test)? else {
            return Ok(None);
        };
        if t != x {
            return Ok(None);
        }
        let Some(f_node) = self.private_producer(f) else {
            return Ok(None);
        };
        // `alpha * (exp(x) - 1)`; tract drops the multiplication when alpha is 1 (ONNX's default).
        let (mul, minus_one, alpha) = if self.bin_op(f_node).is_some_and(|b| b.0.is::<Mul>()) {
            let Some((minus_one, alpha)) = self.var_and_uniform(f_node)? else {
                return Ok(None);
            };
            (Some(f_node), minus_one, alpha)
        } else {
            (None, f, 1.0)
        };
        let Some(sub) = self.private_producer(minus_one) else {
            return Ok(None);
        };
        if !self.bin_op(sub).is_some_and(|b| b.0.is::<Sub>())
            || self.uniform(sub.inputs[1])? != Some(1.0)
        {
            return Ok(None);
        }
        let Some(exp) = self.private_producer(sub.inputs[0]) else {
            return Ok(None);
        };
        let is_exp = exp
            .op_as::<ElementWiseOp>()
            .is_some_and(|e| e.0.is::<Exp>());
        if !is_exp || exp.inputs[0] != x {
            return Ok(None);
        }
        let mut consumed = vec![test.id, sub.id, exp.id];
        consumed.extend(mul.map(|m| m.id));
        Ok(Some((Pattern::Elu { x, alpha }, consumed)))
    }

    /// PRelu: `Iff(x < 0, x * slope, x)`.
    fn match_prelu(&self, iff: &TypedNode) -> LResult<Option<(Pattern, Vec<usize>)>> {
        let (c, t, f) = (iff.inputs[0], iff.inputs[1], iff.inputs[2]);
        let Some(test) = self.private_producer(c) else {
            return Ok(None);
        };
        let Some(x) = self.is_negative_test(test)? else {
            return Ok(None);
        };
        if f != x {
            return Ok(None);
        }
        let Some(mul) = self.private_producer(t) else {
            return Ok(None);
        };
        if !self.bin_op(mul).is_some_and(|b| b.0.is::<Mul>()) {
            return Ok(None);
        }
        let slope = match (mul.inputs[0] == x, mul.inputs[1] == x) {
            (true, false) => mul.inputs[1],
            (false, true) => mul.inputs[0],
            _ => return Ok(None),
        };
        Ok(Some((Pattern::PRelu { x, slope }, vec![test.id, mul.id])))
    }

    // ----- lowering ------------------------------------------------------------------------------------------

    fn lower_node(&mut self, node: &TypedNode) -> LResult<()> {
        let out = OutletId::new(node.id, 0);
        if let Some(p) = self.patterns.remove(&node.id) {
            return match p {
                Pattern::Elu { x, alpha } => {
                    let x = self.tensor(x)?;
                    self.emit(node, Op::Unary(UnaryKind::Elu { alpha }), vec![x], out)
                        .map(drop)
                }
                Pattern::PRelu { x, slope } => {
                    let ins = vec![self.tensor(x)?, self.tensor(slope)?];
                    self.emit(
                        node,
                        Op::Binary {
                            kind: BinaryKind::PRelu,
                            act: ir::Activation::None,
                        },
                        ins,
                        out,
                    )
                    .map(drop)
                }
            };
        }
        if node.outputs.len() != 1 {
            unsupported!("has {} outputs", node.outputs.len());
        }
        let dt = node.outputs[0].fact.datum_type;
        if dt != f32::datum_type() {
            unsupported!("computes {dt:?} values on an activation path; Kiln computes in float32");
        }

        if let Some(op) = node.op_as::<Conv>() {
            return self.lower_conv(node, op);
        }
        if let Some(op) = node.op_as::<EinSum>() {
            return self.lower_einsum(node, op);
        }
        if let Some(op) = node.op_as::<MaxPool>() {
            if op.with_index_outputs.is_some() {
                unsupported!("MaxPool with an indices output");
            }
            return self.lower_pool(node, &op.pool_spec, PoolKind::Max);
        }
        if let Some(op) = node.op_as::<SumPool>() {
            if !op.normalize {
                unsupported!("sum pooling (Kiln supports average and max pooling)");
            }
            return self.lower_pool(
                node,
                &op.pool_spec,
                PoolKind::Avg {
                    count_include_pad: op.count_include_pad,
                },
            );
        }
        if let Some(op) = node.op_as::<TypedBinOp>() {
            return self.lower_binary(node, op);
        }
        if let Some(op) = node.op_as::<ElementWiseOp>() {
            return self.lower_element_wise(node, op);
        }
        if let Some(op) = node.op_as::<AxisOp>() {
            return self.lower_axis_op(node, op);
        }
        if let Some(op) = node.op_as::<Pad>() {
            let PadMode::Constant(value) = &op.mode else {
                unsupported!("{:?} padding (Kiln supports constant padding)", op.mode);
            };
            let op = Op::Pad {
                pads_begin: op.pads.iter().map(|p| p.0).collect(),
                pads_end: op.pads.iter().map(|p| p.1).collect(),
                value: value.cast_to_scalar::<f32>()?,
            };
            let x = self.tensor(node.inputs[0])?;
            return self.emit(node, op, vec![x], out).map(drop);
        }
        if let Some(op) = node.op_as::<TypedConcat>() {
            let ins = node
                .inputs
                .iter()
                .map(|&i| self.tensor(i))
                .collect::<LResult<Vec<_>>>()?;
            return self
                .emit(node, Op::Concat { axis: op.axis }, ins, out)
                .map(drop);
        }
        if let Some(op) = node.op_as::<Slice>() {
            let (Ok(start), Ok(end)) = (op.start.to_usize(), op.end.to_usize()) else {
                unsupported!("slice bounds {}..{} are not constant", op.start, op.end);
            };
            let x = self.tensor(node.inputs[0])?;
            return self
                .emit(
                    node,
                    Op::Slice {
                        axis: op.axis,
                        start,
                        end,
                    },
                    vec![x],
                    out,
                )
                .map(drop);
        }
        if let Some(op) = node.op_as::<Reduce>() {
            return self.lower_reduce(node, op);
        }
        if let Some(op) = node.op_as::<Softmax>() {
            return self.lower_softmax(node, op);
        }
        if let Some(op) = node.op_as::<Downsample>() {
            return self.defer_downsample(node, op);
        }
        if node.op_is::<Identity>() {
            let x = self.tensor(node.inputs[0])?;
            self.values.insert(out, x);
            return Ok(());
        }
        if node.op_is::<Cast>() && self.model.outlet_fact(node.inputs[0])?.datum_type == dt {
            let x = self.tensor(node.inputs[0])?;
            self.values.insert(out, x);
            return Ok(());
        }
        let info = node.op.info().unwrap_or_default().join("; ");
        unsupported!(
            "Kiln has no lowering for this op{}",
            if info.is_empty() {
                info
            } else {
                format!(" ({info})")
            }
        )
    }

    /// Add, Sub and Mul map directly; Max and Min with a constant bound are Relu or Clip.
    fn lower_binary(&mut self, node: &TypedNode, op: &TypedBinOp) -> LResult<()> {
        let kind = if op.0.is::<Add>() {
            BinaryKind::Add
        } else if op.0.is::<Sub>() {
            BinaryKind::Sub
        } else if op.0.is::<Mul>() {
            BinaryKind::Mul
        } else if op.0.is::<Max>() || op.0.is::<Min>() {
            return self.lower_clamp(node, op.0.is::<Max>());
        } else {
            unsupported!(
                "binary op {} (Kiln supports Add, Sub, Mul, and Max/Min with a constant)",
                op.0.name()
            );
        };
        let ins = vec![self.tensor(node.inputs[0])?, self.tensor(node.inputs[1])?];
        self.emit(
            node,
            Op::Binary {
                kind,
                act: ir::Activation::None,
            },
            ins,
            OutletId::new(node.id, 0),
        )
        .map(drop)
    }

    /// `Max(x, lo)` and/or `Min(x, hi)` with scalar constants (tract's Relu and Clip), folding a following
    /// opposite bound into the same `Clip`.
    fn lower_clamp(&mut self, node: &TypedNode, is_max: bool) -> LResult<()> {
        let Some((x, bound)) = self.var_and_uniform(node)? else {
            unsupported!(
                "{} of two tensors or with a non-uniform bound",
                if is_max { "Max" } else { "Min" }
            );
        };
        let (mut lo, mut hi) = if is_max {
            (bound, f32::INFINITY)
        } else {
            (f32::NEG_INFINITY, bound)
        };
        let mut out = OutletId::new(node.id, 0);
        if let Some(next) = self.sole_consumer(out) {
            let opposite = self.bin_op(next).is_some_and(|b| {
                if is_max {
                    b.0.is::<Min>()
                } else {
                    b.0.is::<Max>()
                }
            });
            if opposite {
                if let Some((var, b2)) = self.var_and_uniform(next)? {
                    if var == out {
                        if is_max {
                            hi = b2;
                        } else {
                            lo = b2;
                        }
                        self.mark_absorbed(next);
                        out = OutletId::new(next.id, 0);
                    }
                }
            }
        }
        let kind = if lo == 0.0 && hi == f32::INFINITY {
            UnaryKind::Relu
        } else {
            UnaryKind::Clip { min: lo, max: hi }
        };
        let x = self.tensor(x)?;
        self.emit(node, Op::Unary(kind), vec![x], out).map(drop)
    }

    fn lower_element_wise(&mut self, node: &TypedNode, op: &ElementWiseOp) -> LResult<()> {
        let out = OutletId::new(node.id, 0);
        let x = self.tensor(node.inputs[0])?;
        let mini = &op.0;
        let op = if mini.is::<Sigmoid>() {
            Op::Unary(UnaryKind::Sigmoid)
        } else if mini.is::<Tanh>() {
            Op::Unary(UnaryKind::Tanh)
        } else if let Some(l) = mini.downcast_ref::<LeakyRelu>() {
            Op::Unary(UnaryKind::LeakyRelu { alpha: l.alpha })
        } else if mini.is::<Square>() {
            // tract's form of Mul(x, x).
            return self
                .emit(
                    node,
                    Op::Binary {
                        kind: BinaryKind::Mul,
                        act: ir::Activation::None,
                    },
                    vec![x, x],
                    out,
                )
                .map(drop);
        } else {
            unsupported!(
                "element-wise {} (not an activation Kiln supports)",
                mini.name()
            );
        };
        self.emit(node, op, vec![x], out).map(drop)
    }

    /// Squeeze, Unsqueeze, Reshape and Flatten are reshapes; Transpose is a chain of axis moves. Consecutive
    /// reshapes, and consecutive transposes, merge into one node (or none when they cancel out).
    fn lower_axis_op(&mut self, node: &TypedNode, op: &AxisOp) -> LResult<()> {
        let input = node.inputs[0];
        let out = OutletId::new(node.id, 0);
        let x = self.tensor(input)?;
        let out_shape = self.shape(out)?;
        // The IR node producing our input, if we may rewrite it: its output is read by this node only.
        let producer = match self.sole_consumer(input) {
            Some(_) if !self.g.inputs.contains(&x) && !self.g.is_const(x) => self.g.producer(x),
            _ => None,
        };
        let identity = |perm: &[usize]| perm.iter().enumerate().all(|(i, &p)| i == p);
        if let AxisOp::Move(from, to) = op {
            let mut perm: Vec<usize> = (0..self.g.tensors[x].shape.len()).collect();
            let axis = perm.remove(*from);
            perm.insert(*to, axis);
            if let Some(p) = producer {
                if let Op::Transpose { perm: prev } = &self.g.nodes[p].op {
                    // out[i] = mid[perm[i]] = x[prev[perm[i]]]
                    let merged: Vec<usize> = perm.iter().map(|&i| prev[i]).collect();
                    if identity(&merged) {
                        return self.bypass(p, out);
                    }
                    self.g.nodes[p].op = Op::Transpose { perm: merged };
                    return self.retarget(x, out);
                }
            }
            if identity(&perm) {
                self.values.insert(out, x);
                return Ok(());
            }
            return self
                .emit(node, Op::Transpose { perm }, vec![x], out)
                .map(drop);
        }
        if let Some(p) = producer {
            if self.g.nodes[p].op == Op::Reshape {
                if self.g.tensors[self.g.nodes[p].inputs[0]].shape == out_shape {
                    return self.bypass(p, out);
                }
                return self.retarget(x, out);
            }
        }
        if self.g.tensors[x].shape == out_shape {
            self.values.insert(out, x);
            return Ok(());
        }
        self.emit(node, Op::Reshape, vec![x], out).map(drop)
    }

    /// Removes IR node `p` (a reshape or transpose undone by the node being lowered): `out` is `p`'s input.
    fn bypass(&mut self, p: usize, out: OutletId) -> LResult<()> {
        let src = self.g.nodes.remove(p).inputs[0];
        self.values.insert(out, src);
        Ok(())
    }

    /// Makes IR tensor `t` (the output of a node just rewritten to compute `out`'s value) hold outlet `out`.
    fn retarget(&mut self, t: TensorId, out: OutletId) -> LResult<()> {
        self.g.tensors[t].shape = self.shape(out)?;
        self.g.tensors[t].name = self.outlet_name(out);
        self.values.insert(out, t);
        Ok(())
    }

    /// `Reduce<Sum>` then `Mul(1/n)` is a mean (ReduceMean, or GlobalAveragePool); `Reduce<Max>` over all
    /// spatial axes is GlobalMaxPool.
    fn lower_reduce(&mut self, node: &TypedNode, op: &Reduce) -> LResult<()> {
        let input = node.inputs[0];
        let x_shape = self.shape(input)?;
        let rank = x_shape.len();
        let mut axes: Vec<usize> = op.axes.to_vec();
        axes.sort_unstable();
        let spatial: Vec<usize> = (2..rank).collect();
        let global = (3..=4).contains(&rank) && axes == spatial;
        let origin = self.origin_op(node).unwrap_or("").to_string();
        let mut out = OutletId::new(node.id, 0);
        match op.reducer {
            Reducer::Sum | Reducer::MeanOfSquares => {
                let squared = op.reducer == Reducer::MeanOfSquares;
                if !squared {
                    let n: usize = axes.iter().map(|&a| x_shape[a]).product();
                    let scale = match self.sole_consumer(out) {
                        Some(mul) if self.bin_op(mul).is_some_and(|b| b.0.is::<Mul>()) => self
                            .var_and_uniform(mul)?
                            .filter(|(v, _)| *v == out)
                            .map(|(_, c)| (mul, c)),
                        _ => None,
                    };
                    let Some((mul, c)) = scale else {
                        unsupported!(
                            "sum reduction over axes {axes:?} (Kiln supports mean reductions)"
                        );
                    };
                    if ((c * n as f32) - 1.0).abs() > 1e-5 {
                        unsupported!("sum reduction over axes {axes:?} scaled by {c} (a mean would be 1/{n})");
                    }
                    self.mark_absorbed(mul);
                    out = OutletId::new(mul.id, 0);
                }
                let mut x = self.tensor(input)?;
                if squared {
                    // tract's fold of ReduceMean(Mul(x, x)).
                    let op = Op::Binary {
                        kind: BinaryKind::Mul,
                        act: ir::Activation::None,
                    };
                    x = self.emit_tmp(
                        &format!("{}.square", node.name),
                        op,
                        vec![x, x],
                        x_shape.clone(),
                    )?;
                } else if global && origin == "GlobalAveragePool" {
                    let op = global_pool(
                        PoolKind::Avg {
                            count_include_pad: false,
                        },
                        &x_shape,
                    );
                    return self.emit(node, op, vec![x], out).map(drop);
                }
                // ReduceMean with keepdims=0: tract removes the reduced axes afterwards.
                let mut kept: Vec<usize> = (0..rank).collect();
                while let Some(next) = self.sole_consumer(out) {
                    match next.op_as::<AxisOp>() {
                        Some(AxisOp::Rm(a)) if *a < kept.len() && axes.contains(&kept[*a]) => {
                            kept.remove(*a);
                            self.mark_absorbed(next);
                            out = OutletId::new(next.id, 0);
                        }
                        _ => break,
                    }
                }
                self.emit(node, Op::ReduceMean { axes }, vec![x], out)
                    .map(drop)
            }
            Reducer::Max if global => {
                let x = self.tensor(input)?;
                self.emit(node, global_pool(PoolKind::Max, &x_shape), vec![x], out)
                    .map(drop)
            }
            r => unsupported!("{r:?} reduction over axes {axes:?}"),
        }
    }

    /// Softmax along one axis. tract gives opset < 13 Softmax (which flattens the trailing axes) as a softmax over
    /// several contiguous axes: that becomes reshape, softmax, reshape.
    fn lower_softmax(&mut self, node: &TypedNode, op: &Softmax) -> LResult<()> {
        if op.quant_output_dt.is_some() {
            unsupported!("quantized softmax");
        }
        let mut log = matches!(op.kind, SoftmaxKind::LogSoftmax);
        let mut out = OutletId::new(node.id, 0);
        if !log {
            // LogSoftmax is a Softmax then Ln.
            if let Some(next) = self.sole_consumer(out) {
                if next
                    .op_as::<ElementWiseOp>()
                    .is_some_and(|e| e.0.is::<Ln>())
                {
                    self.mark_absorbed(next);
                    out = OutletId::new(next.id, 0);
                    log = true;
                }
            }
        }
        let mut axes: Vec<usize> = op.axes.to_vec();
        axes.sort_unstable();
        let x_shape = self.shape(node.inputs[0])?;
        let x = self.tensor(node.inputs[0])?;
        match axes[..] {
            [axis] => self
                .emit(node, Op::Softmax { axis, log }, vec![x], out)
                .map(drop),
            [first, .., last] if axes.windows(2).all(|w| w[1] == w[0] + 1) => {
                let mut merged = x_shape[..first].to_vec();
                merged.push(x_shape[first..=last].iter().product());
                merged.extend_from_slice(&x_shape[last + 1..]);
                let flat =
                    self.reshape_tmp(&format!("{}.flatten", node.name), x, merged.clone())?;
                let sm = self.emit_tmp(
                    &node.name,
                    Op::Softmax { axis: first, log },
                    vec![flat],
                    merged,
                )?;
                self.emit(node, Op::Reshape, vec![sm], out).map(drop)
            }
            _ => unsupported!("softmax over axes {axes:?}"),
        }
    }

    /// A `Downsample` is left for the convolutions reading it to fold into their strides.
    fn defer_downsample(&mut self, node: &TypedNode, op: &Downsample) -> LResult<()> {
        let out = OutletId::new(node.id, 0);
        let all_convs = !self.model_outputs.contains(&out)
            && self.model.outlet_successors(out).iter().all(|s| {
                let n = self.model.node(s.node);
                n.op_is::<Conv>() || n.op_is::<EinSum>() || n.op_is::<Downsample>()
            });
        if !all_convs || op.modulo != 0 || op.stride <= 0 {
            unsupported!("strided subsampling {op:?} that does not feed a convolution");
        }
        self.downsampled.insert(out);
        Ok(())
    }
}

/// A pool whose kernel is the whole spatial extent of an `[N, C, spatial...]` input.
fn global_pool(kind: PoolKind, x_shape: &[usize]) -> Op {
    let spatial = x_shape[2..].to_vec();
    let n = spatial.len();
    Op::Pool(PoolAttrs {
        kind,
        data_format: DataFormat::ChannelsFirst,
        kernel: spatial,
        strides: vec![1; n],
        pads_begin: vec![0; n],
        pads_end: vec![0; n],
    })
}

/// A tensor's elements as f32, row-major.
pub(super) fn to_f32_vec(t: &Tensor) -> LResult<Vec<f32>> {
    if !(t.datum_type().is_float()
        || t.datum_type().is_integer()
        || t.datum_type() == bool::datum_type())
    {
        unsupported!("constant of type {:?}", t.datum_type());
    }
    let t = t.cast_to::<f32>()?;
    Ok(t.to_plain_array_view::<f32>()?.iter().copied().collect())
}
