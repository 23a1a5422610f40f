//! Optimised int8 kernels, bit-exact to the reference kernels (same arithmetic: exact `i32` dot products, then
//! the same requantisation), written on [`super::dsp`] so that a Cortex-M4/M7 runs two MACs per `SMLAD` and every
//! other target runs the same code portably. The compiler picks one per op ([`crate::format::KernelS8`]); the
//! loader checks the op's geometry allows it.
//!
//! - [`dot_conv2d_s8`]: convolution with one group (pointwise, general, narrow first layers). Each output pixel's
//!   input patch is gathered once into 16-bit pairs with the zero point taken off (padding becomes 0), then every
//!   output channel is one dot product of the patch with its weights, 4 bytes of weights per step.
//! - [`dot_fully_connected_s8`]: the same dot product on each input row.
//! - [`depthwise_conv2d_s8`]: depthwise convolution (one input channel per group, one output channel per input
//!   channel), 4 channels at a time: its weights are stored tap-major (`[kernel_h][kernel_w][channels]`, the
//!   compiler writes them so for this kernel), so each in-bounds tap is one word of inputs and one of weights.

use super::dsp::{sadd16, smlabb, smlad, smlatt, splat16, sxtb16, sxtb16_ror8};
use super::{QuantS8, Requant};
use crate::format::{ConvGeom, FcGeom};

/// Most elements a patch (`kernel_h * kernel_w * in_c`) may have for [`dot_conv2d_s8`]: it holds two packed
/// patches on the stack (1,280 bytes each). The MLPerf Tiny models' largest is IC's 3x3x64 = 576.
pub const MAX_PATCH: usize = 640;

/// Most features a row may have for [`dot_fully_connected_s8`] (its packed copy, 2 KiB, lives on the stack).
pub const MAX_FC_ROW: usize = 1024;

/// A patch in 16-bit pairs, 4 elements per 2 words: `[e0, e2]`, `[e1, e3]` (the lanes `SXTB16` and `SXTB16 ROR 8`
/// give of 4 weight bytes), with the zero point taken off; the last group is padded with zeros.
struct Patch<const N: usize> {
    /// `N / 2` words: `N` elements.
    pairs: [u32; N],
    len: usize,
}

impl<const N: usize> Patch<N> {
    fn new() -> Self {
        Patch {
            pairs: [0; N],
            len: 0,
        }
    }

    /// Starts an empty patch.
    #[inline(always)]
    fn clear(&mut self) {
        self.len = 0;
    }

    /// Appends `x - zp` (in `-255..=255`).
    #[inline(always)]
    fn push(&mut self, v: i32) {
        let (group, lane) = (self.len / 4, self.len % 4);
        let word = &mut self.pairs[2 * group + (lane & 1)];
        let bits = (v as i16 as u16 as u32) << (16 * (lane >> 1));
        *word = if lane >> 1 == 0 { bits } else { *word | bits };
        self.len += 1;
    }

    /// Appends `n` int8 values less `zp`, 4 at a time where it can.
    #[inline(always)]
    fn extend(&mut self, xs: &[i8], neg_zp: u32) {
        let mut xs = xs;
        if self.len.is_multiple_of(4) {
            let mut chunks = xs.chunks_exact(4);
            for c in &mut chunks {
                let word = u32::from_le_bytes([c[0] as u8, c[1] as u8, c[2] as u8, c[3] as u8]);
                let g = self.len / 4;
                self.pairs[2 * g] = sadd16(sxtb16(word), neg_zp);
                self.pairs[2 * g + 1] = sadd16(sxtb16_ror8(word), neg_zp);
                self.len += 4;
            }
            xs = chunks.remainder();
        }
        let zp = -((neg_zp as u16 as i16) as i32);
        for &x in xs {
            self.push(x as i32 - zp);
        }
    }

    /// Appends `n` zeros (padding taps: `x - zp` counted as 0, as the reference skips them).
    #[inline(always)]
    fn zeros(&mut self, n: usize) {
        for _ in 0..n {
            self.push(0);
        }
    }

    /// Zero-fills the last group's unused lanes.
    #[inline(always)]
    fn finish(&mut self) {
        // The filler lanes count in `len` from here on; `dot` is told the patch's real length.
        while !self.len.is_multiple_of(4) {
            self.push(0);
        }
    }

