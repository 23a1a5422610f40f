//! `check` rejects what it must, with the right error; checked ops evaluate like the kernels; random `OpDef`s
//! either fail `check` or evaluate without panicking.
//!
//! Test code only: `ops/mod.rs` declares this module under #[cfg(test)].
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::Cell;
use std::vec;
use std::vec::Vec;

use heapless::Vec as HVec;
use proptest::collection::vec as pvec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::{check, eval, OpIo};
use crate::error::{Error, Field};
use crate::format::*;
use crate::kernels;

// ---- fixtures ----

/// 4-aligned bytes (backed by `u32`s).
struct Buf(Vec<u32>, usize);

impl Buf {
    fn new(len: usize) -> Buf {
        Buf(vec![0; len.div_ceil(4)], len)
    }
    fn from_bytes(b: &[u8]) -> Buf {
        let mut buf = Buf::new(b.len());
        buf.bytes_mut().copy_from_slice(b);
        buf
    }
    fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.0)[..self.1]
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut(&mut self.0)[..self.1]
    }
}

fn arena(offset: u32, len: u32) -> Operand {
    Operand {
        space: Space::Arena,
        offset,
        len,
    }
}

fn op(kind: OpKind, inputs: &[Operand], output: Operand) -> OpDef<'static> {
    OpDef {
        name: "t",
        kind,
        inputs: HVec::from_slice(inputs).unwrap(),
        output,
        output_tensor: 0,
        macs: 0,
    }
}

fn dims(d: &[u32]) -> Dims {
    Dims::from_slice(d).unwrap()
}

/// A blob builder: appends 4-aligned items, returns their spans.
#[derive(Default)]
struct Blob(Vec<u8>);

impl Blob {
    fn push(&mut self, bytes: &[u8]) -> Span {
        while self.0.len() & 3 != 0 {
            self.0.push(0);
        }
        let span = Span {
            offset: self.0.len() as u32,
            len: bytes.len() as u32,
        };
        self.0.extend_from_slice(bytes);
        span
    }
    fn i32s(&mut self, v: &[i32]) -> Span {
        self.push(bytemuck::cast_slice(v))
    }
    fn i16s(&mut self, v: &[i16]) -> Span {
        self.push(bytemuck::cast_slice(v))
    }
    fn i8s(&mut self, v: &[i8]) -> Span {
        self.push(bytemuck::cast_slice(v))
    }
    fn buf(&self) -> Buf {
        Buf::from_bytes(&self.0)
    }
}

/// Runs a checked op on `inputs` (each copied to its own aligned buffer), returns the output bytes.
fn run(op: &OpDef, blob: &[u8], inputs: &[&[u8]]) -> Vec<u8> {
    check(0, op, blob).unwrap();
    let bufs: Vec<Buf> = inputs.iter().map(|b| Buf::from_bytes(b)).collect();
    let mut out = Buf::new(op.output.len as usize);
    let io = OpIo {
        inputs: bufs.iter().map(|b| b.bytes()).collect(),
        blob,
        output: out.bytes_mut(),
        in_place: false,
    };
    eval(op, io).unwrap();
    out.bytes().to_vec()
}

fn conv_geom() -> ConvGeom {
    ConvGeom {
        batch: 1,
        in_h: 4,
        in_w: 4,
        in_c: 2,
        out_h: 4,
        out_w: 4,
        out_c: 3,
        kernel_h: 3,
        kernel_w: 3,
        stride_h: 1,
        stride_w: 1,
        dilation_h: 1,
        dilation_w: 1,
        pad_top: 1,
        pad_left: 1,
        groups: 1,
    }
}

/// A valid int8 conv (4x4x2 -> 4x4x3, 3x3, same padding), its blob and an input.
fn conv_s8() -> (OpDef<'static>, Blob, Vec<u8>) {
    let mut blob = Blob::default();
    let weights: Vec<i8> = (0..3 * 9 * 2).map(|i| (i * 37 % 255 - 127) as i8).collect();
    let weights = blob.i8s(&weights);
    let bias = Some(blob.i32s(&[100, -2000, 30_000]));
    let multipliers = blob.i16s(&[1 << 14, 22_888, 30_518]);
    let shifts = blob.i8s(&[-6, -7, -8]);
    let p = ConvS8 {
        geom: conv_geom(),
        weights,
        bias,
        requant: PerChannel {
            multipliers,
            shifts,
        },
        input_zero_point: -3,
        output_zero_point: 5,
        act_min: -100,
        act_max: 120,
        kernel: KernelS8::Reference,
    };
    let input: Vec<u8> = (0..32).map(|i| (i * 53 % 256) as u8).collect();
    (
        op(OpKind::Conv2dS8(p), &[arena(0, 32)], arena(32, 48)),
        blob,
        input,
    )
}

fn expect_err(op: &OpDef, blob: &[u8], want: Error) {
    assert_eq!(check(7, op, blob), Err(want), "{:?}", op.kind);
}

