//! 2D convolution on NHWC tensors (grouped and depthwise included), int8 and f32.

use super::{clamp_f32, output_s8, QuantS8, Requant};
use crate::format::ConvGeom;

/// Geometry as `usize`, with the derived per-group channel counts.
struct Geom {
    batch: usize,
    in_h: usize,
    in_w: usize,
    in_c: usize,
    out_h: usize,
    out_w: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    dh: usize,
    dw: usize,
    pad_top: usize,
    pad_left: usize,
    groups: usize,
    cin_g: usize,
    cout_g: usize,
}

enum Step {
    Tap { x: usize, w: usize },
    Done { out: usize, oc: usize },
}

impl Geom {
    /// `None` when the geometry has no work or would divide by zero (zero groups, more groups than channels).
    fn new(g: &ConvGeom) -> Option<Geom> {
        let groups = g.groups as usize;
        if groups == 0 {
            return None;
        }
        let (in_c, out_c) = (g.in_c as usize, g.out_c as usize);
        let (cin_g, cout_g) = (in_c / groups, out_c / groups);
        if cin_g == 0 || cout_g == 0 {
            return None;
        }
        Some(Geom {
            batch: g.batch as usize,
            in_h: g.in_h as usize,
            in_w: g.in_w as usize,
            in_c,
            out_h: g.out_h as usize,
            out_w: g.out_w as usize,
            kh: g.kernel_h as usize,
            kw: g.kernel_w as usize,
            sh: g.stride_h as usize,
            sw: g.stride_w as usize,
            dh: g.dilation_h as usize,
            dw: g.dilation_w as usize,
            pad_top: g.pad_top as usize,
            pad_left: g.pad_left as usize,
            groups,
            cin_g,
            cout_g,
        })
    }

    /// Walks the output in order. For each output element `(b, oy, ox, oc)` it reports every tap inside the input
    /// as `Step::Tap { x, w }` (`x`: offset of the group's `cin_g` input channels at the tap, `w`: offset of the
    /// matching `cin_g` weights), then `Step::Done { out, oc }` with the element's output offset.
    #[inline(always)]
    fn visit(&self, mut step: impl FnMut(Step)) {
        let mut out_i = 0usize;
        for b in 0..self.batch {
            for oy in 0..self.out_h {
                // Window start in padded coordinates; a tap is at padded row `y0 + ky * dh`.
                let y0 = oy * self.sh;
                for ox in 0..self.out_w {
                    let x0 = ox * self.sw;
                    for group in 0..self.groups {
                        let c0 = group * self.cin_g;
                        for oc in group * self.cout_g..(group + 1) * self.cout_g {
                            let w_oc = oc * self.kh * self.kw * self.cin_g;
                            for ky in 0..self.kh {
                                let yy = y0 + ky * self.dh;
                                if yy < self.pad_top || yy - self.pad_top >= self.in_h {
                                    continue;
                                }
                                let row = (b * self.in_h + (yy - self.pad_top)) * self.in_w;
                                for kx in 0..self.kw {
                                    let xx = x0 + kx * self.dw;
                                    if xx < self.pad_left || xx - self.pad_left >= self.in_w {
                                        continue;
                                    }
                                    let x_off = (row + (xx - self.pad_left)) * self.in_c + c0;
                                    let w_off = w_oc + (ky * self.kw + kx) * self.cin_g;
                                    step(Step::Tap { x: x_off, w: w_off });
                                }
                            }
                            step(Step::Done { out: out_i, oc });
                            out_i += 1;
                        }
                    }
                }
            }
        }
    }
}

/// int8 convolution.
///
/// For output `(b, oy, ox, o)` in group `g = o / (out_c / groups)`:
/// `acc = sat_i32(bias[o] + sum_{ky,kx,i} (x[b, iy, ix, g * cin_g + i] - input_zero_point) * w[o, ky, kx, i])`
/// with `iy = oy * stride_h + ky * dilation_h - pad_top` (likewise `ix`); taps outside the input (padding)
/// contribute 0. Then `y = clamp(requantize(acc, multipliers[o] << 16, shifts[o]) + output_zero_point, act_min,
/// act_max)` (saturating add; see [`Requant`]). The sum itself is exact: at most [`super::MAX_DOT_LEN`] terms, each
/// within `±255 * 128`.
///
/// Slices: `input` `[batch][in_h][in_w][in_c]`, `weights` `[out_c][kernel_h][kernel_w][in_c / groups]`, `bias` and
/// requantisation `[out_c]`, `output` `[batch][out_h][out_w][out_c]`. `groups` divides `in_c` and `out_c`.
pub fn conv2d_s8(
    geom: &ConvGeom,
    q: &QuantS8,
    requant: Requant<'_>,
    input: &[i8],
    weights: &[i8],
    bias: Option<&[i32]>,
    output: &mut [i8],
) {
    let Some(g) = Geom::new(geom) else { return };
    let izp = q.input_zero_point;
    let mut sum = 0i32;
    g.visit(|step| match step {
        Step::Tap { x, w } => {
            let xs = &input[x..x + g.cin_g];
            let ws = &weights[w..w + g.cin_g];
            for (&x, &w) in xs.iter().zip(ws) {
                sum = sum.wrapping_add((x as i32 - izp) * w as i32);
            }
        }
        Step::Done { out, oc } => {
            let acc = match bias {
                Some(b) => b[oc].saturating_add(sum),
                None => sum,
            };
            let (multiplier, shift) = requant.pair(oc);
            output[out] = output_s8(
                acc,
                multiplier,
                shift,
                q.output_zero_point,
                q.act_min,
                q.act_max,
            );
            sum = 0;
        }
    });
}

