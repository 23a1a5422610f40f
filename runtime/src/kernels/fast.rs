//! Optimised int8 kernels on packed weights, bit-exact to the reference kernels, written on [`super::dsp`] so a
//! Cortex-M4/M7 runs two MACs per `SMLAD` and every other target runs the same arithmetic portably.
//!
//! The compiler picks a kernel per op ([`crate::format::KernelS8`]) and, for these, writes the op's weights
//! *packed* for it: everything one block of outputs needs, in the order the inner loop reads it, so the loop is
//! loads and multiply-accumulates only. The packers ([`pack_dot`], [`pack_depthwise`]) live here, next to the
//! kernels that read their output; the conformance tests run `pack` + kernel against the reference kernel on the
//! unpacked op.
//!
//! - [`dot_conv2d_s8`]: convolution with one group (pointwise, general, narrow first layers). Two output pixels at
//!   a time: both input patches are gathered once, zero point taken off, into 16-bit pairs interleaved so one
//!   `LDRD` brings a word of each; then every pair of output channels is a 2x2 block of dot products, 17
//!   instructions per 16 MACs on Cortex-M4.
//! - [`dot_fully_connected_s8`]: the same packed weights, one input row against two output rows at a time.
//! - [`depthwise_conv2d_s8`]: depthwise convolution, 4 channels at a time, every tap one word of inputs and one
//!   `LDRD` of pre-widened weights; the input zero point is folded into the packed bias, so padding taps read a
//!   row of zero points instead of being skipped.
//!
//! Requantisation: the packers turn each channel's `(m, shift)` into one 32-bit multiplier for `SMMULR`
//! ([`q31_multiplier`]), which gives exactly the reference's rounding in one instruction.

use super::dsp::{sadd16, smmulr, splat16, sxtb16, sxtb16_ror8};
#[cfg(not(kiln_dsp))]
use super::dsp::{smlabb, smlad, smlatt};
use super::QuantS8;
use crate::format::{ConvGeom, FcGeom};

/// Most elements a patch (`kernel_h * kernel_w * in_c`) may have for [`dot_conv2d_s8`]; two patches live on the
/// stack (2,560 bytes). The MLPerf Tiny models' largest is IC's 3x3x64 = 576.
pub const MAX_PATCH: usize = 640;

/// Most features a row may have for [`dot_fully_connected_s8`] (its packed copy, 2 KiB, lives on the stack).
pub const MAX_FC_ROW: usize = 1024;

/// Most taps a [`depthwise_conv2d_s8`] window may have (their addresses live on the stack).
pub const MAX_TAPS: usize = 64;

/// Most channels a [`depthwise_conv2d_s8`] may have (a row of input zero points lives on the stack).
pub const MAX_DW_CHANNELS: usize = 1024;

/// Largest `|bias|` [`pack_depthwise`] folds the zero point into: with at most [`MAX_TAPS`] taps the sums then
/// stay far from `i32` overflow, so the reference's saturating bias addition never saturates.
pub const MAX_FOLDED_BIAS: i32 = 1 << 30;

/// The `SMMULR` multiplier of a channel whose reference requantisation is `(m, shift)` (see
/// [`super::Requant`]), when there is one: for `t = 15 - shift` in `16..=31`, `m' = m << (32 - t)`, and then
/// `smmulr(acc, m') = (acc * m * 2^(32 - t) + 2^31) >> 32 = (acc * m + 2^(t - 1)) >> t` exactly (both sides are
/// the same integer division), which is the reference's `requantize(acc, m << 16, shift)` (see
/// [`output_s8_q31`]). `m < 2^15` and `32 - t <= 16` keep `m'` below `2^31`. Other shifts (scales of 1/2 and
/// more, or below 2^-17) have none; the compiler keeps such ops on the reference kernel.
pub fn q31_multiplier(m: i16, shift: i8) -> Option<i32> {
    let t = 15 - shift as i32;
    if (16..=31).contains(&t) && m >= 0 {
        Some((m as i32) << (32 - t))
    } else {
        None
    }
}

/// One channel's output, `clamp(smmulr(acc, m) + zero point, act_min, act_max)` with `m` its
/// [`q31_multiplier`]: exactly [`super::output_s8`]`(acc, (m16 as i32) << 16, shift, zero point, act_min,
/// act_max)` (the loader guarantees `act_min <= act_max`). The reference's `(acc * (m16 << 16) + 2^(t + 15)) >>
/// (t + 16)` is `(acc * m16 + 2^(t - 1)) >> t` (both terms carry 2^16), which `SMMULR` computes (see
/// [`q31_multiplier`]); and clamping the exact `v + zero point` equals the reference's saturate-to-i32, saturating
/// add, then clamp: any value the saturations change lies outside `-128..=127` either way. The assembly epilogues
/// do the same with `SMMLAR` (the zero point added inside), `SSAT` and a bytewise clamp.
#[inline(always)]
pub fn output_s8_q31(acc: i32, m: i32, q: &QuantS8) -> i8 {
    // max/min, not clamp: the loader checked act_min <= act_max (and clamp's assertion would link formatting).
    (smmulr(acc, m) + q.output_zero_point)
        .max(q.act_min as i32)
        .min(q.act_max as i32) as i8
}

/// Words after a patch or a tap list where the assembly epilogues find the output constants: the zero point,
/// `act_min` and `act_max` in all 4 bytes, then output addresses.
#[cfg(kiln_dsp)]
const CONSTS: usize = 5;

/// `v` in all 4 bytes.
fn splat8(v: i8) -> u32 {
    (v as u8 as u32) * 0x0101_0101
}

// ---- packed dot-product weights (conv with one group, fully connected) ----

/// Words one pair of output channels takes in [`pack_dot`]'s layout, for dot products of `k` terms.
fn dot_pair_words(k: usize) -> usize {
    2 * k.div_ceil(4) + 4
}

/// Bytes of [`pack_dot`]'s output for `n` outputs of `k`-term dot products.
pub fn dot_packed_len(k: usize, n: usize) -> usize {
    n.div_ceil(2) * dot_pair_words(k) * 4
}

