//! ONNX import: an ONNX file in, an [`ir::Graph`] out.
//!
//! 1. The protobuf is decoded here; a quantised model's operator-form ops (QLinearConv, QGemm, ...) are rewritten
//!    into QuantizeLinear / float op / DequantizeLinear ([`qop`]), and every node's `op_type` is checked against
//!    [`SUPPORTED_OPS`], so a model with unsupported operators fails with one message listing all of them (before
//!    tract sees it). QDQ nodes are then turned into a float graph plus the scales they give ([`qdq`]).
//! 2. tract-onnx parses the model; every symbolic input dimension is fixed to 1 (the batch), the model is typed
//!    and decluttered (constants folded, ONNX ops expanded into tract's core ops). The decluttered model is not
//!    optimised, so weights are still plain tensors.
//! 3. [`lower`] walks the decluttered model in evaluation order and maps tract's core ops (and a few composite
//!    patterns tract expands ONNX ops into) back to [`ir::Op`]s.

mod conv;
mod lower;
mod qdq;
mod qop;

use std::path::Path;

use prost::Message;
use tract_onnx::pb;
use tract_onnx::prelude::*;

use crate::error::{input, Error, Result};
use crate::ir;

/// ONNX operators (default domain) Kiln imports. Shape-computation ops are accepted here because tract folds
/// them into constants; if one survives on an activation path, lowering reports it by node.
pub const SUPPORTED_OPS: &[&str] = &[
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "Clip",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Conv",
    "DequantizeLinear",
    "Dropout",
    "Elu",
    "Flatten",
    "Gather",
    "Gemm",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Identity",
    "LeakyRelu",
    "LogSoftmax",
    "MatMul",
    "MaxPool",
    "Mul",
    "PRelu",
    "Pad",
    "QuantizeLinear",
    "ReduceMean",
    "Relu",
    "Reshape",
    "Shape",
    "Sigmoid",
    "Slice",
    "Softmax",
    "Split",
    "Squeeze",
    "Sub",
    "Tanh",
    "Transpose",
    "Unsqueeze",
];

/// Reads the ONNX model at `path` and lowers it to Kiln's IR.
pub fn import_onnx(path: &Path) -> Result<ir::Graph> {
    let file = path.display().to_string();
    let bytes =
        std::fs::read(path).map_err(|e| input(format!("{file}: cannot read the model: {e}")))?;
    let mut proto = pb::ModelProto::decode(&*bytes).map_err(|e| {
        input(format!(
            "{file}: not an ONNX model (protobuf decoding failed: {e})"
        ))
    })?;
    let graph = match &proto.graph {
        Some(g) if !g.node.is_empty() || !g.output.is_empty() => g,
        _ => {
            return Err(input(format!(
                "{file}: not an ONNX model (it has no graph)"
            )))
        }
    };
    let mut graph = graph.clone();
    qop::expand(&file, &mut graph, path.parent())?;
    check_supported(&file, &graph)?;
    let opset = proto
        .opset_import
        .iter()
        .filter(|o| is_default_domain(&o.domain))
        .map(|o| o.version)
        .max()
        .unwrap_or(1);
    let given = qdq::rewrite(&file, &mut graph, opset, path.parent())?;
    proto.graph = Some(graph.clone());
    let model = load_decluttered(&file, &proto, &graph, path.parent())?;
    let mut g = lower::lower(&file, &graph, &model, &given.weight_scales)?;
    qdq::attach(&mut g, &given);
    Ok(g)
}

/// One [`Error::Input`] listing every node whose operator Kiln does not support.
fn check_supported(file: &str, graph: &pb::GraphProto) -> Result<()> {
    let unsupported: Vec<String> = graph
        .node
        .iter()
        .enumerate()
        .filter(|(_, n)| {
            !(is_default_domain(&n.domain) && SUPPORTED_OPS.contains(&n.op_type.as_str()))
        })
        .map(|(ix, n)| {
            let op = if is_default_domain(&n.domain) {
                n.op_type.clone()
            } else {
                format!("{}.{}", n.domain, n.op_type)
            };
            format!("  node '{}' (op {op})", onnx_node_name(n, ix))
        })
        .collect();
    if unsupported.is_empty() {
        return Ok(());
    }
    let plural = if unsupported.len() == 1 { "" } else { "s" };
    Err(input(format!(
        "{file}: {} unsupported node{plural}:\n{}\nKiln supports these ONNX operators: {}",
        unsupported.len(),
        unsupported.join("\n"),
        SUPPORTED_OPS.join(", ")
    )))
}

