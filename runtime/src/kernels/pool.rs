//! 2D max and average pooling on NHWC tensors, int8 and f32.
//!
//! Preconditions (checked at load by `crate::ops`): `input` `[batch][in_h][in_w][channels]`, `output`
//! `[batch][out_h][out_w][channels]`, non-zero kernel and strides, and every window overlaps the input
//! (`pad_top < kernel_h`, `(out_h - 1) * stride_h < pad_top + in_h`, likewise for the width). A window that does
//! not overlap the input anyway gives the max pool's identity (`-128` / `-inf`) and an average of 0 taps counts
//! as 1 tap (result: the zero point / 0.0): never a division by zero.

use super::clamp_s8;
use crate::format::Pool2d;

/// The part of a window inside the input, for output position `o` along one axis: input indices `first..end`
/// (empty if the window misses the input).
#[inline(always)]
fn window(o: usize, stride: usize, pad: usize, kernel: usize, size: usize) -> (usize, usize) {
    let start = o * stride; // padded coordinates
    let end = start + kernel;
    let first = start.max(pad) - pad;
    let last = end.min(pad + size).saturating_sub(pad);
    (first, last.max(first))
}

/// Visits every output element in order: `f(out_offset, channel, y_range, x_range, window_taps)` where the ranges
/// are the input rows / columns inside the window, and the input element `(b, iy, ix, c)` is at
/// `((b * in_h + iy) * in_w + ix) * channels + c`.
#[inline(always)]
fn visit(p: &Pool2d, mut f: impl FnMut(usize, usize, (usize, usize), (usize, usize), usize)) {
    let (in_h, in_w, ch) = (p.in_h as usize, p.in_w as usize, p.channels as usize);
    let (kh, kw) = (p.kernel_h as usize, p.kernel_w as usize);
    let mut out_i = 0;
    for b in 0..p.batch as usize {
        for oy in 0..p.out_h as usize {
            let ys = window(oy, p.stride_h as usize, p.pad_top as usize, kh, in_h);
            for ox in 0..p.out_w as usize {
                let xs = window(ox, p.stride_w as usize, p.pad_left as usize, kw, in_w);
                let base = b * in_h * in_w * ch;
                for c in 0..ch {
                    f(out_i, base + c, ys, xs, kh * kw);
                    out_i += 1;
                }
            }
        }
    }
}

/// `input[base + (iy * in_w + ix) * channels]` over the window, in row-major order.
#[inline(always)]
fn taps<'x, T: Copy>(
    p: &Pool2d,
    input: &'x [T],
    base: usize,
    ys: (usize, usize),
    xs: (usize, usize),
) -> impl Iterator<Item = T> + 'x {
    let (in_w, ch) = (p.in_w as usize, p.channels as usize);
    (ys.0..ys.1).flat_map(move |iy| (xs.0..xs.1).map(move |ix| input[base + (iy * in_w + ix) * ch]))
}

/// int8 max pool: the maximum of the taps inside the input (padding never wins). Same quantisation in and out.
pub fn max_pool_s8(p: &Pool2d, input: &[i8], output: &mut [i8]) {
    visit(p, |o, base, ys, xs, _| {
        output[o] = taps(p, input, base, ys, xs).fold(i8::MIN, i8::max)
    });
}

/// f32 max pool: the maximum of the taps inside the input (`f32::max`, so NaN taps are skipped).
pub fn max_pool_f32(p: &Pool2d, input: &[f32], output: &mut [f32]) {
    visit(p, |o, base, ys, xs, _| {
        output[o] = taps(p, input, base, ys, xs).fold(f32::NEG_INFINITY, f32::max)
    });
}

/// int8 average pool, same quantisation (scale and zero point `zp = p.zero_point`) in and out:
/// `s = sum (x - zp)` over the taps inside the input (padded taps are real 0, i.e. contribute 0 to `s`),
/// `n` = the whole window `kernel_h * kernel_w` if `count_include_pad`, else the number of taps inside,
/// `y = clamp(zp + floor((s + floor(n / 2)) / n), -128, 127)`: `s / n` rounded to nearest, ties towards +inf
/// (the same rounding as `requantize`; without padding it equals `round(sum x / n)`, ties up). One division per
/// output. Precondition: `kernel_h * kernel_w <= `[`super::MAX_SUM_LEN`], `zp` in `-128..=127`.
pub fn avg_pool_s8(p: &Pool2d, input: &[i8], output: &mut [i8]) {
    let zp = p.zero_point;
    visit(p, |o, base, ys, xs, window| {
        let s: i32 = taps(p, input, base, ys, xs).map(|x| x as i32 - zp).sum();
        let inside = (ys.1 - ys.0) * (xs.1 - xs.0);
        let n = if p.count_include_pad { window } else { inside }.max(1) as i32;
        output[o] = clamp_s8(zp + (s + n / 2).div_euclid(n), -128, 127);
    });
}

