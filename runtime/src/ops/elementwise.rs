//! `BinaryS8`, `BinaryF32`, `LookupS8`, `UnaryF32`, `SoftmaxS8`, `SoftmaxF32`, `QuantizeS8`, `DequantizeS8`.

use super::common::{cast, cast_mut, divides, input, prod32, span, Ck, EVAL_OP};
use super::OpIo;
use crate::error::{Error, Field};
use crate::format::{
    BinaryF32, BinaryS8, Broadcast, KernelS8, LookupS8, Quant, SoftmaxF32, SoftmaxS8,
};
use crate::kernels::{
    self, binary::MAX_LEFT_SHIFT, fast_elementwise, softmax::EXP_ONE, SoftmaxS8Mode,
};

/// Broadcast lists consistent, output size, and both inputs large enough for the largest strided index.
fn check_broadcast(ck: &Ck, bc: &Broadcast, elem: u32) -> Result<(), Error> {
    ck.arity(2)?;
    let rank = ck.rank(&bc.out)?;
    ck.ensure(
        bc.a_strides.len() == rank,
        Field::Input(0),
        bc.a_strides.len(),
    )?;
    ck.ensure(
        bc.b_strides.len() == rank,
        Field::Input(1),
        bc.b_strides.len(),
    )?;
    let out_elems = prod32(bc.out.iter().copied());
    let out_bytes = out_elems.and_then(|n| n.checked_mul(elem));
    ck.output_size(out_bytes.map(u64::from), elem)?;
    for (i, strides) in [&bc.a_strides, &bc.b_strides].into_iter().enumerate() {
        let o = ck.input(i)?;
        // Elements the input must hold: 1 + the largest index, or (empty output) whatever it has, whole elements.
        let need = if out_elems == Some(0) {
            Some(o.len / elem)
        } else {
            // (Every axis is at least 1 here: a 0 makes the output empty.)
            bc.out
                .iter()
                .zip(strides.iter())
                .try_fold(1u32, |acc, (&d, &s)| {
                    (d - 1).checked_mul(s).and_then(|x| x.checked_add(acc))
                })
        };
        let need_bytes = need.and_then(|n| n.checked_mul(elem));
        // Larger is fine (a stride may skip a tail); smaller or a partial element is not.
        let expected = match need_bytes {
            Some(n) if o.len >= n && divides(elem, o.len) => Some(o.len),
            other => other,
        };
        ck.input_size(i, expected.map(u64::from), elem)?;
    }
    Ok(())
}

pub fn check_binary_s8(ck: &Ck, p: &BinaryS8) -> Result<(), Error> {
    check_broadcast(ck, &p.bcast, 1)?;
    for zp in [p.a_zero_point, p.b_zero_point, p.out_zero_point] {
        ck.zero_point(zp)?;
    }
    ck.ensure(p.left_shift <= MAX_LEFT_SHIFT, Field::Params, p.left_shift)?;
    ck.multiplier(p.a_multiplier, p.a_shift)?;
    ck.multiplier(p.b_multiplier, p.b_shift)?;
    ck.multiplier(p.out_multiplier, p.out_shift)?;
    let allowed = match p.kernel {
        KernelS8::Reference => true,
        KernelS8::Table => fast_elementwise::add_table_fits(p),
        KernelS8::Dot | KernelS8::Depthwise | KernelS8::Fast => false,
    };
    ck.ensure(allowed, Field::Kernel, p.kernel as u32)?;
    ck.act_range_s8(p.act_min, p.act_max)
}

pub fn check_binary_f32(ck: &Ck, p: &BinaryF32) -> Result<(), Error> {
    check_broadcast(ck, &p.bcast, 4)?;
    ck.act_range_f32(p.act_min, p.act_max)
}

