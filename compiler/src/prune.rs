//! Structured pruning: whole channels (convolution filters, dense units) leave the float IR, every layer they pass
//! through shrinks with them, and the layers that read them are refitted on calibration data — no retraining.
//!
//! 1. **Channel groups.** A group is a set of tensors that share one channel axis: the outputs of the Conv (one
//!    group) and Dense nodes that write the channels (its *producers*), everything the channels flow through unchanged
//!    (activations, pools, constant pads, depthwise convolutions, element-wise ops with a per-channel or scalar
//!    constant, Add/Sub/Mul of two such tensors, a flatten into a Dense) and the Conv / Dense nodes that read them
//!    as input features (its *consumers*). A residual Add couples its operands' producers into one group, pruned
//!    jointly. A group that reaches a graph input or output, or any other op (Softmax, Concat, Slice, Transpose,
//!    a broadcasting operand, another Reshape, ...), is not pruned; the report says why.
//! 2. **Saliency.** Channel `c` of a group scores `sum over consumers of E[x_c^2] * ||W[:, c]||^2`: the energy its
//!    features carry into the next layers (`x` from the calibration data, `W` the consumer's weights on the
//!    channel, over every kernel tap or flattened position).
//! 3. **Selection.** The same fraction of every group, lowest scores first: `round(F * C)` channels, but every
//!    group keeps at least a quarter of its channels (and one), so `F` is at most [`MAX_FRACTION`]. A group that
//!    passes through a depthwise convolution, or has 32 channels or more, keeps a multiple of 4 (the nearest):
//!    the fast depthwise int8 kernel needs one, and equal channel counts on both sides of a pointwise convolution
//!    keep it in place in the arena.
//! 4. **Reconstruction.** Every consumer is refitted, in graph order, by ridge-regularised least squares: its new
//!    weights and bias on the kept inputs, as the pruned network computes them, reproduce its original
//!    pre-activation output on the calibration data. The ridge pulls towards the original weights with the removed
//!    channels' mean contribution folded into the bias, which is what a fit with few rows (a dense layer sees one
//!    row per sample) falls back to.
//!
//! Unstructured (magnitude) pruning is not offered: Kiln's kernels are dense, so zeroed weights would neither
//! shrink the file nor save a cycle.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::path::Path;

use ndarray::ArrayD;
use serde::Serialize;

use crate::compile::{self, Compiled, Options};
use crate::emit::{self, Emitted, Precision};
use crate::error::{input, Error, Result};
use crate::eval::{kiln_top1, read_labelled};
use crate::ir::{ConvAttrs, DataFormat, Graph, Op, TensorId};
use crate::runner::{to_logical, ModelBuf, Runner};

/// The largest `--prune` fraction: every pruned group keeps at least a quarter of its channels.
pub const MAX_FRACTION: f64 = 0.75;
/// Calibration samples used for saliency and refitting (evenly spaced over the data when there are more).
pub const MAX_SAMPLES: usize = 256;
/// Rows (output positions x samples) a least-squares fit accumulates at most (evenly subsampled above).
const MAX_ROWS: usize = 40_000;
/// What the report says about unstructured pruning.
pub const UNSTRUCTURED: &str =
    "unstructured (magnitude) pruning: no gain on this runtime (dense kernels: zeroed \
                                weights neither shrink the file nor save cycles), not offered";

/// A tensor in a channel group: index `i` along `axis` holds channel `(i / inner) % channels`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Member {
    tensor: TensorId,
    axis: usize,
    inner: usize,
}

/// Channels that are pruned together.
#[derive(Clone, Debug)]
struct Group {
    channels: usize,
    members: Vec<Member>,
    producers: BTreeSet<usize>,
    passes: BTreeSet<usize>,
    consumers: BTreeSet<usize>,
}

impl Group {
    fn member(&self, t: TensorId) -> Option<Member> {
        self.members.iter().copied().find(|m| m.tensor == t)
    }
}

/// Sizes of a compiled model, before or after pruning.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Sizes {
    pub macs: u64,
    /// Conv and Dense weights (parameters, not bytes).
    pub weights: usize,
    pub weight_bytes: usize,
    pub bias_bytes: usize,
    pub arena_bytes: usize,
    pub file_bytes: usize,
}