/// Packs the weights `[n][k]` (row-major), the optional bias and each channel's `(m, shift)` for
/// [`dot_conv2d_s8`] / [`dot_fully_connected_s8`]. Per pair of output channels `(a, b)` (a zero channel pairs
/// the last one when `n` is odd): for each group of 4 terms (the last padded with zeros) 4 bytes of row `a`
/// then 4 of row `b`; then `bias[a], bias[b], m'[a], m'[b]` as little-endian `i32` ([`q31_multiplier`]).
/// Returns false, writing nothing useful, when a shift has no `SMMULR` multiplier or `out` is not
/// [`dot_packed_len`] bytes.
pub fn pack_dot(
    weights: &[i8],
    k: usize,
    n: usize,
    bias: Option<&[i32]>,
    multipliers: &[i16],
    shifts: &[i8],
    out: &mut [u8],
) -> bool {
    if out.len() != dot_packed_len(k, n) || weights.len() != n * k {
        return false;
    }
    let groups = k.div_ceil(4);
    let mut at = 0;
    let mut put = |v: &[u8]| {
        out[at..at + v.len()].copy_from_slice(v);
        at += v.len();
    };
    for pair in 0..n.div_ceil(2) {
        let rows = [2 * pair, 2 * pair + 1];
        for g in 0..groups {
            for r in rows {
                let mut word = [0u8; 4];
                for (i, b) in word.iter_mut().enumerate() {
                    let col = 4 * g + i;
                    if r < n && col < k {
                        *b = weights[r * k + col] as u8;
                    }
                }
                put(&word);
            }
        }
        for r in rows {
            let b = if r < n { bias.map_or(0, |b| b[r]) } else { 0 };
            put(&b.to_le_bytes());
        }
        for r in rows {
            let m = if r < n {
                match q31_multiplier(multipliers[r], shifts[r]) {
                    Some(m) => m,
                    None => return false,
                }
            } else {
                0
            };
            put(&m.to_le_bytes());
        }
    }
    true
}

/// One group of the 2x2 dot product: 4 weight bytes of each of the two rows, the even and odd pairs of both
/// patches, 8 `SMLAD`s (16 MACs).
#[cfg(kiln_dsp)]
macro_rules! dot2x2_group {
    () => {
        concat!(
            "ldrd {wa}, {wb}, [{w}], #8\n",
            "ldrd {xa}, {xb}, [{p}], #8\n",
            "sxtb16 {t}, {wa}\n",
            "smlad {aa}, {xa}, {t}, {aa}\n",
            "smlad {ba}, {xb}, {t}, {ba}\n",
            "sxtb16 {t}, {wb}\n",
            "smlad {ab}, {xa}, {t}, {ab}\n",
            "smlad {bb}, {xb}, {t}, {bb}\n",
            "ldrd {xa}, {xb}, [{p}], #8\n",
            "sxtb16 {t}, {wa}, ror #8\n",
            "smlad {aa}, {xa}, {t}, {aa}\n",
            "smlad {ba}, {xb}, {t}, {ba}\n",
            "sxtb16 {t}, {wb}, ror #8\n",
            "smlad {ab}, {xa}, {t}, {ab}\n",
            "smlad {bb}, {xb}, {t}, {bb}\n",
        )
    };
}

/// One pair of output channels for two pixels: the groups loop (`$body` is one or two [`dot2x2_group`]s per
/// trip), then the pair's tail — bias a, bias b, multiplier a, multiplier b (two `LDRD`s, not one `LDM`: `LDM`
/// fills registers in number order, which the allocator picks) — and the 4 outputs finished at once: `QADD`
/// bias, `SMMLAR` requantisation plus zero point (`p` now points at the constants), `SSAT`, the bytes packed into
/// a word, the activation range bytewise (`SSUB8` + `SEL`), two halfword stores, the output addresses advanced.
#[cfg(kiln_dsp)]
macro_rules! dot_pair_asm {
    ($w:ident, $p:ident, $end:ident; $($body:expr),+) => {
        core::arch::asm!(
            "2:",
            $($body,)+
            "cmp {p}, {end}",
            "bne 2b",
            "ldrd {wa}, {wb}, [{w}], #8",
            "ldrd {xa}, {xb}, [{w}], #8",
            "qadd {aa}, {aa}, {wa}",
            "qadd {ba}, {ba}, {wa}",
            "qadd {ab}, {ab}, {wb}",
            "qadd {bb}, {bb}, {wb}",
            "ldr {t}, [{p}]",
            "smmlar {aa}, {aa}, {xa}, {t}",
            "smmlar {ba}, {ba}, {xa}, {t}",
            "smmlar {ab}, {ab}, {xb}, {t}",
            "smmlar {bb}, {bb}, {xb}, {t}",
            "ssat {aa}, #8, {aa}",
            "ssat {ab}, #8, {ab}",
            "ssat {ba}, #8, {ba}",
            "ssat {bb}, #8, {bb}",
            "bfi {aa}, {ab}, #8, #8",
            "bfi {aa}, {ba}, #16, #8",
            "bfi {aa}, {bb}, #24, #8",
            "ldrd {wa}, {wb}, [{p}, #4]",
            "ssub8 {t}, {aa}, {wa}",
            "sel {aa}, {aa}, {wa}",
            "ssub8 {t}, {wb}, {aa}",
            "sel {aa}, {aa}, {wb}",
            "ldrd {wa}, {wb}, [{p}, #12]",
            "strh {aa}, [{wa}], #2",
            "lsrs {aa}, {aa}, #16",
            "strh {aa}, [{wb}], #2",
            "strd {wa}, {wb}, [{p}, #12]",
            w = inout(reg) $w,
            p = inout(reg) $p => _,
            end = in(reg) $end,
            aa = inout(reg) 0i32 => _,
            ab = inout(reg) 0i32 => _,
            ba = inout(reg) 0i32 => _,
            bb = inout(reg) 0i32 => _,
            wa = out(reg) _,
            wb = out(reg) _,
            xa = out(reg) _,
            xb = out(reg) _,
            t = out(reg) _,
            options(nostack),
        )
    };
}

/// Two patches (interleaved, `4 * groups` words) against one packed pair of weight rows (`2 * groups` words):
/// `[a . wa, a . wb, b . wa, b . wb]`.
#[inline(always)]
fn dot2x2(p: &[u32], w: &[u32]) -> [i32; 4] {
    let groups = w.len() / 2;
    let (mut aa, mut ab, mut ba, mut bb) = (0i32, 0i32, 0i32, 0i32);
    if groups == 0 || p.len() < 4 * groups {
        return [aa, ab, ba, bb];
    }
    #[cfg(kiln_dsp)]
    // SAFETY: the loop reads `4 * groups` words from `p` and `2 * groups` from `w`, both in bounds (checked
    // above), with word-aligned `LDRD`s (both are `u32` slices); it writes only registers.
    unsafe {
        let end = p.as_ptr().add(4 * groups);
        core::arch::asm!(
            "2:",
            dot2x2_group!(),
            "cmp {p}, {end}",
            "bne 2b",
            w = inout(reg) w.as_ptr() => _,
            p = inout(reg) p.as_ptr() => _,
            end = in(reg) end,
            aa = inout(reg) aa,
            ab = inout(reg) ab,
            ba = inout(reg) ba,
            bb = inout(reg) bb,
            wa = out(reg) _,
            wb = out(reg) _,
            xa = out(reg) _,
            xb = out(reg) _,
            t = out(reg) _,
            options(nostack, readonly),
        );
    }
    #[cfg(not(kiln_dsp))]
    for (x, w) in p[..4 * groups].chunks_exact(4).zip(w.chunks_exact(2)) {
        let (wa, wb) = (w[0], w[1]);
        aa = smlad(x[0], sxtb16(wa), aa);
        ba = smlad(x[1], sxtb16(wa), ba);
        ab = smlad(x[0], sxtb16(wb), ab);
        bb = smlad(x[1], sxtb16(wb), bb);
        aa = smlad(x[2], sxtb16_ror8(wa), aa);
        ba = smlad(x[3], sxtb16_ror8(wa), ba);
        ab = smlad(x[2], sxtb16_ror8(wb), ab);
        bb = smlad(x[3], sxtb16_ror8(wb), bb);
    }
    [aa, ab, ba, bb]
}

