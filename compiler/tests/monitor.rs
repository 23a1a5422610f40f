//! `kiln monitor`: frames shown as lines and logged as JSON, a stream with every kind of damage decoded to exactly
//! its good frames, over TCP (library and binary) and a serial port (a pty).
//!
//! The tests named `cli_*` run the `kiln` binary; the others call the library.

use std::io::{self, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output as ProcessOutput};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use heapless::Vec as HVec;
use kiln_compiler::monitor::{bad_frame_json, frame_json, frame_line, monitor, Decoder, Source};
use kiln_runtime::telemetry::{
    decode, encode, Frame, InferenceReport, Output, TelemetryError, MAX_FRAME_BYTES,
};
use serde_json::{json, Value};

fn enc(frame: &Frame) -> Vec<u8> {
    let mut buf = [0u8; MAX_FRAME_BYTES];
    encode(frame, &mut buf).expect("encode").to_vec()
}

fn hello() -> Frame {
    Frame::Hello {
        device_id: 0x0123_4567_89ab_cdef,
        firmware_id: 0x1234_abcd,
        model_id: 0xdead_beef,
        format_version: 1,
        arena_bytes: 7840,
    }
}

fn inference_full() -> Frame {
    Frame::Inference(InferenceReport {
        sequence: 3,
        cycles: 1_234_567,
        op_cycles: HVec::from_slice(&[1000, 0, 233_567]).expect("op cycles"),
        arena_bytes: 7840,
        stack_high_water: 1024,
        output: Output::Full(HVec::from_slice(&[-128, 5, 127, 0, 127, -1]).expect("output")),
    })
}

fn inference_top_k() -> Frame {
    Frame::Inference(InferenceReport {
        sequence: 4,
        cycles: 999,
        op_cycles: HVec::new(),
        arena_bytes: 0,
        stack_high_water: 0,
        output: Output::TopK(HVec::from_slice(&[(7, 127), (65535, -128)]).expect("top k")),
    })
}

fn heartbeat() -> Frame {
    Frame::Heartbeat {
        uptime_ms: 12_345,
        inferences: 40,
        errors: 0,
    }
}

fn error() -> Frame {
    Frame::Error {
        code: 2,
        detail: 490,
    }
}

fn output_chunk() -> Frame {
    Frame::OutputChunk {
        sequence: 3,
        index: 0,
        offset: 0,
        data: HVec::from_slice(&[0, 1, 2, 253, 254, 255, 0, 0, 9, 10]).expect("data"),
    }
}

/// Deterministic non-zero noise.
fn noise(n: usize, seed: u32) -> Vec<u8> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            ((s >> 24) as u8).max(1)
        })
        .collect()
}

/// `frame` encoded with one byte of its payload or CRC changed: the COBS code bytes are left alone, so the frame
/// still un-stuffs and only the CRC-32 can tell.
fn damaged(frame: &Frame) -> Vec<u8> {
    let mut bytes = enc(frame);
    let end = bytes.len() - 1; // the terminating 0x00
    let mut codes = Vec::new();
    let mut at = 0;
    while at < end {
        codes.push(at);
        at += usize::from(bytes[at]);
    }
    let i = (end / 2..end)
        .find(|i| !codes.contains(i))
        .expect("a data byte");
    bytes[i] = bytes[i].wrapping_add(1).max(1);
    bytes
}

/// A device's byte stream with every kind of damage between its frames, and what a decoder must report for it,
/// in order.
struct Stream {
    bytes: Vec<u8>,
    expected: Vec<Result<Frame, TelemetryError>>,
}

impl Stream {
    fn good(&self) -> Vec<Frame> {
        self.expected
            .iter()
            .filter_map(|r| r.clone().ok())
            .collect()
    }

    fn bad(&self) -> usize {
        self.expected.iter().filter(|r| r.is_err()).count()
    }
}

