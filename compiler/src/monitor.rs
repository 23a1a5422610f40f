//! `kiln monitor`: watch a device's telemetry ([`kiln_runtime::telemetry`]) over a serial port or TCP (an
//! emulator, a serial-to-TCP bridge), one human line per frame, and optionally a JSON Lines log for scripts.
//!
//! The stream is whatever the device sends, from whenever we happen to connect: the first bytes are usually the
//! tail of a frame, and line noise or a device reset can cut frames anywhere. None of that is fatal: every
//! `0x00` ends a frame, a bad frame is reported and skipped, and decoding picks up again at the next frame.

use std::fmt;
use std::fs::File;
use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_runtime::telemetry::{Frame, FrameReader, Output, TelemetryError, MAX_FRAME_BYTES};
use serde_json::{json, Value};

use crate::error::{input, Error, Result};
use crate::inspect::thousands;

/// One JSON object for a decoded frame: `"type"` (`"hello"`, `"inference"`, `"heartbeat"`, `"error"`,
/// `"output_chunk"`) and the frame's fields under their names in [`Frame`].
///
/// Ids are hex strings rather than numbers: `device_id` is a u64, which JavaScript (and every JSON reader that
/// parses numbers as doubles) would silently round, and `firmware_id` / `model_id` are read as hex everywhere
/// else (`kiln inspect` prints the model's CRC-32 that way). An inference's `output` is `{"full": [i8...]}` or
/// `{"top_k": [[class, score], ...]}`.
pub fn frame_json(frame: &Frame) -> Value {
    match frame {
        Frame::Hello {
            device_id,
            firmware_id,
            model_id,
            format_version,
            arena_bytes,
        } => json!({
            "type": "hello",
            "device_id": format!("{device_id:#018x}"),
            "firmware_id": format!("{firmware_id:#010x}"),
            "model_id": format!("{model_id:#010x}"),
            "format_version": format_version,
            "arena_bytes": arena_bytes,
        }),
        Frame::Inference(report) => {
            let output = match &report.output {
                Output::Full(values) => json!({ "full": values.as_slice() }),
                Output::TopK(best) => {
                    let pairs: Vec<[i32; 2]> = best
                        .iter()
                        .map(|&(class, score)| [i32::from(class), i32::from(score)])
                        .collect();
                    json!({ "top_k": pairs })
                }
            };
            json!({
                "type": "inference",
                "sequence": report.sequence,
                "cycles": report.cycles,
                "op_cycles": report.op_cycles.as_slice(),
                "arena_bytes": report.arena_bytes,
                "stack_high_water": report.stack_high_water,
                "output": output,
            })
        }
        Frame::Heartbeat {
            uptime_ms,
            inferences,
            errors,
        } => json!({
            "type": "heartbeat",
            "uptime_ms": uptime_ms,
            "inferences": inferences,
            "errors": errors,
        }),
        Frame::Error { code, detail } => json!({
            "type": "error",
            "code": code,
            "detail": detail,
        }),
        Frame::OutputChunk {
            sequence,
            index,
            offset,
            data,
        } => json!({
            "type": "output_chunk",
            "sequence": sequence,
            "index": index,
            "offset": offset,
            "data": data.as_slice(),
        }),
    }
}

/// JSON for a frame that failed to decode: `{"type": "bad_frame", "error": "<why>"}`, so a log keeps the
/// position and reason of every loss.
pub fn bad_frame_json(error: &TelemetryError) -> Value {
    json!({ "type": "bad_frame", "error": error.to_string() })
}

/// [`frame_json`] of a decoded frame, [`bad_frame_json`] of one that did not decode.
pub fn frame_result_json(result: &std::result::Result<Frame, TelemetryError>) -> Value {
    match result {
        Ok(frame) => frame_json(frame),
        Err(e) => bad_frame_json(e),
    }
}

/// A one-line human summary of `frame`. Counts and sizes get thousands separators (cycle counts run to
/// millions); ids, sequence numbers, codes and byte ranges do not, since they are looked up rather than read as
/// magnitudes.
pub fn frame_line(frame: &Frame) -> String {
    match frame {
        Frame::Hello {
            device_id,
            firmware_id,
            model_id,
            format_version,
            arena_bytes,
        } => format!(
            "hello: device {device_id:#018x}, firmware {firmware_id:#010x}, model {model_id:#010x}, \
             format v{format_version}, arena {} B",
            thousands(u64::from(*arena_bytes))
        ),
        Frame::Inference(report) => {
            // The protocol sends 0 when the firmware does not measure its stack: "0 B" would read as a
            // measurement.
            let stack = match report.stack_high_water {
                0 => "stack not measured".to_string(),
                bytes => format!("stack {} B", thousands(u64::from(bytes))),
            };
            let top = match top_class(&report.output) {
                Some((class, score)) => format!("top class {class} (score {score})"),
                None => "no output".to_string(),
            };
            format!(
                "inference #{}: {} cycles, arena {} B, {stack}, {top}",
                report.sequence,
                thousands(report.cycles),
                thousands(u64::from(report.arena_bytes)),
            )
        }
        Frame::Heartbeat {
            uptime_ms,
            inferences,
            errors,
        } => format!(
            "heartbeat: up {}.{} s, {} inferences, {} errors",
            thousands(uptime_ms / 1000),
            uptime_ms % 1000 / 100,
            thousands(u64::from(*inferences)),
            thousands(u64::from(*errors)),
        ),
        Frame::Error { code, detail } => format!("error: code {code} detail {detail}"),
        Frame::OutputChunk {
            sequence,
            index,
            offset,
            data,
        } => {
            // u64: `offset + len` may pass u32::MAX on a confused device; the line should say so, not wrap.
            let start = u64::from(*offset);
            let end = start + data.len() as u64;
            format!("output chunk #{sequence}: output {index} bytes {start}..{end}")
        }
    }
}