/// Both patches in `words[..4 * groups]` against every pair of output channels in `packed` (whole pairs, each
/// `2 * groups + 4` words): outputs `2j, 2j + 1` of pixel A go to `ya[2j..]`, of pixel B to `yb[2j..]` (`None`:
/// B is a copy of A, nothing to store). The epilogue — bias (saturating), `SMMULR` requantisation plus zero
/// point, clamp — runs on all 4 outputs at once: `SSAT` to int8, the 4 bytes packed into one word, the activation
/// range applied bytewise (`SSUB8` + `SEL` are a bytewise max and min), two halfword stores.
#[inline(always)]
fn dot2x2_rows(
    words: &mut [u32],
    groups: usize,
    packed: &[u32],
    ya: &mut [i8],
    yb: Option<&mut [i8]>,
    q: &QuantS8,
) {
    let pair_words = 2 * groups + 4;
    let pairs = packed.len() / pair_words;
    if groups == 0 || ya.len() < 2 * pairs || yb.as_ref().is_some_and(|yb| yb.len() < 2 * pairs) {
        return;
    }
    #[cfg(kiln_dsp)]
    {
        let Some(consts) = words.get_mut(4 * groups..4 * groups + CONSTS) else {
            return;
        };
        let ya = ya.as_mut_ptr();
        let yb = yb.map_or(ya, |yb| yb.as_mut_ptr());
        consts.copy_from_slice(&[
            q.output_zero_point as u32,
            splat8(q.act_min),
            splat8(q.act_max),
            ya as u32,
            yb as u32,
        ]);
        let p = words.as_ptr();
        let mut w = packed.as_ptr();
        let end = p.wrapping_add(4 * groups);
        // SAFETY (both loops): reads `4 * groups` patch words and the 5 constants after them (checked above), one
        // pair of `packed` per iteration (`pairs` of them), word-aligned for `LDRD`; stores 2 bytes at `ya + 2j`
        // and `yb + 2j` (in bounds: checked above), and advances those two addresses in the constants.
        if groups.is_multiple_of(2) {
            // Two groups per trip: one compare and branch per 32 MACs.
            for _ in 0..pairs {
                unsafe { dot_pair_asm!(w, p, end; dot2x2_group!(), dot2x2_group!()) }
            }
        } else {
            for _ in 0..pairs {
                unsafe { dot_pair_asm!(w, p, end; dot2x2_group!()) }
            }
        }
    }
    #[cfg(not(kiln_dsp))]
    {
        let x = &words[..4 * groups];
        let mut yb = yb;
        for (j, wj) in packed.chunks_exact(pair_words).enumerate() {
            let (w, tail) = wj.split_at(2 * groups);
            let [aa, ab, ba, bb] = dot2x2(x, w);
            let [bias_a, bias_b, m_a, m_b] = pair_tail(tail);
            ya[2 * j] = output_s8_q31(bias_a.saturating_add(aa), m_a, q);
            ya[2 * j + 1] = output_s8_q31(bias_b.saturating_add(ab), m_b, q);
            if let Some(yb) = yb.as_deref_mut() {
                yb[2 * j] = output_s8_q31(bias_a.saturating_add(ba), m_a, q);
                yb[2 * j + 1] = output_s8_q31(bias_b.saturating_add(bb), m_b, q);
            }
        }
    }
}

/// One patch (`[even, odd]` per group, `2 * groups` words) against one packed pair of weight rows:
/// `[x . wa, x . wb]`.
#[inline(always)]
fn dot1x2(p: &[u32], w: &[u32]) -> [i32; 2] {
    let groups = w.len() / 2;
    let (mut a, mut b) = (0i32, 0i32);
    if groups == 0 || p.len() < 2 * groups {
        return [a, b];
    }
    #[cfg(kiln_dsp)]
    // SAFETY: reads `2 * groups` words from each of `p` and `w`, in bounds (checked above), word-aligned.
    unsafe {
        let end = p.as_ptr().add(2 * groups);
        core::arch::asm!(
            "2:",
            "ldrd {wa}, {wb}, [{w}], #8",
            "ldrd {xe}, {xo}, [{p}], #8",
            "sxtb16 {t}, {wa}",
            "smlad {a}, {xe}, {t}, {a}",
            "sxtb16 {t}, {wa}, ror #8",
            "smlad {a}, {xo}, {t}, {a}",
            "sxtb16 {t}, {wb}",
            "smlad {b}, {xe}, {t}, {b}",
            "sxtb16 {t}, {wb}, ror #8",
            "smlad {b}, {xo}, {t}, {b}",
            "cmp {p}, {end}",
            "bne 2b",
            w = inout(reg) w.as_ptr() => _,
            p = inout(reg) p.as_ptr() => _,
            end = in(reg) end,
            a = inout(reg) a,
            b = inout(reg) b,
            wa = out(reg) _,
            wb = out(reg) _,
            xe = out(reg) _,
            xo = out(reg) _,
            t = out(reg) _,
            options(nostack, readonly),
        );
    }
    #[cfg(not(kiln_dsp))]
    for (x, w) in p[..2 * groups].chunks_exact(2).zip(w.chunks_exact(2)) {
        a = smlad(x[0], sxtb16(w[0]), a);
        a = smlad(x[1], sxtb16_ror8(w[0]), a);
        b = smlad(x[0], sxtb16(w[1]), b);
        b = smlad(x[1], sxtb16_ror8(w[1]), b);
    }
    [a, b]
}

/// The tail of one packed pair: `[bias_a, bias_b, m_a, m_b]`.
#[inline(always)]
fn pair_tail(t: &[u32]) -> [i32; 4] {
    [t[0] as i32, t[1] as i32, t[2] as i32, t[3] as i32]
}

