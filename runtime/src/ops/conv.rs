//! `Conv2dS8`, `Conv2dF32`, `FullyConnectedS8`, `FullyConnectedF32`.

use super::common::{
    cast, cast_mut, divides, input, opt_span, prod32, span, Ck, EVAL_OP, MAX_COORD,
};
use super::OpIo;
use super::{linked, mode_linked};
use crate::error::{Error, Field};
use crate::format::{
    ConvF32, ConvGeom, ConvS8, FcGeom, FullyConnectedF32, FullyConnectedS8, KernelS8,
};
use crate::kernels::{self, fast, QuantS8, Requant, MAX_DOT_LEN};

/// Geometry, input/output/weights/bias sizes. Returns the dot product length (taps per output).
///
/// In 32-bit checked arithmetic: every size is compared with a `u32` operand length, so a product that overflows
/// `u32` is already a mismatch (and 64-bit arithmetic would double this once-run code on a 32-bit core).
fn check_geom(
    ck: &Ck,
    g: &ConvGeom,
    elem: u32,
    weights: crate::format::Span,
    bias: Option<crate::format::Span>,
    packed: Option<Option<u32>>,
) -> Result<u32, Error> {
    let p = Field::Params;
    let nonzero = [
        g.batch,
        g.in_h,
        g.in_w,
        g.in_c,
        g.out_h,
        g.out_w,
        g.out_c,
        g.kernel_h,
        g.kernel_w,
        g.stride_h,
        g.stride_w,
        g.dilation_h,
        g.dilation_w,
        g.groups,
    ];
    for v in nonzero {
        ck.ensure(v > 0, p, v)?;
    }
    ck.ensure(
        divides(g.groups, g.in_c) && divides(g.groups, g.out_c),
        p,
        g.groups,
    )?;
    // One past the largest padded coordinate a tap reaches, and the padded extent: both far from overflowing
    // usize (at most MAX_COORD).
    let coord_ok = |v: Option<u32>| v.is_some_and(|v| u64::from(v) <= MAX_COORD);
    let reach = |out: u32, stride: u32, k: u32, dil: u32| {
        (out - 1)
            .checked_mul(stride)
            .and_then(|s| s.checked_add((k - 1).checked_mul(dil)?))
            .and_then(|s| s.checked_add(1))
    };
    ck.ensure(
        coord_ok(reach(g.out_h, g.stride_h, g.kernel_h, g.dilation_h)),
        p,
        g.out_h,
    )?;
    ck.ensure(
        coord_ok(reach(g.out_w, g.stride_w, g.kernel_w, g.dilation_w)),
        p,
        g.out_w,
    )?;
    ck.ensure(coord_ok(g.pad_top.checked_add(g.in_h)), p, g.pad_top)?;
    ck.ensure(coord_ok(g.pad_left.checked_add(g.in_w)), p, g.pad_left)?;
    let dot = prod32([g.kernel_h, g.kernel_w, g.in_c / g.groups]);
    let x = prod32([g.batch, g.in_h, g.in_w, g.in_c, elem]);
    let y = prod32([g.batch, g.out_h, g.out_w, g.out_c, elem]);
    let w = dot.and_then(|d| prod32([d, g.out_c, elem]));
    ck.input_size(0, x.map(u64::from), elem)?;
    ck.output_size(y.map(u64::from), elem)?;
    match packed {
        // Packed weights carry bias and requantisation: a separate bias would be ignored, so it is refused.
        Some(len) => {
            ck.span(Field::Weights, weights, len.map(u64::from), 4)?;
            ck.ensure(bias.is_none(), Field::Bias, 1)?;
        }
        None => {
            ck.span(Field::Weights, weights, w.map(u64::from), elem)?;
            if let Some(b) = bias {
                ck.span(Field::Bias, b, Some(u64::from(g.out_c) * 4), 4)?;
            }
        }
    }
    dot.ok_or(ck.bad(p, u32::MAX))
}

