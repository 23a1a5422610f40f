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
    let have = to_u32(buf.len());
    let too_small = || TelemetryError::BufferTooSmall {
        need: encoded_len(message),
        have,
    };
    // Serialise after a little head room, then move payload + CRC to the very end of `buf` and stuff it in
    // place towards the start: stuffing adds at most one byte per 254, and the space before the data is at least
    // that (it is exactly the stuffing overhead when `buf` is just big enough).
    let room = (buf.len() / 254 + 2).min(buf.len());
    let payload_len = postcard::to_slice(&(TELEMETRY_VERSION, message), &mut buf[room..])
        .map_err(|_| too_small())?
        .len();
    let crc = crate::crc32::crc32(&buf[room..room + payload_len]).to_le_bytes();
    let data_len = payload_len + CRC_BYTES;
    let need = stuffed_len_of(buf[room..room + payload_len].iter().chain(&crc)) + 1;
    if buf.len() < need {
        return Err(too_small());
    }
    let start = buf.len() - data_len;
    buf.copy_within(room..room + payload_len, start);
    buf[start + payload_len..].copy_from_slice(&crc);
    let len = cobs_encode_in_place(buf, start).ok_or_else(too_small)?;
    Ok(&mut buf[..len])
}

/// Exact COBS-stuffed length of `data`: its bytes, plus one code byte to start and one more after every run
/// of 254 non-zero bytes.
fn stuffed_len_of<'d>(data: impl Iterator<Item = &'d u8>) -> usize {
    let (mut len, mut run) = (1usize, 0usize);
    for &b in data {
        len += 1;
        if b == 0 {
            run = 0;
        } else {
            run += 1;
            if run == 254 {
                len += 1;
                run = 0;
            }
        }
    }
    len
}

/// COBS-stuffs `buf[start..]` into the start of `buf` and appends the `0x00` terminator; returns the length
/// written, or `None` if it does not fit. Writing never overtakes reading when `start` is at least the
/// stuffing overhead, `(buf.len() - start) / 254 + 1`.
fn cobs_encode_in_place(buf: &mut [u8], start: usize) -> Option<usize> {
    let (mut code_at, mut write, mut code) = (0usize, 1usize, 1u8);
    for read in start..buf.len() {
        let byte = *buf.get(read)?;
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

/// Exact encoded length of `message`, for the error path of [`encode_message`] only: it serialises into a
/// counter instead of a buffer.
#[cold]
#[inline(never)]
fn encoded_len<T: Serialize>(message: &T) -> u32 {
    match postcard::serialize_with_flavor(&(TELEMETRY_VERSION, message), Measure::default()) {
        Ok(m) => {
            let crc = m.crc.finish().to_le_bytes();
            let mut m = m;
            for b in crc {
                m.feed(b);
            }
            to_u32(m.stuffed + 1)
        }
        Err(_) => u32::MAX,
    }
}

/// A postcard flavor that writes nothing: it tracks the CRC and the COBS-stuffed length of what it is fed.
struct Measure {
    crc: crate::crc32::Crc32,
    stuffed: usize,
    run: usize,
}

impl Default for Measure {
    fn default() -> Self {
        Measure {
            crc: crate::crc32::Crc32::new(),
            stuffed: 1,
            run: 0,
        }
    }
}

impl Measure {
    /// Counts one byte as [`stuffed_len_of`] does.
    fn feed(&mut self, b: u8) {
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
}

impl postcard::ser_flavors::Flavor for Measure {
    type Output = Measure;

    fn try_push(&mut self, b: u8) -> postcard::Result<()> {
        self.crc.update(&[b]);
        self.feed(b);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<Measure> {
        Ok(self)
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
        postcard::take_from_bytes::<u16>(payload).map_err(|_| TelemetryError::Malformed)?;
    if version != TELEMETRY_VERSION {
        return Err(TelemetryError::WrongVersion {
            found: version,
            supported: TELEMETRY_VERSION,
        });
    }
    match postcard::take_from_bytes::<T>(rest) {
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
