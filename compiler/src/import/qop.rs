//! Quantised ONNX models in the operator form ("QOperator": `QLinearConv`, `QLinearMatMul`, and onnxruntime's
//! `com.microsoft` `QGemm`, `QLinearAdd`, `QLinearMul`, `QLinearGlobalAveragePool`), rewritten into the QDQ form
//! [`super::qdq`] imports.
//!
//! Each QLinear op is by definition its float op between DequantizeLinear of its int8 inputs and QuantizeLinear of
//! its output with the op's own output scale and zero point, and that is what it becomes; an int32 bias becomes
//! a DequantizeLinear with the scale the operator implies (`input scale * weight scale[c]`, times `alpha` for
//! QGemm). Data movement and max pooling that onnxruntime leaves on int8 tensors (MaxPool, Flatten, Reshape, ...)
//! get the same treatment with their input's quantisation, which they keep. Anything else reading an int8 tensor
//! is refused by name.

use std::collections::HashMap;
use std::path::Path;

use tract_onnx::pb::{self, tensor_proto::DataType};
use tract_onnx::prelude::*;

use crate::error::{input, Result};

const MS: &str = "com.microsoft";

/// Ops that read an int8 tensor as int8 and write it unchanged in value (same quantisation): computed in float
/// between DequantizeLinear and QuantizeLinear with their input's parameters.
const KEEPS_QUANT: &[&str] = &[
    "MaxPool",
    "Flatten",
    "Reshape",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Identity",
];

/// Whether `n` is an operator-form quantised op this module rewrites.
fn is_qoperator(n: &pb::NodeProto) -> bool {
    let op = n.op_type.as_str();
    if super::is_default_domain(&n.domain) {
        matches!(op, "QLinearConv" | "QLinearMatMul")
    } else {
        n.domain == MS
            && matches!(
                op,
                "QGemm" | "QLinearAdd" | "QLinearMul" | "QLinearGlobalAveragePool"
            )
    }
}

/// Rewrites the operator-form quantised ops of `graph` into QDQ form (see the module documentation). A graph
/// without any is left as it is.
///
/// # Errors
/// [`crate::error::Error::Input`] naming the node for a form Kiln cannot rewrite.
pub(super) fn expand(file: &str, graph: &mut pb::GraphProto, dir: Option<&Path>) -> Result<()> {
    if !graph.node.iter().any(is_qoperator) {
        return Ok(());
    }
    let mut x = Expander {
        consts: super::qdq::constants(file, graph, dir)?,
        quant: HashMap::new(),
        int8_inputs: graph
            .input
            .iter()
            .filter(|i| {
                matches!(
                    super::qdq::elem_type(i).and_then(|t| DataType::try_from(t).ok()),
                    Some(DataType::Int8 | DataType::Uint8)
                )
            })
            .map(|i| i.name.clone())
            .collect(),
        dequantised: HashMap::new(),
        nodes: Vec::new(),
        inits: Vec::new(),
    };
    for (ix, n) in graph.node.iter().enumerate() {
        let name = super::onnx_node_name(n, ix);
        x.node(n, &name).map_err(|why| {
            let op = if super::is_default_domain(&n.domain) {
                n.op_type.clone()
            } else {
                format!("{}.{}", n.domain, n.op_type)
            };
            input(format!("{file}: node '{name}' ({op}): {why}"))
        })?;
    }
    graph.node = x.nodes;
    graph.initializer.append(&mut x.inits);
    Ok(())
}

type Why<T> = std::result::Result<T, String>;

/// A tensor's quantisation parameters, as the names of its scale and zero point ("" for none).
type Params = (String, String);

struct Expander {
    consts: HashMap<String, Tensor>,
    /// int8 tensor -> its parameters (from the QuantizeLinear or QLinear op writing it).
    quant: HashMap<String, Params>,
    int8_inputs: Vec<String>,
    /// (tensor, parameters) -> the float tensor a DequantizeLinear made of it.
    dequantised: HashMap<(String, Params), String>,
    nodes: Vec<pb::NodeProto>,
    inits: Vec<pb::TensorProto>,
}

fn arg(n: &pb::NodeProto, i: usize) -> String {
    n.input.get(i).cloned().unwrap_or_default()
}

fn node(name: String, op: &str, inputs: Vec<String>, output: String) -> pb::NodeProto {
    pb::NodeProto {
        name,
        op_type: op.to_string(),
        input: inputs,
        output: vec![output],
        ..Default::default()
    }
}

