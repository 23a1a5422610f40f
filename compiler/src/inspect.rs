//! `kiln inspect`: what a model file holds.

use std::fmt::Write;
use std::path::Path;

use kiln_runtime::format::{OpKind, Space};
use kiln_runtime::Model;
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct TensorInfo {
    pub index: usize,
    pub name: String,
    pub dtype: &'static str,
    pub shape: Vec<u32>,
    pub perm: Vec<u32>,
    pub space: &'static str,
    pub offset: u32,
    pub bytes: u32,
    pub scale: f32,
    pub zero_point: i32,
}

#[derive(Clone, Debug, Serialize)]
pub struct OpInfo {
    pub index: usize,
    pub name: String,
    pub kind: &'static str,
    /// The int8 kernel the compiler chose for a conv, fully connected, Add/Sub or pool (`reference`, `dot`,
    /// `depthwise`, `table`, `fast`).
    pub kernel: Option<&'static str>,
    /// The op writes its output over its first input (the arena planner's in-place ops).
    pub in_place: bool,
    pub output_tensor: u16,
    pub macs: u64,
    pub weight_bytes: u32,
    pub bias_bytes: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct Info {
    pub name: String,
    pub format_version: u16,
    pub checksum: String,
    pub file_bytes: usize,
    pub arena_bytes: usize,
    pub blob_bytes: usize,
    pub weight_bytes: u32,
    pub bias_bytes: u32,
    pub macs: u64,
    pub inputs: Vec<usize>,
    pub outputs: Vec<usize>,
    /// What `kiln run` exchanges for each input, then each output: `f32`, or the quantised model's own `int8` /
    /// `uint8`.
    pub io_types: Vec<&'static str>,
    pub ops: Vec<OpInfo>,
    pub tensors: Vec<TensorInfo>,
}

/// Weight and bias bytes an op carries in the blob.
fn param_bytes(kind: &OpKind) -> (u32, u32) {
    match kind {
        OpKind::Conv2dS8(p) => (p.weights.len, p.bias.map_or(0, |b| b.len)),
        OpKind::Conv2dF32(p) => (p.weights.len, p.bias.map_or(0, |b| b.len)),
        OpKind::FullyConnectedS8(p) => (p.weights.len, p.bias.map_or(0, |b| b.len)),
        OpKind::FullyConnectedF32(p) => (p.weights.len, p.bias.map_or(0, |b| b.len)),
        _ => (0, 0),
    }
}

pub fn inspect(m: &Model<'_>) -> Info {
    let ops: Vec<OpInfo> = m
        .ops()
        .enumerate()
        .map(|(index, op)| {
            let (weight_bytes, bias_bytes) = param_bytes(&op.kind);
            OpInfo {
                index,
                name: op.name.to_string(),
                kind: op.kind.name(),
                kernel: match &op.kind {
                    OpKind::Conv2dS8(p) => Some(p.kernel.name()),
                    OpKind::FullyConnectedS8(p) => Some(p.kernel.name()),
                    OpKind::BinaryS8(p) => Some(p.kernel.name()),
                    OpKind::MaxPoolS8(p) | OpKind::AvgPoolS8(p) => Some(p.kernel.name()),
                    _ => None,
                },
                in_place: kiln_runtime::ops::runs_in_place(&op),
                output_tensor: op.output_tensor,
                macs: op.macs,
                weight_bytes,
                bias_bytes,
            }
        })
        .collect();
    let tensors = m
        .tensors()
        .enumerate()
        .map(|(index, t)| TensorInfo {
            index,
            name: t.name.to_string(),
            dtype: t.dtype.name(),
            shape: t.shape.to_vec(),
            perm: t.perm.to_vec(),
            space: match t.data.space {
                Space::Arena => "arena",
                Space::Blob => "blob",
            },
            offset: t.data.offset,
            bytes: t.data.len,
            scale: t.quant.scale,
            zero_point: t.quant.zero_point,
        })
        .collect();
    let (ins, outs) = m.io_indices();
    Info {
        name: m.name().to_string(),
        format_version: m.format_version(),
        checksum: format!("{:08x}", m.checksum()),
        file_bytes: m.file_len(),
        arena_bytes: m.arena_bytes(),
        blob_bytes: m.blob().len(),
        weight_bytes: ops.iter().map(|o| o.weight_bytes).sum(),
        bias_bytes: ops.iter().map(|o| o.bias_bytes).sum(),
        macs: m.macs(),
        inputs: ins.iter().map(|&i| i as usize).collect(),
        outputs: outs.iter().map(|&i| i as usize).collect(),
        io_types: (0..ins.len())
            .map(|i| m.input_type(i))
            .chain((0..outs.len()).map(|o| m.output_type(o)))
            .map(|t| match t {
                kiln_runtime::format::IoType::F32 => "f32",
                kiln_runtime::format::IoType::I8 => "int8",
                kiln_runtime::format::IoType::U8 => "uint8",
            })
            .collect(),
        ops,
        tensors,
    }
}

pub fn render(i: &Info, path: &Path) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{} ({})", path.display(), i.name);
    let _ = writeln!(
        s,
        "  format version {}, crc32 {}, {} bytes",
        i.format_version, i.checksum, i.file_bytes
    );
    let _ = writeln!(
        s,
        "  arena {} B, blob {} B (weights {} B, biases {} B), {} MACs",
        i.arena_bytes, i.blob_bytes, i.weight_bytes, i.bias_bytes, i.macs
    );
    let io = |list: &[usize], first: usize| {
        list.iter()
            .enumerate()
            .map(|(k, &t)| {
                let t = &i.tensors[t];
                let given = match i.io_types.get(first + k) {
                    Some(&ty) if ty != "f32" => format!(", exchanged as {ty}"),
                    _ => String::new(),
                };
                format!(
                    "'{}' {} {:?} (scale {}, zero point {}{given})",
                    t.name, t.dtype, t.shape, t.scale, t.zero_point
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(s, "  inputs:  {}", io(&i.inputs, 0));
    let _ = writeln!(s, "  outputs: {}", io(&i.outputs, i.inputs.len()));
    let _ = writeln!(
        s,
        "\n  {:>3}  {:<34} {:<28} {:>10} {:>8}  output",
        "#", "op (kernel)", "node", "MACs", "weights"
    );
    for op in &i.ops {
        let t = &i.tensors[op.output_tensor as usize];
        let kind = match op.kernel {
            Some(k) => format!("{} ({k})", op.kind),
            None => op.kind.to_owned(),
        };
        let _ = writeln!(
            s,
            "  {:>3}  {:<34} {:<28} {:>10} {:>8}  {} {:?} @{}{}",
            op.index,
            kind,
            op.name,
            op.macs,
            op.weight_bytes,
            t.dtype,
            t.shape,
            t.offset,
            if op.in_place { " (in place)" } else { "" }
        );
    }
    s
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