/// One Conv / Dense layer before and after.
#[derive(Clone, Debug, Serialize)]
pub struct LayerReport {
    pub name: String,
    pub kind: &'static str,
    /// `[before, after]`.
    pub in_channels: [usize; 2],
    pub out_channels: [usize; 2],
    pub macs: [u64; 2],
    pub weights: [usize; 2],
    /// Output channels removed (indices in the original layer).
    pub removed_outputs: Vec<usize>,
    /// Refitted by least squares on the calibration data.
    pub refitted: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct GroupReport {
    pub channels: usize,
    /// Removed channel indices.
    pub removed: Vec<usize>,
    pub producers: Vec<String>,
    pub consumers: Vec<String>,
    /// More than one producer (a residual Add ties them).
    pub coupled: bool,
}

/// One probe of `--prune-budget`.
#[derive(Clone, Debug, Serialize)]
pub struct Probe {
    pub fraction: f64,
    /// Top-1 on the labelled data, 0..1.
    pub accuracy: f64,
    pub macs: u64,
    pub weight_bytes: usize,
    pub within_budget: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct PruneReport {
    /// Fraction of each group's channels removed (the `--prune` value).
    pub fraction: f64,
    pub method: String,
    pub prunable_channels: usize,
    pub removed_channels: usize,
    /// The model compiled without pruning (same precision; sizes do not depend on calibration).
    pub before: Sizes,
    pub after: Sizes,
    pub groups: Vec<GroupReport>,
    pub layers: Vec<LayerReport>,
    /// Channel sets left alone, and why.
    pub not_prunable: Vec<String>,
    pub unstructured: &'static str,
    /// `--prune-budget`: every probe, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<Probe>,
}

fn channel_axis(fmt: DataFormat, rank: usize) -> usize {
    match fmt {
        DataFormat::ChannelsFirst => 1,
        DataFormat::ChannelsLast => rank - 1,
    }
}

fn kernel_size(c: &ConvAttrs) -> usize {
    c.kernel.iter().product::<usize>().max(1)
}

/// Input channels of a convolution (all groups).
fn conv_in_channels(c: &ConvAttrs) -> usize {
    c.weights.len() / (c.out_channels * kernel_size(c)).max(1) * c.group
}

fn is_depthwise(c: &ConvAttrs) -> bool {
    c.group > 1 && c.out_channels == c.group && c.weights.len() == c.out_channels * kernel_size(c)
}

/// The members a node the channels pass through unchanged ties together (its computed inputs and its output),
/// given the channel axis on its output; `Err` when the node cannot drop channels on that axis.
fn pass_members(
    g: &Graph,
    n: usize,
    axis: usize,
    inner: usize,
) -> std::result::Result<Vec<Member>, String> {
    let node = &g.nodes[n];
    let out = &g.tensors[node.output];
    let rank = out.shape.len();
    let what = || format!("'{}' ({})", node.name, node.op.kind_name());
    let same = |t: TensorId| Member {
        tensor: t,
        axis,
        inner,
    };
    if inner != 1 {
        return Err(format!("{} reads flattened channels", what()));
    }
    let ok = match &node.op {
        Op::Unary(_) => true,
        Op::Pool(p) => channel_axis(p.data_format, rank) == axis,
        Op::Pad {
            pads_begin,
            pads_end,
            ..
        } => pads_begin.get(axis) == Some(&0) && pads_end.get(axis) == Some(&0),
        Op::Conv(c) => is_depthwise(c) && channel_axis(c.data_format, rank) == axis,
        Op::Binary { .. } => {
            let mut members = vec![same(node.output)];
            for &i in &node.inputs {
                let t = &g.tensors[i];
                if t.value.is_some() {
                    // A constant must be per-channel or broadcast along the channel axis.
                    let lead = rank - t.shape.len().min(rank);
                    let d = if axis >= lead {
                        t.shape.get(axis - lead).copied()
                    } else {
                        None
                    };
                    if !matches!(d, None | Some(1)) && d != Some(out.shape[axis]) {
                        return Err(format!(
                            "{}: constant '{}' {:?} mixes channels",
                            what(),
                            t.name,
                            t.shape
                        ));
                    }
                } else if t.shape != out.shape {
                    return Err(format!("{}: operand '{}' is broadcast", what(), t.name));
                } else {
                    members.push(same(i));
                }
            }
            return Ok(members);
        }
        _ => false,
    };
    if !ok {
        return Err(format!("{} cannot drop channels on axis {axis}", what()));
    }
    Ok(vec![same(node.inputs[0]), same(node.output)])
}

/// The channel group grown from the output of Conv / Dense node `seed`, or why it cannot be pruned.
fn grow(g: &Graph, seed: usize) -> std::result::Result<Group, String> {
    let node = &g.nodes[seed];
    let rank = g.tensors[node.output].shape.len();
    let (axis, channels) = match &node.op {
        Op::Conv(c) if c.group == 1 => (channel_axis(c.data_format, rank), c.out_channels),
        Op::Dense { out_features, .. } => (rank - 1, *out_features),
        _ => return Err(format!("'{}' is not a Conv or Dense", node.name)),
    };
    let mut group = Group {
        channels,
        members: Vec::new(),
        producers: BTreeSet::new(),
        passes: BTreeSet::new(),
        consumers: BTreeSet::new(),
    };
    let mut queue = VecDeque::from([Member {
        tensor: node.output,
        axis,
        inner: 1,
    }]);
    while let Some(m) = queue.pop_front() {
        if let Some(seen) = group.member(m.tensor) {
            if seen != m {
                return Err(format!(
                    "tensor '{}' carries the channels on two axes",
                    g.tensors[m.tensor].name
                ));
            }
            continue;
        }
        group.members.push(m);
        let t = &g.tensors[m.tensor];
        if t.value.is_some() || g.inputs.contains(&m.tensor) {
            return Err(format!("the channels reach the graph input '{}'", t.name));
        }
        if g.outputs.contains(&m.tensor) {
            return Err(format!("the channels reach the graph output '{}'", t.name));
        }
        if t.shape
            .get(m.axis)
            .is_none_or(|&d| d % (channels * m.inner) != 0)
        {
            return Err(format!(
                "tensor '{}' {:?} does not hold {channels} channels on axis {}",
                t.name, t.shape, m.axis
            ));
        }
        let rank = t.shape.len();
        // Where the tensor comes from.
        let Some(p) = g.producer(m.tensor) else {
            return Err(format!("tensor '{}' has no producer", t.name));
        };
        match &g.nodes[p].op {
            Op::Conv(c) if c.group == 1 => {
                if channel_axis(c.data_format, rank) != m.axis || m.inner != 1 {
                    return Err(format!(
                        "'{}' writes the channels on another axis",
                        g.nodes[p].name
                    ));
                }
                group.producers.insert(p);
            }
            Op::Dense { .. } if m.axis == rank - 1 && m.inner == 1 => {
                group.producers.insert(p);
            }
            // A flatten reached from its input, below.
            Op::Reshape if group.passes.contains(&p) => {}
            _ => {
                queue.extend(pass_members(g, p, m.axis, m.inner)?);
                group.passes.insert(p);
            }
        }
        // Where it goes.
        for c in g.consumers(m.tensor) {
            let cn = &g.nodes[c];
            match &cn.op {
                Op::Conv(cv) if cv.group == 1 => {
                    if channel_axis(cv.data_format, rank) != m.axis || m.inner != 1 {
                        return Err(format!("'{}' reads the channels on another axis", cn.name));
                    }
                    group.consumers.insert(c);
                }
                Op::Dense { .. } if m.axis == rank - 1 => {
                    group.consumers.insert(c);
                }
                Op::Reshape => {
                    // Only a flatten `[N, ...] -> [N, F]` (row-major, logical order) into Dense layers.
                    let out = &g.tensors[cn.output];
                    let flat = out.shape.len() == 2
                        && rank >= 2
                        && m.axis >= 1
                        && out.shape[0] == t.shape[0]
                        && out.shape[1] == t.shape[1..].iter().product::<usize>();
                    if !flat {
                        return Err(format!(
                            "'{}' reshapes the channels {:?} -> {:?}",
                            cn.name, t.shape, out.shape
                        ));
                    }
                    let inner = m.inner * t.shape[m.axis + 1..].iter().product::<usize>();
                    queue.push_back(Member {
                        tensor: cn.output,
                        axis: 1,
                        inner,
                    });
                    group.passes.insert(c);
                }
                _ => {
                    queue.extend(pass_members(g, c, m.axis, m.inner)?);
                    group.passes.insert(c);
                }
            }
        }
    }
    if group.consumers.is_empty() {
        return Err(format!(
            "the channels of '{}' are read by no Conv or Dense",
            node.name
        ));
    }
    Ok(group)
}

/// Every prunable channel group of `g`, and a line for each channel set that is not.
fn find_groups(g: &Graph) -> (Vec<Group>, Vec<String>) {
    let mut groups: Vec<Group> = Vec::new();
    let mut refused = Vec::new();
    let mut done: HashSet<TensorId> = HashSet::new();
    for (i, n) in g.nodes.iter().enumerate() {
        let seeds =
            matches!(&n.op, Op::Conv(c) if c.group == 1) || matches!(n.op, Op::Dense { .. });
        if !seeds || done.contains(&n.output) {
            continue;
        }
        match grow(g, i) {
            Ok(group) => {
                done.extend(group.members.iter().map(|m| m.tensor));
                groups.push(group);
            }
            Err(why) => {
                done.insert(n.output);
                refused.push(format!("output channels of '{}': {why}", n.name));
            }
        }
    }
    (groups, refused)
}

/// `F` must be a fraction Kiln can apply.
pub fn check_fraction(f: f64) -> Result<()> {
    if !(0.0..=MAX_FRACTION).contains(&f) {
        return Err(input(format!(
            "--prune {f}: the fraction of prunable channels to remove must be between 0 and {MAX_FRACTION} (every \
             pruned layer keeps at least a quarter of its channels); e.g. --prune 0.3"
        )));
    }
    Ok(())
}

/// How many of `channels` a fraction `f` removes. `unit` > 1: the kept count stays a multiple of it (the nearest
/// one), as the fast depthwise int8 kernel needs a multiple of 4 channels.
fn removed_count(channels: usize, f: f64, unit: usize) -> usize {
    let keep_min = channels.div_ceil(4).max(1);
    let drop = ((f * channels as f64).round() as usize).min(channels - keep_min);
    if unit <= 1 || !channels.is_multiple_of(unit) || channels < 2 * unit {
        return drop;
    }
    let kept = channels - drop;
    let rounded = ((kept + unit / 2) / unit * unit).max(keep_min.next_multiple_of(unit));
    channels - rounded.min(channels)
}

/// Runs `g` in float on the host and returns, for each tensor of `want`, its logical values per sample.
fn activations(
    g: &Graph,
    samples: &[Vec<ArrayD<f32>>],
    want: &[TensorId],
) -> Result<HashMap<TensorId, Vec<Vec<f32>>>> {
    let program = crate::lower::lower(g)?;
    let float = emit::emit(&program, Precision::F32, None, "prune")?;
    let buf = ModelBuf::new(&float.bytes);
    let model = buf.model()?;
    let defs: Vec<_> = model.tensors().collect();
    let mut index: HashMap<u16, TensorId> = HashMap::new();
    for (&pid, &ti) in &float.tensor_index {
        if let Some(&ir) = program.ir_of.get(&pid) {
            if want.contains(&ir) {
                index.insert(ti, ir);
            }
        }
    }
    let mut out: HashMap<TensorId, Vec<Vec<f32>>> = want.iter().map(|&t| (t, Vec::new())).collect();
    let mut runner = Runner::new(&model);
    for s in samples {
        runner.run(s, |v| {
            let (Some(&ir), Some(def)) = (index.get(&v.tensor), defs.get(v.tensor as usize)) else {
                return;
            };
            let values: Vec<f32> = v
                .bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let logical = to_logical(values, def);
            if let Some(list) = out.get_mut(&ir) {
                list.push(logical.iter().copied().collect());
            }
        })?;
    }
    for (&t, v) in &out {
        if v.len() != samples.len() {
            return Err(Error::Internal(anyhow::anyhow!(
                "pruning: no activations observed for tensor '{}'",
                g.tensors[t].name
            )));
        }
    }
    Ok(out)
}

/// The tensor whose values `t` holds in the same row-major order (through Reshapes, which move no data).
fn data_source(g: &Graph, mut t: TensorId) -> TensorId {
    while let Some(p) = g.producer(t) {
        if g.nodes[p].op != Op::Reshape {
            break;
        }
        t = g.nodes[p].inputs[0];
    }
    t
}

/// Rows of a Conv or Dense layer's im2col view: each row is what one output position multiplies by a weight row.
struct Patches {
    kind: PatchKind,
    rows: usize,
    k: usize,
}

enum PatchKind {
    Dense,
    Conv {
        cf: bool,
        c: usize,
        h: usize,
        w: usize,
        oh: usize,
        ow: usize,
        kh: usize,
        kw: usize,
        sh: usize,
        sw: usize,
        dh: usize,
        dw: usize,
        pt: usize,
        pl: usize,
    },
}

impl Patches {
    fn new(op: &Op, in_shape: &[usize], out_shape: &[usize]) -> Option<Patches> {
        match op {
            Op::Dense { in_features, .. } => Some(Patches {
                kind: PatchKind::Dense,
                rows: in_shape.iter().product::<usize>() / (*in_features).max(1),
                k: *in_features,
            }),
            Op::Conv(cv) if cv.group == 1 => {
                let rank = in_shape.len();
                let cf = cv.data_format == DataFormat::ChannelsFirst;
                let ax = channel_axis(cv.data_format, rank);
                let spatial = |s: &[usize]| -> (usize, usize) {
                    let sp: Vec<usize> = (1..rank).filter(|&a| a != ax).map(|a| s[a]).collect();
                    if sp.len() == 2 {
                        (sp[0], sp[1])
                    } else {
                        (1, sp.first().copied().unwrap_or(1))
                    }
                };
                let (h, w) = spatial(in_shape);
                let (oh, ow) = spatial(out_shape);
                let two = cv.kernel.len() == 2;
                let pick = |v: &[usize], default: usize| -> (usize, usize) {
                    if two {
                        (v[0], v[1])
                    } else {
                        (default, v.first().copied().unwrap_or(default))
                    }
                };
                let (kh, kw) = pick(&cv.kernel, 1);
                let (sh, sw) = pick(&cv.strides, 1);
                let (dh, dw) = pick(&cv.dilations, 1);
                let (pt, pl) = pick(&cv.pads_begin, 0);
                let c = in_shape[ax];
                Some(Patches {
                    kind: PatchKind::Conv {
                        cf,
                        c,
                        h,
                        w,
                        oh,
                        ow,
                        kh,
                        kw,
                        sh,
                        sw,
                        dh,
                        dw,
                        pt,
                        pl,
                    },
                    rows: in_shape[0] * oh * ow,
                    k: kh * kw * c,
                })
            }
            _ => None,
        }
    }

