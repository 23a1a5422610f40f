//! One module per op: `check` (run once at load: sizes against shapes, parameter ranges, blob spans in bounds and
//! aligned) and `eval` (run every inference: slices in, kernel call, no re-checking beyond cheap slice casts).
//!
//! The loader (`crate::model`) has already checked, for every op, that each operand lies inside its region (arena
//! or blob), that arena operands are `ARENA_ALIGN`-aligned, and that the output is in the arena and overlaps no input.
//!
//! `check` reports the first problem found, with the field it concerns: [`Error::Arity`], [`Error::BadParam`]
//! (zero sizes/strides, ranks outside `1..=MAX_RANK`, bad permutations/axes, zero points outside `-128..=127`,
//! invalid requantisation pairs, `act_min > act_max`, a window or dot product too large for the int8 kernels'
//! exact `i32` sums), [`Error::SizeMismatch`] (an operand's or span's byte length differs from its shape's),
//! [`Error::OutOfBounds`] (a span leaves the blob) and [`Error::Misaligned`] (an `i32`/`f32` span or operand not
//! 4-byte aligned). After `check` succeeds, `eval` cannot index out of bounds or overflow; its only errors
//! (carrying op index [`common::EVAL_OP`]) are for slices that do not match what was checked.

mod common;
mod conv;
mod elementwise;
mod movement;
mod pool;
#[cfg(test)]
mod tests;

pub use common::EVAL_OP;
pub use elementwise::softmax_mode;

use heapless::Vec;

use crate::error::Error;
use crate::format::{OpDef, OpKind, MAX_OP_INPUTS};
use common::Ck;
use pool::PoolKind;

/// The bytes one op reads and writes.
pub struct OpIo<'x> {
    /// One slice per `OpDef::inputs` entry, exactly `len` bytes, from the arena or the blob.
    pub inputs: Vec<&'x [u8], MAX_OP_INPUTS>,
    /// The whole weight blob (for the op's `Span`s).
    pub blob: &'x [u8],
    /// Exactly `OpDef::output.len` bytes of the arena.
    pub output: &'x mut [u8],
}

/// Checks op `index` once, at load.
pub fn check(index: u16, op: &OpDef, blob: &[u8]) -> Result<(), Error> {
    let ck = Ck {
        op: index,
        def: op,
        blob,
    };
    match &op.kind {
        OpKind::Conv2dS8(p) => conv::check_conv_s8(&ck, p),
        OpKind::Conv2dF32(p) => conv::check_conv_f32(&ck, p),
        OpKind::FullyConnectedS8(p) => conv::check_fc_s8(&ck, p),
        OpKind::FullyConnectedF32(p) => conv::check_fc_f32(&ck, p),
        OpKind::BinaryS8(p) => elementwise::check_binary_s8(&ck, p),
        OpKind::BinaryF32(p) => elementwise::check_binary_f32(&ck, p),
        OpKind::LookupS8(p) => elementwise::check_lookup_s8(&ck, p),
        OpKind::UnaryF32(_) => elementwise::check_unary_f32(&ck),
        OpKind::SoftmaxS8(p) => elementwise::check_softmax_s8(&ck, p),
        OpKind::SoftmaxF32(p) => elementwise::check_softmax_f32(&ck, p),
        OpKind::MaxPoolS8(p) => pool::check_pool(&ck, p, PoolKind::MaxS8),
        OpKind::MaxPoolF32(p) => pool::check_pool(&ck, p, PoolKind::MaxF32),
        OpKind::AvgPoolS8(p) => pool::check_pool(&ck, p, PoolKind::AvgS8),
        OpKind::AvgPoolF32(p) => pool::check_pool(&ck, p, PoolKind::AvgF32),
        OpKind::ReduceMeanS8(p) => pool::check_reduce_s8(&ck, p),
        OpKind::ReduceMeanF32(p) => pool::check_reduce_f32(&ck, p),
        OpKind::Pad(p) => movement::check_pad(&ck, p),
        OpKind::Concat(p) => movement::check_concat(&ck, p),
        OpKind::Slice(p) => movement::check_slice(&ck, p),
        OpKind::Transpose(p) => movement::check_transpose(&ck, p),
        OpKind::Copy => movement::check_copy(&ck),
    }
}

/// Runs a checked op.
pub fn eval(op: &OpDef, io: OpIo<'_>) -> Result<(), Error> {
    match &op.kind {
        OpKind::Conv2dS8(p) => conv::eval_conv_s8(p, io),
        OpKind::Conv2dF32(p) => conv::eval_conv_f32(p, io),
        OpKind::FullyConnectedS8(p) => conv::eval_fc_s8(p, io),
        OpKind::FullyConnectedF32(p) => conv::eval_fc_f32(p, io),
        OpKind::BinaryS8(p) => elementwise::eval_binary_s8(p, io),
        OpKind::BinaryF32(p) => elementwise::eval_binary_f32(p, io),
        OpKind::LookupS8(p) => elementwise::eval_lookup_s8(p, io),
        OpKind::UnaryF32(p) => elementwise::eval_unary_f32(*p, io),
        OpKind::SoftmaxS8(p) => elementwise::eval_softmax_s8(p, io),
        OpKind::SoftmaxF32(p) => elementwise::eval_softmax_f32(p, io),
        OpKind::MaxPoolS8(p) => pool::eval_pool(p, PoolKind::MaxS8, io),
        OpKind::MaxPoolF32(p) => pool::eval_pool(p, PoolKind::MaxF32, io),
        OpKind::AvgPoolS8(p) => pool::eval_pool(p, PoolKind::AvgS8, io),
        OpKind::AvgPoolF32(p) => pool::eval_pool(p, PoolKind::AvgF32, io),
        OpKind::ReduceMeanS8(p) => pool::eval_reduce_s8(p, io),
        OpKind::ReduceMeanF32(p) => pool::eval_reduce_f32(p, io),
        OpKind::Pad(p) => movement::eval_pad(p, io),
        OpKind::Concat(p) => movement::eval_concat(p, io),
        OpKind::Slice(p) => movement::eval_slice(p, io),
        OpKind::Transpose(p) => movement::eval_transpose(p, io),
        OpKind::Copy => movement::eval_copy(io),
    }
}
