//! Cases of `kernels::fast_elementwise`: `binary_s8_table` (and in place) against `binary_s8`, `max_pool_s8_fast`
//! and `avg_pool_s8_fast` against `max_pool_s8` and `avg_pool_s8`.

use kiln_runtime::format::{BinaryKind, BinaryS8, Broadcast, Dims, KernelS8, Pool2d};
use kiln_runtime::kernels::{self, fast_elementwise as fe};

use crate::gen::{act_range, fill, zero_point};
use crate::rng::Rng;
use crate::{prepare, say, Bufs, Tally, B_CAP, IN_CAP, MAX_OFF, OUT_CAP};

// ---- Add / Sub ----

/// Row-major strides of `out`, 0 on axes of extent 1 (as the host tests' `full_strides`).
fn full_strides(out: &Dims) -> Dims {
    let mut s = out.clone();
    let mut n = 1u32;
    for (s, &d) in s.iter_mut().zip(out.iter()).rev() {
        *s = if d > 1 { n } else { 0 };
        n *= d;
    }
    s
}

/// A valid `(multiplier, shift)` for `requantize`: multiplier in `[2^30, 2^31)` (or 0), shift in `-31..=30`;
/// mostly scales that keep values in range, sometimes 0 or the extreme shifts (as the host tests' `multiplier`).
fn multiplier(r: &mut Rng) -> (i32, i8) {
    let m = r.range(1 << 30, i32::MAX as i64) as i32;
    match r.below(10) {
        0 => (0, 0),
        1 => {
            let s = match r.below(3) {
                0 => -31,
                1 => 30,
                _ => r.range(-31, 30),
            };
            (m, s as i8)
        }
        _ => (m, r.range(-14, 1) as i8),
    }
}

/// An Add or Sub the table kernel takes (no broadcasting) and its element count. Parameters: random valid pairs
/// (left shift 20 mostly, else 0..=23); powers of two (`2^30`, shift 0 for the operands, any shift up to 0 for
/// the output: `acc * m / 2^t` ties often, so a rounding off by one shows); or shaped like the host builder's
/// (`host::add_sub_s8`: left shift 20, operand scales `sa / 2 max(sa, sb)`, output shifts around -18, the
/// kernel's `SMMLA` requantisation path).
fn binary_op(r: &mut Rng) -> (BinaryS8, usize) {
    let mut out = Dims::new();
    let rank = r.urange(1, 4);
    loop {
        out.clear();
        for _ in 0..rank {
            let d = if rank == 1 {
                r.urange(1, 1024)
            } else {
                r.urange(1, 12)
            };
            let _ = out.push(d);
        }
        let n: u32 = out.iter().product();
        if (n as usize) <= B_CAP.min(OUT_CAP) {
            break;
        }
    }
    let n = out.iter().product::<u32>() as usize;
    let kind = if r.chance(1, 2) {
        BinaryKind::Add
    } else {
        BinaryKind::Sub
    };
    let (act_min, act_max) = act_range(r);
    let random_left_shift = |r: &mut Rng| {
        if r.chance(3, 4) {
            20
        } else {
            r.urange(0, 23) as u8
        }
    };
    let (left_shift, (am, ash), (bm, bsh), (om, osh)) = match r.below(4) {
        0 => (
            random_left_shift(r),
            multiplier(r),
            multiplier(r),
            multiplier(r),
        ),
        1 => (
            random_left_shift(r),
            (1 << 30, 0),
            (1 << 30, 0),
            (1 << 30, r.range(-31, -2) as i8),
        ),
        _ => {
            let m = |r: &mut Rng| r.range(1 << 30, i32::MAX as i64) as i32;
            let larger = (m(r), 0);
            let smaller = (m(r), -(r.range(0, 6) as i8));
            let (a, b) = if r.chance(1, 2) {
                (larger, smaller)
            } else {
                (smaller, larger)
            };
            (20, a, b, (m(r), r.range(-22, -14) as i8))
        }
    };
    // The table kernel's requantisation shifts, and a Sub's second operand scaled down or kept.
    let osh = osh.clamp(-31, -2);
    let bsh = if kind == BinaryKind::Sub { bsh.min(0) } else { bsh };
    let bcast = Broadcast {
        a_strides: full_strides(&out),
        b_strides: full_strides(&out),
        out,
    };
    let p = BinaryS8 {
        kind,
        bcast,
        a_zero_point: zero_point(r),
        b_zero_point: zero_point(r),
        out_zero_point: zero_point(r),
        left_shift,
        a_multiplier: am,
        a_shift: ash,
        b_multiplier: bm,
        b_shift: bsh,
        out_multiplier: om,
        out_shift: osh,
        act_min,
        act_max,
        kernel: KernelS8::Table,
    };
    assert!(
        fe::add_table_fits(&p),
        "the firmware made an op the table kernel refuses: {p:?}"
    );
    (p, n)
}

