//! Host-side precomputation for the int8 ops (feature `std`): everything that needs floating-point math is done
//! here, once, by the compiler, and stored in the model as integers.
//!
//! - [`quantize_multiplier`]: a real multiplier as the `(multiplier, shift)` pair [`crate::quant::requantize`] uses;
//!   [`quantize_multiplier_q15`], its 15-bit form, and [`per_channel_multipliers`] for conv / fully connected
//!   layers; [`reduce_mean_multiplier`].
//! - [`lookup_table`]: any int8 -> int8 function (activations, requantisation) as a `LookupS8` table.
//! - [`add_sub_s8`], [`mul_s8`], [`prelu_s8`]: the quantisation fields of a `BinaryS8`.
//! - [`softmax_s8`], [`log_softmax_s8`]: the exp table and `params` of a `SoftmaxS8`.
//! - [`quantize`], [`dequantize`], [`act_range_s8`]: scalar helpers.

use std::fmt;
use std::vec::Vec;

use crate::format::{BinaryKind, BinaryS8, Broadcast, Quant, SoftmaxS8, Span};
use crate::kernels::softmax::EXP_BITS;
use crate::quant::{SHIFT_MAX, SHIFT_MIN};

/// A quantisation parameter the int8 ops cannot represent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HostError {
    /// A scale is zero, negative, NaN or infinite.
    BadScale { what: &'static str, value: f64 },
    /// A zero point outside `-128..=127`.
    BadZeroPoint { what: &'static str, value: i32 },
    /// A derived constant does not fit its integer field.
    OutOfRange { what: &'static str, value: f64 },
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            HostError::BadScale { what, value } => {
                write!(f, "{what}: scale {value} is not a positive finite number")
            }
            HostError::BadZeroPoint { what, value } => {
                write!(f, "{what}: zero point {value} is outside -128..=127")
            }
            HostError::OutOfRange { what, value } => {
                write!(f, "{what}: {value} does not fit the int8 kernel's range")
            }
        }
    }
}

impl std::error::Error for HostError {}

fn scale(what: &'static str, s: f32) -> Result<f64, HostError> {
    let v = s as f64;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(HostError::BadScale { what, value: v })
    }
}

fn zero_point(what: &'static str, zp: i32) -> Result<i32, HostError> {
    if (-128..=127).contains(&zp) {
        Ok(zp)
    } else {
        Err(HostError::BadZeroPoint { what, value: zp })
    }
}

/// `real` as `(multiplier, shift)` with `real ≈ multiplier * 2^(shift - 31)`, `multiplier` in `[2^30, 2^31)`:
/// frexp-style, the mantissa rounded to 31 bits (a mantissa rounding up to `2^31` becomes `2^30` with the exponent
/// plus one). Out of range:
/// - `real <= 0`, NaN, or below `2^-33` (half the smallest representable value `2^-32`): `(0, 0)` (multiply by 0;
///   negative multipliers are not representable);
/// - in `[2^-33, 2^-32)`: `(2^30, -31)`, i.e. `2^-32`;
/// - `2^30` or more (shift above 30), or infinite: `(i32::MAX, 30)`, i.e. just under `2^30`.
pub fn quantize_multiplier(real: f64) -> (i32, i8) {
    if real.is_nan() || real <= 0.0 {
        return (0, 0);
    }
    if real.is_infinite() {
        return (i32::MAX, SHIFT_MAX);
    }
    let bits = real.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i64;
    if biased == 0 {
        return (0, 0); // subnormal: far below 2^-33
    }
    // real = mant * 2^(biased - 1075) = (mant / 2^53) * 2^e, mant / 2^53 in [0.5, 1)
    let mant = (bits & ((1u64 << 52) - 1)) | (1u64 << 52);
    let mut e = biased - 1022;
    let mut m = (mant + (1 << 21)) >> 22; // round(mant / 2^53 * 2^31), in [2^30, 2^31]
    if m == 1 << 31 {
        m = 1 << 30;
        e += 1;
    }
    if e > SHIFT_MAX as i64 {
        return (i32::MAX, SHIFT_MAX);
    }
    if e < SHIFT_MIN as i64 {
        return if real >= 2f64.powi(-33) {
            (1 << 30, SHIFT_MIN)
        } else {
            (0, 0)
        };
    }
    (m as i32, e as i8)
}