    /// Writes row `r` of one sample's input `x` into `out` (length `k`, OHWI order: taps, then channels).
    fn row(&self, x: &[f32], r: usize, out: &mut [f32]) {
        match self.kind {
            PatchKind::Dense => out.copy_from_slice(&x[r * self.k..(r + 1) * self.k]),
            PatchKind::Conv {
                cf,
                c,
                h,
                w,
                oh,
                ow,
                kh,
                kw,
                sh,
                sw,
                dh,
                dw,
                pt,
                pl,
            } => {
                let (b, oy, ox) = (r / (oh * ow), (r / ow) % oh, r % ow);
                for ky in 0..kh {
                    for kx in 0..kw {
                        let tap = &mut out[(ky * kw + kx) * c..(ky * kw + kx + 1) * c];
                        let iy = (oy * sh + ky * dh) as isize - pt as isize;
                        let ix = (ox * sw + kx * dw) as isize - pl as isize;
                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                            tap.fill(0.0);
                            continue;
                        }
                        let (iy, ix) = (iy as usize, ix as usize);
                        for (ch, v) in tap.iter_mut().enumerate() {
                            *v = if cf {
                                x[((b * c + ch) * h + iy) * w + ix]
                            } else {
                                x[((b * h + iy) * w + ix) * c + ch]
                            };
                        }
                    }
                }
            }
        }
    }
}

/// Weights `[out][k]`, bias and output count of a layer.
type Layer<'a> = (&'a [f32], Option<&'a [f32]>, usize);

/// Weights of a Conv (groups 1) or Dense as `[out][k]` rows, and the bias.
fn weights_of(op: &Op) -> Option<Layer<'_>> {
    match op {
        Op::Conv(c) => Some((&c.weights, c.bias.as_deref(), c.out_channels)),
        Op::Dense {
            weights,
            bias,
            out_features,
            ..
        } => Some((weights, bias.as_deref(), *out_features)),
        _ => None,
    }
}

