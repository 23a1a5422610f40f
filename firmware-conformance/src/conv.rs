//! Cases of the packed-weight kernels (`kernels::fast`): `pack_dot` + `dot_conv2d_s8` (and in place),
//! `pack_dot` + `dot_fully_connected_s8`, `pack_depthwise` + `depthwise_conv2d_s8` (and in place), each against
//! the reference kernel (`conv2d_s8`, `fully_connected_s8`) on the unpacked op.

use kiln_runtime::format::{ConvGeom, FcGeom};
use kiln_runtime::kernels::{self, fast, QuantS8, Requant};

use crate::gen::{bias, fill, fill_weights, quant, requant, words};
use crate::rng::Rng;
use crate::{prepare, say, Bufs, Tally, CH_CAP, IN_CAP, MAX_OFF, OUT_CAP, PACK_CAP, W_CAP};

/// Output size along one axis (as the host tests' `out_size`).
fn out_size(input: u32, k: u32, stride: u32, dil: u32, before: u32, after: u32) -> u32 {
    let dk = (k - 1) * dil + 1;
    let padded = (input + before + after).max(dk);
    (padded - dk) / stride + 1
}

/// A padding for a window spanning `dk` input pixels: none, "same"-like, or anything up to `dk`.
fn pad(r: &mut Rng, dk: u32) -> u32 {
    match r.below(4) {
        0 => 0,
        1 => (dk - 1) / 2,
        _ => r.urange(0, dk),
    }
}

struct Shape {
    batch: u32,
    in_hwc: (u32, u32, u32),
    out_c: u32,
    kernel: (u32, u32),
    stride: (u32, u32),
    dilation: (u32, u32),
    groups: u32,
}

/// The geometry of `s` with random paddings (before at most the dilated window, as the host tests).
fn geom(r: &mut Rng, s: Shape) -> ConvGeom {
    let (in_h, in_w, in_c) = s.in_hwc;
    let (kh, kw) = s.kernel;
    let (dh, dw) = s.dilation;
    let (dkh, dkw) = ((kh - 1) * dh + 1, (kw - 1) * dw + 1);
    let (pt, pb, pl, pr) = (pad(r, dkh), pad(r, dkh), pad(r, dkw), pad(r, dkw));
    ConvGeom {
        batch: s.batch,
        in_h,
        in_w,
        in_c,
        out_h: out_size(in_h, kh, s.stride.0, dh, pt, pb),
        out_w: out_size(in_w, kw, s.stride.1, dw, pl, pr),
        out_c: s.out_c,
        kernel_h: kh,
        kernel_w: kw,
        stride_h: s.stride.0,
        stride_w: s.stride.1,
        dilation_h: dh,
        dilation_w: dw,
        pad_top: pt,
        pad_left: pl,
        groups: s.groups,
    }
}

/// Weights per output channel.
fn per_channel(g: &ConvGeom) -> usize {
    (g.kernel_h * g.kernel_w * (g.in_c / g.groups)) as usize
}

fn in_len(g: &ConvGeom) -> usize {
    (g.batch * g.in_h * g.in_w * g.in_c) as usize
}

fn out_len(g: &ConvGeom) -> usize {
    (g.batch * g.out_h * g.out_w * g.out_c) as usize
}

/// Whether the case fits the firmware's buffers.
fn fits_buffers(g: &ConvGeom, depthwise: bool) -> bool {
    let (per, n) = (per_channel(g), g.out_c as usize);
    let packed = if depthwise {
        fast::depthwise_packed_len(per, n)
    } else {
        fast::dot_packed_len(per, n)
    };
    n <= CH_CAP
        && in_len(g) <= IN_CAP
        && out_len(g) <= OUT_CAP
        && per * n <= W_CAP
        && packed <= PACK_CAP
}

fn one_or_two(r: &mut Rng) -> u32 {
    if r.chance(1, 4) {
        2
    } else {
        1
    }
}

/// Input channels of a general conv: 1, 3, 16, odd, or any up to 32.
fn in_channels(r: &mut Rng) -> u32 {
    match r.below(5) {
        0 => 1,
        1 => 3,
        2 => 16,
        3 => 2 * r.urange(0, 11) + 1,
        _ => r.urange(1, 32),
    }
}