/// The real value a `(multiplier, shift)` pair stands for.
pub fn multiplier_value(multiplier: i32, shift: i8) -> f64 {
    multiplier as f64 * 2f64.powi(shift as i32 - 31)
}

/// `real` as a per-channel `(multiplier, shift)` pair with a 15-bit mantissa: `real ≈ multiplier * 2^(shift - 15)`,
/// `multiplier` in `[2^14, 2^15)`, `shift` in `[-31, 30]`; the device computes
/// `requantize(acc, (multiplier as i32) << 16, shift)`. The mantissa is rounded once, to nearest (ties up), from
/// `real` itself (relative error at most `2^-15`); a mantissa rounding up to `2^15` becomes `2^14` with the shift
/// plus one. Out of range, as [`quantize_multiplier`]:
/// - `real <= 0`, NaN, or below `2^-33` (half the smallest representable value `2^-32`): `(0, 0)`;
/// - in `[2^-33, 2^-32)`: `(2^14, -31)`, i.e. `2^-32`;
/// - rounding to `2^30` or more (shift above 30), or infinite: `(i16::MAX, 30)`, i.e. `2^30 - 2^15`.
pub fn quantize_multiplier_q15(real: f64) -> (i16, i8) {
    const SATURATED: (i16, i8) = (i16::MAX, SHIFT_MAX);
    if real.is_nan() || real <= 0.0 {
        return (0, 0);
    }
    if real.is_infinite() {
        return SATURATED;
    }
    let bits = real.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i64;
    if biased == 0 {
        return (0, 0); // subnormal: far below 2^-33
    }
    // real = (mant / 2^53) * 2^e with mant / 2^53 in [0.5, 1); the 15-bit mantissa is round(mant / 2^38).
    let mant = (bits & ((1u64 << 52) - 1)) | (1u64 << 52);
    let mut e = biased - 1022;
    let mut m = (mant + (1 << 37)) >> 38; // in [2^14, 2^15]
    if m == 1 << 15 {
        m = 1 << 14;
        e += 1;
    }
    if e > SHIFT_MAX as i64 {
        return SATURATED;
    }
    if e < SHIFT_MIN as i64 {
        return if real >= 2f64.powi(-33) {
            (1 << 14, SHIFT_MIN)
        } else {
            (0, 0)
        };
    }
    (m as i16, e as i8)
}

/// The real value a per-channel `(multiplier, shift)` pair (15-bit mantissa) stands for.
pub fn multiplier_q15_value(multiplier: i16, shift: i8) -> f64 {
    multiplier as f64 * 2f64.powi(shift as i32 - 15)
}

/// Per-output-channel requantisation of a conv / fully connected layer: channel `c` gets
/// `quantize_multiplier_q15(input_scale * weight_scales[c] / output_scale)`. Returns `(multipliers, shifts)`,
/// ready to be stored as the `i16` and `i8` arrays of a `PerChannel`.
pub fn per_channel_multipliers(
    input_scale: f32,
    weight_scales: &[f32],
    output_scale: f32,
) -> Result<(Vec<i16>, Vec<i8>), HostError> {
    let si = scale("input", input_scale)?;
    let so = scale("output", output_scale)?;
    let mut out = (
        Vec::with_capacity(weight_scales.len()),
        Vec::with_capacity(weight_scales.len()),
    );
    for &w in weight_scales {
        // A zero weight scale (an all-zero channel) is fine: multiplier 0.
        if !(w.is_finite() && w >= 0.0) {
            return Err(HostError::BadScale {
                what: "weights",
                value: w as f64,
            });
        }
        let (m, s) = quantize_multiplier_q15(si * w as f64 / so);
        out.0.push(m);
        out.1.push(s);
    }
    Ok(out)
}