/// Patches in 16-bit pairs, the zero point taken off (`neg_zp` is `-zp` in both lanes; padding, stored as the zero
/// point, becomes 0): 4 bytes `x0..x3` become the even lanes `(x0, x2)` and the odd lanes `(x1, x3)`, what
/// `SXTB16` and `SXTB16 ROR 8` give of 4 weight bytes. With `STRIDE` 4, group `g` of two interleaved patches is
/// `[a_even, b_even, a_odd, b_odd]` (`slot` 0 is `a`, 1 is `b`); with `STRIDE` 2, one patch's group is
/// `[even, odd]`.
#[inline(always)]
fn put_word<const STRIDE: usize>(group: &mut [u32], slot: usize, bytes: u32, neg_zp: u32) {
    group[slot] = sadd16(sxtb16(bytes), neg_zp);
    group[STRIDE / 2 + slot] = sadd16(sxtb16_ror8(bytes), neg_zp);
}

/// Widens the 4-byte groups of `src` into `words` from group 0 (see [`put_word`]).
#[inline(always)]
fn widen<const STRIDE: usize>(src: &[i8], words: &mut [u32], slot: usize, neg_zp: u32) {
    for (c, w) in src.chunks_exact(4).zip(words.chunks_exact_mut(STRIDE)) {
        let bytes = u32::from_le_bytes([c[0] as u8, c[1] as u8, c[2] as u8, c[3] as u8]);
        put_word::<STRIDE>(w, slot, bytes, neg_zp);
    }
}

/// Packs a patch's bytes as they come, 4 at a time, into slot `slot` of two interleaved patches (see
/// [`put_word`]).
struct Packer<'w> {
    words: &'w mut [u32],
    slot: usize,
    neg_zp: u32,
    acc: u32,
    n: u32,
    g: usize,
}

impl Packer<'_> {
    #[inline(always)]
    fn push(&mut self, x: i8) {
        self.acc |= (x as u8 as u32) << (8 * self.n);
        self.n += 1;
        if self.n == 4 {
            if let Some(w) = self.words.get_mut(4 * self.g..4 * self.g + 4) {
                put_word::<4>(w, self.slot, self.acc, self.neg_zp);
            }
            self.acc = 0;
            self.n = 0;
            self.g += 1;
        }
    }
}

/// A conv geometry's fields as `usize`, the form the kernels index with.
struct Dims {
    batch: usize,
    in_h: usize,
    in_w: usize,
    in_c: usize,
    out_h: usize,
    out_w: usize,
    out_c: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    dh: usize,
    dw: usize,
    pt: usize,
    pl: usize,
}

impl Dims {
    fn of(g: &ConvGeom) -> Dims {
        let u = |v: u32| v as usize;
        Dims {
            batch: u(g.batch),
            in_h: u(g.in_h),
            in_w: u(g.in_w),
            in_c: u(g.in_c),
            out_h: u(g.out_h),
            out_w: u(g.out_w),
            out_c: u(g.out_c),
            kh: u(g.kernel_h),
            kw: u(g.kernel_w),
            sh: u(g.stride_h),
            sw: u(g.stride_w),
            dh: u(g.dilation_h),
            dw: u(g.dilation_w),
            pt: u(g.pad_top),
            pl: u(g.pad_left),
        }
    }
}

/// Whether [`dot_conv2d_s8`] takes this geometry: one group, a patch of at most [`MAX_PATCH`] elements.
pub fn dot_conv_fits(g: &ConvGeom) -> bool {
    g.groups == 1
        && (g.kernel_h as u64 * g.kernel_w as u64).saturating_mul(g.in_c as u64) <= MAX_PATCH as u64
}

/// Convolution with one group on [`pack_dot`]-packed weights (`k = kernel_h * kernel_w * in_c`): the bytes of
/// [`super::conv2d_s8`] on the unpacked op, for geometries [`dot_conv_fits`] accepts.
pub fn dot_conv2d_s8(
    geom: &ConvGeom,
    q: &QuantS8,
    packed: &[u32],
    input: &[i8],
    output: &mut [i8],
) {
    let pixel = geom.out_c as usize;
    dot_conv(
        geom,
        q,
        packed,
        &mut Split {
            input,
            output,
            pixel,
        },
    );
}

/// [`dot_conv2d_s8`] writing its output over its input `buf`, for geometries [`in_place_fits`] accepts.
pub fn dot_conv2d_s8_in_place(geom: &ConvGeom, q: &QuantS8, packed: &[u32], buf: &mut [i8]) {
    if let Some(mut io) = InPlace::new(geom, buf) {
        dot_conv(geom, q, packed, &mut io);
    }
}

