//! `kiln bench`: instructions per inference on an emulated board, on the recipe `../shared/BASELINES.md` measured
//! TensorFlow Lite Micro + CMSIS-NN with: QEMU with `-icount shift=0,align=off,sleep=off`, SysTick on the core
//! clock with reload 0xFFFFFF, instructions = ticks x (1e9 / clock_hz) (40 on the MPS2 boards), and the LCG int8
//! input. The firmware runs the benchmark at boot, before it talks to the host, so two runs count the same.

use serde::Serialize;

use crate::device::Device;
use crate::error::{input, Error, Result};
use crate::firmware::Options;
use crate::flash;
use crate::runner::ModelBuf;
use kiln_runtime::telemetry::{Frame, InferenceReport};

/// One op's share.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct OpBench {
    pub op: String,
    pub kind: String,
    pub macs: u64,
    pub instructions: u64,
    /// `instructions / macs`, when the op has MACs.
    pub instructions_per_mac: Option<f64>,
}

/// What `kiln bench` reports (and writes with `--json`).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Bench {
    pub board: String,
    pub instructions: u64,
    pub macs: u64,
    pub instructions_per_mac: f64,
    pub arena_bytes: u64,
    /// Peak stack during the benchmark (painted stack).
    pub stack_bytes: u64,
    /// Flash of the benchmark image without the model: vector table, code, constants, initial values of
    /// statics. The benchmark image is the firmware built to measure (what TFLM's benchmark application is to
    /// TFLM): the same loader, checks, interpreter and kernels, no logs, no UART command loop.
    pub code_bytes: u64,
    /// The same for the firmware `kiln flash` and `kiln run --board` build (command loop, telemetry, `defmt`
    /// logs): what `kiln compile --board` fits.
    pub firmware_code_bytes: u64,
    pub model_bytes: u64,
    /// SysTick ticks and instructions per tick, from which `instructions` comes.
    pub ticks: u64,
    pub instructions_per_tick: f64,
    pub ops: Vec<OpBench>,
}

/// Builds the benchmark firmware for `board_arg` around `model` (fit checked, table shown with `say`), runs it
/// under QEMU and reads its two benchmark reports, which must agree; the first is the result.
pub fn bench(
    board_arg: &str,
    model: &[u8],
    stack_bytes: u32,
    say: impl FnMut(&str),
) -> Result<Bench> {
    let board = flash::board(board_arg)?;
    if !board.is_emulated() {
        return Err(input(format!(
            "kiln bench counts instructions under QEMU; {} is a real board (use `kiln run --board {} --per-op` for its cycles)",
            board.name, board.name
        )));
    }
    let buf = ModelBuf::new(model);
    let m = buf.model()?;
    let info = crate::inspect::inspect(&m);
    // No logs in the benchmark image: the host reads the counts from its telemetry frames.
    let options = Options {
        stack_bytes,
        log_level: "off",
        bench: true,
    };
    let built = flash::build_checked(board_arg, model, options, None, say)?;
    let mut dev = Device::start_qemu(&built.board, &built.firmware.elf, false)?;
    let mut reports: Vec<InferenceReport> = Vec::new();
    while reports.len() < 2 {
        match dev.next_frame()? {
            Frame::Inference(r) => reports.push(r),
            Frame::Error { code, detail } => {
                return Err(Error::Internal(anyhow::anyhow!(
                    "the benchmark failed on {}: error {code} (detail {detail}); logs: {}",
                    board.name,
                    dev.logs().join(" / ")
                )))
            }
            _ => {}
        }
    }
    dev.finish()?;
    // Each run repeats exactly from reset; within a run the second inference starts at another phase of the
    // tick, so its readings may differ by a tick each, never more.
    let (a, b) = (&reports[0], &reports[1]);
    if a.cycles.abs_diff(b.cycles) > 1 || a.op_cycles.len() != b.op_cycles.len() {
        return Err(Error::Internal(anyhow::anyhow!(
            "two benchmark inferences on {} counted differently ({} vs {} ticks)",
            board.name,
            a.cycles,
            b.cycles
        )));
    }
    // The benchmark image sends no stack warning of its own: a high-water mark at the reserve means the stack
    // may have run past it, and nothing measured can be trusted.
    let peak = a.stack_high_water.max(b.stack_high_water);
    if peak >= stack_bytes {
        return Err(input(format!(
            "the benchmark on {} used its whole stack reserve of {stack_bytes} bytes: its figures cannot be \
             trusted (rerun with a larger --stack)",
            board.name
        )));
    }
    // The interactive firmware for the same model, for its size beside the benchmark image's.
    let interactive = flash::build_checked(
        board_arg,
        model,
        Options::with_stack(stack_bytes),
        None,
        |_| {},
    )?;
    let per_tick = board.qemu_instructions_per_tick();
    let instr = |ticks: u64| (ticks as f64 * per_tick).round() as u64;
    let ops: Vec<OpBench> = info
        .ops
        .iter()
        .zip(a.op_cycles.iter())
        .map(|(op, &ticks)| {
            let instructions = instr(u64::from(ticks));
            OpBench {
                op: op.name.clone(),
                kind: op.kind.to_owned(),
                macs: op.macs,
                instructions,
                instructions_per_mac: (op.macs > 0).then(|| instructions as f64 / op.macs as f64),
            }
        })
        .collect();
    let instructions = instr(a.cycles);
    let fp = &built.firmware.footprint;
    Ok(Bench {
        board: board.name.clone(),
        instructions,
        macs: info.macs,
        instructions_per_mac: if info.macs > 0 {
            instructions as f64 / info.macs as f64
        } else {
            0.0
        },
        arena_bytes: info.arena_bytes as u64,
        stack_bytes: u64::from(a.stack_high_water.max(b.stack_high_water)),
        code_bytes: fp.code_bytes,
        firmware_code_bytes: interactive.firmware.footprint.code_bytes,
        model_bytes: fp.model_bytes,
        ticks: a.cycles,
        instructions_per_tick: per_tick,
        ops,
    })
}

/// The human table.
pub fn render(b: &Bench) -> String {
    use std::fmt::Write as _;
    let n = crate::inspect::thousands;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:<4} {:<44} {:<20} {:>12} {:>14} {:>9}",
        "op", "name", "kind", "MACs", "instructions", "per MAC"
    );
    for (i, op) in b.ops.iter().enumerate() {
        let name: String = op.op.chars().take(44).collect();
        let per_mac = op
            .instructions_per_mac
            .map(|x| format!("{x:.2}"))
            .unwrap_or_default();
        let _ = writeln!(
            t,
            "{i:<4} {name:<44} {:<20} {:>12} {:>14} {per_mac:>9}",
            op.kind,
            n(op.macs),
            n(op.instructions)
        );
    }
    let _ = writeln!(
        t,
        "{:<4} {:<44} {:<20} {:>12} {:>14} {:>9.2}",
        "",
        "total",
        "",
        n(b.macs),
        n(b.instructions),
        b.instructions_per_mac
    );
    let _ = writeln!(
        t,
        "{}: {} instructions per inference ({} ticks x {}), arena {} B, peak stack {} B, code {} B, model {} B",
        b.board,
        n(b.instructions),
        n(b.ticks),
        b.instructions_per_tick,
        n(b.arena_bytes),
        n(b.stack_bytes),
        n(b.code_bytes),
        n(b.model_bytes)
    );
    let _ = writeln!(
        t,
        "(code: the benchmark image; the firmware `kiln flash` builds, with its UART command loop and logs: {} B)",
        n(b.firmware_code_bytes)
    );
    t
}