/// `ReduceMeanS8`'s `(multiplier, shift)`: `input_scale / (output_scale * count)`.
pub fn reduce_mean_multiplier(
    input_scale: f32,
    output_scale: f32,
    count: u64,
) -> Result<(i32, i8), HostError> {
    let si = scale("input", input_scale)?;
    let so = scale("output", output_scale)?;
    if count == 0 {
        return Err(HostError::OutOfRange {
            what: "reduce_mean count",
            value: 0.0,
        });
    }
    Ok(quantize_multiplier(si / (so * count as f64)))
}

/// `x` quantised with `q`: `round(x / scale) + zero_point` (ties away from zero), saturated to int8; NaN gives the
/// zero point.
pub fn quantize(q: Quant, x: f32) -> i8 {
    quantize_f64(q, x as f64)
}

fn quantize_f64(q: Quant, x: f64) -> i8 {
    if x.is_nan() {
        return q.zero_point.clamp(-128, 127) as i8;
    }
    let v = (x / q.scale as f64).round() + q.zero_point as f64;
    v.clamp(-128.0, 127.0) as i8
}

/// `scale * (v - zero_point)`.
pub fn dequantize(q: Quant, v: i8) -> f32 {
    (q.scale as f64 * (v as i32 - q.zero_point) as f64) as f32
}

/// The int8 activation range `[act_min, act_max]` of a fused activation clamping to `[lo, hi]` (real values; use
/// infinities for "none"), quantised with the output's `q`, saturated to int8.
pub fn act_range_s8(q: Quant, lo: f32, hi: f32) -> (i8, i8) {
    let (a, b) = (quantize(q, lo), quantize(q, hi));
    (a.min(b), b.max(a))
}

/// A `LookupS8` table: entry `x + 128` is `f(dequantize(in_q, x))` quantised with `out_q` (rounded to nearest,
/// saturated), for every int8 `x`. The function is evaluated in f32, the quantisation in f64.
pub fn lookup_table(in_q: Quant, out_q: Quant, f: impl Fn(f32) -> f32) -> [i8; 256] {
    let mut table = [0i8; 256];
    for (i, t) in table.iter_mut().enumerate() {
        let x = i as i32 - 128;
        let real = in_q.scale as f64 * (x - in_q.zero_point) as f64;
        *t = quantize_f64(out_q, f(real as f32) as f64);
    }
    table
}

/// `left_shift` for int8 Add/Sub (as TFLite Micro does): inputs are scaled up by `2^20` before being rescaled to a
/// common scale, so that rescaling rounds at a 20-bit finer grain than the output.
pub const ADD_LEFT_SHIFT: u8 = 20;

/// The quantisation fields of a [`BinaryS8`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BinaryS8Quant {
    pub a_zero_point: i32,
    pub b_zero_point: i32,
    pub out_zero_point: i32,
    pub left_shift: u8,
    pub a_multiplier: i32,
    pub a_shift: i8,
    pub b_multiplier: i32,
    pub b_shift: i8,
    pub out_multiplier: i32,
    pub out_shift: i8,
}

impl BinaryS8Quant {
    /// The complete op parameters.
    pub fn into_op(self, kind: BinaryKind, bcast: Broadcast, act_min: i8, act_max: i8) -> BinaryS8 {
        BinaryS8 {
            kind,
            bcast,
            a_zero_point: self.a_zero_point,
            b_zero_point: self.b_zero_point,
            out_zero_point: self.out_zero_point,
            left_shift: self.left_shift,
            a_multiplier: self.a_multiplier,
            a_shift: self.a_shift,
            b_multiplier: self.b_multiplier,
            b_shift: self.b_shift,
            out_multiplier: self.out_multiplier,
            out_shift: self.out_shift,
            act_min,
            act_max,
            kernel: crate::format::KernelS8::Reference,
        }
    }
}

