//! Lowering of convolutions, matrix products (tract's `EinSum`) and pools.

use anyhow::anyhow;
use tract_onnx::prelude::tract_ndarray::IxDyn;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cnn::{Conv, PaddingSpec, PoolSpec};
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::math::{Add, Mul};
use tract_onnx::tract_core::ops::nn::DataFormat as TractFormat;
use tract_onnx::tract_core::ops::Downsample;

use super::lower::{to_f32_vec, unsupported, Fail, LResult, Lowerer};
use crate::ir::{Activation, ConvAttrs, DataFormat, Op, PoolAttrs, PoolKind, TensorId};

/// The spatial geometry of a convolution or pool, in the IR's terms.
struct Geometry {
    data_format: DataFormat,
    /// Whether the tensors carry the batch axis (tract's NCHW / NHWC) or not (CHW / HWC).
    has_n: bool,
    /// Axis of the first spatial dimension in the input.
    h_axis: usize,
    kernel: Vec<usize>,
    strides: Vec<usize>,
    dilations: Vec<usize>,
    pads_begin: Vec<usize>,
    pads_end: Vec<usize>,
}

/// Output length of a window sweep, `None` when the window does not fit.
fn swept_len(
    input: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    pad_begin: usize,
    pad_end: usize,
) -> Option<usize> {
    let span = dilation * (kernel - 1) + 1;
    let padded = input + pad_begin + pad_end;
    (padded >= span && stride > 0).then(|| (padded - span) / stride + 1)
}

