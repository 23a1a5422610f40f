//! ONNX import: single-op models built with `kiln_tests::onnx`, imported and checked node by node.

use std::path::Path;

use kiln_compiler::error::Error;
use kiln_compiler::import::import_onnx;
use kiln_compiler::ir::{
    Activation, BinaryKind, ConvAttrs, DataFormat, Graph, Node, Op, PoolAttrs, PoolKind, UnaryKind,
};
use kiln_tests::onnx::{attr, iota, tensor_f32, Dim, OnnxBuilder};
use tract_onnx::pb::ModelProto;

// ----- helpers ------------------------------------------------------------------------------------------------

/// Imports the model, and checks the IR computes what tract computes from the ONNX model.
fn import(b: &OnnxBuilder) -> Graph {
    let (_dir, path) = b.write_temp().expect("write model");
    match import_onnx(&path) {
        Ok(g) => {
            println!("{g}");
            assert_same_as_tract(&b.model(), &g);
            g
        }
        Err(e) => panic!("import failed: {e}"),
    }
}

/// The message of the `Error::Input` the import must fail with.
fn import_input_error(b: &OnnxBuilder) -> String {
    let (_dir, path) = b.write_temp().expect("write model");
    match import_onnx(&path) {
        Ok(g) => panic!("import should fail, got:\n{g}"),
        Err(Error::Input(m)) => {
            println!("{m}");
            m
        }
        Err(e) => panic!("expected an input error, got: {e}"),
    }
}

fn kinds(g: &Graph) -> Vec<&'static str> {
    g.nodes.iter().map(|n| n.op.kind_name()).collect()
}

fn out_shape(g: &Graph, n: &Node) -> Vec<usize> {
    g.tensors[n.output].shape.clone()
}

fn in_shape(g: &Graph, n: &Node, i: usize) -> Vec<usize> {
    g.tensors[n.inputs[i]].shape.clone()
}

fn single(g: &Graph) -> &Node {
    assert_eq!(g.nodes.len(), 1, "expected one node, got {:?}", kinds(g));
    &g.nodes[0]
}

fn conv(n: &Node) -> &ConvAttrs {
    match &n.op {
        Op::Conv(c) => c,
        op => panic!("expected Conv, got {op:?}"),
    }
}

fn pool(n: &Node) -> &PoolAttrs {
    match &n.op {
        Op::Pool(p) => p,
        op => panic!("expected a pool, got {op:?}"),
    }
}

/// The graph's input and output are wired to its only node.
fn assert_wired(g: &Graph) {
    let n = single(g);
    assert_eq!(g.inputs.len(), 1);
    assert_eq!(n.inputs[0], g.inputs[0]);
    assert_eq!(g.outputs, vec![n.output]);
}

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-5 * (1.0 + a.abs().max(b.abs()))
}

/// A one-Conv model: input `x`, weights `w` = iota (OIHW), optional bias `b` = iota + 1.
fn conv_model(
    x: &[usize],
    w: &[usize],
    bias: bool,
    attrs: Vec<tract_onnx::pb::AttributeProto>,
) -> OnnxBuilder {
    let mut b = OnnxBuilder::new(13)
        .input("x", x)
        .initializer("w", w, &iota(w.iter().product()));
    let mut ins = vec!["x", "w"];
    if bias {
        let bias: Vec<f32> = iota(w[0]).iter().map(|v| v + 1.0).collect();
        b = b.initializer("b", &[w[0]], &bias);
        ins.push("b");
    }
    b.node("Conv", &ins, &["y"], attrs).output_unshaped("y")
}

/// Checks OHWI weights against OIHW iota weights `[o, i/g, spatial...]`: every element is its OIHW index.
fn assert_ohwi(c: &ConvAttrs, in_per_group: usize) {
    let spatial: usize = c.kernel.iter().product();
    assert_eq!(c.weights.len(), c.out_channels * spatial * in_per_group);
    for o in 0..c.out_channels {
        for s in 0..spatial {
            for i in 0..in_per_group {
                let ohwi = (o * spatial + s) * in_per_group + i;
                let oihw = (o * in_per_group + i) * spatial + s;
                assert_eq!(c.weights[ohwi], oihw as f32, "weight o={o} s={s} i={i}");
            }
        }
    }
}

// ----- convolutions -------------------------------------------------------------------------------------------

#[test]
fn conv2d_nchw_batch2_with_bias() {
    let g = import(&conv_model(
        &[2, 3, 8, 8],
        &[4, 3, 3, 3],
        true,
        vec![attr::ints("pads", &[1, 1, 1, 1])],
    ));
    assert_wired(&g);
    let n = single(&g);
    let c = conv(n);
    assert_eq!(c.data_format, DataFormat::ChannelsFirst);
    assert_eq!(
        (
            c.kernel.as_slice(),
            c.strides.as_slice(),
            c.dilations.as_slice()
        ),
        (&[3, 3][..], &[1, 1][..], &[1, 1][..])
    );
    assert_eq!(
        (c.pads_begin.as_slice(), c.pads_end.as_slice()),
        (&[1, 1][..], &[1, 1][..])
    );
    assert_eq!((c.group, c.out_channels), (1, 4));
    assert_eq!(c.bias, Some(vec![1.0, 2.0, 3.0, 4.0]));
    assert_eq!(c.act, Activation::None);
    assert_ohwi(c, 3);
    // A specific element: OHWI [o=2][h=1][w=0][i=1] is OIHW [2][1][1][0] = ((2*3+1)*3+1)*3+0 = 66.
    assert_eq!(c.weights[((2 * 3 + 1) * 3) * 3 + 1], 66.0);
    assert_eq!(in_shape(&g, n, 0), vec![2, 3, 8, 8]);
    assert_eq!(out_shape(&g, n), vec![2, 4, 8, 8]);
}

#[test]
fn conv1d_nchw_batch2_stride2_without_bias() {
    let g = import(&conv_model(
        &[2, 3, 16],
        &[4, 3, 3],
        false,
        vec![attr::ints("strides", &[2])],
    ));
    assert_wired(&g);
    let n = single(&g);
    let c = conv(n);
    assert_eq!(
        (
            c.kernel.clone(),
            c.strides.clone(),
            c.pads_begin.clone(),
            c.pads_end.clone()
        ),
        (vec![3], vec![2], vec![0], vec![0])
    );
    assert_eq!(c.bias, None);
    assert_ohwi(c, 3);
    assert_eq!(out_shape(&g, n), vec![2, 4, 7]);
}

#[test]
fn conv1d_dilated_padded() {
    let attrs = vec![attr::ints("dilations", &[2]), attr::ints("pads", &[2, 1])];
    let g = import(&conv_model(&[1, 2, 10], &[3, 2, 3], true, attrs));
    let c = conv(single(&g));
    assert_eq!(
        (
            c.dilations.clone(),
            c.pads_begin.clone(),
            c.pads_end.clone()
        ),
        (vec![2], vec![2], vec![1])
    );
    assert_eq!(out_shape(&g, single(&g)), vec![1, 3, 9]);
}

#[test]
fn conv2d_depthwise_multiplier_2() {
    let attrs = vec![attr::int("group", 3), attr::ints("pads", &[1, 1, 1, 1])];
    let g = import(&conv_model(&[1, 3, 8, 8], &[6, 1, 3, 3], true, attrs));
    let c = conv(single(&g));
    assert_eq!((c.group, c.out_channels), (3, 6));
    assert_ohwi(c, 1);
    assert_eq!(out_shape(&g, single(&g)), vec![1, 6, 8, 8]);
}

#[test]
fn conv2d_grouped() {
    let g = import(&conv_model(
        &[1, 4, 8, 8],
        &[6, 2, 3, 3],
        true,
        vec![attr::int("group", 2)],
    ));
    let c = conv(single(&g));
    assert_eq!((c.group, c.out_channels), (2, 6));
    assert_ohwi(c, 2);
    // OHWI [o=4][h=2][w=1][i=1] is OIHW [4][1][2][1] = ((4*2+1)*3+2)*3+1 = 88.
    assert_eq!(c.weights[((4 * 3 + 2) * 3 + 1) * 2 + 1], 88.0);
    assert_eq!(out_shape(&g, single(&g)), vec![1, 6, 6, 6]);
}