fn with_conv(f: impl FnOnce(&mut ConvS8, &mut OpDef<'static>)) -> (OpDef<'static>, Buf) {
    let (mut o, blob, _) = conv_s8();
    let OpKind::Conv2dS8(mut p) = o.kind.clone() else {
        unreachable!()
    };
    f(&mut p, &mut o);
    o.kind = OpKind::Conv2dS8(p);
    (o, blob.buf())
}

// ---- ops evaluate like the kernels ----

#[test]
fn conv_s8_op_matches_kernel() {
    let (o, blob, input) = conv_s8();
    let blob = blob.buf();
    let got = run(&o, blob.bytes(), &[&input]);
    let OpKind::Conv2dS8(p) = &o.kind else {
        unreachable!()
    };
    let b = blob.bytes();
    let sl = |s: Span| &b[s.offset as usize..(s.offset + s.len) as usize];
    let mut want = vec![0i8; 48];
    kernels::conv2d_s8(
        &p.geom,
        &kernels::QuantS8 {
            input_zero_point: -3,
            output_zero_point: 5,
            act_min: -100,
            act_max: 120,
        },
        kernels::Requant {
            multipliers: bytemuck::cast_slice(sl(p.requant.multipliers)),
            shifts: bytemuck::cast_slice(sl(p.requant.shifts)),
        },
        bytemuck::cast_slice(&input),
        bytemuck::cast_slice(sl(p.weights)),
        Some(bytemuck::cast_slice(sl(p.bias.unwrap()))),
        &mut want,
    );
    assert_eq!(got, bytemuck::cast_slice::<i8, u8>(&want));
    assert!(want.iter().any(|&v| v != want[0]), "degenerate fixture");
}

#[test]
#[cfg(feature = "std")] // host tables
fn softmax_ops_match_kernel() {
    for log in [false, true] {
        let h = if log {
            crate::host::log_softmax_s8(0.05, 1.0, crate::host::LOG_SOFTMAX_OUTPUT).unwrap()
        } else {
            crate::host::softmax_s8(0.05, 1.0).unwrap()
        };
        let mut blob = Blob::default();
        let span = blob.push(&h.exp_table_bytes());
        let p = h.clone().into_op(2, 5, 3, span);
        let mode = super::softmax_mode(&p).unwrap();
        let o = op(OpKind::SoftmaxS8(p), &[arena(0, 30)], arena(32, 30));
        let input: Vec<i8> = (0..30).map(|i| (i * 71 % 256) as u8 as i8).collect();
        let got = run(&o, &blob.0, &[bytemuck::cast_slice(&input)]);
        let mut want = vec![0i8; 30];
        kernels::softmax_s8(
            [2, 5, 3],
            mode,
            &h.exp_table,
            h.output.zero_point,
            &input,
            &mut want,
        );
        assert_eq!(got, bytemuck::cast_slice::<i8, u8>(&want), "log {log}");
    }
}

#[test]
fn f32_ops_run_through_eval() {
    // Add with a broadcast row constant from the blob.
    let mut blob = Blob::default();
    let row = blob.push(bytemuck::cast_slice(&[1.0f32, 2.0, 3.0]));
    let p = BinaryF32 {
        kind: BinaryKind::Mul,
        bcast: Broadcast {
            out: dims(&[2, 3]),
            a_strides: dims(&[3, 1]),
            b_strides: dims(&[0, 1]),
        },
        act_min: f32::NEG_INFINITY,
        act_max: f32::INFINITY,
    };
    let b_operand = Operand {
        space: Space::Blob,
        offset: row.offset,
        len: row.len,
    };
    let o = op(
        OpKind::BinaryF32(p),
        &[arena(0, 24), b_operand],
        arena(32, 24),
    );
    let x = [1.0f32, 1.0, 1.0, 2.0, 2.0, 2.0];
    let got = run(
        &o,
        &blob.0,
        &[
            bytemuck::cast_slice(&x),
            bytemuck::cast_slice(&[1.0f32, 2.0, 3.0]),
        ],
    );
    assert_eq!(
        bytemuck::cast_slice::<u8, f32>(&got),
        &[1.0, 2.0, 3.0, 2.0, 4.0, 6.0]
    );

    let o = op(
        OpKind::UnaryF32(UnaryF32::Relu),
        &[arena(0, 8)],
        arena(8, 8),
    );
    let got = run(&o, &[], &[bytemuck::cast_slice(&[-1.0f32, 2.0])]);
    assert_eq!(bytemuck::cast_slice::<u8, f32>(&got), &[0.0, 2.0]);
}

#[test]
fn movement_ops_run_through_eval() {
    let t = TransposeParams {
        dims: dims(&[2, 3]),
        perm: dims(&[1, 0]),
        elem_bytes: 1,
    };
    let o = op(OpKind::Transpose(t), &[arena(0, 6)], arena(8, 6));
    assert_eq!(run(&o, &[], &[&[0, 1, 2, 3, 4, 5]]), [0, 3, 1, 4, 2, 5]);
    let c = ConcatParams {
        outer: 1,
        inner_bytes: 2,
        parts: HVec::from_slice(&[1, 1]).unwrap(),
    };
    let o = op(OpKind::Concat(c), &[arena(0, 2), arena(4, 2)], arena(8, 4));
    assert_eq!(run(&o, &[], &[&[1, 2], &[3, 4]]), [1, 2, 3, 4]);
    let o = op(OpKind::Copy, &[arena(0, 3)], arena(4, 3));
    assert_eq!(run(&o, &[], &[&[9, 8, 7]]), [9, 8, 7]);
}

#[test]
fn conversions_run_through_eval_and_refuse_bad_params() {
    let q = Quant {
        scale: 0.5,
        zero_point: 10,
    };
    let o = op(OpKind::DequantizeS8(q), &[arena(0, 3)], arena(4, 12));
    let got = run(&o, &[], &[&[10u8, 12, (-128i8) as u8]]);
    assert_eq!(bytemuck::cast_slice::<u8, f32>(&got), &[0.0, 1.0, -69.0]);
    let o = op(OpKind::QuantizeS8(q), &[arena(0, 12)], arena(12, 3));
    let got = run(&o, &[], &[bytemuck::cast_slice(&[0.0f32, 1.25, -1000.0])]);
    assert_eq!(got, [10u8, 13, (-128i8) as u8]);

    for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        let q = Quant {
            scale: bad,
            zero_point: 0,
        };
        let o = op(OpKind::QuantizeS8(q), &[arena(0, 12)], arena(12, 3));
        assert!(
            matches!(
                check(0, &o, &[]),
                Err(Error::BadParam {
                    field: Field::Params,
                    ..
                })
            ),
            "{bad}"
        );
    }
    let q = Quant {
        scale: 1.0,
        zero_point: 128,
    };
    let o = op(OpKind::DequantizeS8(q), &[arena(0, 3)], arena(4, 12));
    expect_err(
        &o,
        &[],
        Error::BadParam {
            op: 7,
            field: Field::Params,
            value: 128,
        },
    );
    // The f32 side must be four bytes per int8 element.
    let q = Quant {
        scale: 1.0,
        zero_point: 0,
    };
    let o = op(OpKind::DequantizeS8(q), &[arena(0, 3)], arena(4, 8));
    expect_err(
        &o,
        &[],
        Error::SizeMismatch {
            op: 7,
            field: Field::Output,
            expected: 12,
            found: 8,
        },
    );
    let o = op(OpKind::QuantizeS8(q), &[arena(0, 10)], arena(12, 3));
    expect_err(
        &o,
        &[],
        Error::SizeMismatch {
            op: 7,
            field: Field::Input(0),
            expected: 12,
            found: 10,
        },
    );
}

// ---- check rejects ----

#[test]
fn rejects_a_kernel_the_geometry_does_not_allow() {
    // The test conv has one group: the dot-product kernel may run it, but only on weights packed for it (its
    // reference-layout weights are refused by size), and the depthwise kernel may not run it at all.
    let (o, blob) = with_conv(|p, _| p.kernel = KernelS8::Dot);
    let OpKind::Conv2dS8(c) = &o.kind else {
        unreachable!()
    };
    let g = &c.geom;
    let packed = crate::kernels::fast::dot_packed_len(
        (g.kernel_h * g.kernel_w * g.in_c) as usize,
        g.out_c as usize,
    );
    expect_err(
        &o,
        blob.bytes(),
        Error::SizeMismatch {
            op: 7,
            field: Field::Weights,
            expected: packed as u32,
            found: c.weights.len,
        },
    );
    let (o, blob) = with_conv(|p, _| p.kernel = KernelS8::Depthwise);
    expect_err(
        &o,
        blob.bytes(),
        Error::BadParam {
            op: 7,
            field: Field::Kernel,
            value: KernelS8::Depthwise as i32,
        },
    );
}

#[test]
fn rejects_zero_stride_and_bad_groups() {
    let (o, blob) = with_conv(|p, _| p.geom.stride_h = 0);
    expect_err(
        &o,
        blob.bytes(),
        Error::BadParam {
            op: 7,
            field: Field::Params,
            value: 0,
        },
    );
    let (o, blob) = with_conv(|p, _| p.geom.dilation_w = 0);
    expect_err(
        &o,
        blob.bytes(),
        Error::BadParam {
            op: 7,
            field: Field::Params,
            value: 0,
        },
    );
    let (o, blob) = with_conv(|p, _| p.geom.groups = 2); // out_c = 3 not divisible
    expect_err(
        &o,
        blob.bytes(),
        Error::BadParam {
            op: 7,
            field: Field::Params,
            value: 2,
        },
    );
}

#[test]
fn rejects_wrong_sizes() {
    let (o, blob) = with_conv(|_, o| o.inputs[0].len = 31);
    expect_err(
        &o,
        blob.bytes(),
        Error::SizeMismatch {
            op: 7,
            field: Field::Input(0),
            expected: 32,
            found: 31,
        },
    );
    let (o, blob) = with_conv(|_, o| o.output.len = 52);
    expect_err(
        &o,
        blob.bytes(),
        Error::SizeMismatch {
            op: 7,
            field: Field::Output,
            expected: 48,
            found: 52,
        },
    );
    let (o, blob) = with_conv(|p, _| p.weights.len -= 1);
    expect_err(
        &o,
        blob.bytes(),
        Error::SizeMismatch {
            op: 7,
            field: Field::Weights,
            expected: 54,
            found: 53,
        },
    );
    let (o, blob) = with_conv(|p, _| p.requant.shifts.len = 2);
    expect_err(
        &o,
        blob.bytes(),
        Error::SizeMismatch {
            op: 7,
            field: Field::Shifts,
            expected: 3,
            found: 2,
        },
    );
    // Multipliers are i16: 2 bytes per channel.
    let (o, blob) = with_conv(|p, _| p.requant.multipliers.len = 3);
    expect_err(
        &o,
        blob.bytes(),
        Error::SizeMismatch {
            op: 7,
            field: Field::Multipliers,
            expected: 6,
            found: 3,
        },
    );
    // Shapes whose size overflows are a size mismatch too, never an overflow.
    let (o, blob) = with_conv(|p, _| {
        p.geom.batch = u32::MAX;
        p.geom.in_c = u32::MAX;
    });
    expect_err(
        &o,
        blob.bytes(),
        Error::SizeMismatch {
            op: 7,
            field: Field::Input(0),
            expected: u32::MAX,
            found: 32,
        },
    );
}