/// The best class and its score: the argmax of a full output (the first on ties, as `kiln eval` counts), or
/// the first of a top-k list (sent best first). `None` for an empty output.
fn top_class(output: &Output) -> Option<(u16, i8)> {
    match output {
        Output::Full(values) => {
            let mut best: Option<(usize, i8)> = None;
            for (i, &v) in values.iter().enumerate() {
                if best.is_none_or(|(_, b)| v > b) {
                    best = Some((i, v));
                }
            }
            // A full output holds at most MAX_OUTPUT (256) values, so the index fits a u16.
            best.map(|(i, v)| (u16::try_from(i).unwrap_or(u16::MAX), v))
        }
        Output::TopK(best) => best.first().copied(),
    }
}

/// Decodes a telemetry byte stream fed in pieces of any size: a [`FrameReader`]`<`[`MAX_FRAME_BYTES`]`>`
/// (which accepts every valid frame), plus an optional JSON Lines log of every frame, good and bad.
pub struct Decoder {
    reader: FrameReader<MAX_FRAME_BYTES>,
    jsonl: Option<Box<dyn Write + Send>>,
    /// Bytes of an unterminated frame arrived since the last `0x00`: [`Decoder::finish`] must not lose them
    /// silently.
    pending: bool,
}

impl Decoder {
    /// A decoder that logs one JSON line per frame to `jsonl` when given ([`frame_json`] for good frames,
    /// [`bad_frame_json`] for bad ones).
    pub fn new(jsonl: Option<Box<dyn Write + Send>>) -> Self {
        Self {
            reader: FrameReader::new(),
            jsonl,
            pending: false,
        }
    }

    /// Feeds received bytes; calls `on_frame` for each frame they complete, good or bad, in stream order.
    ///
    /// Each JSON line is written before `on_frame` sees its frame, as one `write_all` of the whole line
    /// (newline included) followed by a flush, never buffered across frames: a process killed at any point
    /// leaves a log of complete lines, holding every frame already shown.
    ///
    /// # Errors
    /// The JSONL writer's: decoding stops at the frame whose line could not be written (that frame is
    /// counted, but not passed to `on_frame`), and the rest of `bytes` is dropped.
    pub fn feed(
        &mut self,
        bytes: &[u8],
        mut on_frame: impl FnMut(&Result<Frame, TelemetryError>),
    ) -> io::Result<()> {
        for &byte in bytes {
            self.pending = byte != 0;
            let Some(result) = self.reader.push(byte) else {
                continue;
            };
            if let Some(log) = &mut self.jsonl {
                let value = frame_result_json(&result);
                let mut line = serde_json::to_vec(&value).map_err(io::Error::other)?;
                line.push(b'\n');
                log.write_all(&line)?;
                log.flush()?;
            }
            on_frame(&result);
        }
        Ok(())
    }

    /// The stream has ended: a frame cut off by the end (bytes after the last `0x00`) is decoded as it stands,
    /// which usually makes it a bad frame, instead of vanishing from the counts. Does nothing when the stream
    /// ended on a frame boundary.
    ///
    /// # Errors
    /// As [`Decoder::feed`].
    pub fn finish(
        &mut self,
        on_frame: impl FnMut(&Result<Frame, TelemetryError>),
    ) -> io::Result<()> {
        if self.pending {
            self.feed(&[0], on_frame)
        } else {
            Ok(())
        }
    }

    /// Good frames so far.
    pub fn frames_ok(&self) -> u32 {
        self.reader.frames_ok()
    }

    /// Bad frames so far: malformed, truncated, damaged, of another protocol version, or overlong.
    pub fn frames_bad(&self) -> u32 {
        self.reader.frames_bad()
    }
}

/// Where telemetry comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A TCP server sending the device's byte stream: `host:port` (an emulator, a serial-to-TCP bridge).
    Tcp(String),
    /// A serial port (e.g. `/dev/ttyACM0`, `COM3`) at `baud` (8N1, no flow control).
    Serial { path: PathBuf, baud: u32 },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Tcp(addr) => f.write_str(addr),
            Source::Serial { path, .. } => write!(f, "{}", path.display()),
        }
    }
}