fn is_default_domain(domain: &str) -> bool {
    domain.is_empty() || domain == "ai.onnx"
}

/// The name tract gives an ONNX node (its name, else its first output, else a positional name).
fn onnx_node_name(n: &pb::NodeProto, ix: usize) -> String {
    if !n.name.is_empty() {
        n.name.clone()
    } else if let Some(o) = n.output.first().filter(|o| !o.is_empty()) {
        o.clone()
    } else {
        format!("#{ix} ({})", n.op_type)
    }
}

/// Parses the model with tract-onnx, fixes the inputs' symbolic dimensions to 1, types and declutters it.
fn load_decluttered(
    file: &str,
    proto: &pb::ModelProto,
    graph: &pb::GraphProto,
    dir: Option<&Path>,
) -> Result<TypedModel> {
    let tract_err = |what: &str, e: anyhow::Error| input(format!("{file}: {what}: {e:#}"));
    let parsed = tract_onnx::onnx()
        .parse(proto, dir.and_then(|d| d.to_str()))
        .map_err(|e| tract_err("the model could not be parsed", e))?;
    if !parsed.unresolved_inputs.is_empty() {
        return Err(input(format!(
            "{file}: nodes read tensors that nothing defines: {}",
            parsed.unresolved_inputs.join(", ")
        )));
    }
    let mut model = parsed.model;

    let input_outlets = model.input_outlets().map_err(Error::from)?.to_vec();
    for (ix, outlet) in input_outlets.iter().enumerate() {
        let name = model.node(outlet.node).name.clone();
        let shape = input_shape(file, graph, &name)?;
        model
            .set_input_fact(ix, f32::fact(&shape).into())
            .map_err(|e| tract_err(&format!("input '{name}' cannot take shape {shape:?}"), e))?;
    }

    let mut typed = model
        .into_typed()
        .map_err(|e| tract_err("tract could not type the model", e))?;
    declutter(&mut typed).map_err(|e| tract_err("tract could not simplify the model", e))?;
    Ok(typed)
}

/// tract's declutter passes, minus `ChangeAxes`: that pass rewrites tensor shapes (it drops unit batch axes from
/// whole chains of ops, turning NCHW convolutions into CHW, and pushes transposes around), while the IR keeps
/// every tensor in the shape the ONNX model gives it.
fn declutter(model: &mut TypedModel) -> TractResult<()> {
    let mut optimizer = tract_onnx::tract_core::optim::Optimizer::declutter();
    // The pass has no public type; its Debug output is its name.
    optimizer
        .passes
        .retain(|p| format!("{p:?}") != "ChangeAxes");
    optimizer.optimize(model)
}

/// The shape of graph input `name` from its ONNX type: symbolic or unknown dimensions become 1 (the batch).
fn input_shape(file: &str, graph: &pb::GraphProto, name: &str) -> Result<Vec<usize>> {
    use pb::tensor_shape_proto::dimension::Value as Dim;
    use pb::type_proto::Value;
    let info = graph.input.iter().find(|i| i.name == name);
    let tensor = match info
        .and_then(|i| i.r#type.as_ref())
        .and_then(|t| t.value.as_ref())
    {
        Some(Value::TensorType(t)) => t,
        None => {
            return Err(input(format!(
                "{file}: graph input '{name}' has no tensor type"
            )))
        }
    };
    if tensor.elem_type != pb::tensor_proto::DataType::Float as i32 {
        let ty = pb::tensor_proto::DataType::try_from(tensor.elem_type)
            .map(|t| t.as_str_name().to_string())
            .unwrap_or_else(|_| format!("#{}", tensor.elem_type));
        return Err(input(format!(
            "{file}: graph input '{name}' has element type {ty}; Kiln models take float32 inputs"
        )));
    }
    let Some(shape) = &tensor.shape else {
        return Err(input(format!("{file}: graph input '{name}' has no shape")));
    };
    shape
        .dim
        .iter()
        .map(|d| match d.value {
            Some(Dim::DimValue(v)) if v > 0 => Ok(v as usize),
            Some(Dim::DimValue(v)) if v < 0 => Err(input(format!(
                "{file}: graph input '{name}' has a negative dimension {v}"
            ))),
            // dim_param, 0 ("unknown") or absent: the batch, fixed to 1.
            _ => Ok(1),
        })
        .collect()
}