#[test]
fn rejects_spans_outside_the_blob() {
    let (o, blob) = with_conv(|p, _| p.weights.offset = 1 << 20);
    let limit = blob.bytes().len() as u32;
    expect_err(
        &o,
        blob.bytes(),
        Error::OutOfBounds {
            op: 7,
            field: Field::Weights,
            end: (1 << 20) + 54,
            limit,
        },
    );
    let (o, blob) = with_conv(|p, _| {
        p.bias = Some(Span {
            offset: u32::MAX - 2,
            len: 12,
        })
    });
    expect_err(
        &o,
        blob.bytes(),
        Error::OutOfBounds {
            op: 7,
            field: Field::Bias,
            end: u32::MAX,
            limit,
        },
    );
}

#[test]
fn rejects_misaligned_spans() {
    let (o, blob) = with_conv(|p, _| {
        let b = p.bias.as_mut().unwrap();
        b.offset += 1;
    });
    let off = match &o.kind {
        OpKind::Conv2dS8(p) => p.bias.unwrap().offset,
        _ => unreachable!(),
    };
    expect_err(
        &o,
        blob.bytes(),
        Error::Misaligned {
            op: 7,
            field: Field::Bias,
            offset: off,
            align: 4,
        },
    );
    let (o, blob) = with_conv(|p, _| p.requant.multipliers.offset += 1);
    let off = match &o.kind {
        OpKind::Conv2dS8(p) => p.requant.multipliers.offset,
        _ => unreachable!(),
    };
    expect_err(
        &o,
        blob.bytes(),
        Error::Misaligned {
            op: 7,
            field: Field::Multipliers,
            offset: off,
            align: 2,
        },
    );
}

#[test]
fn rejects_bad_requantisation() {
    // Shift 31 is out of range.
    let (o, mut blob) = with_conv(|_, _| {});
    let OpKind::Conv2dS8(p) = &o.kind else {
        unreachable!()
    };
    let s = p.requant.shifts.offset as usize;
    blob.bytes_mut()[s + 1] = 31;
    expect_err(
        &o,
        blob.bytes(),
        Error::BadParam {
            op: 7,
            field: Field::Shifts,
            value: 31,
        },
    );
    // A multiplier below 2^14 (and not 0), or negative; 0 and the bounds are fine.
    let cases = [
        (12345i16, true),
        (-1, true),
        (i16::MIN, true),
        ((1 << 14) - 1, true),
        (1 << 14, false),
        (i16::MAX, false),
        (0, false),
    ];
    for (m16, rejected) in cases {
        let (o, mut blob) = with_conv(|_, _| {});
        let OpKind::Conv2dS8(p) = &o.kind else {
            unreachable!()
        };
        let m = p.requant.multipliers.offset as usize;
        blob.bytes_mut()[m + 2..m + 4].copy_from_slice(&m16.to_le_bytes());
        if rejected {
            expect_err(
                &o,
                blob.bytes(),
                Error::BadParam {
                    op: 7,
                    field: Field::Multipliers,
                    value: m16 as i32,
                },
            );
        } else {
            assert_eq!(check(7, &o, blob.bytes()), Ok(()), "{m16}");
        }
    }
    // Zero points and activation range.
    let (o, blob) = with_conv(|p, _| p.input_zero_point = 128);
    expect_err(
        &o,
        blob.bytes(),
        Error::BadParam {
            op: 7,
            field: Field::Params,
            value: 128,
        },
    );
    let (o, blob) = with_conv(|p, _| (p.act_min, p.act_max) = (10, 9));
    expect_err(
        &o,
        blob.bytes(),
        Error::BadParam {
            op: 7,
            field: Field::Params,
            value: 10,
        },
    );
}

#[test]
fn rejects_dot_products_that_could_overflow() {
    let k = kernels::MAX_DOT_LEN + 1;
    let mut blob = Blob::default();
    let weights = blob.push(&vec![0u8; k as usize]);
    let multipliers = blob.i16s(&[1 << 14]);
    let shifts = blob.i8s(&[0]);
    let p = FullyConnectedS8 {
        geom: FcGeom {
            rows: 1,
            in_features: k,
            out_features: 1,
        },
        weights,
        bias: None,
        requant: PerChannel {
            multipliers,
            shifts,
        },
        input_zero_point: 0,
        output_zero_point: 0,
        act_min: -128,
        act_max: 127,
        kernel: KernelS8::Reference,
    };
    let o = op(
        OpKind::FullyConnectedS8(p),
        &[arena(0, k)],
        arena(k.next_multiple_of(4), 1),
    );
    expect_err(
        &o,
        &blob.0,
        Error::BadParam {
            op: 7,
            field: Field::Weights,
            value: k as i32,
        },
    );
}

#[test]
fn rejects_bad_shapes_and_params_of_other_ops() {
    let bp = |value| Error::BadParam {
        op: 7,
        field: Field::Params,
        value,
    };
    // Arity.
    let o = op(OpKind::Copy, &[], arena(0, 4));
    expect_err(
        &o,
        &[],
        Error::Arity {
            op: 7,
            expected: 1,
            found: 0,
        },
    );
    // Transpose: not a permutation, rank 0.
    let t = TransposeParams {
        dims: dims(&[2, 3]),
        perm: dims(&[1, 1]),
        elem_bytes: 1,
    };
    expect_err(
        &op(OpKind::Transpose(t), &[arena(0, 6)], arena(8, 6)),
        &[],
        bp(1),
    );
    let t = TransposeParams {
        dims: dims(&[]),
        perm: dims(&[]),
        elem_bytes: 1,
    };
    expect_err(
        &op(OpKind::Transpose(t), &[arena(0, 1)], arena(8, 1)),
        &[],
        bp(0),
    );
    // Reduce: axes beyond the rank.
    let r = ReduceMeanF32 {
        dims: dims(&[2, 3]),
        axes: 0b100,
    };
    expect_err(
        &op(OpKind::ReduceMeanF32(r), &[arena(0, 24)], arena(24, 24)),
        &[],
        bp(4),
    );
    // Pool: padding as large as the kernel; a last window starting past the input.
    let pool = Pool2d {
        batch: 1,
        in_h: 4,
        in_w: 4,
        channels: 1,
        out_h: 2,
        out_w: 2,
        kernel_h: 2,
        kernel_w: 2,
        stride_h: 2,
        stride_w: 2,
        pad_top: 0,
        pad_left: 0,
        count_include_pad: false,
        zero_point: 0,
        kernel: crate::format::KernelS8::Reference,
    };
    let o = |p: &Pool2d| op(OpKind::AvgPoolS8(p.clone()), &[arena(0, 16)], arena(16, 4));
    assert_eq!(check(7, &o(&pool), &[]), Ok(()));
    expect_err(
        &o(&Pool2d {
            pad_top: 2,
            ..pool.clone()
        }),
        &[],
        bp(2),
    );
    expect_err(
        &o(&Pool2d {
            out_h: 3,
            ..pool.clone()
        }),
        &[],
        bp(3),
    );
    expect_err(
        &o(&Pool2d {
            stride_w: 0,
            ..pool.clone()
        }),
        &[],
        bp(0),
    );
    expect_err(
        &o(&Pool2d {
            zero_point: -129,
            ..pool.clone()
        }),
        &[],
        bp(-129),
    );
    // Slice past the axis; pad with 0-byte elements; concat with no parts.
    let s = SliceParams {
        outer: 1,
        axis_len: 4,
        start: 3,
        len: 2,
        inner_bytes: 1,
    };
    expect_err(
        &op(OpKind::Slice(s), &[arena(0, 4)], arena(4, 2)),
        &[],
        bp(3),
    );
    let p = PadParams {
        dims: dims(&[2]),
        before: dims(&[1]),
        after: dims(&[1]),
        elem_bytes: 0,
        value: 0,
    };
    expect_err(&op(OpKind::Pad(p), &[arena(0, 2)], arena(4, 4)), &[], bp(0));
    let c = ConcatParams {
        outer: 1,
        inner_bytes: 1,
        parts: HVec::new(),
    };
    expect_err(&op(OpKind::Concat(c), &[], arena(0, 0)), &[], bp(0));
    // Binary: left shift beyond 23, a misaligned f32 operand, an input too small for its strides.
    let b = BinaryS8 {
        kind: BinaryKind::Add,
        bcast: Broadcast {
            out: dims(&[4]),
            a_strides: dims(&[1]),
            b_strides: dims(&[0]),
        },
        a_zero_point: 0,
        b_zero_point: 0,
        out_zero_point: 0,
        left_shift: 24,
        a_multiplier: 1 << 30,
        a_shift: 0,
        b_multiplier: 1 << 30,
        b_shift: 0,
        out_multiplier: 1 << 30,
        out_shift: 0,
        act_min: -128,
        act_max: 127,
        kernel: crate::format::KernelS8::Reference,
    };
    let ins = [arena(0, 4), arena(4, 1)];
    expect_err(
        &op(OpKind::BinaryS8(b.clone()), &ins, arena(8, 4)),
        &[],
        bp(24),
    );
    let b = BinaryS8 {
        left_shift: 20,
        ..b
    };
    assert_eq!(
        check(7, &op(OpKind::BinaryS8(b.clone()), &ins, arena(8, 4)), &[]),
        Ok(())
    );
    let small = [arena(0, 3), arena(4, 1)];
    expect_err(
        &op(OpKind::BinaryS8(b), &small, arena(8, 4)),
        &[],
        Error::SizeMismatch {
            op: 7,
            field: Field::Input(0),
            expected: 4,
            found: 3,
        },
    );
    let f = BinaryF32 {
        kind: BinaryKind::Add,
        bcast: Broadcast {
            out: dims(&[1]),
            a_strides: dims(&[1]),
            b_strides: dims(&[1]),
        },
        act_min: 0.0,
        act_max: 1.0,
    };
    let ins = [
        Operand {
            space: Space::Blob,
            offset: 2,
            len: 4,
        },
        arena(4, 4),
    ];
    expect_err(
        &op(OpKind::BinaryF32(f.clone()), &ins, arena(8, 4)),
        &[0; 8],
        Error::Misaligned {
            op: 7,
            field: Field::Input(0),
            offset: 2,
            align: 4,
        },
    );
    let nan = BinaryF32 {
        act_min: f32::NAN,
        ..f
    };
    let ins = [arena(0, 4), arena(4, 4)];
    expect_err(
        &op(OpKind::BinaryF32(nan), &ins, arena(8, 4)),
        &[],
        bp(f32::NAN.to_bits() as i32),
    );
}

