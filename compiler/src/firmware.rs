//! Building Kiln's firmware (`firmware/`) for a board with a model embedded, and checking that it fits.
//!
//! The firmware is built by cargo for the board's Rust target with one of two toolchains, found here: rustup's,
//! when the target is installed (`rustup target add …`, the normal path on a developer's machine), or Debian's
//! (`rustc-web`, `cargo-web`, `rust-web-src`, `lld-19`) building `core` itself with `-Zbuild-std=core`.
//! `KILN_TOOLCHAIN=rustup|debian` forces one.
//!
//! The fit is read off the linked ELF: flash is everything loaded into the board's flash (vector table, code,
//! read-only data with the model, initial values of statics), RAM is every static (the arena among them) plus
//! the stack reserve. When the image does not fit, the linker refuses it; it is then linked again with enlarged
//! regions only to measure by how much.

use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_boards::Board;
use object::read::elf::{ElfFile32, ProgramHeader as _};
use object::{Object, ObjectSymbol};

use crate::error::{input, Error, Result};

/// Stack the firmware reserves unless told otherwise (`--stack`): the firmware's measured peak is ~7.4 KiB
/// (`kiln bench`, docs/BENCHMARKS.md), and it reports when a run uses the whole reserve.
pub const DEFAULT_STACK_BYTES: u32 = 12 * 1024;

/// The firmware crate's directory: `KILN_FIRMWARE_DIR`, else the one beside this compiler's sources.
pub fn firmware_dir() -> PathBuf {
    std::env::var_os("KILN_FIRMWARE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../firmware"))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Toolchain {
    /// rustup's cargo with the target's prebuilt standard library.
    Rustup,
    /// Debian's rustc/cargo, building `core` from `rust-web-src`; `linker` is Debian's lld.
    Debian { linker: String },
}

fn rustup_has(target: &str) -> bool {
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == target)
        })
        .unwrap_or(false)
}

fn debian_toolchain() -> Option<Toolchain> {
    let present = Path::new("/usr/bin/rustc").is_file()
        && Path::new("/usr/bin/cargo").is_file()
        && Path::new("/usr/lib/rustlib/src/rust/library/core").is_dir();
    let linker = ["ld.lld-19", "ld.lld"].into_iter().find(|l| {
        Command::new(l)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    })?;
    present.then(|| Toolchain::Debian {
        linker: linker.to_owned(),
    })
}

/// The toolchain that can build for `target`, or an error that says how to get one.
pub fn toolchain(target: &str) -> Result<Toolchain> {
    let forced = std::env::var("KILN_TOOLCHAIN").ok();
    match forced.as_deref() {
        Some("rustup") => return Ok(Toolchain::Rustup),
        Some("debian") => {
            return debian_toolchain().ok_or_else(|| {
                input("KILN_TOOLCHAIN=debian, but Debian's toolchain is incomplete: apt-get install rustc-web cargo-web rust-web-src lld-19")
            })
        }
        _ => {}
    }
    if rustup_has(target) {
        return Ok(Toolchain::Rustup);
    }
    debian_toolchain().ok_or_else(|| {
        input(format!(
            "no Rust toolchain can build for {target}: run `rustup target add {target}`, \
             or on Debian/Ubuntu `apt-get install rustc-web cargo-web rust-web-src lld-19`"
        ))
    })
}

/// How the firmware is built, beyond board and model.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub stack_bytes: u32,
    /// `defmt` log level compiled in (`DEFMT_LOG`).
    pub log_level: &'static str,
    /// Run the benchmark inferences at boot (`kiln bench`).
    pub bench: bool,
}

impl Options {
    /// Info-level logs, no benchmark.
    pub fn with_stack(stack_bytes: u32) -> Self {
        Options {
            stack_bytes,
            log_level: "info",
            bench: false,
        }
    }
}

