//! Helpers shared by the ops' `check` and `eval`.

use crate::error::{Error, Field};
use crate::format::{Dims, OpDef, Operand, Span, MAX_RANK};
use crate::quant;

/// The op index carried by errors raised in `eval` (which does not know its index; they cannot happen after a
/// successful `check` unless the caller hands `eval` slices of the wrong length or alignment).
pub const EVAL_OP: u16 = u16::MAX;

/// Largest coordinate a kernel computes (window ends, padded positions): keeps `usize` arithmetic far from overflow
/// on 32-bit targets.
pub const MAX_COORD: u64 = i32::MAX as u64;

/// Whether `d` divides `n` (false for `d = 0`).
pub fn divides(d: u32, n: u32) -> bool {
    n.checked_rem(d) == Some(0)
}

/// `a * b * ...` without overflow; `None` if it overflows `u64`.
pub fn prod(items: impl IntoIterator<Item = u64>) -> Option<u64> {
    items
        .into_iter()
        .try_fold(1u64, |acc, x| acc.checked_mul(x))
}

/// `a * b * ...`, `None` if it overflows `u32`. The loader's size arithmetic: every size it computes is compared
/// with a `u32` operand length, so a product overflowing `u32` is already a mismatch (and 64-bit arithmetic
/// would double this once-run code on a 32-bit core).
pub fn prod32(items: impl IntoIterator<Item = u32>) -> Option<u32> {
    items
        .into_iter()
        .try_fold(1u32, |acc, x| acc.checked_mul(x))
}

/// A value for [`Error::BadParam`] (saturated to `i32`).
pub fn val(v: impl TryInto<i64>) -> i32 {
    let v: i64 = v.try_into().unwrap_or(i64::MAX);
    v.clamp(i32::MIN as i64, i32::MAX as i64) as i32
}

/// The state of one `check`: the op's index, definition and the weight blob.
pub struct Ck<'o, 'a> {
    pub op: u16,
    pub def: &'o OpDef<'a>,
    pub blob: &'o [u8],
}

impl<'o, 'a> Ck<'o, 'a> {
    pub fn bad(&self, field: Field, value: impl TryInto<i64>) -> Error {
        Error::BadParam {
            op: self.op,
            field,
            value: val(value),
        }
    }

    /// `cond` or [`Error::BadParam`] with `value`.
    pub fn ensure(&self, cond: bool, field: Field, value: impl TryInto<i64>) -> Result<(), Error> {
        if cond {
            Ok(())
        } else {
            Err(self.bad(field, value))
        }
    }

    pub fn arity(&self, expected: usize) -> Result<(), Error> {
        let found = self.def.inputs.len();
        if found != expected {
            return Err(Error::Arity {
                op: self.op,
                expected: val(expected) as u8,
                found: found as u8,
            });
        }
        Ok(())
    }

    pub fn input(&self, i: usize) -> Result<Operand, Error> {
        self.def.inputs.get(i).copied().ok_or(Error::Arity {
            op: self.op,
            expected: (i + 1) as u8,
            found: self.def.inputs.len() as u8,
        })
    }

    /// `found == expected` bytes (`expected: None` means the shape's size overflows).
    pub fn size(&self, field: Field, found: u32, expected: Option<u64>) -> Result<(), Error> {
        match expected {
            Some(e) if e == found as u64 => Ok(()),
            e => Err(Error::SizeMismatch {
                op: self.op,
                field,
                expected: e.unwrap_or(u64::MAX).min(u32::MAX as u64) as u32,
                found,
            }),
        }
    }

    fn aligned(&self, field: Field, offset: u32, align: u32) -> Result<(), Error> {
        if align > 1 && !divides(align, offset) {
            return Err(Error::Misaligned {
                op: self.op,
                field,
                offset,
                align,
            });
        }
        Ok(())
    }

    /// Input `i` holds exactly `expected` bytes and is `align`-aligned.
    pub fn input_size(&self, i: usize, expected: Option<u64>, align: u32) -> Result<(), Error> {
        let o = self.input(i)?;
        let field = Field::Input(i as u8);
        self.size(field, o.len, expected)?;
        self.aligned(field, o.offset, align)
    }

    /// The output holds exactly `expected` bytes and is `align`-aligned.
    pub fn output_size(&self, expected: Option<u64>, align: u32) -> Result<(), Error> {
        self.size(Field::Output, self.def.output.len, expected)?;
        self.aligned(Field::Output, self.def.output.offset, align)
    }

