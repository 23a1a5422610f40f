//! Portable reference kernels: plain loops over typed slices, no allocation, no `unsafe`.
//!
//! These define the arithmetic (the optimised Cortex-M kernels must be bit-exact to the int8 ones). Each kernel
//! documents its preconditions on slice lengths and parameters; [`crate::ops`] establishes them once, at load, so a
//! kernel called through an op never indexes out of bounds nor overflows. Called directly with slices shorter than
//! the geometry says, a kernel panics on a slice index (never undefined behaviour).
//!
//! int8 conventions shared by all kernels:
//! - zero points are in `-128..=127`, so `x - zero_point` is in `-255..=255`;
//! - dot products (`sum (x - zp) * w`) have at most [`MAX_DOT_LEN`] terms, so they fit an `i32`;
//! - requantisation is [`crate::quant::requantize`] (one rounding, ties towards +inf), then the output zero point
//!   is added (saturating) and the result clamped to the activation range.

pub mod binary;
pub mod conv;
pub mod dsp;
pub mod elementwise;
pub mod fast;
pub mod fast_elementwise;
pub mod fc;
pub mod movement;
pub mod pool;
pub mod reduce;
pub mod softmax;

pub use binary::{binary_f32, binary_s8};
pub use conv::{conv2d_f32, conv2d_s8};
pub use elementwise::{dequantize_s8, lookup_s8, quantize_s8, unary_f32};
pub use fc::{fully_connected_f32, fully_connected_s8};
pub use movement::{concat, copy, pad, slice, transpose};
pub use pool::{avg_pool_f32, avg_pool_s8, max_pool_f32, max_pool_s8};
pub use reduce::{reduce_mean_f32, reduce_mean_s8};
pub use softmax::{softmax_f32, softmax_s8, SoftmaxS8Mode};

use crate::format::MAX_RANK;
use crate::quant::requantize;

/// Most terms a int8 dot product may have: `255 * 128 * MAX_DOT_LEN <= i32::MAX`, so the sum cannot overflow.
pub const MAX_DOT_LEN: u32 = (i32::MAX as u32) / (255 * 128);

/// Most taps an int8 average pool window, or elements an int8 mean, may sum: `255 * MAX_SUM_LEN < i32::MAX`.
pub const MAX_SUM_LEN: u32 = 1 << 23;

/// Per-output-channel requantisation parameters: channel `c` multiplies by `multipliers[c] * 2^(shifts[c] - 15)`,
/// computed exactly as [`requantize`]`(acc, (multipliers[c] as i32) << 16, shifts[c])` (see [`Requant::pair`]).
/// Multipliers are 15-bit mantissas in `[2^14, 2^15)` or 0, shifts in `[-31, 30]` (checked at load).
#[derive(Clone, Copy, Debug)]
pub struct Requant<'a> {
    pub multipliers: &'a [i16],
    pub shifts: &'a [i8],
}

impl Requant<'_> {
    /// Channel `c`'s `(multiplier, shift)` for [`requantize`]: the 15-bit mantissa widened to 31 bits (a shift,
    /// exact). Panics if `c` is out of range.
    #[inline(always)]
    pub fn pair(&self, c: usize) -> (i32, i8) {
        ((self.multipliers[c] as i32) << 16, self.shifts[c])
    }
}

/// Zero points and activation range of an int8 conv or fully connected layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantS8 {
    pub input_zero_point: i32,
    pub output_zero_point: i32,
    pub act_min: i8,
    pub act_max: i8,
}

/// `clamp(requantize(acc, multiplier, shift) + zero_point, act_min, act_max)`, the tail of every int8 MAC kernel.
/// The addition saturates; the clamp never panics even if `act_min > act_max` (then `act_max` wins).
#[inline(always)]
pub fn output_s8(
    acc: i32,
    multiplier: i32,
    shift: i8,
    zero_point: i32,
    act_min: i8,
    act_max: i8,
) -> i8 {
    let v = requantize(acc, multiplier, shift).saturating_add(zero_point);
    clamp_s8(v, act_min, act_max)
}