pub fn check_conv_s8(ck: &Ck, p: &ConvS8) -> Result<(), Error> {
    ck.arity(1)?;
    let g = &p.geom;
    let allowed = match p.kernel {
        KernelS8::Reference => true,
        KernelS8::Dot => fast::dot_conv_fits(g),
        KernelS8::Depthwise => fast::depthwise_fits(g),
        KernelS8::Table | KernelS8::Fast => false,
    };
    ck.ensure(allowed, Field::Kernel, p.kernel as u32)?;
    // The fits predicates bound the window (at most MAX_PATCH elements, MAX_TAPS taps, MAX_DW_CHANNELS
    // channels), so the per-row sizes are small; a total overflowing u32 (`None`) is a length mismatch.
    let taps = g.kernel_h.saturating_mul(g.kernel_w);
    let (k, n) = (taps.saturating_mul(g.in_c), g.out_c);
    // (`fast::dot_packed_len` and `fast::depthwise_packed_len`, in checked u32.)
    let packed = match p.kernel {
        KernelS8::Dot => Some(prod32([n.div_ceil(2), 2 * k.div_ceil(4) + 4, 4])),
        KernelS8::Depthwise => Some(prod32([n / 4, 2 * taps + 8, 4])),
        _ => None,
    };
    let dot = check_geom(ck, g, 1, p.weights, p.bias, packed)?;
    ck.ensure(dot <= MAX_DOT_LEN, Field::Weights, dot)?;
    if packed.is_some() {
        // Packed: the per-channel requantisation is inside the weights; the spans stay empty.
        ck.per_channel(&p.requant, 0)?;
    } else {
        ck.per_channel(&p.requant, g.out_c as u64)?;
    }
    ck.zero_point(p.input_zero_point)?;
    ck.zero_point(p.output_zero_point)?;
    ck.act_range_s8(p.act_min, p.act_max)
}

pub fn check_conv_f32(ck: &Ck, p: &ConvF32) -> Result<(), Error> {
    ck.arity(1)?;
    check_geom(ck, &p.geom, 4, p.weights, p.bias, None)?;
    ck.act_range_f32(p.act_min, p.act_max)
}

fn quant_s8(input_zero_point: i32, output_zero_point: i32, act_min: i8, act_max: i8) -> QuantS8 {
    QuantS8 {
        input_zero_point,
        output_zero_point,
        act_min,
        act_max,
    }
}

fn requant<'x>(blob: &'x [u8], rq: &crate::format::PerChannel) -> Result<Requant<'x>, Error> {
    Ok(Requant {
        multipliers: cast(
            span(blob, rq.multipliers, Field::Multipliers)?,
            Field::Multipliers,
        )?,
        shifts: cast(span(blob, rq.shifts, Field::Shifts)?, Field::Shifts)?,
    })
}

/// Runs the op with its kernel, in place or not; `SET` (a registration's kernel and mode bits, see
/// `ops::KernelSet`) names the kernels and modes this build links: the others' arms are constant-false and
/// compiled out.
pub fn eval_conv_s8<const SET: u8>(p: &ConvS8, io: OpIo<'_>) -> Result<(), Error> {
    let (reference, dot, depthwise) = (
        linked(SET, KernelS8::Reference),
        linked(SET, KernelS8::Dot),
        linked(SET, KernelS8::Depthwise),
    );
    let (separate, in_place) = (mode_linked(SET, false), mode_linked(SET, true));
    let x = cast(input(&io.inputs, 0)?, Field::Input(0))?;
    let w = span(io.blob, p.weights, Field::Weights)?;
    let q = quant_s8(
        p.input_zero_point,
        p.output_zero_point,
        p.act_min,
        p.act_max,
    );
    let y = cast_mut(io.output, Field::Output)?;
    match p.kernel {
        // In place (allowed at load only for these two kernels): the input is `y` itself.
        KernelS8::Dot if dot && in_place && io.in_place => {
            fast::dot_conv2d_s8_in_place(&p.geom, &q, cast(w, Field::Weights)?, y)
        }
        KernelS8::Depthwise if depthwise && in_place && io.in_place => {
            fast::depthwise_conv2d_s8_in_place(&p.geom, &q, cast(w, Field::Weights)?, y)
        }
        KernelS8::Dot if dot && separate && !io.in_place => {
            fast::dot_conv2d_s8(&p.geom, &q, cast(w, Field::Weights)?, x, y)
        }
        KernelS8::Depthwise if depthwise && separate && !io.in_place => {
            fast::depthwise_conv2d_s8(&p.geom, &q, cast(w, Field::Weights)?, x, y)
        }
        KernelS8::Reference if reference && separate && !io.in_place => kernels::conv2d_s8(
            &p.geom,
            &q,
            requant(io.blob, &p.requant)?,
            x,
            cast(w, Field::Weights)?,
            opt_span(io.blob, p.bias, Field::Bias)?,
            y,
        ),
        // A kernel or mode this build does not link (the loader refused such a model) or `check` refuses.
        _ => return Err(Error::UnknownOp { op: EVAL_OP }),
    }
    Ok(())
}

pub fn eval_conv_f32(p: &ConvF32, io: OpIo<'_>) -> Result<(), Error> {
    let x = cast(input(&io.inputs, 0)?, Field::Input(0))?;
    let w = cast(span(io.blob, p.weights, Field::Weights)?, Field::Weights)?;
    let b = opt_span(io.blob, p.bias, Field::Bias)?;
    let y = cast_mut(io.output, Field::Output)?;
    kernels::conv2d_f32(&p.geom, x, w, b, p.act_min, p.act_max, y);
    Ok(())
}