fn int_attr(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.to_string(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

fn float_attr(name: &str, v: f32) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.to_string(),
        r#type: pb::attribute_proto::AttributeType::Float as i32,
        f: v,
        ..Default::default()
    }
}

impl Expander {
    fn is_int8(&self, t: &str) -> bool {
        self.quant.contains_key(t) || self.int8_inputs.iter().any(|i| i == t)
    }

    fn values(&self, name: &str) -> Why<Vec<f32>> {
        let t = self
            .consts
            .get(name)
            .ok_or_else(|| format!("'{name}' must be a constant"))?;
        Ok(t.cast_to::<f32>()
            .map_err(|e| format!("{e:#}"))?
            .to_plain_array_view::<f32>()
            .map_err(|e| format!("{e:#}"))?
            .iter()
            .copied()
            .collect())
    }

    /// The float tensor of int8 tensor `t` with parameters `p` (one DequantizeLinear per tensor and
    /// parameters); `axis` for per-channel constants.
    fn dequantise(&mut self, t: &str, p: &Params, axis: Option<i64>) -> String {
        let key = (t.to_string(), p.clone());
        if let Some(f) = self.dequantised.get(&key) {
            return f.clone();
        }
        let k = self.dequantised.len();
        let out = format!("{t}.dequantized.{k}");
        let mut inputs = vec![t.to_string(), p.0.clone()];
        if !p.1.is_empty() {
            inputs.push(p.1.clone());
        }
        let mut dq = node(
            format!("{t}.dequantize.{k}"),
            "DequantizeLinear",
            inputs,
            out.clone(),
        );
        if let Some(a) = axis {
            dq.attribute.push(int_attr("axis", a));
        }
        self.nodes.push(dq);
        self.dequantised.insert(key, out.clone());
        out
    }

    /// `y` = QuantizeLinear(`f`) with `p`.
    fn quantise(&mut self, name: &str, f: String, y: &str, p: Params) {
        let mut inputs = vec![f, p.0.clone()];
        if !p.1.is_empty() {
            inputs.push(p.1.clone());
        }
        self.nodes.push(node(
            format!("{name}.quantize"),
            "QuantizeLinear",
            inputs,
            y.to_string(),
        ));
        self.quant.insert(y.to_string(), p);
    }

    /// An int32 bias `b` (zero point 0) at scale `factor * a_scale * w_scale[c]`, dequantised.
    fn bias(
        &mut self,
        name: &str,
        b: &str,
        a_scale: &str,
        w_scale: &str,
        factor: f32,
    ) -> Why<String> {
        let channels = self
            .consts
            .get(b)
            .ok_or_else(|| format!("the bias '{b}' must be a constant"))?
            .len();
        let a = self.values(a_scale)?;
        let w = self.values(w_scale)?;
        if a.len() != 1 || !(w.len() == 1 || w.len() == channels) {
            return Err(format!(
                "bias '{b}' of {channels} values with {} input scales and {} weight scales",
                a.len(),
                w.len()
            ));
        }
        let scales: Vec<f32> = (0..channels)
            .map(|c| factor * a[0] * w[if w.len() == 1 { 0 } else { c }])
            .collect();
        let scale_name = format!("{name}.bias_scale");
        self.inits.push(pb::TensorProto {
            name: scale_name.clone(),
            dims: vec![channels as i64],
            data_type: DataType::Float as i32,
            float_data: scales,
            ..Default::default()
        });
        Ok(self.dequantise(b, &(scale_name, String::new()), Some(0)))
    }