/// Runs the op with its kernel, in place or not; `SET` (a registration's kernel and mode bits) names the kernels
/// and modes this build links, the other arms compiled out.
pub fn eval_binary_s8<const SET: u8>(p: &BinaryS8, io: OpIo<'_>) -> Result<(), Error> {
    let table = super::linked(SET, KernelS8::Table);
    let a = cast(input(&io.inputs, 0)?, Field::Input(0))?;
    let b = cast(input(&io.inputs, 1)?, Field::Input(1))?;
    let y = cast_mut(io.output, Field::Output)?;
    match p.kernel {
        // In place (allowed at load only for the table kernel): `a` is the output itself.
        KernelS8::Table if table && super::mode_linked(SET, true) && io.in_place => {
            fast_elementwise::binary_s8_table_in_place(p, b, y)
        }
        KernelS8::Table if table && !io.in_place => fast_elementwise::binary_s8_table(p, a, b, y),
        KernelS8::Reference if super::linked(SET, KernelS8::Reference) && !io.in_place => {
            kernels::binary_s8(p, a, b, y)
        }
        _ => return Err(Error::UnknownOp { op: EVAL_OP }),
    }
    Ok(())
}

pub fn eval_binary_f32(p: &BinaryF32, io: OpIo<'_>) -> Result<(), Error> {
    let a = cast(input(&io.inputs, 0)?, Field::Input(0))?;
    let b = cast(input(&io.inputs, 1)?, Field::Input(1))?;
    kernels::binary_f32(p, a, b, cast_mut(io.output, Field::Output)?);
    Ok(())
}

/// One input, the output the same size, both whole `elem`-byte elements.
fn check_same_size(ck: &Ck, elem: u64) -> Result<(), Error> {
    ck.arity(1)?;
    let len = ck.input(0)?.len as u64;
    ck.input_size(0, Some(len - len % elem), elem as u32)?;
    ck.output_size(Some(len), elem as u32)
}

pub fn check_lookup_s8(ck: &Ck, p: &LookupS8) -> Result<(), Error> {
    check_same_size(ck, 1)?;
    ck.span(Field::Table, p.table, Some(256), 1).map(|_| ())
}

pub fn check_unary_f32(ck: &Ck) -> Result<(), Error> {
    check_same_size(ck, 4)
}

/// A conversion's quantisation: scale positive and finite, zero point an int8 value.
fn check_conversion(ck: &Ck, q: &Quant) -> Result<(), Error> {
    ck.ensure(
        q.scale.is_finite() && q.scale > 0.0,
        Field::Params,
        q.scale.to_bits() as i32,
    )?;
    ck.zero_point(q.zero_point)
}

/// f32 in, as many int8 out.
pub fn check_quantize_s8(ck: &Ck, q: &Quant) -> Result<(), Error> {
    ck.arity(1)?;
    check_conversion(ck, q)?;
    let n = ck.def.output.len as u64;
    ck.input_size(0, Some(4 * n), 4)?;
    ck.output_size(Some(n), 1)
}

/// int8 in, as many f32 out.
pub fn check_dequantize_s8(ck: &Ck, q: &Quant) -> Result<(), Error> {
    ck.arity(1)?;
    check_conversion(ck, q)?;
    let n = ck.input(0)?.len as u64;
    ck.input_size(0, Some(n), 1)?;
    ck.output_size(Some(4 * n), 4)
}

pub fn eval_quantize_s8(q: &Quant, io: OpIo<'_>) -> Result<(), Error> {
    let x = cast(input(&io.inputs, 0)?, Field::Input(0))?;
    kernels::quantize_s8(*q, x, cast_mut(io.output, Field::Output)?);
    Ok(())
}

pub fn eval_dequantize_s8(q: &Quant, io: OpIo<'_>) -> Result<(), Error> {
    let x = cast(input(&io.inputs, 0)?, Field::Input(0))?;
    kernels::dequantize_s8(*q, x, cast_mut(io.output, Field::Output)?);
    Ok(())
}