/// How long one serial read waits before it times out. Timeouts only mean the device is quiet and are retried;
/// this just bounds how long a read sits in the kernel.
const SERIAL_READ_TIMEOUT: Duration = Duration::from_secs(1);

/// `kiln monitor`: reads telemetry from `source` until the stream ends (the TCP peer closes, the serial port
/// hangs up) or the process is killed, and writes to `out` one [`frame_line`] per good frame, a
/// `bad frame skipped: <why>` line per bad one, and at the end `N frames, M bad frames skipped`. With
/// `jsonl`, the file is created (truncated) and gets one JSON line per frame, good or bad, each complete and
/// flushed before the frame is shown (so Ctrl-C loses nothing already seen).
///
/// A quiet serial port is waited on forever (an idle device sends nothing). A bad frame is never fatal. If
/// `out` is a closed pipe (`kiln monitor ... | head`), monitoring stops quietly.
///
/// Returns the good and bad frame counts.
///
/// # Errors
/// [`Error::Input`] (exit code 2) naming the address or path when the source cannot be connected to or
/// opened, the JSONL file cannot be created or written, or the stream fails other than by ending (the summary
/// line is written first). [`Error::Internal`] if `out` fails other than by a closed pipe.
pub fn monitor(source: &Source, jsonl: Option<&Path>, out: &mut dyn Write) -> Result<(u32, u32)> {
    // Connect before creating the log: a failed connection writes nothing.
    let (mut stream, serial): (Box<dyn Read>, bool) = match source {
        Source::Tcp(addr) => {
            let stream = TcpStream::connect(addr.as_str())
                .map_err(|e| input(format!("{addr}: cannot connect ({e})")))?;
            (Box::new(stream), false)
        }
        Source::Serial { path, baud } => {
            let name = path.to_str().ok_or_else(|| {
                input(format!(
                    "{}: not a valid serial port name (not UTF-8)",
                    path.display()
                ))
            })?;
            let port = serialport::new(name, *baud)
                .timeout(SERIAL_READ_TIMEOUT)
                .open()
                .map_err(|e| {
                    input(format!(
                        "{}: cannot open serial port at {baud} baud ({e})",
                        path.display()
                    ))
                })?;
            (Box::new(port), true)
        }
    };
    let log: Option<Box<dyn Write + Send>> = match jsonl {
        Some(p) => {
            Some(Box::new(File::create(p).map_err(|e| {
                input(format!("{}: cannot create ({e})", p.display()))
            })?))
        }
        None => None,
    };
    let log_error = |e: io::Error| {
        let path = jsonl.map_or_else(String::new, |p| p.display().to_string());
        input(format!("{path}: cannot write ({e})"))
    };

    let mut decoder = Decoder::new(log);
    let mut out_error: Option<io::Error> = None;
    let mut buf = [0u8; 4096];
    let ended = loop {
        match stream.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => decoder
                .feed(buf.get(..n).unwrap_or(&[]), |r| {
                    show(out, &mut out_error, r)
                })
                .map_err(log_error)?,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            // The device is quiet: keep waiting.
            Err(e) if serial && matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {
                continue
            }
            // A hang-up (the device reset or was unplugged, the pty closed) is how a serial stream ends.
            Err(e) if serial && e.kind() == ErrorKind::BrokenPipe => break Ok(()),
            Err(e) => break Err(e),
        }
        if out_error.is_some() {
            break Ok(());
        }
    };
    decoder
        .finish(|r| show(out, &mut out_error, r))
        .map_err(log_error)?;
    let counts = (decoder.frames_ok(), decoder.frames_bad());
    let summary = match out_error {
        Some(e) => Err(e),
        None => writeln!(out, "{} frames, {} bad frames skipped", counts.0, counts.1)
            .and_then(|()| out.flush()),
    };
    match summary {
        // Whoever read our output is gone (`| head`): stop quietly, as every kiln command does.
        Err(e) if e.kind() == ErrorKind::BrokenPipe => return Ok(counts),
        Err(e) => {
            return Err(Error::Internal(anyhow::anyhow!(
                "writing the monitor output: {e}"
            )))
        }
        Ok(()) => {}
    }
    ended.map_err(|e| {
        input(format!(
            "{source}: reading failed after {} frames ({e})",
            u64::from(counts.0) + u64::from(counts.1)
        ))
    })?;
    Ok(counts)
}

/// Writes the line for one frame to `out`, flushed (a live monitor must show each frame as it comes, whatever
/// buffers `out`). After a failed write it writes nothing more and keeps the error in `error`.
fn show(
    out: &mut dyn Write,
    error: &mut Option<io::Error>,
    result: &Result<Frame, TelemetryError>,
) {
    if error.is_some() {
        return;
    }
    let line = match result {
        Ok(frame) => frame_line(frame),
        Err(e) => format!("bad frame skipped: {e}"),
    };
    if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
        *error = Some(e);
    }
}
