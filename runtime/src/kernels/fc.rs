//! Fully connected (matrix times transposed weights), int8 and f32.

use super::{clamp_f32, output_s8, QuantS8, Requant};
use crate::format::FcGeom;

/// int8 fully connected: for each row `r` and output `n`,
/// `acc = sat_i32(bias[n] + sum_k (x[r][k] - input_zero_point) * w[n][k])` (the sum exact: at most
/// [`super::MAX_DOT_LEN`] terms), `y[r][n] = clamp(requantize(acc, multipliers[n] << 16, shifts[n]) +
/// output_zero_point, act_min, act_max)` (saturating add; see [`Requant`]).
///
/// Slices: `input` `[rows][in_features]`, `weights` `[out_features][in_features]`, `bias` and requantisation
/// `[out_features]`, `output` `[rows][out_features]`.
pub fn fully_connected_s8(
    geom: &FcGeom,
    q: &QuantS8,
    requant: Requant<'_>,
    input: &[i8],
    weights: &[i8],
    bias: Option<&[i32]>,
    output: &mut [i8],
) {
    let (rows, k, n_out) = (
        geom.rows as usize,
        geom.in_features as usize,
        geom.out_features as usize,
    );
    let izp = q.input_zero_point;
    for r in 0..rows {
        let x = &input[r * k..(r + 1) * k];
        let y = &mut output[r * n_out..(r + 1) * n_out];
        for (n, out) in y.iter_mut().enumerate() {
            let w = &weights[n * k..(n + 1) * k];
            let mut sum = 0i32;
            for (&xv, &wv) in x.iter().zip(w) {
                sum = sum.wrapping_add((xv as i32 - izp) * wv as i32);
            }
            let acc = match bias {
                Some(b) => b[n].saturating_add(sum),
                None => sum,
            };
            let (multiplier, shift) = requant.pair(n);
            *out = output_s8(
                acc,
                multiplier,
                shift,
                q.output_zero_point,
                q.act_min,
                q.act_max,
            );
        }
    }
}

/// f32 fully connected: `y[r][n] = clamp(bias[n] + sum_k x[r][k] * w[n][k], act_min, act_max)`, accumulated in
/// f32 in `k` order. Same layouts as [`fully_connected_s8`].
pub fn fully_connected_f32(
    geom: &FcGeom,
    input: &[f32],
    weights: &[f32],
    bias: Option<&[f32]>,
    act_min: f32,
    act_max: f32,
    output: &mut [f32],
) {
    let (rows, k, n_out) = (
        geom.rows as usize,
        geom.in_features as usize,
        geom.out_features as usize,
    );
    for r in 0..rows {
        let x = &input[r * k..(r + 1) * k];
        let y = &mut output[r * n_out..(r + 1) * n_out];
        for (n, out) in y.iter_mut().enumerate() {
            let w = &weights[n * k..(n + 1) * k];
            let mut sum = 0f32;
            for (&xv, &wv) in x.iter().zip(w) {
                sum += xv * wv;
            }
            *out = clamp_f32(sum + bias.map_or(0.0, |b| b[n]), act_min, act_max);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn s8_two_rows() {
        let g = FcGeom {
            rows: 2,
            in_features: 3,
            out_features: 2,
        };
        let q = QuantS8 {
            input_zero_point: 1,
            output_zero_point: 2,
            act_min: -128,
            act_max: 127,
        };
        let rq = Requant {
            multipliers: &[1 << 14, 1 << 14],
            shifts: &[1, 0],
        }; // x1, x0.5
        let mut y = [0i8; 4];
        // row 0: x - 1 = [0, 1, 2]; w0 = [1, 2, 3] -> 8 + 10 = 18 (x1) -> 20; w1 = [-1, 0, 1] -> 2 + 0 = 2 (x0.5) -> 1 + 2 = 3
        // row 1: x - 1 = [-3, 0, 3]; w0 -> 6 + 10 = 16 -> 18; w1 -> 6 (x0.5) = 3 -> 5
        fully_connected_s8(
            &g,
            &q,
            rq,
            &[1, 2, 3, -2, 1, 4],
            &[1, 2, 3, -1, 0, 1],
            Some(&[10, 0]),
            &mut y,
        );
        assert_eq!(y, [20, 3, 18, 5]);
    }

    #[test]
    fn f32_relu6() {
        let g = FcGeom {
            rows: 1,
            in_features: 2,
            out_features: 3,
        };
        let mut y = [0f32; 3];
        fully_connected_f32(
            &g,
            &[1.0, 2.0],
            &[1., 1., -1., -1., 5., 5.],
            None,
            0.0,
            6.0,
            &mut y,
        );
        assert_eq!(y, [3.0, 0.0, 6.0]);
    }
}
