//! The `.kiln` model file format, version [`FORMAT_VERSION`].
//!
//! ```text
//! offset  size  field (little-endian)
//!  0      4     magic "KILN"
//!  4      2     format version
//!  6      2     flags: 0 (a reader refuses bits it does not know)
//!  8      4     file length in bytes (the whole file, header included)
//! 12      4     CRC-32 (IEEE) of bytes 16..file length
//! 16      4     metadata length M (postcard-encoded `ModelDef`, starting at byte 24)
//! 20      4     blob offset B (multiple of 16, >= 24 + M)
//! 24      M     ModelDef (postcard)
//! ..            zero padding up to B
//!  B      ..    weight blob up to the file length: int8 weights, int32 biases, f32 weights, lookup tables
//! ```
//!
//! `ModelDef` holds two sections of concatenated postcard records, [`TensorDef`]s and [`OpDef`]s. Ops carry
//! their operands resolved (arena or blob offsets and byte lengths) plus physical shapes, so inference reads
//! them in order and never searches. Everything is validated once at load. Fields and enum variants are
//! only ever appended, and every change bumps [`FORMAT_VERSION`] (a reader refuses other versions by name rather
//! than misreading them). v3: packed weights and kernel choices; v4: `ModelDef::io_types` (the source model's
//! own I/O element types); v5: `QuantizeS8` / `DequantizeS8` (int8 models with some layers kept in f32).

use heapless::Vec;
use serde::{Deserialize, Serialize};

pub const MAGIC: [u8; 4] = *b"KILN";
pub const FORMAT_VERSION: u16 = 5;
pub const HEADER_LEN: usize = 24;
/// Alignment of the blob inside the file; every typed item inside the blob is 4-byte aligned.
pub const BLOB_ALIGN: usize = 16;
/// Alignment of every tensor in the arena.
pub const ARENA_ALIGN: usize = 4;
pub const MAX_RANK: usize = 6;
/// Graph inputs or outputs.
pub const MAX_IO: usize = 8;
/// Inputs of one op (Concat is the widest).
pub const MAX_OP_INPUTS: usize = 8;

/// A shape or stride list, outermost first.
pub type Dims = Vec<u32, MAX_RANK>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DType {
    I8,
    F32,
    I32,
}

impl DType {
    pub const fn size(self) -> usize {
        match self {
            DType::I8 => 1,
            DType::F32 | DType::I32 => 4,
        }
    }
}

/// Where an operand lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Space {
    /// The caller's arena (activations, graph inputs and outputs).
    Arena,
    /// The model's weight blob (constants).
    Blob,
}

/// A byte range in the arena or the blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operand {
    pub space: Space,
    pub offset: u32,
    pub len: u32,
}

impl Operand {
    pub const fn end(&self) -> u32 {
        self.offset.saturating_add(self.len)
    }
}

/// A byte range in the weight blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Span {
    pub offset: u32,
    pub len: u32,
}

/// Affine quantisation: `real = scale * (q - zero_point)`. For f32 tensors `scale` is 1 and `zero_point` 0.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Quant {
    pub scale: f32,
    pub zero_point: i32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorDef<'a> {
    pub name: &'a str,
    pub dtype: DType,
    /// Logical shape, in the ONNX model's own axis order.
    pub shape: Dims,
    /// Order in which the logical axes are laid out in memory (`physical[i] = shape[perm[i]]`). The identity for
    /// graph inputs and outputs.
    pub perm: Dims,
    pub data: Operand,
    pub quant: Quant,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelDef<'a> {
    /// Free text naming the source model.
    pub name: &'a str,
    /// Bytes of arena inference needs.
    pub arena_bytes: u32,
    /// MACs of one inference (for reports).
    pub macs: u64,
    pub tensor_count: u16,
    /// `tensor_count` postcard-encoded [`TensorDef`]s, back to back.
    pub tensors: &'a [u8],
    pub op_count: u16,
    /// `op_count` postcard-encoded [`OpDef`]s, back to back, in execution order.
    pub ops: &'a [u8],
    /// Tensor indices of the graph inputs and outputs.
    pub inputs: Vec<u16, MAX_IO>,
    pub outputs: Vec<u16, MAX_IO>,
    /// The element type each graph input, then each graph output, has in the source model: what the host
    /// exchanges with users. Empty: all [`IoType::F32`]. The device reads and writes the tensors' own bytes
    /// whatever this says; it is never read by the runtime.
    pub io_types: Vec<IoType, { 2 * MAX_IO }>,
}

