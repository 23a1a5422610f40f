//! Kiln's graph IR: what the ONNX importer produces and every later pass works on.
//!
//! The IR is float and *logical*: every tensor has the shape the ONNX model gives it, in the model's own axis
//! order. Physical layout (channels-last for convolutions and pools) is chosen later by [`crate::layout`], and
//! precision by [`crate::emit`]. Constants (weights, biases, broadcast operands) are tensors with a `value`.

use std::collections::HashMap;
use std::fmt;

pub use kiln_runtime::format::{IoType, Quant};

/// Index of a tensor in [`Graph::tensors`].
pub type TensorId = usize;

#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub tensors: Vec<Tensor>,
    /// Topologically ordered.
    pub nodes: Vec<Node>,
    pub inputs: Vec<TensorId>,
    pub outputs: Vec<TensorId>,
    /// The element type of each graph input, then each graph output, in the ONNX model (empty: all float32).
    pub io_types: Vec<IoType>,
    /// Per-output-channel weight scales a quantised (QDQ) model gives the Conv or Dense node of that name; its
    /// int8 weights are `round(weight / scale)`, symmetric.
    pub weight_scales: HashMap<String, Vec<f32>>,
}

#[derive(Clone, Debug)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    /// `Some` for constants, row-major in `shape`.
    pub value: Option<Vec<f32>>,
    /// The int8 quantisation a quantised (QDQ) model gives this tensor; used instead of a calibrated range.
    pub quant: Option<Quant>,
}

#[derive(Clone, Debug)]
pub struct Node {
    /// The ONNX node name this node came from (tract may add a suffix for expanded ops).
    pub name: String,
    pub op: Op,
    /// Activation inputs and constant operands, in the order each [`Op`] documents.
    pub inputs: Vec<TensorId>,
    pub output: TensorId,
}

/// Spatial data layout of a convolution or pool, as the ONNX graph states it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataFormat {
    /// `[N, C, spatial...]` (ONNX's own).
    ChannelsFirst,
    /// `[N, spatial..., C]` (what tf2onnx graphs sometimes carry after tract's decluttering).
    ChannelsLast,
}

/// An activation fused into the op that produces a tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    None,
    Relu,
    /// Clamp to `[min, max]` (Relu6 is `Clip { 0, 6 }`).
    Clip {
        min: f32,
        max: f32,
    },
}