/// Geometries `dot_conv2d_s8` takes: general ones (kernels 1..5, strides 1..2, dilations, paddings), long
/// pointwise ones (up to `MAX_PATCH` input channels), narrow first layers.
fn dot_geom(r: &mut Rng) -> ConvGeom {
    loop {
        let g = match r.below(10) {
            0 | 1 => {
                let in_c = if r.chance(1, 2) {
                    r.urange(1, 160)
                } else {
                    r.urange(161, fast::MAX_PATCH as u32)
                };
                let s = r.urange(1, 2);
                let shape = Shape {
                    batch: 1,
                    in_hwc: (r.urange(1, 3), r.urange(1, 3), in_c),
                    out_c: r.urange(1, 12),
                    kernel: (1, 1),
                    stride: (s, s),
                    dilation: (1, 1),
                    groups: 1,
                };
                let mut g = geom(r, shape);
                // Pointwise: no padding.
                (g.pad_top, g.pad_left) = (0, 0);
                (g.out_h, g.out_w) = ((g.in_h - 1) / s + 1, (g.in_w - 1) / s + 1);
                g
            }
            2 => {
                let k = |r: &mut Rng| if r.chance(1, 2) { 3 } else { r.urange(1, 5) };
                let shape = Shape {
                    batch: 1,
                    in_hwc: (
                        r.urange(3, 12),
                        r.urange(3, 12),
                        if r.chance(1, 2) { 1 } else { 3 },
                    ),
                    out_c: r.urange(1, 16),
                    kernel: (k(r), k(r)),
                    stride: (r.urange(1, 2), r.urange(1, 2)),
                    dilation: (1, 1),
                    groups: 1,
                };
                geom(r, shape)
            }
            _ => {
                let d = |r: &mut Rng| if r.chance(1, 4) { 2 } else { 1 };
                let shape = Shape {
                    batch: one_or_two(r),
                    in_hwc: (r.urange(1, 8), r.urange(1, 8), in_channels(r)),
                    out_c: r.urange(1, 12),
                    kernel: (r.urange(1, 5), r.urange(1, 5)),
                    stride: (r.urange(1, 2), r.urange(1, 2)),
                    dilation: (d(r), d(r)),
                    groups: 1,
                };
                geom(r, shape)
            }
        };
        if fast::dot_conv_fits(&g) && fits_buffers(&g, false) {
            return g;
        }
    }
}

/// Geometries `depthwise_conv2d_s8` takes: channels a multiple of 4 (up to 64), 3x3 windows half the time (their
/// unrolled assembly), other 9-tap windows (1x9, 9x1: the same path), windows up to `MAX_TAPS`, and any other.
fn depthwise_geom(r: &mut Rng) -> ConvGeom {
    loop {
        let c = if r.chance(1, 8) {
            4 * r.urange(9, 16)
        } else {
            4 * r.urange(1, 8)
        };
        let kernel = match r.below(10) {
            0..=4 => (3, 3),
            5 => {
                if r.chance(1, 2) {
                    (1, 9)
                } else {
                    (9, 1)
                }
            }
            6 => (r.urange(7, 8), r.urange(7, 8)),
            _ => (r.urange(1, 5), r.urange(1, 5)),
        };
        let d = |r: &mut Rng| if r.chance(1, 5) { 2 } else { 1 };
        let shape = Shape {
            batch: if r.chance(1, 6) { 2 } else { 1 },
            in_hwc: (r.urange(1, 10), r.urange(1, 10), c),
            out_c: c,
            kernel,
            stride: (r.urange(1, 2), r.urange(1, 2)),
            dilation: (d(r), d(r)),
            groups: c,
        };
        let g = geom(r, shape);
        if fast::depthwise_fits(&g) && fits_buffers(&g, true) {
            return g;
        }
    }
}