/// f32 average pool: the sum of the taps inside the input (accumulated in f32, row-major) divided by `n`, the
/// whole window if `count_include_pad`, else the number of taps inside.
pub fn avg_pool_f32(p: &Pool2d, input: &[f32], output: &mut [f32]) {
    visit(p, |o, base, ys, xs, window| {
        let s: f32 = taps(p, input, base, ys, xs).sum();
        let inside = (ys.1 - ys.0) * (xs.1 - xs.0);
        let n = if p.count_include_pad { window } else { inside }.max(1);
        output[o] = s / n as f32;
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn pool(in_hw: u32, out_hw: u32, k: u32, s: u32, pad: u32, include: bool) -> Pool2d {
        Pool2d {
            batch: 1,
            in_h: in_hw,
            in_w: in_hw,
            channels: 1,
            out_h: out_hw,
            out_w: out_hw,
            kernel_h: k,
            kernel_w: k,
            stride_h: s,
            stride_w: s,
            pad_top: pad,
            pad_left: pad,
            count_include_pad: include,
            zero_point: 0,
            kernel: crate::format::KernelS8::Reference,
        }
    }

    #[test]
    fn window_clips_to_input() {
        assert_eq!(window(0, 1, 1, 3, 4), (0, 2));
        assert_eq!(window(3, 1, 1, 3, 4), (2, 4));
        assert_eq!(window(1, 2, 0, 2, 4), (2, 4));
    }

    #[test]
    fn max_and_avg_2x2() {
        let x: [i8; 16] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, -16];
        let mut y = [0i8; 4];
        max_pool_s8(&pool(4, 2, 2, 2, 0, false), &x, &mut y);
        assert_eq!(y, [6, 8, 14, 15]);
        avg_pool_s8(&pool(4, 2, 2, 2, 0, false), &x, &mut y);
        // 14/4 = 3.5 -> 4; 22/4 = 5.5 -> 6; 46/4 = 11.5 -> 12; (11 + 12 + 15 - 16)/4 = 5.5 -> 6
        assert_eq!(y, [4, 6, 12, 6]);
    }

    #[test]
    fn avg_ties_go_up_and_padding_counts_as_zero_point() {
        let mut p = pool(1, 1, 3, 1, 1, true);
        p.zero_point = -10;
        let mut y = [0i8; 1];
        // One tap inside: s = 8 - (-10) = 18, n = 9 -> 2 -> -8.
        avg_pool_s8(&p, &[8], &mut y);
        assert_eq!(y, [-8]);
        p.count_include_pad = false;
        avg_pool_s8(&p, &[8], &mut y);
        assert_eq!(y, [8]);
        // Ties: -2.5 -> -2, 2.5 -> 3.
        let p = pool(2, 1, 2, 1, 0, true);
        let mut y = [0i8; 1];
        avg_pool_s8(
            &Pool2d {
                in_w: 2,
                in_h: 1,
                kernel_h: 1,
                ..p.clone()
            },
            &[-2, -3],
            &mut y,
        );
        assert_eq!(y, [-2]);
        avg_pool_s8(
            &Pool2d {
                in_w: 2,
                in_h: 1,
                kernel_h: 1,
                ..p
            },
            &[2, 3],
            &mut y,
        );
        assert_eq!(y, [3]);
    }

    #[test]
    fn f32_pools_with_padding() {
        let x = [1.0f32, 2.0, 3.0, 4.0];
        let mut y = [0f32; 4];
        avg_pool_f32(&pool(2, 2, 3, 1, 1, false), &x, &mut y);
        assert_eq!(y, [2.5; 4]);
        avg_pool_f32(&pool(2, 2, 3, 1, 1, true), &x, &mut y);
        assert_eq!(y, [10.0 / 9.0; 4]);
        max_pool_f32(
            &pool(2, 2, 3, 1, 1, false),
            &[-1.0, f32::NAN, -3.0, -4.0],
            &mut y,
        );
        assert_eq!(y, [-1.0; 4]);
    }
}