#[test]
fn conv2d_auto_pad() {
    // auto_pad, input size, pads_begin, pads_end, output size (kernel 3, stride 2)
    type Case = (&'static str, usize, [usize; 2], [usize; 2], usize);
    let cases: [Case; 5] = [
        ("SAME_UPPER", 8, [0, 0], [1, 1], 4),
        ("SAME_UPPER", 7, [1, 1], [1, 1], 4),
        ("SAME_LOWER", 8, [1, 1], [0, 0], 4),
        ("VALID", 8, [0, 0], [0, 0], 3),
        ("NOTSET", 8, [0, 0], [0, 0], 3),
    ];
    for (auto_pad, size, begin, end, out) in cases {
        let attrs = vec![
            attr::string("auto_pad", auto_pad),
            attr::ints("strides", &[2, 2]),
        ];
        let g = import(&conv_model(&[1, 3, size, size], &[4, 3, 3, 3], true, attrs));
        let c = conv(single(&g));
        assert_eq!(c.strides, vec![2, 2], "{auto_pad} {size}");
        assert_eq!(
            (c.pads_begin.as_slice(), c.pads_end.as_slice()),
            (&begin[..], &end[..]),
            "{auto_pad} {size}"
        );
        assert_eq!(
            out_shape(&g, single(&g)),
            vec![1, 4, out, out],
            "{auto_pad} {size}"
        );
    }
}

#[test]
fn conv2d_pointwise_is_a_1x1_conv() {
    // tract rewrites this to an EinSum plus a bias Add.
    let g = import(&conv_model(&[2, 4, 8, 8], &[6, 4, 1, 1], true, vec![]));
    assert_wired(&g);
    let c = conv(single(&g));
    assert_eq!(
        (c.kernel.clone(), c.strides.clone(), c.group, c.out_channels),
        (vec![1, 1], vec![1, 1], 1, 6)
    );
    assert_eq!(c.data_format, DataFormat::ChannelsFirst);
    assert_eq!(c.bias, Some(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
    assert_ohwi(c, 4);
    assert_eq!(out_shape(&g, single(&g)), vec![2, 6, 8, 8]);
}

#[test]
fn conv2d_pointwise_strided() {
    // tract rewrites this to Downsamples, an EinSum and a bias Add.
    let g = import(&conv_model(
        &[1, 4, 8, 8],
        &[6, 4, 1, 1],
        true,
        vec![attr::ints("strides", &[2, 2])],
    ));
    assert_wired(&g);
    let c = conv(single(&g));
    assert_eq!(
        (c.kernel.clone(), c.strides.clone()),
        (vec![1, 1], vec![2, 2])
    );
    assert_eq!(in_shape(&g, single(&g), 0), vec![1, 4, 8, 8]);
    assert_eq!(out_shape(&g, single(&g)), vec![1, 6, 4, 4]);
}

#[test]
fn conv1d_pointwise() {
    let g = import(&conv_model(&[1, 4, 10], &[5, 4, 1], false, vec![]));
    let c = conv(single(&g));
    assert_eq!((c.kernel.clone(), c.bias.clone()), (vec![1], None));
    assert_ohwi(c, 4);
    assert_eq!(out_shape(&g, single(&g)), vec![1, 5, 10]);
}

#[test]
fn conv_batchnorm_relu() {
    let ch = 4;
    let b = OnnxBuilder::new(13)
        .input("x", &[1, 3, 6, 6])
        .initializer("w", &[ch, 3, 3, 3], &iota(ch * 27))
        .initializer("s", &[ch], &[1.0, 2.0, 0.5, 1.0])
        .initializer("b", &[ch], &[0.0, 1.0, -1.0, 2.0])
        .initializer("m", &[ch], &[0.5, 0.0, 1.0, -1.0])
        .initializer("v", &[ch], &[1.0, 4.0, 0.25, 1.0])
        .node("Conv", &["x", "w"], &["c"], vec![])
        .node(
            "BatchNormalization",
            &["c", "s", "b", "m", "v"],
            &["d"],
            vec![attr::float("epsilon", 0.0)],
        )
        .node("Relu", &["d"], &["y"], vec![])
        .output_unshaped("y");
    let g = import(&b);
    // tract folds the BatchNormalization into the convolution.
    assert_eq!(kinds(&g), vec!["Conv", "Relu"]);
    let c = conv(&g.nodes[0]);
    // channel 1: slope 2/sqrt(4) = 1, bias 1 - 0*1 = 1; channel 2: slope 0.5/0.5 = 1, bias -1 - 1*1 = -2.
    assert_eq!(c.bias, Some(vec![-0.5, 1.0, -2.0, 3.0]));
    assert_eq!(c.weights[0], 0.0);
    assert_eq!(g.nodes[1].inputs, vec![g.nodes[0].output]);
}

// ----- dense ----------------------------------------------------------------------------------------------------

fn dense(n: &Node) -> (&Vec<f32>, usize, usize, &Option<Vec<f32>>) {
    match &n.op {
        Op::Dense {
            weights,
            in_features,
            out_features,
            bias,
            act,
        } => {
            assert_eq!(*act, Activation::None);
            (weights, *in_features, *out_features, bias)
        }
        op => panic!("expected Dense, got {op:?}"),
    }
}

#[test]
fn gemm_trans_b_alpha_beta_bias() {
    let b = OnnxBuilder::new(13)
        .input("x", &[2, 5])
        .initializer("w", &[3, 5], &iota(15))
        .initializer("c", &[3], &[1.0, 2.0, 3.0])
        .node(
            "Gemm",
            &["x", "w", "c"],
            &["y"],
            vec![
                attr::int("transB", 1),
                attr::float("alpha", 2.0),
                attr::float("beta", 0.5),
            ],
        )
        .output_unshaped("y");
    let g = import(&b);
    assert_wired(&g);
    let (w, k, n, bias) = dense(single(&g));
    assert_eq!((k, n), (5, 3));
    // weights[n][k] = alpha * w[n][k]
    assert_eq!(w, &iota(15).iter().map(|v| v * 2.0).collect::<Vec<_>>());
    assert_eq!(bias, &Some(vec![0.5, 1.0, 1.5]));
    assert_eq!(out_shape(&g, single(&g)), vec![2, 3]);
}

#[test]
fn gemm_plain() {
    let b = OnnxBuilder::new(11)
        .input("x", &[1, 4])
        .initializer("w", &[4, 3], &iota(12))
        .node("Gemm", &["x", "w"], &["y"], vec![])
        .output_unshaped("y");
    let g = import(&b);
    let (w, k, n, bias) = dense(single(&g));
    assert_eq!((k, n, bias.clone()), (4, 3, None));
    // weights[n][k] = w[k][n]
    for ni in 0..3 {
        for ki in 0..4 {
            assert_eq!(w[ni * 4 + ki], (ki * 3 + ni) as f32);
        }
    }
}

#[test]
fn gemm_full_matrix_c_stays_an_add() {
    let b = OnnxBuilder::new(13)
        .input("x", &[2, 4])
        .initializer("w", &[4, 3], &iota(12))
        .initializer("c", &[2, 3], &iota(6))
        .node(
            "Gemm",
            &["x", "w", "c"],
            &["y"],
            vec![attr::float("beta", 2.0)],
        )
        .output_unshaped("y");
    let g = import(&b);
    assert_eq!(kinds(&g), vec!["Dense", "Add"]);
    assert_eq!(
        g.tensors[g.nodes[1].inputs[1]].value,
        Some(iota(6).iter().map(|v| v * 2.0).collect())
    );
}

#[test]
fn matmul_constant_weights() {
    let b = OnnxBuilder::new(13)
        .input("x", &[2, 5])
        .initializer("w", &[5, 3], &iota(15))
        .node("MatMul", &["x", "w"], &["y"], vec![])
        .output_unshaped("y");
    let g = import(&b);
    assert_wired(&g);
    let (w, k, n, bias) = dense(single(&g));
    assert_eq!((k, n, bias.clone()), (5, 3, None));
    assert_eq!(w[2 * 5 + 4], (4 * 3 + 2) as f32); // weights[n=2][k=4] = w[4][2]
    assert_eq!(out_shape(&g, single(&g)), vec![2, 3]);
}

#[test]
fn matmul_rank3_then_bias_add() {
    let b = OnnxBuilder::new(13)
        .input("x", &[2, 7, 5])
        .initializer("w", &[5, 3], &iota(15))
        .initializer("c", &[3], &[1.0, 2.0, 3.0])
        .node("MatMul", &["x", "w"], &["m"], vec![])
        .node("Add", &["m", "c"], &["y"], vec![])
        .output_unshaped("y");
    let g = import(&b);
    let (_, k, n, bias) = dense(single(&g));
    assert_eq!((k, n, bias.clone()), (5, 3, Some(vec![1.0, 2.0, 3.0])));
    assert_eq!(in_shape(&g, single(&g), 0), vec![2, 7, 5]);
    assert_eq!(out_shape(&g, single(&g)), vec![2, 7, 3]);
}

#[test]
fn matmul_on_transposed_activation_is_rejected() {
    let gemm_trans_a = OnnxBuilder::new(13)
        .input("x", &[5, 2])
        .initializer("w", &[5, 3], &iota(15))
        .node("Gemm", &["x", "w"], &["y"], vec![attr::int("transA", 1)])
        .output_unshaped("y");
    let m = import_input_error(&gemm_trans_a);
    assert!(
        m.contains("node 'y.ab' (tract op EinSum, from ONNX Gemm node 'y')")
            && m.contains("transposed activation"),
        "{m}"
    );

    let weights_first = OnnxBuilder::new(13)
        .input("x", &[5, 2])
        .initializer("w", &[3, 5], &iota(15))
        .node("MatMul", &["w", "x"], &["y"], vec![])
        .output_unshaped("y");
    let m = import_input_error(&weights_first);
    assert!(
        m.contains("node 'y' (tract op EinSum, ONNX op MatMul)")
            && m.contains("transposed activation"),
        "{m}"
    );
}

// ----- element-wise ---------------------------------------------------------------------------------------------

fn binary(n: &Node) -> BinaryKind {
    match &n.op {
        Op::Binary { kind, act } => {
            assert_eq!(*act, Activation::None);
            *kind
        }
        op => panic!("expected Binary, got {op:?}"),
    }
}

#[test]
fn add_broadcast_channel_constant() {
    let b = OnnxBuilder::new(13)
        .input("x", &[1, 3, 4, 4])
        .initializer("c", &[3, 1, 1], &[1.0, 2.0, 3.0])
        .node("Add", &["x", "c"], &["y"], vec![])
        .output_unshaped("y");
    let g = import(&b);
    let n = single(&g);
    assert_eq!(binary(n), BinaryKind::Add);
    assert_eq!(n.inputs[0], g.inputs[0]);
    let c = &g.tensors[n.inputs[1]];
    assert_eq!(
        (c.shape.clone(), c.value.clone()),
        (vec![1, 3, 1, 1], Some(vec![1.0, 2.0, 3.0]))
    );
    assert_eq!(out_shape(&g, n), vec![1, 3, 4, 4]);
}

#[test]
fn sub_and_mul_keep_operand_order() {
    let b = OnnxBuilder::new(13)
        .input("x", &[2, 6])
        .initializer("c", &[6], &iota(6))
        .initializer("s", &[], &[0.5])
        .node("Sub", &["c", "x"], &["a"], vec![])
        .node("Mul", &["a", "s"], &["y"], vec![])
        .output_unshaped("y");
    let g = import(&b);
    assert_eq!(kinds(&g), vec!["Sub", "Mul"]);
    let sub = &g.nodes[0];
    assert!(g.is_const(sub.inputs[0]) && sub.inputs[1] == g.inputs[0]);
    assert_eq!(g.tensors[sub.inputs[0]].shape, vec![1, 6]);
    let mul = &g.nodes[1];
    assert_eq!(mul.inputs[0], sub.output);
    assert_eq!(g.tensors[mul.inputs[1]].value, Some(vec![0.5]));
}

#[test]
fn residual_add_of_two_activations() {
    let b = OnnxBuilder::new(13)
        .input("x", &[1, 3, 4, 4])
        .node("Relu", &["x"], &["r"], vec![])
        .node("Add", &["x", "r"], &["y"], vec![])
        .output_unshaped("y");
    let g = import(&b);
    assert_eq!(kinds(&g), vec!["Relu", "Add"]);
    let add = &g.nodes[1];
    assert_eq!(binary(add), BinaryKind::Add);
    assert_eq!(add.inputs, vec![g.inputs[0], g.nodes[0].output]);
    assert_eq!(g.outputs, vec![add.output]);
}

#[test]
fn square_is_mul_of_x_with_itself() {
    let b = OnnxBuilder::new(13)
        .input("x", &[2, 3])
        .node("Mul", &["x", "x"], &["y"], vec![])
        .output_unshaped("y");
    let g = import(&b);
    let n = single(&g);
    assert_eq!(
        (binary(n), n.inputs.clone()),
        (BinaryKind::Mul, vec![g.inputs[0], g.inputs[0]])
    );
}

#[test]
fn relu_and_clip() {
    let relu = OnnxBuilder::new(13)
        .input("x", &[1, 8])
        .node("Relu", &["x"], &["y"], vec![])
        .output_unshaped("y");
    assert_eq!(single(&import(&relu)).op, Op::Unary(UnaryKind::Relu));

    let relu6 = OnnxBuilder::new(13)
        .input("x", &[1, 3, 4, 4])
        .initializer("lo", &[], &[0.0])
        .initializer("hi", &[], &[6.0])
        .node("Clip", &["x", "lo", "hi"], &["y"], vec![])
        .output_unshaped("y");
    let g = import(&relu6);
    assert_wired(&g);
    assert_eq!(
        single(&g).op,
        Op::Unary(UnaryKind::Clip { min: 0.0, max: 6.0 })
    );

    let attrs = OnnxBuilder::new(6)
        .input("x", &[1, 8])
        .node(
            "Clip",
            &["x"],
            &["y"],
            vec![attr::float("min", -1.0), attr::float("max", 1.5)],
        )
        .output_unshaped("y");
    assert_eq!(
        single(&import(&attrs)).op,
        Op::Unary(UnaryKind::Clip {
            min: -1.0,
            max: 1.5
        })
    );

    let max_only = OnnxBuilder::new(13)
        .input("x", &[1, 8])
        .initializer("hi", &[], &[6.0])
        .node("Clip", &["x", "", "hi"], &["y"], vec![])
        .output_unshaped("y");
    assert_eq!(
        single(&import(&max_only)).op,
        Op::Unary(UnaryKind::Clip {
            min: f32::NEG_INFINITY,
            max: 6.0
        })
    );
}

#[test]
fn activations() {
    let b = OnnxBuilder::new(13)
        .input("x", &[1, 3, 4, 4])
        .initializer("slope", &[3, 1, 1], &[0.1, 0.2, 0.3])
        .node("LeakyRelu", &["x"], &["a"], vec![attr::float("alpha", 0.1)])
        .node("Elu", &["a"], &["b"], vec![attr::float("alpha", 0.5)])
        .node("PRelu", &["b", "slope"], &["c"], vec![])
        .node("Sigmoid", &["c"], &["d"], vec![])
        .node("Tanh", &["d"], &["y"], vec![])
        .output_unshaped("y");
    let g = import(&b);
    assert_eq!(
        kinds(&g),
        vec!["LeakyRelu", "Elu", "PRelu", "Sigmoid", "Tanh"]
    );
    assert_eq!(
        g.nodes[0].op,
        Op::Unary(UnaryKind::LeakyRelu { alpha: 0.1 })
    );
    assert_eq!(g.nodes[1].op, Op::Unary(UnaryKind::Elu { alpha: 0.5 }));
    let prelu = &g.nodes[2];
    assert_eq!(prelu.inputs[0], g.nodes[1].output);
    assert_eq!(g.tensors[prelu.inputs[1]].value, Some(vec![0.1, 0.2, 0.3]));
    assert_eq!(g.tensors[prelu.inputs[1]].shape, vec![1, 3, 1, 1]);
    for w in g.nodes.windows(2) {
        assert_eq!(w[1].inputs[0], w[0].output);
    }
    assert_eq!(out_shape(&g, &g.nodes[4]), vec![1, 3, 4, 4]);
}

// ----- data movement --------------------------------------------------------------------------------------------

#[test]
fn split_sigmoid_mul_glu() {
    let b = OnnxBuilder::new(13)
        .input("x", &[1, 8, 5])
        .initializer_i64("split", &[2], &[4, 4])
        .node(
            "Split",
            &["x", "split"],
            &["a", "b"],
            vec![attr::int("axis", 1)],
        )
        .node("Sigmoid", &["b"], &["s"], vec![])
        .node("Mul", &["a", "s"], &["y"], vec![])
        .output_unshaped("y");
    let g = import(&b);
    assert_eq!(kinds(&g), vec!["Slice", "Slice", "Sigmoid", "Mul"]);
    assert_eq!(
        g.nodes[0].op,
        Op::Slice {
            axis: 1,
            start: 0,
            end: 4
        }
    );
    assert_eq!(
        g.nodes[1].op,
        Op::Slice {
            axis: 1,
            start: 4,
            end: 8
        }
    );
    assert_eq!(out_shape(&g, &g.nodes[0]), vec![1, 4, 5]);
    assert_eq!(g.nodes[2].inputs, vec![g.nodes[1].output]);
    assert_eq!(
        g.nodes[3].inputs,
        vec![g.nodes[0].output, g.nodes[2].output]
    );
}

#[test]
fn split_equal_parts_opset11() {
    let b = OnnxBuilder::new(11)
        .input("x", &[1, 6, 2])
        .node(
            "Split",
            &["x"],
            &["a", "b", "c"],
            vec![attr::int("axis", -2)],
        )
        .output_unshaped("a")
        .output_unshaped("b")
        .output_unshaped("c");
    let g = import(&b);
    assert_eq!(kinds(&g), vec!["Slice", "Slice", "Slice"]);
    assert_eq!(
        g.nodes[2].op,
        Op::Slice {
            axis: 1,
            start: 4,
            end: 6
        }
    );
    assert_eq!(g.outputs.len(), 3);
}

#[test]
fn slice_step_1() {
    let b = OnnxBuilder::new(13)
        .input("x", &[2, 6, 5])
        .initializer_i64("starts", &[1], &[1])
        .initializer_i64("ends", &[1], &[-1])
        .initializer_i64("axes", &[1], &[2])
        .node("Slice", &["x", "starts", "ends", "axes"], &["y"], vec![])
        .output_unshaped("y");
    let g = import(&b);
    assert_eq!(
        single(&g).op,
        Op::Slice {
            axis: 2,
            start: 1,
            end: 4
        }
    );
    assert_eq!(out_shape(&g, single(&g)), vec![2, 6, 3]);
}

#[test]
fn flatten() {
    let b = OnnxBuilder::new(13)
        .input("x", &[2, 3, 4, 4])
        .node("Flatten", &["x"], &["y"], vec![attr::int("axis", 1)])
        .output_unshaped("y");
    let g = import(&b);
    assert_wired(&g);
    assert_eq!(
        (single(&g).op.clone(), out_shape(&g, single(&g))),
        (Op::Reshape, vec![2, 48])
    );
}

#[test]
fn reshape_squeeze_unsqueeze() {
    let reshape = OnnxBuilder::new(13)
        .input("x", &[2, 6, 5])
        .node(
            "Constant",
            &[],
            &["shape"],
            vec![attr::tensor(
                "value",
                kiln_tests::onnx::tensor_i64("", &[3], &[2, 3, -1]),
            )],
        )
        .node("Reshape", &["x", "shape"], &["y"], vec![])
        .output_unshaped("y");
    let g = import(&reshape);
    assert_eq!(
        (single(&g).op.clone(), out_shape(&g, single(&g))),
        (Op::Reshape, vec![2, 3, 10])
    );

    // Squeeze then Unsqueeze: one reshape.
    let b = OnnxBuilder::new(13)
        .input("x", &[2, 1, 5])
        .initializer_i64("a", &[1], &[1])
        .initializer_i64("b", &[1], &[2])
        .node("Squeeze", &["x", "a"], &["s"], vec![])
        .node("Unsqueeze", &["s", "b"], &["y"], vec![])
        .output_unshaped("y");
    let g = import(&b);
    assert_wired(&g);
    assert_eq!(
        (single(&g).op.clone(), out_shape(&g, single(&g))),
        (Op::Reshape, vec![2, 5, 1])
    );

    let opset11 = OnnxBuilder::new(11)
        .input("x", &[2, 5])
        .node("Unsqueeze", &["x"], &["y"], vec![attr::ints("axes", &[0])])
        .output_unshaped("y");
    let g = import(&opset11);
    assert_eq!(out_shape(&g, single(&g)), vec![1, 2, 5]);
}

#[test]
fn transpose() {
    let b = OnnxBuilder::new(13)
        .input("x", &[2, 3, 4, 5])
        .node(
            "Transpose",
            &["x"],
            &["y"],
            vec![attr::ints("perm", &[0, 2, 3, 1])],
        )
        .output_unshaped("y");
    let g = import(&b);
    assert_wired(&g);
    assert_eq!(
        single(&g).op,
        Op::Transpose {
            perm: vec![0, 2, 3, 1]
        }
    );
    assert_eq!(out_shape(&g, single(&g)), vec![2, 4, 5, 3]);

    // tract splits this into two axis moves; they merge back into one transpose.
    let b = OnnxBuilder::new(13)
        .input("x", &[2, 3, 4, 5])
        .node(
            "Transpose",
            &["x"],
            &["y"],
            vec![attr::ints("perm", &[3, 1, 0, 2])],
        )
        .output_unshaped("y");
    let g = import(&b);
    assert_wired(&g);
    assert_eq!(
        single(&g).op,
        Op::Transpose {
            perm: vec![3, 1, 0, 2]
        }
    );
    assert_eq!(out_shape(&g, single(&g)), vec![5, 3, 2, 4]);
}

#[test]
fn reduce_mean_keepdims() {
    let keep0 = OnnxBuilder::new(13)
        .input("x", &[2, 3, 4, 5])
        .node(
            "ReduceMean",
            &["x"],
            &["y"],
            vec![attr::ints("axes", &[2, 3]), attr::int("keepdims", 0)],
        )
        .output_unshaped("y");
    let g = import(&keep0);
    assert_wired(&g);
    assert_eq!(single(&g).op, Op::ReduceMean { axes: vec![2, 3] });
    assert_eq!(out_shape(&g, single(&g)), vec![2, 3]);

    let keep1 = OnnxBuilder::new(13)
        .input("x", &[2, 3, 4, 5])
        .node(
            "ReduceMean",
            &["x"],
            &["y"],
            vec![attr::ints("axes", &[-3]), attr::int("keepdims", 1)],
        )
        .output_unshaped("y");
    let g = import(&keep1);
    assert_wired(&g);
    assert_eq!(single(&g).op, Op::ReduceMean { axes: vec![1] });
    assert_eq!(out_shape(&g, single(&g)), vec![2, 1, 4, 5]);

    // Spatial axes with keepdims: still a ReduceMean (not a pool), as the ONNX op says.
    let spatial = OnnxBuilder::new(13)
        .input("x", &[1, 3, 4, 5])
        .node(
            "ReduceMean",
            &["x"],
            &["y"],
            vec![attr::ints("axes", &[2, 3])],
        )
        .output_unshaped("y");
    let g = import(&spatial);
    assert_eq!(single(&g).op, Op::ReduceMean { axes: vec![2, 3] });
    assert_eq!(out_shape(&g, single(&g)), vec![1, 3, 1, 1]);
}

#[test]
fn reduce_mean_of_square() {
    // tract folds this into one Reduce<MeanOfSquares>.
    let b = OnnxBuilder::new(13)
        .input("x", &[2, 3, 4])
        .node("Mul", &["x", "x"], &["sq"], vec![])
        .node(
            "ReduceMean",
            &["sq"],
            &["y"],
            vec![attr::ints("axes", &[-1]), attr::int("keepdims", 0)],
        )
        .output_unshaped("y");
    let g = import(&b);
    assert_eq!(kinds(&g), vec!["Mul", "ReduceMean"]);
    assert_eq!(g.nodes[0].inputs, vec![g.inputs[0], g.inputs[0]]);
    assert_eq!(g.nodes[1].op, Op::ReduceMean { axes: vec![2] });
    assert_eq!(out_shape(&g, &g.nodes[1]), vec![2, 3]);
}

#[test]
fn opset18_axes_as_inputs() {
    let reduce = OnnxBuilder::new(18)
        .input("x", &[2, 3, 4])
        .initializer_i64("axes", &[1], &[-1])
        .node(
            "ReduceMean",
            &["x", "axes"],
            &["y"],
            vec![attr::int("keepdims", 0)],
        )
        .output_unshaped("y");
    let g = import(&reduce);
    assert_eq!(single(&g).op, Op::ReduceMean { axes: vec![2] });
    assert_eq!(out_shape(&g, single(&g)), vec![2, 3]);

    let split = OnnxBuilder::new(18)
        .input("x", &[1, 6, 2])
        .node(
            "Split",
            &["x"],
            &["a", "b"],
            vec![attr::int("axis", 1), attr::int("num_outputs", 2)],
        )
        .output_unshaped("a")
        .output_unshaped("b");
    let g = import(&split);
    assert_eq!(
        g.nodes[1].op,
        Op::Slice {
            axis: 1,
            start: 3,
            end: 6
        }
    );

    let pad = OnnxBuilder::new(18)
        .input("x", &[1, 3, 4])
        .initializer_i64("pads", &[2], &[1, 2])
        .initializer_i64("axes", &[1], &[2])
        .node("Pad", &["x", "pads", "", "axes"], &["y"], vec![])
        .output_unshaped("y");
    let g = import(&pad);
    assert_eq!(
        single(&g).op,
        Op::Pad {
            pads_begin: vec![0, 0, 1],
            pads_end: vec![0, 0, 2],
            value: 0.0
        }
    );
}

#[test]
fn pad_constant() {
    let b = OnnxBuilder::new(13)
        .input("x", &[1, 3, 4, 5])
        .initializer_i64("pads", &[8], &[0, 0, 1, 2, 0, 0, 3, 4])
        .initializer("v", &[], &[0.5])
        .node("Pad", &["x", "pads", "v"], &["y"], vec![])
        .output_unshaped("y");
    let g = import(&b);
    assert_wired(&g);
    assert_eq!(
        single(&g).op,
        Op::Pad {
            pads_begin: vec![0, 0, 1, 2],
            pads_end: vec![0, 0, 3, 4],
            value: 0.5
        }
    );
    assert_eq!(out_shape(&g, single(&g)), vec![1, 3, 8, 11]);

    let opset2 = OnnxBuilder::new(2)
        .input("x", &[1, 6])
        .node(
            "Pad",
            &["x"],
            &["y"],
            vec![attr::ints("pads", &[0, 1, 0, 2])],
        )
        .output_unshaped("y");
    let g = import(&opset2);
    assert_eq!(
        single(&g).op,
        Op::Pad {
            pads_begin: vec![0, 1],
            pads_end: vec![0, 2],
            value: 0.0
        }
    );
}

#[test]
fn concat() {
    let b = OnnxBuilder::new(13)
        .input("x", &[1, 3, 4])
        .input("z", &[1, 2, 4])
        .initializer("c", &[1, 1, 4], &[1.0, 2.0, 3.0, 4.0])
        .node(
            "Concat",
            &["x", "z", "c"],
            &["y"],
            vec![attr::int("axis", -2)],
        )
        .output_unshaped("y");
    let g = import(&b);
    let n = single(&g);
    assert_eq!(n.op, Op::Concat { axis: 1 });
    assert_eq!(&n.inputs[..2], &g.inputs[..]);
    assert!(g.is_const(n.inputs[2]));
    assert_eq!(out_shape(&g, n), vec![1, 6, 4]);
}

#[test]
fn softmax_and_log_softmax() {
    let softmax = |opset, op: &str, axis| {
        OnnxBuilder::new(opset)
            .input("x", &[2, 3, 4])
            .node(op, &["x"], &["y"], vec![attr::int("axis", axis)])
            .output_unshaped("y")
    };
    let g = import(&softmax(13, "Softmax", 1));
    assert_wired(&g);
    assert_eq!(
        single(&g).op,
        Op::Softmax {
            axis: 1,
            log: false
        }
    );
    assert_eq!(
        single(&import(&softmax(13, "Softmax", -1))).op,
        Op::Softmax {
            axis: 2,
            log: false
        }
    );
    assert_eq!(
        single(&import(&softmax(13, "LogSoftmax", -1))).op,
        Op::Softmax { axis: 2, log: true }
    );
    assert_eq!(
        single(&import(&softmax(13, "LogSoftmax", 0))).op,
        Op::Softmax { axis: 0, log: true }
    );

    // Opset 11 softmax flattens the axes from `axis` on: reshape, softmax, reshape.
    let g = import(&softmax(11, "Softmax", 1));
    assert_eq!(kinds(&g), vec!["Reshape", "Softmax", "Reshape"]);
    assert_eq!(
        g.nodes[1].op,
        Op::Softmax {
            axis: 1,
            log: false
        }
    );
    assert_eq!(out_shape(&g, &g.nodes[0]), vec![2, 12]);
    assert_eq!(out_shape(&g, &g.nodes[2]), vec![2, 3, 4]);
    // ... unless `axis` is already the last one.
    assert_eq!(
        single(&import(&softmax(11, "LogSoftmax", 2))).op,
        Op::Softmax { axis: 2, log: true }
    );
}

// ----- pools ----------------------------------------------------------------------------------------------------

fn pool_model(op: &str, x: &[usize], attrs: Vec<tract_onnx::pb::AttributeProto>) -> OnnxBuilder {
    OnnxBuilder::new(13)
        .input("x", x)
        .node(op, &["x"], &["y"], attrs)
        .output_unshaped("y")
}

#[test]
fn max_pool_2d_and_1d() {
    let g = import(&pool_model(
        "MaxPool",
        &[1, 3, 8, 8],
        vec![
            attr::ints("kernel_shape", &[2, 2]),
            attr::ints("strides", &[2, 2]),
        ],
    ));
    assert_wired(&g);
    let p = pool(single(&g));
    assert_eq!(
        (p.kind, p.data_format),
        (PoolKind::Max, DataFormat::ChannelsFirst)
    );
    assert_eq!(
        (
            p.kernel.clone(),
            p.strides.clone(),
            p.pads_begin.clone(),
            p.pads_end.clone()
        ),
        (vec![2, 2], vec![2, 2], vec![0, 0], vec![0, 0])
    );
    assert_eq!(out_shape(&g, single(&g)), vec![1, 3, 4, 4]);

    let g = import(&pool_model(
        "MaxPool",
        &[2, 3, 9],
        vec![
            attr::ints("kernel_shape", &[3]),
            attr::ints("strides", &[2]),
            attr::ints("pads", &[1, 1]),
        ],
    ));
    let p = pool(single(&g));
    assert_eq!(
        (
            p.kernel.clone(),
            p.strides.clone(),
            p.pads_begin.clone(),
            p.pads_end.clone()
        ),
        (vec![3], vec![2], vec![1], vec![1])
    );
    assert_eq!(out_shape(&g, single(&g)), vec![2, 3, 5]);
}

#[test]
fn max_pool_ceil_mode() {
    let g = import(&pool_model(
        "MaxPool",
        &[1, 2, 8, 8],
        vec![
            attr::ints("kernel_shape", &[3, 3]),
            attr::ints("strides", &[2, 2]),
            attr::int("ceil_mode", 1),
        ],
    ));
    let p = pool(single(&g));
    // floor((8 - 3) / 2) + 1 = 3, ceil gives 4: the last window overhangs by one.
    assert_eq!(
        (p.pads_begin.clone(), p.pads_end.clone()),
        (vec![0, 0], vec![1, 1])
    );
    assert_eq!(out_shape(&g, single(&g)), vec![1, 2, 4, 4]);
}

#[test]
fn average_pool_2d_and_1d() {
    let g = import(&pool_model(
        "AveragePool",
        &[1, 3, 8, 8],
        vec![
            attr::ints("kernel_shape", &[3, 3]),
            attr::ints("pads", &[1, 1, 1, 1]),
            attr::int("count_include_pad", 1),
        ],
    ));
    assert_wired(&g);
    let p = pool(single(&g));
    assert_eq!(
        p.kind,
        PoolKind::Avg {
            count_include_pad: true
        }
    );
    assert_eq!(
        (
            p.kernel.clone(),
            p.strides.clone(),
            p.pads_begin.clone(),
            p.pads_end.clone()
        ),
        (vec![3, 3], vec![1, 1], vec![1, 1], vec![1, 1])
    );
    assert_eq!(out_shape(&g, single(&g)), vec![1, 3, 8, 8]);

    let g = import(&pool_model(
        "AveragePool",
        &[1, 3, 8],
        vec![
            attr::ints("kernel_shape", &[3]),
            attr::ints("pads", &[1, 0]),
        ],
    ));
    let p = pool(single(&g));
    assert_eq!(
        p.kind,
        PoolKind::Avg {
            count_include_pad: false
        }
    );
    assert_eq!(
        (p.kernel.clone(), p.pads_begin.clone(), p.pads_end.clone()),
        (vec![3], vec![1], vec![0])
    );
    assert_eq!(out_shape(&g, single(&g)), vec![1, 3, 7]);
}

#[test]
fn global_pools_2d_and_1d() {
    for (op, kind) in [
        (
            "GlobalAveragePool",
            PoolKind::Avg {
                count_include_pad: false,
            },
        ),
        ("GlobalMaxPool", PoolKind::Max),
    ] {
        let g = import(&pool_model(op, &[1, 3, 8, 6], vec![]));
        assert_wired(&g);
        let p = pool(single(&g));
        assert_eq!(
            (p.kind, p.kernel.clone(), p.pads_end.clone()),
            (kind, vec![8, 6], vec![0, 0]),
            "{op}"
        );
        assert_eq!(out_shape(&g, single(&g)), vec![1, 3, 1, 1]);

        let g = import(&pool_model(op, &[2, 4, 10], vec![]));
        let p = pool(single(&g));
        assert_eq!((p.kind, p.kernel.clone()), (kind, vec![10]), "{op}");
        assert_eq!(out_shape(&g, single(&g)), vec![2, 4, 1]);
    }
}

#[test]
fn batch_normalization_alone() {
    let b = OnnxBuilder::new(13)
        .input("x", &[1, 3, 4, 4])
        .initializer("s", &[3], &[1.0, 2.0, 3.0])
        .initializer("b", &[3], &[0.5, 0.0, -1.0])
        .initializer("m", &[3], &[1.0, 2.0, 0.0])
        .initializer("v", &[3], &[4.0, 1.0, 9.0])
        .node(
            "BatchNormalization",
            &["x", "s", "b", "m", "v"],
            &["y"],
            vec![attr::float("epsilon", 0.0)],
        )
        .output_unshaped("y");
    let g = import(&b);
    assert_eq!(kinds(&g), vec!["Mul", "Add"]);
    let (mul, add) = (&g.nodes[0], &g.nodes[1]);
    assert_eq!(mul.inputs[0], g.inputs[0]);
    assert_eq!(add.inputs[0], mul.output);
    let slope = &g.tensors[mul.inputs[1]];
    let inter = &g.tensors[add.inputs[1]];
    assert_eq!(
        (slope.shape.clone(), inter.shape.clone()),
        (vec![1, 3, 1, 1], vec![1, 3, 1, 1])
    );
    // slope = s / sqrt(v), intercept = b - m * slope
    let (want_s, want_i) = ([0.5, 2.0, 1.0], [0.0, -4.0, -1.0]);
    let (got_s, got_i) = (slope.value.clone().unwrap(), inter.value.clone().unwrap());
    assert!(
        got_s.iter().zip(want_s).all(|(a, b)| close(*a, b)),
        "{got_s:?}"
    );
    assert!(
        got_i.iter().zip(want_i).all(|(a, b)| close(*a, b)),
        "{got_i:?}"
    );
}

// ----- dropped ops and inputs -----------------------------------------------------------------------------------

#[test]
fn identity_dropout_cast_are_dropped() {
    let b = OnnxBuilder::new(13)
        .input("x", &[1, 4])
        .node("Identity", &["x"], &["a"], vec![])
        .node("Dropout", &["a"], &["b"], vec![])
        .node("Cast", &["b"], &["c"], vec![attr::int("to", 1)])
        .node("Relu", &["c"], &["y"], vec![])
        .output_unshaped("y");
    let g = import(&b);
    assert_wired(&g);
    assert_eq!(kinds(&g), vec!["Relu"]);
}

#[test]
fn symbolic_batch_is_fixed_to_1() {
    let b = OnnxBuilder::new(13)
        .input_dims("x", &[Dim::from("N"), 3.into(), 8.into()])
        .node("Relu", &["x"], &["y"], vec![])
        .output_dims("y", &["N".into(), 3.into(), 8.into()]);
    let g = import(&b);
    assert_eq!(g.tensors[g.inputs[0]].shape, vec![1, 3, 8]);
    assert_eq!(g.tensors[g.outputs[0]].shape, vec![1, 3, 8]);
}

#[test]
fn names_follow_the_model() {
    let g = import(&conv_model(&[1, 3, 8, 8], &[4, 3, 3, 3], true, vec![]));
    assert_eq!(g.tensors[g.inputs[0]].name, "x");
    assert_eq!(g.tensors[g.outputs[0]].name, "y");
    assert_eq!(single(&g).name, "y");

    // Gemm expands to `y.ab` (EinSum), `y.alpha_ab` (Mul) and `y` (Add): the Dense takes the ONNX name.
    let b = OnnxBuilder::new(13)
        .input("x", &[1, 2])
        .initializer("w", &[2, 2], &iota(4))
        .initializer("c", &[2], &[1.0, 1.0])
        .node(
            "Gemm",
            &["x", "w", "c"],
            &["y"],
            vec![attr::float("alpha", 2.0)],
        )
        .output_unshaped("y");
    assert_eq!(single(&import(&b)).name, "y");
}

// ----- errors ---------------------------------------------------------------------------------------------------

#[test]
fn unsupported_ops_are_all_listed() {
    let b = OnnxBuilder::new(13)
        .input("x", &[1, 8])
        .initializer_i64("k", &[1], &[2])
        .named_node("hard", "Hardmax", &["x"], &["h"], vec![])
        .named_node("relu", "Relu", &["h"], &["r"], vec![])
        .named_node("top", "TopK", &["r", "k"], &["v", "i"], vec![])
        .named_node("fused", "FusedConv", &["v"], &["y"], vec![])
        .output_unshaped("y");
    let mut model = b.model();
    model.graph.as_mut().unwrap().node[3].domain = "com.microsoft".into();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.onnx");
    std::fs::write(&path, prost::Message::encode_to_vec(&model)).unwrap();
    let err = import_onnx(&path).expect_err("unsupported ops");
    assert_eq!(err.exit_code(), 2);
    let Error::Input(m) = err else {
        panic!("expected an input error")
    };
    println!("{m}");
    assert!(
        m.starts_with(&format!("{}: 3 unsupported nodes:\n", path.display())),
        "{m}"
    );
    assert!(m.contains("  node 'hard' (op Hardmax)\n"), "{m}");
    assert!(m.contains("  node 'top' (op TopK)\n"), "{m}");
    assert!(
        m.contains("  node 'fused' (op com.microsoft.FusedConv)\n"),
        "{m}"
    );
    assert!(!m.contains("'relu'"), "{m}");
    assert!(
        m.contains("Kiln supports these ONNX operators: Add, AveragePool"),
        "{m}"
    );
}

#[test]
fn unlowerable_nodes_are_all_listed() {
    let b = OnnxBuilder::new(13)
        .input("x", &[2, 4])
        .input("z", &[4, 3])
        .initializer_i64("pads", &[4], &[0, 1, 0, 1])
        .node("MatMul", &["x", "z"], &["m"], vec![])
        .node(
            "Pad",
            &["m", "pads"],
            &["p"],
            vec![attr::string("mode", "reflect")],
        )
        .node("Relu", &["x"], &["r"], vec![])
        .initializer_i64("pads2", &[4], &[0, 0, 0, 2])
        .node(
            "Pad",
            &["r", "pads2"],
            &["q"],
            vec![attr::string("mode", "edge")],
        )
        .output_unshaped("p")
        .output_unshaped("q");
    let m = import_input_error(&b);
    assert!(m.contains("2 nodes cannot be imported"), "{m}");
    assert!(
        m.contains("node 'm' (tract op EinSum, ONNX op MatMul): matrix product of two activations"),
        "{m}"
    );
    assert!(
        m.contains("node 'q' (tract op Pad, ONNX op Pad): Edge padding"),
        "{m}"
    );
    // 'p' reads the failed 'm' and is not reported on its own.
    assert!(!m.contains("node 'p'"), "{m}");
}

#[test]
fn not_onnx_and_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.onnx");
    std::fs::write(&garbage, b"\xff\xff\xff\xffnot a protobuf at all").unwrap();
    for path in [
        garbage,
        dir.path().join("empty.onnx"),
        dir.path().join("missing.onnx"),
    ] {
        if path.ends_with("empty.onnx") {
            std::fs::write(&path, b"").unwrap();
        }
        match import_onnx(&path) {
            Err(Error::Input(m)) => {
                println!("{m}");
                assert!(m.starts_with(&path.display().to_string()), "{m}");
            }
            other => panic!(
                "{}: expected an input error, got {:?}",
                path.display(),
                other.map(|g| g.to_string())
            ),
        }
    }
}

#[test]
fn non_float_input_is_rejected() {
    let mut model = OnnxBuilder::new(13)
        .input("x", &[1, 4])
        .node("Relu", &["x"], &["y"], vec![])
        .output_unshaped("y")
        .model();
    if let Some(tract_onnx::pb::type_proto::Value::TensorType(t)) =
        model.graph.as_mut().unwrap().input[0]
            .r#type
            .as_mut()
            .unwrap()
            .value
            .as_mut()
    {
        t.elem_type = tract_onnx::pb::tensor_proto::DataType::Int64 as i32;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("int.onnx");
    std::fs::write(&path, prost::Message::encode_to_vec(&model)).unwrap();
    match import_onnx(&path) {
        Err(Error::Input(m)) => assert!(m.contains("'x' has element type INT64"), "{m}"),
        other => panic!(
            "expected an input error, got {:?}",
            other.map(|g| g.to_string())
        ),
    }
}

#[test]
fn builder_tensor_helpers() {
    let t = tensor_f32("w", &[2], &[1.0, -2.0]);
    assert_eq!((t.dims.clone(), t.raw_data.len()), (vec![2], 8));
}

// ----- real models ----------------------------------------------------------------------------------------------

/// The MLPerf Tiny models, in `shared/models` next to the workspace.
fn import_shared(name: &str) -> Option<Graph> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/models");
    if !dir.is_dir() {
        println!("SKIPPED: {} is absent", dir.display());
        return None;
    }
    let path = dir.join(name);
    let g = import_onnx(&path).unwrap_or_else(|e| panic!("{e}"));
    println!(
        "==== {name}: {} nodes, {} MACs\n{g}",
        g.nodes.len(),
        g.nodes.iter().map(|n| g.macs(n)).sum::<u64>()
    );
    assert_same_as_tract(&decode(&path), &g);
    Some(g)
}

#[test]
fn real_model_kws_dscnn() {
    let Some(g) = import_shared("kws_dscnn_f32.onnx") else {
        return;
    };
    assert_eq!(g.tensors[g.inputs[0]].shape, vec![1, 49, 10, 1]);
    assert_eq!(g.tensors[g.outputs[0]].shape, vec![1, 12]);
    let k = kinds(&g);
    assert_eq!(k.iter().filter(|&&k| k == "Conv").count(), 9, "{k:?}");
    assert_eq!(k.last(), Some(&"Softmax"));
    assert!(k.contains(&"Dense") && k.contains(&"AveragePool"), "{k:?}");
    // tf2onnx's NHWC-to-NCHW reshape of the input, and the flatten before the classifier.
    assert_eq!(k.iter().filter(|&&k| k == "Reshape").count(), 2, "{k:?}");
    assert!(g
        .nodes
        .iter()
        .filter_map(|n| if let Op::Conv(c) = &n.op {
            Some(c)
        } else {
            None
        })
        .all(|c| c.data_format == DataFormat::ChannelsFirst));
}

#[test]
fn real_model_ic_resnet8() {
    let Some(g) = import_shared("ic_resnet8_f32.onnx") else {
        return;
    };
    assert_eq!(g.tensors[g.inputs[0]].shape, vec![1, 32, 32, 3]);
    assert_eq!(g.tensors[g.outputs[0]].shape, vec![1, 10]);
    let k = kinds(&g);
    assert_eq!(k.iter().filter(|&&k| k == "Conv").count(), 9, "{k:?}");
    assert_eq!(k.iter().filter(|&&k| k == "Add").count(), 3, "{k:?}");
    assert_eq!(k.last(), Some(&"Softmax"));
    // The NHWC input's transpose, and the flatten before the classifier.
    assert_eq!(
        (
            k.iter().filter(|&&k| k == "Transpose").count(),
            k.iter().filter(|&&k| k == "Reshape").count()
        ),
        (1, 1),
        "{k:?}"
    );
    // The two strided 1x1 shortcut convolutions keep their stride.
    let strided_1x1 = g
        .nodes
        .iter()
        .filter(|n| matches!(&n.op, Op::Conv(c) if c.kernel == [1, 1] && c.strides == [2, 2]))
        .count();
    assert_eq!(strided_1x1, 2);
}

#[test]
fn bundled_mnist_cnn() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/mnist_cnn.onnx");
    let g = import_onnx(&path).unwrap_or_else(|e| panic!("{e}"));
    println!("{g}");
    assert_same_as_tract(&decode(&path), &g);
    assert_eq!(
        kinds(&g),
        vec!["Conv", "Relu", "MaxPool", "Conv", "Relu", "MaxPool", "Reshape", "Dense"]
    );
    assert_eq!(g.outputs.len(), 1);
}

// ----- numerical check against tract ------------------------------------------------------------------------------

fn decode(path: &Path) -> ModelProto {
    prost::Message::decode(&*std::fs::read(path).expect("read model")).expect("decode model")
}

/// Deterministic values in [-1, 1).
fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Runs the ONNX model with tract (its own optimised path) and the IR with [`eval`] on the same inputs.
fn assert_same_as_tract(model: &ModelProto, g: &Graph) {
    use tract_onnx::prelude::*;
    let inputs: Vec<(Vec<usize>, Vec<f32>)> = g
        .inputs
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            let shape = g.tensors[t].shape.clone();
            let data = pseudo_random(shape.iter().product(), i as u64 + 1);
            (shape, data)
        })
        .collect();
    let mut m = tract_onnx::onnx()
        .model_for_proto_model(model)
        .expect("tract loads the model");
    for (i, (shape, _)) in inputs.iter().enumerate() {
        m.set_input_fact(i, f32::fact(shape.clone()).into())
            .unwrap();
    }
    let plan = m.into_optimized().unwrap().into_runnable().unwrap();
    let feed: TVec<TValue> = inputs
        .iter()
        .map(|(s, d)| Tensor::from_shape(s, d).unwrap().into())
        .collect();
    let want = plan.run(feed).expect("tract runs the model");
    let got = eval::run(g, &inputs);
    assert_eq!(want.len(), got.len());
    for (w, (shape, data)) in want.iter().zip(&got) {
        assert_eq!(w.shape(), shape.as_slice());
        let w: Vec<f32> = w
            .to_plain_array_view::<f32>()
            .unwrap()
            .iter()
            .copied()
            .collect();
        let scale = w.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        for (i, (a, b)) in w.iter().zip(data).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4 * scale,
                "output element {i}: tract {a}, IR {b}"
            );
        }
    }
}

