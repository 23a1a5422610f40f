//! Loading: every check happens here, once.

use crate::crc32::crc32;
use crate::error::{Error, Field};
use crate::format::{
    DType, ModelDef, OpDef, Operand, Space, TensorDef, ARENA_ALIGN, BLOB_ALIGN, FORMAT_VERSION,
    HEADER_LEN, MAGIC, MAX_RANK,
};
use crate::ops::{OpId, Resolver};

/// A checked model, borrowing the file's bytes (in flash on a device). Creating one validates everything inference
/// relies on; afterwards ops are decoded in order from the checked bytes, without searching or re-checking.
/// Its ops are decoded, checked and run through its [`Resolver`]: only the op kinds and kernels that links.
#[derive(Clone, Debug)]
pub struct Model<'a> {
    def: ModelDef<'a>,
    blob: &'a [u8],
    version: u16,
    checksum: u32,
    file_len: u32,
    resolver: Resolver,
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
    /// Every op kind and kernel is available ([`Resolver::all`]); see [`Model::from_bytes_with`].
    ///
    /// # Errors
    /// The first problem found, with the numbers that explain it.
    pub fn from_bytes(bytes: &'a [u8]) -> Result<Self, Error> {
        Self::from_bytes_with(bytes, Resolver::all())
    }

    /// [`Model::from_bytes`] with only the op kinds and kernels `resolver` links (a firmware's, made for its
    /// model): nothing else is referenced, so nothing else is linked.
    ///
    /// # Errors
    /// As [`Model::from_bytes`], and [`Error::OpNotLinked`] for an op `resolver` lacks.
    pub fn from_bytes_with(bytes: &'a [u8], resolver: Resolver) -> Result<Self, Error> {
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
        let def = match de::take::<ModelDef<'a>>(meta) {
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
            resolver,
        };
        model.check_tensors(bytes)?;
        model.check_ops(bytes)?;
        Ok(model)
    }

    fn check_tensors(&self, file: &[u8]) -> Result<(), Error> {
        let mut rest = self.def.tensors;
        for index in 0..self.def.tensor_count {
            let (t, tail) = de::take::<TensorDef<'a>>(rest).map_err(|_| Error::Malformed {
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
            let (op, tail) = match decode_op(&self.resolver, rest) {
                Ok(decoded) => decoded,
                Err(Undecoded::Malformed) => {
                    return Err(Error::Malformed {
                        offset: offset_in(file, rest),
                    })
                }
                Err(Undecoded::Unknown) => return Err(Error::UnknownOp { op: index }),
                Err(Undecoded::NotLinked(kind)) => {
                    return Err(Error::OpNotLinked {
                        op: index,
                        kind,
                        kernel: None,
                    })
                }
            };
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
                // The one overlap allowed: input 0 is the output, for an op that runs in place.
                let in_place =
                    i == 0 && crate::ops::runs_in_place(&op) && crate::ops::in_place_ok(&op.kind);
                if overlaps && !in_place {
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
            self.resolver.check(index, &op, self.blob)?;
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
    pub fn ops(&self) -> Ops<'a> {
        Ops {
            rest: self.def.ops,
            left: self.def.op_count,
            resolver: self.resolver,
        }
    }

    /// The op kinds and kernels this model runs with.
    pub fn resolver(&self) -> Resolver {
        self.resolver
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

    /// The element type the source model gives graph input `index` (`F32` when the file does not say): how the
    /// host exchanges it with users. Inference does not depend on it.
    pub fn input_type(&self, index: usize) -> crate::format::IoType {
        self.def.io_types.get(index).copied().unwrap_or_default()
    }

    /// As [`Model::input_type`], for graph output `index`.
    pub fn output_type(&self, index: usize) -> crate::format::IoType {
        let at = self.def.inputs.len() + index;
        self.def.io_types.get(at).copied().unwrap_or_default()
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
        let (item, rest) = de::take::<T>(self.rest).ok()?;
        self.rest = rest;
        self.left -= 1;
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.left as usize))
    }
}