/// The element type a graph input or output has in the source model (an int8 model's float inputs are
/// quantised by the host; a quantised ONNX model's int8 or uint8 ones are passed as they are).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum IoType {
    /// float32 values, (de)quantised with the tensor's [`Quant`] when the tensor is int8.
    #[default]
    F32,
    /// int8 values in the tensor's [`Quant`].
    I8,
    /// uint8 values `v`: the int8 value `v - 128` in the tensor's [`Quant`] (its zero point moved by -128 too).
    U8,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpDef<'a> {
    /// The source node's name.
    pub name: &'a str,
    pub kind: OpKind,
    pub inputs: Vec<Operand, MAX_OP_INPUTS>,
    pub output: Operand,
    /// Index of the tensor this op writes (for observers and reports).
    pub output_tensor: u16,
    /// MACs of this op.
    pub macs: u64,
}

/// Every op the runtime runs. Names follow `<op>[_variant]_<dtype>`. Append only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum OpKind {
    Conv2dS8(ConvS8),
    Conv2dF32(ConvF32),
    FullyConnectedS8(FullyConnectedS8),
    FullyConnectedF32(FullyConnectedF32),
    BinaryS8(BinaryS8),
    BinaryF32(BinaryF32),
    /// `y = table[x + 128]`: any int8 -> int8 function (activations, requantisation), tabulated on the host.
    LookupS8(LookupS8),
    UnaryF32(UnaryF32),
    SoftmaxS8(SoftmaxS8),
    SoftmaxF32(SoftmaxF32),
    MaxPoolS8(Pool2d),
    MaxPoolF32(Pool2d),
    AvgPoolS8(Pool2d),
    AvgPoolF32(Pool2d),
    ReduceMeanS8(ReduceMeanS8),
    ReduceMeanF32(ReduceMeanF32),
    /// Data movement, any dtype.
    Pad(PadParams),
    Concat(ConcatParams),
    Slice(SliceParams),
    Transpose(TransposeParams),
    /// Copies input 0 to the output (a reshape that could not alias).
    Copy,
    /// f32 -> int8: `y = clamp(round(x / scale) + zero_point, -128, 127)`, ties away from zero, NaN -> zero
    /// point. Where an int8 layer follows one kept in f32.
    QuantizeS8(Quant),
    /// int8 -> f32: `y = scale * (x - zero_point)`. Where a layer kept in f32 follows an int8 one.
    DequantizeS8(Quant),
}

impl OpKind {
    /// `<op>[_variant]_<dtype>`, from the one list of kinds in `crate::ops`.
    pub fn name(&self) -> &'static str {
        crate::ops::OpId::of(self).name()
    }
}

/// Geometry of a 2D convolution on NHWC tensors (a 1D convolution has `in_h = out_h = kernel_h = 1`).
/// Weights are `[out_c][kernel_h][kernel_w][in_c / groups]`; output channel `o` reads group
/// `o / (out_c / groups)`. Depthwise with multiplier `m` is `groups = in_c`, `out_c = m * in_c`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvGeom {
    pub batch: u32,
    pub in_h: u32,
    pub in_w: u32,
    pub in_c: u32,
    pub out_h: u32,
    pub out_w: u32,
    pub out_c: u32,
    pub kernel_h: u32,
    pub kernel_w: u32,
    pub stride_h: u32,
    pub stride_w: u32,
    pub dilation_h: u32,
    pub dilation_w: u32,
    /// Zero padding before the first row / column; padding after is implied by the output size.
    pub pad_top: u32,
    pub pad_left: u32,
    pub groups: u32,
}

/// Per-output-channel requantisation with 15-bit mantissas (2 + 1 bytes per channel):
/// `real multiplier = multiplier * 2^(shift - 15)`. The arithmetic is exactly
/// [`crate::quant::requantize`]`(acc, (multiplier as i32) << 16, shift)`; the host builds the pairs with
/// `host::per_channel_multipliers`. (Per-tensor multipliers elsewhere stay `i32`.)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerChannel {
    /// `i16[out_c]` (2-aligned), each in `[2^14, 2^15)` or 0.
    pub multipliers: Span,
    /// `i8[out_c]`, each in `[-31, 30]`.
    pub shifts: Span,
}