    /// [`Self::dot`] with two weight rows at once: each patch word is loaded once for both.
    #[inline(always)]
    fn dot2(&self, len: usize, wa: &[i8], wb: &[i8]) -> (i32, i32) {
        let (mut a, mut b) = (0i32, 0i32);
        let full = len / 4;
        let (wa_full, wa_tail) = wa.split_at(full * 4);
        let (wb_full, wb_tail) = wb.split_at(full * 4);
        for ((p, ca), cb) in self.pairs[..2 * full]
            .chunks_exact(2)
            .zip(wa_full.chunks_exact(4))
            .zip(wb_full.chunks_exact(4))
        {
            let (even, odd) = (p[0], p[1]);
            let wa = u32::from_le_bytes([ca[0] as u8, ca[1] as u8, ca[2] as u8, ca[3] as u8]);
            let wb = u32::from_le_bytes([cb[0] as u8, cb[1] as u8, cb[2] as u8, cb[3] as u8]);
            a = smlad(even, sxtb16(wa), a);
            b = smlad(even, sxtb16(wb), b);
            a = smlad(odd, sxtb16_ror8(wa), a);
            b = smlad(odd, sxtb16_ror8(wb), b);
        }
        if !wa_tail.is_empty() {
            a = a.wrapping_add(self.dot_tail(full, wa_tail));
            b = b.wrapping_add(self.dot_tail(full, wb_tail));
        }
        (a, b)
    }

    /// The last 1 to 3 weights against group `group`, whose unused lanes are 0.
    #[inline(always)]
    fn dot_tail(&self, group: usize, w_tail: &[i8]) -> i32 {
        let mut bytes = [0u8; 4];
        for (d, &v) in bytes.iter_mut().zip(w_tail) {
            *d = v as u8;
        }
        let word = u32::from_le_bytes(bytes);
        let acc = smlad(self.pairs[2 * group], sxtb16(word), 0);
        smlad(self.pairs[2 * group + 1], sxtb16_ror8(word), acc)
    }

    /// Two patches (two output pixels) against two weight rows: `(a . wa, a . wb, b . wa, b . wb)`. Each patch
    /// word and weight word is loaded once for two products.
    #[inline(always)]
    fn dot2x2(a: &Self, b: &Self, len: usize, wa: &[i8], wb: &[i8]) -> [i32; 4] {
        let (mut aa, mut ab, mut ba, mut bb) = (0i32, 0i32, 0i32, 0i32);
        let full = len / 4;
        let (wa_full, wa_tail) = wa.split_at(full * 4);
        let (wb_full, wb_tail) = wb.split_at(full * 4);
        for (((pa, pb), ca), cb) in a.pairs[..2 * full]
            .chunks_exact(2)
            .zip(b.pairs[..2 * full].chunks_exact(2))
            .zip(wa_full.chunks_exact(4))
            .zip(wb_full.chunks_exact(4))
        {
            let wa = u32::from_le_bytes([ca[0] as u8, ca[1] as u8, ca[2] as u8, ca[3] as u8]);
            let wb = u32::from_le_bytes([cb[0] as u8, cb[1] as u8, cb[2] as u8, cb[3] as u8]);
            let (wa_e, wb_e) = (sxtb16(wa), sxtb16(wb));
            aa = smlad(pa[0], wa_e, aa);
            ab = smlad(pa[0], wb_e, ab);
            ba = smlad(pb[0], wa_e, ba);
            bb = smlad(pb[0], wb_e, bb);
            let (wa_o, wb_o) = (sxtb16_ror8(wa), sxtb16_ror8(wb));
            aa = smlad(pa[1], wa_o, aa);
            ab = smlad(pa[1], wb_o, ab);
            ba = smlad(pb[1], wa_o, ba);
            bb = smlad(pb[1], wb_o, bb);
        }
        if !wa_tail.is_empty() {
            aa = aa.wrapping_add(a.dot_tail(full, wa_tail));
            ab = ab.wrapping_add(a.dot_tail(full, wb_tail));
            ba = ba.wrapping_add(b.dot_tail(full, wa_tail));
            bb = bb.wrapping_add(b.dot_tail(full, wb_tail));
        }
        [aa, ab, ba, bb]
    }

    /// `sum_i patch[i] * w[i]` over the patch's `len` elements (exact, wrapping like the reference's sum).
    #[inline(always)]
    fn dot(&self, len: usize, w: &[i8]) -> i32 {
        let mut acc = 0i32;
        let full = len / 4;
        let (w_full, w_tail) = w.split_at(full * 4);
        for (p, c) in self.pairs[..2 * full]
            .chunks_exact(2)
            .zip(w_full.chunks_exact(4))
        {
            let word = u32::from_le_bytes([c[0] as u8, c[1] as u8, c[2] as u8, c[3] as u8]);
            acc = smlad(p[0], sxtb16(word), acc);
            acc = smlad(p[1], sxtb16_ror8(word), acc);
        }
        if !w_tail.is_empty() {
            acc = acc.wrapping_add(self.dot_tail(full, w_tail));
        }
        acc
    }
}