pub fn eval_lookup_s8(p: &LookupS8, io: OpIo<'_>) -> Result<(), Error> {
    let table: &[i8] = cast(span(io.blob, p.table, Field::Table)?, Field::Table)?;
    let table: &[i8; 256] = table.try_into().map_err(|_| Error::SizeMismatch {
        op: super::common::EVAL_OP,
        field: Field::Table,
        expected: 256,
        found: table.len() as u32,
    })?;
    let x = cast(input(&io.inputs, 0)?, Field::Input(0))?;
    kernels::lookup_s8(table, x, cast_mut(io.output, Field::Output)?);
    Ok(())
}

pub fn eval_unary_f32(p: crate::format::UnaryF32, io: OpIo<'_>) -> Result<(), Error> {
    let x = cast(input(&io.inputs, 0)?, Field::Input(0))?;
    kernels::unary_f32(p, x, cast_mut(io.output, Field::Output)?);
    Ok(())
}

fn check_softmax_shape(ck: &Ck, outer: u32, len: u32, inner: u32, elem: u32) -> Result<(), Error> {
    ck.arity(1)?;
    let bytes = prod32([outer, len, inner, elem]).map(u64::from);
    ck.input_size(0, bytes, elem)?;
    ck.output_size(bytes, elem)
}

/// The kernel mode `params` encode: `[]` for softmax, `[diff_mult, log_mult]` (both `>= 0`) for LogSoftmax.
pub fn softmax_mode(p: &SoftmaxS8) -> Option<SoftmaxS8Mode> {
    match (p.log, p.params.as_slice()) {
        (false, []) => Some(SoftmaxS8Mode::Softmax),
        (true, &[diff_mult, log_mult]) if diff_mult >= 0 && log_mult >= 0 => {
            Some(SoftmaxS8Mode::LogSoftmax {
                diff_mult,
                log_mult,
            })
        }
        _ => None,
    }
}

pub fn check_softmax_s8(ck: &Ck, p: &SoftmaxS8) -> Result<(), Error> {
    check_softmax_shape(ck, p.outer, p.len, p.inner, 1)?;
    // 1 to 256 entries (the host drops trailing zeros).
    let entries = (p.exp_table.len / 4).clamp(1, 256);
    let table = ck.span(Field::Table, p.exp_table, Some(entries as u64 * 4), 4)?;
    // table[0] = 2^24 and no entry above it: the kernel's sums and products then stay in range.
    for (d, entry) in table.chunks_exact(4).enumerate() {
        let v = u32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]);
        ck.ensure(
            if d == 0 { v == EXP_ONE } else { v <= EXP_ONE },
            Field::Table,
            d,
        )?;
    }
    ck.ensure(softmax_mode(p).is_some(), Field::Params, p.params.len())?;
    ck.zero_point(p.output_zero_point)
}

pub fn check_softmax_f32(ck: &Ck, p: &SoftmaxF32) -> Result<(), Error> {
    check_softmax_shape(ck, p.outer, p.len, p.inner, 4)
}

pub fn eval_softmax_s8(p: &SoftmaxS8, io: OpIo<'_>) -> Result<(), Error> {
    let table: &[u32] = cast(span(io.blob, p.exp_table, Field::Table)?, Field::Table)?;
    let mode = softmax_mode(p).ok_or(Error::BadParam {
        op: super::common::EVAL_OP,
        field: Field::Params,
        value: 0,
    })?;
    let x = cast(input(&io.inputs, 0)?, Field::Input(0))?;
    let y = cast_mut(io.output, Field::Output)?;
    kernels::softmax_s8(
        [p.outer, p.len, p.inner],
        mode,
        table,
        p.output_zero_point,
        x,
        y,
    );
    Ok(())
}

pub fn eval_softmax_f32(p: &SoftmaxF32, io: OpIo<'_>) -> Result<(), Error> {
    let x = cast(input(&io.inputs, 0)?, Field::Input(0))?;
    kernels::softmax_f32(
        [p.outer, p.len, p.inner],
        p.log,
        x,
        cast_mut(io.output, Field::Output)?,
    );
    Ok(())
}