/// f32 convolution: `y = clamp(bias[o] + sum x * w, act_min, act_max)`, same geometry and layouts as
/// [`conv2d_s8`]; padded taps contribute 0. Accumulates in f32 in tap order (ky, kx, input channel).
pub fn conv2d_f32(
    geom: &ConvGeom,
    input: &[f32],
    weights: &[f32],
    bias: Option<&[f32]>,
    act_min: f32,
    act_max: f32,
    output: &mut [f32],
) {
    let Some(g) = Geom::new(geom) else { return };
    let mut sum = 0f32;
    g.visit(|step| match step {
        Step::Tap { x, w } => {
            let xs = &input[x..x + g.cin_g];
            let ws = &weights[w..w + g.cin_g];
            for (&x, &w) in xs.iter().zip(ws) {
                sum += x * w;
            }
        }
        Step::Done { out, oc } => {
            let b = bias.map_or(0.0, |b| b[oc]);
            output[out] = clamp_f32(sum + b, act_min, act_max);
            sum = 0.0;
        }
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[allow(clippy::too_many_arguments)]
    fn geom(
        in_h: u32,
        in_w: u32,
        in_c: u32,
        out_h: u32,
        out_w: u32,
        out_c: u32,
        k: u32,
        pad: u32,
    ) -> ConvGeom {
        ConvGeom {
            batch: 1,
            in_h,
            in_w,
            in_c,
            out_h,
            out_w,
            out_c,
            kernel_h: k,
            kernel_w: k,
            stride_h: 1,
            stride_w: 1,
            dilation_h: 1,
            dilation_w: 1,
            pad_top: pad,
            pad_left: pad,
            groups: 1,
        }
    }

    #[test]
    fn f32_3x3_same_padding_box_filter() {
        let g = geom(3, 3, 1, 3, 3, 1, 3, 1);
        let x: [f32; 9] = [1., 2., 3., 4., 5., 6., 7., 8., 9.];
        let w = [1f32; 9];
        let mut y = [0f32; 9];
        conv2d_f32(&g, &x, &w, Some(&[0.5]), f32::MIN, f32::MAX, &mut y);
        assert_eq!(y, [12.5, 21.5, 16.5, 27.5, 45.5, 33.5, 24.5, 39.5, 28.5]);
    }

    #[test]
    fn s8_padding_contributes_zero_not_minus_zero_point() {
        // 1x1 input, 3x3 kernel, pad 1: only the centre tap is inside.
        let g = geom(1, 1, 1, 1, 1, 1, 3, 1);
        let q = QuantS8 {
            input_zero_point: 10,
            output_zero_point: -5,
            act_min: -128,
            act_max: 127,
        };
        let w = [1i8; 9];
        let mut y = [0i8; 1];
        // acc = 3 + (20 - 10) * 1 = 13; * 0.5 = 6.5 -> 7; + (-5) = 2.
        let rq = Requant {
            multipliers: &[1 << 14],
            shifts: &[0],
        };
        conv2d_s8(&g, &q, rq, &[20], &w, Some(&[3]), &mut y);
        assert_eq!(y, [2]);
    }

    #[test]
    fn s8_depthwise_multiplier_two() {
        // groups = in_c = 2, out_c = 4: out channels 0,1 read input channel 0; 2,3 read channel 1.
        let mut g = geom(1, 1, 2, 1, 1, 4, 1, 0);
        g.groups = 2;
        let q = QuantS8 {
            input_zero_point: 0,
            output_zero_point: 0,
            act_min: -128,
            act_max: 127,
        };
        let rq = Requant {
            multipliers: &[1 << 14; 4],
            shifts: &[1; 4],
        }; // x1.0
        let mut y = [0i8; 4];
        conv2d_s8(&g, &q, rq, &[3, 5], &[1, 2, 3, 4], None, &mut y);
        assert_eq!(y, [3, 6, 15, 20]);
    }

    #[test]
    fn s8_clamps_to_activation_range() {
        let g = geom(1, 1, 1, 1, 1, 1, 1, 0);
        let q = QuantS8 {
            input_zero_point: -128,
            output_zero_point: 0,
            act_min: 0,
            act_max: 100,
        };
        let rq = Requant {
            multipliers: &[1 << 14],
            shifts: &[1],
        };
        let mut y = [0i8; 1];
        conv2d_s8(&g, &q, rq, &[127], &[127], Some(&[i32::MAX]), &mut y);
        assert_eq!(y, [100]);
        conv2d_s8(&g, &q, rq, &[127], &[-128], None, &mut y);
        assert_eq!(y, [0]);
    }
}