/// Geometries a conv runs in place in (`fast::in_place_fits`): stride 1, "same" padding split any way, as many
/// output as input channels (for the dot kernel any count, for depthwise a multiple of 4).
fn in_place_geom(r: &mut Rng, depthwise: bool) -> ConvGeom {
    loop {
        let (h, w) = (r.urange(1, 7), r.urange(1, 7));
        let c = if depthwise {
            4 * r.urange(1, 8)
        } else {
            r.urange(1, 16)
        };
        let (kh, kw) = if r.chance(2, 5) {
            (3, 3)
        } else {
            (r.urange(1, 3), r.urange(1, 3))
        };
        let (dh, dw) = (r.urange(1, 2), r.urange(1, 2));
        let (th, tw) = ((kh - 1) * dh, (kw - 1) * dw);
        let g = ConvGeom {
            batch: one_or_two(r),
            in_h: h,
            in_w: w,
            in_c: c,
            out_h: h,
            out_w: w,
            out_c: c,
            kernel_h: kh,
            kernel_w: kw,
            stride_h: 1,
            stride_w: 1,
            dilation_h: dh,
            dilation_w: dw,
            pad_top: r.urange(0, th),
            pad_left: r.urange(0, tw),
            groups: if depthwise { c } else { 1 },
        };
        let takes = if depthwise {
            fast::depthwise_fits(&g)
        } else {
            fast::dot_conv_fits(&g)
        };
        if fast::in_place_fits(&g) && takes && fits_buffers(&g, depthwise) {
            return g;
        }
    }
}

/// One conv case on `g`: parameters and tensors from `r`, the reference `conv2d_s8`, then the packer and the
/// optimised kernel (over a copy of the input when `in_place`).
fn run_conv(b: &mut Bufs, r: &mut Rng, t: &mut Tally, case: u32, g: ConvGeom, in_place: bool) {
    let depthwise = g.groups > 1;
    let q = quant(r);
    let (per, n) = (per_channel(&g), g.out_c as usize);
    let (n_in, n_out) = (in_len(&g), out_len(&g));
    let (in_off, out_off) = (
        r.below(MAX_OFF as u32 + 1) as usize,
        r.below(MAX_OFF as u32 + 1) as usize,
    );
    let input = &mut b.a[in_off..in_off + n_in];
    fill(r, input);
    let weights = &mut b.w[..per * n];
    fill_weights(r, weights);
    let (mult, shift) = (&mut b.mult[..n], &mut b.shift[..n]);
    requant(r, per, mult, shift);
    let has_bias = bias(r, &mut b.bias[..n], depthwise);
    let (input, weights, mult, shift) = (&*input, &*weights, &*mult, &*shift);
    let bias = has_bias.then_some(&b.bias[..n]);

    let want = &mut b.want[..n_out];
    let rq = Requant {
        multipliers: mult,
        shifts: shift,
    };
    kernels::conv2d_s8(&g, &q, rq, input, weights, bias, want);

    let bytes = if depthwise {
        fast::depthwise_packed_len(per, n)
    } else {
        fast::dot_packed_len(per, n)
    };
    let packed_bytes = &mut b.packed_bytes[..bytes];
    let packed = if depthwise {
        fast::pack_depthwise(
            weights,
            per,
            n,
            q.input_zero_point,
            bias,
            mult,
            shift,
            packed_bytes,
        )
    } else {
        fast::pack_dot(weights, per, n, bias, mult, shift, packed_bytes)
    };
    assert!(
        packed,
        "case {case}: the packer refused a case the firmware made for it"
    );
    let packed = &mut b.packed[..bytes / 4];
    words(packed_bytes, packed);
    let packed = &*packed;

    prepare(&mut b.got, out_off, n_out);
    let out = &mut b.got[out_off..out_off + n_out];
    match (depthwise, in_place) {
        (false, false) => fast::dot_conv2d_s8(&g, &q, packed, input, out),
        (true, false) => fast::depthwise_conv2d_s8(&g, &q, packed, input, out),
        (false, true) => {
            out.copy_from_slice(input);
            fast::dot_conv2d_s8_in_place(&g, &q, packed, out)
        }
        (true, true) => {
            out.copy_from_slice(input);
            fast::depthwise_conv2d_s8_in_place(&g, &q, packed, out)
        }
    }
    t.check(case, want, &b.got, out_off, || {
        describe(&g, &q, in_off, out_off, has_bias, mult, shift)
    });
}