/// Iterator over the checked ops, decoded through the model's resolver. Decoding cannot fail on a model that
/// loaded; if it somehow did, iteration stops early.
pub struct Ops<'a> {
    rest: &'a [u8],
    left: u16,
    resolver: Resolver,
}

impl<'a> Ops<'a> {
    /// The next op, decoded into `op`; `false` at the end (or, on a model that somehow stopped decoding, early).
    pub(crate) fn next_into(&mut self, op: &mut OpDef<'a>) -> bool {
        if self.left == 0 {
            return false;
        }
        match decode_op_into(&self.resolver, self.rest, op) {
            Ok(rest) => {
                self.rest = rest;
                self.left -= 1;
                true
            }
            Err(_) => false,
        }
    }
}

impl<'a> Iterator for Ops<'a> {
    type Item = OpDef<'a>;

    fn next(&mut self) -> Option<OpDef<'a>> {
        if self.left == 0 {
            return None;
        }
        let (op, rest) = decode_op(&self.resolver, self.rest).ok()?;
        self.rest = rest;
        self.left -= 1;
        Some(op)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.left as usize))
    }
}

/// Why [`decode_op`] failed.
enum Undecoded {
    Malformed,
    /// A variant index past every op kind this runtime knows.
    Unknown,
    /// An op kind the resolver does not link.
    NotLinked(OpId),
}

/// An op to decode into ([`Ops::next_into`]).
pub(crate) fn empty_op() -> OpDef<'static> {
    OpDef {
        name: "",
        kind: crate::format::OpKind::Copy,
        inputs: heapless::Vec::new(),
        output: Operand {
            space: Space::Arena,
            offset: 0,
            len: 0,
        },
        output_tensor: 0,
        macs: 0,
    }
}

/// Decodes one postcard-encoded [`OpDef`] at the start of `bytes`, exactly as its derived `Deserialize` would, but
/// with its kind's parameters decoded by the resolver's registration: the decoders of kinds it lacks are not
/// linked. Returns the op and the bytes after it.
fn decode_op<'a>(resolver: &Resolver, bytes: &'a [u8]) -> Result<(OpDef<'a>, &'a [u8]), Undecoded> {
    let mut op = empty_op();
    let rest = decode_op_into(resolver, bytes, &mut op)?;
    Ok((op, rest))
}

/// [`decode_op`] into `op` (field by field, without moving whole ops around: this runs for every op of every
/// inference). On error `op` holds part of the new op.
fn decode_op_into<'a>(
    resolver: &Resolver,
    bytes: &'a [u8],
    op: &mut OpDef<'a>,
) -> Result<&'a [u8], Undecoded> {
    use serde::Deserialize;
    let mut de = de::De { rest: bytes };
    let malformed = |_| Undecoded::Malformed;
    op.name = <&'a str>::deserialize(&mut de).map_err(malformed)?;
    // An enum is its variant index (a varint `u32`) then the variant's fields.
    let variant = u32::deserialize(&mut de).map_err(malformed)?;
    let id = OpId::from_index(variant).ok_or(Undecoded::Unknown)?;
    resolver
        .decode(id, &mut de, &mut op.kind)
        .ok_or(Undecoded::NotLinked(id))?
        .map_err(malformed)?;
    op.inputs = Deserialize::deserialize(&mut de).map_err(malformed)?;
    op.output = Deserialize::deserialize(&mut de).map_err(malformed)?;
    op.output_tensor = Deserialize::deserialize(&mut de).map_err(malformed)?;
    op.macs = Deserialize::deserialize(&mut de).map_err(malformed)?;
    Ok(de.rest)
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