/// `truncated_end`: the stream stops in the middle of a last frame (no terminating 0x00).
fn mixed_stream(truncated_end: bool) -> Stream {
    let mut bytes = Vec::new();
    let mut expected = Vec::new();
    fn bad(bytes: &mut Vec<u8>, expected: &mut Vec<Result<Frame, TelemetryError>>, piece: &[u8]) {
        let e = decode(&mut piece.to_vec()).expect_err("a corrupted piece must not decode");
        bytes.extend_from_slice(piece);
        expected.push(Err(e));
    }
    fn good(bytes: &mut Vec<u8>, expected: &mut Vec<Result<Frame, TelemetryError>>, frame: Frame) {
        bytes.extend(enc(&frame));
        expected.push(Ok(frame));
    }

    // Joined mid-frame: the tail of a heartbeat before the first whole frame.
    let tail = enc(&heartbeat())[5..].to_vec();
    bad(&mut bytes, &mut expected, &tail);
    // The idle/resynchronisation byte a device sends at boot: not a frame at all.
    bytes.push(0);
    good(&mut bytes, &mut expected, hello());
    // Line noise, ended by a 0x00.
    let mut garbage = noise(37, 1);
    garbage.push(0);
    bad(&mut bytes, &mut expected, &garbage);
    good(&mut bytes, &mut expected, inference_full());
    // A frame cut short by a device reset, whose boot 0x00 ends it.
    let whole = enc(&inference_full());
    let mut truncated = whole[..whole.len() / 2].to_vec();
    truncated.push(0);
    bad(&mut bytes, &mut expected, &truncated);
    good(&mut bytes, &mut expected, heartbeat());
    // One byte changed on the way.
    let flipped = damaged(&inference_top_k());
    assert!(
        matches!(
            decode(&mut flipped.clone()),
            Err(TelemetryError::BadChecksum { .. })
        ),
        "the damaged frame must fail its checksum"
    );
    bad(&mut bytes, &mut expected, &flipped);
    good(&mut bytes, &mut expected, error());
    // More than any frame can hold without a 0x00.
    bytes.extend(noise(MAX_FRAME_BYTES + 100, 2));
    bytes.push(0);
    expected.push(Err(TelemetryError::Overlong {
        limit: MAX_FRAME_BYTES as u32,
    }));
    good(&mut bytes, &mut expected, output_chunk());
    good(&mut bytes, &mut expected, inference_top_k());
    // Idle bytes between frames.
    bytes.extend([0, 0, 0]);
    good(&mut bytes, &mut expected, hello());
    if truncated_end {
        let whole = enc(&heartbeat());
        let cut = &whole[..whole.len() - 4];
        let mut terminated = cut.to_vec();
        terminated.push(0);
        let e = decode(&mut terminated).expect_err("a cut frame must not decode");
        bytes.extend_from_slice(cut);
        expected.push(Err(e));
    }
    Stream { bytes, expected }
}

fn expected_jsonl(stream: &Stream) -> Vec<Value> {
    stream
        .expected
        .iter()
        .map(|r| match r {
            Ok(frame) => frame_json(frame),
            Err(e) => bad_frame_json(e),
        })
        .collect()
}

fn parse_jsonl(text: &str) -> Vec<Value> {
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "the JSONL log must end with a complete line: {text:?}"
    );
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// An in-memory JSONL sink that records every `write` and `flush` call.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Event>>>);

#[derive(Clone, Debug, PartialEq)]
enum Event {
    Write(Vec<u8>),
    Flush,
}

impl Write for Recorder {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().push(Event::Write(buf.to_vec()));
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.lock().unwrap().push(Event::Flush);
        Ok(())
    }
}

impl Recorder {
    fn text(&self) -> String {
        let events = self.0.lock().unwrap();
        let mut bytes = Vec::new();
        for e in events.iter() {
            if let Event::Write(b) = e {
                bytes.extend_from_slice(b);
            }
        }
        String::from_utf8(bytes).expect("UTF-8 JSONL")
    }
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    k.sort_unstable();
    k
}