/// Which kernel runs an int8 conv or fully connected op. The compiler chooses from the geometry; the loader
/// refuses a choice the geometry does not allow. Every choice computes the same bytes ([`crate::kernels::fast`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum KernelS8 {
    /// The portable reference kernel: any geometry.
    #[default]
    Reference,
    /// Dot products of packed 16-bit pairs (`SMLAD` on Cortex-M4/M7): conv with one group and a patch of at most
    /// [`crate::kernels::fast::MAX_PATCH`] elements; fully connected with rows of at most
    /// [`crate::kernels::fast::MAX_FC_ROW`].
    Dot,
    /// Depthwise conv (one input and one output channel per group), 4 channels at a time; its weights are stored
    /// tap-major (see [`ConvS8::weights`]).
    Depthwise,
    /// Elementwise int8 Add/Sub without broadcasting: each operand's rescaling tabulated once per call (256
    /// entries each), one table read per element instead of a requantisation.
    Table,
    /// Pooling on whole words of channels (4 at a time).
    Fast,
}

impl KernelS8 {
    pub fn name(self) -> &'static str {
        match self {
            KernelS8::Reference => "reference",
            KernelS8::Dot => "dot",
            KernelS8::Depthwise => "depthwise",
            KernelS8::Table => "table",
            KernelS8::Fast => "fast",
        }
    }
}

/// int8 convolution: `acc = bias[o] + sum (x - input_zero_point) * w`, then
/// `y = clamp(requantize(acc, o) + output_zero_point, act_min, act_max)`. Weights symmetric (zero point 0).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConvS8 {
    pub geom: ConvGeom,
    /// `i8[out_c * kernel_h * kernel_w * in_c / groups]`, `[out_c][kernel_h][kernel_w][in_c / groups]`; for
    /// [`KernelS8::Depthwise`] tap-major, `[kernel_h][kernel_w][out_c]`.
    pub weights: Span,
    /// `i32[out_c]`.
    pub bias: Option<Span>,
    pub requant: PerChannel,
    pub input_zero_point: i32,
    pub output_zero_point: i32,
    pub act_min: i8,
    pub act_max: i8,
    pub kernel: KernelS8,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConvF32 {
    pub geom: ConvGeom,
    /// `f32[out_c * kernel_h * kernel_w * in_c / groups]`.
    pub weights: Span,
    /// `f32[out_c]`.
    pub bias: Option<Span>,
    pub act_min: f32,
    pub act_max: f32,
}

