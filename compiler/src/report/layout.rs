//! What a checked model file says about its ops, their edges, their weights and where every activation lives in
//! the arena over time — read back from the file itself, so a report on a `.kiln` file shows what the device runs.
//!
//! Ops address operands by byte range, not by tensor: an arena input is the tensor most recently written over
//! that range (the planner never lets a live tensor be overwritten, so that is the one the op reads). Reshapes
//! that alias their input have no tensor of their own and resolve to the tensor they alias.

use kiln_runtime::format::{DType, OpDef, OpKind, Operand, Space, TensorDef, ARENA_ALIGN};
use kiln_runtime::kernels::fast;
use kiln_runtime::Model;

/// Where an op input comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// An arena tensor (index into the model's tensor table).
    Tensor(u16),
    /// Constant bytes in the weight blob.
    Constant { bytes: u32 },
}

#[derive(Clone, Debug)]
pub struct TensorNode {
    pub index: u16,
    pub name: String,
    pub dtype: &'static str,
    pub shape: Vec<u32>,
    pub offset: u32,
    pub bytes: u32,
    /// The op that writes it; `None` for graph inputs and aliases.
    pub producer: Option<usize>,
}

#[derive(Clone, Debug)]
pub struct OpNode {
    pub index: usize,
    pub name: String,
    pub kind: &'static str,
    /// The int8 kernel the compiler chose, where it had a choice.
    pub kernel: Option<&'static str>,
    pub in_place: bool,
    pub inputs: Vec<Source>,
    pub output: u16,
    pub macs: u64,
    /// Weight elements and their bytes (convolution and fully connected kernels; 0 elsewhere).
    pub weight_count: u64,
    pub weight_bytes: u64,
    pub output_bytes: u32,
}

/// One tensor's stay in the arena: bytes `[offset, offset + bytes)` from half-slot `start` to `end` (exclusive).
///
/// Time is counted in slots: slot 0 holds the graph inputs before anything runs, slot `k + 1` is op `k`, the
/// last slot holds the graph outputs after the last op. Each slot has two halves so that an op writing over its
/// input can be drawn exactly: the input leaves and the output arrives in the middle of the op's slot. A tensor
/// written by op `k` (not in place) and last read by op `j` occupies half-slots `[2(k+1), 2(j+1)+2)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Live {
    pub tensor: u16,
    pub offset: u32,
    pub bytes: u32,
    pub start: u32,
    pub end: u32,
}

/// Weights of one op, as values (int8 models keep them as integers).
#[derive(Clone, Debug)]
pub struct Weights {
    pub op: usize,
    pub values: WeightValues,
}

#[derive(Clone, Debug)]
pub enum WeightValues {
    I8(Vec<i8>),
    F32(Vec<f32>),
}

#[derive(Clone, Debug)]
pub struct Layout {
    pub ops: Vec<OpNode>,
    pub tensors: Vec<TensorNode>,
    pub lives: Vec<Live>,
    /// Number of slots (ops + 2).
    pub slots: u32,
    pub arena_bytes: u32,
    pub inputs: Vec<u16>,
    pub outputs: Vec<u16>,
    pub weights: Vec<Weights>,
}

impl Layout {
    /// Aligned bytes live in each slot (the more of its two halves): what any plan must hold at that point.
    pub fn live_bytes(&self) -> Vec<u32> {
        (0..self.slots)
            .map(|s| {
                let at = |h: u32| -> u32 {
                    self.lives
                        .iter()
                        .filter(|l| l.start <= h && h < l.end)
                        .map(|l| align(l.bytes))
                        .sum()
                };
                at(2 * s).max(at(2 * s + 1))
            })
            .collect()
    }

    /// The most bytes live at once: no arena plan can be smaller.
    pub fn lower_bound(&self) -> u32 {
        self.live_bytes().into_iter().max().unwrap_or(0)
    }