fn three(a: Quant, b: Quant, out: Quant) -> Result<([f64; 3], [i32; 3]), HostError> {
    Ok((
        [
            scale("a", a.scale)?,
            scale("b", b.scale)?,
            scale("output", out.scale)?,
        ],
        [
            zero_point("a", a.zero_point)?,
            zero_point("b", b.zero_point)?,
            zero_point("output", out.zero_point)?,
        ],
    ))
}

/// Add or Sub (same parameters): with `m = 2 * max(sa, sb)`, `a` is rescaled by `sa / m`, `b` by `sb / m` (both at
/// most 1/2) after a left shift of [`ADD_LEFT_SHIFT`], and the sum by `m / (2^20 * so)`.
pub fn add_sub_s8(a: Quant, b: Quant, out: Quant) -> Result<BinaryS8Quant, HostError> {
    let ([sa, sb, so], [za, zb, zo]) = three(a, b, out)?;
    let twice_max = 2.0 * sa.max(sb);
    let (a_multiplier, a_shift) = quantize_multiplier(sa / twice_max);
    let (b_multiplier, b_shift) = quantize_multiplier(sb / twice_max);
    let (out_multiplier, out_shift) =
        quantize_multiplier(twice_max / ((1u64 << ADD_LEFT_SHIFT) as f64 * so));
    Ok(BinaryS8Quant {
        a_zero_point: za,
        b_zero_point: zb,
        out_zero_point: zo,
        left_shift: ADD_LEFT_SHIFT,
        a_multiplier,
        a_shift,
        b_multiplier,
        b_shift,
        out_multiplier,
        out_shift,
    })
}

/// Mul: the product of the centred inputs rescaled by `sa * sb / so` (`a_*`, `b_*` unused: 0).
pub fn mul_s8(a: Quant, b: Quant, out: Quant) -> Result<BinaryS8Quant, HostError> {
    let ([sa, sb, so], [za, zb, zo]) = three(a, b, out)?;
    let (out_multiplier, out_shift) = quantize_multiplier(sa * sb / so);
    Ok(BinaryS8Quant {
        a_zero_point: za,
        b_zero_point: zb,
        out_zero_point: zo,
        left_shift: 0,
        a_multiplier: 0,
        a_shift: 0,
        b_multiplier: 0,
        b_shift: 0,
        out_multiplier,
        out_shift,
    })
}

/// PRelu with input `x` and slope `alpha`: the identity branch rescaled by `sx / so` (`a_*`), the negative branch
/// `x * alpha` by `sx * salpha / so` (`out_*`).
pub fn prelu_s8(x: Quant, alpha: Quant, out: Quant) -> Result<BinaryS8Quant, HostError> {
    let ([sx, sa, so], [zx, za, zo]) = three(x, alpha, out)?;
    let (a_multiplier, a_shift) = quantize_multiplier(sx / so);
    let (out_multiplier, out_shift) = quantize_multiplier(sx * sa / so);
    Ok(BinaryS8Quant {
        a_zero_point: zx,
        b_zero_point: za,
        out_zero_point: zo,
        left_shift: 0,
        a_multiplier,
        a_shift,
        b_multiplier: 0,
        b_shift: 0,
        out_multiplier,
        out_shift,
    })
}

/// Softmax's fixed output quantisation: scale 1/256, zero point -128.
pub const SOFTMAX_OUTPUT: Quant = Quant {
    scale: 1.0 / 256.0,
    zero_point: -128,
};

/// A good LogSoftmax output quantisation (TFLite's): scale 16/256, zero point 127, covering `[-16, 0]`.
pub const LOG_SOFTMAX_OUTPUT: Quant = Quant {
    scale: 16.0 / 256.0,
    zero_point: 127,
};

/// What a `SoftmaxS8` needs from the host.
#[derive(Clone, Debug, PartialEq)]
pub struct SoftmaxS8Host {
    /// `round(2^24 * exp(-beta * input_scale * d))` for `d` in `0..=255`: store in the blob (4-aligned) as
    /// [`Self::exp_table_bytes`] and point `SoftmaxS8::exp_table` at it.
    pub exp_table: [u32; 256],
    /// `SoftmaxS8::params`.
    pub params: heapless::Vec<i32, 8>,
    /// The output tensor's quantisation (`output_zero_point` is its zero point).
    pub output: Quant,
}