fn dot_conv(geom: &ConvGeom, q: &QuantS8, packed: &[u32], io: &mut dyn Pixels) {
    if !dot_conv_fits(geom) {
        return;
    }
    let Dims {
        batch,
        in_h,
        in_w,
        in_c,
        out_h,
        out_w,
        out_c,
        kh,
        kw,
        sh,
        sw,
        dh,
        dw,
        pt,
        pl,
    } = Dims::of(geom);
    let k = kh * kw * in_c;
    let groups = k.div_ceil(4);
    let pair_words = dot_pair_words(k);
    if packed.len() != out_c.div_ceil(2) * pair_words || out_c == 0 {
        return;
    }
    let neg_zp = splat16(-(q.input_zero_point as i16));
    // Two interleaved patches, then room for the epilogue's constants.
    let mut words = [0u32; MAX_PATCH + 8];
    // The patch of output pixel `p` of batch `b` into slot `slot`: its bytes copied in runs (whole window rows
    // where they are in bounds), padding as the zero point, then widened 4 at a time with the zero point taken
    // off (padding becomes 0, as the reference's skipped taps).
    let zp = q.input_zero_point as i8;
    let mut bytes = [0i8; MAX_PATCH + 4];
    let mut gather = |words: &mut [u32], input: &[i8], slot: usize, b: usize, p: usize| {
        let (oy, ox) = (p / out_w, p % out_w);
        let run = kw * in_c;
        // Window rows of whole groups: each widened straight from the input where it is in bounds, padding rows
        // as zero words, rows cut by the left or right edge staged first.
        if run.is_multiple_of(4) {
            for (ky, w) in words[..4 * groups].chunks_exact_mut(run).enumerate() {
                let yy = (oy * sh + ky * dh).wrapping_sub(pt);
                if yy >= in_h {
                    for w in w.chunks_exact_mut(4) {
                        w[slot] = 0;
                        w[2 + slot] = 0;
                    }
                    continue;
                }
                let row = (b * in_h + yy) * in_w;
                let x0 = (ox * sw).wrapping_sub(pl);
                if dw == 1 && x0 < in_w && x0 + kw <= in_w {
                    let at = (row + x0) * in_c;
                    widen::<4>(&input[at..at + run], w, slot, neg_zp);
                    continue;
                }
                let staged = &mut bytes[..run];
                for (kx, d) in staged.chunks_exact_mut(in_c).enumerate() {
                    let xx = (ox * sw + kx * dw).wrapping_sub(pl);
                    if xx >= in_w {
                        d.fill(zp);
                    } else {
                        let at = (row + xx) * in_c;
                        d.copy_from_slice(&input[at..at + in_c]);
                    }
                }
                widen::<4>(staged, w, slot, neg_zp);
            }
            return;
        }
        // Narrow windows (rows that are not whole groups, e.g. 1 or 3 input channels): bytes packed 4 at a time
        // as they come, padding as the zero point, the last group filled with it.
        let mut pk = Packer {
            words,
            slot,
            neg_zp,
            acc: 0,
            n: 0,
            g: 0,
        };
        for ky in 0..kh {
            let yy = (oy * sh + ky * dh).wrapping_sub(pt);
            if yy >= in_h {
                for _ in 0..run {
                    pk.push(zp);
                }
                continue;
            }
            let row = (b * in_h + yy) * in_w;
            let x0 = (ox * sw).wrapping_sub(pl);
            if dw == 1 && x0 < in_w && x0 + kw <= in_w {
                let at = (row + x0) * in_c;
                for &x in &input[at..at + run] {
                    pk.push(x);
                }
                continue;
            }
            for kx in 0..kw {
                let xx = (ox * sw + kx * dw).wrapping_sub(pl);
                if xx >= in_w {
                    for _ in 0..in_c {
                        pk.push(zp);
                    }
                } else {
                    let at = (row + xx) * in_c;
                    for &x in &input[at..at + in_c] {
                        pk.push(x);
                    }
                }
            }
        }
        while pk.n != 0 {
            pk.push(zp);
        }
    };
    let pixels = out_h * out_w;
    let full_pairs = out_c / 2;
    let (whole, odd) = packed.split_at(full_pairs * pair_words);
    for b in 0..batch {
        let mut p = 0;
        while p < pixels {
            // Two pixels at a time (the last one alone computes a copy of itself beside it, not stored).
            let two = p + 1 < pixels;
            gather(&mut words, io.input(), 0, b, p);
            gather(&mut words, io.input(), 1, b, if two { p + 1 } else { p });
            let at = b * pixels + p;
            let Some(ys) = io.out(at, if two { 2 } else { 1 }) else {
                return;
            };
            let (ya, yb) = ys.split_at_mut(out_c);
            let yb = two.then_some(yb);
            dot2x2_rows(
                &mut words,
                groups,
                whole,
                &mut ya[..2 * full_pairs],
                yb.map(|yb| &mut yb[..2 * full_pairs]),
                q,
            );
            // An odd last channel: its pair's second row is zeros, its outputs not stored.
            if !odd.is_empty() {
                let (w, tail) = odd.split_at(2 * groups);
                let [aa, _, ba, _] = dot2x2(&words[..4 * groups], w);
                let [bias_a, _, m_a, _] = pair_tail(tail);
                let n = out_c - 1;
                ya[n] = output_s8_q31(bias_a.saturating_add(aa), m_a, q);
                if two {
                    ys[out_c + n] = output_s8_q31(bias_a.saturating_add(ba), m_a, q);
                }
            }
            p += 2;
            io.done(b * pixels + p.min(pixels));
        }
    }
    io.finish();
}

/// Whether [`dot_fully_connected_s8`] takes this geometry: rows of at most [`MAX_FC_ROW`] features.
pub fn dot_fc_fits(g: &FcGeom) -> bool {
    (g.in_features as usize) <= MAX_FC_ROW
}

/// Fully connected on [`pack_dot`]-packed weights (`k = in_features`, `n = out_features`): the bytes of
/// [`super::fully_connected_s8`] on the unpacked op, for geometries [`dot_fc_fits`] accepts.
pub fn dot_fully_connected_s8(
    geom: &FcGeom,
    q: &QuantS8,
    packed: &[u32],
    input: &[i8],
    output: &mut [i8],
) {
    if !dot_fc_fits(geom) {
        return;
    }
    let (k, n_out) = (geom.in_features as usize, geom.out_features as usize);
    let groups = k.div_ceil(4);
    let pair_words = dot_pair_words(k);
    if packed.len() != n_out.div_ceil(2) * pair_words || k == 0 || n_out == 0 {
        return;
    }
    let neg_zp = splat16(-(q.input_zero_point as i16));
    let mut words = [0u32; MAX_FC_ROW / 2];
    let full_pairs = n_out / 2;
    for (x, y) in input
        .chunks_exact(k)
        .zip(output.chunks_exact_mut(n_out))
        .take(geom.rows as usize)
    {
        // The row widened (see `put_word`), its last group padded with the zero point (which becomes 0).
        let whole = k / 4 * 4;
        widen::<2>(&x[..whole], &mut words, 0, neg_zp);
        if whole < k {
            let mut last = [q.input_zero_point as i8; 4];
            last[..k - whole].copy_from_slice(&x[whole..]);
            widen::<2>(&last, &mut words[2 * (k / 4)..], 0, neg_zp);
        }
        let x = &words[..2 * groups];
        for (j, wj) in packed.chunks_exact(pair_words).enumerate() {
            let (w, tail) = wj.split_at(2 * groups);
            let [a, b] = dot1x2(x, w);
            let [bias_a, bias_b, m_a, m_b] = pair_tail(tail);
            y[2 * j] = output_s8_q31(bias_a.saturating_add(a), m_a, q);
            if j < full_pairs {
                y[2 * j + 1] = output_s8_q31(bias_b.saturating_add(b), m_b, q);
            }
        }
    }
}

// ---- where conv outputs go: another buffer, or over the input ----

/// Where a conv kernel reads its input and puts its output pixels (`pixel` bytes each): another buffer
/// ([`Split`]), or the input's own buffer ([`InPlace`]).
trait Pixels {
    fn input(&self) -> &[i8];
    /// The bytes of output pixels `p .. p + n` (`n` is 1 or 2; `p` is even when `n` is 2), contiguous.
    fn out(&mut self, p: usize, n: usize) -> Option<&mut [i8]>;
    /// Output pixels below `next` are computed.
    fn done(&mut self, next: usize);
    /// Every output pixel is computed.
    fn finish(&mut self);
}

