//! Loading: every check happens here, once.

use crate::crc32::crc32;
use crate::error::{Error, Field};
use crate::format::{
    DType, ModelDef, OpDef, Operand, Space, TensorDef, ARENA_ALIGN, BLOB_ALIGN, FORMAT_VERSION,
    HEADER_LEN, MAGIC, MAX_RANK,
};
use crate::ops;

/// A checked model, borrowing the file's bytes (in flash on a device). Creating one validates everything inference
/// relies on; afterwards ops are decoded in order from the checked bytes, without searching or re-checking.
#[derive(Clone, Debug)]
pub struct Model<'a> {
    def: ModelDef<'a>,
    blob: &'a [u8],
    version: u16,
    checksum: u32,
    file_len: u32,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Offset of `part` inside `whole` (both borrowed from the same file), for error messages.
fn offset_in(whole: &[u8], part: &[u8]) -> u32 {
    (part.as_ptr() as usize).wrapping_sub(whole.as_ptr() as usize) as u32
}

impl<'a> Model<'a> {
    /// Checks `bytes` as a `.kiln` file: magic, format version, exact length, CRC-32 of the payload, then every
    /// tensor and op record (operands inside the arena or blob, sizes matching shapes, parameters in range).
    ///
    /// `bytes` must start at a 4-byte aligned address: weights and biases are read in place.
    ///
    /// # Errors
    /// The first problem found, with the numbers that explain it.
    pub fn from_bytes(bytes: &'a [u8]) -> Result<Self, Error> {
        let have = bytes.len() as u32;
        if bytes.len() < HEADER_LEN {
            return Err(Error::Truncated {
                have,
                need: HEADER_LEN as u32,
            });
        }
        let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if magic != MAGIC {
            return Err(Error::BadMagic { found: magic });
        }
        let version = u16_at(bytes, 4);
        if version != FORMAT_VERSION {
            return Err(Error::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let flags = u16_at(bytes, 6);
        if flags != 0 {
            return Err(Error::UnknownFlags { flags });
        }
        let file_len = u32_at(bytes, 8);
        if have < file_len || file_len < HEADER_LEN as u32 {
            return Err(Error::Truncated {
                have,
                need: file_len.max(HEADER_LEN as u32),
            });
        }
        if have > file_len {
            return Err(Error::TrailingBytes {
                have,
                expected: file_len,
            });
        }
        let stored = u32_at(bytes, 12);
        let computed = crc32(&bytes[16..]);
        if stored != computed {
            return Err(Error::ChecksumMismatch { stored, computed });
        }
        if !(bytes.as_ptr() as usize).is_multiple_of(ARENA_ALIGN) {
            return Err(Error::ModelMisaligned {
                address: bytes.as_ptr() as usize as u32,
            });
        }
        let meta_len = u32_at(bytes, 16);
        let blob_offset = u32_at(bytes, 20);
        let meta_end = (HEADER_LEN as u32).saturating_add(meta_len);
        if meta_end > blob_offset
            || blob_offset > file_len
            || !(blob_offset as usize).is_multiple_of(BLOB_ALIGN)
        {
            return Err(Error::BadLayout {
                offset: HEADER_LEN as u32,
                len: meta_len,
                limit: blob_offset.min(file_len),
            });
        }
        let meta = &bytes[HEADER_LEN..meta_end as usize];
        let blob = &bytes[blob_offset as usize..];
        let def = match postcard::take_from_bytes::<ModelDef<'a>>(meta) {
            Ok((def, [])) => def,
            Ok((_, rest)) => {
                return Err(Error::Malformed {
                    offset: offset_in(bytes, rest),
                })
            }
            Err(_) => {
                return Err(Error::Malformed {
                    offset: HEADER_LEN as u32,
                })
            }
        };
        let model = Model {
            def,
            blob,
            version,
            checksum: stored,
            file_len,
        };
        model.check_tensors(bytes)?;
        model.check_ops(bytes)?;
        Ok(model)
    }

    fn check_tensors(&self, file: &[u8]) -> Result<(), Error> {
        let mut rest = self.def.tensors;
        for index in 0..self.def.tensor_count {
            let (t, tail) =
                postcard::take_from_bytes::<TensorDef<'a>>(rest).map_err(|_| Error::Malformed {
                    offset: offset_in(file, rest),
                })?;
            let bad = || Error::BadLayout {
                offset: offset_in(file, rest),
                len: t.data.len,
                limit: index as u32,
            };
            let rank = t.shape.len();
            if rank > MAX_RANK || t.perm.len() != rank {
                return Err(bad());
            }
            let mut seen = 0u32;
            for &p in &t.perm {
                if p as usize >= rank || seen & (1 << p) != 0 {
                    return Err(bad());
                }
                seen |= 1 << p;
            }
            let elems = t
                .shape
                .iter()
                .try_fold(1u32, |acc, &d| acc.checked_mul(d))
                .ok_or_else(bad)?;
            if elems.checked_mul(t.dtype.size() as u32) != Some(t.data.len) {
                return Err(bad());
            }
            self.check_operand(u16::MAX, Field::Output, &t.data)?;
            rest = tail;
        }
        if !rest.is_empty() {
            return Err(Error::Malformed {
                offset: offset_in(file, rest),
            });
        }
        for &index in self.def.inputs.iter().chain(self.def.outputs.iter()) {
            let t = self.tensor(index)?;
            if t.data.space != Space::Arena {
                return Err(Error::BadTensor {
                    index,
                    count: self.def.tensor_count,
                });
            }
        }
        Ok(())
    }

    fn check_operand(&self, op: u16, field: Field, o: &Operand) -> Result<(), Error> {
        let limit = match o.space {
            Space::Arena => self.def.arena_bytes,
            Space::Blob => self.blob.len() as u32,
        };
        let end = o.offset.saturating_add(o.len);
        if end > limit {
            return Err(Error::OutOfBounds {
                op,
                field,
                end,
                limit,
            });
        }
        if !(o.offset as usize).is_multiple_of(ARENA_ALIGN) {
            return Err(Error::Misaligned {
                op,
                field,
                offset: o.offset,
                align: ARENA_ALIGN as u32,
            });
        }
        Ok(())
    }

    fn check_ops(&self, file: &[u8]) -> Result<(), Error> {
        let mut rest = self.def.ops;
        for index in 0..self.def.op_count {
            let (op, tail) =
                postcard::take_from_bytes::<OpDef<'a>>(rest).map_err(|_| Error::Malformed {
                    offset: offset_in(file, rest),
                })?;
            if op.output.space != Space::Arena {
                return Err(Error::BadParam {
                    op: index,
                    field: Field::Output,
                    value: 1,
                });
            }
            self.check_operand(index, Field::Output, &op.output)?;
            for (i, input) in op.inputs.iter().enumerate() {
                self.check_operand(index, Field::Input(i as u8), input)?;
                let overlaps = input.space == Space::Arena
                    && input.len > 0
                    && op.output.len > 0
                    && input.offset < op.output.end()
                    && op.output.offset < input.end();
                if overlaps {
                    return Err(Error::Overlap {
                        op: index,
                        input: i as u8,
                    });
                }
            }
            if op.output_tensor >= self.def.tensor_count {
                return Err(Error::BadTensor {
                    index: op.output_tensor,
                    count: self.def.tensor_count,
                });
            }
            ops::check(index, &op, self.blob)?;
            rest = tail;
        }
        if !rest.is_empty() {
            return Err(Error::Malformed {
                offset: offset_in(file, rest),
            });
        }
        Ok(())
    }

    /// Bytes of arena [`crate::Interpreter`] needs.
    pub fn arena_bytes(&self) -> usize {
        self.def.arena_bytes as usize
    }

    pub fn name(&self) -> &'a str {
        self.def.name
    }

    pub fn format_version(&self) -> u16 {
        self.version
    }

    /// The CRC-32 stored in (and verified against) the file: identifies the model's exact content.
    pub fn checksum(&self) -> u32 {
        self.checksum
    }

    pub fn file_len(&self) -> usize {
        self.file_len as usize
    }

    /// The weight blob.
    pub fn blob(&self) -> &'a [u8] {
        self.blob
    }

    pub fn macs(&self) -> u64 {
        self.def.macs
    }

    pub fn op_count(&self) -> usize {
        self.def.op_count as usize
    }

    pub fn tensor_count(&self) -> usize {
        self.def.tensor_count as usize
    }

    /// The ops in execution order.
    pub fn ops(&self) -> Records<'a, OpDef<'a>> {
        Records {
            rest: self.def.ops,
            left: self.def.op_count,
            _marker: core::marker::PhantomData,
        }
    }

    /// All tensors, by index.
    pub fn tensors(&self) -> Records<'a, TensorDef<'a>> {
        Records {
            rest: self.def.tensors,
            left: self.def.tensor_count,
            _marker: core::marker::PhantomData,
        }
    }

    /// Tensor `index` (a linear scan: for set-up and tooling, not the hot path).
    pub fn tensor(&self, index: u16) -> Result<TensorDef<'a>, Error> {
        let count = self.def.tensor_count;
        self.tensors()
            .nth(index as usize)
            .ok_or(Error::BadTensor { index, count })
    }

    pub fn input_count(&self) -> usize {
        self.def.inputs.len()
    }

    pub fn output_count(&self) -> usize {
        self.def.outputs.len()
    }

    /// Graph input `index`: name, dtype, logical shape, quantisation.
    pub fn input(&self, index: usize) -> Result<TensorDef<'a>, Error> {
        let count = self.def.inputs.len() as u8;
        let t = *self.def.inputs.get(index).ok_or(Error::NoSuchIo {
            index: index as u8,
            count,
        })?;
        self.tensor(t)
    }

    /// Graph output `index`.
    pub fn output(&self, index: usize) -> Result<TensorDef<'a>, Error> {
        let count = self.def.outputs.len() as u8;
        let t = *self.def.outputs.get(index).ok_or(Error::NoSuchIo {
            index: index as u8,
            count,
        })?;
        self.tensor(t)
    }

    /// Tensor indices of the graph inputs and outputs.
    pub fn io_indices(&self) -> (&[u16], &[u16]) {
        (&self.def.inputs, &self.def.outputs)
    }
}

/// Iterator over the checked records of one section. Decoding cannot fail on a model that loaded; if it somehow
/// did, iteration stops early.
pub struct Records<'a, T> {
    rest: &'a [u8],
    left: u16,
    _marker: core::marker::PhantomData<T>,
}

impl<'a, T: serde::Deserialize<'a>> Iterator for Records<'a, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        if self.left == 0 {
            return None;
        }
        let (item, rest) = postcard::take_from_bytes::<T>(self.rest).ok()?;
        self.rest = rest;
        self.left -= 1;
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.left as usize))
    }
}

impl DType {
    /// Human name, as numpy spells it.
    pub fn name(self) -> &'static str {
        match self {
            DType::I8 => "int8",
            DType::F32 => "float32",
            DType::I32 => "int32",
        }
    }
}
