//! Optimised int8 elementwise Add/Sub and pooling kernels, bit-exact to the reference kernels
//! ([`super::binary_s8`], [`super::max_pool_s8`], [`super::avg_pool_s8`]). The compiler picks one per op
//! ([`crate::format::KernelS8::Table`] for Add/Sub, [`crate::format::KernelS8::Fast`] for int8 pools); the loader
//! checks the op's geometry allows it (`*_fits`), and each kernel returns without writing if called on a geometry
//! its predicate refuses.
//!
//! - [`binary_s8_table`]: Add/Sub without broadcasting. The reference rescales each operand with a requantisation
//!   per element (and walks the broadcast index), although the rescaled value depends only on the int8 input:
//!   here both rescalings are tabulated once per call (2 x 256 `i32`), and the output's zero point and clamp
//!   (512 bytes), so an element is two byte loads, two table reads, `QADD`, `SMMLA`, a shift, `SSAT`, a table
//!   read and a store: about 14 Cortex-M4 instructions (read off the disassembly; the reference: about 120).
//!   Filling the tables costs about 20,000 instructions per call (512 requantisations): below a few hundred
//!   elements the reference is as fast.
//! - [`max_pool_s8_fast`], [`avg_pool_s8_fast`]: NHWC pools 4 channels (one word) at a time. For each output pixel
//!   the window's part inside the input is computed once; then each group of 4 channels walks its taps with the
//!   accumulators in registers, 7 instructions per tap on Cortex-M4: a word load, a 4-lane byte max (`SSUB8` +
//!   `SEL`) or two 2-lane sign-extending adds (`SXTAB16`), and the loop. A window of whole input rows (a global
//!   pool) is one loop. The last `channels % 4` channels go one at a time.
//!
//! The three DSP instructions these use beyond [`super::dsp`]'s (`SSUB8`+`SEL`, `SXTAB16` twice) are defined here
//! in the same way: inline assembly on `cfg(kiln_dsp)`, their exact portable definitions elsewhere.

#[cfg(not(kiln_dsp))]
use super::dsp::{sadd16, sxtb16, sxtb16_ror8};
use super::{clamp_s8, MAX_SUM_LEN};
use crate::format::{BinaryKind, BinaryS8, Pool2d};
use crate::quant::{requantize, SHIFT_MIN};

// ---------------------------------------------------------------------------------------------------------------
// Add / Sub
// ---------------------------------------------------------------------------------------------------------------

/// Whether `strides` address a contiguous row-major tensor of shape `out`: element `i` of the output reads
/// element `i` of the operand. Axes of extent 1 may carry any stride (their index is always 0).
fn row_major(out: &[u32], strides: &[u32]) -> bool {
    if strides.len() != out.len() {
        return false;
    }
    let mut n = 1u64;
    for (&d, &s) in out.iter().zip(strides).rev() {
        if d > 1 && s as u64 != n {
            return false;
        }
        n = n.saturating_mul(d as u64);
    }
    true
}

/// Whether [`binary_s8_table`] takes this op: `Add` or `Sub` with no broadcasting (both operands have the
/// output's shape, contiguous), an output shift in `SHIFT_MIN..=-2` (the `SMMLA` requantisation; the host's
/// Add/Sub puts it near -20), and for `Sub` a second-operand shift of at most 0 (its rescaled values are then
/// within `±2^31 - 2^23`, so negating them is exact; the host's are at most 0). Other ops run on the reference:
/// one requantisation and one operation per kernel keep it small in flash.
pub fn add_table_fits(p: &BinaryS8) -> bool {
    let operands_ok = match p.kind {
        BinaryKind::Add => true,
        BinaryKind::Sub => p.b_shift <= 0,
        _ => false,
    };
    operands_ok
        && (SHIFT_MIN..=-2).contains(&p.out_shift)
        && row_major(&p.bcast.out, &p.bcast.a_strides)
        && row_major(&p.bcast.out, &p.bcast.b_strides)
}