/// Solves `A X = B` for symmetric positive definite `A` (`n x n`, row-major) and `B` (`n x m`, row-major) by
/// Cholesky factorisation, in place: `B` becomes `X`. `None` when `A` is not positive definite.
pub fn solve_spd(a: &mut [f64], n: usize, b: &mut [f64], m: usize) -> Option<()> {
    // A = L L^T, L stored in the lower triangle of `a`.
    for j in 0..n {
        let mut d = a[j * n + j];
        for k in 0..j {
            d -= a[j * n + k] * a[j * n + k];
        }
        if d <= 0.0 || !d.is_finite() {
            return None;
        }
        let d = d.sqrt();
        a[j * n + j] = d;
        for i in j + 1..n {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = s / d;
        }
    }
    // L Y = B, then L^T X = Y.
    for i in 0..n {
        for k in 0..i {
            let l = a[i * n + k];
            for c in 0..m {
                b[i * m + c] -= l * b[k * m + c];
            }
        }
        for c in 0..m {
            b[i * m + c] /= a[i * n + i];
        }
    }
    for i in (0..n).rev() {
        for k in i + 1..n {
            let l = a[k * n + i];
            for c in 0..m {
                b[i * m + c] -= l * b[k * m + c];
            }
        }
        for c in 0..m {
            b[i * m + c] /= a[i * n + i];
        }
    }
    Some(())
}