    /// Where op `k`'s input `i` comes from, as the producing op (`None`: a graph input or a constant).
    pub fn producer(&self, source: &Source) -> Option<usize> {
        match source {
            Source::Tensor(t) => self.tensors.get(*t as usize).and_then(|t| t.producer),
            Source::Constant { .. } => None,
        }
    }
}

fn align(n: u32) -> u32 {
    n.div_ceil(ARENA_ALIGN as u32) * ARENA_ALIGN as u32
}

fn overlaps(a: &Operand, t: &TensorDef<'_>) -> bool {
    t.data.space == Space::Arena && a.offset < t.data.end() && t.data.offset < a.end()
}

/// The kernel choice an op carries, where it has one.
pub fn kernel_of(kind: &OpKind) -> Option<&'static str> {
    match kind {
        OpKind::Conv2dS8(p) => Some(p.kernel.name()),
        OpKind::FullyConnectedS8(p) => Some(p.kernel.name()),
        OpKind::BinaryS8(p) => Some(p.kernel.name()),
        OpKind::MaxPoolS8(p) | OpKind::AvgPoolS8(p) => Some(p.kernel.name()),
        _ => None,
    }
}

/// Reads ops, edges, lifetimes and weights off a checked model.
pub fn layout(m: &Model<'_>) -> Layout {
    let defs: Vec<TensorDef<'_>> = m.tensors().collect();
    let ops: Vec<OpDef<'_>> = m.ops().collect();
    let (ins, outs) = m.io_indices();
    let mut producer: Vec<Option<usize>> = vec![None; defs.len()];
    for (k, op) in ops.iter().enumerate() {
        if let Some(p) = producer.get_mut(op.output_tensor as usize) {
            *p = Some(k);
        }
    }
    // Half-slot each tensor arrives at, once written; `None` before that (and for aliases).
    let mut written: Vec<Option<u32>> = vec![None; defs.len()];
    let mut last_read: Vec<Option<u32>> = vec![None; defs.len()];
    for &i in ins {
        if let Some(w) = written.get_mut(i as usize) {
            *w = Some(0);
        }
    }
    // The tensor most recently written over (part of) `operand`.
    let occupant = |operand: &Operand, written: &[Option<u32>]| -> Option<u16> {
        defs.iter()
            .enumerate()
            .filter(|(t, d)| written[*t].is_some() && overlaps(operand, d))
            .max_by_key(|(t, _)| written[*t])
            .map(|(t, _)| t as u16)
    };
    let mut nodes = Vec::new();
    let mut weights = Vec::new();
    let n = ops.len() as u32;
    for (k, op) in ops.iter().enumerate() {
        let slot = k as u32 + 1;
        let in_place = kiln_runtime::ops::runs_in_place(op);
        let mut inputs = Vec::new();
        for operand in &op.inputs {
            match operand.space {
                Space::Blob => inputs.push(Source::Constant { bytes: operand.len }),
                Space::Arena => {
                    if let Some(t) = occupant(operand, &written) {
                        let read_until = if in_place && operand == &op.inputs[0] {
                            2 * slot + 1
                        } else {
                            2 * slot + 2
                        };
                        let l = &mut last_read[t as usize];
                        *l = Some(l.map_or(read_until, |v| v.max(read_until)));
                        inputs.push(Source::Tensor(t));
                    }
                }
            }
        }
        let out = op.output_tensor as usize;
        if let Some(w) = written.get_mut(out) {
            *w = Some(if in_place { 2 * slot + 1 } else { 2 * slot });
        }
        let (weight_count, weight_bytes, values) = weights_of(op, m.blob());
        if let Some(values) = values {
            weights.push(Weights { op: k, values });
        }
        nodes.push(OpNode {
            index: k,
            name: op.name.to_string(),
            kind: op.kind.name(),
            kernel: kernel_of(&op.kind),
            in_place,
            inputs,
            output: op.output_tensor,
            macs: op.macs,
            weight_count,
            weight_bytes,
            output_bytes: op.output.len,
        });
    }
    // Graph outputs stay until the end; an output that aliases an op's output keeps that tensor alive.
    let end = 2 * (n + 1) + 2;
    for &o in outs {
        let def = &defs[o as usize];
        let t = if written[o as usize].is_some() {
            Some(o)
        } else {
            occupant(&def.data, &written)
        };
        if let Some(t) = t {
            last_read[t as usize] = Some(end);
        }
    }
    let lives = defs
        .iter()
        .enumerate()
        .filter(|(_, d)| d.data.space == Space::Arena)
        .filter_map(|(t, d)| {
            let start = written[t]?;
            // Written and never read: it lives through its own op.
            let end = last_read[t].unwrap_or((start / 2) * 2 + 2).max(start + 1);
            Some(Live {
                tensor: t as u16,
                offset: d.data.offset,
                bytes: d.data.len,
                start,
                end,
            })
        })
        .collect();
    let tensors = defs
        .iter()
        .enumerate()
        .map(|(t, d)| TensorNode {
            index: t as u16,
            name: d.name.to_string(),
            dtype: d.dtype.name(),
            shape: d.shape.to_vec(),
            offset: d.data.offset,
            bytes: d.data.len,
            producer: producer[t],
        })
        .collect();
    Layout {
        ops: nodes,
        tensors,
        lives,
        slots: n + 2,
        arena_bytes: m.arena_bytes() as u32,
        inputs: ins.to_vec(),
        outputs: outs.to_vec(),
        weights,
    }
}