fn check_fc_geom(
    ck: &Ck,
    g: &FcGeom,
    elem: u32,
    weights: crate::format::Span,
    bias: Option<crate::format::Span>,
    packed: Option<Option<u32>>,
) -> Result<(), Error> {
    for v in [g.rows, g.in_features, g.out_features] {
        ck.ensure(v > 0, Field::Params, v)?;
    }
    let (rows, k, n) = (g.rows, g.in_features, g.out_features);
    ck.input_size(0, prod32([rows, k, elem]).map(u64::from), elem)?;
    ck.output_size(prod32([rows, n, elem]).map(u64::from), elem)?;
    match packed {
        Some(len) => {
            ck.span(Field::Weights, weights, len.map(u64::from), 4)?;
            ck.ensure(bias.is_none(), Field::Bias, 1)?;
        }
        None => {
            ck.span(
                Field::Weights,
                weights,
                prod32([n, k, elem]).map(u64::from),
                elem,
            )?;
            if let Some(b) = bias {
                ck.span(Field::Bias, b, Some(u64::from(n) * 4), 4)?;
            }
        }
    }
    Ok(())
}

pub fn check_fc_s8(ck: &Ck, p: &FullyConnectedS8) -> Result<(), Error> {
    ck.arity(1)?;
    let allowed = match p.kernel {
        KernelS8::Reference => true,
        KernelS8::Dot => fast::dot_fc_fits(&p.geom),
        KernelS8::Depthwise | KernelS8::Table | KernelS8::Fast => false,
    };
    ck.ensure(allowed, Field::Kernel, p.kernel as u32)?;
    // `dot_fc_fits` bounds `in_features`; a length overflowing u32 (`None`) is a mismatch (the layout of
    // `fast::dot_packed_len`).
    let (k, n) = (p.geom.in_features, p.geom.out_features);
    let packed =
        (p.kernel == KernelS8::Dot).then(|| prod32([n.div_ceil(2), 2 * k.div_ceil(4) + 4, 4]));
    check_fc_geom(ck, &p.geom, 1, p.weights, p.bias, packed)?;
    ck.ensure(
        p.geom.in_features <= MAX_DOT_LEN,
        Field::Weights,
        p.geom.in_features,
    )?;
    let channels = if packed.is_some() {
        0
    } else {
        p.geom.out_features as u64
    };
    ck.per_channel(&p.requant, channels)?;
    ck.zero_point(p.input_zero_point)?;
    ck.zero_point(p.output_zero_point)?;
    ck.act_range_s8(p.act_min, p.act_max)
}

pub fn check_fc_f32(ck: &Ck, p: &FullyConnectedF32) -> Result<(), Error> {
    ck.arity(1)?;
    check_fc_geom(ck, &p.geom, 4, p.weights, p.bias, None)?;
    ck.act_range_f32(p.act_min, p.act_max)
}

/// Runs the op with its kernel; `SET` as for [`eval_conv_s8`].
pub fn eval_fc_s8<const SET: u8>(p: &FullyConnectedS8, io: OpIo<'_>) -> Result<(), Error> {
    let x = cast(input(&io.inputs, 0)?, Field::Input(0))?;
    let w = span(io.blob, p.weights, Field::Weights)?;
    let q = quant_s8(
        p.input_zero_point,
        p.output_zero_point,
        p.act_min,
        p.act_max,
    );
    let y = cast_mut(io.output, Field::Output)?;
    match p.kernel {
        KernelS8::Dot if linked(SET, KernelS8::Dot) => {
            fast::dot_fully_connected_s8(&p.geom, &q, cast(w, Field::Weights)?, x, y)
        }
        KernelS8::Reference if linked(SET, KernelS8::Reference) => kernels::fully_connected_s8(
            &p.geom,
            &q,
            requant(io.blob, &p.requant)?,
            x,
            cast(w, Field::Weights)?,
            opt_span(io.blob, p.bias, Field::Bias)?,
            y,
        ),
        _ => return Err(Error::UnknownOp { op: EVAL_OP }),
    }
    Ok(())
}

pub fn eval_fc_f32(p: &FullyConnectedF32, io: OpIo<'_>) -> Result<(), Error> {
    let x = cast(input(&io.inputs, 0)?, Field::Input(0))?;
    let w = cast(span(io.blob, p.weights, Field::Weights)?, Field::Weights)?;
    let b = opt_span(io.blob, p.bias, Field::Bias)?;
    let y = cast_mut(io.output, Field::Output)?;
    kernels::fully_connected_f32(&p.geom, x, w, b, p.act_min, p.act_max, y);
    Ok(())
}