/// `table[u] = requantize((u as i8 - zero_point) << left_shift, multiplier, shift)` for every byte `u`: the
/// reference's rescaling of one operand, for every value it can take.
fn rescale_table(zero_point: i32, left_shift: u32, multiplier: i32, shift: i8) -> [i32; 256] {
    let mut table = [0i32; 256];
    for (u, t) in table.iter_mut().enumerate() {
        let x = u as u8 as i8;
        *t = requantize(
            (x as i32 - zero_point).wrapping_shl(left_shift),
            multiplier,
            shift,
        );
    }
    table
}

/// `table[r + 256] = clamp_s8(r.saturating_add(zero_point), lo, hi)` for `r` in `-256..=255`: the tail of
/// [`super::output_s8`] after the requantisation, for the requantised values where it is not constant.
fn output_table(zero_point: i32, lo: i8, hi: i8) -> [i8; 512] {
    let mut table = [0i8; 512];
    for (i, t) in table.iter_mut().enumerate() {
        *t = clamp_s8((i as i32 - 256).saturating_add(zero_point), lo, hi);
    }
    table
}

/// `out[i] = ot[clamp(rq(ta[a[i]] + tb[b[i]]), -256, 255) + 256]` (saturating `+`) for the first `n` elements.
#[inline(always)]
fn add_loop(
    tables: (&[i32; 256], &[i32; 256], &[i8; 512]),
    a: &[i8],
    b: &[i8],
    out: &mut [i8],
    n: usize,
    rq: impl Fn(i32) -> i32,
) {
    let (ta, tb, ot) = tables;
    let f = |x: i8, z: i8| {
        let acc = ta[x as u8 as usize].saturating_add(tb[z as u8 as usize]);
        ot[(rq(acc).clamp(-256, 255) + 256) as usize]
    };
    if a.is_empty() {
        // In place: `a` is `out` itself (each element is read before it is written).
        for (y, &z) in out.iter_mut().zip(b).take(n) {
            *y = f(*y, z);
        }
    } else {
        for ((y, &x), &z) in out.iter_mut().zip(a).zip(b).take(n) {
            *y = f(x, z);
        }
    }
}

/// int8 `Add` / `Sub` without broadcasting: exactly the bytes of [`super::binary_s8`] for the ops
/// [`add_table_fits`] accepts (others are left untouched; the loader never dispatches them here).
///
/// Exactness, step by step against the reference:
/// - Operands: the reference computes `sx = requantize((x - za) << left_shift, a_multiplier, a_shift)`, a function
///   of the int8 `x` alone (and of the op's parameters), so `ta[x as u8]`, filled with that very expression for
///   all 256 values, is `sx`; likewise `tb` for `b`, negated for `Sub`: with `b_shift <= 0` and a left shift of at
///   most 23, `|sz| <= 255 * 2^23 < 2^31`, so `-sz` is exact and `sx` saturating-plus `-sz` is the reference's
///   saturating `sx - sz`; for `Add` the saturating sum is the reference's. Without
///   broadcasting, element `i` of the output reads element `i` of both inputs (see [`add_table_fits`]), the order
///   the reference's strided walk produces.
/// - Requantisation, `r = requantize(acc, m, shift)`: with `t = 31 - shift >= 33` (an output scale below 1/4 of
///   the accumulator's; Add/Sub's left shift of 20 makes it about `2^-20`), the reference's
///   `floor((acc * m + 2^(t-1)) / 2^t)` saturated to `i32` is computed as `(hi32(acc * m) + 2^(t-33)) >> (t-32)`:
///   `2^(t-1) = 2^(t-33) * 2^32` is a whole multiple of `2^32`, so `floor((acc * m + 2^(t-1)) / 2^32)` is
///   `floor(acc * m / 2^32) + 2^(t-33)` (the `SMMUL` high word plus a constant; `SMMLA`), and nested floors by
///   powers of two compose. No step overflows: `|acc * m| <= 2^62`, so the high word is within `±2^30`, plus at
///   most `2^29`; the result is within `i32` (the saturation is the identity). [`add_table_fits`] takes only
///   these shifts.
/// - Output: the reference's `clamp_s8(r.saturating_add(zo), lo, hi)` is constant for `r <= -256` (`r + zo <=
///   -129`, below any `lo`: the result is `min(lo, hi)`) and for `r >= 255` (`r + zo >= 127`, at or above any
///   `hi`: the result is `hi`), so it equals the `output_table` entry of `clamp(r, -256, 255)` (an `SSAT`).
///
/// Per element: two byte loads, two table reads, `QADD`, `SMMLA`, a shift, `SSAT`, a table read, a store.
pub fn binary_s8_table(p: &BinaryS8, a: &[i8], b: &[i8], out: &mut [i8]) {
    if !add_table_fits(p) || a.is_empty() {
        return;
    }
    table_add(p, a, b, out);
}

