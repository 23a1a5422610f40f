//! The telemetry wire protocol: golden bytes, round trips, stream resynchronisation, robustness.

use heapless::Vec;
use kiln_runtime::telemetry::{
    decode, decode_command, encode, encode_command, Command, Deframer, Frame, FrameReader,
    InferenceReport, Output, TelemetryError, MAX_FRAME_BYTES, MAX_OPS_REPORTED, MAX_OUTPUT,
    MAX_TOP_K, TELEMETRY_VERSION,
};
use proptest::prelude::*;

fn enc(frame: &Frame) -> std::vec::Vec<u8> {
    let mut buf = [0u8; MAX_FRAME_BYTES];
    encode(frame, &mut buf).expect("encode").to_vec()
}

fn dec(bytes: &[u8]) -> Result<Frame, TelemetryError> {
    decode(&mut bytes.to_vec())
}

fn heartbeat() -> Frame {
    Frame::Heartbeat {
        uptime_ms: 1000,
        inferences: 3,
        errors: 0,
    }
}

fn every_variant() -> [Frame; 6] {
    [
        Frame::Hello {
            device_id: 0x0123_4567_89ab_cdef,
            firmware_id: 7,
            model_id: 0xdead_beef,
            format_version: 1,
            arena_bytes: 12_345,
        },
        Frame::Inference(InferenceReport {
            sequence: 42,
            cycles: 1_234_567,
            op_cycles: Vec::from_slice(&[10, 0, 300_000]).unwrap(),
            arena_bytes: 4096,
            stack_high_water: 812,
            output: Output::Full(Vec::from_slice(&[0, -128, 127, 5]).unwrap()),
        }),
        Frame::Inference(InferenceReport {
            sequence: 0,
            cycles: 0,
            op_cycles: Vec::new(),
            arena_bytes: 0,
            stack_high_water: 0,
            output: Output::TopK(Vec::from_slice(&[(3, 120), (0, -5), (65535, 0)]).unwrap()),
        }),
        heartbeat(),
        Frame::Error {
            code: 300,
            detail: 0,
        },
        Frame::OutputChunk {
            sequence: 9,
            index: 1,
            offset: 256,
            data: Vec::from_slice(&[0, 1, 0xff, 0x80]).unwrap(),
        },
    ]
}

/// Golden bytes, derived by hand from the postcard wire format (varints are LEB128, 7 bits a byte, low first;
/// enum variants are a varint index) and COBS.
#[test]
fn golden_heartbeat() {
    // postcard payload of (TELEMETRY_VERSION, Heartbeat { uptime_ms: 1000, inferences: 3, errors: 0 }):
    //   0x01       version 1 (u16 varint)
    //   0x02       Frame variant index 2 = Heartbeat (Hello 0, Inference 1, Heartbeat 2, Error 3)
    //   0xE8 0x07  uptime_ms 1000 = 0b111_1101000: low 7 bits 0x68 | continuation 0x80 = 0xE8, then 1000 >> 7 = 7
    //   0x03       inferences 3
    //   0x00       errors 0
    // CRC-32 of those 6 bytes: 0x3DF70DF7 (Python's zlib.crc32 agrees), little-endian F7 0D F7 3D.
    // COBS: the 5 bytes before the zero become code 0x06 + those bytes; the 4 CRC bytes after it (no zero)
    // code 0x05 + those bytes; then the 0x00 terminator.
    let expected = [
        0x06, 0x01, 0x02, 0xE8, 0x07, 0x03, 0x05, 0xF7, 0x0D, 0xF7, 0x3D, 0x00,
    ];
    assert_eq!(enc(&heartbeat()), expected);
    assert_eq!(dec(&expected), Ok(heartbeat()));
}

#[test]
fn golden_error() {
    // payload: 0x01 version 1; 0x03 variant Error; 0xAC 0x02 code 300 = 0b10_0101100 (0x2C | 0x80, then 2);
    // 0x00 detail 0. CRC-32 of those 5 bytes: 0x0BA3B7C5, little-endian C5 B7 A3 0B. COBS: code 0x05 + 4
    // bytes (the zero), code 0x05 + the CRC, terminator 0x00.
    let expected = [
        0x05, 0x01, 0x03, 0xAC, 0x02, 0x05, 0xC5, 0xB7, 0xA3, 0x0B, 0x00,
    ];
    assert_eq!(
        enc(&Frame::Error {
            code: 300,
            detail: 0
        }),
        expected
    );
}