impl SoftmaxS8Host {
    /// The exp table as little-endian bytes, without its trailing zero entries (the kernel reads past the end
    /// as 0): 4 to 1024 bytes.
    pub fn exp_table_bytes(&self) -> Vec<u8> {
        let len = self
            .exp_table
            .iter()
            .rposition(|&v| v != 0)
            .map_or(1, |i| i + 1);
        self.exp_table[..len]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()
    }

    /// The op over the middle axis of `[outer, len, inner]`, with the table stored at `exp_table`.
    pub fn into_op(self, outer: u32, len: u32, inner: u32, exp_table: Span) -> SoftmaxS8 {
        SoftmaxS8 {
            outer,
            len,
            inner,
            log: self.params.len() == 2,
            exp_table,
            params: self.params,
            output_zero_point: self.output.zero_point,
        }
    }
}

fn exp_table(beta_scale: f64) -> [u32; 256] {
    let mut t = [0u32; 256];
    for (d, v) in t.iter_mut().enumerate() {
        *v = ((1u64 << EXP_BITS) as f64 * (-beta_scale * d as f64).exp()).round() as u32;
    }
    t
}

fn beta_scale(input_scale: f32, beta: f32) -> Result<f64, HostError> {
    let s = scale("input", input_scale)? * beta as f64;
    if s.is_finite() && s >= 0.0 {
        Ok(s)
    } else {
        Err(HostError::OutOfRange {
            what: "softmax beta * input scale",
            value: s,
        })
    }
}

/// int8 Softmax of an input with scale `input_scale` (any zero point: softmax only sees differences) and
/// temperature `beta` (ONNX: 1). Output quantisation [`SOFTMAX_OUTPUT`], `params` empty. See
/// `kernels::softmax` for the arithmetic.
pub fn softmax_s8(input_scale: f32, beta: f32) -> Result<SoftmaxS8Host, HostError> {
    let s = beta_scale(input_scale, beta)?;
    Ok(SoftmaxS8Host {
        exp_table: exp_table(s),
        params: heapless::Vec::new(),
        output: SOFTMAX_OUTPUT,
    })
}

