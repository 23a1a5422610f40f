//! `Pad`, `Concat`, `Slice`, `Transpose`, `Copy`: byte-level, any dtype.

use super::common::{bytes_of, input, prod, Ck};
use super::OpIo;
use crate::error::{Error, Field};
use crate::format::{ConcatParams, PadParams, SliceParams, TransposeParams, MAX_RANK};
use crate::kernels;

pub fn check_pad(ck: &Ck, p: &PadParams) -> Result<(), Error> {
    ck.arity(1)?;
    let rank = ck.rank(&p.dims)?;
    ck.ensure(p.before.len() == rank, Field::Params, p.before.len())?;
    ck.ensure(p.after.len() == rank, Field::Params, p.after.len())?;
    ck.ensure((1..=4).contains(&p.elem_bytes), Field::Params, p.elem_bytes)?;
    let eb = p.elem_bytes as u64;
    // Each output axis is at most 3 * u32::MAX: no overflow in u64.
    let out = prod(
        p.dims
            .iter()
            .zip(&p.before)
            .zip(&p.after)
            .map(|((&d, &b), &a)| d as u64 + b as u64 + a as u64),
    );
    ck.input_size(0, bytes_of(&p.dims, eb), 1)?;
    ck.output_size(out.and_then(|n| n.checked_mul(eb)), 1)
}

pub fn check_concat(ck: &Ck, p: &ConcatParams) -> Result<(), Error> {
    ck.ensure(!p.parts.is_empty(), Field::Params, 0)?;
    ck.arity(p.parts.len())?;
    let row = |part: u64| prod([p.outer as u64, part, p.inner_bytes as u64]);
    for (i, &part) in p.parts.iter().enumerate() {
        ck.input_size(i, row(part as u64), 1)?;
    }
    // At most 8 parts of u32: the sum cannot overflow u64.
    let total: u64 = p.parts.iter().map(|&x| x as u64).sum();
    ck.output_size(row(total), 1)
}

pub fn check_slice(ck: &Ck, p: &SliceParams) -> Result<(), Error> {
    ck.arity(1)?;
    ck.ensure(
        p.start as u64 + p.len as u64 <= p.axis_len as u64,
        Field::Params,
        p.start,
    )?;
    ck.input_size(
        0,
        prod([p.outer as u64, p.axis_len as u64, p.inner_bytes as u64]),
        1,
    )?;
    ck.output_size(
        prod([p.outer as u64, p.len as u64, p.inner_bytes as u64]),
        1,
    )
}

pub fn check_transpose(ck: &Ck, p: &TransposeParams) -> Result<(), Error> {
    ck.arity(1)?;
    let rank = ck.rank(&p.dims)?;
    ck.ensure(p.perm.len() == rank, Field::Params, p.perm.len())?;
    let mut seen = [false; MAX_RANK];
    for &axis in &p.perm {
        let fresh = (axis as usize) < rank && !seen[axis as usize];
        ck.ensure(fresh, Field::Params, axis)?;
        seen[axis as usize] = true;
    }
    ck.ensure(p.elem_bytes > 0, Field::Params, 0)?;
    let bytes = bytes_of(&p.dims, p.elem_bytes as u64);
    ck.input_size(0, bytes, 1)?;
    ck.output_size(bytes, 1)
}

pub fn check_copy(ck: &Ck) -> Result<(), Error> {
    ck.arity(1)?;
    ck.output_size(Some(ck.input(0)?.len as u64), 1)
}

pub fn eval_pad(p: &PadParams, io: OpIo<'_>) -> Result<(), Error> {
    kernels::pad(p, input(&io.inputs, 0)?, io.output);
    Ok(())
}

pub fn eval_concat(p: &ConcatParams, io: OpIo<'_>) -> Result<(), Error> {
    if io.inputs.len() != p.parts.len() {
        return Err(Error::Arity {
            op: super::common::EVAL_OP,
            expected: p.parts.len() as u8,
            found: io.inputs.len() as u8,
        });
    }
    kernels::concat(p, &io.inputs, io.output);
    Ok(())
}

pub fn eval_slice(p: &SliceParams, io: OpIo<'_>) -> Result<(), Error> {
    kernels::slice(p, input(&io.inputs, 0)?, io.output);
    Ok(())
}

pub fn eval_transpose(p: &TransposeParams, io: OpIo<'_>) -> Result<(), Error> {
    kernels::transpose(p, input(&io.inputs, 0)?, io.output);
    Ok(())
}

pub fn eval_copy(io: OpIo<'_>) -> Result<(), Error> {
    kernels::copy(input(&io.inputs, 0)?, io.output);
    Ok(())
}
