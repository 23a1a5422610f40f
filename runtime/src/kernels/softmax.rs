//! Softmax and LogSoftmax over the middle axis of `[outer, len, inner]`, int8 (integer only) and f32.
//!
//! # int8 arithmetic
//!
//! The host tabulates, for the input scale `s` (times softmax's `beta`),
//! `table[d] = round(2^EXP_BITS * exp(-s * d))` for `d` in `0..=255` (so `table[0] = 2^24`; the host drops the
//! trailing zero entries, and an entry past the table's end is 0), see
//! `crate::host::softmax_s8`. For each of the `outer * inner` rows (the `len` elements `x_i` at stride `inner`):
//!
//! 1. `m = max_i x_i`, `d_i = m - x_i` (in `0..=255`), `sum = sum_i table[d_i]` (`u64`; `sum >= 2^24` for a valid
//!    table since the maximum contributes `table[0]`; `sum = 0` is treated as 1).
//!
//! Softmax (`SoftmaxS8Mode::Softmax`), output scale `1/256`, zero point `zo` (the host uses `-128`):
//!
//! 2. `r = floor((2^55 + floor(sum / 2)) / sum)` (`= round(2^55 / sum)`, ties up; one division per row;
//!    `r <= 2^31` for a valid table),
//! 3. `y_i = clamp(floor((table[d_i] * r + 2^46) / 2^47) + zo, -128, 127)`, i.e. `round(256 * table[d_i] / sum)`
//!    (ties up, up to the rounding of `r`) plus the zero point; the product is at most `2^55`.
//!
//! LogSoftmax (`SoftmaxS8Mode::LogSoftmax { diff_mult: c1, log_mult: c2 }`), output scale `so` and zero point `zo`
//! chosen by the host, `c1 = round(2^16 * s / so)`, `c2 = round(2^16 * ln(2) / so)`:
//!
//! 2. `l = log2_q16(sum) - 24 * 2^16`, the base-2 logarithm of `sum / 2^24` with 16 fractional bits, where
//!    `log2_q16(v) = 2^16 * e + f` with `e = floor(log2 v)` and `f` the 16 bits produced by repeated squaring of the
//!    mantissa `m = floor(v * 2^(31 - e))` (if `v >= 2^32`: `floor(v / 2^(e - 31))`), a Q31 number in `[1, 2)`:
//!    16 times, `m = floor(m * m / 2^31)`, then if `m >= 2^32` the next bit is 1 and `m = floor(m / 2)`, else 0;
//! 3. `t_i = c1 * d_i * 2^16 + c2 * l` (`i64`, the magnitude of the real result in units of `so / 2^32`),
//!    `y_i = clamp(zo - floor((t_i + 2^31) / 2^32), -128, 127)`: the real result `-(s * d_i + ln(sum / 2^24))`
//!    rounded to nearest (ties towards -inf), quantised with `so`, `zo`.

/// `table[0] = 2^EXP_BITS`: the fixed-point scale of the exp table.
pub const EXP_BITS: u32 = 24;
/// `2^EXP_BITS`, the largest value a valid exp table holds.
pub const EXP_ONE: u32 = 1 << EXP_BITS;
/// Fractional bits of the reciprocal in the softmax output step: `r = round(2^RECIP_BITS / sum)`.
const RECIP_BITS: u32 = EXP_BITS + 31;

/// `n / d` (floor; `d > 0`), by binary long division: the one 64-bit division a row needs, without linking the
/// 64-bit division routine (~0.9 KB of a Cortex-M firmware) for it.
fn div_u64(n: u64, d: u64) -> u64 {
    if d == 0 {
        return u64::MAX;
    }
    let (mut q, mut r) = (0u64, 0u64);
    for bit in (0..64 - n.leading_zeros()).rev() {
        r = (r << 1) | ((n >> bit) & 1);
        // Branch-free, so the row costs the same instructions whatever its values.
        let take = (r >= d) as u64;
        r -= d & take.wrapping_neg();
        q |= take << bit;
    }
    q
}

/// What [`softmax_s8`] computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SoftmaxS8Mode {
    /// Output scale 1/256.
    Softmax,
    /// `diff_mult = round(2^16 * input_scale / output_scale)`, `log_mult = round(2^16 * ln(2) / output_scale)`.
    LogSoftmax { diff_mult: i32, log_mult: i32 },
}

/// int8 Softmax or LogSoftmax over the middle axis of `shape = [outer, len, inner]`, integer only, exactly as described in
/// the module documentation. `input` and `output` hold `outer * len * inner` elements.
pub fn softmax_s8(
    [outer, len, inner]: [u32; 3],
    mode: SoftmaxS8Mode,
    table: &[u32],
    output_zero_point: i32,
    input: &[i8],
    output: &mut [i8],
) {
    let (outer, len, inner) = (outer as usize, len as usize, inner as usize);
    if outer == 0 || len == 0 || inner == 0 {
        return; // empty: no row loop over a zero-length axis
    }
    let zo = output_zero_point as i64;
    for o in 0..outer {
        for j in 0..inner {
            let base = o * len * inner + j;
            let row = |i: usize| base + i * inner;
            let mut max = i8::MIN;
            for i in 0..len {
                max = max.max(input[row(i)]);
            }
            let diff = |x: i8| (max as i32 - x as i32) as u8 as usize;
            // The table stops where exp has rounded to 0: entries past its end are 0.
            let exp = |d: usize| table.get(d).copied().unwrap_or(0) as u64;
            let mut sum = 0u64;
            for i in 0..len {
                sum += exp(diff(input[row(i)]));
            }
            let sum = sum.max(1);
            match mode {
                SoftmaxS8Mode::Softmax => {
                    let r = div_u64((1u64 << RECIP_BITS) + sum / 2, sum);
                    let shift = RECIP_BITS - 8;
                    for i in 0..len {
                        let t = exp(diff(input[row(i)]));
                        // At most 2^55 for a valid table (checked at load): wrapping spares the overflow code.
                        let q = t.wrapping_mul(r).wrapping_add(1 << (shift - 1)) >> shift;
                        output[row(i)] = (q as i64 + zo).clamp(-128, 127) as i8;
                    }
                }
                SoftmaxS8Mode::LogSoftmax {
                    diff_mult,
                    log_mult,
                } => {
                    let l = log2_q16(sum) as i64 - ((EXP_BITS as i64) << 16);
                    let log_term = log_mult as i64 * l;
                    for i in 0..len {
                        let d = diff(input[row(i)]) as i64;
                        let t = ((diff_mult as i64 * d) << 16) + log_term;
                        let v = (t + (1 << 31)) >> 32;
                        output[row(i)] = (zo - v).clamp(-128, 127) as i8;
                    }
                }
            }
        }
    }
}