/// `y[r][n] = sum_k x[r][k] * w[n][k] + bias[n]` for `rows` rows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FcGeom {
    pub rows: u32,
    pub in_features: u32,
    pub out_features: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FullyConnectedS8 {
    pub geom: FcGeom,
    /// `i8[out_features][in_features]`.
    pub weights: Span,
    /// `i32[out_features]`.
    pub bias: Option<Span>,
    pub requant: PerChannel,
    pub input_zero_point: i32,
    pub output_zero_point: i32,
    pub act_min: i8,
    pub act_max: i8,
    pub kernel: KernelS8,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FullyConnectedF32 {
    pub geom: FcGeom,
    /// `f32[out_features][in_features]`.
    pub weights: Span,
    pub bias: Option<Span>,
    pub act_min: f32,
    pub act_max: f32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BinaryKind {
    Add,
    Sub,
    Mul,
    /// `a > 0 ? a : a * b`.
    PRelu,
}

/// Broadcasting: element `i` of the output (row-major in `out`) reads `a` at `sum idx[d] * a_strides[d]` and `b`
/// likewise; a stride of 0 broadcasts. All three lists have the same length (1 to [`MAX_RANK`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Broadcast {
    pub out: Dims,
    pub a_strides: Dims,
    pub b_strides: Dims,
}

/// int8 elementwise op. `Add`/`Sub`: both inputs are shifted left by `left_shift`, rescaled to a common scale
/// (`a_*`, `b_*`), added or subtracted, rescaled to the output (`out_*`). `Mul`: `(a - za) * (b - zb)` rescaled
/// by `out_*`. `PRelu`: `a >= za` -> `(a - za)` rescaled by `a_*`; else `(a - za) * (b - zb)` rescaled by `out_*`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BinaryS8 {
    pub kind: BinaryKind,
    pub bcast: Broadcast,
    pub a_zero_point: i32,
    pub b_zero_point: i32,
    pub out_zero_point: i32,
    pub left_shift: u8,
    pub a_multiplier: i32,
    pub a_shift: i8,
    pub b_multiplier: i32,
    pub b_shift: i8,
    pub out_multiplier: i32,
    pub out_shift: i8,
    pub act_min: i8,
    pub act_max: i8,
    /// [`KernelS8::Reference`] or [`KernelS8::Table`] (Add/Sub, no broadcasting).
    pub kernel: KernelS8,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BinaryF32 {
    pub kind: BinaryKind,
    pub bcast: Broadcast,
    pub act_min: f32,
    pub act_max: f32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LookupS8 {
    /// `i8[256]`, indexed by `x + 128`.
    pub table: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum UnaryF32 {
    Relu,
    Clip { min: f32, max: f32 },
    LeakyRelu { alpha: f32 },
    Elu { alpha: f32 },
    Sigmoid,
    Tanh,
}

/// Softmax over the middle axis of `[outer, len, inner]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SoftmaxF32 {
    pub outer: u32,
    pub len: u32,
    pub inner: u32,
    /// LogSoftmax.
    pub log: bool,
}

/// int8 Softmax / LogSoftmax over the middle axis of `[outer, len, inner]`, integer only. The host tabulates
/// `round(2^24 * exp(-input_scale * d))` for `d = max - x` in `0..=255` (`table[0] = 2^24`, no entry above it);
/// see `kernels::softmax` for the exact arithmetic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SoftmaxS8 {
    pub outer: u32,
    pub len: u32,
    pub inner: u32,
    pub log: bool,
    /// `u32[256]`.
    pub exp_table: Span,
    /// Host-computed constants (`crate::host::softmax_s8` / `log_softmax_s8`), see `kernels::softmax`: empty for
    /// Softmax (output scale 1/256); `[diff_mult, log_mult]` for LogSoftmax, `diff_mult = round(2^16 * input_scale /
    /// output_scale)`, `log_mult = round(2^16 * ln 2 / output_scale)`, both `>= 0`.
    pub params: heapless::Vec<i32, 8>,
    pub output_zero_point: i32,
}

/// 2D pooling on NHWC (`in_h = out_h = kernel_h = 1` for 1D).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool2d {
    pub batch: u32,
    pub in_h: u32,
    pub in_w: u32,
    pub channels: u32,
    pub out_h: u32,
    pub out_w: u32,
    pub kernel_h: u32,
    pub kernel_w: u32,
    pub stride_h: u32,
    pub stride_w: u32,
    pub pad_top: u32,
    pub pad_left: u32,
    /// Average pools: divide by the whole window (true) or only the taps inside the input (false).
    pub count_include_pad: bool,
    /// `AvgPoolS8`: the zero point of the input and output (they share one quantisation), the value of a padded
    /// tap. 0 for the other pools (unused).
    pub zero_point: i32,
    /// [`KernelS8::Reference`], or [`KernelS8::Fast`] for int8 pools; always `Reference` for f32.
    pub kernel: KernelS8,
}

/// Mean over the axes set in `axes` (bit `d` = axis `d` of `dims`), output row-major over the kept axes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReduceMeanF32 {
    pub dims: Dims,
    pub axes: u8,
}

/// int8 mean: `y = requantize(sum (x - input_zero_point), multiplier, shift) + output_zero_point`, the
/// multiplier carrying `input_scale / (output_scale * count)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReduceMeanS8 {
    pub dims: Dims,
    pub axes: u8,
    pub input_zero_point: i32,
    pub output_zero_point: i32,
    pub multiplier: i32,
    pub shift: i8,
}

/// Constant padding of a tensor of shape `dims`; `value` is the padding element's bit pattern (its low
/// `elem_bytes` bytes, little-endian).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PadParams {
    pub dims: Dims,
    pub before: Dims,
    pub after: Dims,
    pub elem_bytes: u8,
    pub value: u32,
}

/// Concatenation along the middle axis of `[outer, sum(parts), inner]`; input `i` is `[outer, parts[i], inner]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConcatParams {
    pub outer: u32,
    /// Bytes of one `inner` run (inner elements times element size).
    pub inner_bytes: u32,
    pub parts: Vec<u32, MAX_OP_INPUTS>,
}

/// `y = x[:, start..start + len, :]` of `x` shaped `[outer, axis_len, inner]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceParams {
    pub outer: u32,
    pub axis_len: u32,
    pub start: u32,
    pub len: u32,
    pub inner_bytes: u32,
}

/// `y.shape[i] = dims[perm[i]]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransposeParams {
    pub dims: Dims,
    pub perm: Dims,
    pub elem_bytes: u8,
}
