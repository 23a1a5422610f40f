//! The telemetry protocol between a device running Kiln and its host, version [`TELEMETRY_VERSION`].
//!
//! A frame on the wire is `COBS(payload ++ crc32(payload)) 0x00`:
//!
//! - the payload is the postcard encoding of the tuple `(TELEMETRY_VERSION, Frame)`, so the version is always
//!   the first encoded field (a varint: `0x01` for version 1);
//! - the CRC-32 (IEEE, [`crate::crc32`]) of the payload follows it, 4 bytes little-endian, so a frame damaged on
//!   the way is refused as [`TelemetryError::BadChecksum`] even where it would still decode. Every version keeps
//!   this envelope;
//! - the whole is COBS-stuffed, so it holds no `0x00`, and terminated by one `0x00`. A receiver
//!   resynchronises on any `0x00`: after line noise, the next frame after the next `0x00` decodes again. A sender
//!   may emit a lone `0x00` (e.g. at boot) to flush whatever noise a receiver has buffered; [`FrameReader`]
//!   ignores such empty frames.
//!
//! The host talks back with [`Command`]s in the same envelope (same version field, CRC and COBS):
//! [`encode_command`] / [`decode_command`]. A [`Deframer`] collects raw frames byte by byte on either side.
//!
//! Compatibility: new [`Frame`] and [`Command`] variants are only ever appended (an older receiver refuses them as
//! [`TelemetryError::Malformed`]); any other change bumps [`TELEMETRY_VERSION`]. The decoder checks the
//! checksum, then the version before the rest, so an intact frame of another version is always
//! [`TelemetryError::WrongVersion`].
//!
//! Everything is allocation-free and never panics: lists are `heapless::Vec`s with the caps below, and a
//! decoder refuses lists longer than their cap.

use heapless::Vec;
use serde::{Deserialize, Serialize};

/// Version of this protocol, the first field of every frame.
pub const TELEMETRY_VERSION: u16 = 1;
/// Cap of [`InferenceReport::op_cycles`]: cycles of the first 64 ops at most.
pub const MAX_OPS_REPORTED: usize = 64;
/// Cap of [`Output::Full`]: 256 int8 output values at most (send [`Output::TopK`] for larger outputs).
pub const MAX_OUTPUT: usize = 256;
/// Cap of [`Output::TopK`]: the 5 best classes at most.
pub const MAX_TOP_K: usize = 5;

/// Largest encoded frame, COBS overhead and the terminating `0x00` included: a buffer of this size always
/// holds [`encode`]'s output, and a [`FrameReader`]`<MAX_FRAME_BYTES>` accepts every valid frame.
///
/// The largest frame is an [`Frame::Inference`] with every number at its maximum, [`MAX_OPS_REPORTED`] op
/// cycles and a [`MAX_OUTPUT`]-byte [`Output::Full`]: 607 payload bytes (version 1, variant 1, sequence 5,
/// cycles 10, op cycles 1 + 64 * 5, arena bytes 5, stack high water 5, output variant 1, output 2 + 256), the
/// 4-byte CRC, 3 COBS code bytes (one per started 254-byte run) and the terminator: 615.
pub const MAX_FRAME_BYTES: usize = {
    let payload = varint_len(TELEMETRY_VERSION as u64) // version
        + 1 // Frame variant
        + varint_len(u32::MAX as u64) // sequence
        + varint_len(u64::MAX) // cycles
        + varint_len(MAX_OPS_REPORTED as u64) + MAX_OPS_REPORTED * varint_len(u32::MAX as u64) // op_cycles
        + 2 * varint_len(u32::MAX as u64) // arena_bytes, stack_high_water
        + 1 // Output variant
        + varint_len(MAX_OUTPUT as u64) + MAX_OUTPUT; // Output::Full (one raw byte per i8)
    stuffed_len(payload + CRC_BYTES) + 1
};

/// Bytes of the CRC-32 trailer.
const CRC_BYTES: usize = 4;

/// COBS-stuffed length of `n` bytes: one code byte per started 254-byte run.
const fn stuffed_len(n: usize) -> usize {
    n + n / 254 + 1
}