/// What to build.
pub struct BuildRequest<'a> {
    pub board: &'a Board,
    /// The board as the user named it (name or board file path), passed to the firmware's build script.
    pub board_arg: &'a str,
    /// The `.kiln` model to embed.
    pub model: &'a Path,
    pub options: Options,
}

/// Where the firmware's bytes go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Flash taken by everything but the model: vector table, code, constants, initial values of statics.
    pub code_bytes: u64,
    pub model_bytes: u64,
    /// The interpreter's arena (a static).
    pub arena_bytes: u64,
    /// Every other static: buffers, driver and runtime state.
    pub statics_bytes: u64,
    /// Stack reserved (not measured: the device reports its high-water mark).
    pub stack_bytes: u64,
}

impl Footprint {
    pub fn flash_bytes(&self) -> u64 {
        self.code_bytes + self.model_bytes
    }

    pub fn ram_bytes(&self) -> u64 {
        self.arena_bytes + self.statics_bytes + self.stack_bytes
    }

    pub fn fits(&self, board: &Board) -> bool {
        self.flash_bytes() <= u64::from(board.flash.size)
            && self.ram_bytes() <= u64::from(board.ram.size)
    }

    /// The need-vs-have table `kiln` prints.
    pub fn table(&self, board: &Board) -> String {
        let n = crate::inspect::thousands;
        let verdict = |need: u64, have: u32| {
            let have = u64::from(have);
            if need <= have {
                format!("fits ({:.1}% used)", 100.0 * need as f64 / have as f64)
            } else {
                format!("DOES NOT FIT: {} B over", n(need - have))
            }
        };
        let mut t = String::new();
        let _ = writeln!(t, "fit on {} ({}):", board.name, board.description);
        let _ = writeln!(t, "  {:<28} {:>12} {:>12}", "", "need (B)", "have (B)");
        let _ = writeln!(
            t,
            "  {:<28} {:>12}",
            "flash  code and constants",
            n(self.code_bytes)
        );
        let _ = writeln!(t, "  {:<28} {:>12}", "       model", n(self.model_bytes));
        let _ = writeln!(
            t,
            "  {:<28} {:>12} {:>12}  {}",
            "       total",
            n(self.flash_bytes()),
            n(u64::from(board.flash.size)),
            verdict(self.flash_bytes(), board.flash.size)
        );
        let _ = writeln!(t, "  {:<28} {:>12}", "RAM    arena", n(self.arena_bytes));
        let _ = writeln!(
            t,
            "  {:<28} {:>12}",
            "       other statics",
            n(self.statics_bytes)
        );
        let _ = writeln!(
            t,
            "  {:<28} {:>12}",
            "       stack (reserved)",
            n(self.stack_bytes)
        );
        let _ = write!(
            t,
            "  {:<28} {:>12} {:>12}  {}",
            "       total",
            n(self.ram_bytes()),
            n(u64::from(board.ram.size)),
            verdict(self.ram_bytes(), board.ram.size)
        );
        t
    }

    /// One line saying what does not fit, with the numbers (for error messages).
    pub fn misfit(&self, board: &Board) -> String {
        let n = crate::inspect::thousands;
        let mut parts = Vec::new();
        if self.flash_bytes() > u64::from(board.flash.size) {
            parts.push(format!(
                "flash needs {} B (code {} B + model {} B), the board has {} B",
                n(self.flash_bytes()),
                n(self.code_bytes),
                n(self.model_bytes),
                n(u64::from(board.flash.size))
            ));
        }
        if self.ram_bytes() > u64::from(board.ram.size) {
            parts.push(format!(
                "RAM needs {} B (arena {} B + statics {} B + stack {} B), the board has {} B",
                n(self.ram_bytes()),
                n(self.arena_bytes),
                n(self.statics_bytes),
                n(self.stack_bytes),
                n(u64::from(board.ram.size))
            ));
        }
        format!("does not fit {}: {}", board.name, parts.join("; "))
    }
}