fn blob_bytes<'b>(blob: &'b [u8], span: &kiln_runtime::format::Span) -> &'b [u8] {
    let start = span.offset as usize;
    blob.get(start..start + span.len as usize).unwrap_or(&[])
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Weight element count, bytes, and the values (unpacked from an optimised kernel's layout) of an op.
fn weights_of(op: &OpDef<'_>, blob: &[u8]) -> (u64, u64, Option<WeightValues>) {
    let conv_count = |g: &kiln_runtime::format::ConvGeom| {
        g.out_c as usize
            * g.kernel_h as usize
            * g.kernel_w as usize
            * (g.in_c / g.groups.max(1)) as usize
    };
    let (count, values) = match &op.kind {
        OpKind::Conv2dS8(p) => {
            let g = &p.geom;
            let count = conv_count(g);
            let bytes = blob_bytes(blob, &p.weights);
            let taps = g.kernel_h as usize * g.kernel_w as usize;
            let w = match p.kernel {
                kiln_runtime::format::KernelS8::Dot => {
                    unpack_dot(bytes, count / g.out_c.max(1) as usize, g.out_c as usize)
                }
                kiln_runtime::format::KernelS8::Depthwise => {
                    unpack_depthwise(bytes, taps, g.out_c as usize)
                }
                _ => bytes.iter().map(|&b| b as i8).collect(),
            };
            (count, Some(WeightValues::I8(w)))
        }
        OpKind::FullyConnectedS8(p) => {
            let g = &p.geom;
            let (k, n) = (g.in_features as usize, g.out_features as usize);
            let bytes = blob_bytes(blob, &p.weights);
            let w = match p.kernel {
                kiln_runtime::format::KernelS8::Dot => unpack_dot(bytes, k, n),
                _ => bytes.iter().map(|&b| b as i8).collect(),
            };
            (k * n, Some(WeightValues::I8(w)))
        }
        OpKind::Conv2dF32(p) => (
            conv_count(&p.geom),
            Some(WeightValues::F32(f32s(blob_bytes(blob, &p.weights)))),
        ),
        OpKind::FullyConnectedF32(p) => (
            p.geom.in_features as usize * p.geom.out_features as usize,
            Some(WeightValues::F32(f32s(blob_bytes(blob, &p.weights)))),
        ),
        _ => (0, None),
    };
    let size = match &values {
        Some(WeightValues::F32(_)) => DType::F32.size(),
        _ => DType::I8.size(),
    };
    (count as u64, (count * size) as u64, values)
}

/// The weights `[n][k]` back out of [`fast::pack_dot`]'s layout (padding dropped).
pub fn unpack_dot(packed: &[u8], k: usize, n: usize) -> Vec<i8> {
    if packed.len() != fast::dot_packed_len(k, n) {
        return Vec::new();
    }
    let groups = k.div_ceil(4);
    let pair_bytes = (2 * groups + 4) * 4;
    let mut w = vec![0i8; n * k];
    for (pair, block) in packed.chunks_exact(pair_bytes).enumerate() {
        for g in 0..groups {
            for (ri, r) in [2 * pair, 2 * pair + 1].into_iter().enumerate() {
                for i in 0..4 {
                    let col = 4 * g + i;
                    if r < n && col < k {
                        w[r * k + col] = block[(2 * g + ri) * 4 + i] as i8;
                    }
                }
            }
        }
    }
    w
}

/// The weights `[channels][taps]` back out of [`fast::pack_depthwise`]'s layout.
pub fn unpack_depthwise(packed: &[u8], taps: usize, channels: usize) -> Vec<i8> {
    if !channels.is_multiple_of(4) || packed.len() != fast::depthwise_packed_len(taps, channels) {
        return Vec::new();
    }
    let word = |b: &[u8], i: usize| {
        u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
    };
    let group_bytes = (2 * taps + 8) * 4;
    let mut w = vec![0i8; channels * taps];
    for (c4, block) in packed.chunks_exact(group_bytes).enumerate() {
        let c0 = 4 * c4;
        for t in 0..taps {
            let (even, odd) = (word(block, 2 * t), word(block, 2 * t + 1));
            w[c0 * taps + t] = even as u16 as i16 as i8;
            w[(c0 + 2) * taps + t] = (even >> 16) as u16 as i16 as i8;
            w[(c0 + 1) * taps + t] = odd as u16 as i16 as i8;
            w[(c0 + 3) * taps + t] = (odd >> 16) as u16 as i16 as i8;
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: u32) -> impl FnMut() -> u32 {
        let mut s = seed;
        move || {
            s = s.wrapping_mul(1664525).wrapping_add(1013904223);
            s >> 8
        }
    }

    /// x -> conv a -> relu -> conv b -> Add(., x) -> relu -> conv c: a skip edge, a residual Add that may run in
    /// place, packed and unpacked kernels.
    fn residual_model() -> (tempfile::TempDir, std::path::PathBuf) {
        use kiln_tests::onnx::{attr::ints, OnnxBuilder};
        let w = |n: usize, seed: u32| -> Vec<f32> {
            let mut next = lcg(seed);
            (0..n)
                .map(|_| (next() % 200) as f32 / 400.0 - 0.25)
                .collect()
        };
        OnnxBuilder::new(13)
            .input("x", &[1, 8, 6, 6])
            .initializer("wa", &[8, 8, 3, 3], &w(8 * 8 * 9, 1))
            .initializer("wb", &[8, 8, 1, 1], &w(64, 2))
            .initializer("wc", &[4, 8, 3, 3], &w(4 * 8 * 9, 3))
            .node(
                "Conv",
                &["x", "wa"],
                &["a"],
                vec![ints("pads", &[1, 1, 1, 1])],
            )
            .node("Relu", &["a"], &["ar"], vec![])
            .node("Conv", &["ar", "wb"], &["b"], vec![])
            .node("Add", &["b", "x"], &["s"], vec![])
            .node("Relu", &["s"], &["sr"], vec![])
            .node("Conv", &["sr", "wc"], &["y"], vec![])
            .output("y", &[1, 4, 4, 4])
            .write_temp()
            .expect("write model")
    }

    /// Checks the layout against the compiler's own plan: the same lower bound, disjoint bytes for tensors live
    /// together, every arena input resolved, and lifetimes inside the op sequence.
    fn check_against_plan(bytes: &[u8], lower_bound: usize) -> Layout {
        let buf = crate::runner::ModelBuf::new(bytes);
        let m = buf.model().expect("model");
        let l = layout(&m);
        assert_eq!(l.lower_bound() as usize, lower_bound, "lower bound");
        assert!(l.lower_bound() <= l.arena_bytes);
        for (op, def) in l.ops.iter().zip(m.ops()) {
            assert_eq!(
                op.inputs.len(),
                def.inputs.len(),
                "op {} inputs resolved",
                op.index
            );
        }
        for (i, a) in l.lives.iter().enumerate() {
            assert!(a.start < a.end && a.end <= 2 * l.slots, "{a:?}");
            assert!(a.offset + a.bytes <= l.arena_bytes, "{a:?}");
            for b in &l.lives[i + 1..] {
                let together = a.start < b.end && b.start < a.end;
                let share_bytes = a.offset < b.offset + b.bytes && b.offset < a.offset + a.bytes;
                assert!(!(together && share_bytes), "{a:?} and {b:?}");
            }
        }
        l
    }

    #[test]
    fn layout_agrees_with_the_compilers_plan() {
        use crate::emit::{emit, Precision};
        let (_dir, path) = residual_model();
        let program = crate::compile::lower_onnx(&path).expect("lower");
        let float = emit(&program, Precision::F32, None, "residual").expect("f32");
        let l = check_against_plan(&float.bytes, float.arena_lower_bound);
        // The Add reads the graph input (a skip edge from the top) and conv b's output.
        let add = l
            .ops
            .iter()
            .find(|o| o.kind.starts_with("binary"))
            .expect("the Add");
        let producers: Vec<Option<usize>> = add.inputs.iter().map(|s| l.producer(s)).collect();
        assert!(producers.contains(&None), "{producers:?}");
        assert!(
            crate::report::svg::graph(&l).contains("<path d=\"M"),
            "a skip edge is an arc"
        );

        let samples: Vec<Vec<ndarray::ArrayD<f32>>> = (0..8u32)
            .map(|s| {
                let mut next = lcg(100 + s);
                let v: Vec<f32> = (0..8 * 36)
                    .map(|_| (next() % 256) as f32 / 128.0 - 1.0)
                    .collect();
                vec![
                    ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[1, 8, 6, 6]), v)
                        .expect("sample"),
                ]
            })
            .collect();
        let ranges = crate::compile::calibrate(
            &program,
            &float,
            &samples,
            crate::compile::CalibMethod::MinMax,
        )
        .expect("calibrate");
        let int8 = emit(&program, Precision::Int8, Some(&ranges), "residual").expect("int8");
        let l = check_against_plan(&int8.bytes, int8.arena_lower_bound);
        assert!(
            l.ops.iter().any(|o| o.in_place),
            "some int8 op runs in place here"
        );
        assert_eq!(l.weights.len(), 3, "three convolutions' weights");
    }

    #[test]
    fn unpacking_inverts_the_packers() {
        let mut next = lcg(7);
        for (k, n) in [(1, 1), (5, 3), (8, 2), (9, 7), (27, 16)] {
            let w: Vec<i8> = (0..k * n).map(|_| next() as i8).collect();
            let mult = vec![1 << 14; n];
            let shift = vec![-2i8; n];
            let mut out = vec![0u8; fast::dot_packed_len(k, n)];
            assert!(fast::pack_dot(&w, k, n, None, &mult, &shift, &mut out));
            assert_eq!(unpack_dot(&out, k, n), w, "dot k={k} n={n}");
        }
        for (taps, channels) in [(1, 4), (9, 8), (25, 12)] {
            let w: Vec<i8> = (0..taps * channels).map(|_| next() as i8).collect();
            let mult = vec![1 << 14; channels];
            let shift = vec![-2i8; channels];
            let mut out = vec![0u8; fast::depthwise_packed_len(taps, channels)];
            assert!(fast::pack_depthwise(
                &w, taps, channels, 3, None, &mult, &shift, &mut out
            ));
            assert_eq!(
                unpack_depthwise(&out, taps, channels),
                w,
                "depthwise taps={taps} c={channels}"
            );
        }
    }
}