#[test]
#[cfg(feature = "std")] // host tables
fn rejects_bad_softmax_tables_and_params() {
    let h = crate::host::softmax_s8(0.1, 1.0).unwrap();
    let mut blob = Blob::default();
    let span = blob.push(&h.exp_table_bytes());
    let good = h.into_op(1, 4, 1, span);
    let o = |p: &SoftmaxS8| op(OpKind::SoftmaxS8(p.clone()), &[arena(0, 4)], arena(4, 4));
    assert_eq!(check(7, &o(&good), &blob.0), Ok(()));
    let bp = |field, value| Error::BadParam {
        op: 7,
        field,
        value,
    };
    // params must be empty for softmax, [c1 >= 0, c2 >= 0] for LogSoftmax.
    let mut p = good.clone();
    p.params.push(1).unwrap();
    expect_err(&o(&p), &blob.0, bp(Field::Params, 1));
    p.log = true;
    p.params.push(-1).unwrap();
    expect_err(&o(&p), &blob.0, bp(Field::Params, 2));
    // table[0] must be 2^24, no entry above it.
    let mut bad = blob.0.clone();
    bad[0] = 1;
    expect_err(&o(&good), &bad, bp(Field::Table, 0));
    let mut bad = blob.0.clone();
    bad[4 * 9 + 3] = 2;
    expect_err(&o(&good), &bad, bp(Field::Table, 9));
}

// ---- fuzz: random OpDefs either fail check or evaluate without panicking ----

const FUZZ_BLOB: usize = 16384;
const MAX_FUZZ_BYTES: u32 = 4096;
/// Blob regions (see [`fuzz_blob`]).
const R_MULT: u32 = 0;
const R_SMALL: u32 = 4096;
const R_EXP: u32 = 8192;
const R_NOISE: u32 = 12288;

/// Regions: valid per-channel (`i16`) multipliers (`0x4000..=0x7fff`, also read as `i32` bias), small bytes
/// (valid shifts), valid exp table entries (2^24), noise.
fn fuzz_blob(seed: u64) -> Buf {
    let mut b = Buf::new(FUZZ_BLOB);
    let mut x = seed | 1;
    for (i, w) in b.0.iter_mut().enumerate() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *w = match (i * 4) as u32 {
            o if o < R_SMALL => 0x4000_4000 | (x as u32 & 0x3fff_3fff),
            o if o < R_EXP => u32::from_le_bytes([0, 1, 0xfe, ((x % 62) as i32 - 31) as u8]),
            o if o < R_NOISE => 1 << 24,
            _ => x as u32,
        };
    }
    b
}

/// Mostly small sizes, sometimes 0 or huge.
fn small() -> impl Strategy<Value = u32> {
    prop_oneof![16 => 1u32..5, 1 => Just(0u32), 1 => 5u32..40, 1 => Just(u32::MAX), 1 => any::<u32>()]
}

fn small_vec(len: usize) -> impl Strategy<Value = Vec<u32>> {
    pvec(small(), len)
}

fn zp() -> impl Strategy<Value = i32> {
    prop_oneof![12 => -128i32..=127, 1 => any::<i32>(), 1 => Just(128)]
}

fn mult() -> impl Strategy<Value = (i32, i8)> {
    prop_oneof![
        8 => ((1i32 << 30)..=i32::MAX, -31i8..=30),
        1 => Just((0, 0)),
        1 => (any::<i32>(), any::<i8>()),
    ]
}

/// A span (length 0: `check`'s size errors repair it) near `base`, sometimes anywhere.
fn span_in(base: u32) -> impl Strategy<Value = Span> {
    prop_oneof![
        8 => (0u32..16).prop_map(move |k| Span { offset: base + 4 * k, len: 0 }),
        1 => (prop_oneof![0u32..FUZZ_BLOB as u32, any::<u32>()], 0u32..64).prop_map(|(offset, len)| Span { offset, len }),
    ]
}

fn f32_range() -> impl Strategy<Value = (f32, f32)> {
    prop_oneof![
        3 => Just((f32::NEG_INFINITY, f32::INFINITY)),
        1 => (any::<f32>(), any::<f32>()),
    ]
}

fn act_s8() -> impl Strategy<Value = (i8, i8)> {
    prop_oneof![6 => any::<(i8, i8)>().prop_map(|(a, b)| (a.min(b), a.max(b))), 1 => any::<(i8, i8)>()]
}

/// Output size along an axis for a window `k` (dilated) with padding before/after.
fn fuzz_out(input: u32, dk: u32, stride: u32, before: u32, after: u32) -> u32 {
    ((input + before + after).max(dk) - dk) / stride + 1
}

fn conv_geom_any() -> impl Strategy<Value = ConvGeom> {
    let consistent = (
        (1u32..=2, 1u32..=5, 1u32..=5),
        (any::<bool>(), 1u32..=3, 1u32..=3, 1u32..=3),
        (1u32..=3, 1u32..=3, 1u32..=2, 1u32..=2, 1u32..=2, 1u32..=2),
        (0u32..=3, 0u32..=3, 0u32..=3, 0u32..=3),
    )
        .prop_map(
            |(
                (batch, in_h, in_w),
                (dw, groups, cin_g, cout_g),
                (kh, kw, sh, sw, dh, dwi),
                (pt, pl, pb, pr),
            )| {
                let (groups, cin_g) = if dw { (cin_g, 1) } else { (groups, cin_g) };
                ConvGeom {
                    batch,
                    in_h,
                    in_w,
                    in_c: groups * cin_g,
                    out_h: fuzz_out(in_h, (kh - 1) * dh + 1, sh, pt, pb),
                    out_w: fuzz_out(in_w, (kw - 1) * dwi + 1, sw, pl, pr),
                    out_c: groups * cout_g,
                    kernel_h: kh,
                    kernel_w: kw,
                    stride_h: sh,
                    stride_w: sw,
                    dilation_h: dh,
                    dilation_w: dwi,
                    pad_top: pt,
                    pad_left: pl,
                    groups,
                }
            },
        );
    let random = (
        small_vec(7),
        small_vec(6),
        (
            prop_oneof![Just(0u32), small()],
            prop_oneof![Just(0u32), small()],
            small(),
        ),
    )
        .prop_map(|(a, b, (pad_top, pad_left, groups))| ConvGeom {
            batch: a[0],
            in_h: a[1],
            in_w: a[2],
            in_c: a[3],
            out_h: a[4],
            out_w: a[5],
            out_c: a[6],
            kernel_h: b[0],
            kernel_w: b[1],
            stride_h: b[2],
            stride_w: b[3],
            dilation_h: b[4],
            dilation_w: b[5],
            pad_top,
            pad_left,
            groups,
        });
    prop_oneof![3 => consistent, 1 => random]
}