/// Ridge least squares towards a prior: the `X` (`k x m`) minimising `||Y - Z X||^2 + lambda ||X - X0||^2`, given
/// `A = Z^T Z` (`k x k`) and `B = Z^T Y` (`k x m`). `None` when the system is singular.
pub fn ridge(
    mut a: Vec<f64>,
    mut b: Vec<f64>,
    k: usize,
    m: usize,
    lambda: f64,
    prior: &[f64],
) -> Option<Vec<f64>> {
    for i in 0..k {
        a[i * k + i] += lambda;
        for c in 0..m {
            b[i * m + c] += lambda * prior[i * m + c];
        }
    }
    solve_spd(&mut a, k, &mut b, m)?;
    Some(b)
}

/// How one consumer is refitted: which original columns and rows survive.
struct Refit {
    node: usize,
    /// Original weight column of each current column.
    cols: Vec<usize>,
}

/// Refits consumer `r` of the pruned graph `g` so its pre-activation output matches the original node's (in `g0`)
/// on the calibration data: `x0` the original input per sample, `x1` the pruned network's.
fn refit(
    g0: &Graph,
    g: &mut Graph,
    r: &Refit,
    out_rows: &[usize],
    x0: &[Vec<f32>],
    x1: &[Vec<f32>],
) -> Result<()> {
    let n0 = &g0.nodes[r.node];
    let n1 = &g.nodes[r.node];
    let internal = |m: &str| Error::Internal(anyhow::anyhow!("pruning '{}': {m}", n0.name));
    let p0 = Patches::new(
        &n0.op,
        &g0.tensors[n0.inputs[0]].shape,
        &g0.tensors[n0.output].shape,
    )
    .ok_or_else(|| internal("not a Conv or Dense"))?;
    let p1 = Patches::new(
        &n1.op,
        &g.tensors[n1.inputs[0]].shape,
        &g.tensors[n1.output].shape,
    )
    .ok_or_else(|| internal("not a Conv or Dense"))?;
    let (w0, b0, _) = weights_of(&n0.op).ok_or_else(|| internal("no weights"))?;
    if p0.rows != p1.rows || r.cols.len() != p1.k {
        return Err(internal("geometry changed"));
    }
    let (k1, m) = (p1.k + 1, out_rows.len());
    let total = x0.len() * p0.rows;
    let step = total.div_ceil(MAX_ROWS).max(1);
    let mut a = vec![0f64; k1 * k1];
    let mut b = vec![0f64; k1 * m];
    let mut mean0 = vec![0f64; p0.k];
    let (mut z0, mut z1, mut y) = (vec![0f32; p0.k], vec![0f32; p1.k], vec![0f64; m]);
    let mut zz = vec![0f64; k1];
    let mut rows = 0usize;
    for (s, (xs0, xs1)) in x0.iter().zip(x1).enumerate() {
        for row in 0..p0.rows {
            if (s * p0.rows + row) % step != 0 {
                continue;
            }
            rows += 1;
            p0.row(xs0, row, &mut z0);
            p1.row(xs1, row, &mut z1);
            for (mo, &o) in out_rows.iter().enumerate() {
                let wr = &w0[o * p0.k..(o + 1) * p0.k];
                let dot: f64 = wr.iter().zip(&z0).map(|(&w, &x)| w as f64 * x as f64).sum();
                y[mo] = dot + b0.map_or(0.0, |b| b[o] as f64);
            }
            for (acc, &v) in mean0.iter_mut().zip(&z0) {
                *acc += v as f64;
            }
            for (d, &v) in zz.iter_mut().zip(&z1) {
                *d = v as f64;
            }
            zz[k1 - 1] = 1.0;
            for i in 0..k1 {
                let zi = zz[i];
                if zi == 0.0 {
                    continue;
                }
                let arow = &mut a[i * k1..(i + 1) * k1];
                for j in i..k1 {
                    arow[j] += zi * zz[j];
                }
                let brow = &mut b[i * m..(i + 1) * m];
                for (bv, &yv) in brow.iter_mut().zip(&y) {
                    *bv += zi * yv;
                }
            }
        }
    }
    for i in 0..k1 {
        for j in 0..i {
            a[i * k1 + j] = a[j * k1 + i];
        }
    }
    let rows_f = rows.max(1) as f64;
    mean0.iter_mut().for_each(|v| *v /= rows_f);
    // Prior: the original weights on the kept columns; the removed columns' mean contribution in the bias.
    let kept: HashSet<usize> = r.cols.iter().copied().collect();
    let mut prior = vec![0f64; k1 * m];
    for (mo, &o) in out_rows.iter().enumerate() {
        let wr = &w0[o * p0.k..(o + 1) * p0.k];
        for (j, &c) in r.cols.iter().enumerate() {
            prior[j * m + mo] = wr[c] as f64;
        }
        let lost: f64 = (0..p0.k)
            .filter(|c| !kept.contains(c))
            .map(|c| wr[c] as f64 * mean0[c])
            .sum();
        prior[(k1 - 1) * m + mo] = b0.map_or(0.0, |b| b[o] as f64) + lost;
    }
    let trace: f64 = (0..p1.k).map(|i| a[i * k1 + i]).sum::<f64>() / p1.k.max(1) as f64;
    let scale = if trace > 0.0 { trace } else { 1.0 };
    let lambda = scale * (1e-3 + p1.k as f64 / rows_f);
    let theta = ridge(a, b, k1, m, lambda, &prior).unwrap_or(prior);
    let new_w: Vec<f32> = (0..m)
        .flat_map(|mo| (0..p1.k).map(move |j| (mo, j)))
        .map(|(mo, j)| theta[j * m + mo] as f32)
        .collect();
    let new_b: Vec<f32> = (0..m).map(|mo| theta[(k1 - 1) * m + mo] as f32).collect();
    match &mut g.nodes[r.node].op {
        Op::Conv(c) => {
            c.weights = new_w;
            c.bias = Some(new_b);
        }
        Op::Dense { weights, bias, .. } => {
            *weights = new_w;
            *bias = Some(new_b);
        }
        _ => return Err(internal("not a Conv or Dense")),
    }
    Ok(())
}