fn describe(
    g: &ConvGeom,
    q: &QuantS8,
    in_off: usize,
    out_off: usize,
    bias: bool,
    m: &[i16],
    s: &[i8],
) {
    say!("  geometry {:?}", g);
    say!("  quant {:?}", q);
    say!(
        "  input at +{}, output at +{}, bias {}, channel 0 requant ({}, {})",
        in_off,
        out_off,
        if bias { "yes" } else { "no" },
        m[0],
        s[0]
    );
}

pub fn dot_conv(b: &mut Bufs, r: &mut Rng, t: &mut Tally, case: u32) {
    let g = dot_geom(r);
    run_conv(b, r, t, case, g, false);
}

pub fn dot_conv_in_place(b: &mut Bufs, r: &mut Rng, t: &mut Tally, case: u32) {
    let g = in_place_geom(r, false);
    run_conv(b, r, t, case, g, true);
}

pub fn depthwise(b: &mut Bufs, r: &mut Rng, t: &mut Tally, case: u32) {
    let g = depthwise_geom(r);
    run_conv(b, r, t, case, g, false);
}

pub fn depthwise_in_place(b: &mut Bufs, r: &mut Rng, t: &mut Tally, case: u32) {
    let g = in_place_geom(r, true);
    run_conv(b, r, t, case, g, true);
}

/// `pack_dot` + `dot_fully_connected_s8` against `fully_connected_s8`: 1 to 3 rows, 1 to 300 features (sometimes
/// up to `MAX_FC_ROW`), 1 to 9 outputs.
pub fn dot_fc(b: &mut Bufs, r: &mut Rng, t: &mut Tally, case: u32) {
    let k = if r.chance(1, 10) {
        r.urange(301, fast::MAX_FC_ROW as u32)
    } else {
        r.urange(1, 300)
    };
    let g = FcGeom {
        rows: r.urange(1, 3),
        in_features: k,
        out_features: r.urange(1, 9),
    };
    let (k, n) = (k as usize, g.out_features as usize);
    let (n_in, n_out) = (g.rows as usize * k, g.rows as usize * n);
    let q = quant(r);
    let (in_off, out_off) = (
        r.below(MAX_OFF as u32 + 1) as usize,
        r.below(MAX_OFF as u32 + 1) as usize,
    );
    let input = &mut b.a[in_off..in_off + n_in];
    fill(r, input);
    let weights = &mut b.w[..k * n];
    fill_weights(r, weights);
    let (mult, shift) = (&mut b.mult[..n], &mut b.shift[..n]);
    requant(r, k, mult, shift);
    let has_bias = bias(r, &mut b.bias[..n], false);
    let (input, weights, mult, shift) = (&*input, &*weights, &*mult, &*shift);
    let bias = has_bias.then_some(&b.bias[..n]);

    let want = &mut b.want[..n_out];
    let rq = Requant {
        multipliers: mult,
        shifts: shift,
    };
    kernels::fully_connected_s8(&g, &q, rq, input, weights, bias, want);

    let bytes = fast::dot_packed_len(k, n);
    let packed_bytes = &mut b.packed_bytes[..bytes];
    assert!(
        fast::pack_dot(weights, k, n, bias, mult, shift, packed_bytes),
        "case {case}: pack_dot refused a case the firmware made for it"
    );
    let packed = &mut b.packed[..bytes / 4];
    words(packed_bytes, packed);

    prepare(&mut b.got, out_off, n_out);
    fast::dot_fully_connected_s8(&g, &q, packed, input, &mut b.got[out_off..out_off + n_out]);
    t.check(case, want, &b.got, out_off, || {
        say!("  geometry {:?}", g);
        say!("  quant {:?}", q);
        say!(
            "  input at +{}, output at +{}, bias {}, channel 0 requant ({}, {})",
            in_off,
            out_off,
            if has_bias { "yes" } else { "no" },
            mult[0],
            shift[0]
        );
    });
}