/// Bytes of `value` as a postcard varint (7 bits a byte).
const fn varint_len(mut value: u64) -> usize {
    let mut len = 1;
    while value >= 0x80 {
        value >>= 7;
        len += 1;
    }
    len
}

/// One telemetry message. Append-only: new variants go at the end, existing ones never change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
// `Inference` is ~600 bytes, the others a few dozen; without `alloc` there is nothing to box it into.
#[allow(clippy::large_enum_variant)]
pub enum Frame {
    /// Sent once at boot (and on request): who is talking and what it runs.
    Hello {
        /// Unique device id (e.g. the MCU's serial number).
        device_id: u64,
        /// Build id of the firmware.
        firmware_id: u32,
        /// The model's CRC-32, [`crate::Model::checksum`].
        model_id: u32,
        /// The model's `.kiln` format version ([`crate::format::FORMAT_VERSION`]).
        format_version: u16,
        /// Bytes of arena the firmware gives the interpreter.
        arena_bytes: u32,
    },
    /// One inference.
    Inference(InferenceReport),
    /// Sent periodically when idle.
    Heartbeat {
        uptime_ms: u64,
        /// Inferences since boot.
        inferences: u32,
        /// Errors since boot.
        errors: u32,
    },
    /// Something went wrong on the device; `code` and `detail` are firmware-defined numbers.
    Error { code: u16, detail: u32 },
    /// A piece of an inference's output, sent before its [`Frame::Inference`] when the host asked for whole
    /// outputs ([`Command::Infer`]`::full_output`): `data` is bytes `offset..offset + data.len()` of graph
    /// output `index`, raw as the model stores them (int8 values, or little-endian f32), in the model's layout.
    OutputChunk {
        sequence: u32,
        index: u8,
        offset: u32,
        data: Vec<u8, MAX_OUTPUT>,
    },
}

/// What the host asks of a device. Append-only, like [`Frame`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command<'a> {
    /// Answer with a [`Frame::Hello`].
    Hello,
    /// Run one inference on `input`: every graph input's bytes in order, raw as the model stores them.
    /// The device answers with [`Frame::OutputChunk`]s (when `full_output`) and then a [`Frame::Inference`]
    /// carrying the same `sequence` (with per-op cycles when `per_op`), or a [`Frame::Error`].
    Infer {
        sequence: u32,
        per_op: bool,
        full_output: bool,
        #[serde(borrow)]
        input: &'a [u8],
    },
    /// End the session: firmware under an emulator exits, firmware on a board resets.
    Exit,
}

/// `Frame::Error` codes Kiln's firmware sends, and what their `detail` holds.
pub mod error_code {
    /// The embedded model was refused at boot; `detail` 0 (the firmware's log names the reason).
    pub const MODEL_REFUSED: u16 = 1;
    /// An `Infer` carried `detail` input bytes, not the model's.
    pub const INPUT_SIZE: u16 = 2;
    /// The runtime failed during inference; `detail` 0 (the log names the reason).
    pub const INFERENCE: u16 = 3;
    /// A damaged or malformed command frame arrived; `detail`: 1 malformed, 2 checksum, 3 version, 4 too long.
    pub const BAD_COMMAND: u16 = 4;
    /// The stack used its whole reserve of `detail` bytes and may have overwritten statics (sent once).
    pub const STACK_EXHAUSTED: u16 = 5;

    /// A sentence for `code` and `detail`.
    pub fn describe(code: u16, detail: u32) -> &'static str {
        let _ = detail;
        match code {
            MODEL_REFUSED => "the firmware refused its embedded model",
            INPUT_SIZE => "the input had the wrong number of bytes",
            INFERENCE => "the inference failed",
            BAD_COMMAND => "a command frame arrived damaged or malformed",
            STACK_EXHAUSTED => {
                "the firmware used its whole stack reserve (rebuild with a larger --stack)"
            }
            _ => "unknown error code",
        }
    }
}