/// Shortest patch [`dot_rows`] takes two weight rows at a time for (measured with `kiln bench`: below it the
/// pairing costs more than the shared patch loads save).
const DOT2_MIN_LEN: usize = 128;

/// `y[n] = finish(n, patch . weights[n])` for every output; two weight rows at a time for long patches.
#[inline(always)]
fn dot_rows<const N: usize>(
    patch: &Patch<N>,
    k: usize,
    weights: &[i8],
    y: &mut [i8],
    finish: impl Fn(usize, i32) -> i8,
) {
    let rows = weights.chunks_exact(k.max(1));
    if k < DOT2_MIN_LEN {
        for (n, (o, w)) in y.iter_mut().zip(rows).enumerate() {
            *o = finish(n, patch.dot(k, w));
        }
        return;
    }
    let mut pairs = y
        .chunks_exact_mut(2)
        .zip(rows.clone().step_by(2).zip(rows.clone().skip(1).step_by(2)));
    let mut n = 0;
    for (o, (wa, wb)) in &mut pairs {
        let (a, b) = patch.dot2(k, wa, wb);
        o[0] = finish(n, a);
        o[1] = finish(n + 1, b);
        n += 2;
    }
    if let (Some(o), Some(w)) = (y.get_mut(n), rows.clone().nth(n)) {
        *o = finish(n, patch.dot(k, w));
    }
}

#[inline(always)]
fn finish_output(
    q: &QuantS8,
    requant: &Requant<'_>,
    bias: Option<&[i32]>,
    oc: usize,
    sum: i32,
) -> i8 {
    let acc = match bias {
        Some(b) => b[oc].saturating_add(sum),
        None => sum,
    };
    output_s8_q15(acc, requant.multipliers[oc], requant.shifts[oc], q)
}

/// Exactly [`super::output_s8`]`(acc, (m as i32) << 16, shift, zero point, act_min, act_max)` (the loader
/// guarantees `act_min <= act_max`), in fewer instructions for the shifts models have.
///
/// With `t = 15 - shift` in `1..=31`, the reference's `(acc * (m << 16) + 2^(t + 15)) >> (t + 16)` is
/// `(acc * m + 2^(t - 1)) >> t`: both terms of the numerator carry the factor 2^16, and a shift below 32 is cheap.
/// And clamping the exact `v + zero_point` to the activation range equals the reference's saturate-to-i32,
/// saturating add, then clamp: any value the saturations change lies outside `-128..=127` either way. Other
/// shifts take the reference's path.
#[inline(always)]
pub fn output_s8_q15(acc: i32, m: i16, shift: i8, q: &QuantS8) -> i8 {
    let t = 15 - shift as i32;
    let v = if (1..=31).contains(&t) {
        (acc as i64 * m as i64 + (1i64 << (t - 1))) >> (t & 31)
    } else {
        crate::quant::requantize(acc, (m as i32) << 16, shift) as i64
    };
    (v + q.output_zero_point as i64)
        .max(q.act_min as i64)
        .min(q.act_max as i64) as i8
}

/// Whether [`dot_conv2d_s8`] takes this geometry: one group, a patch of at most [`MAX_PATCH`] elements.
pub fn dot_conv_fits(g: &ConvGeom) -> bool {
    g.groups == 1 && (g.kernel_h as u64 * g.kernel_w as u64 * g.in_c as u64) <= MAX_PATCH as u64
}

