//! A small ONNX model builder for tests.
//!
//! ```no_run
//! use kiln_tests::onnx::{attr, OnnxBuilder};
//! let bytes = OnnxBuilder::new(13)
//!     .input("x", &[1, 3, 8, 8])
//!     .initializer("w", &[4, 3, 3, 3], &vec![0.5; 4 * 3 * 3 * 3])
//!     .node("Conv", &["x", "w"], &["y"], vec![attr::ints("pads", &[1, 1, 1, 1])])
//!     .output("y", &[1, 4, 8, 8])
//!     .to_bytes();
//! ```
//!
//! Models carry a proper `ModelProto` (IR version, default-domain opset import, producer), float32 `value_info`
//! for every graph input and output, and initializers stored as raw little-endian data, so both tract and
//! onnxruntime accept them.

use std::io;
use std::path::{Path, PathBuf};

use prost::Message;
use tract_onnx::pb;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::{dimension, Dimension};

/// One dimension of a graph input or output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dim {
    Fixed(usize),
    /// A symbolic dimension (`dim_param`), e.g. a batch `"N"`.
    Sym(String),
}

impl From<usize> for Dim {
    fn from(d: usize) -> Dim {
        Dim::Fixed(d)
    }
}

impl From<&str> for Dim {
    fn from(s: &str) -> Dim {
        Dim::Sym(s.to_string())
    }
}

/// Builds one single-graph ONNX model. Every method consumes and returns the builder.
#[derive(Clone, Debug)]
pub struct OnnxBuilder {
    opset: i64,
    graph: pb::GraphProto,
}

impl OnnxBuilder {
    /// A model importing the default ONNX domain at `opset`.
    pub fn new(opset: i64) -> Self {
        OnnxBuilder {
            opset,
            graph: pb::GraphProto {
                name: "kiln_test".into(),
                ..Default::default()
            },
        }
    }

    /// A float32 graph input with a fixed shape.
    pub fn input(self, name: &str, shape: &[usize]) -> Self {
        let dims: Vec<Dim> = shape.iter().map(|&d| Dim::Fixed(d)).collect();
        self.input_dims(name, &dims)
    }

    /// A float32 graph input whose dimensions may be symbolic.
    pub fn input_dims(mut self, name: &str, dims: &[Dim]) -> Self {
        self.graph.input.push(value_info(name, Some(dims)));
        self
    }

    /// A float32 graph output with a fixed shape.
    pub fn output(self, name: &str, shape: &[usize]) -> Self {
        let dims: Vec<Dim> = shape.iter().map(|&d| Dim::Fixed(d)).collect();
        self.output_dims(name, &dims)
    }

    /// A float32 graph output whose dimensions may be symbolic.
    pub fn output_dims(mut self, name: &str, dims: &[Dim]) -> Self {
        self.graph.output.push(value_info(name, Some(dims)));
        self
    }

    /// A float32 graph output without a shape (the consumer infers it).
    pub fn output_unshaped(mut self, name: &str) -> Self {
        self.graph.output.push(value_info(name, None));
        self
    }

    /// A float32 initializer (constant), row-major `data` in `shape`.
    pub fn initializer(mut self, name: &str, shape: &[usize], data: &[f32]) -> Self {
        self.graph.initializer.push(tensor_f32(name, shape, data));
        self
    }

    /// An int64 initializer (shapes, axes, pads, split sizes, ...).
    pub fn initializer_i64(mut self, name: &str, shape: &[usize], data: &[i64]) -> Self {
        self.graph.initializer.push(tensor_i64(name, shape, data));
        self
    }