struct Split<'a> {
    input: &'a [i8],
    output: &'a mut [i8],
    pixel: usize,
}

impl Pixels for Split<'_> {
    fn input(&self) -> &[i8] {
        self.input
    }

    #[inline(always)]
    fn out(&mut self, p: usize, n: usize) -> Option<&mut [i8]> {
        self.output.get_mut(p * self.pixel..(p + n) * self.pixel)
    }

    fn done(&mut self, _next: usize) {}

    fn finish(&mut self) {}
}

/// Bytes of output pixels an in-place conv holds back ([`in_place_fits`]).
pub const MAX_RING: usize = 1024;

/// How many output pixels an in-place conv must hold back before storing them over its input: a later output
/// pixel `q` reads input pixels from `q - pad_top * in_w - pad_left` on (its window's top-left corner), so
/// output pixel `j` may overwrite input pixel `j` once the outputs up to `j + lag` are computed.
fn lag(g: &ConvGeom) -> usize {
    g.pad_top as usize * g.in_w as usize + g.pad_left as usize
}

/// Ring slots: the lag plus one block of two pixels, even so a block never wraps.
fn ring_slots(g: &ConvGeom) -> usize {
    (lag(g) + 2).next_multiple_of(2)
}

/// Whether a conv with this geometry may write its output over its input: output pixel `j` has input pixel
/// `j`'s place and size (stride 1, same height and width, as many output as input channels), and the pixels it
/// holds back fit [`MAX_RING`] bytes.
pub fn in_place_fits(g: &ConvGeom) -> bool {
    g.stride_h == 1
        && g.stride_w == 1
        && g.in_h == g.out_h
        && g.in_w == g.out_w
        && g.in_c == g.out_c
        // Blocks of two pixels start at even indices across the batch.
        && (g.batch == 1 || (g.out_h as u64 * g.out_w as u64).is_multiple_of(2))
        && (g.pad_top as u64 * g.in_w as u64 + g.pad_left as u64 + 2 + 1).saturating_mul(g.out_c as u64)
            <= MAX_RING as u64
}

/// Output pixels go to a ring, and from there over the input pixel of the same index once no later output
/// reads it (see [`lag`]).
struct InPlace<'a> {
    buf: &'a mut [i8],
    ring: [i8; MAX_RING],
    slots: usize,
    lag: usize,
    pixel: usize,
    stored: usize,
    total: usize,
}

impl<'a> InPlace<'a> {
    fn new(g: &ConvGeom, buf: &'a mut [i8]) -> Option<Self> {
        if !in_place_fits(g) {
            return None;
        }
        let pixel = g.out_c as usize;
        let total = (g.batch * g.out_h * g.out_w) as usize;
        (buf.len() >= total * pixel).then_some(InPlace {
            buf,
            ring: [0; MAX_RING],
            slots: ring_slots(g),
            lag: lag(g),
            pixel,
            stored: 0,
            total,
        })
    }

    /// Stores the held-back pixels below `upto`.
    fn store(&mut self, upto: usize) {
        if self.lag == 0 {
            return; // written in place already
        }
        let px = self.pixel;
        while self.stored < upto.min(self.total) {
            let (j, slot) = (self.stored, self.stored % self.slots);
            self.buf[j * px..(j + 1) * px].copy_from_slice(&self.ring[slot * px..(slot + 1) * px]);
            self.stored += 1;
        }
    }
}

impl Pixels for InPlace<'_> {
    fn input(&self) -> &[i8] {
        self.buf
    }

    #[inline(always)]
    fn out(&mut self, p: usize, n: usize) -> Option<&mut [i8]> {
        // No lag (a 1x1 window): the block's inputs are gathered before its outputs are written, so they go
        // straight over them.
        if self.lag == 0 {
            return self.buf.get_mut(p * self.pixel..(p + n) * self.pixel);
        }
        let slot = p % self.slots;
        self.ring
            .get_mut(slot * self.pixel..(slot + n) * self.pixel)
    }

    fn done(&mut self, next: usize) {
        self.store(next.saturating_sub(self.lag));
    }

    fn finish(&mut self) {
        self.store(self.total);
    }
}

// ---- depthwise ----

/// Whether [`depthwise_conv2d_s8`] takes this geometry: one input and one output channel per group, channels a
/// multiple of 4 up to [`MAX_DW_CHANNELS`], a window of at most [`MAX_TAPS`] taps.
pub fn depthwise_fits(g: &ConvGeom) -> bool {
    g.groups == g.in_c
        && g.groups == g.out_c
        && g.in_c.is_multiple_of(4)
        && (g.in_c as usize) <= MAX_DW_CHANNELS
        && (g.kernel_h as u64 * g.kernel_w as u64) <= MAX_TAPS as u64
}

/// Words one group of 4 channels takes in [`pack_depthwise`]'s layout.
fn dw_group_words(taps: usize) -> usize {
    2 * taps + 8
}

/// Bytes of [`pack_depthwise`]'s output.
pub fn depthwise_packed_len(taps: usize, channels: usize) -> usize {
    channels / 4 * dw_group_words(taps) * 4
}

/// Packs depthwise weights (the reference layout `[channels][taps]`), bias and requantisation for
/// [`depthwise_conv2d_s8`]. Per group of 4 channels `c0..c3`: for each tap, the weights widened to 16-bit pairs
/// `(w[c0], w[c2])` and `(w[c1], w[c3])` (the lanes `SXTB16` and `SXTB16 ROR 8` give of 4 input bytes); then
/// the 4 folded biases `bias[c] - input_zero_point * sum_t w[c][t]` and the 4 [`q31_multiplier`]s, as
/// little-endian `i32`. Folding lets padding taps read the zero point (`x - zp = 0`, as the reference's skipped
/// taps) instead of being skipped, so every pixel runs the same loop. Returns false when a bias exceeds
/// [`MAX_FOLDED_BIAS`], a shift has no `SMMULR` multiplier, the geometry is not 4-channel groups, or `out` is not
/// [`depthwise_packed_len`] bytes.
#[allow(clippy::too_many_arguments)]
pub fn pack_depthwise(
    weights: &[i8],
    taps: usize,
    channels: usize,
    input_zero_point: i32,
    bias: Option<&[i32]>,
    multipliers: &[i16],
    shifts: &[i8],
    out: &mut [u8],
) -> bool {
    if !channels.is_multiple_of(4)
        || weights.len() != taps * channels
        || out.len() != depthwise_packed_len(taps, channels)
    {
        return false;
    }
    let mut at = 0;
    let mut put = |v: i32| {
        out[at..at + 4].copy_from_slice(&v.to_le_bytes());
        at += 4;
    };
    let w = |c: usize, t: usize| weights[c * taps + t] as i16 as u16 as i32;
    for c0 in (0..channels).step_by(4) {
        for t in 0..taps {
            put(w(c0, t) | w(c0 + 2, t) << 16);
            put(w(c0 + 1, t) | w(c0 + 3, t) << 16);
        }
        for c in c0..c0 + 4 {
            let b = bias.map_or(0, |b| b[c]);
            if b.unsigned_abs() > MAX_FOLDED_BIAS as u32 {
                return false;
            }
            let sum: i32 = (0..taps).map(|t| weights[c * taps + t] as i32).sum();
            put(b - input_zero_point * sum);
        }
        for c in c0..c0 + 4 {
            match q31_multiplier(multipliers[c], shifts[c]) {
                Some(m) => put(m),
                None => return false,
            }
        }
    }
    true
}