/// [`binary_s8_table`] with `a` being `out` itself: the result overwrites the first operand.
pub fn binary_s8_table_in_place(p: &BinaryS8, b: &[i8], out: &mut [i8]) {
    if add_table_fits(p) {
        table_add(p, &[], b, out);
    }
}

/// [`binary_s8_table`]'s body; an empty `a` means `out` holds the first operand.
fn table_add(p: &BinaryS8, a: &[i8], b: &[i8], out: &mut [i8]) {
    let n = p
        .bcast
        .out
        .iter()
        .fold(1usize, |n, &d| n.saturating_mul(d as usize));
    let ls = p.left_shift as u32;
    let ta = rescale_table(p.a_zero_point, ls, p.a_multiplier, p.a_shift);
    let mut tb = rescale_table(p.b_zero_point, ls, p.b_multiplier, p.b_shift);
    if p.kind == BinaryKind::Sub {
        // `sx - sz` is `sx + (-sz)`, saturating alike: no entry is `i32::MIN` (see `add_table_fits`).
        tb.iter_mut().for_each(|v| *v = v.wrapping_neg());
    }
    let ot = output_table(p.out_zero_point, p.act_min, p.act_max);
    // t = 31 - shift in 33..=62 (`add_table_fits`).
    let t = 31 - p.out_shift as i32;
    let (m, round, k) = (p.out_multiplier, 1i32 << (t - 33), (t - 32) as u32);
    let rq = move |acc: i32| (((acc as i64 * m as i64) >> 32) as i32 + round) >> k;
    add_loop((&ta, &tb, &ot), a, b, out, n, rq)
}

// ---------------------------------------------------------------------------------------------------------------
// Pools
// ---------------------------------------------------------------------------------------------------------------

/// Whether [`max_pool_s8_fast`] takes this geometry: windows of at most [`MAX_SUM_LEN`] taps (as the loader
/// requires of every int8 pool), and channels in groups of 4 (a word per tap; a tail path for the rest would
/// cost the firmware ~600 bytes for channel counts models rarely have — those pools run on the reference). Any
/// window, stride and padding.
pub fn max_pool_fast_fits(p: &Pool2d) -> bool {
    p.kernel_h as u64 * p.kernel_w as u64 <= MAX_SUM_LEN as u64 && p.channels.is_multiple_of(4)
}

/// Whether [`avg_pool_s8_fast`] takes this geometry: a global pool (one window, the whole input: what ends
/// nearly every microcontroller CNN — DS-CNN, ResNet, MobileNet) of at most [`MAX_SUM_LEN`] taps, so the `i32`
/// sums are exact, channels in groups of 4. Windowed average pools run on the reference: their window walk cost
/// the firmware ~800 bytes more.
pub fn avg_pool_fast_fits(p: &Pool2d) -> bool {
    max_pool_fast_fits(p)
        && (p.out_h, p.out_w, p.pad_top, p.pad_left) == (1, 1, 0, 0)
        && (p.kernel_h, p.kernel_w) == (p.in_h, p.in_w)
}

/// The part of a window inside the input, for output position `o` along one axis: input indices `first..end`
/// (empty if the window misses the input). The reference's clipping.
#[inline(always)]
fn window(o: usize, stride: usize, pad: usize, kernel: usize, size: usize) -> (usize, usize) {
    let start = o * stride; // padded coordinates
    let end = start + kernel;
    let first = start.max(pad) - pad;
    let last = end.min(pad + size).saturating_sub(pad);
    (first, last.max(first))
}

