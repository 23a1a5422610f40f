//! Unary elementwise ops: int8 table lookup, f32 activations, conversions between int8 and f32.

use crate::format::{Quant, UnaryF32};

/// `y[i] = table[x[i] + 128]` for `i < min(input.len(), output.len())`: any int8 -> int8 function, tabulated on the
/// host (`crate::host::lookup_table` when built with `std`).
pub fn lookup_s8(table: &[i8; 256], input: &[i8], output: &mut [i8]) {
    for (y, &x) in output.iter_mut().zip(input) {
        // x + 128 as an index: flipping the sign bit of the two's complement byte.
        *y = table[(x as u8 ^ 0x80) as usize];
    }
}

/// f32 activation, elementwise for `i < min(input.len(), output.len())`:
/// - `Relu`: `max(x, 0)`;
/// - `Clip { min, max }`: `min(max(x, min), max)` (never panics, whatever the bounds);
/// - `LeakyRelu { alpha }`: `x >= 0 ? x : alpha * x`;
/// - `Elu { alpha }`: `x >= 0 ? x : alpha * (exp(x) - 1)` (with `expm1`);
/// - `Sigmoid`: `1 / (1 + exp(-x))`, evaluated as `e / (1 + e)` with `e = exp(x)` for `x < 0` (no overflow);
/// - `Tanh`: `tanh(x)`.
///
/// NaN inputs give NaN outputs, except Relu and Clip, which follow `f32::max`/`f32::min` (NaN -> bound).
pub fn unary_f32(op: UnaryF32, input: &[f32], output: &mut [f32]) {
    let pairs = output.iter_mut().zip(input);
    match op {
        UnaryF32::Relu => pairs.for_each(|(y, &x)| *y = x.max(0.0)),
        UnaryF32::Clip { min, max } => pairs.for_each(|(y, &x)| *y = x.max(min).min(max)),
        UnaryF32::LeakyRelu { alpha } => {
            pairs.for_each(|(y, &x)| *y = if x >= 0.0 { x } else { alpha * x })
        }
        UnaryF32::Elu { alpha } => {
            pairs.for_each(|(y, &x)| *y = if x >= 0.0 { x } else { alpha * libm::expm1f(x) })
        }
        UnaryF32::Sigmoid => pairs.for_each(|(y, &x)| *y = sigmoid(x)),
        UnaryF32::Tanh => pairs.for_each(|(y, &x)| *y = libm::tanhf(x)),
    }
}

/// f32 -> int8 for `i < min(input.len(), output.len())`: `clamp(round(x / q.scale) + q.zero_point, -128, 127)`,
/// ties away from zero; NaN gives the zero point. `q.scale` must be positive and finite and `q.zero_point` an int8
/// value (checked at load).
pub fn quantize_s8(q: Quant, input: &[f32], output: &mut [i8]) {
    for (y, &x) in output.iter_mut().zip(input) {
        let v = x / q.scale;
        // Clamped before the conversion, so every finite or infinite `v` lands in range; NaN fails both
        // comparisons and `as` turns it into 0.
        let r = libm::roundf(v.clamp(-256.0, 256.0)) as i32;
        *y = (r + q.zero_point).clamp(-128, 127) as i8;
    }
}

/// int8 -> f32 for `i < min(input.len(), output.len())`: `q.scale * (x - q.zero_point)`, one rounding (the
/// difference is exact in f32).
pub fn dequantize_s8(q: Quant, input: &[i8], output: &mut [f32]) {
    for (y, &x) in output.iter_mut().zip(input) {
        *y = q.scale * (x as i32 - q.zero_point) as f32;
    }
}