/// A padding tap in the portable tap list.
#[cfg(not(kiln_dsp))]
const PAD: usize = usize::MAX;

/// Depthwise convolution on [`pack_depthwise`]-packed weights: the bytes of [`super::conv2d_s8`] on the unpacked
/// op, for geometries [`depthwise_fits`] accepts. Per output pixel every tap is listed once (the input pixel, or a
/// row of zero points for padding; interior pixels from offsets computed once); then 4 channels at a time walk
/// that list, 11 instructions per tap on Cortex-M4, and the 4 outputs are finished together as in
/// [`dot_conv2d_s8`].
pub fn depthwise_conv2d_s8(
    geom: &ConvGeom,
    q: &QuantS8,
    packed: &[u32],
    input: &[i8],
    output: &mut [i8],
) {
    let pixel = geom.out_c as usize;
    depthwise(
        geom,
        q,
        packed,
        &mut Split {
            input,
            output,
            pixel,
        },
    );
}

/// [`depthwise_conv2d_s8`] writing its output over its input `buf`, for geometries [`in_place_fits`] accepts.
pub fn depthwise_conv2d_s8_in_place(geom: &ConvGeom, q: &QuantS8, packed: &[u32], buf: &mut [i8]) {
    if let Some(mut io) = InPlace::new(geom, buf) {
        depthwise(geom, q, packed, &mut io);
    }
}

fn depthwise(geom: &ConvGeom, q: &QuantS8, packed: &[u32], io: &mut dyn Pixels) {
    if !depthwise_fits(geom) {
        return;
    }
    let Dims {
        batch,
        in_h,
        in_w,
        in_c: c,
        out_h,
        out_w,
        kh,
        kw,
        sh,
        sw,
        dh,
        dw,
        pt,
        pl,
        ..
    } = Dims::of(geom);
    let taps = kh * kw;
    let group_words = dw_group_words(taps);
    if taps == 0
        || packed.len() != c / 4 * group_words
        || io.input().len() < batch * in_h * in_w * c
    {
        return;
    }
    // Offsets of the taps from the window's top-left input pixel.
    let mut offs = [0usize; MAX_TAPS];
    for ky in 0..kh {
        for kx in 0..kw {
            offs[ky * kw + kx] = (ky * dh * in_w + kx * dw) * c;
        }
    }
    // The input's address, once (the tap list holds addresses; the buffer does not move during the op).
    #[cfg(kiln_dsp)]
    let in_base = io.input().as_ptr() as usize;
    #[cfg(kiln_dsp)]
    let (zps, mut list) = {
        let mut zps = [0i8; MAX_DW_CHANNELS];
        zps[..c].fill(q.input_zero_point as i8);
        (zps, [0u32; MAX_TAPS + CONSTS])
    };
    #[cfg(not(kiln_dsp))]
    let mut list = [0usize; MAX_TAPS];
    let mut next = 0;
    for b in 0..batch {
        for oy in 0..out_h {
            let y0 = (oy * sh).wrapping_sub(pt);
            let rows_in = y0 < in_h && y0 + (kh - 1) * dh < in_h;
            for ox in 0..out_w {
                let x0 = (ox * sw).wrapping_sub(pl);
                let interior = rows_in && x0 < in_w && x0 + (kw - 1) * dw < in_w;
                // Only used for interior pixels, where it is the window's first input pixel.
                let base = (((b * in_h).wrapping_add(y0)).wrapping_mul(in_w))
                    .wrapping_add(x0)
                    .wrapping_mul(c);
                // Interior pixels (nearly all) in a loop of their own: no per-tap bounds tests.
                if interior {
                    for (l, &off) in list[..taps].iter_mut().zip(&offs[..taps]) {
                        #[cfg(kiln_dsp)]
                        {
                            *l = in_base.wrapping_add(base + off) as u32;
                        }
                        #[cfg(not(kiln_dsp))]
                        {
                            *l = base + off;
                        }
                    }
                } else {
                    for (t, l) in list[..taps].iter_mut().enumerate() {
                        let iy = y0.wrapping_add((t / kw) * dh);
                        let ix = x0.wrapping_add((t % kw) * dw);
                        let at =
                            (iy < in_h && ix < in_w).then(|| ((b * in_h + iy) * in_w + ix) * c);
                        #[cfg(kiln_dsp)]
                        {
                            *l = match at {
                                Some(at) => in_base.wrapping_add(at) as u32,
                                None => zps.as_ptr() as u32,
                            };
                        }
                        #[cfg(not(kiln_dsp))]
                        {
                            *l = at.unwrap_or(PAD);
                        }
                    }
                }
                #[cfg(kiln_dsp)]
                {
                    let Some(y) = io.out(next, 1) else { return };
                    dw_pixel(&mut list, taps, c, packed, y, q);
                }
                #[cfg(not(kiln_dsp))]
                {
                    // The pixel's outputs, computed from the input before they are stored (in place, the input
                    // and the output are one buffer).
                    let mut y = [0i8; MAX_DW_CHANNELS];
                    let input = io.input();
                    let zp4 = splat8(q.input_zero_point as i8);
                    for (ch, (wg, o)) in (0..c).step_by(4).zip(
                        packed
                            .chunks_exact(group_words)
                            .zip(y[..c].chunks_exact_mut(4)),
                    ) {
                        let (w, tail) = wg.split_at(2 * taps);
                        let (mut a0, mut a1, mut a2, mut a3) = (0i32, 0i32, 0i32, 0i32);
                        for (&at, w) in list[..taps].iter().zip(w.chunks_exact(2)) {
                            let x = match at {
                                PAD => zp4,
                                at => {
                                    let s = &input[at + ch..at + ch + 4];
                                    u32::from_le_bytes([
                                        s[0] as u8, s[1] as u8, s[2] as u8, s[3] as u8,
                                    ])
                                }
                            };
                            let (xe, xo) = (sxtb16(x), sxtb16_ror8(x));
                            a0 = smlabb(xe, w[0], a0);
                            a2 = smlatt(xe, w[0], a2);
                            a1 = smlabb(xo, w[1], a1);
                            a3 = smlatt(xo, w[1], a3);
                        }
                        for (i, (o, acc)) in o.iter_mut().zip([a0, a1, a2, a3]).enumerate() {
                            *o = output_s8_q31(
                                (tail[i] as i32).wrapping_add(acc),
                                tail[4 + i] as i32,
                                q,
                            );
                        }
                    }
                    let Some(out) = io.out(next, 1) else { return };
                    out.copy_from_slice(&y[..c]);
                }
                next += 1;
                io.done(next);
            }
        }
    }
    io.finish();
}