/// One output pixel's window inside the input.
#[derive(Clone, Copy)]
struct Window {
    /// Input index of the window's first tap inside the input, channel 0.
    first: usize,
    /// Rows and columns inside the input.
    rows: usize,
    cols: usize,
}

/// Calls `f(window, y)` for every output pixel in order, `y` its `channels` outputs.
#[inline(always)]
fn for_each_window(p: &Pool2d, output: &mut [i8], mut f: impl FnMut(Window, &mut [i8])) {
    let [batch, in_h, in_w, c, out_h, out_w, kh, kw, sh, sw, pt, pl] = [
        p.batch, p.in_h, p.in_w, p.channels, p.out_h, p.out_w, p.kernel_h, p.kernel_w, p.stride_h,
        p.stride_w, p.pad_top, p.pad_left,
    ]
    .map(|v| v as usize);
    let mut out = output.chunks_exact_mut(c.max(1));
    for b in 0..batch {
        let plane = b * in_h * in_w * c;
        for oy in 0..out_h {
            let ys = window(oy, sh, pt, kh, in_h);
            for ox in 0..out_w {
                let xs = window(ox, sw, pl, kw, in_w);
                let Some(y) = out.next() else { return };
                let w = Window {
                    first: plane + (ys.0 * in_w + xs.0) * c,
                    rows: ys.1 - ys.0,
                    cols: xs.1 - xs.0,
                };
                f(w, y);
            }
        }
    }
}

/// Calls `f(run, n)` for runs of `n >= 1` taps of `w` lying `c` bytes apart, together all the window's taps in
/// row-major order: `run` starts at channel `ch` of the run's first tap and holds `(n - 1) * c + width` bytes
/// (`width` the bytes `f` reads per tap, `ch + width <= c`). A run is one window row, or the whole window when its
/// rows are whole input rows (`cols * c = row`, the input's row length): then the rows follow each other in
/// memory (a global pool is one run).
#[inline(always)]
fn for_each_run(
    input: &[i8],
    w: Window,
    (row, c, ch, width): (usize, usize, usize, usize),
    mut f: impl FnMut(&[i8], usize),
) {
    if w.rows == 0 || w.cols == 0 {
        return;
    }
    let (runs, n) = if w.cols * c == row {
        (1, w.rows * w.cols)
    } else {
        (w.rows, w.cols)
    };
    let span = (n - 1) * c + width;
    for r in 0..runs {
        let at = w.first + r * row + ch;
        f(&input[at..at + span], n);
    }
}

/// `f(word)` for the 4 bytes at the start of each tap of `run` (taps `c >= 4` bytes apart, the last one 4 bytes
/// long; see [`for_each_run`]).
#[inline(always)]
fn for_each_word(run: &[i8], c: usize, mut f: impl FnMut(u32)) {
    let mut word = |s: &[i8]| {
        // Always 4 bytes or more: the taps but the last are `c >= 4` bytes long, the last 4.
        if let Some(&[b0, b1, b2, b3]) = s.first_chunk::<4>() {
            f(u32::from_le_bytes([b0 as u8, b1 as u8, b2 as u8, b3 as u8]));
        }
    };
    if c < 4 {
        return; // (the fast pools' channels come in groups of 4; this tells the compiler each tap holds a word)
    }
    let (taps, last) = run.split_at(run.len().saturating_sub(4));
    for tap in taps.chunks_exact(c) {
        word(tap);
    }
    word(last);
}