/// int8 LogSoftmax, output quantised with `output` (e.g. [`LOG_SOFTMAX_OUTPUT`]; zero point in `-128..=127`).
/// `params = [round(2^16 * beta * input_scale / so), round(2^16 * ln 2 / so)]`, both must fit an `i32` (so
/// `so > ln(2) / 2^15`). See `kernels::softmax` for the arithmetic.
pub fn log_softmax_s8(
    input_scale: f32,
    beta: f32,
    output: Quant,
) -> Result<SoftmaxS8Host, HostError> {
    let s = beta_scale(input_scale, beta)?;
    let so = scale("output", output.scale)?;
    zero_point("output", output.zero_point)?;
    let mut params = heapless::Vec::new();
    for (what, v) in [
        ("log_softmax diff_mult", s / so),
        ("log_softmax log_mult", std::f64::consts::LN_2 / so),
    ] {
        let c = (v * 65536.0).round();
        if !(0.0..=i32::MAX as f64).contains(&c) {
            return Err(HostError::OutOfRange { what, value: v });
        }
        // Capacity 8: two pushes cannot fail.
        let _ = params.push(c as i32);
    }
    Ok(SoftmaxS8Host {
        exp_table: exp_table(s),
        params,
        output,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::quant::{requantize, valid_multiplier};

    #[test]
    fn multiplier_edge_cases() {
        assert_eq!(quantize_multiplier(0.0), (0, 0));
        assert_eq!(quantize_multiplier(-0.5), (0, 0));
        assert_eq!(quantize_multiplier(f64::NAN), (0, 0));
        assert_eq!(quantize_multiplier(0.5), (1 << 30, 0));
        assert_eq!(quantize_multiplier(1.0), (1 << 30, 1));
        assert_eq!(quantize_multiplier(0.75), (3 << 29, 0));
        assert_eq!(quantize_multiplier(2f64.powi(-32)), (1 << 30, -31));
        assert_eq!(quantize_multiplier(2f64.powi(-33) * 1.01), (1 << 30, -31));
        assert_eq!(quantize_multiplier(2f64.powi(-34)), (0, 0));
        assert_eq!(quantize_multiplier(1e-300), (0, 0));
        assert_eq!(quantize_multiplier(f64::MIN_POSITIVE / 4.0), (0, 0)); // subnormal
        assert_eq!(quantize_multiplier(2f64.powi(29) * 1.5), (3 << 29, 30));
        assert_eq!(quantize_multiplier(2f64.powi(30)), (i32::MAX, 30));
        assert_eq!(quantize_multiplier(f64::INFINITY), (i32::MAX, 30));
        // Just under a power of two: the mantissa rounds up to 2^31 and renormalises.
        assert_eq!(quantize_multiplier(1.0 - 1e-12), (1 << 30, 1));
    }

    #[test]
    fn multipliers_are_valid_and_close() {
        let mut r = 1.234_567e-9f64;
        while r < 1e9 {
            let (m, s) = quantize_multiplier(r);
            assert!(valid_multiplier(m, s), "{r}: {m} {s}");
            if r < 2f64.powi(30) {
                let back = multiplier_value(m, s);
                assert!(((back - r) / r).abs() <= 2f64.powi(-31), "{r} -> {back}");
            }
            r *= 1.37;
        }
    }

    #[test]
    fn multiplier_q15_edge_cases() {
        assert_eq!(quantize_multiplier_q15(0.0), (0, 0));
        assert_eq!(quantize_multiplier_q15(-0.0), (0, 0));
        assert_eq!(quantize_multiplier_q15(-0.5), (0, 0));
        assert_eq!(quantize_multiplier_q15(f64::NAN), (0, 0));
        assert_eq!(quantize_multiplier_q15(f64::NEG_INFINITY), (0, 0));
        assert_eq!(quantize_multiplier_q15(0.5), (1 << 14, 0));
        assert_eq!(quantize_multiplier_q15(1.0), (1 << 14, 1));
        assert_eq!(quantize_multiplier_q15(0.75), (3 << 13, 0));
        // Largest mantissa, exactly; then the tie just above it rounds up to 2^15 and renormalises.
        assert_eq!(quantize_multiplier_q15(1.0 - 2f64.powi(-15)), (i16::MAX, 0));
        assert_eq!(quantize_multiplier_q15(1.0 - 2f64.powi(-16)), (1 << 14, 1));
        assert_eq!(
            quantize_multiplier_q15(1.0 - 2f64.powi(-16) - 2f64.powi(-40)),
            (i16::MAX, 0)
        );
        assert_eq!(quantize_multiplier_q15(1.0 - 1e-12), (1 << 14, 1));
        // Ties round up: 2^14 + 0.5 and 2^14 + 1.5 (in units of 2^-15).
        assert_eq!(
            quantize_multiplier_q15(0.5 + 2f64.powi(-16)),
            ((1 << 14) + 1, 0)
        );
        assert_eq!(
            quantize_multiplier_q15(0.5 + 3.0 * 2f64.powi(-16)),
            ((1 << 14) + 2, 0)
        );
        // Tiny.
        assert_eq!(quantize_multiplier_q15(2f64.powi(-32)), (1 << 14, -31));
        assert_eq!(
            quantize_multiplier_q15(2f64.powi(-33) * 1.01),
            (1 << 14, -31)
        );
        assert_eq!(quantize_multiplier_q15(2f64.powi(-33)), (1 << 14, -31));
        assert_eq!(quantize_multiplier_q15(2f64.powi(-34)), (0, 0));
        assert_eq!(quantize_multiplier_q15(1e-300), (0, 0));
        assert_eq!(quantize_multiplier_q15(f64::MIN_POSITIVE / 4.0), (0, 0)); // subnormal
                                                                              // Large: saturates at just under 2^30.
        assert_eq!(quantize_multiplier_q15(2f64.powi(29) * 1.5), (3 << 13, 30));
        assert_eq!(
            quantize_multiplier_q15(2f64.powi(30) - 2f64.powi(15)),
            (i16::MAX, 30)
        );
        assert_eq!(
            quantize_multiplier_q15(2f64.powi(30) - 2f64.powi(14)),
            (i16::MAX, 30)
        ); // rounds to 2^30
        assert_eq!(quantize_multiplier_q15(2f64.powi(30)), (i16::MAX, 30));
        assert_eq!(quantize_multiplier_q15(1e300), (i16::MAX, 30));
        assert_eq!(quantize_multiplier_q15(f64::INFINITY), (i16::MAX, 30));
    }

    #[test]
    fn multipliers_q15_are_nearest_and_valid() {
        let mut r = 1.234_567e-9f64;
        while r < 1e9 {
            let (m, s) = quantize_multiplier_q15(r);
            assert!(
                m >= 1 << 14 && (SHIFT_MIN..=SHIFT_MAX).contains(&s),
                "{r}: {m} {s}"
            );
            assert!(valid_multiplier((m as i32) << 16, s), "{r}: {m} {s}");
            if r < 2f64.powi(30) - 2f64.powi(14) {
                // Nearest: the exact mantissa is within half a unit (scaling by a power of two is exact).
                let exact = r * 2f64.powi(15 - s as i32);
                assert!((m as f64 - exact).abs() <= 0.5, "{r}: {m} vs {exact}");
                let back = multiplier_q15_value(m, s);
                assert!(((back - r) / r).abs() <= 2f64.powi(-15), "{r} -> {back}");
                // The same real value as the 31-bit pair it widens to.
                assert_eq!(multiplier_value((m as i32) << 16, s), back);
                // Never further than one 15-bit step from the 31-bit pair's mantissa.
                let (m31, s31) = quantize_multiplier(r);
                let diff = multiplier_value(m31, s31) - back;
                assert!(
                    diff.abs() <= 2f64.powi(s as i32 - 15),
                    "{r}: {m31} {s31} vs {m} {s}"
                );
            }
            r *= 1.013;
        }
        // Every mantissa round-trips exactly.
        for m in (1i16 << 14)..=i16::MAX {
            for s in [-31i8, -7, 0, 30] {
                assert_eq!(quantize_multiplier_q15(multiplier_q15_value(m, s)), (m, s));
            }
        }
    }

    #[test]
    fn per_channel_multipliers_q15() {
        let (m, s) = per_channel_multipliers(0.5, &[0.25, 0.0, 3.0], 0.125).unwrap();
        assert_eq!(m, [1 << 14, 0, 3 << 13]);
        assert_eq!(s, [1, 0, 4]); // 1.0, 0 (all-zero channel), 12.0
        assert!(per_channel_multipliers(0.5, &[f32::NAN], 0.125).is_err());
        assert!(per_channel_multipliers(0.5, &[-1.0], 0.125).is_err());
        assert!(per_channel_multipliers(0.5, &[f32::INFINITY], 0.125).is_err());
        assert!(per_channel_multipliers(0.0, &[1.0], 0.125).is_err());
        assert!(per_channel_multipliers(0.5, &[1.0], f32::INFINITY).is_err());
        assert_eq!(
            per_channel_multipliers(0.5, &[], 0.125).unwrap(),
            (Vec::new(), Vec::new())
        );
    }

    #[test]
    fn requantize_with_q15_multiplier_rounds_like_float() {
        for &real in &[0.003_921_f64, 0.1, 0.333, 0.5, 0.9999, 1.5, 7.25] {
            let (m, s) = quantize_multiplier_q15(real);
            for acc in [-100_000i32, -1001, -3, 0, 1, 2, 77, 12_345, 1_000_000] {
                let exact = acc as f64 * real;
                let got = requantize(acc, (m as i32) << 16, s) as f64;
                assert!(
                    (got - exact).abs() <= 0.5 + exact.abs() * 2f64.powi(-15),
                    "{acc} * {real}: {got}"
                );
            }
        }
    }

    #[test]
    fn requantize_with_host_multiplier_rounds_like_float() {
        for &real in &[0.003_921_f64, 0.1, 0.333, 0.5, 0.9999, 1.5, 7.25] {
            let (m, s) = quantize_multiplier(real);
            for acc in [-100_000i32, -1001, -3, 0, 1, 2, 77, 12_345, 1_000_000] {
                let exact = acc as f64 * real;
                let got = requantize(acc, m, s) as f64;
                assert!(
                    (got - exact).abs() <= 0.5 + exact.abs() * 1e-9,
                    "{acc} * {real}: {got}"
                );
            }
        }
    }

    #[test]
    fn lookup_relu6_and_identity() {
        let q = Quant {
            scale: 0.05,
            zero_point: -20,
        };
        let t = lookup_table(q, q, |x| x);
        for (i, &v) in t.iter().enumerate() {
            assert_eq!(v as i32, i as i32 - 128);
        }
        let t = lookup_table(q, q, |x| x.clamp(0.0, 6.0));
        assert_eq!(t[(-128 + 128) as usize], -20);
        assert_eq!(t[(127 + 128) as usize], 100); // 7.35 clamped to 6.0: 6 / 0.05 - 20
    }

    #[test]
    fn act_range() {
        let q = Quant {
            scale: 0.1,
            zero_point: 10,
        };
        assert_eq!(act_range_s8(q, 0.0, 6.0), (10, 70));
        assert_eq!(
            act_range_s8(q, f32::NEG_INFINITY, f32::INFINITY),
            (-128, 127)
        );
    }

    #[test]
    fn softmax_tables() {
        let h = softmax_s8(0.1, 1.0).unwrap();
        assert_eq!(h.exp_table[0], 1 << 24);
        assert!(h.exp_table.windows(2).all(|w| w[0] >= w[1]));
        assert_eq!(
            h.exp_table[10],
            ((1u64 << 24) as f64 * (-1.0f64).exp()).round() as u32
        );
        assert!(h.params.is_empty());
        let l = log_softmax_s8(0.1, 1.0, LOG_SOFTMAX_OUTPUT).unwrap();
        assert_eq!(l.params.as_slice(), &[104_858, 726_817]);
        assert!(log_softmax_s8(
            0.1,
            1.0,
            Quant {
                scale: 1e-6,
                zero_point: 0
            }
        )
        .is_err());
        assert!(softmax_s8(0.0, 1.0).is_err());
        assert!(softmax_s8(0.1, -1.0).is_err());
    }

    #[test]
    fn add_params_tflm_like() {
        let a = Quant {
            scale: 0.02,
            zero_point: 3,
        };
        let b = Quant {
            scale: 0.01,
            zero_point: -7,
        };
        let o = Quant {
            scale: 0.03,
            zero_point: 0,
        };
        let p = add_sub_s8(a, b, o).unwrap();
        assert_eq!(p.left_shift, 20);
        assert!((multiplier_value(p.a_multiplier, p.a_shift) - 0.5).abs() < 1e-9);
        assert!((multiplier_value(p.b_multiplier, p.b_shift) - 0.25).abs() < 1e-9);
        assert!(
            (multiplier_value(p.out_multiplier, p.out_shift) - 0.04 / (1048576.0 * 0.03)).abs()
                < 1e-15
        );
        assert!(add_sub_s8(
            a,
            Quant {
                scale: 0.0,
                zero_point: 0
            },
            o
        )
        .is_err());
        assert!(mul_s8(
            a,
            Quant {
                scale: 1.0,
                zero_point: 200
            },
            o
        )
        .is_err());
    }
}
