//! One flat error enum, no strings: each variant carries the numbers that explain it.

/// Which part of an op a bounds or shape error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Field {
    Input(u8),
    Output,
    Weights,
    Bias,
    Multipliers,
    Shifts,
    Table,
    Params,
    /// The kernel the compiler chose is not one this op's geometry allows.
    Kernel,
}

/// Everything that can go wrong in `kiln-runtime`. Loading checks the whole model once, so after
/// [`crate::Model::from_bytes`] succeeds, [`crate::Interpreter::invoke`] only fails on caller mistakes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Error {
    /// The buffer is shorter than a header, or than the header says the file is.
    Truncated { have: u32, need: u32 },
    /// The buffer is longer than the header says the file is (something was appended).
    TrailingBytes { have: u32, expected: u32 },
    /// The first four bytes are not `KILN`.
    BadMagic { found: [u8; 4] },
    /// The file was written for a format version this runtime does not read.
    UnsupportedVersion { found: u16, supported: u16 },
    /// The header's flags field holds bits this runtime does not know.
    UnknownFlags { flags: u16 },
    /// The payload checksum does not match: the file is corrupted or was tampered with.
    ChecksumMismatch { stored: u32, computed: u32 },
    /// The metadata at `offset` could not be decoded.
    Malformed { offset: u32 },
    /// A section or record has an impossible size or count.
    BadLayout { offset: u32, len: u32, limit: u32 },
    /// The model buffer does not start at a 4-byte aligned address (weights are read in place).
    ModelMisaligned { address: u32 },
    /// The arena does not start at a 4-byte aligned address.
    ArenaMisaligned { address: u32 },
    /// The arena given is smaller than the model needs.
    ArenaTooSmall { need: u32, have: u32 },
    /// Operand or table `field` of op `op` lies outside its region (arena or weight blob).
    OutOfBounds {
        op: u16,
        field: Field,
        end: u32,
        limit: u32,
    },
    /// Operand `field` of op `op` is not aligned to `align` bytes.
    Misaligned {
        op: u16,
        field: Field,
        offset: u32,
        align: u32,
    },
    /// Operand `field` of op `op` holds `found` bytes where its shape needs `expected`.
    SizeMismatch {
        op: u16,
        field: Field,
        expected: u32,
        found: u32,
    },
    /// A parameter of op `op` is out of its documented range (zero stride, bad rank, ...).
    BadParam { op: u16, field: Field, value: i32 },
    /// Op `op` has the wrong number of inputs.
    Arity { op: u16, expected: u8, found: u8 },
    /// The op's output overlaps one of its inputs in the arena.
    Overlap { op: u16, input: u8 },
    /// A tensor index (graph input/output or op output) is out of range.
    BadTensor { index: u16, count: u16 },
    /// Input/output `index` requested, but the model has `count`.
    NoSuchIo { index: u8, count: u8 },
    /// The data given for an input or output has `found` bytes; the tensor has `expected`.
    IoSize {
        index: u8,
        expected: u32,
        found: u32,
    },
    /// The op kind is not known to this runtime.
    UnknownOp { op: u16 },
    /// Op `op` is a `kind` (running `kernel`; `None`: any) that this runtime's resolver
    /// ([`crate::ops::Resolver`]) does not link: the firmware was built for another model.
    OpNotLinked {
        op: u16,
        kind: crate::ops::OpId,
        kernel: Option<crate::format::KernelS8>,
    },
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        use Error::*;
        match *self {
            Truncated { have, need } => write!(f, "truncated: {have} bytes, need {need}"),
            TrailingBytes { have, expected } => {
                write!(f, "{} unexpected bytes after the end of the model ({have} bytes, header says {expected})", have - expected)
            }
            BadMagic { found } => write!(f, "not a Kiln model (magic {found:02x?}, expected \"KILN\")"),
            UnsupportedVersion { found, supported } => {
                write!(f, "format version {found} is not supported (this runtime reads version {supported})")
            }
            UnknownFlags { flags } => write!(f, "unknown header flags {flags:#06x}"),
            ChecksumMismatch { stored, computed } => write!(
                f,
                "checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): the file is corrupted or was modified"
            ),
            Malformed { offset } => write!(f, "malformed metadata at byte {offset}"),
            BadLayout { offset, len, limit } => {
                write!(f, "bad layout: {len} bytes at offset {offset} exceed the limit {limit}")
            }
            ModelMisaligned { address } => write!(f, "model buffer at {address:#x} is not 4-byte aligned"),
            ArenaMisaligned { address } => write!(f, "arena at {address:#x} is not 4-byte aligned"),
            ArenaTooSmall { need, have } => write!(f, "arena too small: need {need} bytes, have {have}"),
            OutOfBounds { op, field, end, limit } => {
                write!(f, "op {op}: {field:?} ends at byte {end}, beyond its region of {limit} bytes")
            }
            Misaligned { op, field, offset, align } => {
                write!(f, "op {op}: {field:?} at offset {offset} is not {align}-byte aligned")
            }
            SizeMismatch { op, field, expected, found } => {
                write!(f, "op {op}: {field:?} has {found} bytes, its shape needs {expected}")
            }
            BadParam { op, field, value } => write!(f, "op {op}: {field:?} parameter out of range ({value})"),
            Arity { op, expected, found } => write!(f, "op {op}: expected {expected} inputs, found {found}"),
            Overlap { op, input } => write!(f, "op {op}: output overlaps input {input}"),
            BadTensor { index, count } => write!(f, "tensor index {index} out of range ({count} tensors)"),
            NoSuchIo { index, count } => write!(f, "no input/output {index} (the model has {count})"),
            IoSize { index, expected, found } => {
                write!(f, "input/output {index}: {found} bytes given, the tensor has {expected}")
            }
            UnknownOp { op } => write!(f, "op {op}: unknown kind"),
            OpNotLinked { op, kind, kernel } => {
                write!(f, "op {op}: {}", kind.name())?;
                if let Some(k) = kernel {
                    write!(f, " with the {} kernel", k.name())?;
                }
                write!(f, " is not linked into this runtime (its resolver lacks it)")
            }
        }
    }
}