/// What one inference cost and produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InferenceReport {
    /// Counts inferences since boot (wrapping); a gap means lost frames.
    pub sequence: u32,
    /// CPU cycles of the whole inference.
    pub cycles: u64,
    /// Cycles of each op in execution order, the first [`MAX_OPS_REPORTED`] ops at most; empty when not
    /// measured.
    pub op_cycles: Vec<u32, MAX_OPS_REPORTED>,
    /// Bytes of arena the model uses.
    pub arena_bytes: u32,
    /// Most stack bytes used so far (0 when not measured).
    pub stack_high_water: u32,
    pub output: Output,
}

/// The model's (first) output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
// `Full` is 264 bytes, `TopK` 32; without `alloc` there is nothing to box it into.
#[allow(clippy::large_enum_variant)]
pub enum Output {
    /// The whole int8 output tensor, row-major; at most [`MAX_OUTPUT`] values.
    Full(Vec<i8, MAX_OUTPUT>),
    /// `(class index, int8 score)` of the best classes, best first; at most [`MAX_TOP_K`].
    TopK(Vec<(u16, i8), MAX_TOP_K>),
}

/// Why a frame could not be encoded or decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum TelemetryError {
    /// [`encode`] needs `need` bytes, the buffer has `have`.
    BufferTooSmall { need: u32, have: u32 },
    /// Not a valid frame: bad COBS, a `0x00` inside, truncated, unknown variant, a list over its cap, or
    /// bytes left after the frame.
    Malformed,
    /// The CRC-32 trailer does not match the payload: the frame was damaged on the way.
    BadChecksum { stored: u32, computed: u32 },
    /// The frame is of protocol version `found`; this side speaks `supported`.
    WrongVersion { found: u16, supported: u16 },
    /// More than `limit` bytes arrived without a `0x00`; they were dropped up to the next `0x00`.
    Overlong { limit: u32 },
}

impl core::fmt::Display for TelemetryError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            TelemetryError::BufferTooSmall { need, have } => {
                write!(f, "telemetry buffer too small: need {need} bytes, have {have}")
            }
            TelemetryError::Malformed => write!(f, "malformed telemetry frame"),
            TelemetryError::BadChecksum { stored, computed } => write!(
                f,
                "telemetry frame damaged (CRC-32 {stored:#010x}, computed {computed:#010x})"
            ),
            TelemetryError::WrongVersion { found, supported } => write!(
                f,
                "telemetry protocol version {found} is not supported (this side speaks version {supported})"
            ),
            TelemetryError::Overlong { limit } => {
                write!(f, "telemetry frame longer than {limit} bytes dropped")
            }
        }
    }
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Encodes `frame` into `buf` as one complete wire frame: payload, CRC-32, COBS-stuffed, terminating `0x00`
/// included. Returns the used part of `buf` (at most [`MAX_FRAME_BYTES`] long).
///
/// # Errors
/// [`TelemetryError::BufferTooSmall`] if the frame does not fit in `buf` (a [`MAX_FRAME_BYTES`] buffer always
/// suffices).
pub fn encode<'b>(frame: &Frame, buf: &'b mut [u8]) -> Result<&'b mut [u8], TelemetryError> {
    encode_message(frame, buf)
}

/// Encodes `command` into `buf` as one complete wire frame, like [`encode`]. A command carrying `n` input
/// bytes needs at most `n + n / 254 + 32` bytes.
///
/// # Errors
/// [`TelemetryError::BufferTooSmall`] if it does not fit in `buf`.
pub fn encode_command<'b>(
    command: &Command<'_>,
    buf: &'b mut [u8],
) -> Result<&'b mut [u8], TelemetryError> {
    encode_message(command, buf)
}