fn run_binary(b: &mut Bufs, r: &mut Rng, t: &mut Tally, case: u32, in_place: bool) {
    let (p, n) = binary_op(r);
    let offs = [(); 3].map(|_| r.below(MAX_OFF as u32 + 1) as usize);
    let [a_off, b_off, out_off] = offs;
    let a = &mut b.a[a_off..a_off + n];
    fill(r, a);
    let bb = &mut b.b[b_off..b_off + n];
    fill(r, bb);
    let (a, bb) = (&*a, &*bb);
    let want = &mut b.want[..n];
    kernels::binary_s8(&p, a, bb, want);
    prepare(&mut b.got, out_off, n);
    let out = &mut b.got[out_off..out_off + n];
    if in_place {
        out.copy_from_slice(a);
        fe::binary_s8_table_in_place(&p, bb, out);
    } else {
        fe::binary_s8_table(&p, a, bb, out);
    }
    t.check(case, want, &b.got, out_off, || {
        say!("  op {:?}", p);
        say!("  a at +{}, b at +{}, output at +{}", a_off, b_off, out_off);
    });
}

pub fn binary(b: &mut Bufs, r: &mut Rng, t: &mut Tally, case: u32) {
    run_binary(b, r, t, case, false);
}

pub fn binary_in_place(b: &mut Bufs, r: &mut Rng, t: &mut Tally, case: u32) {
    run_binary(b, r, t, case, true);
}

// ---- pools ----

fn out_size(input: u32, k: u32, stride: u32, before: u32, after: u32) -> u32 {
    let padded = (input + before + after).max(k);
    (padded - k) / stride + 1
}