/// Lane-wise maximum of 4 signed bytes: `SSUB8` sets the GE flag of each byte lane where `m >= x` (the sign of
/// the exact difference), `SEL` takes those lanes from `m`, the others from `x`. Portable definition elsewhere.
#[inline(always)]
fn max_s8x4(m: u32, x: u32) -> u32 {
    #[cfg(kiln_dsp)]
    {
        let mut m = m;
        // SAFETY: pure register operations (they set APSR.GE, which only the SEL here reads).
        unsafe {
            core::arch::asm!(
                "ssub8 {t}, {m}, {x}",
                "sel {m}, {m}, {x}",
                m = inout(reg) m, x = in(reg) x, t = out(reg) _,
                options(pure, nomem, nostack)
            )
        };
        m
    }
    #[cfg(not(kiln_dsp))]
    {
        let (m, x) = (m.to_le_bytes(), x.to_le_bytes());
        u32::from_le_bytes(core::array::from_fn(|i| (m[i] as i8).max(x[i] as i8) as u8))
    }
}

/// `acc + [x.byte0, x.byte2]` in 16-bit lanes, bytes sign-extended, lanes wrapping (`SXTAB16`).
#[inline(always)]
fn sxtab16(acc: u32, x: u32) -> u32 {
    #[cfg(kiln_dsp)]
    {
        let mut acc = acc;
        // SAFETY: a pure register operation.
        unsafe {
            core::arch::asm!("sxtab16 {acc}, {acc}, {x}", acc = inout(reg) acc, x = in(reg) x,
                options(pure, nomem, nostack, preserves_flags))
        };
        acc
    }
    #[cfg(not(kiln_dsp))]
    {
        sadd16(acc, sxtb16(x))
    }
}

/// `acc + [x.byte1, x.byte3]` in 16-bit lanes, bytes sign-extended, lanes wrapping (`SXTAB16 …, ROR #8`).
#[inline(always)]
fn sxtab16_ror8(acc: u32, x: u32) -> u32 {
    #[cfg(kiln_dsp)]
    {
        let mut acc = acc;
        // SAFETY: a pure register operation.
        unsafe {
            core::arch::asm!("sxtab16 {acc}, {acc}, {x}, ror #8", acc = inout(reg) acc, x = in(reg) x,
                options(pure, nomem, nostack, preserves_flags))
        };
        acc
    }
    #[cfg(not(kiln_dsp))]
    {
        sadd16(acc, sxtb16_ror8(x))
    }
}

/// The two signed 16-bit lanes of `v`, widened: `(lo, hi)`.
#[inline(always)]
fn lanes(v: u32) -> (i32, i32) {
    (v as u16 as i16 as i32, (v >> 16) as u16 as i16 as i32)
}

/// Most taps summed in 16-bit lanes before they are widened: 256 int8 values sum to `-32768..=32512`.
const LANE_TAPS: usize = 256;

/// int8 max pool: exactly the bytes of [`super::max_pool_s8`] (the maximum of the taps inside the input,
/// `-128` for a window missing it) for geometries [`max_pool_fast_fits`] accepts.
///
/// 4 channels per word: each word of maxima starts at `0x80808080` (4 x `-128`, the reference's fold start) and
/// takes the lane-wise max with each tap's word (one load, `SSUB8`, `SEL`). Max is associative and commutative,
/// so the lane-wise fold over the same taps equals the reference's per-channel fold.
pub fn max_pool_s8_fast(p: &Pool2d, input: &[i8], output: &mut [i8]) {
    if !max_pool_fast_fits(p) {
        return;
    }
    let c = p.channels as usize;
    let row = p.in_w as usize * c;
    for_each_window(p, output, |w, y| {
        for (g, o) in y.chunks_exact_mut(4).enumerate() {
            let mut m = 0x8080_8080u32;
            for_each_run(input, w, (row, c, 4 * g, 4), |run, _| {
                for_each_word(run, c, |x| m = max_s8x4(m, x))
            });
            o.copy_from_slice(&m.to_le_bytes().map(|v| v as i8));
        }
    });
}

