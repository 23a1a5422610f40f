//! `MaxPoolS8`, `MaxPoolF32`, `AvgPoolS8`, `AvgPoolF32`, `ReduceMeanS8`, `ReduceMeanF32`.

use super::common::{bytes_of, cast, cast_mut, input, prod, prod32, Ck, MAX_COORD};
use super::OpIo;
use crate::error::{Error, Field};
use crate::format::{Dims, KernelS8, Pool2d, ReduceMeanF32, ReduceMeanS8};
use crate::kernels::{self, fast_elementwise, MAX_SUM_LEN};

/// Which pool an [`eval_pool`] runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum PoolKind {
    MaxS8,
    MaxF32,
    AvgS8,
    AvgF32,
}

/// Non-zero sizes, every window overlapping the input (so no window is empty), coordinates far from overflow,
/// sizes of input and output.
pub fn check_pool(ck: &Ck, p: &Pool2d, kind: PoolKind) -> Result<(), Error> {
    ck.arity(1)?;
    let f = Field::Params;
    let nonzero = [
        p.batch, p.in_h, p.in_w, p.channels, p.out_h, p.out_w, p.kernel_h, p.kernel_w, p.stride_h,
        p.stride_w,
    ];
    for v in nonzero {
        ck.ensure(v > 0, f, v)?;
    }
    for (in_, out, k, s, pad) in [
        (p.in_h, p.out_h, p.kernel_h, p.stride_h, p.pad_top),
        (p.in_w, p.out_w, p.kernel_w, p.stride_w, p.pad_left),
    ] {
        // The first window ends inside the input, the last starts inside it; all of it within MAX_COORD.
        ck.ensure(pad < k, f, pad)?;
        let (last_start, extent) = ((out - 1).checked_mul(s), pad.checked_add(in_));
        ck.ensure(
            matches!((last_start, extent), (Some(l), Some(e)) if l < e
                && u64::from(l) + u64::from(k) <= MAX_COORD && u64::from(e) <= MAX_COORD),
            f,
            out,
        )?;
    }
    ck.ensure(
        p.kernel_h as u64 * p.kernel_w as u64 <= MAX_SUM_LEN as u64,
        f,
        p.kernel_h,
    )?;
    if kind == PoolKind::AvgS8 {
        ck.zero_point(p.zero_point)?;
    }
    let int8 = matches!(kind, PoolKind::MaxS8 | PoolKind::AvgS8);
    let allowed = match p.kernel {
        KernelS8::Reference => true,
        KernelS8::Fast => match kind {
            PoolKind::MaxS8 => fast_elementwise::max_pool_fast_fits(p),
            PoolKind::AvgS8 => fast_elementwise::avg_pool_fast_fits(p),
            _ => false,
        },
        KernelS8::Dot | KernelS8::Depthwise | KernelS8::Table => false,
    };
    ck.ensure(allowed, Field::Kernel, p.kernel as u32)?;
    let elem = if int8 { 1 } else { 4 };
    let x = prod32([p.batch, p.in_h, p.in_w, p.channels, elem]).map(u64::from);
    let y = prod32([p.batch, p.out_h, p.out_w, p.channels, elem]).map(u64::from);
    ck.input_size(0, x, elem)?;
    ck.output_size(y, elem)
}

/// Runs the pool; `SET` (a registration's kernel bits) names the kernels this build links: with only one of
/// them, the other is compiled out.
pub fn eval_pool<const SET: u8>(p: &Pool2d, kind: PoolKind, io: OpIo<'_>) -> Result<(), Error> {
    let x = input(&io.inputs, 0)?;
    let (fi, fo) = (Field::Input(0), Field::Output);
    // `Fast` is allowed for int8 pools only (checked at load); f32 pools always run the reference.
    let fast = match p.kernel {
        KernelS8::Fast if super::linked(SET, KernelS8::Fast) => true,
        KernelS8::Reference if super::linked(SET, KernelS8::Reference) => false,
        _ => {
            return Err(Error::UnknownOp {
                op: super::common::EVAL_OP,
            })
        }
    };
    match kind {
        PoolKind::MaxS8 => {
            let kernel = if fast {
                fast_elementwise::max_pool_s8_fast
            } else {
                kernels::max_pool_s8
            };
            kernel(p, cast(x, fi)?, cast_mut(io.output, fo)?)
        }
        PoolKind::MaxF32 => kernels::max_pool_f32(p, cast(x, fi)?, cast_mut(io.output, fo)?),
        PoolKind::AvgS8 => {
            let kernel = if fast {
                fast_elementwise::avg_pool_s8_fast
            } else {
                kernels::avg_pool_s8
            };
            kernel(p, cast(x, fi)?, cast_mut(io.output, fo)?)
        }
        PoolKind::AvgF32 => kernels::avg_pool_f32(p, cast(x, fi)?, cast_mut(io.output, fo)?),
    }
    Ok(())
}

/// Rank, non-zero dims, axes within the rank, sizes. Returns the number of elements averaged into each output.
fn check_reduce(ck: &Ck, dims: &Dims, axes: u8, elem: u64) -> Result<u64, Error> {
    ck.arity(1)?;
    let rank = ck.rank(dims)?;
    for &d in dims {
        ck.ensure(d > 0, Field::Params, d)?;
    }
    ck.ensure((axes as u32) < 1 << rank, Field::Params, axes)?;
    let reduced = |r: bool| {
        dims.iter()
            .enumerate()
            .filter(move |(i, _)| (axes & (1 << i) != 0) == r)
    };
    let kept = prod(reduced(false).map(|(_, &d)| d as u64));
    let count = prod(reduced(true).map(|(_, &d)| d as u64));
    ck.input_size(0, bytes_of(dims, elem), elem as u32)?;
    ck.output_size(kept.and_then(|n| n.checked_mul(elem)), elem as u32)?;
    count.ok_or(ck.bad(Field::Params, u32::MAX))
}

pub fn check_reduce_s8(ck: &Ck, p: &ReduceMeanS8) -> Result<(), Error> {
    let count = check_reduce(ck, &p.dims, p.axes, 1)?;
    ck.ensure(count <= MAX_SUM_LEN as u64, Field::Params, count)?;
    ck.zero_point(p.input_zero_point)?;
    ck.zero_point(p.output_zero_point)?;
    ck.multiplier(p.multiplier, p.shift)
}

pub fn check_reduce_f32(ck: &Ck, p: &ReduceMeanF32) -> Result<(), Error> {
    check_reduce(ck, &p.dims, p.axes, 4).map(|_| ())
}

pub fn eval_reduce_s8(p: &ReduceMeanS8, io: OpIo<'_>) -> Result<(), Error> {
    let x = cast(input(&io.inputs, 0)?, Field::Input(0))?;
    kernels::reduce_mean_s8(p, x, cast_mut(io.output, Field::Output)?);
    Ok(())
}

pub fn eval_reduce_f32(p: &ReduceMeanF32, io: OpIo<'_>) -> Result<(), Error> {
    let x = cast(input(&io.inputs, 0)?, Field::Input(0))?;
    kernels::reduce_mean_f32(p, x, cast_mut(io.output, Field::Output)?);
    Ok(())
}