fn pool_any() -> impl Strategy<Value = Pool2d> {
    let consistent = (
        (1u32..=2, 1u32..=6, 1u32..=6, 1u32..=3),
        (1u32..=4, 1u32..=4, 1u32..=3, 1u32..=3),
        (0u32..4, 0u32..4, 0u32..4, 0u32..4),
        (any::<bool>(), zp()),
    )
        .prop_map(
            |(
                (batch, in_h, in_w, channels),
                (kh, kw, sh, sw),
                (pt, pl, pb, pr),
                (inc, zero_point),
            )| {
                let (pt, pl, pb, pr) = (pt % kh, pl % kw, pb % kh, pr % kw);
                Pool2d {
                    batch,
                    in_h,
                    in_w,
                    channels,
                    out_h: fuzz_out(in_h, kh, sh, pt, pb),
                    out_w: fuzz_out(in_w, kw, sw, pl, pr),
                    kernel_h: kh,
                    kernel_w: kw,
                    stride_h: sh,
                    stride_w: sw,
                    pad_top: pt,
                    pad_left: pl,
                    count_include_pad: inc,
                    zero_point,
                    kernel: crate::format::KernelS8::Reference,
                }
            },
        );
    let random = (
        small_vec(6),
        small_vec(4),
        (
            prop_oneof![Just(0u32), small()],
            prop_oneof![Just(0u32), small()],
        ),
        (any::<bool>(), zp()),
    )
        .prop_map(|(a, b, (pad_top, pad_left), (inc, zero_point))| Pool2d {
            batch: a[0],
            in_h: a[1],
            in_w: a[2],
            channels: a[3],
            out_h: a[4],
            out_w: a[5],
            kernel_h: b[0],
            kernel_w: b[1],
            stride_h: b[2],
            stride_w: b[3],
            pad_top,
            pad_left,
            count_include_pad: inc,
            zero_point,
            kernel: crate::format::KernelS8::Reference,
        });
    prop_oneof![3 => consistent, 1 => random]
}

fn binary_kind() -> impl Strategy<Value = BinaryKind> {
    prop_oneof![
        Just(BinaryKind::Add),
        Just(BinaryKind::Sub),
        Just(BinaryKind::Mul),
        Just(BinaryKind::PRelu)
    ]
}

fn bcast_any() -> impl Strategy<Value = Broadcast> {
    // Consistent: each input full or broadcast along each axis, row-major strides.
    let consistent = (1usize..=4)
        .prop_flat_map(|r| {
            (
                pvec(0u32..=4, r),
                pvec(any::<bool>(), r),
                pvec(any::<bool>(), r),
            )
        })
        .prop_map(|(out, fa, fb)| {
            let strides = |full: &[bool]| {
                let mut s = vec![0u32; out.len()];
                let mut n = 1u32;
                for d in (0..out.len()).rev() {
                    if full[d] {
                        s[d] = n;
                        n *= out[d].max(1);
                    }
                }
                s
            };
            Broadcast {
                out: dims(&out),
                a_strides: dims(&strides(&fa)),
                b_strides: dims(&strides(&fb)),
            }
        });
    let random = (1usize..=4)
        .prop_flat_map(|r| {
            (
                Just(r),
                prop_oneof![8 => Just(r), 1 => 0usize..=6],
                prop_oneof![8 => Just(r), 1 => 0usize..=6],
            )
        })
        .prop_flat_map(|(r, na, nb)| {
            let stride = || prop_oneof![Just(0u32), small()];
            (pvec(small(), r), pvec(stride(), na), pvec(stride(), nb)).prop_map(|(o, a, b)| {
                Broadcast {
                    out: dims(&o),
                    a_strides: dims(&a),
                    b_strides: dims(&b),
                }
            })
        });
    prop_oneof![3 => consistent, 1 => random]
}

/// A rank (mostly `r`, sometimes another) for a list that must match rank `r`.
fn rank_like(r: usize) -> impl Strategy<Value = usize> {
    prop_oneof![8 => Just(r), 1 => 0usize..=6]
}

/// Any kernel choice, allowed by the geometry or not: the loader must refuse the ones it does not allow.
fn any_kernel() -> impl Strategy<Value = KernelS8> {
    prop_oneof![
        Just(KernelS8::Reference),
        Just(KernelS8::Dot),
        Just(KernelS8::Depthwise)
    ]
}