#[test]
fn frame_json_of_every_variant() {
    let v = frame_json(&hello());
    assert_eq!(
        keys(&v),
        [
            "arena_bytes",
            "device_id",
            "firmware_id",
            "format_version",
            "model_id",
            "type"
        ]
    );
    assert_eq!(v["type"], "hello");
    assert_eq!(v["device_id"], "0x0123456789abcdef");
    assert_eq!(v["firmware_id"], "0x1234abcd");
    assert_eq!(v["model_id"], "0xdeadbeef");
    assert_eq!(v["format_version"], 1);
    assert_eq!(v["arena_bytes"], 7840);

    // Leading zeros kept: ids are fixed-width strings, never numbers.
    let small = frame_json(&Frame::Hello {
        device_id: 1,
        firmware_id: 2,
        model_id: 0,
        format_version: 1,
        arena_bytes: 0,
    });
    assert_eq!(small["device_id"], "0x0000000000000001");
    assert_eq!(small["firmware_id"], "0x00000002");
    assert_eq!(small["model_id"], "0x00000000");
    let big = frame_json(&Frame::Hello {
        device_id: u64::MAX,
        firmware_id: u32::MAX,
        model_id: u32::MAX,
        format_version: u16::MAX,
        arena_bytes: u32::MAX,
    });
    assert_eq!(big["device_id"], "0xffffffffffffffff");
    assert_eq!(big["firmware_id"], "0xffffffff");
    assert_eq!(big["arena_bytes"], u64::from(u32::MAX));

    let v = frame_json(&inference_full());
    assert_eq!(
        keys(&v),
        [
            "arena_bytes",
            "cycles",
            "op_cycles",
            "output",
            "sequence",
            "stack_high_water",
            "type"
        ]
    );
    assert_eq!(v["type"], "inference");
    assert_eq!(v["sequence"], 3);
    assert_eq!(v["cycles"], 1_234_567);
    assert_eq!(v["op_cycles"], json!([1000, 0, 233_567]));
    assert_eq!(v["arena_bytes"], 7840);
    assert_eq!(v["stack_high_water"], 1024);
    assert_eq!(v["output"], json!({ "full": [-128, 5, 127, 0, 127, -1] }));

    let v = frame_json(&inference_top_k());
    assert_eq!(v["type"], "inference");
    assert_eq!(v["op_cycles"], json!([]));
    assert_eq!(v["output"], json!({ "top_k": [[7, 127], [65535, -128]] }));

    let cycles = frame_json(&Frame::Inference(InferenceReport {
        sequence: u32::MAX,
        cycles: u64::MAX,
        op_cycles: HVec::new(),
        arena_bytes: 0,
        stack_high_water: 0,
        output: Output::Full(HVec::new()),
    }));
    assert_eq!(cycles["cycles"].as_u64(), Some(u64::MAX));
    assert_eq!(cycles["sequence"], u64::from(u32::MAX));
    assert_eq!(cycles["output"], json!({ "full": [] }));

    let v = frame_json(&heartbeat());
    assert_eq!(keys(&v), ["errors", "inferences", "type", "uptime_ms"]);
    assert_eq!(
        v,
        json!({ "type": "heartbeat", "uptime_ms": 12_345, "inferences": 40, "errors": 0 })
    );

    let v = frame_json(&error());
    assert_eq!(v, json!({ "type": "error", "code": 2, "detail": 490 }));

    let v = frame_json(&output_chunk());
    assert_eq!(keys(&v), ["data", "index", "offset", "sequence", "type"]);
    assert_eq!(
        v,
        json!({
            "type": "output_chunk",
            "sequence": 3,
            "index": 0,
            "offset": 0,
            "data": [0, 1, 2, 253, 254, 255, 0, 0, 9, 10],
        })
    );
}

#[test]
fn bad_frame_json_carries_the_reason() {
    let e = TelemetryError::BadChecksum {
        stored: 0x1234_5678,
        computed: 0x9abc_def0,
    };
    assert_eq!(
        bad_frame_json(&e),
        json!({
            "type": "bad_frame",
            "error": "telemetry frame damaged (CRC-32 0x12345678, computed 0x9abcdef0)",
        })
    );
    assert_eq!(
        bad_frame_json(&TelemetryError::Overlong { limit: 615 }),
        json!({ "type": "bad_frame", "error": "telemetry frame longer than 615 bytes dropped" })
    );
}

