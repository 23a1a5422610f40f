//! Quantised ONNX models in the QDQ form (`QuantizeLinear` / `DequantizeLinear` around float ops, as
//! onnxruntime's `quantize_static` and quantisation-aware training export them).
//!
//! Before tract sees the model, the graph is rewritten into a float one, and what the QDQ nodes said is kept.
//! (tract 0.23 would make them its own `QuantizeLinearI8` / `DequantizeLinearF32` ops, fold a
//! DequantizeLinear -> reshape -> QuantizeLinear chain into an int8 lookup table, and fold weight
//! DequantizeLinears into float constants, losing their scales.)
//!
//! | QDQ pattern                                        | rewritten to                  | kept                          |
//! |----------------------------------------------------|-------------------------------|-------------------------------|
//! | `DequantizeLinear(int8 constant)` (weights, bias)  | its float value, a constant   | the scales, per output channel, for the Conv / Gemm / MatMul reading it as weights |
//! | `QuantizeLinear(float constant)` -> `Dequantize`   | the same                      | the same                      |
//! | `x` -> `QuantizeLinear` -> `DequantizeLinear`       | `x` (or `Clip(x)`, see below) | `x`'s (scale, zero point)     |
//! | int8 / uint8 graph input -> `DequantizeLinear`     | a float32 graph input         | its (scale, zero point), its I/O type |
//! | `QuantizeLinear` -> graph output                   | a float32 graph output        | its (scale, zero point), its I/O type |
//!
//! A QDQ pair both rounds and saturates; where the tensor comes from an op Kiln fuses activations into (Conv,
//! Gemm, MatMul, Add, Sub, Mul) the saturation becomes a `Clip` to the int8 range, so the float model computes
//! what onnxruntime computes (quantisers drop a Relu before a QDQ pair whose range starts at 0) and, fused, the
//! int8 one clamps exactly there. uint8 zero points become int8 ones by subtracting 128 (exact: the scale
//! stays). Weights must be symmetric (zero point 0).
//!
//! Tensors are named as in the ONNX model, so [`attach`] finds them again in the lowered IR by name.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use tract_onnx::data_resolver::FopenDataResolver;
use tract_onnx::pb::{self, tensor_proto::DataType};
use tract_onnx::prelude::*;

use crate::error::{input, Result};
use crate::ir::{self, IoType, Quant};

/// What the QDQ nodes of a model said, by ONNX tensor and node name.
#[derive(Debug, Default)]
pub(super) struct Given {
    /// Tensor name -> its int8 quantisation.
    pub tensors: HashMap<String, Quant>,
    /// Conv / Gemm / MatMul node name -> the scales of its int8 weights, one per output channel.
    pub weight_scales: HashMap<String, Vec<f32>>,
    /// Graph input name -> its type in the model, where not float32.
    pub inputs: HashMap<String, IoType>,
    /// Float tensor now computing a graph output -> the model's own name for that output, and its type there.
    pub outputs: HashMap<String, (String, IoType)>,
}

const Q: &str = "QuantizeLinear";
const DQ: &str = "DequantizeLinear";

/// Ops whose output Kiln can clamp for free (they take a fused activation).
const FUSES_ACTIVATION: &[&str] = &["Conv", "Gemm", "MatMul", "Add", "Sub", "Mul"];