/// Convolution with one group; same contract and result as [`super::conv2d_s8`] for geometries
/// [`dot_conv_fits`] accepts (others are left to the reference kernel by the loader).
pub fn dot_conv2d_s8(
    geom: &ConvGeom,
    q: &QuantS8,
    requant: Requant<'_>,
    input: &[i8],
    weights: &[i8],
    bias: Option<&[i32]>,
    output: &mut [i8],
) {
    if !dot_conv_fits(geom) {
        return;
    }
    let [batch, in_h, in_w, in_c, out_h, out_w, out_c, kh, kw, sh, sw, dh, dw, pt, pl] = [
        geom.batch,
        geom.in_h,
        geom.in_w,
        geom.in_c,
        geom.out_h,
        geom.out_w,
        geom.out_c,
        geom.kernel_h,
        geom.kernel_w,
        geom.stride_h,
        geom.stride_w,
        geom.dilation_h,
        geom.dilation_w,
        geom.pad_top,
        geom.pad_left,
    ]
    .map(|v| v as usize);
    let k = kh * kw * in_c;
    let neg_zp = splat16(-(q.input_zero_point as i16));
    // The patch of output pixel `p` of batch `b`, zero point taken off, padding as zeros.
    let gather = |patch: &mut Patch<{ MAX_PATCH / 2 }>, b: usize, p: usize| {
        let (oy, ox) = (p / out_w, p % out_w);
        patch.clear();
        for ky in 0..kh {
            let yy = (oy * sh + ky * dh).wrapping_sub(pt);
            if yy >= in_h {
                patch.zeros(kw * in_c);
                continue;
            }
            let row = (b * in_h + yy) * in_w;
            for kx in 0..kw {
                let xx = (ox * sw + kx * dw).wrapping_sub(pl);
                if xx >= in_w {
                    patch.zeros(in_c);
                } else {
                    let at = (row + xx) * in_c;
                    patch.extend(&input[at..at + in_c], neg_zp);
                }
            }
        }
        patch.finish();
    };
    let finish = |oc: usize, sum: i32| finish_output(q, &requant, bias, oc, sum);
    let (mut pa, mut pb) = (
        Patch::<{ MAX_PATCH / 2 }>::new(),
        Patch::<{ MAX_PATCH / 2 }>::new(),
    );
    let mut out = output.chunks_exact_mut(out_c.max(1));
    let pixels = out_h * out_w;
    for b in 0..batch {
        // Two output pixels at a time: every weight word serves both.
        let mut p = 0;
        while p + 1 < pixels {
            gather(&mut pa, b, p);
            gather(&mut pb, b, p + 1);
            let (Some(ya), Some(yb)) = (out.next(), out.next()) else {
                return;
            };
            let mut rows = weights.chunks_exact(k.max(1));
            let mut n = 0;
            while let (Some(wa), Some(wb)) = (rows.next(), rows.next()) {
                let [aa, ab, ba, bb] = Patch::dot2x2(&pa, &pb, k, wa, wb);
                ya[n] = finish(n, aa);
                ya[n + 1] = finish(n + 1, ab);
                yb[n] = finish(n, ba);
                yb[n + 1] = finish(n + 1, bb);
                n += 2;
            }
            if n < out_c {
                if let Some(w) = weights.chunks_exact(k.max(1)).nth(n) {
                    ya[n] = finish(n, pa.dot(k, w));
                    yb[n] = finish(n, pb.dot(k, w));
                }
            }
            p += 2;
        }
        if p < pixels {
            gather(&mut pa, b, p);
            let Some(y) = out.next() else { return };
            dot_rows(&pa, k, weights, y, finish);
        }
    }
}

/// Whether [`dot_fully_connected_s8`] takes this geometry: rows of at most [`MAX_FC_ROW`] features.
pub fn dot_fc_fits(g: &FcGeom) -> bool {
    (g.in_features as usize) <= MAX_FC_ROW
}

/// Fully connected; same contract and result as [`super::fully_connected_s8`] for geometries [`dot_fc_fits`]
/// accepts.
pub fn dot_fully_connected_s8(
    geom: &FcGeom,
    q: &QuantS8,
    requant: Requant<'_>,
    input: &[i8],
    weights: &[i8],
    bias: Option<&[i32]>,
    output: &mut [i8],
) {
    if !dot_fc_fits(geom) {
        return;
    }
    let (k, n_out) = (geom.in_features as usize, geom.out_features as usize);
    let neg_zp = splat16(-(q.input_zero_point as i16));
    let mut patch = Patch::<{ MAX_FC_ROW / 2 }>::new();
    for (x, y) in input
        .chunks_exact(k.max(1))
        .zip(output.chunks_exact_mut(n_out.max(1)))
        .take(geom.rows as usize)
    {
        patch.clear();
        patch.extend(x, neg_zp);
        patch.finish();
        dot_rows(&patch, k, weights, y, |n, sum| {
            finish_output(q, &requant, bias, n, sum)
        });
    }
}

/// Whether [`depthwise_conv2d_s8`] takes this geometry: one input and one output channel per group, a window of
/// at most [`MAX_TAPS`] taps.
pub fn depthwise_fits(g: &ConvGeom) -> bool {
    g.groups == g.in_c
        && g.groups == g.out_c
        && (g.kernel_h as u64 * g.kernel_w as u64) <= MAX_TAPS as u64
}