impl Lowerer<'_> {
    /// The geometry of `spec` applied to the input `x_shape`, explicit padding resolved (auto_pad included).
    fn geometry(&self, spec: &PoolSpec, x_shape: &[usize]) -> LResult<Geometry> {
        let rank = spec.rank();
        if !(1..=2).contains(&rank) {
            unsupported!("{rank}D window (Kiln supports 1D and 2D convolutions and pools)");
        }
        let shape = spec.data_format.shape(x_shape.to_vec())?;
        let padding = spec.computed_padding(shape.hw_dims());
        Ok(Geometry {
            data_format: match spec.data_format {
                TractFormat::NCHW | TractFormat::CHW => DataFormat::ChannelsFirst,
                TractFormat::NHWC | TractFormat::HWC => DataFormat::ChannelsLast,
            },
            has_n: spec.data_format.has_n(),
            h_axis: shape.h_axis(),
            kernel: spec.kernel_shape.to_vec(),
            strides: spec.strides().to_vec(),
            dilations: spec.dilations().to_vec(),
            pads_begin: padding.iter().map(|p| p.pad_before).collect(),
            pads_end: padding.iter().map(|p| p.pad_after).collect(),
        })
    }

    /// Follows `Downsample`s from a convolution's input back to the tensor they subsample, folding each into
    /// the convolution's stride (tract splits a strided 1x1 convolution into them and an unstrided one).
    fn peel_downsamples(&self, mut outlet: OutletId, geo: &mut Geometry) -> LResult<OutletId> {
        while self.downsampled.contains(&outlet) {
            let node = self.model.node(outlet.node);
            let ds = node
                .op_as::<Downsample>()
                .ok_or_else(|| anyhow!("deferred non-Downsample {}", node.name))?;
            let Some(j) = ds
                .axis
                .checked_sub(geo.h_axis)
                .filter(|&j| j < geo.kernel.len())
            else {
                unsupported!(
                    "subsampling of non-spatial axis {} before a convolution",
                    ds.axis
                );
            };
            if geo.pads_begin[j] != 0 || geo.pads_end[j] != 0 {
                unsupported!("subsampling before a padded convolution");
            }
            let s = ds.stride as usize;
            geo.strides[j] *= s;
            // tract divides a dilation by the stride only when the kernel spans it (then it is a multiple).
            if geo.kernel[j] > 1 {
                geo.dilations[j] *= s;
            }
            outlet = node.inputs[0];
        }
        Ok(outlet)
    }

    /// Checks `geo` against tract's output shape. For pools in ONNX `ceil_mode`, the extra last window is
    /// expressed as end padding (which Max pools ignore and Avg pools without count_include_pad do not count).
    fn fit_output(
        &self,
        geo: &mut Geometry,
        x_shape: &[usize],
        y_shape: &[usize],
        pool: Option<PoolKind>,
        ceil: bool,
    ) -> LResult<()> {
        let h = geo.h_axis;
        for j in 0..geo.kernel.len() {
            let (input, want) = (x_shape[h + j], y_shape[h + j]);
            let (k, s, d) = (geo.kernel[j], geo.strides[j], geo.dilations[j]);
            let got = swept_len(input, k, s, d, geo.pads_begin[j], geo.pads_end[j]);
            if got.is_some_and(|g| g < want) && ceil && pool.is_some() {
                if matches!(
                    pool,
                    Some(PoolKind::Avg {
                        count_include_pad: true
                    })
                ) {
                    unsupported!("average pooling with ceil_mode and count_include_pad");
                }
                let span = d * (k - 1) + 1;
                geo.pads_end[j] +=
                    (want - 1) * s + span - (input + geo.pads_begin[j] + geo.pads_end[j]);
            }
            let got = swept_len(input, k, s, d, geo.pads_begin[j], geo.pads_end[j]);
            if got != Some(want) {
                return Err(Fail::Internal(anyhow!(
                    "spatial axis {j}: input {input}, kernel {k}, stride {s}, dilation {d}, pads {}+{} give {got:?}, tract says {want}",
                    geo.pads_begin[j],
                    geo.pads_end[j]
                )));
            }
        }
        Ok(())
    }

    /// Emits a convolution or pool. Without a batch axis (tract's CHW / HWC), the input gets a unit batch axis
    /// and the output loses it again.
    fn emit_spatial(
        &mut self,
        node: &TypedNode,
        op: Op,
        x: TensorId,
        has_n: bool,
        out: OutletId,
    ) -> LResult<()> {
        if has_n {
            return self.emit(node, op, vec![x], out).map(drop);
        }
        let with_n = |s: &[usize]| [&[1], s].concat();
        let x_shape = with_n(&self.g.tensors[x].shape);
        let y_shape = with_n(&self.shape(out)?);
        let x = self.reshape_tmp(&format!("{}.add_batch", node.name), x, x_shape)?;
        let y = self.emit_tmp(&node.name, op, vec![x], y_shape)?;
        self.emit(node, Op::Reshape, vec![y], out).map(drop)
    }

    pub(super) fn lower_conv(&mut self, node: &TypedNode, conv: &Conv) -> LResult<()> {
        if conv.q_params.is_some() {
            unsupported!("quantized convolution");
        }
        let spec = &conv.pool_spec;
        let (Some(kernel), Some(bias)) = (self.konst(node.inputs[1])?, self.konst(node.inputs[2])?)
        else {
            unsupported!("convolution weights and bias must be constants");
        };
        let out = OutletId::new(node.id, 0);
        let x_shape = self.shape(node.inputs[0])?;
        let mut geo = self.geometry(spec, &x_shape)?;
        let x_src = self.peel_downsamples(node.inputs[0], &mut geo)?;
        let src_shape = self.shape(x_src)?;
        let y_shape = self.shape(out)?;
        self.fit_output(&mut geo, &src_shape, &y_shape, None, false)?;

        let out_channels = spec.output_channels;
        let weights = ohwi_weights(conv, &kernel)?;
        let expected = out_channels
            * geo.kernel.iter().product::<usize>()
            * (spec.input_channels / conv.group);
        if weights.len() != expected {
            return Err(Fail::Internal(anyhow!(
                "conv weights: {} values, expected {expected}",
                weights.len()
            )));
        }
        let attrs = ConvAttrs {
            data_format: geo.data_format,
            kernel: geo.kernel.clone(),
            strides: geo.strides.clone(),
            dilations: geo.dilations.clone(),
            pads_begin: geo.pads_begin.clone(),
            pads_end: geo.pads_end.clone(),
            group: conv.group,
            out_channels,
            weights,
            bias: bias_vec(&bias, out_channels)?,
            act: Activation::None,
        };
        let x = self.tensor(x_src)?;
        self.emit_spatial(node, Op::Conv(attrs), x, geo.has_n, out)
    }

    pub(super) fn lower_pool(
        &mut self,
        node: &TypedNode,
        spec: &PoolSpec,
        kind: PoolKind,
    ) -> LResult<()> {
        let out = OutletId::new(node.id, 0);
        let x_shape = self.shape(node.inputs[0])?;
        let mut geo = self.geometry(spec, &x_shape)?;
        if geo.dilations.iter().any(|&d| d != 1) {
            unsupported!("dilated pooling");
        }
        let ceil = matches!(spec.padding, PaddingSpec::ExplicitOnnxPool(_, _, true));
        self.fit_output(&mut geo, &x_shape, &self.shape(out)?, Some(kind), ceil)?;
        let attrs = PoolAttrs {
            kind,
            data_format: geo.data_format,
            kernel: geo.kernel,
            strides: geo.strides,
            pads_begin: geo.pads_begin,
            pads_end: geo.pads_end,
        };
        let x = self.tensor(node.inputs[0])?;
        self.emit_spatial(node, Op::Pool(attrs), x, geo.has_n, out)
    }

    /// tract's `EinSum` with one constant operand: MatMul and Gemm (-> `Dense`) and 1x1 convolutions (tract
    /// rewrites an unstrided, unpadded, ungrouped 1x1 Conv to an EinSum `NIHW,OI->NOHW` plus a bias Add; -> `Conv`).
    ///
    /// Axes are classified by where they occur: `k` (activation and weights: contracted), `n` (weights and
    /// output: the features), `m` (activation and output). Unit axes elsewhere are reshapes. The activation's
    /// axes must stay in order with `k` replaced by `n`: `k` last is a Dense, `k` at 1 of a rank 3/4 tensor (or
    /// at the end when the node came from an ONNX Conv) is a 1x1 Conv.
    ///
    /// A following `Mul` by a scalar (Gemm's alpha) and `Add` of a per-feature constant (the bias) fold in.
    pub(super) fn lower_einsum(&mut self, node: &TypedNode, op: &EinSum) -> LResult<()> {
        if op.q_params.is_some() {
            unsupported!("quantized matrix product");
        }
        if node.inputs.len() != 2 {
            unsupported!("einsum of {} operands", node.inputs.len());
        }
        let (x_slot, w) = match (self.konst(node.inputs[0])?, self.konst(node.inputs[1])?) {
            (None, Some(w)) => (0, w),
            (Some(w), None) => (1, w),
            (None, None) => {
                unsupported!("matrix product of two activations (Kiln supports MatMul and Gemm with constant weights)")
            }
            (Some(_), Some(_)) => {
                return Err(Fail::Internal(anyhow!(
                    "einsum of two constants was not folded"
                )))
            }
        };
        let w_slot = 1 - x_slot;
        let x_in = node.inputs[x_slot];
        let y_out = OutletId::new(node.id, 0);
        let (x_shape, w_shape, y_shape) =
            (self.shape(x_in)?, w.shape().to_vec(), self.shape(y_out)?);
        let expr = format!("{}", op.axes);

        #[derive(Clone, Copy)]
        struct Ax {
            x: Option<usize>,
            w: Option<usize>,
            y: Option<usize>,
            dim: usize,
        }
        let mut axes = vec![];
        for axis in op.axes.iter_all_axes() {
            let pos = |v: &[usize]| match v {
                [] => Ok(None),
                [p] => Ok(Some(*p)),
                _ => Err(Fail::Unsupported(format!(
                    "einsum {expr} repeats axis '{}'",
                    axis.repr
                ))),
            };
            let (x, w, y) = (
                pos(&axis.inputs[x_slot])?,
                pos(&axis.inputs[w_slot])?,
                pos(&axis.outputs[0])?,
            );
            let dim = x
                .map(|p| x_shape[p])
                .or(w.map(|p| w_shape[p]))
                .or(y.map(|p| y_shape[p]))
                .unwrap_or(1);
            axes.push(Ax { x, w, y, dim });
        }
        let is_k = |a: &Ax| a.x.is_some() && a.w.is_some() && a.y.is_none();
        let is_n = |a: &Ax| a.x.is_none() && a.w.is_some() && a.y.is_some();
        // In activation and output (and in the weights only with size 1): rows of the product.
        let is_m = |a: &Ax| a.x.is_some() && a.y.is_some() && a.w.is_none_or(|p| w_shape[p] == 1);
        // Contracted axes, in the activation's order: several when tract folded a Flatten into the product.
        // Unit ones are left out (unless all are unit): they are reshapes.
        let mut ks: Vec<usize> = (0..axes.len()).filter(|&i| is_k(&axes[i])).collect();
        if ks.iter().any(|&i| axes[i].dim > 1) {
            ks.retain(|&i| axes[i].dim > 1);
        } else {
            ks.truncate(1);
        }
        ks.sort_by_key(|&i| axes[i].x);
        let ns: Vec<usize> = (0..axes.len()).filter(|&i| is_n(&axes[i])).collect();
        let big_ns: Vec<usize> = ns.iter().copied().filter(|&i| axes[i].dim > 1).collect();
        let n = match (big_ns.as_slice(), ns.first()) {
            ([one], _) => *one,
            ([], Some(&first)) => first,
            _ => unsupported!("einsum {expr} needs exactly one output-feature axis"),
        };
        if ks.is_empty() {
            unsupported!("einsum {expr} contracts no axis");
        }
        for (i, a) in axes.iter().enumerate() {
            if ks.contains(&i) || i == n || a.dim == 1 || is_m(a) {
                continue;
            }
            if a.x.is_some() && a.y.is_some() {
                unsupported!(
                    "einsum {expr}: batched matrix product with different weights per batch"
                );
            }
            unsupported!(
                "einsum {expr}: axis of size {} is summed or broadcast",
                a.dim
            );
        }
        let k_dims: Vec<usize> = ks.iter().map(|&i| axes[i].dim).collect();
        let (kk, nn): (usize, usize) = (k_dims.iter().product(), axes[n].dim);

        // weights[n][k], k running over the contracted axes row-major in the activation's order; every other
        // weight axis has size 1.
        let wf = w.cast_to::<f32>()?;
        let wv = wf.to_plain_array_view::<f32>()?;
        let mut weights = Vec::with_capacity(nn * kk);
        let mut idx = vec![0; w_shape.len()];
        for ni in 0..nn {
            if let Some(p) = axes[n].w {
                idx[p] = ni;
            }
            for kf in 0..kk {
                let mut rest = kf;
                for (&a, &d) in ks.iter().zip(&k_dims).rev() {
                    if let Some(p) = axes[a].w {
                        idx[p] = rest % d;
                    }
                    rest /= d;
                }
                weights.push(wv[IxDyn(&idx)]);
            }
        }

        // The activation's and the output's significant axes, in their order. The contracted axes must be
        // adjacent in the activation, and the output must list the activation's axes in the same order, with the
        // features where the contracted axes were.
        let mut xs: Vec<usize> = (0..axes.len())
            .filter(|&i| ks.contains(&i) || is_m(&axes[i]))
            .collect();
        xs.sort_by_key(|&i| axes[i].x);
        let mut ys: Vec<usize> = (0..axes.len())
            .filter(|&i| i == n || is_m(&axes[i]))
            .collect();
        ys.sort_by_key(|&i| axes[i].y);
        let p = xs.iter().position(|&i| i == ks[0]).unwrap_or(0);
        if xs.get(p..p + ks.len()) != Some(&ks[..]) {
            unsupported!("einsum {expr} contracts axes that are not adjacent in the activation");
        }
        let mut merged: Vec<usize> = xs[..p].to_vec();
        merged.push(n);
        merged.extend_from_slice(&xs[p + ks.len()..]);
        if merged != ys {
            unsupported!(
                "einsum {expr} needs the activation transposed: a matrix product on a transposed activation (Gemm transA, MatMul with the weights first) is not supported"
            );
        }
        let mut xs_shape: Vec<usize> = xs[..p].iter().map(|&i| axes[i].dim).collect();
        xs_shape.push(kk);
        xs_shape.extend(xs[p + ks.len()..].iter().map(|&i| axes[i].dim));
        let r = xs_shape.len();
        let from_conv = self.origin_op(node) == Some("Conv");
        let conv_format = if from_conv || (p == 1 && r >= 3) {
            if !(3..=4).contains(&r) || ks.len() != 1 {
                unsupported!("einsum {expr} as a 1x1 convolution over a rank {r} tensor");
            }
            match p {
                1 => Some(DataFormat::ChannelsFirst),
                _ if p == r - 1 => Some(DataFormat::ChannelsLast),
                _ => unsupported!("einsum {expr}: 1x1 convolution with channels at axis {p}"),
            }
        } else if p == r - 1 {
            None
        } else {
            unsupported!(
                "einsum {expr} contracts axis {p} of the activation (shape {xs_shape:?}), not its last: a matrix product on a transposed activation (Gemm transA, MatMul with the weights first) is not supported"
            );
        };
        let ys_shape: Vec<usize> = ys.iter().map(|&i| axes[i].dim).collect();

        // Fold Gemm's alpha (a scalar Mul) and a per-feature bias Add.
        let mut bias: Option<Vec<f32>> = None;
        let mut out = y_out;
        if ys.len() == y_shape.len() {
            let n_pos = axes[n].y.unwrap_or(0);
            while let Some(next) = self.sole_consumer(out) {
                let Some(bin) = next.op_as::<TypedBinOp>() else {
                    break;
                };
                let other = if next.inputs[0] == out {
                    next.inputs[1]
                } else {
                    next.inputs[0]
                };
                let Some(c) = self.konst(other)? else { break };
                let (c_shape, rank) = (c.shape(), y_shape.len());
                if c_shape.len() > rank || next.inputs[0] == next.inputs[1] {
                    break;
                }
                let offset = rank - c_shape.len();
                let per_feature = c_shape
                    .iter()
                    .enumerate()
                    .all(|(i, &d)| d == 1 || (i + offset == n_pos && d == nn));
                if !per_feature {
                    break;
                }
                let cv = to_f32_vec(&c)?;
                let at = |i: usize| if cv.len() == 1 { cv[0] } else { cv[i] };
                if bin.0.is::<Add>() {
                    bias = Some(
                        (0..nn)
                            .map(|i| bias.as_ref().map_or(0.0, |b| b[i]) + at(i))
                            .collect(),
                    );
                } else if bin.0.is::<Mul>() && cv.len() == 1 {
                    weights.iter_mut().for_each(|w| *w *= cv[0]);
                    if let Some(b) = &mut bias {
                        b.iter_mut().for_each(|b| *b *= cv[0]);
                    }
                } else {
                    break;
                }
                self.mark_absorbed(next);
                out = OutletId::new(next.id, 0);
            }
        }

        let mut x_src = x_in;
        // The shape the Dense/Conv reads: the activation without the unit axes the product drops, or for a
        // strided 1x1 convolution, the tensor before the subsampling.
        let mut op_in_shape = xs_shape.clone();
        let op = match conv_format {
            None => Op::Dense {
                weights,
                in_features: kk,
                out_features: nn,
                bias,
                act: Activation::None,
            },
            Some(data_format) => {
                let spatial = r - 2;
                let mut geo = Geometry {
                    data_format,
                    has_n: true,
                    h_axis: if data_format == DataFormat::ChannelsFirst {
                        2
                    } else {
                        1
                    },
                    kernel: vec![1; spatial],
                    strides: vec![1; spatial],
                    dilations: vec![1; spatial],
                    pads_begin: vec![0; spatial],
                    pads_end: vec![0; spatial],
                };
                // Strided 1x1 convolutions: the activation is a Downsample (only without dropped unit axes,
                // which would shift the spatial axes).
                if r == x_shape.len() {
                    x_src = self.peel_downsamples(x_in, &mut geo)?;
                    op_in_shape = self.shape(x_src)?;
                    self.fit_output(&mut geo, &op_in_shape, &ys_shape, None, false)?;
                }
                Op::Conv(ConvAttrs {
                    data_format,
                    kernel: geo.kernel,
                    strides: geo.strides,
                    dilations: geo.dilations,
                    pads_begin: geo.pads_begin,
                    pads_end: geo.pads_end,
                    group: 1,
                    out_channels: nn,
                    weights,
                    bias,
                    act: Activation::None,
                })
            }
        };
        let x = self.tensor(x_src)?;
        self.emit_einsum_result(node, op, x, &op_in_shape, &ys_shape, out)
    }

    /// Emits the Dense/Conv for an EinSum, reshaping away unit axes the contraction dropped or added.
    fn emit_einsum_result(
        &mut self,
        node: &TypedNode,
        op: Op,
        x: TensorId,
        in_shape: &[usize],
        ys_shape: &[usize],
        out: OutletId,
    ) -> LResult<()> {
        let x = self.reshape_tmp(&format!("{}.squeeze", node.name), x, in_shape.to_vec())?;
        if self.shape(out)? == ys_shape {
            return self.emit(node, op, vec![x], out).map(drop);
        }
        let y = self.emit_tmp(&node.name, op, vec![x], ys_shape.to_vec())?;
        self.emit(node, Op::Reshape, vec![y], out).map(drop)
    }
}