    /// An int8 initializer (quantised weights, zero points).
    pub fn initializer_i8(mut self, name: &str, shape: &[usize], data: &[i8]) -> Self {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "tensor {name}");
        self.graph.initializer.push(pb::TensorProto {
            name: name.to_string(),
            dims: shape.iter().map(|&d| d as i64).collect(),
            data_type: DataType::Int8 as i32,
            raw_data: data.iter().map(|&v| v as u8).collect(),
            ..Default::default()
        });
        self
    }

    /// A uint8 initializer (zero points of uint8 quantisation).
    pub fn initializer_u8(mut self, name: &str, shape: &[usize], data: &[u8]) -> Self {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "tensor {name}");
        self.graph.initializer.push(pb::TensorProto {
            name: name.to_string(),
            dims: shape.iter().map(|&d| d as i64).collect(),
            data_type: DataType::Uint8 as i32,
            raw_data: data.to_vec(),
            ..Default::default()
        });
        self
    }

    /// Makes graph input or output `name` (already declared) of element type `ty` instead of float32.
    pub fn io_type(mut self, name: &str, ty: DataType) -> Self {
        let graph = &mut self.graph;
        for v in graph.input.iter_mut().chain(graph.output.iter_mut()) {
            if v.name == name {
                if let Some(pb::type_proto::Value::TensorType(t)) =
                    v.r#type.as_mut().and_then(|t| t.value.as_mut())
                {
                    t.elem_type = ty as i32;
                }
            }
        }
        self
    }

    /// A node named after its first output.
    pub fn node(
        self,
        op_type: &str,
        inputs: &[&str],
        outputs: &[&str],
        attrs: Vec<pb::AttributeProto>,
    ) -> Self {
        let name = outputs.first().copied().unwrap_or(op_type).to_string();
        self.named_node(&name, op_type, inputs, outputs, attrs)
    }

    /// A node with an explicit name. An empty input name is an omitted optional input.
    pub fn named_node(
        mut self,
        name: &str,
        op_type: &str,
        inputs: &[&str],
        outputs: &[&str],
        attrs: Vec<pb::AttributeProto>,
    ) -> Self {
        self.graph.node.push(pb::NodeProto {
            name: name.to_string(),
            op_type: op_type.to_string(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            attribute: attrs,
            ..Default::default()
        });
        self
    }

    /// The `ModelProto`.
    pub fn model(&self) -> pb::ModelProto {
        pb::ModelProto {
            // IR 8 goes with opsets up to 18, IR 9 up to 20, IR 10 beyond.
            ir_version: match self.opset {
                ..=18 => 8,
                19..=20 => 9,
                _ => 10,
            },
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: self.opset,
            }],
            producer_name: "kiln-tests".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            graph: Some(self.graph.clone()),
            ..Default::default()
        }
    }

    /// The serialized model.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.model().encode_to_vec()
    }

    /// Writes the serialized model to `path`.
    pub fn write(&self, path: impl AsRef<Path>) -> io::Result<()> {
        std::fs::write(path, self.to_bytes())
    }

    /// Writes the model as `model.onnx` in a fresh temporary directory. Keep the returned directory alive as long
    /// as the file is needed.
    pub fn write_temp(&self) -> io::Result<(tempfile::TempDir, PathBuf)> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("model.onnx");
        self.write(&path)?;
        Ok((dir, path))
    }
}

fn value_info(name: &str, dims: Option<&[Dim]>) -> pb::ValueInfoProto {
    let shape = dims.map(|dims| pb::TensorShapeProto {
        dim: dims
            .iter()
            .map(|d| Dimension {
                denotation: String::new(),
                value: Some(match d {
                    Dim::Fixed(n) => dimension::Value::DimValue(*n as i64),
                    Dim::Sym(s) => dimension::Value::DimParam(s.clone()),
                }),
            })
            .collect(),
    });
    pb::ValueInfoProto {
        name: name.to_string(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape,
            })),
        }),
        doc_string: String::new(),
    }
}

/// A float32 `TensorProto` with raw little-endian data.
pub fn tensor_f32(name: &str, shape: &[usize], data: &[f32]) -> pb::TensorProto {
    assert_eq!(
        shape.iter().product::<usize>(),
        data.len(),
        "tensor {name}: data length vs shape {shape:?}"
    );
    pb::TensorProto {
        name: name.to_string(),
        dims: shape.iter().map(|&d| d as i64).collect(),
        data_type: DataType::Float as i32,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// An int64 `TensorProto` with raw little-endian data.
pub fn tensor_i64(name: &str, shape: &[usize], data: &[i64]) -> pb::TensorProto {
    assert_eq!(
        shape.iter().product::<usize>(),
        data.len(),
        "tensor {name}: data length vs shape {shape:?}"
    );
    pb::TensorProto {
        name: name.to_string(),
        dims: shape.iter().map(|&d| d as i64).collect(),
        data_type: DataType::Int64 as i32,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// Node attribute constructors.
pub mod attr {
    use super::*;

    fn base(name: &str, ty: AttributeType) -> pb::AttributeProto {
        pb::AttributeProto {
            name: name.to_string(),
            r#type: ty as i32,
            ..Default::default()
        }
    }

    pub fn int(name: &str, v: i64) -> pb::AttributeProto {
        pb::AttributeProto {
            i: v,
            ..base(name, AttributeType::Int)
        }
    }

    pub fn float(name: &str, v: f32) -> pb::AttributeProto {
        pb::AttributeProto {
            f: v,
            ..base(name, AttributeType::Float)
        }
    }

    pub fn ints(name: &str, v: &[i64]) -> pb::AttributeProto {
        pb::AttributeProto {
            ints: v.to_vec(),
            ..base(name, AttributeType::Ints)
        }
    }

    pub fn floats(name: &str, v: &[f32]) -> pb::AttributeProto {
        pb::AttributeProto {
            floats: v.to_vec(),
            ..base(name, AttributeType::Floats)
        }
    }

    pub fn string(name: &str, v: &str) -> pb::AttributeProto {
        pb::AttributeProto {
            s: v.as_bytes().to_vec(),
            ..base(name, AttributeType::String)
        }
    }

    /// A tensor attribute (e.g. `Constant`'s `value`).
    pub fn tensor(name: &str, t: pb::TensorProto) -> pb::AttributeProto {
        pb::AttributeProto {
            t: Some(t),
            ..base(name, AttributeType::Tensor)
        }
    }
}

/// `[0, 1, 2, ..., n-1]` as floats: every element of a weight tensor names its own row-major index, so a
/// misplaced element shows (exact up to 2^24).
pub fn iota(n: usize) -> Vec<f32> {
    (0..n).map(|i| i as f32).collect()
}