/// int8 average pool: exactly the bytes of [`super::avg_pool_s8`] for the global pools [`avg_pool_fast_fits`]
/// accepts.
///
/// 4 channels per word: each tap adds its word's bytes into two words of 16-bit lanes (`SXTAB16` twice:
/// channels 0 and 2, channels 1 and 3), widened to 4 `i32` sums every 256 taps and at the end. A lane
/// then holds the sum of at most 256 values in `-128..=127`, within `-32768..=32512`, so its wrapping 16-bit
/// sum is the exact sum. Then per channel the reference's `s + n / 2 = sum x - n * zp + n / 2` (the window is the
/// whole input: `n` taps, all inside, padding or not), and the reference's division, rounding and clamp. Exact:
/// every `i32` sum has at most [`MAX_SUM_LEN`] terms within `-128..=127`, and
/// `|s| + n / 2 <= 255 * MAX_SUM_LEN + MAX_SUM_LEN / 2 < 2^31`, so the integers are the reference's (wrapping
/// operations only spare the overflow checks; no value wraps).
pub fn avg_pool_s8_fast(p: &Pool2d, input: &[i8], output: &mut [i8]) {
    if !avg_pool_fast_fits(p) {
        return;
    }
    let c = p.channels as usize;
    let taps = p.in_h as usize * p.in_w as usize;
    if taps == 0 || c == 0 {
        return;
    }
    let zp = p.zero_point;
    let n = taps.max(1) as i32;
    // s + n / 2 = sum x + (n / 2 - n * zp)
    let bias = (n / 2).wrapping_sub(n.wrapping_mul(zp));
    let avg = |sum: i32| clamp_s8(zp + sum.wrapping_add(bias).div_euclid(n), -128, 127);
    for (plane, y) in input.chunks_exact(taps * c).zip(output.chunks_exact_mut(c)) {
        for (g, o) in y.chunks_exact_mut(4).enumerate() {
            let mut s = [0i32; 4];
            // Blocks of at most LANE_TAPS taps: `block` taps take `(block - 1) * c + 4` bytes.
            let (mut run, mut left) = (&plane[4 * g..], taps);
            while left > 0 {
                let block = left.min(LANE_TAPS);
                let (mut even, mut odd) = (0u32, 0u32);
                for_each_word(&run[..(block - 1) * c + 4], c, |x| {
                    even = sxtab16(even, x);
                    odd = sxtab16_ror8(odd, x);
                });
                let ((s0, s2), (s1, s3)) = (lanes(even), lanes(odd));
                for (acc, v) in s.iter_mut().zip([s0, s1, s2, s3]) {
                    *acc = acc.wrapping_add(v);
                }
                left -= block;
                if left > 0 {
                    run = &run[block * c..];
                }
            }
            for (o, &sum) in o.iter_mut().zip(&s) {
                *o = avg(sum);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn byte_max_is_signed_and_lane_wise() {
        assert_eq!(max_s8x4(0x80_7F_01_FF, 0x7F_80_FF_00), 0x7F_7F_01_00);
        assert_eq!(max_s8x4(0x8080_8080, 0x8180_80FF), 0x8180_80FF);
    }

    #[test]
    fn byte_sums_in_16_bit_lanes() {
        // Bytes 0 (-1) and 2 (127) into the even lanes, bytes 1 (1) and 3 (-128) into the odd ones.
        assert_eq!(lanes(sxtab16(0x0001_0002, 0x80_7F_01_FF)), (1, 128));
        assert_eq!(lanes(sxtab16_ror8(0x0001_0002, 0x80_7F_01_FF)), (3, -127));
        // 256 taps of -128 and of 127: the extremes of a lane.
        let (mut lo, mut hi) = (0u32, 0u32);
        for _ in 0..LANE_TAPS {
            lo = sxtab16(lo, 0x0080_0080);
            hi = sxtab16_ror8(hi, 0x7F00_7F00);
        }
        assert_eq!((lanes(lo), lanes(hi)), ((-32768, -32768), (32512, 32512)));
    }

    #[test]
    fn row_major_strides_ignore_unit_axes() {
        assert!(row_major(&[2, 3], &[3, 1]));
        assert!(row_major(&[1, 3], &[0, 1]) && row_major(&[1, 3], &[7, 1]));
        assert!(!row_major(&[2, 3], &[1, 2]) && !row_major(&[2, 3], &[0, 1]));
        assert!(!row_major(&[2, 3], &[3]));
        assert!(row_major(&[], &[]));
    }
}