/// Most taps a [`depthwise_conv2d_s8`] window may have (their offsets live on the stack).
pub const MAX_TAPS: usize = 64;

/// Depthwise convolution: the result of [`super::conv2d_s8`] for geometries [`depthwise_fits`] accepts, with the
/// weights tap-major: `weights[(ky * kernel_w + kx) * channels + c]` (the reference's is `[c][ky][kx]`). Per
/// output pixel the in-bounds taps are listed once; then 4 channels at a time walk that list with 4 accumulators
/// (one word of inputs and one of weights per tap), the last `channels % 4` one at a time.
pub fn depthwise_conv2d_s8(
    geom: &ConvGeom,
    q: &QuantS8,
    requant: Requant<'_>,
    input: &[i8],
    weights: &[i8],
    bias: Option<&[i32]>,
    output: &mut [i8],
) {
    if !depthwise_fits(geom) {
        return;
    }
    let [batch, in_h, in_w, c, out_h, out_w, kh, kw, sh, sw, dh, dw, pt, pl] = [
        geom.batch,
        geom.in_h,
        geom.in_w,
        geom.in_c,
        geom.out_h,
        geom.out_w,
        geom.kernel_h,
        geom.kernel_w,
        geom.stride_h,
        geom.stride_w,
        geom.dilation_h,
        geom.dilation_w,
        geom.pad_top,
        geom.pad_left,
    ]
    .map(|v| v as usize);
    let izp = q.input_zero_point;
    let neg_zp = splat16(-(izp as i16));
    let word = |s: &[i8]| u32::from_le_bytes([s[0] as u8, s[1] as u8, s[2] as u8, s[3] as u8]);
    // (input offset of the tap's first channel, weight offset of the tap's first channel)
    let mut list = [(0usize, 0usize); MAX_TAPS];
    let mut out = output.chunks_exact_mut(c.max(1));
    for b in 0..batch {
        for oy in 0..out_h {
            for ox in 0..out_w {
                let mut n = 0;
                for ky in 0..kh {
                    let iy = (oy * sh + ky * dh).wrapping_sub(pt);
                    if iy >= in_h {
                        continue;
                    }
                    for kx in 0..kw {
                        let ix = (ox * sw + kx * dw).wrapping_sub(pl);
                        if ix < in_w {
                            list[n] = (((b * in_h + iy) * in_w + ix) * c, (ky * kw + kx) * c);
                            n += 1;
                        }
                    }
                }
                let list = &list[..n];
                let Some(y) = out.next() else { return };
                let quads = c / 4;
                for (g, o) in y[..quads * 4].chunks_exact_mut(4).enumerate() {
                    let ch = 4 * g;
                    let (mut a0, mut a1, mut a2, mut a3) = (0i32, 0i32, 0i32, 0i32);
                    for &(at, wt) in list {
                        let x = word(&input[at + ch..at + ch + 4]);
                        let w = word(&weights[wt + ch..wt + ch + 4]);
                        let (xe, xo) = (sadd16(sxtb16(x), neg_zp), sadd16(sxtb16_ror8(x), neg_zp));
                        let (we, wo) = (sxtb16(w), sxtb16_ror8(w));
                        a0 = smlabb(xe, we, a0);
                        a2 = smlatt(xe, we, a2);
                        a1 = smlabb(xo, wo, a1);
                        a3 = smlatt(xo, wo, a3);
                    }
                    for (i, (o, sum)) in o.iter_mut().zip([a0, a1, a2, a3]).enumerate() {
                        *o = finish_output(q, &requant, bias, ch + i, sum);
                    }
                }
                for (ch, o) in y.iter_mut().enumerate().skip(quads * 4) {
                    let mut sum = 0i32;
                    for &(at, wt) in list {
                        sum = sum
                            .wrapping_add((input[at + ch] as i32 - izp) * weights[wt + ch] as i32);
                    }
                    *o = finish_output(q, &requant, bias, ch, sum);
                }
            }
        }
    }
}

/// The tap-major weights [`depthwise_conv2d_s8`] takes, from the reference layout `[channels][taps]`.
pub fn depthwise_weights_tap_major(weights: &[i8], channels: usize, out: &mut [i8]) {
    let taps = weights.len() / channels.max(1);
    for c in 0..channels {
        for t in 0..taps {
            out[t * channels + c] = weights[c * taps + t];
        }
    }
}