/// Rewrites the QDQ nodes of `graph` (see the module docs). A model without any is left as it is.
///
/// # Errors
/// [`crate::error::Error::Input`] naming the node for QDQ patterns Kiln cannot honour.
pub(super) fn rewrite(
    file: &str,
    graph: &mut pb::GraphProto,
    opset: i64,
    dir: Option<&Path>,
) -> Result<Given> {
    let mut given = Given::default();
    if !graph.node.iter().any(is_qdq) {
        return Ok(given);
    }
    let mut r = Rewriter {
        consts: constants(file, graph, dir)?,
        graph_outputs: graph.output.iter().map(|o| o.name.clone()).collect(),
        input_types: graph
            .input
            .iter()
            .filter_map(|i| Some((i.name.clone(), elem_type(i)?)))
            .collect(),
        producer: HashMap::new(),
        consumers: HashMap::new(),
        removed: HashSet::new(),
        rename: HashMap::new(),
        output_renames: HashMap::new(),
        new_nodes: Vec::new(),
        new_consts: Vec::new(),
        opset,
    };
    for (ix, n) in graph.node.iter().enumerate() {
        for o in &n.output {
            r.producer.insert(o.clone(), ix);
        }
        for (slot, i) in n.input.iter().enumerate() {
            r.consumers.entry(i.clone()).or_default().push((ix, slot));
        }
    }
    let nodes = graph.node.clone();
    for (ix, n) in nodes.iter().enumerate() {
        if r.removed.contains(&ix) || !is_qdq(n) {
            continue;
        }
        let what = format!("node '{}' ({})", super::onnx_node_name(n, ix), n.op_type);
        let x = &n.input[0];
        if n.op_type == Q {
            r.quantize(&nodes, ix, &mut given)
        } else if r.consts.contains_key(x) {
            r.constant_dq(&nodes, ix, &mut given)
        } else if let Some(&dt) = r.input_types.get(x) {
            r.input_dq(&nodes, x, dt, &mut given)
        } else {
            Err(format!(
                "dequantises '{x}', which is neither a constant, a graph input, nor a QuantizeLinear output"
            ))
        }
        .map_err(|why| input(format!("{file}: {what}: {why}")))?;
    }

    // The rewritten graph: surviving nodes reading renamed tensors, then the new nodes and constants.
    let rename = |name: &mut String, r: &HashMap<String, String>| {
        while let Some(to) = r.get(name.as_str()) {
            *name = to.clone();
        }
    };
    let mut kept: Vec<pb::NodeProto> = nodes
        .into_iter()
        .enumerate()
        .filter(|(ix, _)| !r.removed.contains(ix))
        .map(|(ix, mut n)| {
            for (from, to) in r.output_renames.get(&ix).into_iter().flatten() {
                n.output
                    .iter_mut()
                    .filter(|o| *o == from)
                    .for_each(|o| *o = to.clone());
            }
            n
        })
        .collect();
    kept.append(&mut r.new_nodes);
    for n in &mut kept {
        n.input.iter_mut().for_each(|i| rename(i, &r.rename));
    }
    graph.node = kept;
    graph.initializer.append(&mut r.new_consts);
    for o in &mut graph.output {
        let original = o.name.clone();
        rename(&mut o.name, &r.rename);
        if o.name != original {
            let ty = given
                .outputs
                .remove(&original)
                .map_or(IoType::F32, |(_, t)| t);
            set_float(o);
            given.outputs.insert(o.name.clone(), (original, ty));
        }
    }
    for i in &mut graph.input {
        if given.inputs.contains_key(&i.name) {
            set_float(i);
        }
    }
    Ok(given)
}

/// Puts what `given` says on the lowered graph `g`: tensor quantisations, weight scales are already there
/// (see [`super::lower`]), I/O types, and the model's own output names.
pub(super) fn attach(g: &mut ir::Graph, given: &Given) {
    for t in &mut g.tensors {
        // tract names a constant after the node that made it and its output slot (`name.0`).
        let named = given.tensors.get(&t.name).or_else(|| {
            t.value.as_ref()?;
            given.tensors.get(t.name.strip_suffix(".0")?)
        });
        if let Some(&q) = named {
            t.quant = Some(q);
        }
    }
    let mut types: Vec<IoType> = g
        .inputs
        .iter()
        .map(|&t| {
            let name = &g.tensors[t].name;
            given.inputs.get(name).copied().unwrap_or_default()
        })
        .collect();
    for &t in &g.outputs {
        let (name, ty) = match given.outputs.get(&g.tensors[t].name) {
            Some((original, ty)) => (Some(original.clone()), *ty),
            None => (None, IoType::F32),
        };
        if let Some(n) = name {
            g.tensors[t].name = n;
        }
        types.push(ty);
    }
    if types.iter().any(|&t| t != IoType::F32) {
        g.io_types = types;
    }
}

fn is_qdq(n: &pb::NodeProto) -> bool {
    super::is_default_domain(&n.domain) && (n.op_type == Q || n.op_type == DQ)
}

pub(super) fn elem_type(v: &pb::ValueInfoProto) -> Option<i32> {
    match v.r#type.as_ref()?.value.as_ref()? {
        pb::type_proto::Value::TensorType(t) => Some(t.elem_type),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

fn set_float(v: &mut pb::ValueInfoProto) {
    if let Some(pb::type_proto::Value::TensorType(t)) =
        v.r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        t.elem_type = DataType::Float as i32;
    }
}