#[test]
fn frame_lines_read_as_documented() {
    assert_eq!(
        frame_line(&hello()),
        "hello: device 0x0123456789abcdef, firmware 0x1234abcd, model 0xdeadbeef, format v1, arena 7,840 B"
    );
    // Full output: the argmax, the first of equal maxima.
    assert_eq!(
        frame_line(&inference_full()),
        "inference #3: 1,234,567 cycles, arena 7,840 B, stack 1,024 B, top class 2 (score 127)"
    );
    // Top-k: the first listed; a stack of 0 is "not measured" in the protocol.
    assert_eq!(
        frame_line(&inference_top_k()),
        "inference #4: 999 cycles, arena 0 B, stack not measured, top class 7 (score 127)"
    );
    let negative = Frame::Inference(InferenceReport {
        sequence: 0,
        cycles: u64::MAX,
        op_cycles: HVec::new(),
        arena_bytes: 1_000,
        stack_high_water: 1,
        output: Output::Full(HVec::from_slice(&[-128, -7, -7, -100]).expect("output")),
    });
    assert_eq!(
        frame_line(&negative),
        "inference #0: 18,446,744,073,709,551,615 cycles, arena 1,000 B, stack 1 B, top class 1 (score -7)"
    );
    let empty = Frame::Inference(InferenceReport {
        sequence: 1,
        cycles: 0,
        op_cycles: HVec::new(),
        arena_bytes: 100_000,
        stack_high_water: 0,
        output: Output::TopK(HVec::new()),
    });
    assert_eq!(
        frame_line(&empty),
        "inference #1: 0 cycles, arena 100,000 B, stack not measured, no output"
    );
    assert_eq!(
        frame_line(&heartbeat()),
        "heartbeat: up 12.3 s, 40 inferences, 0 errors"
    );
    assert_eq!(
        frame_line(&Frame::Heartbeat {
            uptime_ms: 3_600_999,
            inferences: 1_000_000,
            errors: 12_345,
        }),
        "heartbeat: up 3,600.9 s, 1,000,000 inferences, 12,345 errors"
    );
    assert_eq!(
        frame_line(&Frame::Heartbeat {
            uptime_ms: 99,
            inferences: 0,
            errors: 0,
        }),
        "heartbeat: up 0.0 s, 0 inferences, 0 errors"
    );
    assert_eq!(frame_line(&error()), "error: code 2 detail 490");
    assert_eq!(
        frame_line(&output_chunk()),
        "output chunk #3: output 0 bytes 0..10"
    );
    // The end of the range does not wrap at u32::MAX.
    assert_eq!(
        frame_line(&Frame::OutputChunk {
            sequence: 1,
            index: 2,
            offset: u32::MAX,
            data: HVec::from_slice(&[1, 2]).expect("data"),
        }),
        "output chunk #1: output 2 bytes 4294967295..4294967297"
    );
}

#[test]
fn decoder_yields_exactly_the_good_frames_of_a_damaged_stream() {
    let stream = mixed_stream(false);
    assert_eq!(stream.good().len(), 7);
    assert_eq!(stream.bad(), 5);
    let jsonl = Recorder::default();
    let mut decoder = Decoder::new(Some(Box::new(jsonl.clone())));
    let mut seen = Vec::new();
    decoder
        .feed(&stream.bytes, |r| seen.push(r.clone()))
        .expect("feed");
    assert_eq!(seen, stream.expected);
    assert_eq!(decoder.frames_ok(), 7);
    assert_eq!(decoder.frames_bad(), 5);

    let lines = parse_jsonl(&jsonl.text());
    assert_eq!(lines, expected_jsonl(&stream));
    let types: Vec<&str> = lines
        .iter()
        .map(|l| l["type"].as_str().expect("type"))
        .collect();
    assert_eq!(
        types,
        [
            "bad_frame",
            "hello",
            "bad_frame",
            "inference",
            "bad_frame",
            "heartbeat",
            "bad_frame",
            "error",
            "bad_frame",
            "output_chunk",
            "inference",
            "hello"
        ]
    );
    assert!(lines[6]["error"]
        .as_str()
        .expect("error")
        .starts_with("telemetry frame damaged (CRC-32"));
    assert_eq!(
        lines[8]["error"],
        format!("telemetry frame longer than {MAX_FRAME_BYTES} bytes dropped")
    );
    assert_eq!(lines[1]["device_id"], "0x0123456789abcdef");

    // Each line is one write of the whole line, then a flush: a log cut anywhere holds only complete lines.
    let events = jsonl.0.lock().unwrap().clone();
    assert_eq!(events.len(), 2 * lines.len());
    for pair in events.chunks(2) {
        match pair {
            [Event::Write(line), Event::Flush] => {
                assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
                assert_eq!(line.last(), Some(&b'\n'));
            }
            other => panic!("expected one write then a flush per line, got {other:?}"),
        }
    }
}

#[test]
fn decoder_results_do_not_depend_on_how_the_stream_is_split() {
    let stream = mixed_stream(false);
    for chunk in [1, 2, 3, 7, 64, 255, 1000] {
        let mut decoder = Decoder::new(None);
        let mut seen = Vec::new();
        for piece in stream.bytes.chunks(chunk) {
            decoder.feed(piece, |r| seen.push(r.clone())).expect("feed");
        }
        assert_eq!(seen, stream.expected, "fed in pieces of {chunk}");
        assert_eq!(
            (decoder.frames_ok(), decoder.frames_bad()),
            (7, 5),
            "fed in pieces of {chunk}"
        );
    }
}