#[inline]
fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + libm::expf(-x))
    } else {
        let e = libm::expf(x);
        e / (1.0 + e)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn quantize_rounds_half_away_and_saturates() {
        let q = Quant {
            scale: 0.5,
            zero_point: -3,
        };
        let x = [
            0.0,
            0.25,
            -0.25,
            0.74,
            1.0,
            100.0,
            -100.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ];
        let mut y = [0i8; 10];
        quantize_s8(q, &x, &mut y);
        // 0.25 / 0.5 = 0.5 -> 1 (away from zero); -0.5 -> -1.
        assert_eq!(y, [-3, -2, -4, -2, -1, 127, -128, 127, -128, -3]);
    }

    #[test]
    fn quantize_agrees_with_the_host_and_inverts_dequantize() {
        // The host's f64 quantisation and the device's f32 one agree away from exact ties, and every int8 value
        // survives a round trip.
        let q = Quant {
            scale: 0.0371,
            zero_point: 17,
        };
        let xs: std::vec::Vec<i8> = (-128..=127).collect();
        let mut f = [0f32; 256];
        dequantize_s8(q, &xs, &mut f);
        let mut back = [0i8; 256];
        quantize_s8(q, &f, &mut back);
        assert_eq!(&back[..], &xs[..]);
        // The host's formulas (`host::quantize` / `host::dequantize`), in f64.
        let host_dequantize = |v: i8| (q.scale as f64 * (v as i32 - q.zero_point) as f64) as f32;
        let host_quantize = |x: f32| {
            ((x as f64 / q.scale as f64).round() + q.zero_point as f64).clamp(-128.0, 127.0) as i8
        };
        for (i, &v) in f.iter().enumerate() {
            assert_eq!(v, host_dequantize(xs[i]));
        }
        let mut state = 0x2545_F491u32;
        for _ in 0..100_000 {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let x = (state as i32 as f32) / (1u32 << 26) as f32; // about +-32
            let mut y = [0i8];
            quantize_s8(q, &[x], &mut y);
            let host = host_quantize(x);
            let v = x as f64 / q.scale as f64;
            let near_tie = (v - v.floor() - 0.5).abs() < 1e-5;
            assert!(
                y[0] == host || near_tie,
                "x {x}: device {} host {host}",
                y[0]
            );
        }
    }

    #[test]
    fn lookup_indexes_by_x_plus_128() {
        let mut table = [0i8; 256];
        for (i, t) in table.iter_mut().enumerate() {
            *t = (255 - i) as u8 as i8;
        }
        let mut y = [0i8; 4];
        lookup_s8(&table, &[-128, -1, 0, 127], &mut y);
        assert_eq!(y, [-1, (255u8 - 127) as i8, 127, (255u8 - 255) as i8]);
    }

    #[test]
    fn activations() {
        let x = [-100.0f32, -1.0, 0.0, 0.5, 100.0];
        let mut y = [0f32; 5];
        unary_f32(UnaryF32::Sigmoid, &x, &mut y);
        assert!(y[0] >= 0.0 && y[0] < 1e-30 && y[4] == 1.0 && y[2] == 0.5);
        assert!((y[1] - 0.268_941_42).abs() < 1e-6);
        unary_f32(UnaryF32::Tanh, &x, &mut y);
        assert!((y[1] + 0.761_594_2).abs() < 1e-6 && y[0] == -1.0);
        unary_f32(UnaryF32::Elu { alpha: 2.0 }, &x, &mut y);
        assert!((y[1] - 2.0 * (-0.632_120_56)).abs() < 1e-6 && y[3] == 0.5);
        unary_f32(UnaryF32::LeakyRelu { alpha: 0.1 }, &x, &mut y);
        assert_eq!(y, [-10.0, -0.1, 0.0, 0.5, 100.0]);
        unary_f32(
            UnaryF32::Clip {
                min: -0.5,
                max: 6.0,
            },
            &x,
            &mut y,
        );
        assert_eq!(y, [-0.5, -0.5, 0.0, 0.5, 6.0]);
        unary_f32(
            UnaryF32::Clip {
                min: 1.0,
                max: -1.0,
            },
            &x,
            &mut y,
        ); // inverted: max wins, no panic
        assert!(y.iter().all(|&v| v == -1.0));
        unary_f32(UnaryF32::Relu, &x, &mut y);
        assert_eq!(y, [0.0, 0.0, 0.0, 0.5, 100.0]);
    }
}
