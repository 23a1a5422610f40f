//! int8 (and byte-level) kernels against deliberately naive references: i64/i128 arithmetic written straight from
//! the documented formulas, plain nested loops over signed coordinates, no shared code with the kernels. Bit-exact.
//! Also: the int8 ops approximate the float functions they stand for, with the host builders' parameters.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fmt::Debug;

use kiln_runtime::format::*;
use kiln_runtime::host;
use kiln_runtime::kernels::{self, QuantS8, Requant, SoftmaxS8Mode, MAX_DOT_LEN};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

// ---------------------------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------------------------

/// Fails with every mismatching position listed (like CMSIS-NN's unit tests).
fn compare<T: PartialEq + Debug>(what: &str, got: &[T], want: &[T]) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.len(), want.len(), "{}: lengths differ", what);
    let bad: Vec<String> = got
        .iter()
        .zip(want)
        .enumerate()
        .filter(|(_, (g, w))| g != w)
        .map(|(i, (g, w))| format!("  [{i}] got {g:?}, expected {w:?}"))
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(TestCaseError::fail(format!(
            "{what}: {} of {} outputs differ:\n{}",
            bad.len(),
            got.len(),
            bad.join("\n")
        )))
    }
}

fn dims(d: &[u32]) -> Dims {
    Dims::from_slice(d).unwrap()
}

/// `round(acc * multiplier * 2^(shift - 31))`, ties towards +inf, computed exactly with i128.
fn ref_requant(acc: i64, multiplier: i32, shift: i8) -> i64 {
    let num = acc as i128 * multiplier as i128;
    let den = 1i128 << (31 - shift as i32);
    // floor(num / den + 1/2)
    (2 * num + den).div_euclid(2 * den) as i64
}

fn sat32(v: i64) -> i64 {
    v.clamp(i32::MIN as i64, i32::MAX as i64)
}

/// requantize (saturated to i32), + zero point, clamped to the activation range.
fn ref_out(acc: i64, multiplier: i32, shift: i8, zp: i32, lo: i8, hi: i8) -> i8 {
    (sat32(ref_requant(acc, multiplier, shift)) + zp as i64).clamp(lo as i64, hi as i64) as i8
}

/// Per-channel (15-bit mantissa) requantisation, straight from its definition: `round(acc * m16 * 2^(shift - 15))`,
/// ties towards +inf, computed exactly with i128 (a left shift when `shift >= 15`, no rounding then).
fn ref_requant_q15(acc: i64, m16: i16, shift: i8) -> i64 {
    let num = acc as i128 * m16 as i128;
    let e = shift as i32 - 15;
    if e >= 0 {
        return sat32((num << e).clamp(i64::MIN as i128, i64::MAX as i128) as i64);
    }
    let den = 1i128 << -e;
    // floor(num / den + 1/2)
    sat32((2 * num + den).div_euclid(2 * den) as i64)
}

/// Per-channel requantisation (saturated to i32), + zero point, clamped to the activation range.
fn ref_out_q15(acc: i64, m16: i16, shift: i8, zp: i32, lo: i8, hi: i8) -> i8 {
    (ref_requant_q15(acc, m16, shift) + zp as i64).clamp(lo as i64, hi as i64) as i8
}

fn zero_point() -> impl Strategy<Value = i32> {
    prop_oneof![4 => -128i32..=127, 1 => Just(-128), 1 => Just(127), 1 => Just(0)]
}

/// Valid requantisation pairs: mostly scales that keep outputs in range, sometimes 0 or the extreme shifts.
fn multiplier() -> impl Strategy<Value = (i32, i8)> {
    prop_oneof![
        8 => ((1i32 << 30)..=i32::MAX, -14i8..=1),
        1 => Just((0, 0)),
        1 => ((1i32 << 30)..=i32::MAX, prop_oneof![Just(-31i8), Just(30i8), -31i8..=30]),
    ]
}

/// Valid per-channel requantisation pairs (15-bit mantissas), distributed like [`multiplier`]'s.
fn multiplier_q15() -> impl Strategy<Value = (i16, i8)> {
    prop_oneof![
        8 => ((1i16 << 14)..=i16::MAX, -14i8..=1),
        1 => Just((0, 0)),
        1 => ((1i16 << 14)..=i16::MAX, prop_oneof![Just(-31i8), Just(30i8), -31i8..=30]),
    ]
}

fn act_range() -> impl Strategy<Value = (i8, i8)> {
    prop_oneof![
        2 => Just((-128i8, 127i8)),
        3 => (any::<i8>(), any::<i8>()).prop_map(|(a, b)| (a.min(b), a.max(b))),
    ]
}

fn bias_value() -> impl Strategy<Value = i32> {
    prop_oneof![8 => -200_000i32..200_000, 1 => any::<i32>(), 1 => prop_oneof![Just(i32::MIN), Just(i32::MAX)]]
}

// ---------------------------------------------------------------------------------------------------------------
// Convolution
// ---------------------------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct ConvCase {
    g: ConvGeom,
    q: QuantS8,
    input: Vec<i8>,
    weights: Vec<i8>,
    bias: Option<Vec<i32>>,
    rq: Vec<(i16, i8)>,
}

/// Output size along one axis for a random padding after (or `None` if the window never fits).
fn out_size(input: u32, k: u32, stride: u32, dil: u32, pad_before: u32, pad_after: u32) -> u32 {
    let dk = (k - 1) * dil + 1;
    let padded = (input + pad_before + pad_after).max(dk);
    (padded - dk) / stride + 1
}

fn conv_geom() -> impl Strategy<Value = ConvGeom> {
    (
        (1u32..=2, 1u32..=7, 1u32..=7),
        (any::<bool>(), 1u32..=3, 1u32..=4, 1u32..=3),
        (1u32..=4, 1u32..=4, 1u32..=3, 1u32..=3, 1u32..=3, 1u32..=3),
        (0u32..=6, 0u32..=6, 0u32..=6, 0u32..=6),
    )
        .prop_map(
            |(
                (batch, in_h, in_w),
                (depthwise, groups, cin_g, cout_g),
                (kh, kw, sh, sw, dh, dw),
                (pt, pl, pb, pr),
            )| {
                // Depthwise: groups = in_c, one input channel per group, `cout_g` is the channel multiplier.
                let (groups, cin_g) = if depthwise {
                    (cin_g, 1)
                } else {
                    (groups, cin_g)
                };
                let (pt, pl) = (pt.min((kh - 1) * dh + 1), pl.min((kw - 1) * dw + 1));
                ConvGeom {
                    batch,
                    in_h,
                    in_w,
                    in_c: groups * cin_g,
                    out_h: out_size(in_h, kh, sh, dh, pt, pb),
                    out_w: out_size(in_w, kw, sw, dw, pl, pr),
                    out_c: groups * cout_g,
                    kernel_h: kh,
                    kernel_w: kw,
                    stride_h: sh,
                    stride_w: sw,
                    dilation_h: dh,
                    dilation_w: dw,
                    pad_top: pt,
                    pad_left: pl,
                    groups,
                }
            },
        )
}

fn quant_s8() -> impl Strategy<Value = QuantS8> {
    (zero_point(), zero_point(), act_range()).prop_map(|(i, o, (lo, hi))| QuantS8 {
        input_zero_point: i,
        output_zero_point: o,
        act_min: lo,
        act_max: hi,
    })
}

fn conv_case() -> impl Strategy<Value = ConvCase> {
    conv_case_with(conv_geom())
}

fn conv_case_with(geoms: impl Strategy<Value = ConvGeom>) -> impl Strategy<Value = ConvCase> {
    geoms.prop_flat_map(|g| {
        let n_in = (g.batch * g.in_h * g.in_w * g.in_c) as usize;
        let n_w = (g.out_c * g.kernel_h * g.kernel_w * (g.in_c / g.groups)) as usize;
        let oc = g.out_c as usize;
        (
            Just(g),
            quant_s8(),
            vec(any::<i8>(), n_in),
            vec(any::<i8>(), n_w),
            proptest::option::of(vec(bias_value(), oc)),
            vec(multiplier_q15(), oc),
        )
            .prop_map(|(g, q, input, weights, bias, rq)| ConvCase {
                g,
                q,
                input,
                weights,
                bias,
                rq,
            })
    })
}

