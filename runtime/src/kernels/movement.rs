//! Data movement on raw bytes (any element type): pad, concat, slice, transpose, copy.

use super::{dims_usize, dot_index, for_each_index, row_major_strides};
use crate::format::{ConcatParams, PadParams, SliceParams, TransposeParams, MAX_RANK};

/// Constant padding. The output (`dims[d] + before[d] + after[d]` per axis, row-major) is first filled with the
/// element pattern (the low `elem_bytes` bytes of `value`, little-endian; bytes beyond the fourth are 0), then each
/// innermost input row is copied into place.
///
/// Preconditions: `dims`, `before`, `after` have the same length (1 to `MAX_RANK`), `input` holds
/// `prod(dims) * elem_bytes` bytes and `output` `prod(dims + before + after) * elem_bytes`.
pub fn pad(p: &PadParams, input: &[u8], output: &mut [u8]) {
    let eb = p.elem_bytes as usize;
    if eb == 0 {
        return;
    }
    let value = p.value.to_le_bytes();
    for elem in output.chunks_exact_mut(eb) {
        for (i, byte) in elem.iter_mut().enumerate() {
            *byte = value.get(i).copied().unwrap_or(0);
        }
    }
    let (dims, rank) = dims_usize(&p.dims);
    let (before, _) = dims_usize(&p.before);
    let (after, _) = dims_usize(&p.after);
    if rank == 0 || dims[..rank].contains(&0) {
        return; // nothing to copy (and no loop over the other axes of an empty input)
    }
    let mut out_dims = [0usize; MAX_RANK];
    for d in 0..rank {
        out_dims[d] = before[d] + dims[d] + after[d];
    }
    let out_strides = row_major_strides(&out_dims[..rank]);
    let last = rank - 1;
    let row_bytes = dims[last] * eb;
    let mut src = 0usize;
    for_each_index(&dims[..last], |idx| {
        let mut dst = before[last];
        for d in 0..last {
            dst += (idx[d] + before[d]) * out_strides[d];
        }
        let dst = dst * eb;
        output[dst..dst + row_bytes].copy_from_slice(&input[src..src + row_bytes]);
        src += row_bytes;
    });
}

/// Concatenation along the middle axis of `[outer, sum(parts), inner]`: for each outer index, the
/// `parts[i] * inner_bytes` bytes of each input `i` in turn. `inputs[i]` holds `outer * parts[i] * inner_bytes`
/// bytes, `output` `outer * sum(parts) * inner_bytes`; `inputs` and `parts` have the same length.
pub fn concat(p: &ConcatParams, inputs: &[&[u8]], output: &mut [u8]) {
    let inner = p.inner_bytes as usize;
    if output.is_empty() {
        return; // every part is empty: no loop over `outer`
    }
    let mut o = 0usize;
    for r in 0..p.outer as usize {
        for (&part, input) in p.parts.iter().zip(inputs) {
            let n = part as usize * inner;
            output[o..o + n].copy_from_slice(&input[r * n..(r + 1) * n]);
            o += n;
        }
    }
}

/// `y = x[:, start..start + len, :]` of `x` shaped `[outer, axis_len, inner]` (bytes of one `inner` run:
/// `inner_bytes`). Preconditions: `start + len <= axis_len`, `input` holds `outer * axis_len * inner_bytes` bytes,
/// `output` `outer * len * inner_bytes`.
pub fn slice(p: &SliceParams, input: &[u8], output: &mut [u8]) {
    let inner = p.inner_bytes as usize;
    let n = p.len as usize * inner;
    if n == 0 {
        return;
    }
    for r in 0..p.outer as usize {
        let src = (r * p.axis_len as usize + p.start as usize) * inner;
        output[r * n..(r + 1) * n].copy_from_slice(&input[src..src + n]);
    }
}