/// Keeps blocks `keep` of `v` cut into `blocks` equal blocks.
fn keep_blocks(v: &[f32], blocks: usize, keep: &[usize]) -> Vec<f32> {
    let per = v.len() / blocks.max(1);
    keep.iter()
        .flat_map(|&i| v[i * per..(i + 1) * per].iter().copied())
        .collect()
}

fn keep_items(v: &[f32], keep: &[usize]) -> Vec<f32> {
    keep.iter().map(|&i| v[i]).collect()
}

/// Removes every channel of `group` not in `keep` (sorted) from `g`. Records, per node, the original output rows
/// left (`rows`) and, per consumer, the original weight columns left (`cols`).
fn apply(
    g: &mut Graph,
    group: &Group,
    keep: &[usize],
    rows: &mut HashMap<usize, Vec<usize>>,
    cols: &mut HashMap<usize, Vec<usize>>,
) {
    let ch = group.channels;
    let kept: HashSet<usize> = keep.iter().copied().collect();
    let on_axis = |m: &Member, len: usize| -> Vec<usize> {
        (0..len)
            .filter(|&i| kept.contains(&((i / m.inner) % ch)))
            .collect()
    };
    // Consumers first, while their input shapes still say how the channels lie.
    for &n in &group.consumers {
        let input = g.nodes[n].inputs[0];
        let Some(m) = group.member(input) else {
            continue;
        };
        let in_shape = g.tensors[input].shape.clone();
        match &mut g.nodes[n].op {
            Op::Conv(c) => {
                let taps = kernel_size(c);
                let cin = c.weights.len() / (c.out_channels * taps).max(1);
                let col: Vec<usize> = (0..c.out_channels * taps)
                    .flat_map(|block| keep.iter().map(move |&k| block * cin + k))
                    .collect();
                c.weights = col.iter().map(|&i| c.weights[i]).collect();
                cols.insert(
                    n,
                    (0..taps)
                        .flat_map(|t| keep.iter().map(move |&k| t * cin + k))
                        .collect(),
                );
            }
            Op::Dense {
                weights,
                in_features,
                out_features,
                ..
            } => {
                let features = on_axis(&m, in_shape[m.axis]);
                let f = *in_features;
                *weights = (0..*out_features)
                    .flat_map(|o| features.iter().map(move |&j| o * f + j))
                    .map(|i| weights[i])
                    .collect();
                *in_features = features.len();
                cols.insert(n, features);
            }
            _ => {}
        }
    }
    for &n in &group.producers {
        let cur = rows.get(&n).cloned();
        match &mut g.nodes[n].op {
            Op::Conv(c) => {
                c.weights = keep_blocks(&c.weights, c.out_channels, keep);
                c.bias = c.bias.as_ref().map(|b| keep_items(b, keep));
                c.out_channels = keep.len();
            }
            Op::Dense {
                weights,
                bias,
                out_features,
                ..
            } => {
                *weights = keep_blocks(weights, *out_features, keep);
                *bias = bias.as_ref().map(|b| keep_items(b, keep));
                *out_features = keep.len();
            }
            _ => {}
        }
        let orig: Vec<usize> = match cur {
            Some(c) => keep.iter().map(|&i| c[i]).collect(),
            None => keep.to_vec(),
        };
        rows.insert(n, orig);
    }
    for &n in &group.passes {
        let out_rank = g.tensors[g.nodes[n].output].shape.len();
        let Some(m) = group.member(g.nodes[n].output) else {
            continue;
        };
        let out_dim = g.tensors[g.nodes[n].output].shape[m.axis];
        let inputs = g.nodes[n].inputs.clone();
        match &mut g.nodes[n].op {
            Op::Conv(c) => {
                c.weights = keep_blocks(&c.weights, c.out_channels, keep);
                c.bias = c.bias.as_ref().map(|b| keep_items(b, keep));
                c.out_channels = keep.len();
                c.group = keep.len();
            }
            Op::Binary { .. } => {
                for (slot, &i) in inputs.iter().enumerate() {
                    let t = g.tensors[i].clone();
                    let Some(value) = &t.value else { continue };
                    let lead = out_rank - t.shape.len().min(out_rank);
                    if m.axis < lead || t.shape[m.axis - lead] != out_dim {
                        continue;
                    }
                    let a = m.axis - lead;
                    let inner: usize = t.shape[a + 1..].iter().product();
                    let outer: usize = t.shape[..a].iter().product();
                    let sliced: Vec<f32> = (0..outer)
                        .flat_map(|o| keep.iter().map(move |&k| (o, k)))
                        .flat_map(|(o, k)| {
                            value[(o * out_dim + k) * inner..(o * out_dim + k + 1) * inner]
                                .iter()
                                .copied()
                        })
                        .collect();
                    let mut shape = t.shape.clone();
                    shape[a] = keep.len();
                    let id = g.add_tensor(format!("{}.pruned", t.name), shape, Some(sliced));
                    g.nodes[n].inputs[slot] = id;
                }
            }
            _ => {}
        }
    }
    for m in &group.members {
        let d = &mut g.tensors[m.tensor].shape[m.axis];
        *d = *d / ch * keep.len();
    }
}

fn layer_shape(op: &Op) -> Option<(usize, usize, usize)> {
    match op {
        Op::Conv(c) => Some((conv_in_channels(c), c.out_channels, c.weights.len())),
        Op::Dense {
            in_features,
            out_features,
            weights,
            ..
        } => Some((*in_features, *out_features, weights.len())),
        _ => None,
    }
}