#[test]
fn finish_reports_a_frame_cut_off_by_the_end_of_the_stream() {
    let stream = mixed_stream(true);
    let jsonl = Recorder::default();
    let mut decoder = Decoder::new(Some(Box::new(jsonl.clone())));
    let mut seen = Vec::new();
    decoder
        .feed(&stream.bytes, |r| seen.push(r.clone()))
        .expect("feed");
    // Until the stream ends, the cut frame may still be completed.
    assert_eq!((decoder.frames_ok(), decoder.frames_bad()), (7, 5));
    decoder.finish(|r| seen.push(r.clone())).expect("finish");
    assert_eq!(seen, stream.expected);
    assert_eq!((decoder.frames_ok(), decoder.frames_bad()), (7, 6));
    assert_eq!(parse_jsonl(&jsonl.text()), expected_jsonl(&stream));
    // Once at a frame boundary, finishing reports nothing more.
    decoder
        .finish(|r| panic!("nothing pending, got {r:?}"))
        .expect("finish");
    assert_eq!((decoder.frames_ok(), decoder.frames_bad()), (7, 6));

    // A stream that ends on a frame boundary (or on idle bytes) has nothing to finish.
    let mut decoder = Decoder::new(None);
    decoder.feed(&enc(&hello()), |_| {}).expect("feed");
    decoder.feed(&[0, 0], |_| {}).expect("feed");
    decoder
        .finish(|r| panic!("nothing pending, got {r:?}"))
        .expect("finish");
    assert_eq!((decoder.frames_ok(), decoder.frames_bad()), (1, 0));
}

#[test]
fn a_failing_jsonl_writer_is_reported() {
    struct Full;
    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut decoder = Decoder::new(Some(Box::new(Full)));
    let mut shown = 0;
    let e = decoder
        .feed(&enc(&hello()), |_| shown += 1)
        .expect_err("the write error");
    assert_eq!(e.kind(), io::ErrorKind::StorageFull);
    // The frame was not shown as if it had been logged.
    assert_eq!(shown, 0);
}

/// Serves `bytes` to the first client of an ephemeral port on 127.0.0.1 in small writes with short pauses
/// (so the reader sees partial frames), then closes. Gives up accepting after 20 s, so a client that never
/// comes (a `kiln` that failed early) cannot hang the test.
fn serve(bytes: Vec<u8>) -> (String, thread::JoinHandle<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    listener.set_nonblocking(true).expect("non-blocking");
    let server = thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut conn = loop {
            match listener.accept() {
                Ok((conn, _)) => break conn,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return false,
            }
        };
        conn.set_nonblocking(false).expect("blocking");
        let sizes = [1, 5, 17, 2, 64, 3, 250, 9];
        let mut at = 0;
        for (i, size) in sizes.iter().cycle().enumerate() {
            if at >= bytes.len() {
                break;
            }
            let end = (at + size).min(bytes.len());
            conn.write_all(&bytes[at..end]).expect("send");
            conn.flush().expect("flush");
            at = end;
            if i % 4 == 0 {
                thread::sleep(Duration::from_millis(2));
            }
        }
        true
    });
    (addr, server)
}

