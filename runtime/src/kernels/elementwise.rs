//! Unary elementwise ops: int8 table lookup, f32 activations.

use crate::format::UnaryF32;

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
