//! Graph rewrites done once, in float, before lowering: fold per-channel scales and shifts (BatchNormalization
//! after tract's decomposition, Mul/Add by constants) into the producing convolution or dense layer, and fuse
//! Relu / Clip into the op before them.

use crate::ir::{Activation, BinaryKind, DataFormat, Graph, Op, TensorId, UnaryKind};

/// Runs every rewrite to a fixed point.
pub fn optimize(g: &mut Graph) {
    while fold_once(g) {}
}

/// The only consumer of `t`, if it has exactly one and is not a graph output.
fn sole_consumer(g: &Graph, t: TensorId) -> Option<usize> {
    if g.outputs.contains(&t) {
        return None;
    }
    let mut it = g.consumers(t);
    let first = it.next()?;
    if it.next().is_some() || g.nodes[first].inputs.iter().filter(|&&i| i == t).count() != 1 {
        return None;
    }
    Some(first)
}

/// If `c` is a constant that varies at most along axis `channel_axis` of a rank-`rank` tensor with `channels`
/// channels, its value per channel.
fn per_channel(
    g: &Graph,
    c: TensorId,
    rank: usize,
    channel_axis: usize,
    channels: usize,
) -> Option<Vec<f32>> {
    let t = &g.tensors[c];
    let value = t.value.as_ref()?;
    if t.shape.len() > rank {
        return None;
    }
    let offset = rank - t.shape.len();
    for (i, &d) in t.shape.iter().enumerate() {
        let axis = i + offset;
        if d != 1 && !(axis == channel_axis && d == channels) {
            return None;
        }
    }
    Some(if value.len() == 1 {
        vec![value[0]; channels]
    } else {
        value.clone()
    })
}

/// Channel axis and count of the tensor a Conv or Dense node writes.
fn channel_axis(g: &Graph, node: usize) -> Option<(usize, usize)> {
    let n = &g.nodes[node];
    let rank = g.tensors[n.output].shape.len();
    match &n.op {
        Op::Conv(c) => Some((
            if c.data_format == DataFormat::ChannelsFirst {
                1
            } else {
                rank - 1
            },
            c.out_channels,
        )),
        Op::Dense { out_features, .. } => Some((rank - 1, *out_features)),
        _ => None,
    }
}

fn fused_act(op: &Op) -> Option<Activation> {
    match op {
        Op::Conv(c) => Some(c.act),
        Op::Dense { act, .. } | Op::Binary { act, .. } => Some(*act),
        _ => None,
    }
}

fn act_of(op: &mut Op) -> Option<&mut Activation> {
    match op {
        Op::Conv(c) => Some(&mut c.act),
        Op::Dense { act, .. } => Some(act),
        Op::Binary { act, .. } => Some(act),
        _ => None,
    }
}

fn fold_once(g: &mut Graph) -> bool {
    for i in 0..g.nodes.len() {
        let out = g.nodes[i].output;
        let Some(j) = sole_consumer(g, out) else {
            continue;
        };
        let rank = g.tensors[out].shape.len();
        // The consumer's output must have the producer's shape (no broadcasting up).
        if g.tensors[g.nodes[j].output].shape != g.tensors[out].shape {
            continue;
        }
        let merged = match (&g.nodes[j].op, channel_axis(g, i)) {
            (
                Op::Binary {
                    kind: kind @ (BinaryKind::Mul | BinaryKind::Add | BinaryKind::Sub),
                    act,
                },
                Some((axis, ch)),
            ) if *act == Activation::None
                && fused_act(&g.nodes[i].op) == Some(Activation::None) =>
            {
                let (kind, inputs) = (*kind, g.nodes[j].inputs.clone());
                // `out op c` or, for Add/Mul, `c op out`.
                let other = if inputs[0] == out {
                    inputs[1]
                } else {
                    inputs[0]
                };
                if kind == BinaryKind::Sub && inputs[0] != out {
                    continue;
                }
                let Some(c) = per_channel(g, other, rank, axis, ch) else {
                    continue;
                };
                apply_affine(&mut g.nodes[i].op, kind, &c);
                if kind == BinaryKind::Mul {
                    // Given int8 weights stay exact: `q * s` scaled by `c` is `(q * sign(c)) * (s * |c|)`.
                    if let Some(scales) = g.weight_scales.get_mut(&g.nodes[i].name) {
                        scales.iter_mut().zip(&c).for_each(|(s, c)| *s *= c.abs());
                    }
                }
                true
            }
            (Op::Unary(u @ (UnaryKind::Relu | UnaryKind::Clip { .. })), _) => {
                let new = match *u {
                    UnaryKind::Relu => Activation::Relu,
                    UnaryKind::Clip { min, max } => Activation::Clip { min, max },
                    _ => unreachable!("matched above"),
                };
                let mut op = g.nodes[i].op.clone();
                match act_of(&mut op) {
                    Some(a) if *a == Activation::None => *a = new,
                    Some(a) => {
                        // Two clamps in a row (Relu then Clip, or the Clip a quantised model's QDQ pair
                        // stands for then Relu): the intersection of both ranges, when they overlap.
                        let ((lo1, hi1), (lo2, hi2)) = (a.range(), new.range());
                        let (lo, hi) = (lo1.max(lo2), hi1.min(hi2));
                        if lo > hi {
                            continue;
                        }
                        *a = if lo == 0.0 && hi.is_infinite() {
                            Activation::Relu
                        } else {
                            Activation::Clip { min: lo, max: hi }
                        };
                    }
                    _ => continue,
                }
                g.nodes[i].op = op;
                true
            }
            _ => false,
        };
        if merged {
            let j_out = g.nodes[j].output;
            g.nodes[i].output = j_out;
            g.nodes.remove(j);
            return true;
        }
    }
    false
}

/// Folds `y = x op c[channel]` into the weights and bias of a Conv or Dense.
fn apply_affine(op: &mut Op, kind: BinaryKind, c: &[f32]) {
    let (weights, bias, channels) = match op {
        Op::Conv(conv) => (&mut conv.weights, &mut conv.bias, conv.out_channels),
        Op::Dense {
            weights,
            bias,
            out_features,
            ..
        } => (weights, bias, *out_features),
        _ => return,
    };
    let bias = bias.get_or_insert_with(|| vec![0.0; channels]);
    match kind {
        BinaryKind::Mul => {
            // Weights are [out_c, ...]: each channel's block is contiguous.
            let per = weights.len() / channels;
            for (o, block) in weights.chunks_mut(per).enumerate() {
                block.iter_mut().for_each(|w| *w *= c[o]);
                bias[o] *= c[o];
            }
        }
        BinaryKind::Add => bias.iter_mut().zip(c).for_each(|(b, c)| *b += c),
        BinaryKind::Sub => bias.iter_mut().zip(c).for_each(|(b, c)| *b -= c),
        BinaryKind::PRelu => {}
    }
}
