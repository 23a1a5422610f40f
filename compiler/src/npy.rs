//! Reading and writing `.npy` / `.npz` arrays, and splitting a user's array into per-inference samples.

use std::fs::File;
use std::io::{BufReader, Write};
use std::path::Path;

use ndarray::{ArrayD, Axis, IxDyn};
use ndarray_npy::{ReadNpyExt, WriteNpyExt};

use crate::error::{input, Error, Result};

fn read_any<R: std::io::Read>(
    mut open: impl FnMut() -> std::io::Result<R>,
    what: &str,
) -> Result<ArrayD<f32>> {
    macro_rules! attempt {
        ($t:ty) => {
            if let Ok(a) =
                ArrayD::<$t>::read_npy(open().map_err(|e| input(format!("{what}: {e}")))?)
            {
                return Ok(a.mapv(|v| v as f32));
            }
        };
    }
    attempt!(f32);
    attempt!(f64);
    attempt!(u8);
    attempt!(i8);
    attempt!(i32);
    attempt!(i64);
    attempt!(u16);
    attempt!(i16);
    let err = ArrayD::<f32>::read_npy(open().map_err(|e| input(format!("{what}: {e}")))?).err();
    Err(input(format!(
        "{what}: not a readable .npy array of numbers ({})",
        err.map_or_else(|| "unsupported dtype".to_string(), |e| e.to_string())
    )))
}

/// Reads a `.npy` file of any real dtype as f32.
pub fn read_npy(path: &Path) -> Result<ArrayD<f32>> {
    let what = path.display().to_string();
    if !path.exists() {
        return Err(input(format!("{what}: no such file")));
    }
    read_any(|| File::open(path).map(BufReader::new), &what)
}

/// Reads every numeric array of a `.npz` file, as (name, f32 array), in file order.
pub fn read_npz(path: &Path) -> Result<Vec<(String, ArrayD<f32>)>> {
    let what = path.display().to_string();
    let file = File::open(path).map_err(|e| input(format!("{what}: {e}")))?;
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| input(format!("{what}: not a readable .npz file ({e})")))?;
    let mut out = Vec::new();
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| input(format!("{what}: {e}")))?;
        let key = entry.name().trim_end_matches(".npy").to_string();
        let mut bytes = Vec::new();
        std::io::copy(&mut entry, &mut bytes).map_err(|e| input(format!("{what}[{key}]: {e}")))?;
        // Arrays that are not numbers (labels as strings, say) are left out; asking for one by name then fails
        // with the list of what the file does hold.
        if let Ok(arr) = read_any(
            || Ok(std::io::Cursor::new(bytes.as_slice())),
            &format!("{what}[{key}]"),
        ) {
            out.push((key, arr));
        }
    }
    Ok(out)
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, renamed into place, so a failure
/// never leaves a half-written file behind.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let what = path.display();
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| input(format!("{what}: cannot write ({e})")))?;
    tmp.write_all(bytes)
        .map_err(|e| input(format!("{what}: cannot write ({e})")))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| Error::Internal(e.into()))?;
    tmp.persist(path)
        .map_err(|e| input(format!("{what}: cannot write ({})", e.error)))?;
    Ok(())
}

/// Writes an f32 array as `.npy`, atomically.
pub fn write_npy(path: &Path, a: &ArrayD<f32>) -> Result<()> {
    let mut bytes = Vec::new();
    a.write_npy(&mut bytes)
        .map_err(|e| Error::Internal(e.into()))?;
    write_atomic(path, &bytes)
}

/// Writes `a` as `.npy` of the element type a model gives that output (float32, or int8 / uint8 values held in
/// `a` as floats), atomically.
pub fn write_npy_as(path: &Path, a: &ArrayD<f32>, ty: kiln_runtime::format::IoType) -> Result<()> {
    use kiln_runtime::format::IoType;
    let mut bytes = Vec::new();
    let written = match ty {
        IoType::F32 => a.write_npy(&mut bytes),
        IoType::I8 => a.mapv(|v| v as i8).write_npy(&mut bytes),
        IoType::U8 => a.mapv(|v| v as u8).write_npy(&mut bytes),
    };
    written.map_err(|e| Error::Internal(e.into()))?;
    write_atomic(path, &bytes)
}

/// How a user's array maps onto inferences of a model input shaped `shape`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Batching {
    /// Exactly the input's shape: one inference.
    Single,
    /// `[N] + shape`: N inferences, outputs stacked on a new leading axis.
    Prepended(usize),
    /// Leading axis `N * shape[0]`: N inferences, outputs concatenated on their leading axis.
    Leading(usize),
}

/// Decides how `x` maps onto inferences of an input shaped `shape`.
///
/// # Errors
/// [`Error::Input`] naming both shapes when `x` fits none of the accepted forms.
pub fn batching(x: &[usize], shape: &[usize], what: &str) -> Result<Batching> {
    if x == shape {
        return Ok(Batching::Single);
    }
    if x.len() == shape.len() + 1 && &x[1..] == shape {
        return Ok(Batching::Prepended(x[0]));
    }
    if x.len() == shape.len()
        && !shape.is_empty()
        && x[1..] == shape[1..]
        && shape[0] > 0
        && x[0].is_multiple_of(shape[0])
    {
        return Ok(Batching::Leading(x[0] / shape[0]));
    }
    Err(input(format!(
        "{what}: shape {x:?} does not fit the model input {shape:?} (give {shape:?}, [N, ..{shape:?}], or the \
         input shape with its leading dimension a multiple of {})",
        shape.first().copied().unwrap_or(1)
    )))
}

/// Splits `x` into the per-inference arrays `batching` describes.
pub fn split(x: &ArrayD<f32>, b: Batching, shape: &[usize]) -> Vec<ArrayD<f32>> {
    match b {
        Batching::Single => vec![x.clone()],
        Batching::Prepended(n) => (0..n)
            .map(|i| x.index_axis(Axis(0), i).to_owned())
            .collect(),
        Batching::Leading(n) => (0..n)
            .map(|i| {
                let s = ndarray::Slice::from(i * shape[0]..(i + 1) * shape[0]);
                x.slice_axis(Axis(0), s).to_owned()
            })
            .collect(),
    }
}

/// Stacks per-inference outputs back the way their inputs were split.
pub fn stack(parts: &[ArrayD<f32>], b: Batching) -> Result<ArrayD<f32>> {
    let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
    let out = match b {
        Batching::Single => parts
            .first()
            .cloned()
            .unwrap_or_else(|| ArrayD::zeros(IxDyn(&[0]))),
        Batching::Prepended(_) => {
            ndarray::stack(Axis(0), &views).map_err(|e| Error::Internal(e.into()))?
        }
        Batching::Leading(_) => {
            ndarray::concatenate(Axis(0), &views).map_err(|e| Error::Internal(e.into()))?
        }
    };
    Ok(out)
}
