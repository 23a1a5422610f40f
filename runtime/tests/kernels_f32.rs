//! f32 kernels against naive f64 references (straight nested loops, f64 math), within a tolerance scaled to the
//! magnitude of what was summed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kiln_runtime::format::*;
use kiln_runtime::kernels;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// Fails listing every position where `|got - want| > tol[i]`.
fn close(what: &str, got: &[f32], want: &[f64], tol: &[f64]) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.len(), want.len(), "{}: lengths differ", what);
    let bad: Vec<String> = (0..got.len())
        .filter(|&i| {
            !((got[i] as f64 - want[i]).abs() <= tol[i] || (got[i].is_nan() && want[i].is_nan()))
        })
        .map(|i| {
            format!(
                "  [{i}] got {}, expected {} (tolerance {})",
                got[i], want[i], tol[i]
            )
        })
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(TestCaseError::fail(format!(
            "{what}: {} of {} outputs off:\n{}",
            bad.len(),
            got.len(),
            bad.join("\n")
        )))
    }
}

fn dims(d: &[u32]) -> Dims {
    Dims::from_slice(d).unwrap()
}

fn value() -> impl Strategy<Value = f32> {
    -8.0f32..8.0
}

fn act() -> impl Strategy<Value = (f32, f32)> {
    prop_oneof![
        Just((f32::NEG_INFINITY, f32::INFINITY)),
        Just((0.0, f32::INFINITY)),
        Just((0.0, 6.0)),
        (-20.0f32..20.0, -20.0f32..20.0).prop_map(|(a, b)| (a.min(b), a.max(b))),
    ]
}

fn clampf(v: f64, lo: f32, hi: f32) -> f64 {
    v.max(lo as f64).min(hi as f64)
}

/// Tolerance for a sum of terms whose magnitudes add to `mag`.
fn sum_tol(mag: f64) -> f64 {
    1e-5 * mag + 1e-6
}

fn out_size(input: u32, k: u32, stride: u32, dil: u32, before: u32, after: u32) -> u32 {
    let dk = (k - 1) * dil + 1;
    ((input + before + after).max(dk) - dk) / stride + 1
}