/// One tap of the depthwise inner loop: the tap's 4 input bytes (its address from the list, plus the channel
/// offset), its 2 words of widened weights, 4 multiply-accumulates.
#[cfg(kiln_dsp)]
macro_rules! dw_tap {
    () => {
        concat!(
            "ldr {x}, [{lp}], #4\n",
            "ldr {x}, [{x}, {ch}]\n",
            "ldrd {we}, {wo}, [{wp}], #8\n",
            "sxtb16 {t}, {x}\n",
            "smlabb {a0}, {t}, {we}, {a0}\n",
            "smlatt {a2}, {t}, {we}, {a2}\n",
            "sxtb16 {t}, {x}, ror #8\n",
            "smlabb {a1}, {t}, {wo}, {a1}\n",
            "smlatt {a3}, {t}, {wo}, {a3}\n",
        )
    };
}

/// The end of a depthwise group: `lp` points at the constants after the tap list, `wp` at the group's 4 folded
/// biases and 4 multipliers; 4 outputs finished at once (as in [`dot2x2_rows`]), stored, the output address
/// advanced.
#[cfg(kiln_dsp)]
macro_rules! dw_epilogue {
    () => {
        concat!(
            "ldrd {we}, {wo}, [{wp}], #8\n",
            "add {a0}, {a0}, {we}\n",
            "add {a1}, {a1}, {wo}\n",
            "ldrd {we}, {wo}, [{wp}], #8\n",
            "add {a2}, {a2}, {we}\n",
            "add {a3}, {a3}, {wo}\n",
            "ldr {end}, [{lp}]\n",
            "ldrd {we}, {wo}, [{wp}], #8\n",
            "smmlar {a0}, {a0}, {we}, {end}\n",
            "smmlar {a1}, {a1}, {wo}, {end}\n",
            "ldrd {we}, {wo}, [{wp}], #8\n",
            "smmlar {a2}, {a2}, {we}, {end}\n",
            "smmlar {a3}, {a3}, {wo}, {end}\n",
            "ssat {a0}, #8, {a0}\n",
            "ssat {a1}, #8, {a1}\n",
            "ssat {a2}, #8, {a2}\n",
            "ssat {a3}, #8, {a3}\n",
            "bfi {a0}, {a1}, #8, #8\n",
            "bfi {a0}, {a2}, #16, #8\n",
            "bfi {a0}, {a3}, #24, #8\n",
            "ldrd {we}, {wo}, [{lp}, #4]\n",
            "ssub8 {t}, {a0}, {we}\n",
            "sel {a0}, {a0}, {we}\n",
            "ssub8 {t}, {wo}, {a0}\n",
            "sel {a0}, {a0}, {wo}\n",
            "ldr {x}, [{lp}, #12]\n",
            "str {a0}, [{x}], #4\n",
            "str {x}, [{lp}, #12]\n",
        )
    };
}

/// One output pixel of [`depthwise_conv2d_s8`] on Cortex-M4/M7: `list[..taps]` holds the taps' addresses (each
/// the start of `c` readable bytes), `y` the pixel's `c` outputs.
#[cfg(kiln_dsp)]
#[inline(always)]
fn dw_pixel(list: &mut [u32], taps: usize, c: usize, packed: &[u32], y: &mut [i8], q: &QuantS8) {
    let group_words = dw_group_words(taps);
    if list.len() < taps + CONSTS || y.len() < c || packed.len() < c / 4 * group_words {
        return;
    }
    list[taps..taps + CONSTS].copy_from_slice(&[
        q.output_zero_point as u32,
        splat8(q.act_min),
        splat8(q.act_max),
        y.as_mut_ptr() as u32,
        0,
    ]);
    let lp = list.as_ptr();
    let mut wp = packed.as_ptr();
    if taps == 9 {
        // 3x3, the common window: the tap loop unrolled (no compare and branch per tap).
        for ch in (0..c).step_by(4) {
            // SAFETY: as below, for exactly 9 taps.
            unsafe {
                core::arch::asm!(
                    dw_tap!(), dw_tap!(), dw_tap!(), dw_tap!(), dw_tap!(), dw_tap!(), dw_tap!(), dw_tap!(),
                    dw_tap!(),
                    dw_epilogue!(),
                    lp = inout(reg) lp => _,
                    end = inout(reg) 0u32 => _,
                    ch = in(reg) ch,
                    wp = inout(reg) wp,
                    a0 = inout(reg) 0i32 => _,
                    a1 = inout(reg) 0i32 => _,
                    a2 = inout(reg) 0i32 => _,
                    a3 = inout(reg) 0i32 => _,
                    x = out(reg) _,
                    we = out(reg) _,
                    wo = out(reg) _,
                    t = out(reg) _,
                    options(nostack),
                );
            }
        }
        return;
    }
    for ch in (0..c).step_by(4) {
        // SAFETY: reads the `taps` listed addresses at `+ ch .. + ch + 4` (each starts `c` readable bytes, and
        // `ch + 4 <= c`), the constants after them, and one group of `packed` per iteration (`c / 4` of them,
        // checked above), word-aligned for `LDRD`; stores 4 bytes at `y + ch` (in bounds: `y.len() >= c`) and
        // advances that address in the constants.
        unsafe {
            core::arch::asm!(
                "2:",
                dw_tap!(),
                "cmp {lp}, {end}",
                "bne 2b",
                dw_epilogue!(),
                lp = inout(reg) lp => _,
                end = inout(reg) lp.add(taps) => _,
                ch = in(reg) ch,
                wp = inout(reg) wp,
                a0 = inout(reg) 0i32 => _,
                a1 = inout(reg) 0i32 => _,
                a2 = inout(reg) 0i32 => _,
                a3 = inout(reg) 0i32 => _,
                x = out(reg) _,
                we = out(reg) _,
                wo = out(reg) _,
                t = out(reg) _,
                options(nostack),
            );
        }
    }
}