/// Initializers and `Constant` node values, by name.
pub(super) fn constants(
    file: &str,
    graph: &pb::GraphProto,
    dir: Option<&Path>,
) -> Result<HashMap<String, Tensor>> {
    let dir = dir.and_then(|d| d.to_str());
    let load = |t: &pb::TensorProto, name: &str| {
        tract_onnx::tensor::load_tensor(&FopenDataResolver, t, dir)
            .map_err(|e| input(format!("{file}: constant '{name}': {e:#}")))
    };
    let mut out = HashMap::new();
    for t in &graph.initializer {
        out.insert(t.name.clone(), load(t, &t.name)?);
    }
    for n in &graph.node {
        if n.op_type != "Constant" {
            continue;
        }
        if let (Some(o), Some(t)) = (
            n.output.first(),
            n.attribute
                .iter()
                .find(|a| a.name == "value")
                .and_then(|a| a.t.as_ref()),
        ) {
            out.insert(o.clone(), load(t, o)?);
        }
    }
    Ok(out)
}

/// Scales and int8-domain zero points of a QuantizeLinear / DequantizeLinear node.
struct Params {
    scales: Vec<f32>,
    zero_points: Vec<i32>,
    /// The quantised type (int8, uint8, or int32 for biases).
    dt: DatumType,
    axis: i64,
}

impl Params {
    /// The one (scale, zero point) of per-tensor parameters.
    fn per_tensor(&self) -> std::result::Result<Quant, String> {
        if self.scales.len() != 1 || self.zero_points.len() != 1 {
            return Err(format!(
                "per-axis quantisation ({} scales along axis {}) of an activation; Kiln quantises activations per \
                 tensor",
                self.scales.len(),
                self.axis
            ));
        }
        Ok(Quant {
            scale: self.scales[0],
            zero_point: self.zero_points[0],
        })
    }

    fn same(&self, other: &Params) -> bool {
        self.scales == other.scales && self.zero_points == other.zero_points && self.dt == other.dt
    }
}

struct Rewriter {
    consts: HashMap<String, Tensor>,
    graph_outputs: HashSet<String>,
    /// Graph input name -> ONNX element type.
    input_types: HashMap<String, i32>,
    producer: HashMap<String, usize>,
    /// Tensor name -> (node, input slot) reading it.
    consumers: HashMap<String, Vec<(usize, usize)>>,
    removed: HashSet<usize>,
    /// Tensor name -> the name its readers now read.
    rename: HashMap<String, String>,
    /// Node -> (output, new name) of outputs it now writes under another name.
    output_renames: HashMap<usize, Vec<(String, String)>>,
    new_nodes: Vec<pb::NodeProto>,
    new_consts: Vec<pb::TensorProto>,
    opset: i64,
}

type Why<T> = std::result::Result<T, String>;

impl Rewriter {
    fn konst(&self, name: &str) -> Why<&Tensor> {
        self.consts
            .get(name)
            .ok_or_else(|| format!("'{name}' must be a constant"))
    }