#[test]
fn round_trip_every_variant() {
    for frame in every_variant() {
        let bytes = enc(&frame);
        assert_eq!(bytes.last(), Some(&0));
        assert!(
            !bytes[..bytes.len() - 1].contains(&0),
            "COBS leaves no 0x00 inside"
        );
        assert_eq!(dec(&bytes), Ok(frame.clone()), "with terminator");
        assert_eq!(
            dec(&bytes[..bytes.len() - 1]),
            Ok(frame),
            "without terminator"
        );
    }
}

fn largest_frame() -> Frame {
    let mut op_cycles = Vec::new();
    op_cycles.resize(MAX_OPS_REPORTED, u32::MAX).unwrap();
    let mut output = Vec::new();
    output.resize(MAX_OUTPUT, -1i8).unwrap();
    Frame::Inference(InferenceReport {
        sequence: u32::MAX,
        cycles: u64::MAX,
        op_cycles,
        arena_bytes: u32::MAX,
        stack_high_water: u32::MAX,
        output: Output::Full(output),
    })
}

#[test]
fn largest_frame_is_max_frame_bytes() {
    assert_eq!(MAX_FRAME_BYTES, 615);
    let frame = largest_frame();
    let bytes = enc(&frame);
    assert_eq!(bytes.len(), MAX_FRAME_BYTES);
    assert_eq!(dec(&bytes), Ok(frame.clone()));
    // Also through a reader of exactly that size.
    let mut reader = FrameReader::<MAX_FRAME_BYTES>::new();
    let results: std::vec::Vec<_> = bytes.iter().filter_map(|&b| reader.push(b)).collect();
    assert_eq!(results, [Ok(frame)]);
}

#[test]
fn buffer_too_small_reports_exact_need() {
    let frame = heartbeat();
    for have in [0usize, 1, 2, 7, 11] {
        let mut buf = vec![0u8; have];
        assert_eq!(
            encode(&frame, &mut buf),
            Err(TelemetryError::BufferTooSmall {
                need: 12,
                have: have as u32
            })
        );
    }
    let mut exact = [0u8; 12];
    assert_eq!(encode(&frame, &mut exact).map(|b| b.len()), Ok(12));
}

#[test]
fn other_version_refused_with_both_numbers() {
    // The golden heartbeat with version 2: payload 02 02 E8 07 03 00.
    assert_eq!(
        dec(&wire(&[0x02, 0x02, 0xE8, 0x07, 0x03, 0x00])),
        Err(TelemetryError::WrongVersion {
            found: 2,
            supported: TELEMETRY_VERSION
        })
    );
    // Version 0x1234 (varint B4 24) followed by a variant this version does not know (0x7F): the version is
    // checked first, so this is WrongVersion, not Malformed.
    assert_eq!(
        dec(&wire(&[0xB4, 0x24, 0x7F])),
        Err(TelemetryError::WrongVersion {
            found: 0x1234,
            supported: TELEMETRY_VERSION
        })
    );
    // Through postcard itself, for a whole frame of a future version.
    let mut buf = [0u8; MAX_FRAME_BYTES];
    let payload = postcard::to_slice(&(7u16, &every_variant()[0]), &mut buf).unwrap();
    assert_eq!(
        dec(&wire(payload)),
        Err(TelemetryError::WrongVersion {
            found: 7,
            supported: 1
        })
    );
}

#[test]
fn malformed_frames() {
    let cases: &[&[u8]] = &[
        &[],                             // empty
        &[0x00],                         // only a terminator
        &[0x05, 0x01, 0x03, 0xAC, 0x00], // COBS code runs past the end (truncated)
        &[0x03, 0x01, 0x00, 0x02, 0x00], // a 0x00 inside
        &[0x04, 0x01, 0x02, 0x03, 0x00], // 3 bytes: too short for a CRC
    ];
    for case in cases {
        assert_eq!(dec(case), Err(TelemetryError::Malformed), "{case:02x?}");
    }
    // Intact (checksummed) payloads that are not a frame.
    let payloads: &[&[u8]] = &[
        &[0x01, 0x09],                               // unknown variant 9
        &[0x01],                                     // version only, no frame
        &[0x01, 0x02, 0xE8, 0x07, 0x03, 0x00, 0x07], // golden heartbeat + a trailing byte 0x07
        &[0xFF, 0xFF, 0xFF],                         // version varint overflows u16
        &[],                                         // nothing but a CRC
    ];
    for payload in payloads {
        assert_eq!(
            dec(&wire(payload)),
            Err(TelemetryError::Malformed),
            "{payload:02x?}"
        );
    }
    // A list over its cap: Output::TopK with 6 entries.
    // payload: 01 version, 01 Inference, 00 sequence, 00 cycles, 00 op_cycles (empty), 00 arena, 00 stack,
    // 01 TopK, 06 length, then 6 x (01 class, 01 score).
    let mut payload = vec![0x01, 0x01, 0, 0, 0, 0, 0, 0x01, 0x06];
    payload.extend([0x01u8; 12]);
    assert_eq!(dec(&wire(&payload)), Err(TelemetryError::Malformed));
    // ... while 5 entries decode.
    let mut ok = payload.clone();
    ok[8] = 0x05;
    ok.truncate(ok.len() - 2);
    assert!(
        matches!(dec(&wire(&ok)), Ok(Frame::Inference(r)) if matches!(&r.output, Output::TopK(k) if k.len() == MAX_TOP_K))
    );
}