/// Decoding of postcard's wire format, the loader's and the telemetry's: the same bytes as `postcard`'s own
/// deserializer reads, refused in the same cases, for the types Kiln encodes (no `char`, maps, 128-bit
/// integers or self-describing `any`). Its readers of primitives are out of line, so that each derived
/// `Deserialize` is a short sequence of calls: on a device that is most of the loader's code.
pub(crate) mod de {
    use core::fmt;

    use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

    /// Any decoding failure (the loader and the telemetry only report "malformed").
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Error;

    impl fmt::Display for Error {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("malformed postcard data")
        }
    }

    impl de::StdError for Error {}

    // Every constructor is overridden: none formats its message.
    impl de::Error for Error {
        fn custom<T: fmt::Display>(_: T) -> Self {
            Error
        }
        fn invalid_type(_: de::Unexpected<'_>, _: &dyn de::Expected) -> Self {
            Error
        }
        fn invalid_value(_: de::Unexpected<'_>, _: &dyn de::Expected) -> Self {
            Error
        }
        fn invalid_length(_: usize, _: &dyn de::Expected) -> Self {
            Error
        }
        fn unknown_variant(_: &str, _: &'static [&'static str]) -> Self {
            Error
        }
        fn unknown_field(_: &str, _: &'static [&'static str]) -> Self {
            Error
        }
        fn missing_field(_: &'static str) -> Self {
            Error
        }
        fn duplicate_field(_: &'static str) -> Self {
            Error
        }
    }

    pub type Result<T> = core::result::Result<T, Error>;

    /// Decodes a `T` at the start of `bytes`; returns it and the bytes after it.
    pub fn take<'de, T: de::Deserialize<'de>>(bytes: &'de [u8]) -> Result<(T, &'de [u8])> {
        let mut de = De { rest: bytes };
        let t = T::deserialize(&mut de)?;
        Ok((t, de.rest))
    }

    /// Whether `b` is well-formed UTF-8 (RFC 3629: shortest forms only, no surrogates, at most U+10FFFF): what
    /// `core::str::from_utf8` decides, in a tenth of its code (names are checked once, at load; its speed-ups and
    /// its 256-byte table would be the firmware's largest constant).
    pub fn utf8(b: &[u8]) -> bool {
        let mut i = 0;
        while let Some(&lead) = b.get(i) {
            // Continuation bytes, and the range of the first one (which rules out overlong forms, surrogates
            // and code points above U+10FFFF).
            let (more, lo, hi) = match lead {
                0x00..=0x7F => (0, 0x80, 0xBF),
                0xC2..=0xDF => (1, 0x80, 0xBF),
                0xE0 => (2, 0xA0, 0xBF),
                0xED => (2, 0x80, 0x9F),
                0xE1..=0xEF => (2, 0x80, 0xBF),
                0xF0 => (3, 0x90, 0xBF),
                0xF4 => (3, 0x80, 0x8F),
                0xF1..=0xF3 => (3, 0x80, 0xBF),
                _ => return false,
            };
            for k in 1..=more {
                let range = if k == 1 { lo..=hi } else { 0x80..=0xBF };
                match b.get(i + k) {
                    Some(c) if range.contains(c) => {}
                    _ => return false,
                }
            }
            i += 1 + more;
        }
        true
    }

    /// A cursor over postcard bytes.
    pub struct De<'de> {
        pub rest: &'de [u8],
    }

    /// Bytes and largest last byte of a varint of each width (postcard refuses longer or overflowing ones).
    const U16: (u32, u8) = (3, (u16::MAX >> 14) as u8);
    const U32: (u32, u8) = (5, (u32::MAX >> 28) as u8);
    const U64: (u32, u8) = (10, (u64::MAX >> 63) as u8);

    impl<'de> De<'de> {
        fn byte(&mut self) -> Result<u8> {
            let (&b, rest) = self.rest.split_first().ok_or(Error)?;
            self.rest = rest;
            Ok(b)
        }

        fn take(&mut self, n: usize) -> Result<&'de [u8]> {
            if n > self.rest.len() {
                return Err(Error);
            }
            let (head, rest) = self.rest.split_at(n);
            self.rest = rest;
            Ok(head)
        }

        /// A varint of at most `len` bytes whose last byte is at most `last` (as postcard's
        /// `try_take_varint_*`), of at most 32 bits. Out of line: one copy for every integer field.
        #[inline(never)]
        fn varint32(&mut self, (len, last): (u32, u8)) -> Result<u32> {
            // Most values are below 128.
            if let Some((&b, rest)) = self.rest.split_first() {
                if b < 0x80 {
                    self.rest = rest;
                    return Ok(u32::from(b));
                }
            }
            let mut out = 0u32;
            for i in 0..len {
                let b = self.byte()?;
                out |= u32::from(b & 0x7F) << (7 * i);
                if b & 0x80 == 0 {
                    return if i == len - 1 && b > last {
                        Err(Error)
                    } else {
                        Ok(out)
                    };
                }
            }
            Err(Error)
        }

        /// As [`De::varint32`], of 64 bits.
        #[inline(never)]
        fn varint64(&mut self) -> Result<u64> {
            let (len, last) = U64;
            let mut out = 0u64;
            for i in 0..len {
                let b = self.byte()?;
                out |= u64::from(b & 0x7F) << (7 * i);
                if b & 0x80 == 0 {
                    return if i == len - 1 && b > last {
                        Err(Error)
                    } else {
                        Ok(out)
                    };
                }
            }
            Err(Error)
        }

        #[cfg(target_pointer_width = "32")]
        fn len(&mut self) -> Result<usize> {
            Ok(self.varint32(U32)? as usize)
        }

        #[cfg(target_pointer_width = "64")]
        fn len(&mut self) -> Result<usize> {
            Ok(self.varint64()? as usize)
        }

        fn u32(&mut self) -> Result<u32> {
            self.varint32(U32)
        }

        fn u64(&mut self) -> Result<u64> {
            self.varint64()
        }

        fn u16(&mut self) -> Result<u16> {
            Ok(self.varint32(U16)? as u16)
        }

        fn word(&mut self) -> Result<u32> {
            let b = self.take(4)?;
            Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        }
    }

    fn zigzag(n: u64) -> i64 {
        ((n >> 1) as i64) ^ -((n & 1) as i64)
    }

    /// `left` more elements of a sequence, tuple or struct.
    struct Access<'a, 'de> {
        de: &'a mut De<'de>,
        left: usize,
    }

    impl<'de> de::SeqAccess<'de> for Access<'_, 'de> {
        type Error = Error;

        fn next_element_seed<T: DeserializeSeed<'de>>(
            &mut self,
            seed: T,
        ) -> Result<Option<T::Value>> {
            if self.left == 0 {
                return Ok(None);
            }
            self.left -= 1;
            seed.deserialize(&mut *self.de).map(Some)
        }

        fn size_hint(&self) -> Option<usize> {
            Some(self.left)
        }
    }

    impl<'de> de::EnumAccess<'de> for &mut De<'de> {
        type Error = Error;
        type Variant = Self;

        fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self)> {
            let index = self.u32()?;
            let v = seed.deserialize(index.into_deserializer())?;
            Ok((v, self))
        }
    }

    impl<'de> de::VariantAccess<'de> for &mut De<'de> {
        type Error = Error;

        fn unit_variant(self) -> Result<()> {
            Ok(())
        }

        fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value> {
            seed.deserialize(self)
        }

        fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value> {
            visitor.visit_seq(Access {
                de: self,
                left: len,
            })
        }

        fn struct_variant<V: Visitor<'de>>(
            self,
            fields: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value> {
            visitor.visit_seq(Access {
                de: self,
                left: fields.len(),
            })
        }
    }

    impl<'de> de::Deserializer<'de> for &mut De<'de> {
        type Error = Error;

        fn is_human_readable(&self) -> bool {
            false
        }

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value> {
            Err(Error)
        }

        fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
            match self.byte()? {
                0 => visitor.visit_bool(false),
                1 => visitor.visit_bool(true),
                _ => Err(Error),
            }
        }

        fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
            visitor.visit_i8(self.byte()? as i8)
        }

        fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
            visitor.visit_i16(zigzag(u64::from(self.u16()?)) as i16)
        }

        fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
            visitor.visit_i32(zigzag(u64::from(self.u32()?)) as i32)
        }

        fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
            visitor.visit_i64(zigzag(self.u64()?))
        }

        fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
            visitor.visit_u8(self.byte()?)
        }

        fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
            visitor.visit_u16(self.u16()?)
        }

        fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
            visitor.visit_u32(self.u32()?)
        }

        fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
            visitor.visit_u64(self.u64()?)
        }

        fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
            visitor.visit_f32(f32::from_bits(self.word()?))
        }

        fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
            let b = self.take(8)?;
            let mut bits = [0u8; 8];
            bits.copy_from_slice(b);
            visitor.visit_f64(f64::from_le_bytes(bits))
        }

        fn deserialize_char<V: Visitor<'de>>(self, _: V) -> Result<V::Value> {
            Err(Error)
        }

        fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
            let n = self.len()?;
            let b = self.take(n)?;
            if !utf8(b) {
                return Err(Error);
            }
            // SAFETY: `utf8` accepted the bytes: they are well-formed UTF-8 (tested against `core::str::from_utf8`).
            visitor.visit_borrowed_str(unsafe { core::str::from_utf8_unchecked(b) })
        }

        fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
            self.deserialize_str(visitor)
        }

        fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
            let n = self.len()?;
            visitor.visit_borrowed_bytes(self.take(n)?)
        }

        fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
            self.deserialize_bytes(visitor)
        }

        fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
            match self.byte()? {
                0 => visitor.visit_none(),
                1 => visitor.visit_some(self),
                _ => Err(Error),
            }
        }

        fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
            visitor.visit_unit()
        }

        fn deserialize_unit_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            visitor: V,
        ) -> Result<V::Value> {
            visitor.visit_unit()
        }

        fn deserialize_newtype_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            visitor: V,
        ) -> Result<V::Value> {
            visitor.visit_newtype_struct(self)
        }

        fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
            let left = self.len()?;
            visitor.visit_seq(Access { de: self, left })
        }

        fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value> {
            visitor.visit_seq(Access {
                de: self,
                left: len,
            })
        }

        fn deserialize_tuple_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            len: usize,
            visitor: V,
        ) -> Result<V::Value> {
            visitor.visit_seq(Access {
                de: self,
                left: len,
            })
        }

        fn deserialize_map<V: Visitor<'de>>(self, _: V) -> Result<V::Value> {
            Err(Error)
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value> {
            visitor.visit_seq(Access {
                de: self,
                left: fields.len(),
            })
        }

        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _: &'static str,
            _: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value> {
            visitor.visit_enum(self)
        }

        fn deserialize_identifier<V: Visitor<'de>>(self, _: V) -> Result<V::Value> {
            Err(Error)
        }

        fn deserialize_ignored_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value> {
            Err(Error)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::vec::Vec;

    use proptest::prelude::*;
    use serde::{de::DeserializeOwned, Serialize};

    use super::*;
    use crate::format::{DType, KernelS8, OpKind, Quant};
    use crate::ops::{KernelSet, Registration};

    /// The loader's UTF-8 check decides exactly as `core::str::from_utf8`: on every 1- and 2-byte string, on
    /// every 3-byte string with a 3- or 4-byte lead (the boundaries of each range: overlong forms, surrogates,
    /// past U+10FFFF, truncations), and on random strings biased towards non-ASCII bytes.
    #[test]
    fn utf8_check_is_core_s() {
        let same = |b: &[u8]| assert_eq!(de::utf8(b), core::str::from_utf8(b).is_ok(), "{b:02x?}");
        for a in 0..=255u8 {
            same(&[a]);
            for b in 0..=255u8 {
                same(&[a, b]);
            }
        }
        for a in 0xE0..=0xFFu8 {
            for b in 0x70..=0xC4u8 {
                for c in [0x00, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xFF] {
                    same(&[a, b, c]);
                    same(&[a, b, c, 0x80]);
                    same(&[a, b, c, 0xC0]);
                    same(&[b'x', a, b, c, 0xBF, b'y']);
                }
            }
        }
        let mut s: u32 = 7;
        for _ in 0..200_000 {
            let len = (s >> 28) as usize;
            let b: Vec<u8> = (0..len)
                .map(|_| {
                    s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    let x = (s >> 24) as u8;
                    if s & 0x100 != 0 {
                        0x80 | (x & 0x7F)
                    } else {
                        x
                    }
                })
                .collect();
            same(&b);
        }
        assert!(de::utf8("Conv__95 → ok · ünïcødé 🔥".as_bytes()));
    }

    /// `de::take` and postcard agree on `bytes`: both refuse them, or both read the same value and leave the same
    /// rest.
    fn agree<T: DeserializeOwned + PartialEq + core::fmt::Debug>(bytes: &[u8]) {
        let ours = de::take::<T>(bytes).ok();
        let theirs = postcard::take_from_bytes::<T>(bytes).ok();
        assert_eq!(ours, theirs, "{bytes:02x?}");
    }

    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + core::fmt::Debug>(v: &T) {
        let mut buf = [0u8; 1024];
        let bytes = postcard::to_slice(v, &mut buf).unwrap();
        assert_eq!(de::take::<T>(bytes).unwrap(), (serde_owned(v), &[][..]));
        agree::<T>(bytes);
        for cut in 0..bytes.len() {
            agree::<T>(&bytes[..cut]);
        }
    }

    fn serde_owned<T: Serialize + DeserializeOwned>(v: &T) -> T {
        let mut buf = [0u8; 1024];
        postcard::from_bytes(postcard::to_slice(v, &mut buf).unwrap()).unwrap()
    }

    proptest! {
        #[test]
        fn de_reads_what_postcard_reads(bytes in proptest::collection::vec(any::<u8>(), 0..24)) {
            agree::<u8>(&bytes);
            agree::<i8>(&bytes);
            agree::<u16>(&bytes);
            agree::<i16>(&bytes);
            agree::<u32>(&bytes);
            agree::<i32>(&bytes);
            agree::<u64>(&bytes);
            agree::<i64>(&bytes);
            agree::<bool>(&bytes);
            agree::<Option<u32>>(&bytes);
            agree::<heapless::Vec<u16, 3>>(&bytes);
            agree::<(u8, i32, Option<bool>)>(&bytes);
            agree::<crate::format::Operand>(&bytes);
            agree::<DType>(&bytes);
            agree::<KernelS8>(&bytes);
            agree::<crate::format::UnaryF32>(&bytes);
            // f32 NaNs differ from themselves: compare the bits.
            prop_assert_eq!(
                de::take::<f32>(&bytes).ok().map(|(v, r)| (v.to_bits(), r)),
                postcard::take_from_bytes::<f32>(&bytes).ok().map(|(v, r)| (v.to_bits(), r))
            );
            let s = de::take::<&str>(&bytes).ok();
            prop_assert_eq!(s, postcard::take_from_bytes::<&str>(&bytes).ok());
            let b = de::take::<&[u8]>(&bytes).ok();
            prop_assert_eq!(b, postcard::take_from_bytes::<&[u8]>(&bytes).ok());
        }

        #[test]
        fn de_reads_every_integer_postcard_writes(v in any::<u64>(), w in any::<i64>()) {
            round_trip(&v);
            round_trip(&w);
            round_trip(&(v as u32));
            round_trip(&(w as i32));
            round_trip(&(v as u16));
            round_trip(&(w as i16));
            round_trip(&(w as i8, v as u8));
        }
    }

    #[test]
    fn de_reads_every_op_kind_as_postcard_does() {
        for kind in crate::ops::sample_kinds() {
            round_trip(&kind);
        }
        let t = TensorDef {
            name: "input_1",
            dtype: DType::I8,
            shape: heapless::Vec::from_slice(&[1, 49, 10, 1]).unwrap(),
            perm: heapless::Vec::from_slice(&[0, 2, 3, 1]).unwrap(),
            data: Operand {
                space: Space::Arena,
                offset: 16,
                len: 490,
            },
            quant: Quant {
                scale: 0.5,
                zero_point: -128,
            },
        };
        let bytes = to_vec(&t);
        assert_eq!(de::take::<TensorDef<'_>>(&bytes).unwrap(), (t, &[][..]));
        for cut in 0..bytes.len() {
            assert_eq!(
                de::take::<TensorDef<'_>>(&bytes[..cut]).ok(),
                postcard::take_from_bytes::<TensorDef<'_>>(&bytes[..cut]).ok()
            );
        }
    }

    fn to_vec<T: Serialize>(v: &T) -> Vec<u8> {
        let mut buf = std::vec![0u8; 4096];
        let len = postcard::to_slice(v, &mut buf).unwrap().len();
        buf.truncate(len);
        buf
    }

    /// `op` as the file stores it.
    fn encoded(op: &OpDef<'_>) -> Vec<u8> {
        to_vec(op)
    }

    fn op_of(kind: OpKind) -> OpDef<'static> {
        OpDef {
            name: "a node/with a long name",
            kind,
            inputs: heapless::Vec::from_slice(&[
                Operand {
                    space: Space::Arena,
                    offset: 0,
                    len: 300,
                },
                Operand {
                    space: Space::Blob,
                    offset: 1 << 20,
                    len: 7,
                },
            ])
            .unwrap(),
            output: Operand {
                space: Space::Arena,
                offset: 1024,
                len: 40,
            },
            output_tensor: 300,
            macs: u64::MAX / 3,
        }
    }

    #[test]
    fn decode_op_reads_what_postcard_reads() {
        let all = Resolver::all();
        for kind in crate::ops::sample_kinds() {
            let op = op_of(kind);
            let mut bytes = encoded(&op);
            bytes.extend_from_slice(&[9, 9]);
            let (decoded, rest) = decode_op(&all, &bytes).ok().unwrap();
            assert_eq!((decoded, rest), (op.clone(), &[9u8, 9][..]));
            for cut in 0..bytes.len() - 2 {
                assert_eq!(
                    decode_op(&all, &bytes[..cut]).ok(),
                    postcard::take_from_bytes::<OpDef<'_>>(&bytes[..cut]).ok(),
                    "{op:?} cut at {cut}"
                );
            }
        }
        // A variant index past the last op kind.
        let mut bytes = encoded(&op_of(OpKind::Copy));
        let at = 1 + bytes[0] as usize;
        bytes[at] = OpId::ALL.len() as u8;
        assert!(matches!(decode_op(&all, &bytes), Err(Undecoded::Unknown)));
        // A kind the resolver lacks.
        static SOFTMAX: [Registration; 1] = [
            match Registration::of_set(OpId::SoftmaxF32, KernelSet::of(&[KernelS8::Reference])) {
                Some(r) => r,
                None => panic!(),
            },
        ];
        assert!(matches!(
            decode_op(&Resolver::new(&SOFTMAX), &encoded(&op_of(OpKind::Copy))),
            Err(Undecoded::NotLinked(OpId::Copy))
        ));
    }

    /// A whole `.kiln` file: int8 `[4]` input at arena 0, output at arena 4, one op `kind` from one to the other.
    fn file(kind: OpKind) -> Vec<u8> {
        let tensor = |name, offset| TensorDef {
            name,
            dtype: DType::I8,
            shape: heapless::Vec::from_slice(&[4]).unwrap(),
            perm: heapless::Vec::from_slice(&[0]).unwrap(),
            data: Operand {
                space: Space::Arena,
                offset,
                len: 4,
            },
            quant: Quant {
                scale: 1.0,
                zero_point: 0,
            },
        };
        let mut tensors = to_vec(&tensor("x", 0));
        tensors.extend(to_vec(&tensor("y", 4)));
        let op = OpDef {
            name: "op",
            kind,
            inputs: heapless::Vec::from_slice(&[tensor("x", 0).data]).unwrap(),
            output: tensor("y", 4).data,
            output_tensor: 1,
            macs: 0,
        };
        let ops = encoded(&op);
        let def = ModelDef {
            name: "test",
            arena_bytes: 8,
            macs: 0,
            tensor_count: 2,
            tensors: &tensors,
            op_count: 1,
            ops: &ops,
            inputs: heapless::Vec::from_slice(&[0]).unwrap(),
            outputs: heapless::Vec::from_slice(&[1]).unwrap(),
            io_types: heapless::Vec::new(),
        };
        let meta = to_vec(&def);
        let blob_offset = (HEADER_LEN + meta.len()).next_multiple_of(BLOB_ALIGN);
        let mut f = std::vec![0u8; blob_offset + 16];
        f[..4].copy_from_slice(&MAGIC);
        f[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        let len = f.len() as u32;
        f[8..12].copy_from_slice(&len.to_le_bytes());
        f[16..20].copy_from_slice(&(meta.len() as u32).to_le_bytes());
        f[20..24].copy_from_slice(&(blob_offset as u32).to_le_bytes());
        f[HEADER_LEN..HEADER_LEN + meta.len()].copy_from_slice(&meta);
        let crc = crc32(&f[16..]);
        f[12..16].copy_from_slice(&crc.to_le_bytes());
        f
    }

    /// `bytes` copied to a 4-aligned buffer.
    fn aligned(bytes: &[u8]) -> Vec<u32> {
        let mut words = std::vec![0u32; bytes.len().div_ceil(4)];
        bytemuck::cast_slice_mut::<u32, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
        words
    }

    #[test]
    fn the_loader_refuses_ops_its_resolver_lacks() {
        static COPY: [Registration; 1] = [
            match Registration::get(OpId::Copy, &[KernelS8::Reference]) {
                Some(r) => r,
                None => panic!(),
            },
        ];
        static LOOKUP: [Registration; 1] = [
            match Registration::get(OpId::LookupS8, &[KernelS8::Reference]) {
                Some(r) => r,
                None => panic!(),
            },
        ];
        let f = file(OpKind::Copy);
        let words = aligned(&f);
        let bytes = &bytemuck::cast_slice::<u32, u8>(&words)[..f.len()];
        let model = Model::from_bytes_with(bytes, Resolver::new(&COPY)).unwrap();
        assert_eq!(model.ops().count(), 1);
        let mut arena = [0u32; 2];
        let mut interp =
            crate::Interpreter::new(&model, bytemuck::cast_slice_mut(&mut arena)).unwrap();
        interp.set_input(0, &[1, 2, 3, 4]).unwrap();
        interp.invoke().unwrap();
        assert_eq!(interp.output(0).unwrap(), [1, 2, 3, 4]);
        assert!(Model::from_bytes(bytes).is_ok());
        let refused = Model::from_bytes_with(bytes, Resolver::new(&LOOKUP)).unwrap_err();
        assert_eq!(
            refused,
            Error::OpNotLinked {
                op: 0,
                kind: OpId::Copy,
                kernel: None
            }
        );
        assert_eq!(
            std::format!("{refused}"),
            "op 0: copy is not linked into this runtime (its resolver lacks it)"
        );
    }
}