fn encode_message<'b, T: Serialize>(
    message: &T,
    buf: &'b mut [u8],
) -> Result<&'b mut [u8], TelemetryError> {
    // Serialise once, after a little head room, into a flavor that also takes the CRC-32 and the exact stuffed
    // length of everything it is fed (and keeps counting past the end of `buf`, for the error). Then stuff in place
    // towards the start: stuffing adds at most one byte per 254, and the head room is at least that, so writing
    // never overtakes reading.
    let room = (buf.len() / 254 + 2).min(buf.len());
    let mut sink = Sink::new(&mut buf[room..]);
    if (TELEMETRY_VERSION, message).serialize(&mut sink).is_err() {
        // Only a type postcard cannot encode either (no message type is one): no size is known.
        return Err(TelemetryError::BufferTooSmall {
            need: u32::MAX,
            have: to_u32(buf.len()),
        });
    }
    let crc = sink.crc.finish().to_le_bytes();
    for b in crc {
        sink.count(b);
    }
    let (payload_len, need) = (sink.len, sink.stuffed + 1);
    let fits = room + payload_len <= buf.len() && need <= buf.len();
    match cobs_encode_in_place(buf, room, payload_len, crc) {
        Some(len) if fits => Ok(&mut buf[..len]),
        _ => Err(TelemetryError::BufferTooSmall {
            need: to_u32(need),
            have: to_u32(buf.len()),
        }),
    }
}

/// COBS-stuffs `buf[start..start + len]` followed by `trailer` into the start of `buf` and appends the `0x00`
/// terminator; returns the length written, or `None` if it does not fit. Writing never overtakes reading when
/// `start` is at least the stuffing overhead of the data read from `buf`, `len / 254 + 1`.
fn cobs_encode_in_place(
    buf: &mut [u8],
    start: usize,
    len: usize,
    trailer: [u8; 4],
) -> Option<usize> {
    let (mut code_at, mut write, mut code) = (0usize, 1usize, 1u8);
    for read in start..start.checked_add(len)? + trailer.len() {
        let byte = match read.checked_sub(start + len) {
            Some(i) => trailer[i],
            None => *buf.get(read)?,
        };
        if byte == 0 {
            *buf.get_mut(code_at)? = code;
            (code_at, write, code) = (write, write + 1, 1);
        } else {
            *buf.get_mut(write)? = byte;
            write += 1;
            code += 1;
            if code == 0xFF {
                *buf.get_mut(code_at)? = code;
                (code_at, write, code) = (write, write + 1, 1);
            }
        }
    }
    *buf.get_mut(code_at)? = code;
    *buf.get_mut(write)? = 0;
    Some(write + 1)
}

/// Postcard's wire format written into a slice while it has room, counting what it is fed: its length, CRC-32 and
/// exact COBS-stuffed length (its bytes, one code byte to start and one more after every run of 254 non-zero
/// bytes). Writing never fails: past the end of the slice it only counts. Its `serde::Serializer` writes exactly
/// the bytes `postcard::to_slice` writes (for the types postcard encodes), its byte and varint writers out of line
/// so that each message type's derived `Serialize` stays a short sequence of calls.
struct Sink<'b> {
    buf: &'b mut [u8],
    /// Bytes fed.
    len: usize,
    crc: crate::crc32::Crc32,
    stuffed: usize,
    run: usize,
}

impl<'b> Sink<'b> {
    fn new(buf: &'b mut [u8]) -> Self {
        Sink {
            buf,
            len: 0,
            crc: crate::crc32::Crc32::new(),
            stuffed: 1,
            run: 0,
        }
    }

    /// Counts one byte of stuffed length.
    fn count(&mut self, b: u8) {
        self.stuffed += 1;
        if b == 0 {
            self.run = 0;
        } else {
            self.run += 1;
            if self.run == 254 {
                self.stuffed += 1;
                self.run = 0;
            }
        }
    }

    #[inline(never)]
    fn push(&mut self, b: u8) {
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = b;
        }
        self.len += 1;
        self.crc.update(&[b]);
        self.count(b);
    }

    #[inline(never)]
    fn extend(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.push(b);
        }
    }

    /// LEB128, 7 bits a byte, low first: postcard's varint of every unsigned width.
    #[inline(never)]
    fn varint(&mut self, mut v: u64) {
        loop {
            let low = (v & 0x7F) as u8;
            v >>= 7;
            if v == 0 {
                return self.push(low);
            }
            self.push(low | 0x80);
        }
    }

    /// Zigzag, then varint: postcard's signed integers.
    fn signed(&mut self, v: i64) {
        self.varint(((v << 1) ^ (v >> 63)) as u64)
    }

    fn len_prefix(&mut self, len: Option<usize>) -> Result<(), Unencodable> {
        self.varint(len.ok_or(Unencodable)? as u64);
        Ok(())
    }
}