/// A built firmware image. When its footprint does not fit the board, `elf` was linked with enlarged regions
/// only to measure it and must not run.
pub struct Firmware {
    pub elf: PathBuf,
    pub footprint: Footprint,
}

/// Builds the firmware for `req.board` with `req.model` embedded and copies the ELF to `elf_out`. A model that
/// does not fit is not an error here: check [`Footprint::fits`].
pub fn build(req: &BuildRequest<'_>, elf_out: &Path) -> Result<Firmware> {
    let tc = toolchain(&req.board.target)?;
    let dir = firmware_dir();
    if !dir.join("Cargo.toml").is_file() {
        return Err(input(format!(
            "the firmware sources are not at {} (set KILN_FIRMWARE_DIR to Kiln's firmware/ directory)",
            dir.display()
        )));
    }
    let target_dir = match std::env::var_os("KILN_FIRMWARE_TARGET_DIR") {
        Some(d) => PathBuf::from(d),
        None => dir.join("../target").join(match tc {
            Toolchain::Rustup => "firmware",
            Toolchain::Debian { .. } => "firmware-debian",
        }),
    };
    std::fs::create_dir_all(&target_dir)
        .map_err(|e| Error::Internal(anyhow::anyhow!("{}: {e}", target_dir.display())))?;
    // One build (and copy of its output) at a time per target directory: two kiln processes must not swap ELFs.
    let lock = File::create(target_dir.join("kiln-build.lock"))
        .map_err(|e| Error::Internal(anyhow::anyhow!("{}: {e}", target_dir.display())))?;
    lock.lock()
        .map_err(|e| Error::Internal(anyhow::anyhow!("locking {}: {e}", target_dir.display())))?;

    let model = req
        .model
        .canonicalize()
        .map_err(|e| input(format!("{}: {e}", req.model.display())))?;
    let built = target_dir
        .join(&req.board.target)
        .join("release")
        .join("kiln-firmware");

    // Linked for the board, or (when the board's memory map refuses it) with enlarged regions to measure it.
    let board_log = match cargo_build(&tc, req, &dir, &target_dir, &model, "board")? {
        Ok(()) => None,
        Err(log) => match cargo_build(&tc, req, &dir, &target_dir, &model, "measure")? {
            Ok(()) => Some(log),
            Err(_) => {
                return Err(Error::Internal(anyhow::anyhow!(
                    "building the firmware for {} failed:\n{}",
                    req.board.name,
                    tail(&log, 40)
                )))
            }
        },
    };
    let footprint = measure(&built, req.board, u64::from(req.options.stack_bytes))?;
    std::fs::copy(&built, elf_out).map_err(|e| {
        Error::Internal(anyhow::anyhow!(
            "{} -> {}: {e}",
            built.display(),
            elf_out.display()
        ))
    })?;
    if let Some(log) = board_log {
        if footprint.fits(req.board) {
            // The board's link failed for another reason than size: never hand out the measuring image.
            return Err(Error::Internal(anyhow::anyhow!(
                "linking the firmware for {} failed although it fits:\n{}",
                req.board.name,
                tail(&log, 40)
            )));
        }
    }
    Ok(Firmware {
        elf: elf_out.to_owned(),
        footprint,
    })
}

fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs cargo; `Ok(Err(log))` when the build failed (its output), `Err` when cargo could not be run at all.
fn cargo_build(
    tc: &Toolchain,
    req: &BuildRequest<'_>,
    dir: &Path,
    target_dir: &Path,
    model: &Path,
    memory: &str,
) -> Result<std::result::Result<(), String>> {
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_message(format!(
        "building firmware for {} ({}{})",
        req.board.name,
        req.board.target,
        if memory == "measure" {
            ", measuring"
        } else {
            ""
        }
    ));
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    let mut cmd = match tc {
        Toolchain::Rustup => {
            let mut c = Command::new("cargo");
            c.env_remove("RUSTC").env_remove("RUSTC_BOOTSTRAP");
            c
        }
        Toolchain::Debian { linker } => {
            let mut c = Command::new("/usr/bin/cargo");
            let var = format!(
                "CARGO_TARGET_{}_LINKER",
                req.board.target.to_uppercase().replace('-', "_")
            );
            c.env("RUSTC", "/usr/bin/rustc")
                .env("RUSTC_BOOTSTRAP", "1")
                .env(var, linker)
                .arg("-Zbuild-std=core");
            c
        }
    };
    let board_arg = if req.board_arg.ends_with(".toml") {
        std::fs::canonicalize(req.board_arg)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| req.board_arg.to_owned())
    } else {
        req.board_arg.to_owned()
    };
    cmd.current_dir(dir)
        .args([
            "build",
            "--release",
            "--target",
            &req.board.target,
            "--features",
        ])
        .arg(req.board.logs.feature())
        .env("CARGO_TARGET_DIR", target_dir)
        .env("KILN_BOARD", board_arg)
        .env("KILN_MODEL", model)
        .env("KILN_STACK_BYTES", req.options.stack_bytes.to_string())
        .env("KILN_MEMORY", memory)
        .env("KILN_BENCH", if req.options.bench { "1" } else { "0" })
        .env("DEFMT_LOG", req.options.log_level)
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    let output = cmd.output();
    spinner.finish_and_clear();
    let output = output.map_err(|e| {
        input(format!(
            "cannot run cargo to build the firmware ({e}); is a Rust toolchain installed?"
        ))
    })?;
    if output.status.success() {
        Ok(Ok(()))
    } else {
        Ok(Err(String::from_utf8_lossy(&output.stderr).into_owned()))
    }
}

/// Reads the footprint off a firmware ELF (32-bit Arm, little-endian).
pub fn measure(elf: &Path, board: &Board, stack_bytes: u64) -> Result<Footprint> {
    let data = std::fs::read(elf)
        .map_err(|e| Error::Internal(anyhow::anyhow!("{}: {e}", elf.display())))?;
    let bad = |what: String| Error::Internal(anyhow::anyhow!("{}: {what}", elf.display()));
    let file = ElfFile32::<object::LittleEndian>::parse(&*data).map_err(|e| bad(e.to_string()))?;
    let endian = object::LittleEndian;
    // Loaded bytes whose load address is in flash (regions may have been enlarged to measure: up to the RAM).
    let flash_lo = u64::from(board.flash.origin);
    let flash_hi = if board.ram.origin > board.flash.origin {
        u64::from(board.ram.origin)
    } else {
        1 << 32
    };
    let mut flash_end = flash_lo;
    for ph in file.elf_program_headers() {
        if ph.p_type(endian) != object::elf::PT_LOAD || ph.p_filesz(endian) == 0 {
            continue;
        }
        let start = u64::from(ph.p_paddr(endian));
        if (flash_lo..flash_hi).contains(&start) {
            flash_end = flash_end.max(start + u64::from(ph.p_filesz(endian)));
        }
    }
    let symbol = |name: &str| file.symbols().find(|s| s.name() == Ok(name));
    let size = |name: &str| -> Result<u64> {
        symbol(name)
            .map(|s| s.size())
            .ok_or_else(|| bad(format!("no symbol {name}")))
    };
    let model_bytes = size("KILN_MODEL")?;
    let arena_bytes = size("KILN_ARENA")?;
    let sheap = symbol("__sheap")
        .map(|s| s.address())
        .ok_or_else(|| bad("no symbol __sheap".into()))?;
    let statics = sheap.saturating_sub(u64::from(board.ram.origin));
    let flash = flash_end - flash_lo;
    Ok(Footprint {
        code_bytes: flash.saturating_sub(model_bytes),
        model_bytes,
        arena_bytes,
        statics_bytes: statics.saturating_sub(arena_bytes),
        stack_bytes,
    })
}