/// `log2(v)` in Q16 (`v >= 1`; `v = 0` gives 0), by repeated squaring of the normalised mantissa, see the module
/// documentation. Exact to within 2 units of `2^-16`.
pub fn log2_q16(v: u64) -> u32 {
    if v == 0 {
        return 0;
    }
    let e = 63 - v.leading_zeros();
    // Mantissa in Q31, in [2^31, 2^32).
    let mut m = if e <= 31 {
        v << (31 - e)
    } else {
        v >> (e - 31)
    };
    let mut frac = 0u32;
    for _ in 0..16 {
        m = (m * m) >> 31; // [2^31, 2^33): m^2 in [1, 4)
        frac <<= 1;
        if m >= 1 << 32 {
            m >>= 1;
            frac |= 1;
        }
    }
    (e << 16) | frac
}

/// f32 Softmax (`y = exp(x - max) / sum exp(x - max)`) or LogSoftmax (`y = x - max - ln(sum exp(x - max))`) over
/// the middle axis of `shape = [outer, len, inner]`; `input` and `output` hold `outer * len * inner` elements.
pub fn softmax_f32([outer, len, inner]: [u32; 3], log: bool, input: &[f32], output: &mut [f32]) {
    let (outer, len, inner) = (outer as usize, len as usize, inner as usize);
    if outer == 0 || len == 0 || inner == 0 {
        return;
    }
    for o in 0..outer {
        for j in 0..inner {
            let base = o * len * inner + j;
            let row = |i: usize| base + i * inner;
            let mut max = f32::NEG_INFINITY;
            for i in 0..len {
                max = max.max(input[row(i)]);
            }
            let mut sum = 0f32;
            for i in 0..len {
                let e = libm::expf(input[row(i)] - max);
                sum += e;
                output[row(i)] = e;
            }
            if log {
                let ln_sum = libm::logf(sum);
                for i in 0..len {
                    output[row(i)] = input[row(i)] - max - ln_sum;
                }
            } else {
                let inv = 1.0 / sum;
                for i in 0..len {
                    output[row(i)] *= inv;
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn long_division_is_division() {
        let mut s = 12345u64;
        for _ in 0..10_000 {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let n = s >> (s % 64);
            let d = (s.rotate_left(17) >> (s % 61)).max(1);
            assert_eq!(div_u64(n, d), n / d, "{n} / {d}");
        }
        assert_eq!(div_u64(u64::MAX, 1), u64::MAX);
        assert_eq!(div_u64(u64::MAX, u64::MAX), 1);
        assert_eq!(div_u64(0, 7), 0);
    }

    #[test]
    fn log2_q16_matches_float() {
        for v in [
            1u64,
            2,
            3,
            5,
            1000,
            1 << 24,
            (1 << 24) + 12345,
            99_999_999_999,
            u64::MAX,
        ] {
            let exact = (v as f64).log2() * 65536.0;
            let got = log2_q16(v) as f64;
            assert!(
                got <= exact + 1e-6 && exact - got < 2.0,
                "v {v}: {got} vs {exact}"
            );
        }
        assert_eq!(log2_q16(1 << 40), 40 << 16);
    }

    #[test]
    fn s8_uniform_row() {
        // All equal: each gets 1/len = 64/256 -> 64 - 128 = -64.
        let mut table = [0u32; 256];
        table[0] = EXP_ONE;
        let mut y = [0i8; 4];
        softmax_s8(
            [1, 4, 1],
            SoftmaxS8Mode::Softmax,
            &table,
            -128,
            &[7; 4],
            &mut y,
        );
        assert_eq!(y, [-64; 4]);
        // One element alone saturates to 127 (1.0 is not representable).
        let mut y = [0i8; 1];
        softmax_s8(
            [1, 1, 1],
            SoftmaxS8Mode::Softmax,
            &table,
            -128,
            &[-3],
            &mut y,
        );
        assert_eq!(y, [127]);
    }

    #[test]
    fn f32_softmax_inner_axis() {
        // [1, 2, 2]: softmax over axis 1 pairs (0, 2) and (1, 3).
        let x = [0.0f32, 1.0, 0.0, 3.0];
        let mut y = [0f32; 4];
        softmax_f32([1, 2, 2], false, &x, &mut y);
        assert!((y[0] - 0.5).abs() < 1e-6 && (y[2] - 0.5).abs() < 1e-6);
        assert!((y[1] - 0.119_202_92).abs() < 1e-6 && (y[3] - 0.880_797).abs() < 1e-6);
        softmax_f32([1, 2, 2], true, &x, &mut y);
        assert!((y[0] + core::f32::consts::LN_2).abs() < 1e-6);
    }
}