/// A direct float interpreter of the IR, written from the IR's documentation (no layout changes, no fusion).
mod eval {
    use super::*;

    type T = (Vec<usize>, Vec<f32>);

    fn strides(shape: &[usize]) -> Vec<usize> {
        let mut s = vec![1; shape.len()];
        for i in (0..shape.len().saturating_sub(1)).rev() {
            s[i] = s[i + 1] * shape[i + 1];
        }
        s
    }

    fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
        let mut idx = vec![0; shape.len()];
        for i in (0..shape.len()).rev() {
            idx[i] = flat % shape[i];
            flat /= shape[i];
        }
        idx
    }

    fn ravel(idx: &[usize], shape: &[usize]) -> usize {
        idx.iter().zip(strides(shape)).map(|(i, s)| i * s).sum()
    }

    fn act(a: Activation, v: f32) -> f32 {
        let (lo, hi) = a.range();
        v.max(lo).min(hi)
    }

    pub fn run(g: &Graph, inputs: &[T]) -> Vec<T> {
        let mut vals: Vec<Option<Vec<f32>>> = g.tensors.iter().map(|t| t.value.clone()).collect();
        for (&t, (_, d)) in g.inputs.iter().zip(inputs) {
            vals[t] = Some(d.clone());
        }
        for n in &g.nodes {
            let ins: Vec<T> = n
                .inputs
                .iter()
                .map(|&t| {
                    (
                        g.tensors[t].shape.clone(),
                        vals[t]
                            .clone()
                            .unwrap_or_else(|| panic!("{} unset", g.tensors[t].name)),
                    )
                })
                .collect();
            let out_shape = g.tensors[n.output].shape.clone();
            let out = node(&n.op, &ins, &out_shape);
            assert_eq!(out.len(), out_shape.iter().product::<usize>(), "{}", n.name);
            vals[n.output] = Some(out);
        }
        g.outputs
            .iter()
            .map(|&t| (g.tensors[t].shape.clone(), vals[t].clone().unwrap()))
            .collect()
    }

    fn node(op: &Op, ins: &[T], out_shape: &[usize]) -> Vec<f32> {
        let len: usize = out_shape.iter().product();
        let x = &ins[0];
        match op {
            Op::Reshape => x.1.clone(),
            Op::Unary(k) => x.1.iter().map(|&v| k.apply(v)).collect(),
            Op::Binary { kind, act: a } => {
                let (b, r) = (&ins[1], out_shape.len());
                let at = |t: &T, idx: &[usize]| {
                    let off = r - t.0.len();
                    let i: Vec<usize> =
                        t.0.iter()
                            .enumerate()
                            .map(|(j, &d)| if d == 1 { 0 } else { idx[off + j] })
                            .collect();
                    t.1[ravel(&i, &t.0)]
                };
                (0..len)
                    .map(|f| {
                        let idx = unravel(f, out_shape);
                        let (u, v) = (at(x, &idx), at(b, &idx));
                        let y = match kind {
                            BinaryKind::Add => u + v,
                            BinaryKind::Sub => u - v,
                            BinaryKind::Mul => u * v,
                            BinaryKind::PRelu => {
                                if u > 0.0 {
                                    u
                                } else {
                                    u * v
                                }
                            }
                        };
                        act(*a, y)
                    })
                    .collect()
            }
            Op::Dense {
                weights,
                in_features,
                out_features,
                bias,
                act: a,
            } => {
                let rows = x.1.len() / in_features;
                let mut y = vec![0.0; rows * out_features];
                for r in 0..rows {
                    for o in 0..*out_features {
                        let mut acc = bias.as_ref().map_or(0.0, |b| b[o]);
                        for k in 0..*in_features {
                            acc += x.1[r * in_features + k] * weights[o * in_features + k];
                        }
                        y[r * out_features + o] = act(*a, acc);
                    }
                }
                y
            }
            Op::Conv(c) => conv(c, x, out_shape),
            Op::Pool(p) => pool(p, x, out_shape),
            Op::Softmax { axis, log } => {
                let (d, s) = (x.0[*axis], strides(&x.0)[*axis]);
                let mut y = x.1.clone();
                for f in 0..len {
                    if unravel(f, &x.0)[*axis] != 0 {
                        continue;
                    }
                    let m = (0..d)
                        .map(|i| x.1[f + i * s])
                        .fold(f32::NEG_INFINITY, f32::max);
                    let sum: f32 = (0..d).map(|i| (x.1[f + i * s] - m).exp()).sum();
                    for i in 0..d {
                        let e = x.1[f + i * s] - m;
                        y[f + i * s] = if *log { e - sum.ln() } else { e.exp() / sum };
                    }
                }
                y
            }
            Op::Pad {
                pads_begin,
                pads_end: _,
                value,
            } => (0..len)
                .map(|f| {
                    let idx = unravel(f, out_shape);
                    let src: Option<Vec<usize>> = idx
                        .iter()
                        .zip(pads_begin)
                        .zip(&x.0)
                        .map(|((&i, &p), &d)| i.checked_sub(p).filter(|&i| i < d))
                        .collect();
                    src.map_or(*value, |s| x.1[ravel(&s, &x.0)])
                })
                .collect(),
            Op::Concat { axis } => (0..len)
                .map(|f| {
                    let mut idx = unravel(f, out_shape);
                    for t in ins {
                        if idx[*axis] < t.0[*axis] {
                            return t.1[ravel(&idx, &t.0)];
                        }
                        idx[*axis] -= t.0[*axis];
                    }
                    unreachable!()
                })
                .collect(),
            Op::Slice {
                axis,
                start,
                end: _,
            } => (0..len)
                .map(|f| {
                    let mut idx = unravel(f, out_shape);
                    idx[*axis] += start;
                    x.1[ravel(&idx, &x.0)]
                })
                .collect(),
            Op::Transpose { perm } => (0..len)
                .map(|f| {
                    let idx = unravel(f, out_shape);
                    let mut src = vec![0; perm.len()];
                    for (i, &p) in perm.iter().enumerate() {
                        src[p] = idx[i];
                    }
                    x.1[ravel(&src, &x.0)]
                })
                .collect(),
            Op::ReduceMean { axes } => {
                let kept: Vec<usize> =
                    x.0.iter()
                        .enumerate()
                        .map(|(i, &d)| if axes.contains(&i) { 1 } else { d })
                        .collect();
                let n: usize = axes.iter().map(|&a| x.0[a]).product();
                let mut y = vec![0.0; kept.iter().product()];
                for f in 0..x.1.len() {
                    let mut idx = unravel(f, &x.0);
                    axes.iter().for_each(|&a| idx[a] = 0);
                    y[ravel(&idx, &kept)] += x.1[f] / n as f32;
                }
                y
            }
        }
    }

    /// `(batch, channels, spatial shape, index of (b, c, spatial) in a tensor)` of a conv/pool tensor.
    fn layout(shape: &[usize], cl: bool) -> (usize, usize, Vec<usize>) {
        let r = shape.len();
        if cl {
            (shape[0], shape[r - 1], shape[1..r - 1].to_vec())
        } else {
            (shape[0], shape[1], shape[2..].to_vec())
        }
    }

    fn at(shape: &[usize], cl: bool, b: usize, c: usize, sp: &[usize]) -> usize {
        let (_, ch, spatial) = layout(shape, cl);
        let s = ravel(sp, &spatial);
        let area: usize = spatial.iter().product();
        if cl {
            (b * area + s) * ch + c
        } else {
            (b * ch + c) * area + s
        }
    }

    /// The input position read by output position `o` and kernel position `k`, if inside the input.
    fn source(
        o: &[usize],
        k: &[usize],
        st: &[usize],
        dil: &[usize],
        pb: &[usize],
        dims: &[usize],
    ) -> Option<Vec<usize>> {
        (0..o.len())
            .map(|j| {
                let p = (o[j] * st[j] + k[j] * dil[j]) as isize - pb[j] as isize;
                (p >= 0 && (p as usize) < dims[j]).then_some(p as usize)
            })
            .collect()
    }

    fn conv(c: &ConvAttrs, x: &T, out_shape: &[usize]) -> Vec<f32> {
        let cl = c.data_format == DataFormat::ChannelsLast;
        let (n, cin, xsp) = layout(&x.0, cl);
        let (_, cout, osp) = layout(out_shape, cl);
        let (cin_g, cout_g) = (cin / c.group, cout / c.group);
        let ksize: usize = c.kernel.iter().product();
        let mut y = vec![0.0; out_shape.iter().product()];
        for b in 0..n {
            for o in 0..cout {
                let grp = o / cout_g;
                for of in 0..osp.iter().product() {
                    let opos = unravel(of, &osp);
                    let mut acc = c.bias.as_ref().map_or(0.0, |b| b[o]);
                    for kf in 0..ksize {
                        let kpos = unravel(kf, &c.kernel);
                        let Some(src) =
                            source(&opos, &kpos, &c.strides, &c.dilations, &c.pads_begin, &xsp)
                        else {
                            continue;
                        };
                        for i in 0..cin_g {
                            acc += x.1[at(&x.0, cl, b, grp * cin_g + i, &src)]
                                * c.weights[(o * ksize + kf) * cin_g + i];
                        }
                    }
                    y[at(out_shape, cl, b, o, &opos)] = act(c.act, acc);
                }
            }
        }
        y
    }

    fn pool(p: &PoolAttrs, x: &T, out_shape: &[usize]) -> Vec<f32> {
        let cl = p.data_format == DataFormat::ChannelsLast;
        let (n, ch, xsp) = layout(&x.0, cl);
        let (_, _, osp) = layout(out_shape, cl);
        let ones = vec![1; p.kernel.len()];
        let mut y = vec![0.0; out_shape.iter().product()];
        for b in 0..n {
            for c in 0..ch {
                for of in 0..osp.iter().product() {
                    let opos = unravel(of, &osp);
                    let (mut max, mut sum, mut count, mut padded_count) =
                        (f32::NEG_INFINITY, 0.0, 0usize, 0usize);
                    for kf in 0..p.kernel.iter().product() {
                        let kpos = unravel(kf, &p.kernel);
                        let in_padded = (0..kpos.len()).all(|j| {
                            let q = opos[j] * p.strides[j] + kpos[j];
                            q < xsp[j] + p.pads_begin[j] + p.pads_end[j]
                        });
                        padded_count += in_padded as usize;
                        if let Some(src) =
                            source(&opos, &kpos, &p.strides, &ones, &p.pads_begin, &xsp)
                        {
                            let v = x.1[at(&x.0, cl, b, c, &src)];
                            max = max.max(v);
                            sum += v;
                            count += 1;
                        }
                    }
                    y[at(out_shape, cl, b, c, &opos)] = match p.kind {
                        PoolKind::Max => max,
                        PoolKind::Avg {
                            count_include_pad: true,
                        } => sum / padded_count as f32,
                        PoolKind::Avg {
                            count_include_pad: false,
                        } => sum / count as f32,
                    };
                }
            }
        }
        y
    }
}
