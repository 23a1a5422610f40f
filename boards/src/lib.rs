//! Kiln's boards: one TOML file per board in this directory (`boards/NAME.toml`), read and checked here for both
//! the host (`kiln compile --board`, `kiln flash`, `kiln run --board`) and the firmware's build script.
//!
//! A board file says what the board is (core, Rust target, clock, flash and RAM), which UART carries telemetry
//! (a driver the firmware has, its base address and baud rate, and register writes that clock and route it),
//! where its logs go, how its cycles are counted, and how to run it: under QEMU (`[qemu]`) or flashed through a
//! debug probe (`[probe_rs]`). Adding a board is adding a file; see `mps2-an386.toml` for a commented one.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The directory holding the bundled board files.
pub fn boards_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The default board: QEMU's Cortex-M4F.
pub const DEFAULT_BOARD: &str = "mps2-an386";

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Board {
    pub name: String,
    pub description: String,
    /// e.g. `cortex-m4f`.
    pub core: String,
    /// Rust target triple, e.g. `thumbv7em-none-eabihf`.
    pub target: String,
    /// Core clock after the firmware's set-up (the firmware does not change clocks).
    pub clock_hz: u32,
    pub cycle_counter: CycleCounter,
    pub logs: Logs,
    pub flash: Region,
    pub ram: Region,
    pub uart: Uart,
    /// Register writes done in order at boot, before the UART is set up: clocks, pin routing.
    #[serde(default)]
    pub init: Vec<RegisterWrite>,
    /// Where a unique device id can be read (otherwise the device reports 0).
    pub device_id: Option<DeviceId>,
    pub qemu: Option<Qemu>,
    pub probe_rs: Option<ProbeRs>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum CycleCounter {
    /// The DWT cycle counter (real cores; not emulated by QEMU).
    Dwt,
    /// SysTick on the core clock, extended to 64 bits by its wrap interrupt.
    Systick,
}

/// Where the firmware's `defmt` logs go.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Logs {
    /// Semihosting (emulators): `kiln` decodes them from QEMU's output.
    Semihosting,
    /// RTT through the debug probe (real boards): `probe-rs run` decodes them.
    Rtt,
}