fn op_kind() -> impl Strategy<Value = OpKind> {
    let rq = || {
        (span_in(R_MULT), span_in(R_SMALL)).prop_map(|(multipliers, shifts)| PerChannel {
            multipliers,
            shifts,
        })
    };
    let fc_geom = || {
        (small(), small(), small()).prop_map(|(rows, i, o)| FcGeom {
            rows,
            in_features: i,
            out_features: o,
        })
    };
    let weights = || span_in(R_SMALL);
    let bias = || proptest::option::of(prop_oneof![span_in(R_MULT), span_in(R_NOISE)]);
    let f32_data = || prop_oneof![span_in(R_EXP), span_in(R_NOISE)];
    let conv_s8 = (
        conv_geom_any(),
        weights(),
        bias(),
        rq(),
        zp(),
        zp(),
        act_s8(),
        any_kernel(),
    )
        .prop_map(
            |(geom, weights, bias, requant, izp, ozp, (act_min, act_max), kernel)| {
                OpKind::Conv2dS8(ConvS8 {
                    geom,
                    weights,
                    bias,
                    requant,
                    input_zero_point: izp,
                    output_zero_point: ozp,
                    act_min,
                    act_max,
                    kernel,
                })
            },
        );
    let conv_f32 = (
        conv_geom_any(),
        f32_data(),
        proptest::option::of(f32_data()),
        f32_range(),
    )
        .prop_map(|(geom, weights, bias, (lo, hi))| {
            OpKind::Conv2dF32(ConvF32 {
                geom,
                weights,
                bias,
                act_min: lo,
                act_max: hi,
            })
        });
    let fc_s8 = (
        fc_geom(),
        weights(),
        bias(),
        rq(),
        zp(),
        zp(),
        act_s8(),
        any_kernel(),
    )
        .prop_map(
            |(geom, weights, bias, requant, izp, ozp, (act_min, act_max), kernel)| {
                OpKind::FullyConnectedS8(FullyConnectedS8 {
                    geom,
                    weights,
                    bias,
                    requant,
                    input_zero_point: izp,
                    output_zero_point: ozp,
                    act_min,
                    act_max,
                    kernel,
                })
            },
        );
    let fc_f32 = (
        fc_geom(),
        f32_data(),
        proptest::option::of(f32_data()),
        f32_range(),
    )
        .prop_map(|(geom, weights, bias, (lo, hi))| {
            OpKind::FullyConnectedF32(FullyConnectedF32 {
                geom,
                weights,
                bias,
                act_min: lo,
                act_max: hi,
            })
        });
    let bin_s8 = (
        binary_kind(),
        bcast_any(),
        (zp(), zp(), zp()),
        prop_oneof![4 => Just(20u8), 2 => 0u8..=23, 1 => any::<u8>()],
        (mult(), mult(), mult()),
        act_s8(),
    )
        .prop_map(
            |(
                kind,
                bcast,
                (za, zb, zo),
                ls,
                ((am, ash), (bm, bsh), (om, osh)),
                (act_min, act_max),
            )| {
                OpKind::BinaryS8(BinaryS8 {
                    kind,
                    bcast,
                    a_zero_point: za,
                    b_zero_point: zb,
                    out_zero_point: zo,
                    left_shift: ls,
                    a_multiplier: am,
                    a_shift: ash,
                    b_multiplier: bm,
                    b_shift: bsh,
                    out_multiplier: om,
                    out_shift: osh,
                    act_min,
                    act_max,
                    kernel: crate::format::KernelS8::Reference,
                })
            },
        );
    let bin_f32 = (binary_kind(), bcast_any(), f32_range()).prop_map(|(kind, bcast, (lo, hi))| {
        OpKind::BinaryF32(BinaryF32 {
            kind,
            bcast,
            act_min: lo,
            act_max: hi,
        })
    });
    let unary = prop_oneof![
        Just(UnaryF32::Relu),
        Just(UnaryF32::Sigmoid),
        Just(UnaryF32::Tanh),
        any::<(f32, f32)>().prop_map(|(min, max)| UnaryF32::Clip { min, max }),
        any::<f32>().prop_map(|alpha| UnaryF32::LeakyRelu { alpha }),
        any::<f32>().prop_map(|alpha| UnaryF32::Elu { alpha }),
    ]
    .prop_map(OpKind::UnaryF32);
    let softmax_s8 = (
        (small(), small(), small()),
        any::<bool>(),
        span_in(R_EXP),
        zp(),
    )
        .prop_flat_map(|(shape, log, table, z)| {
            let params = if log {
                prop_oneof![
                    6 => (0..i32::MAX, 0..i32::MAX).prop_map(|(a, b)| vec![a, b]),
                    1 => pvec(any::<i32>(), 0..=8),
                ]
                .boxed()
            } else {
                prop_oneof![6 => Just(Vec::new()), 1 => pvec(any::<i32>(), 0..=8)].boxed()
            };
            (Just((shape, log, table, z)), params)
        })
        .prop_map(|(((outer, len, inner), log, exp_table, z), params)| {
            OpKind::SoftmaxS8(SoftmaxS8 {
                outer,
                len,
                inner,
                log,
                exp_table,
                params: HVec::from_slice(&params).unwrap(),
                output_zero_point: z,
            })
        });
    let softmax_f32 =
        ((small(), small(), small()), any::<bool>()).prop_map(|((outer, len, inner), log)| {
            OpKind::SoftmaxF32(SoftmaxF32 {
                outer,
                len,
                inner,
                log,
            })
        });
    let pools = (pool_any(), 0u8..4).prop_map(|(p, k)| match k {
        0 => OpKind::MaxPoolS8(p),
        1 => OpKind::MaxPoolF32(p),
        2 => OpKind::AvgPoolS8(p),
        _ => OpKind::AvgPoolF32(p),
    });
    let reduce = (0usize..=6)
        .prop_flat_map(|r| {
            let axes = prop_oneof![4 => 0u8..=((1u16 << r) - 1) as u8, 1 => any::<u8>()];
            (small_vec(r), axes, zp(), zp(), mult(), any::<bool>())
        })
        .prop_map(|(d, axes, zi, zo, (m, s), f)| {
            let dims = dims(&d);
            if f {
                OpKind::ReduceMeanF32(ReduceMeanF32 { dims, axes })
            } else {
                OpKind::ReduceMeanS8(ReduceMeanS8 {
                    dims,
                    axes,
                    input_zero_point: zi,
                    output_zero_point: zo,
                    multiplier: m,
                    shift: s,
                })
            }
        });
    let pad = (0usize..=6)
        .prop_flat_map(|r| {
            let edge = || prop_oneof![4 => 0u32..3, 1 => small()];
            (
                small_vec(r),
                rank_like(r).prop_flat_map(move |n| pvec(edge(), n)),
                rank_like(r).prop_flat_map(move |n| pvec(edge(), n)),
            )
        })
        .prop_flat_map(|(d, b, a)| {
            (
                Just((d, b, a)),
                prop_oneof![6 => 1u8..=4, 1 => Just(0u8), 1 => 5u8..=255],
                any::<u32>(),
            )
        })
        .prop_map(|((d, b, a), elem_bytes, value)| {
            OpKind::Pad(PadParams {
                dims: dims(&d),
                before: dims(&b),
                after: dims(&a),
                elem_bytes,
                value,
            })
        });
    let concat = (
        small(),
        small(),
        prop_oneof![6 => pvec(0u32..5, 1..=8), 1 => pvec(small(), 0..=8)],
    )
        .prop_map(|(outer, inner_bytes, parts)| {
            OpKind::Concat(ConcatParams {
                outer,
                inner_bytes,
                parts: HVec::from_slice(&parts).unwrap(),
            })
        });
    let slice = (
        small(),
        small(),
        small(),
        any::<(u32, u32)>(),
        any::<bool>(),
    )
        .prop_map(|(outer, axis_len, inner_bytes, (x, y), fit)| {
            let (start, len) = if fit && axis_len > 0 {
                let start = x % axis_len.saturating_add(1);
                (start, y % (axis_len - start).saturating_add(1))
            } else {
                (x, y)
            };
            OpKind::Slice(SliceParams {
                outer,
                axis_len,
                start,
                len,
                inner_bytes,
            })
        });
    let transpose = (
        1usize..=6,
        prop_oneof![6 => 1u8..=8, 1 => Just(0u8)],
        any::<bool>(),
    )
        .prop_flat_map(|(r, eb, shuffle)| {
            let perm = if shuffle {
                Just((0..r as u32).collect::<Vec<_>>())
                    .prop_shuffle()
                    .boxed()
            } else {
                rank_like(r).prop_flat_map(|n| pvec(0u32..=6, n)).boxed()
            };
            (small_vec(r), perm).prop_map(move |(d, p)| {
                OpKind::Transpose(TransposeParams {
                    dims: dims(&d),
                    perm: dims(&p),
                    elem_bytes: eb,
                })
            })
        });
    let conversion = (
        prop_oneof![
            4 => 1e-4f32..10.0,
            1 => Just(0.0f32),
            1 => Just(-1.0f32),
            1 => Just(f32::NAN),
            1 => Just(f32::INFINITY)
        ],
        prop_oneof![4 => zp(), 1 => Just(200i32)],
        any::<bool>(),
    )
        .prop_map(|(scale, zero_point, to_int8)| {
            let q = Quant { scale, zero_point };
            if to_int8 {
                OpKind::QuantizeS8(q)
            } else {
                OpKind::DequantizeS8(q)
            }
        });
    prop_oneof![
        conv_s8,
        conv_f32,
        fc_s8,
        fc_f32,
        bin_s8,
        bin_f32,
        prop_oneof![span_in(R_SMALL), span_in(R_NOISE)]
            .prop_map(|table| OpKind::LookupS8(LookupS8 { table })),
        unary,
        softmax_s8,
        softmax_f32,
        pools,
        reduce,
        pad,
        concat,
        slice,
        transpose,
        Just(OpKind::Copy),
        conversion,
    ]
}

/// The blob span of `field` in `kind`, to repair its length.
fn span_mut(kind: &mut OpKind, field: Field) -> Option<&mut Span> {
    match (kind, field) {
        (OpKind::Conv2dS8(p), Field::Weights) => Some(&mut p.weights),
        (OpKind::Conv2dS8(p), Field::Bias) => p.bias.as_mut(),
        (OpKind::Conv2dS8(p), Field::Multipliers) => Some(&mut p.requant.multipliers),
        (OpKind::Conv2dS8(p), Field::Shifts) => Some(&mut p.requant.shifts),
        (OpKind::Conv2dF32(p), Field::Weights) => Some(&mut p.weights),
        (OpKind::Conv2dF32(p), Field::Bias) => p.bias.as_mut(),
        (OpKind::FullyConnectedS8(p), Field::Weights) => Some(&mut p.weights),
        (OpKind::FullyConnectedS8(p), Field::Bias) => p.bias.as_mut(),
        (OpKind::FullyConnectedS8(p), Field::Multipliers) => Some(&mut p.requant.multipliers),
        (OpKind::FullyConnectedS8(p), Field::Shifts) => Some(&mut p.requant.shifts),
        (OpKind::FullyConnectedF32(p), Field::Weights) => Some(&mut p.weights),
        (OpKind::FullyConnectedF32(p), Field::Bias) => p.bias.as_mut(),
        (OpKind::LookupS8(p), Field::Table) => Some(&mut p.table),
        (OpKind::SoftmaxS8(p), Field::Table) => Some(&mut p.exp_table),
        _ => None,
    }
}