/// `v` clamped to `[lo, hi]` (never panics: if `lo > hi` the result is `hi`).
#[inline(always)]
pub fn clamp_s8(v: i32, lo: i8, hi: i8) -> i8 {
    v.max(lo as i32).min(hi as i32) as i8
}

/// `v` clamped to `[lo, hi]` with `max`/`min` (never panics; NaN bounds are ignored, NaN `v` stays NaN only if
/// both bounds are NaN).
#[inline(always)]
pub fn clamp_f32(v: f32, lo: f32, hi: f32) -> f32 {
    v.max(lo).min(hi)
}

/// Calls `f(idx)` for every multi-index of `dims` in row-major order (nothing if a dim is 0; once, with an empty
/// index, if `dims` is empty). `dims.len()` must be at most [`MAX_RANK`].
pub(crate) fn for_each_index(dims: &[usize], mut f: impl FnMut(&[usize])) {
    let rank = dims.len().min(MAX_RANK);
    let dims = &dims[..rank];
    if dims.contains(&0) {
        return;
    }
    let mut idx = [0usize; MAX_RANK];
    loop {
        f(&idx[..rank]);
        // Advance the odometer, last axis fastest.
        let mut d = rank;
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            idx[d] += 1;
            if idx[d] < dims[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

/// `sum idx[d] * strides[d]`.
#[inline(always)]
pub(crate) fn dot_index(idx: &[usize], strides: &[usize]) -> usize {
    idx.iter().zip(strides).map(|(&i, &s)| i * s).sum()
}

/// Row-major element strides of `dims` (`strides[rank - 1] = 1`), in the first `dims.len()` entries.
pub(crate) fn row_major_strides(dims: &[usize]) -> [usize; MAX_RANK] {
    let mut strides = [0usize; MAX_RANK];
    let rank = dims.len().min(MAX_RANK);
    let mut s = 1usize;
    for d in (0..rank).rev() {
        strides[d] = s;
        s = s.saturating_mul(dims[d]);
    }
    strides
}

/// Copies a `u32` dims list into a fixed `usize` array (first `rank` entries used).
pub(crate) fn dims_usize(dims: &[u32]) -> ([usize; MAX_RANK], usize) {
    let mut out = [0usize; MAX_RANK];
    let rank = dims.len().min(MAX_RANK);
    for (o, &d) in out.iter_mut().zip(&dims[..rank]) {
        *o = d as usize;
    }
    (out, rank)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::vec::Vec;

    #[test]
    fn max_dot_len_bound() {
        assert!(255i64 * 128 * MAX_DOT_LEN as i64 <= i32::MAX as i64);
        assert!(255i64 * 128 * (MAX_DOT_LEN as i64 + 1) > i32::MAX as i64);
        assert!(255i64 * MAX_SUM_LEN as i64 + MAX_SUM_LEN as i64 / 2 <= i32::MAX as i64);
    }

    #[test]
    fn odometer_row_major() {
        let mut seen = Vec::new();
        for_each_index(&[2, 3], |i| seen.push((i[0], i[1])));
        assert_eq!(seen, [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]);
        let mut n = 0;
        for_each_index(&[], |i| {
            assert!(i.is_empty());
            n += 1
        });
        assert_eq!(n, 1);
        for_each_index(&[3, 0], |_| panic!("empty"));
        assert_eq!(row_major_strides(&[2, 3, 4])[..3], [12, 4, 1]);
    }

    #[test]
    fn output_s8_saturates_and_clamps() {
        assert_eq!(output_s8(i32::MAX, i32::MAX, 30, 127, -128, 127), 127);
        assert_eq!(output_s8(100, 1 << 30, 0, -3, -128, 127), 47);
        assert_eq!(output_s8(100, 1 << 30, 0, 0, 0, 10), 10);
        assert_eq!(clamp_s8(5, 10, 0), 0); // inverted range: no panic
    }
}