/// Prunes fraction `f` of every prunable channel group of `g` (in place), choosing and refitting on `samples`.
pub fn prune(g: &mut Graph, f: f64, samples: &[Vec<ArrayD<f32>>]) -> Result<PruneReport> {
    check_fraction(f)?;
    let (groups, not_prunable) = find_groups(g);
    let g0 = g.clone();
    let picked: Vec<Vec<ArrayD<f32>>> = if samples.len() > MAX_SAMPLES {
        (0..MAX_SAMPLES)
            .map(|i| samples[i * samples.len() / MAX_SAMPLES].clone())
            .collect()
    } else {
        samples.to_vec()
    };
    let consumers: BTreeSet<usize> = groups
        .iter()
        .flat_map(|gr| gr.consumers.iter().copied())
        .collect();
    let mut keeps: Vec<Vec<usize>> = groups.iter().map(|gr| (0..gr.channels).collect()).collect();
    let active = f > 0.0 && !groups.is_empty();
    let mut x0 = HashMap::new();
    if active {
        let sources: Vec<TensorId> = consumers
            .iter()
            .map(|&n| data_source(g, g.nodes[n].inputs[0]))
            .collect();
        x0 = activations(g, &picked, &sources)?;
        for (gi, group) in groups.iter().enumerate() {
            let mut score = vec![0f64; group.channels];
            for &n in &group.consumers {
                let input = g.nodes[n].inputs[0];
                let Some(m) = group.member(input) else {
                    continue;
                };
                let shape = &g.tensors[input].shape;
                let Some((w, _, outs)) = weights_of(&g.nodes[n].op) else {
                    continue;
                };
                let len = shape[m.axis];
                let inner_axis: usize = shape[m.axis + 1..].iter().product();
                // Mean square of each index along the axis, over samples and every other axis.
                let mut ms = vec![0f64; len];
                let data = &x0[&data_source(g, input)];
                for x in data {
                    for (e, &v) in x.iter().enumerate() {
                        ms[(e / inner_axis) % len] += (v as f64).powi(2);
                    }
                }
                let per = (data.len() * shape.iter().product::<usize>() / len.max(1)).max(1) as f64;
                // Squared weight norm on each index along the axis.
                let mut wn = vec![0f64; len];
                let k = w.len() / outs.max(1);
                for row in w.chunks(k.max(1)) {
                    for (j, &v) in row.iter().enumerate() {
                        // Conv columns are (tap, channel); Dense columns are features along the axis.
                        wn[j % len] += (v as f64).powi(2);
                    }
                }
                for i in 0..len {
                    score[(i / m.inner) % group.channels] += ms[i] / per * wn[i];
                }
            }
            let depthwise = group
                .passes
                .iter()
                .any(|&n| matches!(&g.nodes[n].op, Op::Conv(c) if is_depthwise(c)));
            let unit = if depthwise || group.channels >= 32 {
                4
            } else {
                1
            };
            let drop = removed_count(group.channels, f, unit);
            let mut order: Vec<usize> = (0..group.channels).collect();
            order.sort_by(|&a, &b| score[a].total_cmp(&score[b]).then(a.cmp(&b)));
            let mut keep: Vec<usize> = order[drop..].to_vec();
            keep.sort_unstable();
            keeps[gi] = keep;
        }
    }
    let mut rows: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut cols: HashMap<usize, Vec<usize>> = HashMap::new();
    if active {
        for (group, keep) in groups.iter().zip(&keeps) {
            if keep.len() < group.channels {
                apply(g, group, keep, &mut rows, &mut cols);
            }
        }
        // Refit every consumer whose inputs lost channels, in graph order, on what the pruned network feeds it.
        for &n in &consumers {
            let Some(c) = cols.get(&n) else { continue };
            let input = data_source(g, g.nodes[n].inputs[0]);
            let x1 = activations(g, &picked, &[input])?;
            let out_rows: Vec<usize> = match rows.get(&n) {
                Some(r) => r.clone(),
                None => (0..weights_of(&g.nodes[n].op).map_or(0, |w| w.2)).collect(),
            };
            let r = Refit {
                node: n,
                cols: c.clone(),
            };
            let orig_input = data_source(&g0, g0.nodes[n].inputs[0]);
            refit(&g0, g, &r, &out_rows, &x0[&orig_input], &x1[&input])?;
        }
    }
    let layers = g0
        .nodes
        .iter()
        .zip(&g.nodes)
        .enumerate()
        .filter_map(|(i, (a, b))| {
            let (ia, oa, wa) = layer_shape(&a.op)?;
            let (ib, ob, wb) = layer_shape(&b.op)?;
            let kept: HashSet<usize> = rows
                .get(&i)
                .map_or_else(|| (0..oa).collect(), |r| r.iter().copied().collect());
            Some(LayerReport {
                name: a.name.clone(),
                kind: a.op.kind_name(),
                in_channels: [ia, ib],
                out_channels: [oa, ob],
                macs: [g0.macs(a), g.macs(b)],
                weights: [wa, wb],
                removed_outputs: (0..oa).filter(|o| !kept.contains(o)).collect(),
                refitted: cols.contains_key(&i),
            })
        })
        .collect();
    let names = |set: &BTreeSet<usize>| {
        set.iter()
            .map(|&n| g0.nodes[n].name.clone())
            .collect::<Vec<_>>()
    };
    let group_reports: Vec<GroupReport> = groups
        .iter()
        .zip(&keeps)
        .map(|(gr, keep)| GroupReport {
            channels: gr.channels,
            removed: (0..gr.channels).filter(|c| !keep.contains(c)).collect(),
            producers: names(&gr.producers),
            consumers: names(&gr.consumers),
            coupled: gr.producers.len() > 1,
        })
        .collect();
    Ok(PruneReport {
        fraction: f,
        method: format!(
            "the same fraction of each channel group (each keeps >= 1/4), lowest E[x^2]*||W||^2 first; consumers \
             refitted by ridge least squares on {} calibration samples",
            picked.len()
        ),
        prunable_channels: groups.iter().map(|gr| gr.channels).sum(),
        removed_channels: group_reports.iter().map(|gr| gr.removed.len()).sum(),
        before: Sizes::default(),
        after: Sizes::default(),
        groups: group_reports,
        layers,
        not_prunable,
        unstructured: UNSTRUCTURED,
        search: Vec::new(),
    })
}

