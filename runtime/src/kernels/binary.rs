//! Broadcasting elementwise binary ops (Add, Sub, Mul, PRelu), int8 and f32.

use super::{clamp_f32, dims_usize, dot_index, for_each_index, output_s8};
use crate::format::{BinaryF32, BinaryKind, BinaryS8, Broadcast};
use crate::quant::requantize;

/// Largest `left_shift` [`binary_s8`] accepts: `255 << 23 < 2^31`.
pub const MAX_LEFT_SHIFT: u8 = 23;

/// Calls `out[i] = f(a[ia], b[ib])` for every output element `i` (row-major over `bc.out`), with
/// `ia = sum idx[d] * a_strides[d]` and `ib` likewise. The innermost axis runs as a plain strided loop.
///
/// Preconditions: the three lists have the same length (at most `MAX_RANK`), `out` holds `prod(bc.out)` elements,
/// and the largest `ia` (`sum (out[d] - 1) * a_strides[d]`) is below `a.len()` (likewise `b`), unless the output
/// is empty.
pub fn broadcast<A: Copy, B: Copy, O>(
    bc: &Broadcast,
    a: &[A],
    b: &[B],
    out: &mut [O],
    mut f: impl FnMut(A, B) -> O,
) {
    let (dims, rank) = dims_usize(&bc.out);
    let (sa, _) = dims_usize(&bc.a_strides);
    let (sb, _) = dims_usize(&bc.b_strides);
    if rank == 0 {
        if let (Some(y), Some(&x0), Some(&x1)) = (out.first_mut(), a.first(), b.first()) {
            *y = f(x0, x1);
        }
        return;
    }
    if dims[..rank].contains(&0) {
        return; // empty output: never loop over the other axes
    }
    let last = rank - 1;
    let (n, step_a, step_b) = (dims[last], sa[last], sb[last]);
    let mut o = 0usize;
    for_each_index(&dims[..last], |idx| {
        let a0 = dot_index(idx, &sa[..last]);
        let b0 = dot_index(idx, &sb[..last]);
        let row = &mut out[o..o + n];
        for (i, y) in row.iter_mut().enumerate() {
            *y = f(a[a0 + i * step_a], b[b0 + i * step_b]);
        }
        o += n;
    });
}

/// int8 elementwise op with broadcasting (see [`broadcast`] for the indexing). With `za`, `zb`, `zo` the zero
/// points and `rq(v, m, s)` = [`requantize`]:
/// - `Add` / `Sub`: `sa = rq((a - za) << left_shift, a_multiplier, a_shift)`, `sb` likewise with `b_*`,
///   `acc = sat_i32(sa ± sb)`, `y = rq(acc, out_multiplier, out_shift)`;
/// - `Mul`: `y = rq((a - za) * (b - zb), out_multiplier, out_shift)`;
/// - `PRelu` (`a` the input, `b` the slope): `a >= za` -> `y = rq(a - za, a_multiplier, a_shift)`, else
///   `y = rq((a - za) * (b - zb), out_multiplier, out_shift)`;
///
/// then `clamp(y + zo, act_min, act_max)` (saturating add). Preconditions: zero points in `-128..=127`,
/// `left_shift <= `[`MAX_LEFT_SHIFT`], valid multiplier/shift pairs; `left_shift` is unused by `Mul`/`PRelu`.
pub fn binary_s8(p: &BinaryS8, a: &[i8], b: &[i8], out: &mut [i8]) {
    let (za, zb, zo) = (p.a_zero_point, p.b_zero_point, p.out_zero_point);
    let (lo, hi) = (p.act_min, p.act_max);
    let ls = p.left_shift as u32;
    match p.kind {
        BinaryKind::Add | BinaryKind::Sub => {
            let sub = p.kind == BinaryKind::Sub;
            broadcast(&p.bcast, a, b, out, |x, y| {
                let sx = requantize((x as i32 - za).wrapping_shl(ls), p.a_multiplier, p.a_shift);
                let sy = requantize((y as i32 - zb).wrapping_shl(ls), p.b_multiplier, p.b_shift);
                let acc = if sub {
                    sx.saturating_sub(sy)
                } else {
                    sx.saturating_add(sy)
                };
                output_s8(acc, p.out_multiplier, p.out_shift, zo, lo, hi)
            })
        }
        BinaryKind::Mul => broadcast(&p.bcast, a, b, out, |x, y| {
            output_s8(
                (x as i32 - za) * (y as i32 - zb),
                p.out_multiplier,
                p.out_shift,
                zo,
                lo,
                hi,
            )
        }),
        BinaryKind::PRelu => broadcast(&p.bcast, a, b, out, |x, y| {
            let xs = x as i32 - za;
            if xs >= 0 {
                output_s8(xs, p.a_multiplier, p.a_shift, zo, lo, hi)
            } else {
                output_s8(
                    xs * (y as i32 - zb),
                    p.out_multiplier,
                    p.out_shift,
                    zo,
                    lo,
                    hi,
                )
            }
        }),
    }
}