impl Logs {
    /// The firmware crate's feature that selects this transport.
    pub fn feature(self) -> &'static str {
        match self {
            Logs::Semihosting => "logs-semihosting",
            Logs::Rtt => "logs-rtt",
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    pub origin: u32,
    pub size: u32,
}

impl Region {
    pub fn end(&self) -> u64 {
        u64::from(self.origin) + u64::from(self.size)
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum UartDriver {
    /// Arm CMSDK APB UART (MPS2 boards).
    Cmsdk,
    /// Arm PL011 (and TI Stellaris's variant of it).
    Pl011,
    /// Nordic nRF52 legacy UART (no DMA).
    NrfUart,
    /// ST STM32F4 USART.
    Stm32Usart,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Uart {
    pub driver: UartDriver,
    pub base: u32,
    pub baud: u32,
    /// Pin numbers, for drivers that route their own pins (`nrf-uart`).
    pub tx_pin: Option<u32>,
    pub rx_pin: Option<u32>,
}

impl Uart {
    /// The value the driver writes to its baud-rate register(s) for `baud` at `clock_hz`.
    pub fn divisor(&self, clock_hz: u32) -> Result<u32, BoardError> {
        let bad = |why: String| BoardError::Invalid(format!("uart baud {}: {why}", self.baud));
        if self.baud == 0 {
            return Err(bad("must be above 0".into()));
        }
        let (clock, baud) = (u64::from(clock_hz), u64::from(self.baud));
        match self.driver {
            // BAUDDIV = clock / baud, at least 16.
            UartDriver::Cmsdk => {
                let d = clock / baud;
                if d < 16 {
                    return Err(bad(format!(
                        "needs a divisor of at least 16, {clock_hz} Hz gives {d}"
                    )));
                }
                Ok(d as u32)
            }
            // 16x oversampling, 6 fractional bits: IBRD << 6 | FBRD = round(64 * clock / (16 * baud)).
            UartDriver::Pl011 => {
                let d = (4 * clock + baud / 2) / baud;
                if d < 64 || d >> 6 > 0xFFFF {
                    return Err(bad(format!("out of the PL011's range at {clock_hz} Hz")));
                }
                Ok(d as u32)
            }
            // BRR = round(clock / baud) with 16x oversampling (mantissa << 4 | fraction).
            UartDriver::Stm32Usart => {
                let d = (clock + baud / 2) / baud;
                if !(16..=0xFFFF).contains(&d) {
                    return Err(bad(format!("out of the USART's range at {clock_hz} Hz")));
                }
                Ok(d as u32)
            }
            // The BAUDRATE register takes fixed codes (nRF52840 product specification, UART.BAUDRATE).
            UartDriver::NrfUart => match self.baud {
                9_600 => Ok(0x0027_5000),
                19_200 => Ok(0x004E_A000),
                38_400 => Ok(0x009D_5000),
                57_600 => Ok(0x00EB_F000),
                115_200 => Ok(0x01D7_E000),
                230_400 => Ok(0x03AF_B000),
                460_800 => Ok(0x075F_7000),
                921_600 => Ok(0x0EBE_D000),
                1_000_000 => Ok(0x1000_0000),
                _ => Err(bad("not one of the nRF UART's rates".into())),
            },
        }
    }
}

/// `*address = (*address & !clear) | set`, 32-bit.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterWrite {
    pub address: u32,
    #[serde(default)]
    pub clear: u32,
    #[serde(default)]
    pub set: u32,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceId {
    pub address: u32,
    /// 4 to 16 bytes; longer ids are folded into 64 bits.
    pub bytes: u32,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Qemu {
    pub machine: String,
    pub cpu: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeRs {
    /// probe-rs's chip name (`probe-rs chip list`).
    pub chip: String,
}

#[derive(Debug)]
pub enum BoardError {
    /// No board file of that name; lists the known boards.
    Unknown {
        name: String,
        known: Vec<String>,
    },
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    Parse {
        path: PathBuf,
        error: String,
    },
    Invalid(String),
}

impl fmt::Display for BoardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BoardError::Unknown { name, known } => write!(
                f,
                "unknown board '{name}' (known: {}; or give the path of a board file)",
                known.join(", ")
            ),
            BoardError::Read { path, error } => write!(f, "{}: {error}", path.display()),
            BoardError::Parse { path, error } => write!(f, "{}: {error}", path.display()),
            BoardError::Invalid(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for BoardError {}

/// Names of the bundled boards, sorted.
pub fn known_boards() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(boards_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            // Every `*.toml` here is a board file but the crate's own manifest.
            (p.extension()? == "toml" && p.file_name()? != "Cargo.toml")
                .then(|| p.file_stem()?.to_str().map(str::to_owned))?
        })
        .collect();
    names.sort();
    names
}

impl Board {
    /// A bundled board by name (`mps2-an386`), or a board file by path (anything with a `/` or ending `.toml`).
    pub fn load(name_or_path: &str) -> Result<Board, BoardError> {
        let path = if name_or_path.contains('/') || name_or_path.ends_with(".toml") {
            PathBuf::from(name_or_path)
        } else {
            let p = boards_dir().join(format!("{name_or_path}.toml"));
            if !p.is_file() {
                return Err(BoardError::Unknown {
                    name: name_or_path.to_owned(),
                    known: known_boards(),
                });
            }
            p
        };
        Board::from_file(&path)
    }

    pub fn from_file(path: &Path) -> Result<Board, BoardError> {
        let text = std::fs::read_to_string(path).map_err(|error| BoardError::Read {
            path: path.to_owned(),
            error,
        })?;
        Board::parse(&text).map_err(|e| match e {
            BoardError::Parse { error, .. } => BoardError::Parse {
                path: path.to_owned(),
                error,
            },
            BoardError::Invalid(why) => BoardError::Invalid(format!("{}: {why}", path.display())),
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Board, BoardError> {
        let board: Board = toml::from_str(text).map_err(|e| BoardError::Parse {
            path: PathBuf::new(),
            error: e.to_string(),
        })?;
        board.check()?;
        Ok(board)
    }

    fn check(&self) -> Result<(), BoardError> {
        let invalid = |why: String| Err(BoardError::Invalid(why));
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return invalid(format!(
                "name '{}': use letters, digits, '-' and '_'",
                self.name
            ));
        }
        if !self.target.starts_with("thumbv") {
            return invalid(format!(
                "target '{}' is not a Cortex-M (thumbv*) target",
                self.target
            ));
        }
        if self.clock_hz == 0 {
            return invalid("clock_hz must be above 0".into());
        }
        for (what, r) in [("flash", self.flash), ("ram", self.ram)] {
            if r.size == 0 || r.origin % 4 != 0 || r.size % 8 != 0 || r.end() > 1 << 32 {
                return invalid(format!(
                    "{what}: origin {:#x} size {:#x}: needs a 4-aligned origin, a non-zero size that is a multiple of 8, within 4 GiB",
                    r.origin, r.size
                ));
            }
        }
        if self.flash.origin < self.ram.origin + self.ram.size
            && self.ram.origin < self.flash.origin + self.flash.size
        {
            return invalid("flash and ram overlap".into());
        }
        self.uart.divisor(self.clock_hz)?;
        if self.uart.driver == UartDriver::NrfUart
            && (self.uart.tx_pin.is_none() || self.uart.rx_pin.is_none())
        {
            return invalid("uart driver nrf-uart needs tx_pin and rx_pin".into());
        }
        if let Some(id) = self.device_id {
            if !(4..=16).contains(&id.bytes) {
                return invalid(format!("device_id.bytes {}: 4 to 16", id.bytes));
            }
        }
        for w in &self.init {
            if w.address % 4 != 0 {
                return invalid(format!("init: address {:#x} is not 4-aligned", w.address));
            }
        }
        match (&self.qemu, &self.probe_rs) {
            (Some(_), None) | (None, Some(_)) => {}
            _ => {
                return invalid(
                    "give exactly one of [qemu] (emulated) or [probe_rs] (real board)".into(),
                )
            }
        }
        Ok(())
    }

    /// True for boards QEMU runs.
    pub fn is_emulated(&self) -> bool {
        self.qemu.is_some()
    }

    /// The linker's memory map for this board. `measure`: regions as large as the address space allows, so that
    /// the firmware links whatever its size and its real needs can be read off the ELF before they are checked
    /// against the board (the stack still starts at the board's real RAM end only when not measuring).
    pub fn memory_x(&self, measure: bool) -> String {
        // Up to the next region (or 256 MiB), never past 4 GiB.
        let grow = |r: Region, other: Region| -> u64 {
            let limit = if other.origin > r.origin {
                u64::from(other.origin)
            } else {
                1 << 32
            };
            (limit - u64::from(r.origin)).min(256 << 20)
        };
        let (flash, ram) = if measure {
            (grow(self.flash, self.ram), grow(self.ram, self.flash))
        } else {
            (u64::from(self.flash.size), u64::from(self.ram.size))
        };
        format!(
            "/* Generated by kiln-boards from board '{}'{}. */\nMEMORY\n{{\n  FLASH : ORIGIN = {:#010x}, LENGTH = {:#x}\n  RAM : ORIGIN = {:#010x}, LENGTH = {:#x}\n}}\n",
            self.name,
            if measure { " (measuring: regions enlarged)" } else { "" },
            self.flash.origin,
            flash,
            self.ram.origin,
            ram
        )
    }

    /// Instructions per cycle-counter tick under QEMU with `-icount shift=0` (one instruction per virtual
    /// nanosecond; SysTick ticks at `clock_hz`).
    pub fn qemu_instructions_per_tick(&self) -> f64 {
        1e9 / f64::from(self.clock_hz)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bundled_board_loads() {
        let names = known_boards();
        for required in [
            "mps2-an386",
            "mps2-an500",
            "lm3s6965evb",
            "nrf52840-dk",
            "stm32f411-nucleo",
        ] {
            assert!(
                names.iter().any(|n| n == required),
                "{required} missing from {names:?}"
            );
        }
        for name in names {
            let b = Board::load(&name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(b.name, name, "a board's name is its file name");
        }
    }

    #[test]
    fn divisors() {
        let an386 = Board::load("mps2-an386").unwrap();
        assert_eq!(an386.uart.divisor(an386.clock_hz).unwrap(), 217); // 25e6 / 115200 = 217.01
        let stm = Board::load("stm32f411-nucleo").unwrap();
        assert_eq!(stm.uart.divisor(stm.clock_hz).unwrap(), 139); // 16e6 / 115200 = 138.9
        let lm = Board::load("lm3s6965evb").unwrap();
        // 12.5e6 / (16 * 115200) = 6.7817: IBRD 6, FBRD round(0.7817 * 64) = 50.
        assert_eq!(lm.uart.divisor(lm.clock_hz).unwrap(), 6 << 6 | 50);
    }

    #[test]
    fn unknown_board_lists_known_ones() {
        let e = Board::load("no-such-board").unwrap_err().to_string();
        assert!(
            e.contains("unknown board 'no-such-board'") && e.contains("mps2-an386"),
            "{e}"
        );
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let good = std::fs::read_to_string(boards_dir().join("mps2-an386.toml")).unwrap();
        let cases = [
            (
                good.replace("cortex-m4\"\n", "cortex-m4\"\n[probe_rs]\nchip = \"x\"\n"),
                "exactly one of",
            ),
            (
                good.replace(
                    "target = \"thumbv7em-none-eabihf\"",
                    "target = \"x86_64-unknown-linux-gnu\"",
                ),
                "not a Cortex-M",
            ),
            (
                good.replace("size = 0x0040_0000", "size = 0"),
                "non-zero size",
            ),
            (
                good.replace("driver = \"cmsdk\"", "driver = \"usb\""),
                "unknown variant",
            ),
            (
                good.replace("baud = 115_200", "baud = 4_000_000"),
                "at least 16",
            ),
            (format!("{good}\ncolour = \"red\"\n"), "unknown field"),
        ];
        for (text, want) in cases {
            let e = Board::parse(&text).unwrap_err().to_string();
            assert!(e.contains(want), "wanted '{want}' in: {e}");
        }
    }

    #[test]
    fn memory_map() {
        let lm = Board::load("lm3s6965evb").unwrap();
        let real = lm.memory_x(false);
        assert!(
            real.contains("FLASH : ORIGIN = 0x00000000, LENGTH = 0x40000"),
            "{real}"
        );
        assert!(
            real.contains("RAM : ORIGIN = 0x20000000, LENGTH = 0x10000"),
            "{real}"
        );
        let measure = lm.memory_x(true);
        assert!(
            measure.contains("FLASH : ORIGIN = 0x00000000, LENGTH = 0x10000000"),
            "{measure}"
        );
    }
}