/// A wire frame made by hand: `payload`, its CRC-32 (computed by an independent bitwise implementation), COBS
/// stuffing (payloads here are shorter than 250 bytes) and the terminator.
fn wire(payload: &[u8]) -> std::vec::Vec<u8> {
    assert!(payload.len() < 250);
    let mut crc = !0u32;
    for &b in payload {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    let mut data = payload.to_vec();
    data.extend((!crc).to_le_bytes());
    let mut out = std::vec::Vec::new();
    for run in data.split(|&b| b == 0) {
        out.push(run.len() as u8 + 1);
        out.extend_from_slice(run);
    }
    out.push(0);
    out
}

#[test]
fn stream_with_garbage_truncation_and_corruption() {
    let frames = every_variant();
    let good: std::vec::Vec<std::vec::Vec<u8>> = frames.iter().map(enc).collect();
    let mut stream = std::vec::Vec::new();
    let mut expected_bad = 0;

    // Garbage before the first frame, ending at a 0x00 (e.g. line noise, then the sender's flush byte).
    stream.extend([0xFF, 0x13, 0x37, 0x42, 0x00]); // 0xFF claims 254 bytes: bad
    expected_bad += 1;
    stream.extend(&good[0]);
    // Garbage between frames, including an empty frame (0x00 0x00: ignored) and a lone byte.
    stream.extend([0x00, 0x99, 0x00, 0x00]); // [] ignored, [99] bad (code claims 152 bytes), [] ignored
    expected_bad += 1;
    stream.extend(&good[1]);
    // A truncated frame: the second half of frame 1 was lost, then its terminator arrived.
    let truncated = &good[1][..good[1].len() / 2];
    stream.extend(truncated);
    stream.push(0x00);
    expected_bad += 1;
    stream.extend(&good[2]);
    // A damaged frame: the Frame variant byte of the heartbeat (offset 2: code, version, variant) set to 9,
    // and a frame with a flipped bit inside a number (uptime 1000 -> 1001), which would still decode.
    let mut corrupted = good[3].clone();
    corrupted[2] = 0x09;
    stream.extend(&corrupted);
    expected_bad += 1;
    let mut flipped = good[3].clone();
    flipped[3] ^= 0x01;
    stream.extend(&flipped);
    expected_bad += 1;
    stream.extend(&good[3]);
    // A frame of another version.
    stream.extend(wire(&[0x02, 0x02, 0xE8, 0x07, 0x03, 0x00]));
    expected_bad += 1;
    // An overlong run of non-zero bytes, dropped and counted once.
    stream.extend(std::iter::repeat_n(0x11, 3 * MAX_FRAME_BYTES));
    stream.push(0x00);
    expected_bad += 1;
    stream.extend(&good[4]);
    stream.extend(&good[5]);
    // Garbage after the last frame, not terminated: nothing is returned for it (yet).
    stream.extend([0x22, 0x33, 0x44]);

    let mut reader = FrameReader::<MAX_FRAME_BYTES>::new();
    let mut ok = std::vec::Vec::new();
    let mut errors = std::vec::Vec::new();
    for &b in &stream {
        match reader.push(b) {
            Some(Ok(frame)) => ok.push(frame),
            Some(Err(e)) => errors.push(e),
            None => {}
        }
    }
    assert_eq!(ok, frames);
    assert_eq!(reader.frames_ok(), 6);
    assert_eq!(reader.frames_bad(), expected_bad);
    assert_eq!(errors.len() as u32, expected_bad);
    assert!(errors.contains(&TelemetryError::WrongVersion {
        found: 2,
        supported: 1
    }));
    assert_eq!(
        errors
            .iter()
            .filter(|e| matches!(e, TelemetryError::BadChecksum { .. }))
            .count(),
        2
    );
    assert!(errors.contains(&TelemetryError::Overlong {
        limit: MAX_FRAME_BYTES as u32
    }));
    // The trailing garbage becomes one bad frame once a terminator arrives.
    assert_eq!(reader.push(0x00), Some(Err(TelemetryError::Malformed)));
    assert_eq!(reader.frames_bad(), expected_bad + 1);
}

#[test]
fn small_reader_drops_long_frames_and_recovers() {
    let mut reader = FrameReader::<16>::new();
    let big = enc(&every_variant()[0]);
    assert!(big.len() > 17);
    let out: std::vec::Vec<_> = big
        .iter()
        .chain(enc(&heartbeat()).iter())
        .filter_map(|&b| reader.push(b))
        .collect();
    assert_eq!(
        out,
        [Err(TelemetryError::Overlong { limit: 16 }), Ok(heartbeat())]
    );
    assert_eq!((reader.frames_ok(), reader.frames_bad()), (1, 1));
}

#[test]
fn display() {
    assert_eq!(
        TelemetryError::WrongVersion {
            found: 2,
            supported: 1
        }
        .to_string(),
        "telemetry protocol version 2 is not supported (this side speaks version 1)"
    );
    assert_eq!(
        TelemetryError::BufferTooSmall { need: 8, have: 7 }.to_string(),
        "telemetry buffer too small: need 8 bytes, have 7"
    );
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    let output = prop_oneof![
        proptest::collection::vec(any::<i8>(), 0..=MAX_OUTPUT)
            .prop_map(|v| Output::Full(Vec::from_slice(&v).unwrap())),
        proptest::collection::vec(any::<(u16, i8)>(), 0..=MAX_TOP_K)
            .prop_map(|v| Output::TopK(Vec::from_slice(&v).unwrap())),
    ];
    let report = (
        any::<u32>(),
        any::<u64>(),
        proptest::collection::vec(any::<u32>(), 0..=MAX_OPS_REPORTED),
        any::<u32>(),
        any::<u32>(),
        output,
    )
        .prop_map(
            |(sequence, cycles, ops, arena_bytes, stack_high_water, output)| InferenceReport {
                sequence,
                cycles,
                op_cycles: Vec::from_slice(&ops).unwrap(),
                arena_bytes,
                stack_high_water,
                output,
            },
        );
    prop_oneof![
        (
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            any::<u16>(),
            any::<u32>()
        )
            .prop_map(
                |(device_id, firmware_id, model_id, format_version, arena_bytes)| Frame::Hello {
                    device_id,
                    firmware_id,
                    model_id,
                    format_version,
                    arena_bytes
                }
            ),
        report.prop_map(Frame::Inference),
        (any::<u64>(), any::<u32>(), any::<u32>()).prop_map(|(uptime_ms, inferences, errors)| {
            Frame::Heartbeat {
                uptime_ms,
                inferences,
                errors,
            }
        }),
        (any::<u16>(), any::<u32>()).prop_map(|(code, detail)| Frame::Error { code, detail }),
        (
            any::<u32>(),
            any::<u8>(),
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 0..=MAX_OUTPUT)
        )
            .prop_map(|(sequence, index, offset, data)| Frame::OutputChunk {
                sequence,
                index,
                offset,
                data: Vec::from_slice(&data).unwrap()
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_frames_round_trip(frame in arb_frame()) {
        let bytes = enc(&frame);
        prop_assert!(bytes.len() <= MAX_FRAME_BYTES);
        prop_assert_eq!(dec(&bytes), Ok(frame.clone()));
        // Exact buffer works, one byte less reports the exact need.
        let mut exact = vec![0u8; bytes.len()];
        prop_assert_eq!(encode(&frame, &mut exact).map(|b| b.to_vec()), Ok(bytes.clone()));
        let mut short = vec![0u8; bytes.len() - 1];
        prop_assert_eq!(
            encode(&frame, &mut short).map(|b| b.len()),
            Err(TelemetryError::BufferTooSmall { need: bytes.len() as u32, have: bytes.len() as u32 - 1 })
        );
        // Through a reader, after a flush byte.
        let mut reader = FrameReader::<MAX_FRAME_BYTES>::new();
        let out: std::vec::Vec<_> = std::iter::once(0).chain(bytes.iter().copied()).filter_map(|b| reader.push(b)).collect();
        prop_assert_eq!(out, vec![Ok(frame)]);
    }

    #[test]
    fn byte_soup_never_panics(soup in proptest::collection::vec(any::<u8>(), 0..2048), zeros in any::<bool>()) {
        // Half the cases are biased towards 0x00 so that many short frames are attempted.
        let soup: std::vec::Vec<u8> = if zeros { soup.iter().map(|&b| if b < 64 { 0 } else { b }).collect() } else { soup };
        let _ = dec(&soup);
        let mut big = FrameReader::<MAX_FRAME_BYTES>::new();
        let mut small = FrameReader::<4>::new();
        let mut zero = FrameReader::<0>::new();
        let (mut big_n, mut small_n) = (0u32, 0u32);
        for &b in &soup {
            big_n += u32::from(big.push(b).is_some());
            small_n += u32::from(small.push(b).is_some());
            let _ = zero.push(b);
        }
        prop_assert_eq!(big.frames_ok() + big.frames_bad(), big_n);
        prop_assert_eq!(small.frames_ok() + small.frames_bad(), small_n);
        prop_assert_eq!(zero.frames_ok(), 0);
        for chunk in soup.split(|&b| b == 0) {
            let _ = dec(chunk);
        }
    }

    #[test]
    fn corrupted_frames_never_panic(frame in arb_frame(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = enc(&frame);
        let i = at.index(bytes.len());
        bytes[i] = byte;
        let _ = dec(&bytes);
        let mut reader = FrameReader::<MAX_FRAME_BYTES>::new();
        for &b in &bytes {
            let _ = reader.push(b);
        }
    }
}

#[test]
fn golden_command_infer() {
    // payload: version 01, variant Infer 01, sequence 2 (02), per_op true (01), full_output false (00),
    // input len 3 (03) then 05 00 07.
    let payload = [0x01, 0x01, 0x02, 0x01, 0x00, 0x03, 0x05, 0x00, 0x07];
    let command = Command::Infer {
        sequence: 2,
        per_op: true,
        full_output: false,
        input: &[5, 0, 7],
    };
    let mut buf = [0u8; 64];
    let bytes = encode_command(&command, &mut buf).unwrap().to_vec();
    assert_eq!(bytes, wire(&payload));
    let mut copy = bytes.clone();
    assert_eq!(decode_command(&mut copy), Ok(command));
}

#[test]
fn commands_round_trip_through_a_deframer() {
    let input: std::vec::Vec<u8> = (0..3000u32).map(|i| (i * 7 % 256) as u8).collect();
    let commands = [
        Command::Hello,
        Command::Infer {
            sequence: u32::MAX,
            per_op: false,
            full_output: true,
            input: &input,
        },
        Command::Exit,
    ];
    let mut stream = vec![0u8, 0x55, 0x13, 0x00];
    for c in &commands {
        let mut buf = vec![0u8; input.len() + input.len() / 254 + 32];
        stream.extend_from_slice(encode_command(c, &mut buf).unwrap());
    }
    let mut deframer = Deframer::<4096>::new();
    let mut got = std::vec::Vec::new();
    for b in stream {
        if let Some(raw) = deframer.push(b) {
            got.push(raw.and_then(|r| decode_command(r).map(|c| format!("{c:?}"))));
        }
    }
    assert_eq!(got.len(), 4, "noise frame + 3 commands");
    assert_eq!(got[0], Err(TelemetryError::Malformed));
    for (g, c) in got[1..].iter().zip(&commands) {
        assert_eq!(g.as_ref().unwrap(), &format!("{c:?}"));
    }
    // A command longer than the deframer's buffer is dropped and reported, the next one decodes.
    let mut small = Deframer::<64>::new();
    let mut buf = vec![0u8; 4000];
    let big = encode_command(&commands[1], &mut buf).unwrap().to_vec();
    let mut results = std::vec::Vec::new();
    for b in big.iter().chain(&[0x02, 0x02, 0x00]) {
        if let Some(raw) = small.push(*b) {
            results.push(raw.map(|r| r.len()));
        }
    }
    assert_eq!(results[0], Err(TelemetryError::Overlong { limit: 64 }));
    assert_eq!(results[1], Ok(2));
}

#[test]
fn command_buffer_too_small_reports_exact_need() {
    let input = [0u8; 300];
    let c = Command::Infer {
        sequence: 1,
        per_op: false,
        full_output: false,
        input: &input,
    };
    let mut big = [0u8; 400];
    let need = encode_command(&c, &mut big).unwrap().len();
    let mut small = vec![0u8; need - 1];
    assert_eq!(
        encode_command(&c, &mut small).unwrap_err(),
        TelemetryError::BufferTooSmall {
            need: need as u32,
            have: need as u32 - 1
        }
    );
}