#[test]
fn random_op_defs_fail_check_or_eval_without_panicking() {
    let kinds = 23;
    let evaluated: Vec<Cell<u32>> = (0..kinds).map(|_| Cell::new(0)).collect();
    let index = |k: &OpKind| {
        let names = [
            "conv2d_s8",
            "conv2d_f32",
            "fully_connected_s8",
            "fully_connected_f32",
            "binary_s8",
            "binary_f32",
            "lookup_s8",
            "unary_f32",
            "softmax_s8",
            "softmax_f32",
            "max_pool_s8",
            "max_pool_f32",
            "avg_pool_s8",
            "avg_pool_f32",
            "reduce_mean_s8",
            "reduce_mean_f32",
            "pad",
            "concat",
            "slice",
            "transpose",
            "copy",
            "quantize_s8",
            "dequantize_s8",
        ];
        names.iter().position(|&n| n == k.name()).unwrap()
    };
    let cases = std::env::var("KILN_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        op_kind(),
        prop_oneof![4 => 1usize..=2, 1 => 0usize..=8].prop_flat_map(|n| {
            pvec(
                (
                    prop_oneof![4 => Just(0u32), 1 => Just(4), 1 => 0u32..8],
                    0u32..64,
                ),
                n,
            )
        }),
        prop_oneof![4 => Just(0u32), 1 => 0u32..8],
        any::<u64>(),
        any::<u64>(),
    );
    runner
        .run(
            &strategy,
            |(kind, inputs, out_offset, blob_seed, data_seed)| {
                let blob = fuzz_blob(blob_seed);
                let inputs: Vec<Operand> = inputs
                    .iter()
                    .map(|&(offset, len)| arena(offset, len))
                    .collect();
                let mut o = op(kind, &inputs, arena(out_offset, 0));
                // Repair sizes `check` complains about, so that the fuzzer reaches `eval` often.
                for _ in 0..16 {
                    match check(3, &o, blob.bytes()) {
                        Ok(()) => {
                            let bufs: Vec<Buf> = o
                                .inputs
                                .iter()
                                .enumerate()
                                .map(|(i, x)| {
                                    let mut b = Buf::new(x.len as usize);
                                    let mut s = data_seed
                                        .wrapping_add(i as u64)
                                        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                                        | 1;
                                    for byte in b.bytes_mut() {
                                        s ^= s << 13;
                                        s ^= s >> 7;
                                        s ^= s << 17;
                                        *byte = s as u8;
                                    }
                                    b
                                })
                                .collect();
                            let mut out = Buf::new(o.output.len as usize);
                            let io = OpIo {
                                inputs: bufs.iter().map(|b| b.bytes()).collect(),
                                blob: blob.bytes(),
                                output: out.bytes_mut(),
                                in_place: false,
                            };
                            prop_assert_eq!(eval(&o, io), Ok(()));
                            let k = index(&o.kind);
                            evaluated[k].set(evaluated[k].get() + 1);
                            return Ok(());
                        }
                        Err(Error::SizeMismatch {
                            field, expected, ..
                        }) if expected <= MAX_FUZZ_BYTES => match field {
                            Field::Input(i) => o.inputs[i as usize].len = expected,
                            Field::Output => o.output.len = expected,
                            f => match span_mut(&mut o.kind, f) {
                                Some(s) => s.len = expected,
                                None => return Ok(()),
                            },
                        },
                        Err(Error::Arity { expected, .. })
                            if (expected as usize) <= MAX_OP_INPUTS =>
                        {
                            o.inputs.resize(expected as usize, arena(0, 0)).unwrap();
                        }
                        Err(_) => return Ok(()),
                    }
                }
                Ok(())
            },
        )
        .unwrap();
    let counts: Vec<u32> = evaluated.iter().map(Cell::get).collect();
    std::println!("ops evaluated per kind: {counts:?}");
    // Every kind must have been reached at least once, or the fuzzer tests nothing for it.
    assert!(
        counts.iter().all(|&c| c > 0),
        "some op kinds were never evaluated: {counts:?}"
    );
}

// ---- optimised elementwise Add/Sub and pool kernels ----

/// An int8 Add over 8 elements, `b` with strides `b_strides` (of shape `[2, 4]`), and its operands' sizes.
fn add_s8(kind: BinaryKind, b_strides: &[u32], kernel: KernelS8) -> (OpDef<'static>, u32) {
    let b_len = 1 + b_strides[0] + 3 * b_strides[1];
    let p = BinaryS8 {
        kind,
        bcast: Broadcast {
            out: dims(&[2, 4]),
            a_strides: dims(&[4, 1]),
            b_strides: dims(b_strides),
        },
        a_zero_point: -3,
        b_zero_point: 7,
        out_zero_point: 2,
        left_shift: 20,
        a_multiplier: 1_518_500_250,
        a_shift: 0,
        b_multiplier: 1 << 30,
        b_shift: -1,
        out_multiplier: 1_431_655_765,
        out_shift: -18,
        act_min: -100,
        act_max: 120,
        kernel,
    };
    (
        op(
            OpKind::BinaryS8(p),
            &[arena(0, 8), arena(8, b_len)],
            arena(16, 8),
        ),
        b_len,
    )
}

/// A 4x4x4 pool (2x2 windows, stride 2) of `kind`'s element type with `kernel`.
fn pool_op(kind: fn(Pool2d) -> OpKind, elem: u32, kernel: KernelS8) -> OpDef<'static> {
    let p = Pool2d {
        batch: 1,
        in_h: 4,
        in_w: 4,
        channels: 4,
        out_h: 2,
        out_w: 2,
        kernel_h: 2,
        kernel_w: 2,
        stride_h: 2,
        stride_w: 2,
        pad_top: 0,
        pad_left: 0,
        count_include_pad: false,
        zero_point: -5,
        kernel,
    };
    op(kind(p), &[arena(0, 64 * elem)], arena(64 * elem, 16 * elem))
}

/// [`pool_op`]'s input pooled whole: a global pool (the only average pool the fast kernel takes).
fn global_pool_op(kind: fn(Pool2d) -> OpKind, kernel: KernelS8) -> OpDef<'static> {
    let OpKind::MaxPoolS8(p) = pool_op(OpKind::MaxPoolS8, 1, kernel).kind else {
        unreachable!()
    };
    let p = Pool2d {
        out_h: 1,
        out_w: 1,
        kernel_h: 4,
        kernel_w: 4,
        stride_h: 4,
        stride_w: 4,
        ..p
    };
    op(kind(p), &[arena(0, 64)], arena(64, 4))
}