#[test]
fn monitor_over_tcp_shows_every_frame_and_logs_jsonl() {
    let stream = mixed_stream(true);
    let (addr, server) = serve(stream.bytes.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("frames.jsonl");
    let mut out = Vec::new();
    let counts = monitor(&Source::Tcp(addr), Some(&log), &mut out).expect("monitor");
    assert!(server.join().expect("server"), "the monitor connected");
    assert_eq!(counts, (7, 6));

    let text = String::from_utf8(out).expect("UTF-8 output");
    let lines: Vec<&str> = text.lines().collect();
    let mut want: Vec<String> = stream
        .expected
        .iter()
        .map(|r| match r {
            Ok(frame) => frame_line(frame),
            Err(e) => format!("bad frame skipped: {e}"),
        })
        .collect();
    want.push("7 frames, 6 bad frames skipped".to_string());
    assert_eq!(lines, want);
    assert_eq!(
        lines[1],
        "hello: device 0x0123456789abcdef, firmware 0x1234abcd, model 0xdeadbeef, format v1, arena 7,840 B"
    );

    let logged = parse_jsonl(&std::fs::read_to_string(&log).expect("read log"));
    assert_eq!(logged, expected_jsonl(&stream));
}

#[test]
fn monitor_refuses_an_unreachable_source_and_writes_nothing() {
    // A port nobody listens on: bind one, note it, close it.
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").to_string()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("frames.jsonl");
    let mut out = Vec::new();
    let e = monitor(&Source::Tcp(addr.clone()), Some(&log), &mut out).expect_err("no server");
    assert_eq!(e.exit_code(), 2, "{e}");
    assert!(e.to_string().contains(&addr), "{e}");
    assert!(out.is_empty());
    assert!(!log.exists(), "no log is created for a failed connection");

    let port = dir.path().join("no-such-tty");
    let e = monitor(
        &Source::Serial {
            path: port.clone(),
            baud: 115_200,
        },
        Some(&log),
        &mut out,
    )
    .expect_err("no port");
    assert_eq!(e.exit_code(), 2, "{e}");
    assert!(e.to_string().contains(&port.display().to_string()), "{e}");
    assert!(!log.exists());
}

/// A serial port: a pty whose master side plays the device. The stream ends when the device hangs up.
#[cfg(unix)]
#[test]
fn monitor_over_a_serial_port_waits_through_silence_and_ends_at_hang_up() {
    use serialport::{SerialPort, TTYPort};

    let stream = mixed_stream(false);
    let (mut device, port) = TTYPort::pair().expect("a pty pair");
    let path = port.name().expect("pty name");
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("frames.jsonl");
    let monitor_log = log.clone();
    let monitored = thread::spawn(move || {
        let mut out = Vec::new();
        let source = Source::Serial {
            path: path.into(),
            baud: 115_200,
        };
        let counts = monitor(&source, Some(&monitor_log), &mut out);
        (counts.map_err(|e| e.to_string()), out)
    });
    let logged_lines = || {
        std::fs::read_to_string(&log)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let wait_for = |lines: usize| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while logged_lines() < lines {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {lines} JSONL lines, have {}",
                logged_lines()
            );
            thread::sleep(Duration::from_millis(10));
        }
    };

    // Half the stream, then longer than the serial read timeout (1 s) of silence, then the rest.
    let half = stream.bytes.len() / 2;
    let mut first = 0;
    Decoder::new(None)
        .feed(&stream.bytes[..half], |_| first += 1)
        .expect("feed");
    for piece in stream.bytes[..half].chunks(50) {
        device.write_all(piece).expect("send");
    }
    wait_for(first);
    thread::sleep(Duration::from_millis(1500));
    for piece in stream.bytes[half..].chunks(50) {
        device.write_all(piece).expect("send");
    }
    // Everything read before hanging up: a hang-up drops whatever the port has not delivered yet.
    wait_for(stream.expected.len());
    drop(device);
    drop(port);

    let (counts, out) = monitored.join().expect("monitor thread");
    assert_eq!(counts, Ok((7, 5)));
    let text = String::from_utf8(out).expect("UTF-8 output");
    assert!(text.ends_with("7 frames, 5 bad frames skipped\n"), "{text}");
    let logged = parse_jsonl(&std::fs::read_to_string(&log).expect("read log"));
    assert_eq!(logged, expected_jsonl(&stream));
}

fn kiln(args: &[&str]) -> ProcessOutput {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .expect("run kiln")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn cli_monitor_over_tcp_counts_frames_and_writes_jsonl() {
    let stream = mixed_stream(true);
    let (addr, server) = serve(stream.bytes.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("frames.jsonl");
    let o = kiln(&["monitor", "--tcp", &addr, "--jsonl", s(&log)]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(server.join().expect("server"), "kiln connected");
    assert!(
        stdout.contains("7 frames, 6 bad frames skipped"),
        "stdout: {stdout}"
    );
    assert!(
        stdout.contains(
            "inference #3: 1,234,567 cycles, arena 7,840 B, stack 1,024 B, top class 2 (score 127)"
        ),
        "stdout: {stdout}"
    );
    assert_eq!(
        stdout.matches("bad frame skipped: ").count(),
        6,
        "stdout: {stdout}"
    );
    let logged = parse_jsonl(&std::fs::read_to_string(&log).expect("read log"));
    assert_eq!(logged, expected_jsonl(&stream));
}

#[test]
fn cli_monitor_without_a_server_exits_2_naming_the_address() {
    let o = kiln(&["monitor", "--tcp", "127.0.0.1:1"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("127.0.0.1:1"), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
}