    fn node(&mut self, n: &pb::NodeProto, name: &str) -> Why<()> {
        let default = super::is_default_domain(&n.domain);
        let op = n.op_type.as_str();
        let out = n.output.first().cloned().unwrap_or_default();
        let p = |i: usize| (arg(n, i), arg(n, i + 1));
        match (default, op) {
            (true, "QuantizeLinear") => {
                self.quant.insert(out, p(1));
                self.nodes.push(n.clone());
            }
            (true, "DequantizeLinear") => self.nodes.push(n.clone()),
            (true, "QLinearConv") => {
                // x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, [B]
                let x = self.dequantise(&arg(n, 0), &p(1), None);
                let w = self.dequantise(&arg(n, 3), &p(4), Some(0));
                let mut inputs = vec![x, w];
                if !arg(n, 8).is_empty() {
                    inputs.push(self.bias(name, &arg(n, 8), &arg(n, 1), &arg(n, 4), 1.0)?);
                }
                let f = format!("{out}.float");
                let mut conv = node(name.to_string(), "Conv", inputs, f.clone());
                conv.attribute = n.attribute.clone();
                self.nodes.push(conv);
                self.quantise(name, f, &out, p(6));
            }
            (true, "QLinearMatMul") => {
                // a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp; per-column b scales run along axis 1.
                let a = self.dequantise(&arg(n, 0), &p(1), None);
                let b = self.dequantise(&arg(n, 3), &p(4), Some(1));
                let f = format!("{out}.float");
                self.nodes
                    .push(node(name.to_string(), "MatMul", vec![a, b], f.clone()));
                self.quantise(name, f, &out, p(6));
            }
            (false, "QGemm") => {
                // A, a_scale, a_zp, B, b_scale, b_zp, [C], [y_scale, y_zp]; Y = alpha * A' B' + C.
                let attr = |k: &str| n.attribute.iter().find(|a| a.name == k);
                let trans_a = attr("transA").map_or(0, |a| a.i);
                let trans_b = attr("transB").map_or(0, |a| a.i);
                let alpha = attr("alpha").map_or(1.0, |a| a.f);
                let a = self.dequantise(&arg(n, 0), &p(1), None);
                let b = self.dequantise(&arg(n, 3), &p(4), Some(if trans_b != 0 { 0 } else { 1 }));
                let mut inputs = vec![a, b];
                if !arg(n, 6).is_empty() {
                    inputs.push(self.bias(name, &arg(n, 6), &arg(n, 1), &arg(n, 4), alpha)?);
                }
                let quantised = !arg(n, 7).is_empty();
                let f = if quantised {
                    format!("{out}.float")
                } else {
                    out.clone()
                };
                let mut gemm = node(name.to_string(), "Gemm", inputs, f.clone());
                gemm.attribute = vec![
                    int_attr("transA", trans_a),
                    int_attr("transB", trans_b),
                    float_attr("alpha", alpha),
                ];
                self.nodes.push(gemm);
                if quantised {
                    self.quantise(name, f, &out, p(7));
                }
            }
            (false, "QLinearAdd" | "QLinearMul") => {
                // A, A_scale, A_zp, B, B_scale, B_zp, C_scale, C_zp
                let a = self.dequantise(&arg(n, 0), &p(1), None);
                let b = self.dequantise(&arg(n, 3), &p(4), None);
                let f = format!("{out}.float");
                let float_op = if op == "QLinearAdd" { "Add" } else { "Mul" };
                self.nodes
                    .push(node(name.to_string(), float_op, vec![a, b], f.clone()));
                self.quantise(name, f, &out, p(6));
            }
            (false, "QLinearGlobalAveragePool") => {
                // X, x_scale, x_zp, y_scale, y_zp
                if n.attribute
                    .iter()
                    .any(|a| a.name == "channels_last" && a.i != 0)
                {
                    return Err("channels_last = 1 (Kiln takes the NCHW form)".into());
                }
                let x = self.dequantise(&arg(n, 0), &p(1), None);
                let f = format!("{out}.float");
                self.nodes.push(node(
                    name.to_string(),
                    "GlobalAveragePool",
                    vec![x],
                    f.clone(),
                ));
                self.quantise(name, f, &out, p(3));
            }
            _ => {
                let Some(i8_in) = n.input.iter().find(|i| self.is_int8(i)).cloned() else {
                    self.nodes.push(n.clone());
                    return Ok(());
                };
                if !(default && KEEPS_QUANT.contains(&op)) || n.input.first() != Some(&i8_in) {
                    return Err(format!(
                        "reads the int8 tensor '{i8_in}' directly; in a QOperator model Kiln takes int8 tensors \
                         into QLinearConv, QLinearMatMul, QGemm, QLinearAdd, QLinearMul, \
                         QLinearGlobalAveragePool, DequantizeLinear and {}",
                        KEEPS_QUANT.join(", ")
                    ));
                }
                let params = self.quant.get(&i8_in).cloned().ok_or_else(|| {
                    format!(
                        "reads the int8 graph input '{i8_in}' before any op says its scale (give it a \
                         DequantizeLinear or a QLinear op first)"
                    )
                })?;
                let x = self.dequantise(&i8_in, &params, None);
                let f = format!("{out}.float");
                let mut moved = n.clone();
                moved.input[0] = x;
                moved.output[0] = f.clone();
                self.nodes.push(moved);
                self.quantise(name, f, &out, params);
            }
        }
        Ok(())
    }
}
