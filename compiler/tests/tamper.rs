//! A bad or tampered model is refused, never a panic: every single-byte corruption is caught by the checksum, and
//! models whose checksum was forged after tampering either fail the load-time checks or run without panicking.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use kiln_compiler::compile::{compile, CalibMethod, Options};
use kiln_compiler::emit::Precision;
use kiln_compiler::runner::ModelBuf;
use kiln_runtime::{Error, Interpreter, Model};

fn model_bytes(precision: Precision) -> Vec<u8> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let opts = Options {
        precision,
        calib: Some(repo.join("data/mnist_calib.npy")),
        method: CalibMethod::MinMax,
        keep_f32: Default::default(),
    };
    compile(&repo.join("models/mnist_cnn.onnx"), &opts)
        .expect("compile")
        .bytes
}

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n.max(1)
    }
}

fn load(bytes: &[u8]) -> Result<(), Error> {
    let buf = ModelBuf::new(bytes);
    Model::from_bytes(buf.bytes()).map(|_| ())
}

#[test]
fn every_single_byte_corruption_is_refused() {
    for precision in [Precision::Int8, Precision::F32] {
        let good = model_bytes(precision);
        load(&good).expect("the untouched model loads");
        let mut rng = Rng(1);
        for at in 0..good.len() {
            let mut b = good.clone();
            b[at] ^= 1 + rng.below(255) as u8;
            let err = load(&b).expect_err(&format!(
                "byte {at} of {} changed but the model loaded",
                good.len()
            ));
            // Past the header's checked fields, only the checksum can notice.
            if at >= 16 {
                assert!(
                    matches!(err, Error::ChecksumMismatch { .. }),
                    "byte {at}: {err:?}"
                );
            }
        }
    }
}

#[test]
fn truncation_and_appending_are_refused() {
    let good = model_bytes(Precision::Int8);
    for n in (0..good.len()).step_by(7) {
        assert!(
            load(&good[..n]).is_err(),
            "truncated to {n} bytes but loaded"
        );
    }
    for extra in 1..64 {
        let mut b = good.clone();
        b.extend(std::iter::repeat_n(0u8, extra));
        assert_eq!(
            load(&b),
            Err(Error::TrailingBytes {
                have: (good.len() + extra) as u32,
                expected: good.len() as u32
            })
        );
    }
}

/// Rewrites the CRC so only the structural checks stand between the mutation and the kernels.
fn forge_crc(b: &mut [u8]) {
    let crc = kiln_runtime::crc32::crc32(&b[16..]);
    b[12..16].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn forged_models_never_panic() {
    for precision in [Precision::Int8, Precision::F32] {
        let good = model_bytes(precision);
        let blob_offset = u32::from_le_bytes(good[20..24].try_into().unwrap()) as usize;
        let mut rng = Rng(42);
        let (mut refused, mut ran) = (0, 0);
        for case in 0..3000 {
            let mut b = good.clone();
            for _ in 0..1 + rng.below(3) {
                // Mostly the metadata (shapes, offsets, parameters); sometimes the weights.
                let at = if case % 5 == 0 {
                    16 + rng.below(b.len() - 16)
                } else {
                    16 + rng.below(blob_offset - 16)
                };
                b[at] = rng.below(256) as u8;
            }
            forge_crc(&mut b);
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                let buf = ModelBuf::new(&b);
                let Ok(model) = Model::from_bytes(buf.bytes()) else {
                    return false;
                };
                let mut arena = vec![0u32; model.arena_bytes().div_ceil(4)];
                let Ok(mut interp) = Interpreter::new(&model, bytemuck::cast_slice_mut(&mut arena))
                else {
                    return false;
                };
                if let Ok(input) = interp.input_mut(0) {
                    input
                        .iter_mut()
                        .enumerate()
                        .for_each(|(i, v)| *v = (i * 37) as u8);
                }
                let _ = interp.invoke();
                true
            }));
            match outcome {
                Ok(true) => ran += 1,
                Ok(false) => refused += 1,
                Err(_) => {
                    panic!("case {case}: a forged {precision:?} model made the runtime panic")
                }
            }
        }
        assert!(
            refused > 0 && ran > 0,
            "{precision:?}: refused {refused}, ran {ran}"
        );
        eprintln!("{precision:?}: {refused} forged models refused at load, {ran} loaded and ran without panicking");
    }
}