    /// A blob span: inside the blob, `align`-aligned, exactly `expected` bytes. Returns its bytes.
    pub fn span(
        &self,
        field: Field,
        s: Span,
        expected: Option<u64>,
        align: u32,
    ) -> Result<&'o [u8], Error> {
        let end = s.offset.checked_add(s.len);
        let bytes = end.and_then(|end| self.blob.get(s.offset as usize..end as usize));
        let Some(bytes) = bytes else {
            return Err(Error::OutOfBounds {
                op: self.op,
                field,
                end: end.unwrap_or(u32::MAX),
                limit: self.blob.len().min(u32::MAX as usize) as u32,
            });
        };
        self.aligned(field, s.offset, align)?;
        self.size(field, s.len, expected)?;
        Ok(bytes)
    }

    /// An int8 zero point, in `-128..=127`.
    pub fn zero_point(&self, zp: i32) -> Result<(), Error> {
        self.ensure((-128..=127).contains(&zp), Field::Params, zp)
    }

    pub fn act_range_s8(&self, lo: i8, hi: i8) -> Result<(), Error> {
        self.ensure(lo <= hi, Field::Params, lo)
    }

    /// `lo <= hi`, neither NaN.
    pub fn act_range_f32(&self, lo: f32, hi: f32) -> Result<(), Error> {
        self.ensure(lo <= hi, Field::Params, lo.to_bits() as i32)
    }

    /// One requantisation pair.
    pub fn multiplier(&self, multiplier: i32, shift: i8) -> Result<(), Error> {
        if !(quant::SHIFT_MIN..=quant::SHIFT_MAX).contains(&shift) {
            return Err(self.bad(Field::Shifts, shift));
        }
        self.ensure(
            quant::valid_multiplier(multiplier, shift),
            Field::Multipliers,
            multiplier,
        )
    }

    /// Per-channel requantisation: `channels` multipliers (`i16`, 2-aligned, each 0 or in `[2^14, 2^15)`) and
    /// shifts (each in `[SHIFT_MIN, SHIFT_MAX]`). The pair `(m, s)` stands for `((m as i32) << 16, s)`, which is
    /// then a valid [`quant::requantize`] pair.
    pub fn per_channel(&self, rq: &crate::format::PerChannel, channels: u64) -> Result<(), Error> {
        let m = self.span(
            Field::Multipliers,
            rq.multipliers,
            channels.checked_mul(2),
            2,
        )?;
        let s = self.span(Field::Shifts, rq.shifts, Some(channels), 1)?;
        for (mb, &sb) in m.chunks_exact(2).zip(s) {
            let multiplier = i16::from_le_bytes([mb[0], mb[1]]);
            let shift = sb as i8;
            if !(quant::SHIFT_MIN..=quant::SHIFT_MAX).contains(&shift) {
                return Err(self.bad(Field::Shifts, shift));
            }
            self.ensure(
                multiplier == 0 || multiplier >= 1 << 14,
                Field::Multipliers,
                multiplier,
            )?;
        }
        Ok(())
    }

    /// A shape list with 1 to `MAX_RANK` axes.
    pub fn rank(&self, dims: &Dims) -> Result<usize, Error> {
        let r = dims.len();
        self.ensure((1..=MAX_RANK).contains(&r), Field::Params, r)?;
        Ok(r)
    }
}

/// `prod(dims) * elem` bytes.
pub fn bytes_of(dims: &[u32], elem: u64) -> Option<u64> {
    prod(dims.iter().map(|&d| d as u64))?.checked_mul(elem)
}

// ---- eval helpers ----

/// Input `i` of an op being evaluated.
pub fn input<'x>(inputs: &[&'x [u8]], i: usize) -> Result<&'x [u8], Error> {
    inputs.get(i).copied().ok_or(Error::Arity {
        op: EVAL_OP,
        expected: (i + 1) as u8,
        found: inputs.len() as u8,
    })
}

/// A blob span's bytes (checked at load; this only turns an impossible miss into an error).
pub fn span(blob: &[u8], s: Span, field: Field) -> Result<&[u8], Error> {
    let end = s.offset.saturating_add(s.len);
    blob.get(s.offset as usize..end as usize)
        .ok_or(Error::OutOfBounds {
            op: EVAL_OP,
            field,
            end,
            limit: blob.len().min(u32::MAX as usize) as u32,
        })
}

fn misaligned(field: Field, align: u32) -> Error {
    Error::Misaligned {
        op: EVAL_OP,
        field,
        offset: 0,
        align,
    }
}

pub fn cast<T: bytemuck::Pod>(bytes: &[u8], field: Field) -> Result<&[T], Error> {
    bytemuck::try_cast_slice(bytes)
        .map_err(|_| misaligned(field, core::mem::align_of::<T>() as u32))
}

pub fn cast_mut<T: bytemuck::Pod>(bytes: &mut [u8], field: Field) -> Result<&mut [T], Error> {
    bytemuck::try_cast_slice_mut(bytes)
        .map_err(|_| misaligned(field, core::mem::align_of::<T>() as u32))
}

/// An optional blob span cast to `T`.
pub fn opt_span<T: bytemuck::Pod>(
    blob: &[u8],
    s: Option<Span>,
    field: Field,
) -> Result<Option<&[T]>, Error> {
    s.map(|s| cast(span(blob, s, field)?, field)).transpose()
}