    /// The node's scales, zero points and axis; `x_dt` is the quantised type when there is no zero point input.
    fn params(&self, n: &pb::NodeProto, x_dt: DatumType) -> Why<Params> {
        let axis = n
            .get_attr_opt::<i64>("axis")
            .map_err(|e| format!("{e:#}"))?
            .unwrap_or(1);
        let scales: Vec<f32> = self
            .konst(n.input.get(1).ok_or("no scale input")?)?
            .cast_to::<f32>()
            .map_err(|e| format!("{e:#}"))?
            .to_plain_array_view::<f32>()
            .map_err(|e| format!("{e:#}"))?
            .iter()
            .copied()
            .collect();
        if let Some(bad) = scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(format!("scale {bad} (scales must be positive)"));
        }
        let (dt, zero_points) = match n.input.get(2).filter(|z| !z.is_empty()) {
            Some(z) => {
                let t = self.konst(z)?;
                let v = t
                    .cast_to::<i32>()
                    .map_err(|e| format!("{e:#}"))?
                    .to_plain_array_view::<i32>()
                    .map_err(|e| format!("{e:#}"))?
                    .iter()
                    .copied()
                    .collect::<Vec<i32>>();
                (t.datum_type(), v)
            }
            None => (x_dt, vec![0; scales.len().min(1)]),
        };
        let zero_points = match dt {
            DatumType::I8 | DatumType::I32 => zero_points,
            DatumType::U8 => zero_points.iter().map(|z| z - 128).collect(),
            other => {
                return Err(format!(
                    "{other:?} quantisation (Kiln takes int8 and uint8)"
                ))
            }
        };
        let zero_points = if zero_points.len() == 1 && scales.len() > 1 {
            vec![zero_points[0]; scales.len()]
        } else {
            zero_points
        };
        if zero_points.len() != scales.len() {
            return Err(format!(
                "{} scales but {} zero points",
                scales.len(),
                zero_points.len()
            ));
        }
        Ok(Params {
            scales,
            zero_points,
            dt,
            axis,
        })
    }

    fn node_name(&self, nodes: &[pb::NodeProto], ix: usize) -> String {
        super::onnx_node_name(&nodes[ix], ix)
    }

    /// `QuantizeLinear(x)`: of a constant, with its DequantizeLinear, a float constant; of an activation, an
    /// annotation on `x` (clamped where it is free) read in place of every DequantizeLinear of it, and the graph
    /// output it may be.
    fn quantize(&mut self, nodes: &[pb::NodeProto], ix: usize, given: &mut Given) -> Why<()> {
        let q = &nodes[ix];
        let out = q.output.first().ok_or("no output")?.clone();
        let dt = match q.input.get(2).and_then(|z| self.consts.get(z)) {
            Some(z) => z.datum_type(),
            None => DatumType::U8,
        };
        let p = self.params(q, dt)?;
        let readers = self.consumers.get(&out).cloned().unwrap_or_default();
        for &(r, _) in &readers {
            let n = &nodes[r];
            if !(is_qdq(n) && n.op_type == DQ) {
                return Err(format!(
                    "its output feeds node '{}' ({}); Kiln imports QuantizeLinear only into DequantizeLinear or \
                     as a graph output",
                    self.node_name(nodes, r),
                    n.op_type
                ));
            }
            let dp = self.params(n, dt)?;
            if !dp.same(&p) {
                return Err(format!(
                    "its DequantizeLinear '{}' uses other parameters (scales {:?}, zero points {:?} against {:?}, \
                     {:?})",
                    self.node_name(nodes, r),
                    dp.scales,
                    dp.zero_points,
                    p.scales,
                    p.zero_points
                ));
            }
        }
        let x = q.input[0].clone();
        self.removed.insert(ix);

        if let Some(w) = self.consts.get(&x) {
            // Fake-quantised constant weights: quantise them as onnxruntime does, then dequantise.
            let w = w
                .cast_to::<f32>()
                .map_err(|e| format!("{e:#}"))?
                .into_owned();
            let shape = w.shape().to_vec();
            let values: Vec<f32> = w
                .to_plain_array_view::<f32>()
                .map_err(|e| format!("{e:#}"))?
                .iter()
                .copied()
                .collect();
            let ints = per_axis(&values, &shape, &p, |v, s, z| {
                let (lo, hi) = int_range(p.dt);
                ((v / s).round_ties_even() + z as f32).clamp(lo, hi) - z as f32
            })?;
            for &(r, _) in &readers {
                self.removed.insert(r);
                let dq_out = nodes[r].output[0].clone();
                let values = per_axis(&ints, &shape, &p, |q, s, _| q * s)?;
                self.new_const(&dq_out, &shape, values);
                self.weight_scales(nodes, &dq_out, &shape, &p, given)?;
            }
            return Ok(());
        }

        let quant = p.per_tensor()?;
        let mut target = x.clone();
        let sole_reader = self.consumers.get(&x).is_some_and(|c| c.len() == 1);
        let fuses = self
            .producer
            .get(&x)
            .map(|&pix| &nodes[pix])
            .is_some_and(|pn| {
                super::is_default_domain(&pn.domain)
                    && FUSES_ACTIVATION.contains(&pn.op_type.as_str())
            });
        if fuses && sole_reader && !self.graph_outputs.contains(&x) && !readers.is_empty() {
            // `x` becomes `Clip(x')`: the producer writes `x'`, the clamp writes `x`.
            let pre = format!("{x}.unclamped");
            let pix = self.producer[&x];
            let clip = self.clip(
                &format!("{}.saturate", self.node_name(nodes, ix)),
                &pre,
                &x,
                quant,
            );
            self.new_nodes.push(clip);
            self.rename_output(pix, &x, &pre);
            target = x.clone();
        }
        for &(r, _) in &readers {
            self.removed.insert(r);
            self.rename
                .insert(nodes[r].output[0].clone(), target.clone());
        }
        if let Some(old) = given.tensors.insert(target.clone(), quant) {
            if old != quant {
                return Err(format!(
                    "'{target}' is quantised twice, with {old:?} and {quant:?}"
                ));
            }
        }
        if self.graph_outputs.contains(&out) {
            self.rename.insert(out.clone(), target.clone());
            let ty = if p.dt == DatumType::U8 {
                IoType::U8
            } else {
                IoType::I8
            };
            given.outputs.insert(out, (String::new(), ty));
        }
        Ok(())
    }

    /// `DequantizeLinear(constant)`: the float constant, and the weight scales of the node reading it.
    fn constant_dq(&mut self, nodes: &[pb::NodeProto], ix: usize, given: &mut Given) -> Why<()> {
        let n = &nodes[ix];
        let x = self.konst(&n.input[0])?.clone();
        let p = self.params(n, x.datum_type())?;
        if !matches!(
            x.datum_type(),
            DatumType::I8 | DatumType::U8 | DatumType::I32
        ) {
            return Err(format!(
                "dequantises a {:?} constant (Kiln takes int8, uint8 and int32)",
                x.datum_type()
            ));
        }
        let shape = x.shape().to_vec();
        let mut ints: Vec<f32> = x
            .cast_to::<i32>()
            .map_err(|e| format!("{e:#}"))?
            .to_plain_array_view::<i32>()
            .map_err(|e| format!("{e:#}"))?
            .iter()
            .map(|&v| v as f32)
            .collect();
        if x.datum_type() == DatumType::U8 {
            // Into the int8 domain, where the zero points already are.
            ints.iter_mut().for_each(|v| *v -= 128.0);
        }
        // onnxruntime: (q - zero_point) * scale, in f32.
        let values = per_axis(&ints, &shape, &p, |q, s, z| (q - z as f32) * s)?;
        let out = n.output[0].clone();
        self.removed.insert(ix);
        self.new_const(&out, &shape, values);
        if x.datum_type() != DatumType::I32 {
            self.weight_scales(nodes, &out, &shape, &p, given)?;
            // A per-tensor int8 constant read as data (a Mul's operand, say) keeps its quantisation.
            if let Ok(q) = p.per_tensor() {
                given.tensors.insert(out, q);
            }
        }
        Ok(())
    }

    /// An int8 / uint8 graph input read through DequantizeLinear: a float input carrying its quantisation.
    fn input_dq(
        &mut self,
        nodes: &[pb::NodeProto],
        x: &str,
        elem: i32,
        given: &mut Given,
    ) -> Why<()> {
        let (dt, ty) = match DataType::try_from(elem) {
            Ok(DataType::Int8) => (DatumType::I8, IoType::I8),
            Ok(DataType::Uint8) => (DatumType::U8, IoType::U8),
            _ => {
                return Err(format!(
                    "dequantises graph input '{x}' of element type {elem} (Kiln takes int8 and uint8 inputs)"
                ))
            }
        };
        let readers = self.consumers.get(x).cloned().unwrap_or_default();
        let mut quant = None;
        for (r, _) in readers {
            let n = &nodes[r];
            if !(is_qdq(n) && n.op_type == DQ) {
                return Err(format!(
                    "graph input '{x}' is {ty:?} and also read by node '{}' ({}), not only by DequantizeLinear",
                    self.node_name(nodes, r),
                    n.op_type
                ));
            }
            let q = self.params(n, dt)?.per_tensor()?;
            if quant.is_some_and(|old| old != q) {
                return Err(format!(
                    "graph input '{x}' is dequantised with different parameters"
                ));
            }
            quant = Some(q);
            self.removed.insert(r);
            self.rename.insert(n.output[0].clone(), x.to_string());
        }
        if let Some(q) = quant {
            given.tensors.insert(x.to_string(), q);
            given.inputs.insert(x.to_string(), ty);
        }
        Ok(())
    }

    /// Records `p`'s scales as the weight scales of every Conv / Gemm / MatMul reading `w` as its weights.
    fn weight_scales(
        &self,
        nodes: &[pb::NodeProto],
        w: &str,
        shape: &[usize],
        p: &Params,
        given: &mut Given,
    ) -> Why<()> {
        for &(r, slot) in self.consumers.get(w).map(Vec::as_slice).unwrap_or(&[]) {
            let n = &nodes[r];
            let rank = shape.len() as i64;
            let out_axis = match (n.op_type.as_str(), slot) {
                ("Conv", 1) => 0,
                ("Gemm", 1) => {
                    let trans_b = n
                        .get_attr_opt::<i64>("transB")
                        .map_err(|e| format!("{e:#}"))?
                        .unwrap_or(0);
                    if trans_b != 0 {
                        0
                    } else {
                        1
                    }
                }
                ("MatMul", 1) => rank - 1,
                _ => continue,
            };
            if let Some(z) = p.zero_points.iter().find(|&&z| z != 0) {
                let z = if p.dt == DatumType::U8 { z + 128 } else { *z };
                return Err(format!(
                    "the weights of node '{}' have zero point {z}: asymmetric weights are not supported (Kiln's \
                     int8 weights are symmetric)",
                    self.node_name(nodes, r)
                ));
            }
            let channels = shape.get(out_axis as usize).copied().unwrap_or(1);
            let axis = if p.axis < 0 { p.axis + rank } else { p.axis };
            let scales = match p.scales.len() {
                1 => vec![p.scales[0]; channels],
                len if axis == out_axis && len == channels => p.scales.clone(),
                len => {
                    return Err(format!(
                        "the weights of node '{}' have {len} scales along axis {}; Kiln takes one scale or one \
                         per output channel (axis {out_axis})",
                        self.node_name(nodes, r),
                        p.axis
                    ))
                }
            };
            given.weight_scales.insert(self.node_name(nodes, r), scales);
        }
        Ok(())
    }

    fn new_const(&mut self, name: &str, shape: &[usize], values: Vec<f32>) {
        self.new_consts.push(pb::TensorProto {
            name: name.to_string(),
            dims: shape.iter().map(|&d| d as i64).collect(),
            data_type: DataType::Float as i32,
            float_data: values,
            ..Default::default()
        });
    }

    /// A Clip of `x` to the int8 range of `q`, written to `y`.
    fn clip(&mut self, name: &str, x: &str, y: &str, q: Quant) -> pb::NodeProto {
        let lo = (-128 - q.zero_point) as f32 * q.scale;
        let hi = (127 - q.zero_point) as f32 * q.scale;
        let mut node = pb::NodeProto {
            name: name.to_string(),
            op_type: "Clip".to_string(),
            input: vec![x.to_string()],
            output: vec![y.to_string()],
            ..Default::default()
        };
        if self.opset >= 11 {
            for (bound, v) in [("min", lo), ("max", hi)] {
                let c = format!("{name}.{bound}");
                self.new_const(&c, &[], vec![v]);
                node.input.push(c);
            }
        } else {
            for (bound, v) in [("min", lo), ("max", hi)] {
                node.attribute.push(pb::AttributeProto {
                    name: bound.to_string(),
                    r#type: pb::attribute_proto::AttributeType::Float as i32,
                    f: v,
                    ..Default::default()
                });
            }
        }
        node
    }

    /// Makes node `pix` write `to` instead of `from` (its readers are rewired by the caller).
    fn rename_output(&mut self, pix: usize, from: &str, to: &str) {
        self.output_renames
            .entry(pix)
            .or_default()
            .push((from.to_string(), to.to_string()));
    }
}