/// Pool geometries a fast kernel takes (`fits`, its predicate), as the host tests' `fast_pool_geom`: small pools
/// (kernels 1..4, strides 1..3, paddings, ceil mode) with 4 to 12 channels in groups of 4 (sometimes 16, 20 or
/// 64), global pools up to 24 x 24, some of more than 256 taps (the average's 16-bit lanes are widened every 256
/// taps), and the MLPerf Tiny KWS (25 x 5 x 64) and IC (8 x 8 x 64) global pools. Draws the predicate refuses (a
/// window for the global-only average) are drawn again.
fn pool_geom(r: &mut Rng, fits: fn(&Pool2d) -> bool) -> Pool2d {
    let global = |(batch, h, w, c): (u32, u32, u32, u32), include: bool, zp: i32| Pool2d {
        batch,
        in_h: h,
        in_w: w,
        channels: c,
        out_h: 1,
        out_w: 1,
        kernel_h: h,
        kernel_w: w,
        stride_h: h,
        stride_w: w,
        pad_top: 0,
        pad_left: 0,
        count_include_pad: include,
        zero_point: zp,
        kernel: KernelS8::Fast,
    };
    loop {
        let p = match r.below(7) {
            0..=2 => {
                let (batch, in_h, in_w) = (r.urange(1, 2), r.urange(1, 7), r.urange(1, 7));
                // The fast pools take channels in groups of 4.
                let channels = match r.below(8) {
                    0 => 4 * r.urange(4, 5),
                    1 => 64,
                    _ => 4 * r.urange(1, 3),
                };
                let (kh, kw, sh, sw) = (
                    r.urange(1, 4),
                    r.urange(1, 4),
                    r.urange(1, 3),
                    r.urange(1, 3),
                );
                let ceil = r.chance(1, 2);
                let axis = |r: &mut Rng, input: u32, k: u32, s: u32| {
                    let (before, after) = (r.urange(0, 3) % k, r.urange(0, 3) % k);
                    let floor = out_size(input, k, s, before, after);
                    // Ceil mode: one more window if it still starts inside the input.
                    let out = if ceil && floor * s < before + input {
                        floor + 1
                    } else {
                        floor
                    };
                    (out, before)
                };
                let (out_h, pad_top) = axis(r, in_h, kh, sh);
                let (out_w, pad_left) = axis(r, in_w, kw, sw);
                Pool2d {
                    batch,
                    in_h,
                    in_w,
                    channels,
                    out_h,
                    out_w,
                    kernel_h: kh,
                    kernel_w: kw,
                    stride_h: sh,
                    stride_w: sw,
                    pad_top,
                    pad_left,
                    count_include_pad: r.chance(1, 2),
                    zero_point: zero_point(r),
                    kernel: KernelS8::Fast,
                }
            }
            3 | 4 => {
                let g = (
                    r.urange(1, 2),
                    r.urange(1, 24),
                    r.urange(1, 24),
                    4 * r.urange(1, 5),
                );
                global(g, r.chance(1, 2), zero_point(r))
            }
            5 => {
                let g = (1, r.urange(16, 24), r.urange(17, 25), 4 * r.urange(1, 2));
                global(g, r.chance(1, 2), zero_point(r))
            }
            _ => {
                let g = if r.chance(1, 2) {
                    (1, 25, 5, 64)
                } else {
                    (1, 8, 8, 64)
                };
                global(g, true, zero_point(r))
            }
        };
        let n_in = (p.batch * p.in_h * p.in_w * p.channels) as usize;
        let n_out = (p.batch * p.out_h * p.out_w * p.channels) as usize;
        if fits(&p) && n_in <= IN_CAP && n_out <= OUT_CAP {
            return p;
        }
    }
}

type PoolKernel = fn(&Pool2d, &[i8], &mut [i8]);

fn run_pool(
    b: &mut Bufs,
    r: &mut Rng,
    t: &mut Tally,
    case: u32,
    reference: PoolKernel,
    fast: PoolKernel,
    fits: fn(&Pool2d) -> bool,
) {
    let p = pool_geom(r, fits);
    let n_in = (p.batch * p.in_h * p.in_w * p.channels) as usize;
    let n_out = (p.batch * p.out_h * p.out_w * p.channels) as usize;
    let (in_off, out_off) = (
        r.below(MAX_OFF as u32 + 1) as usize,
        r.below(MAX_OFF as u32 + 1) as usize,
    );
    let input = &mut b.a[in_off..in_off + n_in];
    fill(r, input);
    let input = &*input;
    let want = &mut b.want[..n_out];
    reference(&p, input, want);
    prepare(&mut b.got, out_off, n_out);
    fast(&p, input, &mut b.got[out_off..out_off + n_out]);
    t.check(case, want, &b.got, out_off, || {
        say!("  pool {:?}", p);
        say!("  input at +{}, output at +{}", in_off, out_off);
    });
}

pub fn max_pool(b: &mut Bufs, r: &mut Rng, t: &mut Tally, case: u32) {
    run_pool(b, r, t, case, kernels::max_pool_s8, fe::max_pool_s8_fast, fe::max_pool_fast_fits);
}

pub fn avg_pool(b: &mut Bufs, r: &mut Rng, t: &mut Tally, case: u32) {
    // (Global pools only: the windowed draws are redrawn until one is global.)
    run_pool(b, r, t, case, kernels::avg_pool_s8, fe::avg_pool_s8_fast, fe::avg_pool_fast_fits);
}