#[test]
fn refuses_table_and_fast_kernels_where_they_do_not_fit() {
    let refused = |kernel: KernelS8| Error::BadParam {
        op: 7,
        field: Field::Kernel,
        value: kernel as i32,
    };
    // The table kernel: Add/Sub without broadcasting only.
    for kind in [BinaryKind::Add, BinaryKind::Sub] {
        assert_eq!(
            check(7, &add_s8(kind, &[4, 1], KernelS8::Table).0, &[]),
            Ok(())
        );
        // b broadcast along the rows, then along the columns.
        expect_err(
            &add_s8(kind, &[0, 1], KernelS8::Table).0,
            &[],
            refused(KernelS8::Table),
        );
        expect_err(
            &add_s8(kind, &[1, 0], KernelS8::Table).0,
            &[],
            refused(KernelS8::Table),
        );
        assert_eq!(
            check(7, &add_s8(kind, &[0, 1], KernelS8::Reference).0, &[]),
            Ok(())
        );
    }
    for kind in [BinaryKind::Mul, BinaryKind::PRelu] {
        expect_err(
            &add_s8(kind, &[4, 1], KernelS8::Table).0,
            &[],
            refused(KernelS8::Table),
        );
    }
    for kernel in [KernelS8::Dot, KernelS8::Depthwise, KernelS8::Fast] {
        expect_err(
            &add_s8(BinaryKind::Add, &[4, 1], kernel).0,
            &[],
            refused(kernel),
        );
    }
    // The fast pools: int8 only; the average global pools only.
    for kind in [OpKind::MaxPoolS8, OpKind::AvgPoolS8] {
        assert_eq!(check(7, &global_pool_op(kind, KernelS8::Fast), &[]), Ok(()));
        for kernel in [KernelS8::Dot, KernelS8::Depthwise, KernelS8::Table] {
            expect_err(&pool_op(kind, 1, kernel), &[], refused(kernel));
        }
    }
    assert_eq!(
        check(7, &pool_op(OpKind::MaxPoolS8, 1, KernelS8::Fast), &[]),
        Ok(())
    );
    expect_err(
        &pool_op(OpKind::AvgPoolS8, 1, KernelS8::Fast),
        &[],
        refused(KernelS8::Fast),
    );
    for kind in [OpKind::MaxPoolF32, OpKind::AvgPoolF32] {
        assert_eq!(
            check(7, &pool_op(kind, 4, KernelS8::Reference), &[]),
            Ok(())
        );
        for kernel in [
            KernelS8::Fast,
            KernelS8::Dot,
            KernelS8::Depthwise,
            KernelS8::Table,
        ] {
            expect_err(&pool_op(kind, 4, kernel), &[], refused(kernel));
        }
    }
}

#[test]
fn table_and_fast_kernels_evaluate_like_the_reference() {
    let bytes =
        |n: u32, seed: u32| -> Vec<u8> { (0..n).map(|i| (i * 97 + seed * 31) as u8).collect() };
    for kind in [BinaryKind::Add, BinaryKind::Sub] {
        let (reference, b_len) = add_s8(kind, &[4, 1], KernelS8::Reference);
        let (table, _) = add_s8(kind, &[4, 1], KernelS8::Table);
        let (a, b) = (bytes(8, 1), bytes(b_len, 2));
        assert_eq!(run(&table, &[], &[&a, &b]), run(&reference, &[], &[&a, &b]));
    }
    let x = bytes(64, 3);
    let want = run(
        &pool_op(OpKind::MaxPoolS8, 1, KernelS8::Reference),
        &[],
        &[&x],
    );
    assert_eq!(
        run(&pool_op(OpKind::MaxPoolS8, 1, KernelS8::Fast), &[], &[&x]),
        want
    );
    for kind in [OpKind::MaxPoolS8, OpKind::AvgPoolS8] {
        let want = run(&global_pool_op(kind, KernelS8::Reference), &[], &[&x]);
        assert_eq!(run(&global_pool_op(kind, KernelS8::Fast), &[], &[&x]), want);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random pool geometries, valid or not, with the fast kernel: the loader refuses them or they evaluate to
    /// the reference kernel's bytes.
    #[test]
    fn fast_pools_the_loader_accepts_run_like_the_reference(
        (batch, in_h, in_w, channels, out_h, out_w) in (0u32..=2, 0u32..=6, 0u32..=6, 0u32..=9, 0u32..=5, 0u32..=5),
        (kh, kw, sh, sw, pt, pl) in (0u32..=4, 0u32..=4, 0u32..=3, 0u32..=3, 0u32..=4, 0u32..=4),
        (include, zp, avg, seed) in (any::<bool>(), -130i32..=130, any::<bool>(), any::<u32>()),
    ) {
        let p = Pool2d {
            batch, in_h, in_w, channels, out_h, out_w,
            kernel_h: kh, kernel_w: kw, stride_h: sh, stride_w: sw, pad_top: pt, pad_left: pl,
            count_include_pad: include, zero_point: zp, kernel: KernelS8::Fast,
        };
        let (x_len, y_len) = (batch * in_h * in_w * channels, batch * out_h * out_w * channels);
        let kind = |p: Pool2d| if avg { OpKind::AvgPoolS8(p) } else { OpKind::MaxPoolS8(p) };
        let fast = op(kind(p.clone()), &[arena(0, x_len)], arena(x_len.next_multiple_of(4), y_len));
        if check(0, &fast, &[]).is_ok() {
            let reference = op(kind(Pool2d { kernel: KernelS8::Reference, ..p }), &fast.inputs, fast.output);
            let x: Vec<u8> = (0..x_len).map(|i| (i.wrapping_mul(2_654_435_761) ^ seed) as u8).collect();
            prop_assert_eq!(run(&fast, &[], &[&x]), run(&reference, &[], &[&x]));
        }
    }

    /// Random elementwise int8 ops (any kind, broadcasting or not, any strides) with the table kernel: the loader
    /// refuses them or they evaluate to the reference kernel's bytes.
    #[test]
    fn table_binary_ops_the_loader_accepts_run_like_the_reference(
        out in pvec(0u32..=4, 1..=3),
        strides in (pvec(0u32..=20, 3), pvec(0u32..=20, 3)),
        contiguous in (any::<bool>(), any::<bool>()),
        kind in prop_oneof![Just(BinaryKind::Add), Just(BinaryKind::Sub), Just(BinaryKind::Mul), Just(BinaryKind::PRelu)],
        (za, zb, zo) in (-128i32..=127, -128i32..=127, -128i32..=127),
        (left_shift, shift_a, shift_b, shift_o) in (0u8..=23, -31i8..=30, -31i8..=30, -31i8..=30),
        (ma, mb, mo) in ((1i32 << 30)..=i32::MAX, (1i32 << 30)..=i32::MAX, (1i32 << 30)..=i32::MAX),
        seed in any::<u32>(),
    ) {
        let rank = out.len();
        // Random strides, or (mostly, else the table kernel would hardly ever fit) the row-major ones: 1 on the
        // last axis, the others' products before, the random one on axes of extent 1.
        let row_major = |random: &[u32]| -> Vec<u32> {
            let mut s = random[..rank].to_vec();
            let mut n = 1;
            for d in (0..rank).rev() {
                if out[d] > 1 {
                    s[d] = n;
                }
                n *= out[d];
            }
            s
        };
        let sa = if contiguous.0 { row_major(&strides.0) } else { strides.0[..rank].to_vec() };
        let sb = if contiguous.1 { row_major(&strides.1) } else { strides.1[..rank].to_vec() };
        let (sa, sb) = (&sa[..], &sb[..]);
        let n: u32 = out.iter().product();
        // Elements an operand needs: 1 + its largest index (none if the output is empty).
        let need = |s: &[u32]| if n == 0 { 0 } else { 1 + out.iter().zip(s).map(|(d, s)| (d - 1) * s).sum::<u32>() };
        let (na, nb) = (need(sa), need(sb));
        let p = BinaryS8 {
            kind,
            bcast: Broadcast { out: dims(&out), a_strides: dims(sa), b_strides: dims(sb) },
            a_zero_point: za, b_zero_point: zb, out_zero_point: zo, left_shift,
            a_multiplier: ma, a_shift: shift_a, b_multiplier: mb, b_shift: shift_b,
            out_multiplier: mo, out_shift: shift_o, act_min: -128, act_max: 127,
            kernel: KernelS8::Table,
        };
        let ib = na.next_multiple_of(4);
        let io = ib + nb.next_multiple_of(4);
        let table = op(OpKind::BinaryS8(p.clone()), &[arena(0, na), arena(ib, nb)], arena(io, n));
        let fits = kernels::fast_elementwise::add_table_fits(&p);
        prop_assert_eq!(check(0, &table, &[]).is_ok(), fits);
        if fits {
            let reference = op(OpKind::BinaryS8(BinaryS8 { kernel: KernelS8::Reference, ..p }), &table.inputs, table.output);
            let bytes = |len: u32, k: u32| -> Vec<u8> {
                (0..len).map(|i| (i.wrapping_mul(2_654_435_761) ^ seed ^ k) as u8).collect()
            };
            let (a, b) = (bytes(na, 0), bytes(nb, 0x5A5A));
            prop_assert_eq!(run(&table, &[], &[&a, &b]), run(&reference, &[], &[&a, &b]));
        }
    }
}