/// Transpose of elements of `elem_bytes` bytes: `y.shape[i] = dims[perm[i]]`, `y[j_0, .., j_r] = x[i]` with
/// `i[perm[k]] = j_k`. Output written in order, input read with strides. Preconditions: `perm` is a permutation of
/// `0..dims.len()` (1 to `MAX_RANK` axes), `input` and `output` hold `prod(dims) * elem_bytes` bytes.
pub fn transpose(p: &TransposeParams, input: &[u8], output: &mut [u8]) {
    let eb = p.elem_bytes as usize;
    let (dims, rank) = dims_usize(&p.dims);
    if eb == 0 || rank == 0 || dims[..rank].contains(&0) {
        return;
    }
    let in_strides = row_major_strides(&dims[..rank]);
    let mut out_dims = [0usize; MAX_RANK];
    let mut src_strides = [0usize; MAX_RANK]; // input stride (elements) of each output axis
    for (i, &axis) in p.perm.iter().take(rank).enumerate() {
        out_dims[i] = dims[axis as usize];
        src_strides[i] = in_strides[axis as usize];
    }
    let last = rank - 1;
    let (n, step) = (out_dims[last], src_strides[last] * eb);
    let mut o = 0usize;
    for_each_index(&out_dims[..last], |idx| {
        let base = dot_index(idx, &src_strides[..last]) * eb;
        if eb == 1 {
            for (i, y) in output[o..o + n].iter_mut().enumerate() {
                *y = input[base + i * step];
            }
        } else {
            for (i, y) in output[o * eb..(o + n) * eb]
                .chunks_exact_mut(eb)
                .enumerate()
            {
                let s = base + i * step;
                y.copy_from_slice(&input[s..s + eb]);
            }
        }
        o += n;
    });
}

/// Copies `min(input.len(), output.len())` bytes.
pub fn copy(input: &[u8], output: &mut [u8]) {
    let n = input.len().min(output.len());
    output[..n].copy_from_slice(&input[..n]);
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use heapless::Vec;

    fn d(v: &[u32]) -> Vec<u32, MAX_RANK> {
        Vec::from_slice(v).unwrap()
    }

    #[test]
    fn pad_2d_u16() {
        // [[1, 2]] padded by one row above, one column each side, value 0xABCD.
        let p = PadParams {
            dims: d(&[1, 2]),
            before: d(&[1, 1]),
            after: d(&[0, 1]),
            elem_bytes: 2,
            value: 0xABCD,
        };
        let x = [1u8, 0, 2, 0];
        let mut y = [0u8; 16];
        pad(&p, &x, &mut y);
        let c = [0xCD, 0xAB];
        let expect = [c, c, c, c, c, [1, 0], [2, 0], c].concat();
        assert_eq!(&y[..], &expect[..]);
    }

    #[test]
    fn concat_and_slice() {
        let p = ConcatParams {
            outer: 2,
            inner_bytes: 1,
            parts: Vec::from_slice(&[1, 2]).unwrap(),
        };
        let mut y = [0u8; 6];
        concat(&p, &[&[1, 2], &[10, 11, 20, 21]], &mut y);
        assert_eq!(y, [1, 10, 11, 2, 20, 21]);
        let s = SliceParams {
            outer: 2,
            axis_len: 3,
            start: 1,
            len: 2,
            inner_bytes: 1,
        };
        let mut z = [0u8; 4];
        slice(&s, &y, &mut z);
        assert_eq!(z, [10, 11, 20, 21]);
    }

    #[test]
    fn transpose_2x3_u8_and_u32() {
        let p = TransposeParams {
            dims: d(&[2, 3]),
            perm: d(&[1, 0]),
            elem_bytes: 1,
        };
        let mut y = [0u8; 6];
        transpose(&p, &[0, 1, 2, 3, 4, 5], &mut y);
        assert_eq!(y, [0, 3, 1, 4, 2, 5]);
        let p = TransposeParams { elem_bytes: 4, ..p };
        let x: [u32; 6] = [0, 1, 2, 3, 4, 5];
        let mut y = [0u32; 6];
        transpose(
            &p,
            bytemuck::cast_slice(&x),
            bytemuck::cast_slice_mut(&mut y),
        );
        assert_eq!(y, [0, 3, 1, 4, 2, 5]);
    }
}