fn ref_conv(c: &ConvCase) -> Vec<i8> {
    let g = &c.g;
    let cin_g = (g.in_c / g.groups) as i64;
    let cout_g = (g.out_c / g.groups) as i64;
    let mut out = Vec::new();
    for b in 0..g.batch as i64 {
        for oy in 0..g.out_h as i64 {
            for ox in 0..g.out_w as i64 {
                for o in 0..g.out_c as i64 {
                    let group = o / cout_g;
                    let mut acc: i64 = c.bias.as_ref().map_or(0, |b| b[o as usize] as i64);
                    for ky in 0..g.kernel_h as i64 {
                        for kx in 0..g.kernel_w as i64 {
                            let iy = oy * g.stride_h as i64 + ky * g.dilation_h as i64
                                - g.pad_top as i64;
                            let ix = ox * g.stride_w as i64 + kx * g.dilation_w as i64
                                - g.pad_left as i64;
                            if iy < 0 || iy >= g.in_h as i64 || ix < 0 || ix >= g.in_w as i64 {
                                continue; // padding contributes 0
                            }
                            for i in 0..cin_g {
                                let ch = group * cin_g + i;
                                let xi = ((b * g.in_h as i64 + iy) * g.in_w as i64 + ix)
                                    * g.in_c as i64
                                    + ch;
                                let wi = ((o * g.kernel_h as i64 + ky) * g.kernel_w as i64 + kx)
                                    * cin_g
                                    + i;
                                let x = c.input[xi as usize] as i64;
                                let w = c.weights[wi as usize] as i64;
                                acc += (x - c.q.input_zero_point as i64) * w;
                            }
                        }
                    }
                    let (m, s) = c.rq[o as usize];
                    out.push(ref_out_q15(
                        sat32(acc),
                        m,
                        s,
                        c.q.output_zero_point,
                        c.q.act_min,
                        c.q.act_max,
                    ));
                }
            }
        }
    }
    out
}

