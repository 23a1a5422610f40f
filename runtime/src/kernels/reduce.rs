//! Mean over a set of axes, int8 and f32.

use super::{dot_index, for_each_index, output_s8, row_major_strides};
use crate::format::{ReduceMeanF32, ReduceMeanS8, MAX_RANK};

/// Kept and reduced axes after merging neighbours of the same kind (`[N, H, W, C]` reduced over `H, W` becomes
/// kept `[N, C]`, reduced `[H * W]`), with their input strides.
struct Plan {
    kept: [usize; MAX_RANK],
    kept_strides: [usize; MAX_RANK],
    n_kept: usize,
    red: [usize; MAX_RANK],
    red_strides: [usize; MAX_RANK],
    n_red: usize,
}

impl Plan {
    fn new(dims: &[u32], axes: u8) -> Plan {
        let rank = dims.len().min(MAX_RANK);
        // Merge runs of axes with the same kind (row-major: a run is one axis of the product of its sizes).
        let mut merged = [0usize; MAX_RANK];
        let mut reduced = [false; MAX_RANK];
        let mut m = 0usize;
        for (d, &size) in dims[..rank].iter().enumerate() {
            let r = axes & (1 << d) != 0;
            if m > 0 && reduced[m - 1] == r {
                merged[m - 1] = merged[m - 1].saturating_mul(size as usize);
            } else {
                merged[m] = size as usize;
                reduced[m] = r;
                m += 1;
            }
        }
        let strides = row_major_strides(&merged[..m]);
        let mut p = Plan {
            kept: [0; MAX_RANK],
            kept_strides: [0; MAX_RANK],
            n_kept: 0,
            red: [0; MAX_RANK],
            red_strides: [0; MAX_RANK],
            n_red: 0,
        };
        for d in 0..m {
            if reduced[d] {
                p.red[p.n_red] = merged[d];
                p.red_strides[p.n_red] = strides[d];
                p.n_red += 1;
            } else {
                p.kept[p.n_kept] = merged[d];
                p.kept_strides[p.n_kept] = strides[d];
                p.n_kept += 1;
            }
        }
        p
    }

    /// Elements averaged into each output.
    fn count(&self) -> usize {
        self.red[..self.n_red].iter().product()
    }

    /// `f(out_index, base)` for each output element in order; `base` is the input offset of its first element.
    #[inline(always)]
    fn for_each_output(&self, mut f: impl FnMut(usize, usize)) {
        let mut o = 0;
        for_each_index(&self.kept[..self.n_kept], |kidx| {
            f(o, dot_index(kidx, &self.kept_strides[..self.n_kept]));
            o += 1;
        });
    }

    /// `g(offset)` for the input offset of each element reduced into the output starting at `base`, row-major.
    #[inline(always)]
    fn for_each_reduced(&self, base: usize, mut g: impl FnMut(usize)) {
        let strides = &self.red_strides[..self.n_red];
        for_each_index(&self.red[..self.n_red], |ridx| {
            g(base + dot_index(ridx, strides))
        });
    }
}

/// int8 mean over the axes set in `p.axes` of `[dims]` (bit `d` = axis `d`), output row-major over the kept axes:
/// `y = clamp(requantize(sum (x - input_zero_point), multiplier, shift) + output_zero_point, -128, 127)`
/// (saturating add), the multiplier carrying `input_scale / (output_scale * count)`. The sum is exact (at most
/// [`super::MAX_SUM_LEN`] elements).
pub fn reduce_mean_s8(p: &ReduceMeanS8, input: &[i8], output: &mut [i8]) {
    let plan = Plan::new(&p.dims, p.axes);
    let zp = p.input_zero_point;
    plan.for_each_output(|o, base| {
        let mut sum = 0i32;
        plan.for_each_reduced(base, |i| sum += input[i] as i32 - zp);
        output[o] = output_s8(sum, p.multiplier, p.shift, p.output_zero_point, -128, 127);
    });
}

/// f32 mean over the axes set in `p.axes`: the f32 sum (row-major order) divided by the element count.
pub fn reduce_mean_f32(p: &ReduceMeanF32, input: &[f32], output: &mut [f32]) {
    let plan = Plan::new(&p.dims, p.axes);
    let n = plan.count().max(1) as f32;
    plan.for_each_output(|o, base| {
        let mut sum = 0f32;
        plan.for_each_reduced(base, |i| sum += input[i]);
        output[o] = sum / n;
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use heapless::Vec;

    #[test]
    fn merges_axes() {
        let p = Plan::new(&[2, 3, 4, 5], 0b0110);
        assert_eq!(
            (p.n_kept, &p.kept[..2], &p.kept_strides[..2]),
            (2, &[2, 5][..], &[60, 1][..])
        );
        assert_eq!(
            (p.n_red, &p.red[..1], &p.red_strides[..1]),
            (1, &[12][..], &[5][..])
        );
    }

    #[test]
    fn f32_mean_over_middle_axis() {
        // [2, 3, 2], mean over axis 1.
        let x: [f32; 12] = [0., 1., 2., 3., 4., 5., 6., 7., 8., 9., 10., 11.];
        let p = ReduceMeanF32 {
            dims: Vec::from_slice(&[2, 3, 2]).unwrap(),
            axes: 0b010,
        };
        let mut y = [0f32; 4];
        reduce_mean_f32(&p, &x, &mut y);
        assert_eq!(y, [2.0, 3.0, 8.0, 9.0]);
        let p = ReduceMeanF32 {
            dims: Vec::from_slice(&[2, 3, 2]).unwrap(),
            axes: 0b111,
        };
        let mut y = [0f32; 1];
        reduce_mean_f32(&p, &x, &mut y);
        assert_eq!(y, [5.5]);
    }

    #[test]
    fn s8_mean() {
        // mean of [1, 2, 3, 5] = 2.75 with multiplier 1/4 -> 11 * 0.25 = 2.75 -> 3, + zp 1 -> 4.
        let p = ReduceMeanS8 {
            dims: Vec::from_slice(&[4]).unwrap(),
            axes: 1,
            input_zero_point: 0,
            output_zero_point: 1,
            multiplier: 1 << 30,
            shift: -1,
        };
        let mut y = [0i8; 1];
        reduce_mean_s8(&p, &[1, 2, 3, 5], &mut y);
        assert_eq!(y, [4]);
    }
}
