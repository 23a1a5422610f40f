//! Top-1 accuracy on labelled data (an `.npz` with samples `x`, shaped as for `kiln run`, and integer labels
//! `y`): what `kiln eval`, `--prune-budget` and `kiln report` measure.

use std::path::Path;

use ndarray::ArrayD;

use crate::error::{input, Result};
use crate::npy;
use crate::runner::{ModelBuf, Runner};

/// The samples `x` and labels `y` of a labelled `.npz`.
pub fn read_labelled(path: &Path) -> Result<(ArrayD<f32>, Vec<f32>)> {
    let mut arrays = npy::read_npz(path)?;
    let mut take = |k: &str| {
        arrays
            .iter()
            .position(|(n, _)| n == k)
            .map(|i| arrays.swap_remove(i).1)
            .ok_or_else(|| {
                input(format!(
                    "{}: no array '{k}' (labelled data needs `x` and `y`)",
                    path.display()
                ))
            })
    };
    let (x, y) = (take("x")?, take("y")?);
    Ok((x, y.iter().copied().collect()))
}

/// Index of the largest value (the first of equals; 0 for an empty row).
pub fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &x)| if x > b.1 { (i, x) } else { b },
        )
        .0
}

/// The argmax over the last axis of output 0, for every row of every sample of `x` (one `infer` call per
/// sample; `shape` is the model input's).
pub fn predictions(
    x: &ArrayD<f32>,
    shape: &[usize],
    what: &str,
    mut infer: impl FnMut(&[ArrayD<f32>]) -> Result<Vec<ArrayD<f32>>>,
) -> Result<Vec<usize>> {
    let b = npy::batching(x.shape(), shape, &format!("{what}[x]"))?;
    let mut out = Vec::new();
    for s in npy::split(x, b, shape) {
        let y = infer(&[s])?
            .into_iter()
            .next()
            .ok_or_else(|| input("the model has no output"))?;
        let y = y.as_standard_layout();
        let last = y.shape().last().copied().unwrap_or(1).max(1);
        out.extend(y.as_slice().unwrap_or(&[]).chunks(last).map(argmax));
    }
    Ok(out)
}

/// How many of `predicted` equal their label; an input error when the counts differ.
pub fn correct(predicted: &[usize], labels: &[f32], what: &str) -> Result<usize> {
    if predicted.len() != labels.len() {
        return Err(input(format!(
            "{what}: {} predictions but {} labels",
            predicted.len(),
            labels.len()
        )));
    }
    Ok(predicted
        .iter()
        .zip(labels)
        .filter(|(&p, &l)| p as f32 == l)
        .count())
}

/// Top-1 accuracy (0..1) of `infer` on `x` and `labels`.
pub fn top1(
    x: &ArrayD<f32>,
    labels: &[f32],
    shape: &[usize],
    what: &str,
    infer: impl FnMut(&[ArrayD<f32>]) -> Result<Vec<ArrayD<f32>>>,
) -> Result<f64> {
    let right = correct(&predictions(x, shape, what, infer)?, labels, what)?;
    Ok(right as f64 / labels.len().max(1) as f64)
}

/// Top-1 accuracy (0..1) of a compiled model (`.kiln` bytes) on Kiln's runtime.
pub fn kiln_top1(model: &[u8], x: &ArrayD<f32>, labels: &[f32], what: &str) -> Result<f64> {
    let buf = ModelBuf::new(model);
    let model = buf.model()?;
    let mut runner = Runner::new(&model);
    let shape = runner
        .input_shapes()?
        .into_iter()
        .next()
        .ok_or_else(|| input("the model has no input"))?;
    top1(x, labels, &shape, what, |s| runner.run(s, |_| {}))
}