fn split_rq(rq: &[(i16, i8)]) -> (Vec<i16>, Vec<i8>) {
    rq.iter().copied().unzip()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn conv2d_s8_matches_reference(c in conv_case()) {
        let (m, s) = split_rq(&c.rq);
        let g = &c.g;
        let mut y = vec![0i8; (g.batch * g.out_h * g.out_w * g.out_c) as usize];
        kernels::conv2d_s8(g, &c.q, Requant { multipliers: &m, shifts: &s }, &c.input, &c.weights, c.bias.as_deref(), &mut y);
        compare("conv2d_s8", &y, &ref_conv(&c))?;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Fully connected
// ---------------------------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct FcCase {
    g: FcGeom,
    q: QuantS8,
    input: Vec<i8>,
    weights: Vec<i8>,
    bias: Option<Vec<i32>>,
    rq: Vec<(i16, i8)>,
}

fn fc_case() -> impl Strategy<Value = FcCase> {
    (1u32..=3, 1u32..=70, 1u32..=9).prop_flat_map(|(rows, k, n)| {
        (
            Just(FcGeom {
                rows,
                in_features: k,
                out_features: n,
            }),
            quant_s8(),
            vec(any::<i8>(), (rows * k) as usize),
            vec(any::<i8>(), (n * k) as usize),
            proptest::option::of(vec(bias_value(), n as usize)),
            vec(multiplier_q15(), n as usize),
        )
            .prop_map(|(g, q, input, weights, bias, rq)| FcCase {
                g,
                q,
                input,
                weights,
                bias,
                rq,
            })
    })
}

fn ref_fc(c: &FcCase) -> Vec<i8> {
    let (rows, k, n) = (
        c.g.rows as usize,
        c.g.in_features as usize,
        c.g.out_features as usize,
    );
    let mut out = Vec::new();
    for r in 0..rows {
        for j in 0..n {
            let mut acc: i64 = c.bias.as_ref().map_or(0, |b| b[j] as i64);
            for i in 0..k {
                acc += (c.input[r * k + i] as i64 - c.q.input_zero_point as i64)
                    * c.weights[j * k + i] as i64;
            }
            let (m, s) = c.rq[j];
            out.push(ref_out_q15(
                sat32(acc),
                m,
                s,
                c.q.output_zero_point,
                c.q.act_min,
                c.q.act_max,
            ));
        }
    }
    out
}

fn run_fc(c: &FcCase) -> Vec<i8> {
    let (m, s) = split_rq(&c.rq);
    let mut y = vec![0i8; (c.g.rows * c.g.out_features) as usize];
    kernels::fully_connected_s8(
        &c.g,
        &c.q,
        Requant {
            multipliers: &m,
            shifts: &s,
        },
        &c.input,
        &c.weights,
        c.bias.as_deref(),
        &mut y,
    );
    y
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn fully_connected_s8_matches_reference(c in fc_case()) {
        compare("fully_connected_s8", &run_fc(&c), &ref_fc(&c))?;
    }
}

/// The longest dot product allowed, with the largest magnitude terms: the i32 sum is exact, the bias saturates.
#[test]
fn fully_connected_s8_longest_dot_product() {
    let k = MAX_DOT_LEN;
    for (x, zp, w, bias) in [
        (127i8, -128, -128i8, -1000),
        (-128, 127, -128, 1000),
        (127, -128, 127, i32::MAX),
    ] {
        let c = FcCase {
            g: FcGeom {
                rows: 1,
                in_features: k,
                out_features: 1,
            },
            q: QuantS8 {
                input_zero_point: zp,
                output_zero_point: 0,
                act_min: -128,
                act_max: 127,
            },
            input: vec![x; k as usize],
            weights: vec![w; k as usize],
            bias: Some(vec![bias]),
            rq: vec![(1 << 14, -23)],
        };
        let want = ref_fc(&c);
        assert_eq!(run_fc(&c), want, "x {x} zp {zp} w {w} bias {bias}");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Binary (broadcasting)
// ---------------------------------------------------------------------------------------------------------------

/// Output dims and, for `a` and `b`, a broadcast shape (each axis full or 1) as row-major strides (0 where
/// broadcast).
fn broadcast() -> impl Strategy<Value = (Broadcast, usize, usize)> {
    (1usize..=4)
        .prop_flat_map(|rank| {
            (
                vec(1u32..=4, rank),
                vec(any::<bool>(), rank),
                vec(any::<bool>(), rank),
            )
        })
        .prop_map(|(out, a_full, b_full)| {
            let strides = |full: &[bool]| {
                let mut s = vec![0u32; out.len()];
                let mut n = 1u32;
                for d in (0..out.len()).rev() {
                    if full[d] && out[d] > 1 {
                        s[d] = n;
                        n *= out[d];
                    }
                }
                (s, n as usize)
            };
            let (sa, na) = strides(&a_full);
            let (sb, nb) = strides(&b_full);
            (
                Broadcast {
                    out: dims(&out),
                    a_strides: dims(&sa),
                    b_strides: dims(&sb),
                },
                na,
                nb,
            )
        })
}

fn binary_kind() -> impl Strategy<Value = BinaryKind> {
    prop_oneof![
        Just(BinaryKind::Add),
        Just(BinaryKind::Sub),
        Just(BinaryKind::Mul),
        Just(BinaryKind::PRelu)
    ]
}

fn binary_case() -> impl Strategy<Value = (BinaryS8, Vec<i8>, Vec<i8>)> {
    (
        broadcast(),
        binary_kind(),
        (zero_point(), zero_point(), zero_point()),
        prop_oneof![3 => Just(20u8), 1 => 0u8..=23],
        (multiplier(), multiplier(), multiplier()),
        act_range(),
    )
        .prop_flat_map(
            |(
                (bcast, na, nb),
                kind,
                (za, zb, zo),
                left_shift,
                ((am, ash), (bm, bsh), (om, osh)),
                (lo, hi),
            )| {
                let p = BinaryS8 {
                    kind,
                    bcast,
                    a_zero_point: za,
                    b_zero_point: zb,
                    out_zero_point: zo,
                    left_shift,
                    a_multiplier: am,
                    a_shift: ash,
                    b_multiplier: bm,
                    b_shift: bsh,
                    out_multiplier: om,
                    out_shift: osh,
                    act_min: lo,
                    act_max: hi,
                    kernel: KernelS8::Reference,
                };
                (Just(p), vec(any::<i8>(), na), vec(any::<i8>(), nb))
            },
        )
}

fn ref_binary(p: &BinaryS8, a: &[i8], b: &[i8]) -> Vec<i8> {
    let out: Vec<i64> = p.bcast.out.iter().map(|&d| d as i64).collect();
    let total: i64 = out.iter().product();
    let mut y = Vec::new();
    for flat in 0..total {
        // Multi-index of `flat`, row-major.
        let mut rest = flat;
        let mut ia = 0i64;
        let mut ib = 0i64;
        for d in (0..out.len()).rev() {
            let i = rest % out[d];
            rest /= out[d];
            ia += i * p.bcast.a_strides[d] as i64;
            ib += i * p.bcast.b_strides[d] as i64;
        }
        let x = a[ia as usize] as i64 - p.a_zero_point as i64;
        let z = b[ib as usize] as i64 - p.b_zero_point as i64;
        let (zo, lo, hi) = (p.out_zero_point, p.act_min, p.act_max);
        let v = match p.kind {
            BinaryKind::Add | BinaryKind::Sub => {
                let scale = 1i64 << p.left_shift;
                let sx = sat32(ref_requant(x * scale, p.a_multiplier, p.a_shift));
                let sz = sat32(ref_requant(z * scale, p.b_multiplier, p.b_shift));
                let acc = if p.kind == BinaryKind::Add {
                    sx + sz
                } else {
                    sx - sz
                };
                ref_out(sat32(acc), p.out_multiplier, p.out_shift, zo, lo, hi)
            }
            BinaryKind::Mul => ref_out(x * z, p.out_multiplier, p.out_shift, zo, lo, hi),
            BinaryKind::PRelu if x >= 0 => ref_out(x, p.a_multiplier, p.a_shift, zo, lo, hi),
            BinaryKind::PRelu => ref_out(x * z, p.out_multiplier, p.out_shift, zo, lo, hi),
        };
        y.push(v);
    }
    y
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    #[test]
    fn binary_s8_matches_reference((p, a, b) in binary_case()) {
        let n: u32 = p.bcast.out.iter().product();
        let mut y = vec![0i8; n as usize];
        kernels::binary_s8(&p, &a, &b, &mut y);
        compare(&format!("binary_s8 {:?}", p.kind), &y, &ref_binary(&p, &a, &b))?;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Lookup
// ---------------------------------------------------------------------------------------------------------------

proptest! {
    #[test]
    fn lookup_s8_matches_reference(table in vec(any::<i8>(), 256), x in vec(any::<i8>(), 0..300)) {
        let t: [i8; 256] = table.clone().try_into().unwrap();
        let mut y = vec![0i8; x.len()];
        kernels::lookup_s8(&t, &x, &mut y);
        let want: Vec<i8> = x.iter().map(|&v| table[(v as i64 + 128) as usize]).collect();
        compare("lookup_s8", &y, &want)?;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Softmax / LogSoftmax
// ---------------------------------------------------------------------------------------------------------------

/// Floor of log2(v) in Q16 by the documented squaring algorithm, written independently.
fn ref_log2_q16(v: u128) -> i64 {
    let v = v.max(1);
    let mut e = 0i64;
    while (v >> (e + 1)) != 0 {
        e += 1;
    }
    // Q31 mantissa: floor(v * 2^31 / 2^e)
    let mut m: u128 = (v << 31) >> e;
    let mut frac = 0i64;
    for _ in 0..16 {
        m = m * m / (1u128 << 31);
        frac *= 2;
        if m >= 2 * (1u128 << 31) {
            m /= 2;
            frac += 1;
        }
    }
    e * 65536 + frac
}

fn ref_softmax(
    outer: usize,
    len: usize,
    inner: usize,
    mode: SoftmaxS8Mode,
    table: &[u32; 256],
    zo: i32,
    x: &[i8],
) -> Vec<i8> {
    let mut y = vec![0i8; x.len()];
    for o in 0..outer {
        for j in 0..inner {
            let idx = |i: usize| (o * len + i) * inner + j;
            let max = (0..len).map(|i| x[idx(i)] as i64).max().unwrap();
            let sum: u128 = (0..len)
                .map(|i| table[(max - x[idx(i)] as i64) as usize] as u128)
                .sum::<u128>()
                .max(1);
            for i in 0..len {
                let t = table[(max - x[idx(i)] as i64) as usize] as u128;
                let v = match mode {
                    SoftmaxS8Mode::Softmax => {
                        // r = round(2^55 / sum) (ties up), y = round(t * r / 2^47) (ties up)
                        let r = (2 * (1u128 << 55) + sum) / (2 * sum);
                        let q = (2 * t * r + (1u128 << 47)) / (2 * (1u128 << 47));
                        q as i64 + zo as i64
                    }
                    SoftmaxS8Mode::LogSoftmax {
                        diff_mult,
                        log_mult,
                    } => {
                        let d = (max - x[idx(i)] as i64) as i128;
                        let l = ref_log2_q16(sum) as i128 - 24 * 65536;
                        let t = diff_mult as i128 * d * 65536 + log_mult as i128 * l;
                        zo as i64 - (t + (1i128 << 31)).div_euclid(1i128 << 32) as i64
                    }
                };
                y[idx(i)] = v.clamp(-128, 127) as i8;
            }
        }
    }
    y
}

/// An input scale spread log-uniformly over [0.002, 1].
fn input_scale() -> impl Strategy<Value = f32> {
    (-9.0f64..0.0).prop_map(|e| 2f64.powf(e) as f32)
}

/// A valid exp table: host-built from a random scale, or random entries under `table[0] = 2^24`.
fn exp_table() -> impl Strategy<Value = [u32; 256]> {
    prop_oneof![
        input_scale().prop_map(|s| host::softmax_s8(s, 1.0).unwrap().exp_table),
        vec(0u32..=(1 << 24), 256).prop_map(|v| {
            let mut t: [u32; 256] = v.try_into().unwrap();
            t[0] = 1 << 24;
            t
        }),
    ]
}

fn softmax_mode() -> impl Strategy<Value = SoftmaxS8Mode> {
    prop_oneof![
        Just(SoftmaxS8Mode::Softmax),
        (0i32..=i32::MAX, 0i32..=i32::MAX).prop_map(|(d, l)| SoftmaxS8Mode::LogSoftmax {
            diff_mult: d,
            log_mult: l
        }),
        (0i32..300_000, 0i32..3_000_000).prop_map(|(d, l)| SoftmaxS8Mode::LogSoftmax {
            diff_mult: d,
            log_mult: l
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn softmax_s8_matches_reference(
        (outer, len, inner, x) in (1usize..=3, 1usize..=40, 1usize..=3)
            .prop_flat_map(|(o, l, i)| (Just(o), Just(l), Just(i), vec(any::<i8>(), o * l * i))),
        mode in softmax_mode(),
        table in exp_table(),
        zo in zero_point(),
    ) {
        let mut y = vec![0i8; x.len()];
        kernels::softmax_s8([outer as u32, len as u32, inner as u32], mode, &table, zo, &x, &mut y);
        compare(&format!("softmax_s8 {mode:?}"), &y, &ref_softmax(outer, len, inner, mode, &table, zo, &x))?;
    }

    /// Dequantised, the int8 softmax is within 1/256 (0.5/256 away from saturation) of the float softmax of the
    /// dequantised input.
    #[test]
    fn softmax_s8_approximates_softmax(
        x in vec(any::<i8>(), 1..60),
        scale in input_scale(),
        beta in prop_oneof![Just(1.0f32), 0.1f32..4.0],
    ) {
        let h = host::softmax_s8(scale, beta).unwrap();
        let mut y = vec![0i8; x.len()];
        kernels::softmax_s8([1, x.len() as u32, 1], SoftmaxS8Mode::Softmax, &h.exp_table, h.output.zero_point, &x, &mut y);
        let s = scale as f64 * beta as f64;
        let max = *x.iter().max().unwrap() as f64;
        let e: Vec<f64> = x.iter().map(|&v| ((v as f64 - max) * s).exp()).collect();
        let sum: f64 = e.iter().sum();
        for (i, (&q, &ei)) in y.iter().zip(&e).enumerate() {
            let p = ei / sum;
            let got = (q as f64 + 128.0) / 256.0;
            let tol = if q == 127 { 1.0 / 256.0 + 1e-6 } else { 0.5 / 256.0 + 1e-5 };
            prop_assert!((got - p).abs() <= tol, "[{}] x {} got {} ({}), softmax {}", i, x[i], got, q, p);
        }
    }

    /// Dequantised, the int8 LogSoftmax is within half an output step (plus 1%) of the float LogSoftmax, or
    /// saturated when the true value is out of range.
    #[test]
    fn log_softmax_s8_approximates_log_softmax(
        x in vec(any::<i8>(), 1..60),
        scale in input_scale(),
        out_scale in prop_oneof![Just(16.0f32 / 256.0), 0.01f32..0.5],
        zo in prop_oneof![Just(127i32), 0i32..=127],
    ) {
        let oq = Quant { scale: out_scale, zero_point: zo };
        let h = host::log_softmax_s8(scale, 1.0, oq).unwrap();
        let mode = kiln_runtime::ops::softmax_mode(&h.clone().into_op(1, x.len() as u32, 1, Span::default())).unwrap();
        let mut y = vec![0i8; x.len()];
        kernels::softmax_s8([1, x.len() as u32, 1], mode, &h.exp_table, zo, &x, &mut y);
        let s = scale as f64;
        let max = *x.iter().max().unwrap() as f64;
        let ln_sum = x.iter().map(|&v| ((v as f64 - max) * s).exp()).sum::<f64>().ln();
        for (i, &q) in y.iter().enumerate() {
            let want = (x[i] as f64 - max) * s - ln_sum;
            let exact_q = want / out_scale as f64 + zo as f64;
            if exact_q < -128.5 {
                prop_assert_eq!(q, -128, "[{}] {} should saturate", i, want);
            } else {
                prop_assert!((q as f64 - exact_q).abs() <= 0.51, "[{}] got {} want {} (real {})", i, q, exact_q, want);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Pools
// ---------------------------------------------------------------------------------------------------------------

/// Valid pool geometry: padding before < kernel, every window overlapping the input (floor or ceil mode).
fn pool_geom() -> impl Strategy<Value = Pool2d> {
    (
        (1u32..=2, 1u32..=7, 1u32..=7, 1u32..=4),
        (1u32..=4, 1u32..=4, 1u32..=3, 1u32..=3),
        (0u32..4, 0u32..4, 0u32..4, 0u32..4),
        (any::<bool>(), any::<bool>(), any::<bool>(), zero_point()),
    )
        .prop_map(
            |(
                (batch, in_h, in_w, channels),
                (kh, kw, sh, sw),
                (pt, pl, pb, pr),
                (ceil, include, _, zp),
            )| {
                let axis = |input: u32, k: u32, s: u32, before: u32, after: u32| {
                    let (before, after) = (before % k, after % k);
                    let floor = out_size(input, k, s, 1, before, after);
                    // Ceil mode: one more window if it still starts inside the input.
                    let out = if ceil && floor * s < before + input {
                        floor + 1
                    } else {
                        floor
                    };
                    (out, before)
                };
                let (out_h, pad_top) = axis(in_h, kh, sh, pt, pb);
                let (out_w, pad_left) = axis(in_w, kw, sw, pl, pr);
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
                    count_include_pad: include,
                    zero_point: zp,
                    kernel: KernelS8::Reference,
                }
            },
        )
}

/// (max, avg) per the documented formulas.
fn ref_pools(p: &Pool2d, x: &[i8]) -> (Vec<i8>, Vec<i8>) {
    let (mut max_out, mut avg_out) = (Vec::new(), Vec::new());
    for b in 0..p.batch as i64 {
        for oy in 0..p.out_h as i64 {
            for ox in 0..p.out_w as i64 {
                for c in 0..p.channels as i64 {
                    let mut max = i64::MIN;
                    let (mut sum, mut inside) = (0i64, 0i64);
                    for ky in 0..p.kernel_h as i64 {
                        for kx in 0..p.kernel_w as i64 {
                            let iy = oy * p.stride_h as i64 + ky - p.pad_top as i64;
                            let ix = ox * p.stride_w as i64 + kx - p.pad_left as i64;
                            if iy < 0 || iy >= p.in_h as i64 || ix < 0 || ix >= p.in_w as i64 {
                                continue;
                            }
                            let v = x[(((b * p.in_h as i64 + iy) * p.in_w as i64 + ix)
                                * p.channels as i64
                                + c) as usize] as i64;
                            max = max.max(v);
                            sum += v - p.zero_point as i64;
                            inside += 1;
                        }
                    }
                    assert!(inside > 0, "generator made an empty window");
                    let n = if p.count_include_pad {
                        (p.kernel_h * p.kernel_w) as i64
                    } else {
                        inside
                    };
                    // round half up: floor(sum / n + 1/2)
                    let avg = (2 * sum + n).div_euclid(2 * n) + p.zero_point as i64;
                    max_out.push(max as i8);
                    avg_out.push(avg.clamp(-128, 127) as i8);
                }
            }
        }
    }
    (max_out, avg_out)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn pools_s8_match_reference(
        (p, x) in pool_geom().prop_flat_map(|p| {
            let n = (p.batch * p.in_h * p.in_w * p.channels) as usize;
            (Just(p), vec(any::<i8>(), n))
        })
    ) {
        let n = (p.batch * p.out_h * p.out_w * p.channels) as usize;
        let (want_max, want_avg) = ref_pools(&p, &x);
        let mut y = vec![0i8; n];
        kernels::max_pool_s8(&p, &x, &mut y);
        compare("max_pool_s8", &y, &want_max)?;
        kernels::avg_pool_s8(&p, &x, &mut y);
        compare("avg_pool_s8", &y, &want_avg)?;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// ReduceMean
// ---------------------------------------------------------------------------------------------------------------

fn reduce_case() -> impl Strategy<Value = (ReduceMeanS8, Vec<i8>)> {
    (1usize..=5)
        .prop_flat_map(|rank| {
            (
                vec(1u32..=4, rank),
                0u8..(1 << rank),
                zero_point(),
                zero_point(),
                multiplier(),
            )
        })
        .prop_flat_map(|(d, axes, zi, zo, (m, s))| {
            let n: u32 = d.iter().product();
            let p = ReduceMeanS8 {
                dims: dims(&d),
                axes,
                input_zero_point: zi,
                output_zero_point: zo,
                multiplier: m,
                shift: s,
            };
            (Just(p), vec(any::<i8>(), n as usize))
        })
}

fn ref_reduce(p: &ReduceMeanS8, x: &[i8]) -> Vec<i8> {
    let d: Vec<usize> = p.dims.iter().map(|&v| v as usize).collect();
    let kept: Vec<usize> = (0..d.len()).filter(|&i| p.axes & (1 << i) == 0).collect();
    let n_out: usize = kept.iter().map(|&i| d[i]).product();
    let mut sums = vec![0i64; n_out];
    for (flat, &v) in x.iter().enumerate() {
        // Multi-index of `flat`, then the output index over the kept axes.
        let mut rest = flat;
        let mut idx = vec![0usize; d.len()];
        for a in (0..d.len()).rev() {
            idx[a] = rest % d[a];
            rest /= d[a];
        }
        let mut o = 0;
        for &a in &kept {
            o = o * d[a] + idx[a];
        }
        sums[o] += v as i64 - p.input_zero_point as i64;
    }
    sums.iter()
        .map(|&s| ref_out(s, p.multiplier, p.shift, p.output_zero_point, -128, 127))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn reduce_mean_s8_matches_reference((p, x) in reduce_case()) {
        let want = ref_reduce(&p, &x);
        let mut y = vec![0i8; want.len()];
        kernels::reduce_mean_s8(&p, &x, &mut y);
        compare("reduce_mean_s8", &y, &want)?;
    }

    /// With the host multiplier, the int8 mean is the float mean rounded (within half a step plus a hair).
    #[test]
    fn reduce_mean_s8_approximates_mean(
        x in vec(any::<i8>(), 1..200),
        (si, so) in (input_scale(), input_scale()),
        (zi, zo) in (zero_point(), zero_point()),
    ) {
        let n = x.len() as u32;
        let (m, s) = host::reduce_mean_multiplier(si, so, n as u64).unwrap();
        let p = ReduceMeanS8 { dims: dims(&[n]), axes: 1, input_zero_point: zi, output_zero_point: zo, multiplier: m, shift: s };
        let mut y = [0i8];
        kernels::reduce_mean_s8(&p, &x, &mut y);
        let mean = x.iter().map(|&v| si as f64 * (v as i32 - zi) as f64).sum::<f64>() / n as f64;
        // The multiplier is exact to 2^-31 relative (2^-30 with the rounding of the shift).
        let tol = 0.5 + 1e-9 + (mean / so as f64).abs() * 2f64.powi(-30);
        let exact = (mean / so as f64 + zo as f64).clamp(-128.0, 127.0);
        prop_assert!((y[0] as f64 - exact).abs() <= tol, "got {} want {}", y[0], exact);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Host builders: lookup tables and binary parameters approximate the float functions
// ---------------------------------------------------------------------------------------------------------------

fn quant() -> impl Strategy<Value = Quant> {
    (input_scale(), zero_point()).prop_map(|(scale, zero_point)| Quant { scale, zero_point })
}

/// `|dequantize(q) - real| <= half a step (+ epsilon)`, or `q` saturated at the bound `real` lies beyond.
fn within_half_lsb(q: i8, real: f64, out: Quant, eps: f64) -> Result<(), String> {
    let exact = real / out.scale as f64 + out.zero_point as f64;
    let ok = if exact >= 127.5 {
        q == 127
    } else if exact <= -128.5 {
        q == -128
    } else {
        (q as f64 - exact).abs() <= 0.5 + eps
    };
    if ok {
        Ok(())
    } else {
        Err(format!("got {q}, exact {exact} (real {real})"))
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn lookup_tables_within_half_lsb(in_q in quant(), out_q in quant(), f in 0usize..5) {
        let funcs: [fn(f32) -> f32; 5] = [
            |x| 1.0 / (1.0 + (-x).exp()),
            |x| x.tanh(),
            |x| x.clamp(0.0, 6.0),
            |x| if x >= 0.0 { x } else { 0.1 * x },
            |x| x * 0.5 * (1.0 + (x / std::f32::consts::SQRT_2).tanh()), // any function: a GELU-ish one
        ];
        let table = host::lookup_table(in_q, out_q, funcs[f]);
        for x in -128i32..=127 {
            let real = funcs[f]((in_q.scale as f64 * (x - in_q.zero_point) as f64) as f32) as f64;
            let q = table[(x + 128) as usize];
            within_half_lsb(q, real, out_q, 1e-9).map_err(|e| TestCaseError::fail(format!("x {x}: {e}")))?;
        }
    }

    #[test]
    fn binary_s8_with_host_params_approximates_float(
        kind in binary_kind(),
        (qa, qb, qo) in (quant(), quant(), quant()),
        a in vec(any::<i8>(), 64),
        b in vec(any::<i8>(), 64),
    ) {
        let params = match kind {
            BinaryKind::Add | BinaryKind::Sub => host::add_sub_s8(qa, qb, qo),
            BinaryKind::Mul => host::mul_s8(qa, qb, qo),
            BinaryKind::PRelu => host::prelu_s8(qa, qb, qo),
        }.unwrap();
        let bc = Broadcast { out: dims(&[64]), a_strides: dims(&[1]), b_strides: dims(&[1]) };
        let p = params.into_op(kind, bc, -128, 127);
        let mut y = vec![0i8; 64];
        kernels::binary_s8(&p, &a, &b, &mut y);
        for i in 0..64 {
            let (x, z) = (host::dequantize(qa, a[i]) as f64, host::dequantize(qb, b[i]) as f64);
            let real = match kind {
                BinaryKind::Add => x + z,
                BinaryKind::Sub => x - z,
                BinaryKind::Mul => x * z,
                BinaryKind::PRelu => if x >= 0.0 { x } else { x * z },
            };
            // Add/Sub round twice (inputs at 2^-20 of the common step, then the output): allow a little more.
            within_half_lsb(y[i], real, qo, 5e-3).map_err(|e| TestCaseError::fail(format!("{kind:?} [{i}] a {} b {}: {e}", a[i], b[i])))?;
        }
    }

    #[test]
    fn conv_with_host_multipliers_approximates_float(
        x in vec(any::<i8>(), 9),
        w in vec(-127i8..=127, 9),
        (si, sw, so) in (input_scale(), input_scale(), input_scale()),
        zi in zero_point(),
        zo in zero_point(),
    ) {
        // A single 3x3 window as a fully connected layer: out = sum x * w in reals, requantised.
        let (m, s) = host::per_channel_multipliers(si, &[sw], so).unwrap();
        let c = FcCase {
            g: FcGeom { rows: 1, in_features: 9, out_features: 1 },
            q: QuantS8 { input_zero_point: zi, output_zero_point: zo, act_min: -128, act_max: 127 },
            input: x.clone(),
            weights: w.clone(),
            bias: None,
            rq: vec![(m[0], s[0])],
        };
        let y = run_fc(&c)[0];
        let real: f64 = x.iter().zip(&w).map(|(&a, &b)| si as f64 * (a as i32 - zi) as f64 * sw as f64 * b as f64).sum();
        // The 15-bit multiplier is within 2^-15 relative; checked outputs are at most 255.5 steps from the zero
        // point, so the rounding point moves by at most 255.5 * 2^-15 < 2^-7 of a step.
        within_half_lsb(y, real, Quant { scale: so, zero_point: zo }, 2f64.powi(-7) + 1e-6).map_err(TestCaseError::fail)?;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Data movement (byte-level, any element size)
// ---------------------------------------------------------------------------------------------------------------

fn elem_bytes() -> impl Strategy<Value = u8> {
    prop_oneof![Just(1u8), Just(2), Just(4), 1u8..=8]
}

/// Row-major multi-index of `flat` in `d`.
fn unflatten(mut flat: usize, d: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; d.len()];
    for a in (0..d.len()).rev() {
        idx[a] = flat % d[a];
        flat /= d[a];
    }
    idx
}

fn flatten(idx: &[usize], d: &[usize]) -> usize {
    idx.iter().zip(d).fold(0, |acc, (&i, &n)| acc * n + i)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn transpose_matches_reference(
        (d, perm, eb, x) in (1usize..=5, elem_bytes()).prop_flat_map(|(rank, eb)| {
            (vec(0u32..=4, rank), Just((0..rank as u32).collect::<Vec<_>>()).prop_shuffle(), Just(eb))
        }).prop_flat_map(|(d, perm, eb)| {
            let n = d.iter().product::<u32>() as usize * eb as usize;
            (Just(d), Just(perm), Just(eb), vec(any::<u8>(), n))
        })
    ) {
        let p = TransposeParams { dims: dims(&d), perm: dims(&perm), elem_bytes: eb };
        let mut y = vec![0u8; x.len()];
        kernels::transpose(&p, &x, &mut y);
        let du: Vec<usize> = d.iter().map(|&v| v as usize).collect();
        let out_d: Vec<usize> = perm.iter().map(|&a| du[a as usize]).collect();
        let eb = eb as usize;
        let mut want = vec![0u8; x.len()];
        for o in 0..x.len() / eb {
            let j = unflatten(o, &out_d);
            let mut i = vec![0; du.len()];
            for (k, &a) in perm.iter().enumerate() {
                i[a as usize] = j[k];
            }
            let src = flatten(&i, &du);
            want[o * eb..(o + 1) * eb].copy_from_slice(&x[src * eb..(src + 1) * eb]);
        }
        compare("transpose", &y, &want)?;
    }

    #[test]
    fn pad_matches_reference(
        (d, before, after, eb, value, x) in (1usize..=4, elem_bytes().prop_filter("value bytes", |&e| e <= 4)).prop_flat_map(|(rank, eb)| {
            (vec(0u32..=3, rank), vec(0u32..=2, rank), vec(0u32..=2, rank), Just(eb), any::<u32>())
        }).prop_flat_map(|(d, b, a, eb, v)| {
            let n = d.iter().product::<u32>() as usize * eb as usize;
            (Just(d), Just(b), Just(a), Just(eb), Just(v), vec(any::<u8>(), n))
        })
    ) {
        let p = PadParams { dims: dims(&d), before: dims(&before), after: dims(&after), elem_bytes: eb, value };
        let out_d: Vec<usize> = (0..d.len()).map(|i| (d[i] + before[i] + after[i]) as usize).collect();
        let n_out: usize = out_d.iter().product();
        let eb = eb as usize;
        let mut y = vec![0u8; n_out * eb];
        kernels::pad(&p, &x, &mut y);
        let du: Vec<usize> = d.iter().map(|&v| v as usize).collect();
        let mut want = Vec::new();
        for o in 0..n_out {
            let j = unflatten(o, &out_d);
            let inside = (0..d.len()).all(|k| j[k] >= before[k] as usize && j[k] < (before[k] + d[k]) as usize);
            if inside {
                let i: Vec<usize> = (0..d.len()).map(|k| j[k] - before[k] as usize).collect();
                let src = flatten(&i, &du) * eb;
                want.extend_from_slice(&x[src..src + eb]);
            } else {
                want.extend_from_slice(&value.to_le_bytes()[..eb]);
            }
        }
        compare("pad", &y, &want)?;
    }

    #[test]
    fn concat_and_slice_match_reference(
        (outer, inner, parts, start, len) in (0u32..=3, 0u32..=5, vec(0u32..=4, 1..=8))
            .prop_flat_map(|(o, i, parts)| {
                let total: u32 = parts.iter().sum();
                (Just(o), Just(i), Just(parts), 0..=total)
            })
            .prop_flat_map(|(o, i, parts, start)| {
                let total: u32 = parts.iter().sum();
                (Just(o), Just(i), Just(parts), Just(start), 0..=total - start)
            }),
        seed in any::<u8>(),
    ) {
        let inputs: Vec<Vec<u8>> = parts
            .iter()
            .enumerate()
            .map(|(k, &p)| (0..outer * p * inner).map(|b| (b as u8).wrapping_mul(7).wrapping_add(seed ^ (k as u8 * 31))).collect())
            .collect();
        let total: u32 = parts.iter().sum();
        let p = ConcatParams { outer, inner_bytes: inner, parts: heapless::Vec::from_slice(&parts).unwrap() };
        let mut y = vec![0u8; (outer * total * inner) as usize];
        let refs: Vec<&[u8]> = inputs.iter().map(|v| v.as_slice()).collect();
        kernels::concat(&p, &refs, &mut y);
        let mut want = Vec::new();
        for r in 0..outer as usize {
            for (k, &part) in parts.iter().enumerate() {
                let n = (part * inner) as usize;
                want.extend_from_slice(&inputs[k][r * n..(r + 1) * n]);
            }
        }
        compare("concat", &y, &want)?;

        let s = SliceParams { outer, axis_len: total, start, len, inner_bytes: inner };
        let mut z = vec![0u8; (outer * len * inner) as usize];
        kernels::slice(&s, &y, &mut z);
        let mut want = Vec::new();
        for r in 0..outer {
            for a in start..start + len {
                let at = ((r * total + a) * inner) as usize;
                want.extend_from_slice(&y[at..at + inner as usize]);
            }
        }
        compare("slice", &z, &want)?;
    }
}

#[test]
fn copy_copies() {
    let x: Vec<u8> = (0..=255).collect();
    let mut y = vec![0u8; 256];
    kernels::copy(&x, &mut y);
    assert_eq!(x, y);
}

// ---------------------------------------------------------------------------------------------------------------
// Optimised kernels (kernels::fast): bit-exact to the reference kernels
// ---------------------------------------------------------------------------------------------------------------

/// One conformance test per optimised kernel, all alike: on random cases of the geometries the kernel accepts,
/// its output bytes equal the reference kernel's. The kernels are the same code on the host (portable DSP
/// functions) and on Cortex-M4/M7 (the instructions), where the QEMU tests compare whole models with the host.
macro_rules! conformance {
    ($name:ident, $cases:expr, |$c:ident| reference: $reference:expr, optimised: $optimised:expr) => {
        proptest! {
            #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]
            #[test]
            fn $name($c in $cases) {
                let (want, got) = ($reference, $optimised);
                compare(stringify!($name), &got, &want)?;
            }
        }
    };
}

type ConvKernel = fn(&ConvGeom, &QuantS8, Requant<'_>, &[i8], &[i8], Option<&[i32]>, &mut [i8]);

fn run_conv_with(kernel: ConvKernel, c: &ConvCase) -> Vec<i8> {
    let (m, s) = split_rq(&c.rq);
    let g = &c.g;
    let mut y = vec![0i8; (g.batch * g.out_h * g.out_w * g.out_c) as usize];
    kernel(
        g,
        &c.q,
        Requant {
            multipliers: &m,
            shifts: &s,
        },
        &c.input,
        &c.weights,
        c.bias.as_deref(),
        &mut y,
    );
    y
}

/// The random conv geometries with one group (channel counts kept).
fn dot_geom() -> impl Strategy<Value = ConvGeom> {
    conv_geom().prop_map(|g| ConvGeom { groups: 1, ..g })
}

/// The random conv geometries made depthwise with multiplier 1, channels rounded up to a multiple of 4 (as the
/// depthwise kernel takes them).
fn depthwise_geom() -> impl Strategy<Value = ConvGeom> {
    conv_geom().prop_map(|g| {
        let c = g.in_c.div_ceil(4) * 4;
        ConvGeom {
            in_c: c,
            groups: c,
            out_c: c,
            ..g
        }
    })
}

/// Pointwise geometries with many channels: long dot products, 4-byte steps and tails.
fn pointwise_geom() -> impl Strategy<Value = ConvGeom> {
    (1u32..=3, 1u32..=3, 1u32..=160, 1u32..=12, 1u32..=2).prop_map(|(h, w, cin, cout, s)| {
        ConvGeom {
            batch: 1,
            in_h: h,
            in_w: w,
            in_c: cin,
            out_h: (h - 1) / s + 1,
            out_w: (w - 1) / s + 1,
            out_c: cout,
            kernel_h: 1,
            kernel_w: 1,
            stride_h: s,
            stride_w: s,
            dilation_h: 1,
            dilation_w: 1,
            pad_top: 0,
            pad_left: 0,
            groups: 1,
        }
    })
}

/// A requantisation pair moved into the shifts the packers take (`-16..=-1`, see `fast::q31_multiplier`).
fn packable_rq(rq: &mut [(i16, i8)]) {
    for (_, s) in rq {
        *s = -1 - (*s as i32).rem_euclid(16) as i8;
    }
}

/// The case with shifts the packers take and, for depthwise, biases they fold (`|b| <= MAX_FOLDED_BIAS`).
fn packable(mut c: ConvCase, depthwise: bool) -> ConvCase {
    packable_rq(&mut c.rq);
    if depthwise {
        for b in c.bias.iter_mut().flatten() {
            *b %= kernels::fast::MAX_FOLDED_BIAS;
        }
    }
    c
}

fn words(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        .collect()
}

/// `pack_dot` or `pack_depthwise` on the case (which must be packable), as words.
fn packed(c: &ConvCase) -> Vec<u32> {
    let (m, s) = split_rq(&c.rq);
    let g = &c.g;
    let (per, n) = (
        (g.kernel_h * g.kernel_w * g.in_c / g.groups) as usize,
        g.out_c as usize,
    );
    let mut buf;
    if g.groups > 1 {
        buf = vec![0u8; kernels::fast::depthwise_packed_len(per, n)];
        assert!(kernels::fast::pack_depthwise(
            &c.weights,
            per,
            n,
            c.q.input_zero_point,
            c.bias.as_deref(),
            &m,
            &s,
            &mut buf
        ));
    } else {
        buf = vec![0u8; kernels::fast::dot_packed_len(per, n)];
        assert!(kernels::fast::pack_dot(
            &c.weights,
            per,
            n,
            c.bias.as_deref(),
            &m,
            &s,
            &mut buf
        ));
    }
    words(&buf)
}

/// The case packed, then the optimised kernel.
fn run_packed_conv(c: &ConvCase) -> Vec<i8> {
    let g = &c.g;
    let mut y = vec![0i8; (g.batch * g.out_h * g.out_w * g.out_c) as usize];
    let kernel = if g.groups > 1 {
        kernels::fast::depthwise_conv2d_s8
    } else {
        kernels::fast::dot_conv2d_s8
    };
    kernel(g, &c.q, &packed(c), &c.input, &mut y);
    y
}

conformance!(dot_conv2d_s8_matches_reference, conv_case_with(dot_geom()).prop_map(|c| packable(c, false)),
    |c| reference: run_conv_with(kernels::conv2d_s8, &c), optimised: run_packed_conv(&c));
conformance!(dot_pointwise_s8_matches_reference, conv_case_with(pointwise_geom()).prop_map(|c| packable(c, false)),
    |c| reference: run_conv_with(kernels::conv2d_s8, &c), optimised: run_packed_conv(&c));
conformance!(depthwise_conv2d_s8_matches_reference, conv_case_with(depthwise_geom()).prop_map(|c| packable(c, true)),
    |c| reference: run_conv_with(kernels::conv2d_s8, &c), optimised: run_packed_conv(&c));
conformance!(dot_fully_connected_s8_matches_reference, fc_case().prop_map(|mut c| { packable_rq(&mut c.rq); c }),
|c| reference: run_fc(&c), optimised: {
    let (m, s) = split_rq(&c.rq);
    let (k, n) = (c.g.in_features as usize, c.g.out_features as usize);
    let mut buf = vec![0u8; kernels::fast::dot_packed_len(k, n)];
    assert!(kernels::fast::pack_dot(&c.weights, k, n, c.bias.as_deref(), &m, &s, &mut buf));
    let mut y = vec![0i8; (c.g.rows * c.g.out_features) as usize];
    kernels::fast::dot_fully_connected_s8(&c.g, &c.q, &words(&buf), &c.input, &mut y);
    y
});

/// Geometries a conv may run in place in: stride 1, "same" padding split any way, as many output as input
/// channels (any count for one group; a multiple of 4 for depthwise, which takes them so).
fn in_place_geom(groups_all: bool) -> impl Strategy<Value = ConvGeom> {
    (
        1u32..=2,
        1u32..=7,
        1u32..=7,
        1u32..=16,
        1u32..=3,
        1u32..=3,
        1u32..=2,
        1u32..=2,
    )
        .prop_flat_map(move |(batch, h, w, c, kh, kw, dh, dw)| {
            let (th, tw) = ((kh - 1) * dh, (kw - 1) * dw);
            let c = if groups_all { c.div_ceil(4) * 4 } else { c };
            (Just((batch, h, w, c, kh, kw, dh, dw)), 0..=th, 0..=tw)
        })
        .prop_map(move |((batch, h, w, c, kh, kw, dh, dw), pt, pl)| ConvGeom {
            batch,
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
            pad_top: pt,
            pad_left: pl,
            groups: if groups_all { c } else { 1 },
        })
        .prop_filter("fits in place", kernels::fast::in_place_fits)
}

/// The case packed, then the optimised kernel over a copy of the input, in place.
fn run_packed_conv_in_place(c: &ConvCase) -> Vec<i8> {
    let mut y = c.input.clone();
    if c.g.groups > 1 {
        kernels::fast::depthwise_conv2d_s8_in_place(&c.g, &c.q, &packed(c), &mut y);
    } else {
        kernels::fast::dot_conv2d_s8_in_place(&c.g, &c.q, &packed(c), &mut y);
    }
    y
}

conformance!(dot_conv2d_s8_in_place_matches_reference, conv_case_with(in_place_geom(false)).prop_map(|c| packable(c, false)),
    |c| reference: run_conv_with(kernels::conv2d_s8, &c), optimised: run_packed_conv_in_place(&c));
conformance!(depthwise_conv2d_s8_in_place_matches_reference, conv_case_with(in_place_geom(true)).prop_map(|c| packable(c, true)),
    |c| reference: run_conv_with(kernels::conv2d_s8, &c), optimised: run_packed_conv_in_place(&c));

/// The packers refuse what their kernels cannot compute exactly, so the compiler keeps such ops on the reference.
#[test]
fn packers_refuse_what_they_cannot_compute_exactly() {
    use kernels::fast::{
        depthwise_packed_len, dot_packed_len, pack_depthwise, pack_dot, q31_multiplier,
    };
    // Shifts: -16..=-1 have a SMMULR multiplier, the others none.
    assert_eq!(q31_multiplier(1 << 14, -1), Some(1 << 30));
    assert_eq!(q31_multiplier(1 << 14, -16), Some(1 << 15));
    assert_eq!(q31_multiplier(1 << 14, 0), None);
    assert_eq!(q31_multiplier(1 << 14, -17), None);
    let w = [1i8; 8];
    let mut buf = vec![0u8; dot_packed_len(4, 2)];
    assert!(pack_dot(&w, 4, 2, None, &[1 << 14; 2], &[-3; 2], &mut buf));
    assert!(!pack_dot(&w, 4, 2, None, &[1 << 14; 2], &[-3, 0], &mut buf));
    let mut buf = vec![0u8; depthwise_packed_len(2, 4)];
    let ok = |b: i32, buf: &mut [u8]| {
        pack_depthwise(&w, 2, 4, -128, Some(&[b; 4]), &[1 << 14; 4], &[-3; 4], buf)
    };
    assert!(ok(kernels::fast::MAX_FOLDED_BIAS, &mut buf));
    assert!(!ok(kernels::fast::MAX_FOLDED_BIAS + 1, &mut buf));
    // Channels must come in groups of 4.
    let mut buf3 = vec![0u8; depthwise_packed_len(2, 3)];
    assert!(!pack_depthwise(
        &w[..6],
        2,
        3,
        0,
        None,
        &[1 << 14; 3],
        &[-3; 3],
        &mut buf3
    ));
}

/// The kernels accept exactly the geometries the loader lets the compiler choose them for.
#[test]
fn optimised_kernels_say_which_geometries_they_take() {
    let g = ConvGeom {
        batch: 1,
        in_h: 4,
        in_w: 4,
        in_c: 8,
        out_h: 4,
        out_w: 4,
        out_c: 8,
        kernel_h: 3,
        kernel_w: 3,
        stride_h: 1,
        stride_w: 1,
        dilation_h: 1,
        dilation_w: 1,
        pad_top: 1,
        pad_left: 1,
        groups: 8,
    };
    assert!(kernels::fast::depthwise_fits(&g) && !kernels::fast::dot_conv_fits(&g));
    // Depthwise takes channels in groups of 4.
    assert!(!kernels::fast::depthwise_fits(&ConvGeom {
        in_c: 6,
        out_c: 6,
        groups: 6,
        ..g
    }));
    let dense = ConvGeom { groups: 1, ..g };
    assert!(kernels::fast::dot_conv_fits(&dense) && !kernels::fast::depthwise_fits(&dense));
    // 3 * 3 * 72 = 648 elements: one more row of channels than MAX_PATCH (640) allows.
    let huge = ConvGeom {
        in_c: 72,
        out_c: 8,
        groups: 1,
        ..g
    };
    assert!(!kernels::fast::dot_conv_fits(&huge));
    assert_eq!(
        (kernels::fast::MAX_PATCH, kernels::fast::MAX_FC_ROW),
        (640, 1024)
    );
    assert!(kernels::fast::dot_fc_fits(&FcGeom {
        rows: 1,
        in_features: 1024,
        out_features: 1
    }));
    assert!(!kernels::fast::dot_fc_fits(&FcGeom {
        rows: 1,
        in_features: 1025,
        out_features: 1
    }));
}

/// The optimised kernels' requantisation equals the reference's on every shift it takes (the others have no
/// `SMMULR` multiplier: the compiler keeps those ops on the reference kernel), on exact ties (where rounding
/// direction shows) and at the saturation edges.
#[test]
fn output_s8_q31_matches_output_s8_on_ties_and_edges() {
    let q = |zp: i32, lo: i8, hi: i8| QuantS8 {
        input_zero_point: 0,
        output_zero_point: zp,
        act_min: lo,
        act_max: hi,
    };
    let quants = [
        q(0, -128, 127),
        q(-128, -128, 127),
        q(127, -128, 127),
        q(5, -20, 100),
        q(0, 0, 0),
    ];
    let mut checked = 0u64;
    for shift in -31i8..=30 {
        let t = 15 - shift as i32;
        for m in [0i16, 1 << 14, (1 << 14) + 1, 21_845, i16::MAX] {
            let mut accs = vec![
                0i32,
                1,
                -1,
                2,
                -2,
                i32::MAX,
                i32::MIN,
                i32::MAX - 1,
                i32::MIN + 1,
            ];
            // Exact ties of acc * m / 2^t (m = 2^14: acc * 2^14 = (2k + 1) * 2^(t - 1)), and their neighbours.
            if m == 1 << 14 && (15..=45).contains(&t) {
                for k in [-3i64, -2, -1, 0, 1, 2, 3] {
                    let tie = (2 * k + 1) << (t - 15);
                    for d in [-1i64, 0, 1] {
                        if let Ok(a) = i32::try_from(tie + d) {
                            accs.push(a);
                        }
                    }
                }
            }
            for a in (-3000..3000).map(|i| i * 7919) {
                accs.push(a);
            }
            for &acc in &accs {
                for qq in &quants {
                    let want = kernels::output_s8(
                        acc,
                        (m as i32) << 16,
                        shift,
                        qq.output_zero_point,
                        qq.act_min,
                        qq.act_max,
                    );
                    let Some(m31) = kernels::fast::q31_multiplier(m, shift) else {
                        assert!(!(16..=31).contains(&t), "shift {shift} has a multiplier");
                        continue;
                    };
                    let got = kernels::fast::output_s8_q31(acc, m31, qq);
                    assert_eq!(got, want, "acc {acc} m {m} shift {shift} {qq:?}");
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 250_000, "{checked}");
}

// ---------------------------------------------------------------------------------------------------------------
// Optimised elementwise Add/Sub and pools (kernels::fast_elementwise): bit-exact to the reference kernels
// ---------------------------------------------------------------------------------------------------------------

use kiln_runtime::kernels::fast_elementwise;

/// Row-major strides of `out`, 0 on axes of extent 1 (as [`broadcast`] writes a full operand's).
fn full_strides(out: &[u32]) -> Dims {
    let mut s = vec![0u32; out.len()];
    let mut n = 1u32;
    for d in (0..out.len()).rev() {
        if out[d] > 1 {
            s[d] = n;
            n *= out[d];
        }
    }
    dims(&s)
}

/// [`binary_case`]'s ops made ones the table kernel takes: Add or Sub, no broadcasting (both operands take the
/// output's shape), the output shift brought into `-31..=-2` and a Sub's second-operand shift to at most 0.
/// Sometimes every multiplier is a power of two (`2^30`, shift `0` for the operands, any allowed for the output),
/// so that `acc * m / 2^t` ties often and a rounding off by one shows.
fn table_binary_case() -> impl Strategy<Value = (BinaryS8, Vec<i8>, Vec<i8>)> {
    (
        binary_case(),
        any::<bool>(),
        prop_oneof![2 => Just(None), 1 => (-31i8..=-2).prop_map(Some)],
    )
        .prop_flat_map(|((p, _, _), sub, pow2)| {
            let out: Vec<u32> = p.bcast.out.to_vec();
            let n = out.iter().product::<u32>() as usize;
            let mut p = BinaryS8 {
                kind: if sub {
                    BinaryKind::Sub
                } else {
                    BinaryKind::Add
                },
                bcast: Broadcast {
                    a_strides: full_strides(&out),
                    b_strides: full_strides(&out),
                    out: dims(&out),
                },
                kernel: KernelS8::Table,
                ..p
            };
            p.out_shift = p.out_shift.clamp(-31, -2);
            if sub {
                p.b_shift = p.b_shift.min(0);
            }
            if let Some(out_shift) = pow2 {
                (p.a_multiplier, p.a_shift, p.b_multiplier, p.b_shift) = (1 << 30, 0, 1 << 30, 0);
                (p.out_multiplier, p.out_shift) = (1 << 30, out_shift);
            }
            (Just(p), vec(any::<i8>(), n), vec(any::<i8>(), n))
        })
}

/// Add/Sub with the host builder's parameters (left shift 20, output shifts around -20: the kernel's fast
/// requantisation path), vectors of up to 300 elements.
fn host_add_case() -> impl Strategy<Value = (BinaryS8, Vec<i8>, Vec<i8>)> {
    (
        any::<bool>(),
        (quant(), quant(), quant()),
        act_range(),
        1usize..=300,
    )
        .prop_filter_map("host parameters", |(sub, (qa, qb, qo), (lo, hi), n)| {
            let kind = if sub {
                BinaryKind::Sub
            } else {
                BinaryKind::Add
            };
            let bc = Broadcast {
                out: dims(&[n as u32]),
                a_strides: dims(&[1]),
                b_strides: dims(&[1]),
            };
            let p = host::add_sub_s8(qa, qb, qo).ok()?.into_op(kind, bc, lo, hi);
            let p = BinaryS8 {
                kernel: KernelS8::Table,
                ..p
            };
            // (An output scale within 4x of the inputs' gives an output shift the table kernel leaves to the
            // reference.)
            fast_elementwise::add_table_fits(&p).then_some((p, n))
        })
        .prop_flat_map(|(p, n)| (Just(p), vec(any::<i8>(), n), vec(any::<i8>(), n)))
}

fn run_binary_with(
    kernel: fn(&BinaryS8, &[i8], &[i8], &mut [i8]),
    c: &(BinaryS8, Vec<i8>, Vec<i8>),
) -> Vec<i8> {
    let n: u32 = c.0.bcast.out.iter().product();
    let mut y = vec![0i8; n as usize];
    kernel(&c.0, &c.1, &c.2, &mut y);
    y
}

conformance!(binary_s8_table_matches_reference, table_binary_case(),
|c| reference: run_binary_with(kernels::binary_s8, &c), optimised: {
    assert!(fast_elementwise::add_table_fits(&c.0), "{:?}", c.0);
    run_binary_with(fast_elementwise::binary_s8_table, &c)
});
conformance!(binary_s8_table_in_place_matches_reference, table_binary_case(),
|c| reference: run_binary_with(kernels::binary_s8, &c), optimised: {
    // The first operand's buffer becomes the output.
    let mut y = c.1.clone();
    fast_elementwise::binary_s8_table_in_place(&c.0, &c.2, &mut y);
    y
});
conformance!(binary_s8_table_with_host_params_matches_reference, host_add_case(),
|c| reference: run_binary_with(kernels::binary_s8, &c), optimised: {
    assert!(fast_elementwise::add_table_fits(&c.0), "{:?}", c.0);
    run_binary_with(fast_elementwise::binary_s8_table, &c)
});

/// Global pools (what the fast average pool takes): up to 24 x 24 (one run of whole rows), some of more than 256
/// taps (the average's 16-bit lanes are widened every 256 taps); the MLPerf Tiny KWS (25 x 5 x 64) and IC
/// (8 x 8 x 64) pools; 4 to 20 channels in groups of 4.
fn global_pool_geom() -> impl Strategy<Value = Pool2d> {
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
    prop_oneof![
        2 => ((1u32..=2, 1u32..=24, 1u32..=24, 1u32..=5), any::<bool>(), zero_point())
            .prop_map(move |((b, h, w, q), include, zp)| global((b, h, w, 4 * q), include, zp)),
        1 => ((Just(1u32), 16u32..=24, 17u32..=25, 1u32..=2), any::<bool>(), zero_point())
            .prop_map(move |((b, h, w, q), include, zp)| global((b, h, w, 4 * q), include, zp)),
        1 => (prop_oneof![Just((1, 25, 5, 64)), Just((1, 8, 8, 64))], zero_point())
            .prop_map(move |(g, zp)| global(g, true, zp)),
    ]
}

/// Pool geometries the fast max pool takes (all valid ones with channels in groups of 4): [`pool_geom`]'s with 4
/// to 16 channels, and [`global_pool_geom`]'s.
fn fast_pool_geom() -> impl Strategy<Value = Pool2d> {
    prop_oneof![
        3 => (pool_geom(), 1u32..=4).prop_map(|(p, q)| Pool2d { channels: 4 * q, kernel: KernelS8::Fast, ..p }),
        4 => global_pool_geom(),
    ]
}

/// A pool geometry from `geom` and its input: random bytes, or all one value (often -128 or 127: sums at the
/// edges of the 16-bit lanes), or a mix of the extremes.
fn fast_pool_case(geom: impl Strategy<Value = Pool2d>) -> impl Strategy<Value = (Pool2d, Vec<i8>)> {
    geom.prop_flat_map(|p| {
        let n = (p.batch * p.in_h * p.in_w * p.channels) as usize;
        let input = prop_oneof![
            3 => vec(any::<i8>(), n),
            3 => prop_oneof![Just(-128i8), Just(127i8), any::<i8>()].prop_map(move |v| vec![v; n]),
            1 => vec(prop_oneof![Just(-128i8), Just(127i8)], n),
        ];
        (Just(p), input)
    })
}

fn run_pool_with(kernel: fn(&Pool2d, &[i8], &mut [i8]), c: &(Pool2d, Vec<i8>)) -> Vec<i8> {
    let p = &c.0;
    let mut y = vec![0i8; (p.batch * p.out_h * p.out_w * p.channels) as usize];
    kernel(p, &c.1, &mut y);
    y
}

conformance!(max_pool_s8_fast_matches_reference, fast_pool_case(fast_pool_geom()),
|c| reference: run_pool_with(kernels::max_pool_s8, &c), optimised: {
    assert!(fast_elementwise::max_pool_fast_fits(&c.0), "{:?}", c.0);
    run_pool_with(fast_elementwise::max_pool_s8_fast, &c)
});
conformance!(avg_pool_s8_fast_matches_reference, fast_pool_case(global_pool_geom()),
|c| reference: run_pool_with(kernels::avg_pool_s8, &c), optimised: {
    assert!(fast_elementwise::avg_pool_fast_fits(&c.0), "{:?}", c.0);
    run_pool_with(fast_elementwise::avg_pool_s8_fast, &c)
});

/// The table kernel takes Add/Sub without broadcasting only; the fast pools take windows up to `MAX_SUM_LEN`, the
/// average global ones only.
#[test]
fn fast_elementwise_kernels_say_what_they_take() {
    let p = |kind, a: &[u32], b: &[u32]| BinaryS8 {
        kind,
        bcast: Broadcast {
            out: dims(&[2, 1, 3]),
            a_strides: dims(a),
            b_strides: dims(b),
        },
        a_zero_point: 0,
        b_zero_point: 0,
        out_zero_point: 0,
        left_shift: 20,
        a_multiplier: 1 << 30,
        a_shift: 0,
        b_multiplier: 1 << 30,
        b_shift: 0,
        out_multiplier: 1 << 30,
        out_shift: -18,
        act_min: -128,
        act_max: 127,
        kernel: KernelS8::Table,
    };
    let fits = |kind, a: &[u32], b: &[u32]| fast_elementwise::add_table_fits(&p(kind, a, b));
    // The SMMLA requantisation's shifts only; a Sub's second operand scaled down (or kept), so it negates exactly.
    let full = p(BinaryKind::Sub, &[3, 0, 1], &[3, 0, 1]);
    assert!(fast_elementwise::add_table_fits(&full));
    for out_shift in [-1, 0, 5] {
        assert!(!fast_elementwise::add_table_fits(&BinaryS8 {
            out_shift,
            ..full.clone()
        }));
    }
    assert!(!fast_elementwise::add_table_fits(&BinaryS8 {
        b_shift: 1,
        ..full.clone()
    }));
    assert!(fast_elementwise::add_table_fits(&BinaryS8 {
        b_shift: 1,
        kind: BinaryKind::Add,
        ..full.clone()
    }));
    // A unit axis may carry any stride.
    assert!(
        fits(BinaryKind::Add, &[3, 0, 1], &[3, 3, 1])
            && fits(BinaryKind::Sub, &[3, 7, 1], &[3, 0, 1])
    );
    assert!(
        !fits(BinaryKind::Mul, &[3, 0, 1], &[3, 0, 1])
            && !fits(BinaryKind::PRelu, &[3, 0, 1], &[3, 0, 1])
    );
    // Broadcasting b along either axis, or a transposed a.
    assert!(
        !fits(BinaryKind::Add, &[3, 0, 1], &[0, 0, 1])
            && !fits(BinaryKind::Add, &[3, 0, 1], &[1, 0, 0])
    );
    assert!(
        !fits(BinaryKind::Add, &[1, 0, 2], &[3, 0, 1])
            && !fits(BinaryKind::Add, &[3, 1], &[3, 0, 1])
    );
    let pool = |kh, kw| Pool2d {
        batch: 1,
        in_h: kh,
        in_w: kw,
        channels: 4,
        out_h: 1,
        out_w: 1,
        kernel_h: kh,
        kernel_w: kw,
        stride_h: 1,
        stride_w: 1,
        pad_top: 0,
        pad_left: 0,
        count_include_pad: false,
        zero_point: 0,
        kernel: KernelS8::Fast,
    };
    let (max_fits, avg_fits) = (
        fast_elementwise::max_pool_fast_fits,
        fast_elementwise::avg_pool_fast_fits,
    );
    // `pool(kh, kw)` is a global pool.
    assert!(max_fits(&pool(1 << 12, 1 << 11)) && avg_fits(&pool(1 << 12, 1 << 11)));
    assert!(!max_fits(&pool(1 << 12, (1 << 11) + 1)) && !avg_fits(&pool(1 << 12, (1 << 11) + 1)));
    // Channels in groups of 4 only.
    for channels in [1, 3, 6, 65] {
        let p = Pool2d {
            channels,
            ..pool(3, 3)
        };
        assert!(!max_fits(&p) && !avg_fits(&p));
    }
    // The average takes global pools only: one window, the whole input, no padding.
    let windowed = Pool2d {
        in_h: 4,
        out_h: 2,
        ..pool(2, 2)
    };
    let padded = Pool2d {
        pad_top: 1,
        ..pool(2, 2)
    };
    assert!(max_fits(&windowed) && max_fits(&padded));
    assert!(!avg_fits(&windowed) && !avg_fits(&padded));
}
