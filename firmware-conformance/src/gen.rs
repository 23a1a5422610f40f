//! Generators shared by the cases: zero points, activation ranges, tensors, requantisation pairs, biases.
//! Distributed like the host conformance tests' proptest strategies (`runtime/tests/kernels_s8.rs`).

use kiln_runtime::kernels::fast::MAX_FOLDED_BIAS;
use kiln_runtime::kernels::QuantS8;

use crate::rng::Rng;

/// Anywhere in `-128..=127`, the extremes and 0 often.
pub fn zero_point(r: &mut Rng) -> i32 {
    match r.below(7) {
        0 => -128,
        1 => 127,
        2 => 0,
        _ => r.range(-128, 127) as i32,
    }
}

/// The full range, or a random (often narrow) one.
pub fn act_range(r: &mut Rng) -> (i8, i8) {
    if r.chance(2, 5) {
        (-128, 127)
    } else {
        let (a, b) = (r.byte(), r.byte());
        (a.min(b), a.max(b))
    }
}

pub fn quant(r: &mut Rng) -> QuantS8 {
    let (act_min, act_max) = act_range(r);
    QuantS8 {
        input_zero_point: zero_point(r),
        output_zero_point: zero_point(r),
        act_min,
        act_max,
    }
}

/// An input tensor: random bytes mostly, sometimes all -128, all 127, all one value, or the extremes mixed.
pub fn fill(r: &mut Rng, buf: &mut [i8]) {
    match r.below(12) {
        0 => buf.fill(-128),
        1 => buf.fill(127),
        2 => {
            let v = r.byte();
            buf.fill(v)
        }
        3 => buf
            .iter_mut()
            .for_each(|x| *x = if r.next() >> 31 == 1 { 127 } else { -128 }),
        _ => buf.iter_mut().for_each(|x| *x = r.byte()),
    }
}

/// Weights: random bytes, sometimes only the extremes (the largest sums).
pub fn fill_weights(r: &mut Rng, buf: &mut [i8]) {
    match r.below(10) {
        0 => buf
            .iter_mut()
            .for_each(|x| *x = if r.next() >> 31 == 1 { 127 } else { -128 }),
        1 => buf.fill(-128),
        _ => buf.iter_mut().for_each(|x| *x = r.byte()),
    }
}

/// Per-channel requantisation pairs the packers take (`fast::q31_multiplier`): 15-bit mantissas in
/// `[2^14, 2^15)` or 0, shifts in `-16..=-1`; often a shift that keeps dot products of `k` terms in range, so
/// that not every output saturates; sometimes one pair for every channel.
pub fn requant(r: &mut Rng, k: usize, mult: &mut [i16], shift: &mut [i8]) {
    let bits = usize::BITS - k.leading_zeros(); // about log2(k) + 1
    let sensible = -(8 + bits as i64 / 2);
    let pair = |r: &mut Rng| -> (i16, i8) {
        let m = match r.below(12) {
            0 => 0,
            1 => 1 << 14,
            2 => i16::MAX,
            _ => r.range(1 << 14, i16::MAX as i64) as i16,
        };
        let s = match r.below(6) {
            0 | 1 => r.range(-16, -1),
            2 => {
                if r.chance(1, 2) {
                    -16
                } else {
                    -1
                }
            }
            _ => (sensible + r.range(-2, 2)).clamp(-16, -1),
        };
        (m, s as i8)
    };
    let shared = r.chance(1, 4).then(|| pair(r));
    for (m, s) in mult.iter_mut().zip(shift.iter_mut()) {
        (*m, *s) = shared.unwrap_or_else(|| pair(r));
    }
}

/// Fills `out` with biases and returns whether the case has them: none sometimes; small ones mostly; in some
/// cases large ones too, up to the extremes (`i32::MIN`/`MAX`, or `±MAX_FOLDED_BIAS` when `folded`: the depthwise
/// packer's limit).
pub fn bias(r: &mut Rng, out: &mut [i32], folded: bool) -> bool {
    if r.chance(1, 5) {
        return false;
    }
    let large = r.chance(2, 5);
    let lim = MAX_FOLDED_BIAS as i64;
    for b in out {
        *b = match if large { r.below(10) } else { 9 } {
            0 | 1 if folded => r.range(-lim, lim) as i32,
            0 | 1 => r.any_i32(),
            2 if folded => {
                if r.chance(1, 2) {
                    MAX_FOLDED_BIAS
                } else {
                    -MAX_FOLDED_BIAS
                }
            }
            2 => {
                if r.chance(1, 2) {
                    i32::MAX
                } else {
                    i32::MIN
                }
            }
            3 => r.range(-(1 << 24), 1 << 24) as i32,
            _ => r.range(-200_000, 199_999) as i32,
        };
    }
    true
}

/// Little-endian words of packed bytes (as the loader hands packed weights to the kernels).
pub fn words(bytes: &[u8], out: &mut [u32]) {
    for (w, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}