/// What postcard cannot encode either: a sequence or map of unknown length, 128-bit integers, `collect_str`.
#[derive(Debug)]
struct Unencodable;

impl core::fmt::Display for Unencodable {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("not encodable")
    }
}

impl serde::ser::StdError for Unencodable {}

impl serde::ser::Error for Unencodable {
    fn custom<T: core::fmt::Display>(_: T) -> Self {
        Unencodable
    }
}

type Done = Result<(), Unencodable>;

impl serde::Serializer for &mut Sink<'_> {
    type Ok = ();
    type Error = Unencodable;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    fn is_human_readable(&self) -> bool {
        false
    }
    fn serialize_bool(self, v: bool) -> Done {
        self.push(u8::from(v));
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Done {
        self.push(v as u8);
        Ok(())
    }
    fn serialize_i16(self, v: i16) -> Done {
        self.signed(i64::from(v));
        Ok(())
    }
    fn serialize_i32(self, v: i32) -> Done {
        self.signed(i64::from(v));
        Ok(())
    }
    fn serialize_i64(self, v: i64) -> Done {
        self.signed(v);
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Done {
        self.push(v);
        Ok(())
    }
    fn serialize_u16(self, v: u16) -> Done {
        self.varint(u64::from(v));
        Ok(())
    }
    fn serialize_u32(self, v: u32) -> Done {
        self.varint(u64::from(v));
        Ok(())
    }
    fn serialize_u64(self, v: u64) -> Done {
        self.varint(v);
        Ok(())
    }
    fn serialize_f32(self, v: f32) -> Done {
        self.extend(&v.to_le_bytes());
        Ok(())
    }
    fn serialize_f64(self, v: f64) -> Done {
        self.extend(&v.to_le_bytes());
        Ok(())
    }
    fn serialize_char(self, v: char) -> Done {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }
    fn serialize_str(self, v: &str) -> Done {
        self.serialize_bytes(v.as_bytes())
    }
    fn serialize_bytes(self, v: &[u8]) -> Done {
        self.varint(v.len() as u64);
        self.extend(v);
        Ok(())
    }
    fn serialize_none(self) -> Done {
        self.push(0);
        Ok(())
    }
    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Done {
        self.push(1);
        value.serialize(self)
    }
    fn serialize_unit(self) -> Done {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Done {
        Ok(())
    }
    fn serialize_unit_variant(self, _: &'static str, index: u32, _: &'static str) -> Done {
        self.varint(u64::from(index));
        Ok(())
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(self, _: &'static str, value: &T) -> Done {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        value: &T,
    ) -> Done {
        self.varint(u64::from(index));
        value.serialize(self)
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Self, Unencodable> {
        self.len_prefix(len)?;
        Ok(self)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self, Unencodable> {
        Ok(self)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, Unencodable> {
        Ok(self)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, Unencodable> {
        self.varint(u64::from(index));
        Ok(self)
    }
    fn serialize_map(self, len: Option<usize>) -> Result<Self, Unencodable> {
        self.len_prefix(len)?;
        Ok(self)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, Unencodable> {
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, Unencodable> {
        self.varint(u64::from(index));
        Ok(self)
    }
    fn collect_str<T: ?Sized + core::fmt::Display>(self, _: &T) -> Done {
        Err(Unencodable)
    }
}

/// The compound parts of a message: their elements one after the other, nothing around them.
macro_rules! compound {
    ($($trait:ident :: $method:ident),+) => {$(
        impl serde::ser::$trait for &mut Sink<'_> {
            type Ok = ();
            type Error = Unencodable;
            fn $method<T: ?Sized + Serialize>(&mut self, value: &T) -> Done {
                value.serialize(&mut **self)
            }
            fn end(self) -> Done {
                Ok(())
            }
        }
    )+};
}

compound!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

impl serde::ser::SerializeMap for &mut Sink<'_> {
    type Ok = ();
    type Error = Unencodable;
    fn serialize_key<T: ?Sized + Serialize>(&mut self, key: &T) -> Done {
        key.serialize(&mut **self)
    }
    fn serialize_value<T: ?Sized + Serialize>(&mut self, value: &T) -> Done {
        value.serialize(&mut **self)
    }
    fn end(self) -> Done {
        Ok(())
    }
}

impl serde::ser::SerializeStruct for &mut Sink<'_> {
    type Ok = ();
    type Error = Unencodable;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, _: &'static str, value: &T) -> Done {
        value.serialize(&mut **self)
    }
    fn end(self) -> Done {
        Ok(())
    }
}

impl serde::ser::SerializeStructVariant for &mut Sink<'_> {
    type Ok = ();
    type Error = Unencodable;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, _: &'static str, value: &T) -> Done {
        value.serialize(&mut **self)
    }
    fn end(self) -> Done {
        Ok(())
    }
}

/// Decodes one wire frame, with or without its terminating `0x00`. `frame_bytes` is un-stuffed in place (its
/// contents are unspecified afterwards, on success or error).
///
/// The checksum is checked first, then the version, before the rest of the frame is looked at.
///
/// # Errors
/// [`TelemetryError::BadChecksum`] for a damaged frame; [`TelemetryError::WrongVersion`] for an intact frame of
/// another protocol version; [`TelemetryError::Malformed`] for anything else that is not exactly one valid
/// frame (empty input, a `0x00` before the end, bad COBS, too short for a CRC, an unknown variant, a list over
/// its cap, trailing bytes).
pub fn decode(frame_bytes: &mut [u8]) -> Result<Frame, TelemetryError> {
    decode_message(frame_bytes)
}

/// Decodes one [`Command`] wire frame, as [`decode`] does frames; the command borrows its input bytes from
/// `frame_bytes` (nothing is copied).
///
/// # Errors
/// As [`decode`].
pub fn decode_command(frame_bytes: &mut [u8]) -> Result<Command<'_>, TelemetryError> {
    decode_message(frame_bytes)
}

fn decode_message<'d, T: Deserialize<'d>>(frame_bytes: &'d mut [u8]) -> Result<T, TelemetryError> {
    let end = match frame_bytes.last() {
        Some(0) => frame_bytes.len() - 1,
        Some(_) => frame_bytes.len(),
        None => return Err(TelemetryError::Malformed),
    };
    let stuffed = &mut frame_bytes[..end];
    let len = cobs_decode_in_place(stuffed).ok_or(TelemetryError::Malformed)?;
    let stuffed: &'d [u8] = stuffed;
    let data = stuffed.get(..len).ok_or(TelemetryError::Malformed)?;
    let payload_len = len
        .checked_sub(CRC_BYTES)
        .ok_or(TelemetryError::Malformed)?;
    let (payload, trailer) = data.split_at(payload_len);
    let stored = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    let computed = crate::crc32::crc32(payload);
    if stored != computed {
        return Err(TelemetryError::BadChecksum { stored, computed });
    }
    let (version, rest) =
        crate::model::de::take::<u16>(payload).map_err(|_| TelemetryError::Malformed)?;
    if version != TELEMETRY_VERSION {
        return Err(TelemetryError::WrongVersion {
            found: version,
            supported: TELEMETRY_VERSION,
        });
    }
    match crate::model::de::take::<T>(rest) {
        Ok((message, [])) => Ok(message),
        _ => Err(TelemetryError::Malformed),
    }
}

/// Undoes COBS stuffing in place (no terminator expected): returns the payload length, the payload being the
/// start of `buf`, or `None` if `buf` is empty, holds a `0x00` or a code byte runs past its end.
fn cobs_decode_in_place(buf: &mut [u8]) -> Option<usize> {
    if buf.is_empty() {
        return None;
    }
    // Invariant: `write < read` after a code byte is consumed, so un-stuffing never overtakes the input.
    let (mut read, mut write) = (0usize, 0usize);
    while read < buf.len() {
        let code = *buf.get(read)?;
        if code == 0 {
            return None;
        }
        read += 1;
        let run = usize::from(code - 1);
        for _ in 0..run {
            let byte = *buf.get(read)?;
            if byte == 0 {
                return None;
            }
            *buf.get_mut(write)? = byte;
            read += 1;
            write += 1;
        }
        // A code byte below 0xFF stands for a zero after its run, except the final one (the terminator's).
        if code != 0xFF && read < buf.len() {
            *buf.get_mut(write)? = 0;
            write += 1;
        }
    }
    Some(write)
}

/// Collects raw wire frames from a byte stream, allocation-free: feed it received bytes one at a time; it
/// holds up to `N` stuffed bytes of the frame in progress. Decode what it returns with [`decode`] or
/// [`decode_command`].
///
/// Every `0x00` ends a frame. An empty frame (a `0x00` right after another, or first) is the
/// idle/resynchronisation byte and returns nothing; more than `N` bytes before a `0x00` are dropped up to it
/// and returned as [`TelemetryError::Overlong`].
#[derive(Clone, Debug)]
pub struct Deframer<const N: usize> {
    buf: [u8; N],
    len: usize,
    overlong: bool,
}

impl<const N: usize> Default for Deframer<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Deframer<N> {
    pub const fn new() -> Self {
        Self {
            buf: [0; N],
            len: 0,
            overlong: false,
        }
    }

    /// Feeds one received byte. Returns `Some` when `byte` is a `0x00` ending a non-empty frame: the frame's
    /// stuffed bytes (terminator excluded), or [`TelemetryError::Overlong`].
    pub fn push(&mut self, byte: u8) -> Option<Result<&mut [u8], TelemetryError>> {
        if byte != 0 {
            if !self.overlong {
                match self.buf.get_mut(self.len) {
                    Some(slot) => {
                        *slot = byte;
                        self.len += 1;
                    }
                    None => self.overlong = true,
                }
            }
            return None;
        }
        let len = core::mem::take(&mut self.len);
        if core::mem::take(&mut self.overlong) {
            return Some(Err(TelemetryError::Overlong { limit: to_u32(N) }));
        }
        if len == 0 {
            return None;
        }
        Some(self.buf.get_mut(..len).ok_or(TelemetryError::Malformed))
    }
}

/// Allocation-free stream decoder of [`Frame`]s: a [`Deframer`] plus [`decode`], with counters. It holds up to
/// `N` stuffed bytes of the frame in progress ([`MAX_FRAME_BYTES`] is always enough).
///
/// Never panics, whatever bytes come in. Every `0x00` ends a frame: a valid one is returned and counted in
/// [`FrameReader::frames_ok`]; a malformed, truncated, wrong-version or overlong one (more than `N` bytes, then
/// dropped up to the next `0x00`) or damaged one is returned as an error and counted once in
/// [`FrameReader::frames_bad`]. An empty frame (a `0x00` right after another, or first) is the
/// idle/resynchronisation byte: it returns `None` and counts nowhere.
#[derive(Clone, Debug)]
pub struct FrameReader<const N: usize> {
    deframer: Deframer<N>,
    frames_ok: u32,
    frames_bad: u32,
}

impl<const N: usize> Default for FrameReader<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> FrameReader<N> {
    pub const fn new() -> Self {
        Self {
            deframer: Deframer::new(),
            frames_ok: 0,
            frames_bad: 0,
        }
    }

    /// Feeds one received byte. Returns `Some` when `byte` is a `0x00` ending a non-empty frame, `None`
    /// otherwise.
    pub fn push(&mut self, byte: u8) -> Option<Result<Frame, TelemetryError>> {
        let result = self.deframer.push(byte)?.and_then(decode);
        match result {
            Ok(_) => self.frames_ok = self.frames_ok.saturating_add(1),
            Err(_) => self.frames_bad = self.frames_bad.saturating_add(1),
        }
        Some(result)
    }

    /// Valid frames returned so far (saturating).
    pub fn frames_ok(&self) -> u32 {
        self.frames_ok
    }

    /// Bad frames returned so far (saturating): malformed, truncated, damaged, wrong version or overlong.
    pub fn frames_bad(&self) -> u32 {
        self.frames_bad
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use proptest::prelude::*;

    use super::*;

    /// What [`Sink`] writes for `v`, and whether it equals postcard's bytes.
    fn same_as_postcard<T: Serialize>(v: &T) {
        let mut ours = [0u8; 2048];
        let mut sink = Sink::new(&mut ours);
        v.serialize(&mut sink).unwrap();
        let (len, crc, stuffed) = (sink.len, sink.crc.finish(), sink.stuffed);
        let mut theirs = [0u8; 2048];
        let theirs = postcard::to_slice(v, &mut theirs).unwrap();
        assert_eq!(&ours[..len], &*theirs);
        assert_eq!(crc, crate::crc32::crc32(theirs));
        // One code byte to start and one after every run of 254 non-zero bytes.
        let (mut want, mut run) = (1 + theirs.len(), 0);
        for &b in theirs.iter() {
            run = if b == 0 { 0 } else { run + 1 };
            if run == 254 {
                want += 1;
                run = 0;
            }
        }
        assert_eq!(stuffed, want);
    }

    fn output() -> impl Strategy<Value = Output> {
        prop_oneof![
            proptest::collection::vec(any::<i8>(), 0..=MAX_OUTPUT)
                .prop_map(|v| Output::Full(Vec::from_slice(&v).unwrap())),
            proptest::collection::vec(any::<(u16, i8)>(), 0..=MAX_TOP_K)
                .prop_map(|v| Output::TopK(Vec::from_slice(&v).unwrap())),
        ]
    }

    fn frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            any::<(u64, u32, u32, u16, u32)>().prop_map(|(a, b, c, d, e)| Frame::Hello {
                device_id: a,
                firmware_id: b,
                model_id: c,
                format_version: d,
                arena_bytes: e,
            }),
            (
                any::<(u32, u64, u32, u32)>(),
                proptest::collection::vec(any::<u32>(), 0..=MAX_OPS_REPORTED),
                output()
            )
                .prop_map(|((s, c, a, h), ops, output)| Frame::Inference(
                    InferenceReport {
                        sequence: s,
                        cycles: c,
                        op_cycles: Vec::from_slice(&ops).unwrap(),
                        arena_bytes: a,
                        stack_high_water: h,
                        output,
                    }
                )),
            any::<(u64, u32, u32)>().prop_map(|(u, i, e)| Frame::Heartbeat {
                uptime_ms: u,
                inferences: i,
                errors: e,
            }),
            any::<(u16, u32)>().prop_map(|(code, detail)| Frame::Error { code, detail }),
            (
                any::<(u32, u8, u32)>(),
                proptest::collection::vec(any::<u8>(), 0..=MAX_OUTPUT)
            )
                .prop_map(|((s, i, o), d)| Frame::OutputChunk {
                    sequence: s,
                    index: i,
                    offset: o,
                    data: Vec::from_slice(&d).unwrap(),
                }),
        ]
    }

    proptest! {
        #[test]
        fn sink_writes_postcards_bytes(f in frame(), input in proptest::collection::vec(any::<u8>(), 0..600),
                                       seq in any::<u32>(), flags in any::<(bool, bool)>()) {
            same_as_postcard(&(TELEMETRY_VERSION, &f));
            let command = Command::Infer { sequence: seq, per_op: flags.0, full_output: flags.1, input: &input };
            same_as_postcard(&(TELEMETRY_VERSION, &command));
            same_as_postcard(&(TELEMETRY_VERSION, &Command::Hello));
            same_as_postcard(&(TELEMETRY_VERSION, &Command::Exit));
        }

        #[test]
        fn sink_writes_postcards_integers(v in any::<u64>(), w in any::<i64>(), x in any::<f32>(), s in ".{0,20}") {
            same_as_postcard(&(v, w, v as u32, w as i32, v as u16, w as i16, w as i8, v as u8));
            same_as_postcard(&(x, f64::from(x), Some(v), None::<u8>, true, false, s.as_str(), ()));
            same_as_postcard(&(s.chars().next().unwrap_or('x'), [1u8, 2, 3], (1u8,)));
        }
    }
}