/// Convolution weights in Kiln's `[out_c, spatial..., in_c / group]`, whatever tract's kernel format.
fn ohwi_weights(conv: &Conv, kernel: &Tensor) -> LResult<Vec<f32>> {
    let mut k = kernel.cast_to::<f32>()?.into_owned();
    // tract's own axis ops bring any of its kernel formats to [group, out_c / group, in_c / group, spatial...].
    for op in conv
        .kernel_fmt
        .kernel_as_group_o_i_h_w_ops(k.shape(), conv.group)
    {
        op.change_tensor(&mut k, false)?;
    }
    let view = k.to_plain_array_view::<f32>()?;
    let rank = view.ndim();
    let mut perm = vec![0, 1];
    perm.extend(3..rank);
    perm.push(2);
    // Group-major output channels, as ONNX numbers them.
    Ok(view.permuted_axes(perm).iter().copied().collect())
}

/// A per-output-channel bias, `None` when it is all zeros.
fn bias_vec(bias: &Tensor, out_channels: usize) -> LResult<Option<Vec<f32>>> {
    let v = to_f32_vec(bias)?;
    if v.iter().all(|&b| b == 0.0) {
        return Ok(None);
    }
    match v.len() {
        1 => Ok(Some(vec![v[0]; out_channels])),
        l if l == out_channels => Ok(Some(v)),
        l => Err(Fail::Internal(anyhow!(
            "conv bias has {l} values for {out_channels} channels"
        ))),
    }
}