/// `f(value, scale, zero_point)` of every element, with the parameters of its index along `p.axis`.
fn per_axis(
    values: &[f32],
    shape: &[usize],
    p: &Params,
    f: impl Fn(f32, f32, i32) -> f32,
) -> Why<Vec<f32>> {
    if p.scales.len() == 1 {
        let (s, z) = (p.scales[0], p.zero_points[0]);
        return Ok(values.iter().map(|&v| f(v, s, z)).collect());
    }
    let rank = shape.len() as i64;
    let axis = if p.axis < 0 { p.axis + rank } else { p.axis };
    if !(0..rank).contains(&axis) || shape[axis as usize] != p.scales.len() {
        return Err(format!(
            "{} scales along axis {} of a {shape:?} tensor",
            p.scales.len(),
            p.axis
        ));
    }
    let inner: usize = shape[axis as usize + 1..].iter().product();
    let len = p.scales.len();
    Ok(values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = (i / inner.max(1)) % len;
            f(v, p.scales[c], p.zero_points[c])
        })
        .collect())
}

/// The int8-domain range of quantised type `dt`.
fn int_range(dt: DatumType) -> (f32, f32) {
    match dt {
        DatumType::I32 => (i32::MIN as f32, i32::MAX as f32),
        _ => (-128.0, 127.0),
    }
}
