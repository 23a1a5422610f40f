//! Turns a board file and a `.kiln` model into the firmware's constants (`$OUT_DIR/board.rs`) and memory map
//! (`$OUT_DIR/memory.x`). Everything board-specific the shared code needs comes from here, as data.
//!
//! Inputs (environment): `KILN_BOARD` (board name or board file), `KILN_MODEL` (path of a `.kiln` file),
//! `KILN_STACK_BYTES` (stack reserve, default 12 KiB, as `kiln`'s), `KILN_MEMORY` (`board`, the default, or `measure`: regions
//! enlarged so that any size links and `kiln` can read the real needs off the ELF before checking them),
//! `KILN_BENCH` (`1`: the benchmark image: the benchmark inferences at boot, then exit; see `main.rs`).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::{env, fs};

use kiln_boards::{Board, CycleCounter, UartDriver};

const DEFAULT_STACK_BYTES: usize = 12 * 1024;

fn main() {
    if let Err(e) = run() {
        eprintln!("kiln-firmware build: {e}");
        std::process::exit(1);
    }
}

fn var(name: &str) -> Option<String> {
    println!("cargo:rerun-if-env-changed={name}");
    env::var(name).ok().filter(|v| !v.is_empty())
}

fn run() -> Result<(), String> {
    let out = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let board_name = var("KILN_BOARD").ok_or(
        "KILN_BOARD is not set: build the firmware through `kiln flash`, `kiln run --board` or `kiln compile --board`",
    )?;
    let board = Board::load(&board_name).map_err(|e| e.to_string())?;
    let board_file = if board_name.ends_with(".toml") {
        PathBuf::from(&board_name)
    } else {
        kiln_boards::boards_dir().join(format!("{board_name}.toml"))
    };
    println!("cargo:rerun-if-changed={}", board_file.display());
    let target = env::var("TARGET").unwrap_or_default();
    if target != board.target {
        return Err(format!(
            "board {} needs target {}, this build is for {target}",
            board.name, board.target
        ));
    }

    let model_path =
        PathBuf::from(var("KILN_MODEL").ok_or("KILN_MODEL is not set (path of a .kiln file)")?);
    println!("cargo:rerun-if-changed={}", model_path.display());
    let bytes = fs::read(&model_path).map_err(|e| format!("{}: {e}", model_path.display()))?;
    // Checked here with the same loader the device runs, so a bad model never gets into a firmware image.
    let mut words = vec![0u32; bytes.len().div_ceil(4)];
    for (i, b) in bytes.iter().enumerate() {
        words[i / 4] |= u32::from(*b) << (8 * (i % 4));
    }
    let aligned: &[u8] = unsafe { std::slice::from_raw_parts(words.as_ptr().cast(), bytes.len()) };
    let model = kiln_runtime::Model::from_bytes(aligned)
        .map_err(|e| format!("{}: invalid model: {e}", model_path.display()))?;
    // The op kinds the model runs, in order of first use, each with the kernels its ops choose and whether they
    // run in place: the firmware's resolver links only these.
    struct Kind {
        id: kiln_runtime::ops::OpId,
        kernels: Vec<kiln_runtime::format::KernelS8>,
        separate: bool,
        in_place: bool,
    }
    let mut kinds: Vec<Kind> = Vec::new();
    for op in model.ops() {
        let id = kiln_runtime::ops::OpId::of(&op.kind);
        let kernel = kiln_runtime::ops::kernel_of(&op.kind);
        let in_place = kiln_runtime::ops::runs_in_place(&op);
        let at = match kinds.iter().position(|k| k.id == id) {
            Some(at) => at,
            None => {
                kinds.push(Kind {
                    id,
                    kernels: Vec::new(),
                    separate: false,
                    in_place: false,
                });
                kinds.len() - 1
            }
        };
        let kind = &mut kinds[at];
        if !kind.kernels.contains(&kernel) {
            kind.kernels.push(kernel);
        }
        kind.separate |= !in_place;
        kind.in_place |= in_place;
    }
    let mut registrations = String::new();
    for k in &kinds {
        let set = kiln_runtime::ops::KernelSet::with_modes(&k.kernels, k.separate, k.in_place);
        if kiln_runtime::ops::Registration::of_set(k.id, set).is_none() {
            return Err(format!(
                "{}: {:?} has no kernels {set:?}",
                model_path.display(),
                k.id
            ));
        }
        let list: Vec<String> = k
            .kernels
            .iter()
            .map(|k| format!("kiln_runtime::format::KernelS8::{k:?}"))
            .collect();
        let _ = write!(
            registrations,
            "\n    reg(kiln_runtime::ops::OpId::{:?}, &[{}], {}, {}),",
            k.id,
            list.join(", "),
            k.separate,
            k.in_place
        );
    }
    let io_bytes = |t: kiln_runtime::format::TensorDef<'_>| (t.data.end() - t.data.offset) as usize;
    let mut input_bytes = 0;
    for i in 0..model.input_count() {
        input_bytes += io_bytes(model.input(i).map_err(|e| e.to_string())?);
    }

    let stack_bytes: usize = match var("KILN_STACK_BYTES") {
        Some(s) => s
            .parse()
            .map_err(|_| format!("KILN_STACK_BYTES '{s}' is not a number"))?,
        None => DEFAULT_STACK_BYTES,
    };
    let bench = match var("KILN_BENCH").as_deref() {
        None | Some("0") => false,
        Some("1") => true,
        Some(other) => return Err(format!("KILN_BENCH '{other}': 0 or 1")),
    };
    let measure = match var("KILN_MEMORY").as_deref() {
        None | Some("board") => false,
        Some("measure") => true,
        Some(other) => return Err(format!("KILN_MEMORY '{other}': board or measure")),
    };

    // The firmware's id: CRC-32 of its sources, the board file and the stack reserve.
    let mut id_input = Vec::new();
    let src = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?).join("src");
    println!("cargo:rerun-if-changed={}", src.display());
    let mut sources: Vec<PathBuf> = fs::read_dir(&src)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .collect();
    sources.sort();
    for p in sources {
        id_input.extend(fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?);
    }
    id_input.extend(fs::read(&board_file).unwrap_or_default());
    id_input.extend(stack_bytes.to_le_bytes());
    let firmware_id = kiln_runtime::crc32::crc32(&id_input);

    let divisor = board
        .uart
        .divisor(board.clock_hz)
        .map_err(|e| e.to_string())?;
    let uart = match board.uart.driver {
        UartDriver::Cmsdk => format!("crate::uart::Cmsdk::new({:#x}, {divisor})", board.uart.base),
        UartDriver::Pl011 => format!("crate::uart::Pl011::new({:#x}, {divisor})", board.uart.base),
        UartDriver::Stm32Usart => format!(
            "crate::uart::Stm32Usart::new({:#x}, {divisor})",
            board.uart.base
        ),
        UartDriver::NrfUart => format!(
            "crate::uart::NrfUart::new({:#x}, {divisor:#x}, {}, {})",
            board.uart.base,
            board.uart.tx_pin.unwrap_or(u32::MAX),
            board.uart.rx_pin.unwrap_or(u32::MAX)
        ),
    };
    let uart_type = uart.split("::new").next().unwrap_or_default();
    let counter = match board.cycle_counter {
        CycleCounter::Dwt => "Dwt",
        CycleCounter::Systick => "SysTick",
    };
    let mut init = String::new();
    for w in &board.init {
        let _ = write!(init, "({:#x}, {:#x}, {:#x}), ", w.address, w.clear, w.set);
    }
    let device_id = match board.device_id {
        Some(d) => format!("Some(({:#x}, {}))", d.address, d.bytes),
        None => "None".into(),
    };

    let model_len = bytes.len();
    let rx_bytes = input_bytes + input_bytes / 254 + 32;
    let code = format!(
        "// Generated by build.rs from board file {board_file} and model {model}.\n\
         pub const BOARD: &str = {name:?};\n\
         pub const CLOCK_HZ: u32 = {clock};\n\
         pub const CYCLE_COUNTER: crate::cycles::Counter = crate::cycles::Counter::{counter};\n\
         /// `(address, clear, set)` register writes done at boot.\n\
         pub const INIT: &[(usize, u32, u32)] = &[{init}];\n\
         /// `(address, bytes)` of the unique device id.\n\
         pub const DEVICE_ID: Option<(usize, usize)> = {device_id};\n\
         pub const FIRMWARE_ID: u32 = {firmware_id:#010x};\n\
         pub const STACK_BYTES: usize = {stack_bytes};\n\
         /// Run the benchmark inferences at boot.\n\
         pub const BENCH: bool = {bench};\n\
         pub const ARENA_BYTES: usize = {arena};\n\
         pub const INPUT_BYTES: usize = {input_bytes};\n\
         /// Largest command frame: an `Infer` carrying INPUT_BYTES, stuffed.\n\
         pub const RX_BYTES: usize = {rx_bytes};\n\
         pub type Uart = {uart_type};\n\
         /// # Safety\n/// Call once: the driver owns the peripheral.\n\
         pub unsafe fn uart() -> Uart {{ unsafe {{ {uart} }} }}\n\
         #[no_mangle]\n\
         pub static KILN_MODEL: crate::Aligned<[u8; {model_len}]> = crate::Aligned(*include_bytes!({model:?}));\n\
         /// The op kinds and kernels the model runs with: everything the firmware's resolver links.\n\
         static REGISTRATIONS: [kiln_runtime::ops::Registration; {reg_count}] = [{registrations}\n];\n\
         /// Op kind `op` with `kernels`, on ops writing a separate output (`separate`) or their input (`in_place`).\n\
         const fn reg(op: kiln_runtime::ops::OpId, kernels: &[kiln_runtime::format::KernelS8], separate: bool, in_place: bool) -> kiln_runtime::ops::Registration {{\n    \
             let set = kiln_runtime::ops::KernelSet::with_modes(kernels, separate, in_place);\n    \
             match kiln_runtime::ops::Registration::of_set(op, set) {{ Some(r) => r, None => panic!(\"no such kernels\") }}\n\
         }}\n\
         pub const RESOLVER: kiln_runtime::ops::Resolver = kiln_runtime::ops::Resolver::new(&REGISTRATIONS);\n",
        board_file = board_file.display(),
        model = model_path.canonicalize().unwrap_or(model_path.clone()).display().to_string(),
        name = board.name,
        clock = board.clock_hz,
        arena = model.arena_bytes(),
        reg_count = kinds.len(),
    );
    fs::write(out.join("board.rs"), code).map_err(|e| e.to_string())?;
    fs::write(out.join("memory.x"), board.memory_x(measure)).map_err(|e| e.to_string())?;
    // cortex-m-rt's `device` feature includes `device.x` for a device crate's interrupt handler names: none here.
    fs::write(
        out.join("device.x"),
        "/* no device interrupts: see __INTERRUPTS in main.rs */\n",
    )
    .map_err(|e| e.to_string())?;

    // With defmt's level at `off` (the benchmark image) no log call is compiled in: no global logger is linked
    // either (its acquire/release and transport writes, ~0.4 KB).
    println!("cargo::rustc-check-cfg=cfg(kiln_no_logs)");
    if var("DEFMT_LOG").as_deref() == Some("off") {
        println!("cargo:rustc-cfg=kiln_no_logs");
    }
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rustc-link-arg=-Tlink.x");
    println!("cargo:rustc-link-arg=-Tdefmt.x");
    println!("cargo:rustc-link-arg=--nmagic");
    Ok(())
}