fn conv_geom() -> impl Strategy<Value = ConvGeom> {
    (
        (1u32..=2, 1u32..=6, 1u32..=6),
        (any::<bool>(), 1u32..=3, 1u32..=3, 1u32..=3),
        (1u32..=3, 1u32..=3, 1u32..=2, 1u32..=2, 1u32..=2, 1u32..=2),
        (0u32..=2, 0u32..=2, 0u32..=2, 0u32..=2),
    )
        .prop_map(
            |(
                (batch, in_h, in_w),
                (dw_, groups, cin_g, cout_g),
                (kh, kw, sh, sw, dh, dw),
                (pt, pl, pb, pr),
            )| {
                let (groups, cin_g) = if dw_ { (cin_g, 1) } else { (groups, cin_g) };
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn conv2d_f32_matches_f64(
        (g, x, w, bias) in conv_geom().prop_flat_map(|g| {
            let n_in = (g.batch * g.in_h * g.in_w * g.in_c) as usize;
            let n_w = (g.out_c * g.kernel_h * g.kernel_w * (g.in_c / g.groups)) as usize;
            (Just(g.clone()), vec(value(), n_in), vec(value(), n_w), proptest::option::of(vec(value(), g.out_c as usize)))
        }),
        (lo, hi) in act(),
    ) {
        let mut y = vec![0f32; (g.batch * g.out_h * g.out_w * g.out_c) as usize];
        kernels::conv2d_f32(&g, &x, &w, bias.as_deref(), lo, hi, &mut y);
        let (cin_g, cout_g) = ((g.in_c / g.groups) as i64, (g.out_c / g.groups) as i64);
        let (mut want, mut tol) = (Vec::new(), Vec::new());
        for b in 0..g.batch as i64 {
            for oy in 0..g.out_h as i64 {
                for ox in 0..g.out_w as i64 {
                    for o in 0..g.out_c as i64 {
                        let mut acc = bias.as_ref().map_or(0.0, |b| b[o as usize] as f64);
                        let mut mag = acc.abs();
                        for ky in 0..g.kernel_h as i64 {
                            for kx in 0..g.kernel_w as i64 {
                                let iy = oy * g.stride_h as i64 + ky * g.dilation_h as i64 - g.pad_top as i64;
                                let ix = ox * g.stride_w as i64 + kx * g.dilation_w as i64 - g.pad_left as i64;
                                if iy < 0 || iy >= g.in_h as i64 || ix < 0 || ix >= g.in_w as i64 {
                                    continue;
                                }
                                for i in 0..cin_g {
                                    let ch = (o / cout_g) * cin_g + i;
                                    let xv = x[(((b * g.in_h as i64 + iy) * g.in_w as i64 + ix) * g.in_c as i64 + ch) as usize] as f64;
                                    let wv = w[(((o * g.kernel_h as i64 + ky) * g.kernel_w as i64 + kx) * cin_g + i) as usize] as f64;
                                    acc += xv * wv;
                                    mag += (xv * wv).abs();
                                }
                            }
                        }
                        want.push(clampf(acc, lo, hi));
                        tol.push(sum_tol(mag));
                    }
                }
            }
        }
        close("conv2d_f32", &y, &want, &tol)?;
    }

    #[test]
    fn fully_connected_f32_matches_f64(
        (rows, k, n, x, w, bias) in (1usize..=3, 1usize..=50, 1usize..=8).prop_flat_map(|(r, k, n)| {
            (Just(r), Just(k), Just(n), vec(value(), r * k), vec(value(), n * k), proptest::option::of(vec(value(), n)))
        }),
        (lo, hi) in act(),
    ) {
        let g = FcGeom { rows: rows as u32, in_features: k as u32, out_features: n as u32 };
        let mut y = vec![0f32; rows * n];
        kernels::fully_connected_f32(&g, &x, &w, bias.as_deref(), lo, hi, &mut y);
        let (mut want, mut tol) = (Vec::new(), Vec::new());
        for r in 0..rows {
            for j in 0..n {
                let mut acc = bias.as_ref().map_or(0.0, |b| b[j] as f64);
                let mut mag = acc.abs();
                for i in 0..k {
                    let t = x[r * k + i] as f64 * w[j * k + i] as f64;
                    acc += t;
                    mag += t.abs();
                }
                want.push(clampf(acc, lo, hi));
                tol.push(sum_tol(mag));
            }
        }
        close("fully_connected_f32", &y, &want, &tol)?;
    }

    #[test]
    fn binary_f32_matches_f64(
        (out, fa, fb) in (1usize..=4).prop_flat_map(|r| (vec(1u32..=4, r), vec(any::<bool>(), r), vec(any::<bool>(), r))),
        kind in prop_oneof![Just(BinaryKind::Add), Just(BinaryKind::Sub), Just(BinaryKind::Mul), Just(BinaryKind::PRelu)],
        (lo, hi) in act(),
        seed in vec(value(), 256),
    ) {
        let strides = |full: &[bool]| {
            let mut s = vec![0u32; out.len()];
            let mut n = 1;
            for d in (0..out.len()).rev() {
                if full[d] {
                    s[d] = n;
                    n *= out[d];
                }
            }
            (s, n as usize)
        };
        let ((sa, na), (sb, nb)) = (strides(&fa), strides(&fb));
        let a: Vec<f32> = (0..na).map(|i| seed[i % 256]).collect();
        let b: Vec<f32> = (0..nb).map(|i| seed[(i * 7 + 3) % 256]).collect();
        let p = BinaryF32 { kind, bcast: Broadcast { out: dims(&out), a_strides: dims(&sa), b_strides: dims(&sb) }, act_min: lo, act_max: hi };
        let total: usize = out.iter().map(|&d| d as usize).product();
        let mut y = vec![0f32; total];
        kernels::binary_f32(&p, &a, &b, &mut y);
        let (mut want, mut tol) = (Vec::new(), Vec::new());
        for flat in 0..total {
            let (mut rest, mut ia, mut ib) = (flat, 0usize, 0usize);
            for d in (0..out.len()).rev() {
                let i = rest % out[d] as usize;
                rest /= out[d] as usize;
                ia += i * sa[d] as usize;
                ib += i * sb[d] as usize;
            }
            let (x, z) = (a[ia] as f64, b[ib] as f64);
            let v = match kind {
                BinaryKind::Add => x + z,
                BinaryKind::Sub => x - z,
                BinaryKind::Mul => x * z,
                BinaryKind::PRelu => if x > 0.0 { x } else { x * z },
            };
            want.push(clampf(v, lo, hi));
            tol.push(1e-6 * (x.abs() + z.abs() + (x * z).abs()));
        }
        close(&format!("binary_f32 {kind:?}"), &y, &want, &tol)?;
    }

    #[test]
    fn unary_f32_matches_f64(
        x in vec(prop_oneof![-30.0f32..30.0, -3.0f32..3.0], 1..100),
        (a, b) in (-3.0f32..3.0, -3.0f32..3.0),
        which in 0usize..6,
    ) {
        let (op, f): (UnaryF32, Box<dyn Fn(f64) -> f64>) = match which {
            0 => (UnaryF32::Relu, Box::new(|v: f64| v.max(0.0))),
            1 => (UnaryF32::Clip { min: a.min(b), max: a.max(b) }, Box::new(move |v: f64| v.max(a.min(b) as f64).min(a.max(b) as f64))),
            2 => (UnaryF32::LeakyRelu { alpha: a }, Box::new(move |v: f64| if v >= 0.0 { v } else { a as f64 * v })),
            3 => (UnaryF32::Elu { alpha: a }, Box::new(move |v: f64| if v >= 0.0 { v } else { a as f64 * (v.exp() - 1.0) })),
            4 => (UnaryF32::Sigmoid, Box::new(|v: f64| 1.0 / (1.0 + (-v).exp()))),
            _ => (UnaryF32::Tanh, Box::new(|v: f64| v.tanh())),
        };
        let mut y = vec![0f32; x.len()];
        kernels::unary_f32(op, &x, &mut y);
        let want: Vec<f64> = x.iter().map(|&v| f(v as f64)).collect();
        let tol: Vec<f64> = want.iter().map(|w| 2e-7 * w.abs() + 1e-7).collect();
        close(&format!("unary_f32 {op:?}"), &y, &want, &tol)?;
    }

    #[test]
    fn softmax_f32_matches_f64(
        (outer, len, inner, x) in (1usize..=3, 1usize..=30, 1usize..=3)
            .prop_flat_map(|(o, l, i)| (Just(o), Just(l), Just(i), vec(-30.0f32..30.0, o * l * i))),
        log in any::<bool>(),
    ) {
        let mut y = vec![0f32; x.len()];
        kernels::softmax_f32([outer as u32, len as u32, inner as u32], log, &x, &mut y);
        let mut want = vec![0f64; x.len()];
        for o in 0..outer {
            for j in 0..inner {
                let at = |i: usize| (o * len + i) * inner + j;
                let max = (0..len).map(|i| x[at(i)] as f64).fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = (0..len).map(|i| (x[at(i)] as f64 - max).exp()).sum();
                for i in 0..len {
                    let v = x[at(i)] as f64 - max;
                    want[at(i)] = if log { v - sum.ln() } else { v.exp() / sum };
                }
            }
        }
        let tol: Vec<f64> = want.iter().map(|w| 1e-5 * w.abs() + 1e-6).collect();
        close(if log { "log_softmax_f32" } else { "softmax_f32" }, &y, &want, &tol)?;
    }

    #[test]
    fn pools_f32_match_f64(
        (p, x) in (
            (1u32..=2, 1u32..=6, 1u32..=6, 1u32..=3),
            (1u32..=3, 1u32..=3, 1u32..=2, 1u32..=2),
            (0u32..3, 0u32..3, 0u32..3, 0u32..3),
            any::<bool>(),
        ).prop_map(|((batch, in_h, in_w, channels), (kh, kw, sh, sw), (pt, pl, pb, pr), include)| {
            let (pt, pb, pl, pr) = (pt % kh, pb % kh, pl % kw, pr % kw);
            Pool2d {
                batch, in_h, in_w, channels,
                out_h: out_size(in_h, kh, sh, 1, pt, pb),
                out_w: out_size(in_w, kw, sw, 1, pl, pr),
                kernel_h: kh, kernel_w: kw, stride_h: sh, stride_w: sw, pad_top: pt, pad_left: pl,
                count_include_pad: include, zero_point: 0, kernel: kiln_runtime::format::KernelS8::Reference,
            }
        }).prop_flat_map(|p| {
            let n = (p.batch * p.in_h * p.in_w * p.channels) as usize;
            (Just(p), vec(value(), n))
        })
    ) {
        let n = (p.batch * p.out_h * p.out_w * p.channels) as usize;
        let (mut want_max, mut want_avg, mut tol) = (Vec::new(), Vec::new(), Vec::new());
        for b in 0..p.batch as i64 {
            for oy in 0..p.out_h as i64 {
                for ox in 0..p.out_w as i64 {
                    for c in 0..p.channels as i64 {
                        let (mut max, mut sum, mut mag, mut inside) = (f64::NEG_INFINITY, 0f64, 0f64, 0usize);
                        for ky in 0..p.kernel_h as i64 {
                            for kx in 0..p.kernel_w as i64 {
                                let iy = oy * p.stride_h as i64 + ky - p.pad_top as i64;
                                let ix = ox * p.stride_w as i64 + kx - p.pad_left as i64;
                                if iy < 0 || iy >= p.in_h as i64 || ix < 0 || ix >= p.in_w as i64 {
                                    continue;
                                }
                                let v = x[(((b * p.in_h as i64 + iy) * p.in_w as i64 + ix) * p.channels as i64 + c) as usize] as f64;
                                max = max.max(v);
                                sum += v;
                                mag += v.abs();
                                inside += 1;
                            }
                        }
                        let count = if p.count_include_pad { (p.kernel_h * p.kernel_w) as usize } else { inside };
                        want_max.push(max);
                        want_avg.push(sum / count as f64);
                        tol.push(sum_tol(mag));
                    }
                }
            }
        }
        let mut y = vec![0f32; n];
        kernels::max_pool_f32(&p, &x, &mut y);
        close("max_pool_f32", &y, &want_max, &vec![0.0; n])?;
        kernels::avg_pool_f32(&p, &x, &mut y);
        close("avg_pool_f32", &y, &want_avg, &tol)?;
    }

    #[test]
    fn reduce_mean_f32_matches_f64(
        (d, axes, x) in (1usize..=5)
            .prop_flat_map(|r| (vec(1u32..=4, r), 0u8..(1 << r)))
            .prop_flat_map(|(d, axes)| {
                let n: u32 = d.iter().product();
                (Just(d), Just(axes), vec(value(), n as usize))
            })
    ) {
        let du: Vec<usize> = d.iter().map(|&v| v as usize).collect();
        let kept: Vec<usize> = (0..du.len()).filter(|&i| axes & (1 << i) == 0).collect();
        let n_out: usize = kept.iter().map(|&i| du[i]).product();
        let count = x.len() / n_out;
        let (mut sums, mut mags) = (vec![0f64; n_out], vec![0f64; n_out]);
        for (flat, &v) in x.iter().enumerate() {
            let mut rest = flat;
            let mut idx = vec![0; du.len()];
            for a in (0..du.len()).rev() {
                idx[a] = rest % du[a];
                rest /= du[a];
            }
            let o = kept.iter().fold(0, |acc, &a| acc * du[a] + idx[a]);
            sums[o] += v as f64;
            mags[o] += (v as f64).abs();
        }
        let want: Vec<f64> = sums.iter().map(|s| s / count as f64).collect();
        let tol: Vec<f64> = mags.iter().map(|&m| sum_tol(m / count as f64)).collect();
        let mut y = vec![0f32; n_out];
        kernels::reduce_mean_f32(&ReduceMeanF32 { dims: dims(&d), axes }, &x, &mut y);
        close("reduce_mean_f32", &y, &want, &tol)?;
    }
}