/// f32 elementwise op with broadcasting: `a + b`, `a - b`, `a * b`, or PRelu `a > 0 ? a : a * b`, then clamped to
/// `[act_min, act_max]`.
pub fn binary_f32(p: &BinaryF32, a: &[f32], b: &[f32], out: &mut [f32]) {
    let (lo, hi) = (p.act_min, p.act_max);
    match p.kind {
        BinaryKind::Add => broadcast(&p.bcast, a, b, out, |x, y| clamp_f32(x + y, lo, hi)),
        BinaryKind::Sub => broadcast(&p.bcast, a, b, out, |x, y| clamp_f32(x - y, lo, hi)),
        BinaryKind::Mul => broadcast(&p.bcast, a, b, out, |x, y| clamp_f32(x * y, lo, hi)),
        BinaryKind::PRelu => broadcast(&p.bcast, a, b, out, |x, y| {
            clamp_f32(if x > 0.0 { x } else { x * y }, lo, hi)
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use heapless::Vec;

    fn dims(d: &[u32]) -> Vec<u32, 6> {
        Vec::from_slice(d).unwrap()
    }

    #[test]
    fn f32_broadcast_row_and_column() {
        // out [2, 3]; a is a column [2, 1], b a row [1, 3].
        let bc = Broadcast {
            out: dims(&[2, 3]),
            a_strides: dims(&[1, 0]),
            b_strides: dims(&[0, 1]),
        };
        let p = BinaryF32 {
            kind: BinaryKind::Add,
            bcast: bc,
            act_min: f32::MIN,
            act_max: f32::MAX,
        };
        let mut y = [0f32; 6];
        binary_f32(&p, &[10.0, 20.0], &[1.0, 2.0, 3.0], &mut y);
        assert_eq!(y, [11., 12., 13., 21., 22., 23.]);
    }

    #[test]
    fn f32_prelu() {
        let bc = Broadcast {
            out: dims(&[4]),
            a_strides: dims(&[1]),
            b_strides: dims(&[0]),
        };
        let p = BinaryF32 {
            kind: BinaryKind::PRelu,
            bcast: bc,
            act_min: f32::MIN,
            act_max: f32::MAX,
        };
        let mut y = [0f32; 4];
        binary_f32(&p, &[-2.0, -1.0, 0.0, 3.0], &[0.25], &mut y);
        assert_eq!(y, [-0.5, -0.25, 0.0, 3.0]);
    }

    #[test]
    fn s8_add_same_scales() {
        // a, b and out share scale s and zero point 0: y = a + b. TFLM-style: multipliers 0.5, out 2 / 2^20.
        let bc = Broadcast {
            out: dims(&[3]),
            a_strides: dims(&[1]),
            b_strides: dims(&[1]),
        };
        let p = BinaryS8 {
            kind: BinaryKind::Add,
            bcast: bc,
            a_zero_point: 0,
            b_zero_point: 0,
            out_zero_point: 0,
            left_shift: 20,
            a_multiplier: 1 << 30,
            a_shift: 0,
            b_multiplier: 1 << 30,
            b_shift: 0,
            out_multiplier: 1 << 30,
            out_shift: -18, // 0.5 * 2^-18 = 2^-19 = 2 / 2^20
            act_min: -128,
            act_max: 127,
            kernel: crate::format::KernelS8::Reference,
        };
        let mut y = [0i8; 3];
        binary_s8(&p, &[1, -50, 100], &[2, -100, 100], &mut y);
        assert_eq!(y, [3, -128, 127]);
    }
}