impl Activation {
    /// The float range the activation clamps to.
    pub fn range(self) -> (f32, f32) {
        match self {
            Activation::None => (f32::NEG_INFINITY, f32::INFINITY),
            Activation::Relu => (0.0, f32::INFINITY),
            Activation::Clip { min, max } => (min, max),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ConvAttrs {
    pub data_format: DataFormat,
    /// Spatial kernel size, 1 or 2 entries (`[kw]` or `[kh, kw]`).
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    pub dilations: Vec<usize>,
    /// Explicit padding per spatial axis (auto_pad already resolved against the input shape).
    pub pads_begin: Vec<usize>,
    pub pads_end: Vec<usize>,
    pub group: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Weights `[out_c, spatial..., in_c / group]` ("OHWI"), row-major.
    pub weights: Vec<f32>,
    /// One per output channel; `None` means zero.
    pub bias: Option<Vec<f32>>,
    pub act: Activation,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PoolKind {
    Max,
    Avg { count_include_pad: bool },
}

#[derive(Clone, Debug, PartialEq)]
pub struct PoolAttrs {
    pub kind: PoolKind,
    pub data_format: DataFormat,
    /// Spatial kernel size, 1 or 2 entries. GlobalAveragePool is a pool whose kernel is the whole input.
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    pub pads_begin: Vec<usize>,
    pub pads_end: Vec<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryKind {
    Add,
    Sub,
    Mul,
    /// `a > 0 ? a : a * b` (ONNX PRelu; `b` is the slope, broadcast).
    PRelu,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryKind {
    Relu,
    Clip { min: f32, max: f32 },
    LeakyRelu { alpha: f32 },
    Elu { alpha: f32 },
    Sigmoid,
    Tanh,
}

impl UnaryKind {
    /// The float function, used by the host to build int8 lookup tables and by tests.
    pub fn apply(self, x: f32) -> f32 {
        match self {
            UnaryKind::Relu => x.max(0.0),
            UnaryKind::Clip { min, max } => x.max(min).min(max),
            UnaryKind::LeakyRelu { alpha } => {
                if x >= 0.0 {
                    x
                } else {
                    alpha * x
                }
            }
            UnaryKind::Elu { alpha } => {
                if x >= 0.0 {
                    x
                } else {
                    alpha * (x.exp() - 1.0)
                }
            }
            UnaryKind::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            UnaryKind::Tanh => x.tanh(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Inputs: `[x]`. 1D or 2D convolution; weights and bias are held in the attributes.
    Conv(ConvAttrs),
    /// Inputs: `[x]`. `y[..., n] = sum_k x[..., k] * weights[n][k] + bias[n]`, then `act`.
    /// Gemm and MatMul with constant weights both become this.
    Dense {
        /// `[n][k]`, row-major.
        weights: Vec<f32>,
        in_features: usize,
        out_features: usize,
        bias: Option<Vec<f32>>,
        act: Activation,
    },
    /// Inputs: `[a, b]`, numpy broadcasting; either may be a constant.
    Binary { kind: BinaryKind, act: Activation },
    /// Inputs: `[x]`.
    Unary(UnaryKind),
    /// Inputs: `[x]`. Softmax (or LogSoftmax when `log`) along `axis`.
    Softmax { axis: usize, log: bool },
    /// Inputs: `[x]`.
    Pool(PoolAttrs),
    /// Inputs: `[x]`. Constant padding.
    Pad {
        pads_begin: Vec<usize>,
        pads_end: Vec<usize>,
        value: f32,
    },
    /// Inputs: all concatenated, in order.
    Concat { axis: usize },
    /// Inputs: `[x]`. `output = x[.., start..end, ..]` along `axis` (Split becomes several of these).
    Slice {
        axis: usize,
        start: usize,
        end: usize,
    },
    /// Inputs: `[x]`. Any reshape (Reshape, Flatten, Squeeze, Unsqueeze): the output tensor's shape says how.
    Reshape,
    /// Inputs: `[x]`. `output.shape[i] = x.shape[perm[i]]`.
    Transpose { perm: Vec<usize> },
    /// Inputs: `[x]`. Mean over `axes`; the output shape says whether dims were kept.
    ReduceMean { axes: Vec<usize> },
}

impl Op {
    /// A short name for messages and reports.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Op::Conv(_) => "Conv",
            Op::Dense { .. } => "Dense",
            Op::Binary {
                kind: BinaryKind::Add,
                ..
            } => "Add",
            Op::Binary {
                kind: BinaryKind::Sub,
                ..
            } => "Sub",
            Op::Binary {
                kind: BinaryKind::Mul,
                ..
            } => "Mul",
            Op::Binary {
                kind: BinaryKind::PRelu,
                ..
            } => "PRelu",
            Op::Unary(UnaryKind::Relu) => "Relu",
            Op::Unary(UnaryKind::Clip { .. }) => "Clip",
            Op::Unary(UnaryKind::LeakyRelu { .. }) => "LeakyRelu",
            Op::Unary(UnaryKind::Elu { .. }) => "Elu",
            Op::Unary(UnaryKind::Sigmoid) => "Sigmoid",
            Op::Unary(UnaryKind::Tanh) => "Tanh",
            Op::Softmax { log: false, .. } => "Softmax",
            Op::Softmax { log: true, .. } => "LogSoftmax",
            Op::Pool(PoolAttrs {
                kind: PoolKind::Max,
                ..
            }) => "MaxPool",
            Op::Pool(PoolAttrs {
                kind: PoolKind::Avg { .. },
                ..
            }) => "AveragePool",
            Op::Pad { .. } => "Pad",
            Op::Concat { .. } => "Concat",
            Op::Slice { .. } => "Slice",
            Op::Reshape => "Reshape",
            Op::Transpose { .. } => "Transpose",
            Op::ReduceMean { .. } => "ReduceMean",
        }
    }
}

impl Graph {
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        shape: Vec<usize>,
        value: Option<Vec<f32>>,
    ) -> TensorId {
        if let Some(v) = &value {
            debug_assert_eq!(
                v.len(),
                shape.iter().product::<usize>(),
                "constant size vs shape"
            );
        }
        self.tensors.push(Tensor {
            name: name.into(),
            shape,
            value,
            quant: None,
        });
        self.tensors.len() - 1
    }

    pub fn is_const(&self, t: TensorId) -> bool {
        self.tensors[t].value.is_some()
    }

    /// Nodes that read `t`.
    pub fn consumers(&self, t: TensorId) -> impl Iterator<Item = usize> + '_ {
        self.nodes
            .iter()
            .enumerate()
            .filter(move |(_, n)| n.inputs.contains(&t))
            .map(|(i, _)| i)
    }

    /// The node that produces `t`, if any.
    pub fn producer(&self, t: TensorId) -> Option<usize> {
        self.nodes.iter().position(|n| n.output == t)
    }

    /// Multiply-accumulates of one node (0 for data movement).
    pub fn macs(&self, node: &Node) -> u64 {
        let out: u64 = self.tensors[node.output].shape.iter().product::<usize>() as u64;
        match &node.op {
            // Each output element reads kernel_size * in_c / group weights.
            Op::Conv(c) => out * (c.weights.len() / c.out_channels) as u64,
            Op::Dense { in_features, .. } => out * *in_features as u64,
            _ => 0,
        }
    }
}

impl fmt::Display for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for n in &self.nodes {
            let ins: Vec<String> = n
                .inputs
                .iter()
                .map(|&t| format!("{}{:?}", self.tensors[t].name, self.tensors[t].shape))
                .collect();
            writeln!(
                f,
                "{} [{}] ({}) -> {}{:?}",
                n.name,
                n.op.kind_name(),
                ins.join(", "),
                self.tensors[n.output].name,
                self.tensors[n.output].shape
            )?;
        }
        Ok(())
    }
}