impl Sizes {
    /// The sizes of an emitted model of graph `g`.
    pub fn of(g: &Graph, e: &Emitted) -> Sizes {
        Sizes {
            macs: e.macs,
            weights: g
                .nodes
                .iter()
                .filter_map(|n| layer_shape(&n.op))
                .map(|s| s.2)
                .sum(),
            weight_bytes: e.weight_bytes,
            bias_bytes: e.bias_bytes,
            arena_bytes: e.arena_bytes,
            file_bytes: e.bytes.len(),
        }
    }

    /// Sizes of `g` emitted at `precision` without calibration (placeholder ranges: sizes do not depend on them).
    fn estimate(g: &Graph, precision: Precision) -> Result<Sizes> {
        let program = crate::lower::lower(g)?;
        let ranges: emit::Ranges = (0..program.tensors.len())
            .map(|p| (p, (-1.0, 1.0)))
            .collect();
        let e = emit::emit(&program, precision, Some(&ranges), "unpruned")?;
        Ok(Sizes::of(g, &e))
    }
}

/// `kiln compile --prune F`: prunes `g` before lowering, choosing and refitting on the `--calib` data.
pub fn prune_for_compile(
    path: &Path,
    g: &mut Graph,
    f: f64,
    opts: &Options,
) -> Result<PruneReport> {
    check_fraction(f)?;
    // A quantised model's scales belong to its channels as trained; removing channels and refitting the next
    // layers in float would leave them describing other weights.
    if !g.weight_scales.is_empty() || g.tensors.iter().any(|t| t.quant.is_some()) {
        return Err(input(format!(
            "{}: --prune works on float models; this one is already quantised (QuantizeLinear/DequantizeLinear),              and its scales would no longer match its pruned weights",
            path.display()
        )));
    }
    let Some(calib) = &opts.calib else {
        return Err(input(format!(
            "{}: --prune needs calibration data (--calib DATA.npy): it ranks channels and refits the next layers on \
             it",
            path.display()
        )));
    };
    let before = Sizes::estimate(g, opts.precision)?;
    let program = crate::lower::lower(g)?;
    let samples = compile::load_samples(calib, &program)?;
    let mut report = prune(g, f, &samples)?;
    report.before = before;
    Ok(report)
}

/// Accuracy and MACs of the model compiled at each pruning fraction: `(fraction, top-1 0..1, MACs)`. For reports
/// (an accuracy-versus-size curve).
pub fn accuracy_curve(
    path: &Path,
    opts: &Options,
    data: &Path,
    fractions: &[f64],
) -> Result<Vec<(f64, f64, u64)>> {
    let g = compile::optimized_graph(path)?;
    let (x, y) = read_labelled(data)?;
    let what = data.display().to_string();
    fractions
        .iter()
        .map(|&f| {
            let c = compile::compile_graph(path, g.clone(), opts, Some(f))?;
            Ok((f, kiln_top1(&c.bytes, &x, &y, &what)?, c.report.macs))
        })
        .collect()
}

/// `kiln compile --prune-budget P --eval DATA`: the most pruning (binary search over the fraction, 1/64 of
/// [`MAX_FRACTION`] resolution) whose top-1 on `data` stays within `budget` percentage points of the unpruned model
/// at the same precision. `on_probe` sees every probe as it is measured.
pub fn compile_within_budget(
    path: &Path,
    opts: &Options,
    budget: f64,
    data: &Path,
    mut on_probe: impl FnMut(&Probe),
) -> Result<Compiled> {
    if !budget.is_finite() || budget < 0.0 {
        return Err(input(format!(
            "--prune-budget {budget}: give the accuracy loss allowed, in percentage points (>= 0), e.g. 1.0"
        )));
    }
    let g = compile::optimized_graph(path)?;
    let (x, y) = read_labelled(data)?;
    let what = data.display().to_string();
    const STEPS: u64 = 6;
    let bar = indicatif::ProgressBar::new(STEPS + 2);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} ({eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message("pruning");
    let mut probes: Vec<Probe> = Vec::new();
    let mut baseline = None;
    let mut probe = |f: f64, probes: &mut Vec<Probe>| -> Result<(Compiled, bool)> {
        let c = bar.suspend(|| compile::compile_graph(path, g.clone(), opts, Some(f)))?;
        let accuracy = bar.suspend(|| kiln_top1(&c.bytes, &x, &y, &what))?;
        let base = *baseline.get_or_insert(accuracy);
        let within = (base - accuracy) * 100.0 <= budget + 1e-9;
        let p = Probe {
            fraction: f,
            accuracy,
            macs: c.report.macs,
            weight_bytes: c.report.weight_bytes,
            within_budget: within,
        };
        bar.suspend(|| on_probe(&p));
        bar.inc(1);
        probes.push(p);
        Ok((c, within))
    };
    let (mut best, _) = probe(0.0, &mut probes)?;
    let (top, ok) = probe(MAX_FRACTION, &mut probes)?;
    if ok {
        best = top;
    } else {
        let (mut lo, mut hi) = (0.0, MAX_FRACTION);
        for _ in 0..STEPS {
            let mid = (lo + hi) / 2.0;
            let (c, ok) = probe(mid, &mut probes)?;
            if ok {
                lo = mid;
                best = c;
            } else {
                hi = mid;
            }
        }
    }
    bar.finish_and_clear();
    if let Some(p) = &mut best.report.pruning {
        p.search = probes;
    }
    Ok(best)
}
