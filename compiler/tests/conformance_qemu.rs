//! The optimised int8 kernels' Cortex-M4/M7 assembly against the reference kernels, on the (emulated) device.
//!
//! `runtime/tests/kernels_s8.rs` proves on the host that the optimised kernels' portable twins equal the reference
//! kernels; the inline-assembly paths (`cfg(kiln_dsp)`, thumbv7em only) are what the devices run. This builds
//! `firmware-conformance/` (a bare-metal firmware running thousands of deterministic pseudo-random cases of every
//! optimised kernel against the reference kernel, both compiled for thumbv7em-none-eabihf), runs it under QEMU on
//! mps2-an386 (Cortex-M4) and mps2-an500 (Cortex-M7), and asserts that every kernel ran at least [`MIN_CASES`]
//! cases and none mismatched.
//!
//! Needs `qemu-system-arm` and a Cortex-M Rust toolchain (`scripts/setup-cortex-m.sh` installs both; the toolchain
//! is found as `kiln` finds it, `KILN_TOOLCHAIN=rustup|debian` forces one). Without them the tests fail and say
//! how to get them; they never skip. The firmware builds to `target/firmware-conformance` (rustup) or
//! `target/firmware-conformance-debian`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kiln_compiler::firmware::{toolchain, Toolchain};

const TARGET: &str = "thumbv7em-none-eabihf";

/// Fewest cases each kernel must run.
const MIN_CASES: u32 = 200;

/// The whole run takes about 4 s under QEMU on a 2020s x86 core.
const TIMEOUT: Duration = Duration::from_secs(180);

/// The kernels the firmware must report, each on one `kernel NAME cases=N mismatches=M` line.
const KERNELS: &[&str] = &[
    "dot_conv2d_s8",
    "dot_conv2d_s8_in_place",
    "dot_fully_connected_s8",
    "depthwise_conv2d_s8",
    "depthwise_conv2d_s8_in_place",
    "binary_s8_table",
    "binary_s8_table_in_place",
    "max_pool_s8_fast",
    "avg_pool_s8_fast",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// QEMU must be there: a missing tool fails the test with the way to install it, it never skips.
fn require_qemu() {
    let ok = Command::new("qemu-system-arm")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "qemu-system-arm is not installed: apt-get install qemu-system-arm (scripts/setup-cortex-m.sh does it)"
    );
}

/// The conformance firmware's ELF, built once per test process (as `kiln_compiler::firmware` builds
/// `firmware/`: rustup's cargo when the target is installed, else Debian's with `-Zbuild-std=core`).
fn firmware() -> &'static Path {
    static ELF: OnceLock<PathBuf> = OnceLock::new();
    ELF.get_or_init(build)
}

fn build() -> PathBuf {
    let tc = toolchain(TARGET).unwrap_or_else(|e| {
        panic!(
            "cannot build the conformance firmware: {e} (scripts/setup-cortex-m.sh installs one)"
        )
    });
    let dir = repo().join("firmware-conformance");
    let target_dir = repo().join("target").join(match tc {
        Toolchain::Rustup => "firmware-conformance",
        Toolchain::Debian { .. } => "firmware-conformance-debian",
    });
    let mut cmd = match &tc {
        Toolchain::Rustup => {
            let mut c = Command::new("cargo");
            c.env_remove("RUSTC").env_remove("RUSTC_BOOTSTRAP");
            c
        }
        Toolchain::Debian { linker } => {
            let mut c = Command::new("/usr/bin/cargo");
            let var = format!(
                "CARGO_TARGET_{}_LINKER",
                TARGET.to_uppercase().replace('-', "_")
            );
            c.env("RUSTC", "/usr/bin/rustc")
                .env("RUSTC_BOOTSTRAP", "1")
                .env(var, linker)
                .arg("-Zbuild-std=core");
            c
        }
    };
    cmd.current_dir(&dir)
        .args(["build", "--release", "--target", TARGET])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    let started = Instant::now();
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo to build {} ({e})", dir.display()));
    assert!(
        out.status.success(),
        "building the conformance firmware ({tc:?}) failed:\n{}",
        text(&out.stderr)
    );
    eprintln!(
        "conformance firmware built with {tc:?} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    target_dir
        .join(TARGET)
        .join("release")
        .join("kiln-firmware-conformance")
}

/// QEMU dies with the test process (Linux).
fn die_with_parent(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

struct Run {
    /// `None`: killed by a signal (or by us, on the timeout).
    status: Option<i32>,
    timed_out: bool,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

/// Reads a child's pipe to the end on a thread.
fn collect(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut s);
        }
        text(&s)
    })
}

/// Runs `elf` on QEMU's `machine` with `cpu`, semihosting on, killed after [`TIMEOUT`].
fn run_qemu(machine: &str, cpu: &str, elf: &Path) -> Run {
    let mut cmd = Command::new("qemu-system-arm");
    die_with_parent(&mut cmd);
    cmd.args([
        "-machine",
        machine,
        "-cpu",
        cpu,
        "-nographic",
        "-monitor",
        "none",
    ])
    .args(["-semihosting-config", "enable=on,target=native"])
    .arg("-kernel")
    .arg(elf)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child: Child = cmd.spawn().unwrap_or_else(|e| {
        panic!("cannot start qemu-system-arm ({e}): apt-get install qemu-system-arm")
    });
    let (out, err) = (collect(child.stdout.take()), collect(child.stderr.take()));
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for QEMU") {
            break status;
        }
        if started.elapsed() > TIMEOUT {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("wait for QEMU");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        status: status.code(),
        timed_out,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        elapsed: started.elapsed(),
    }
}

/// `(name, cases, mismatches)` from the firmware's `kernel NAME cases=N mismatches=M` lines.
fn kernel_lines(stdout: &str) -> Vec<(String, u32, u32)> {
    stdout
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            if words.next() != Some("kernel") {
                return None;
            }
            let name = words.next()?.to_owned();
            let cases = words.next()?.strip_prefix("cases=")?.parse().ok()?;
            let mismatches = words.next()?.strip_prefix("mismatches=")?.parse().ok()?;
            Some((name, cases, mismatches))
        })
        .collect()
}

/// Runs the conformance firmware on `machine` and checks its report.
fn conformance_on(machine: &str, cpu: &str) {
    require_qemu();
    let elf = firmware();
    let run = run_qemu(machine, cpu, elf);
    let transcript = format!(
        "QEMU {machine} ({cpu}), {:.1} s, exit {:?}:\n--- stdout\n{}--- stderr\n{}",
        run.elapsed.as_secs_f64(),
        run.status,
        run.stdout,
        run.stderr
    );
    assert!(
        !run.timed_out,
        "the conformance firmware did not finish within {TIMEOUT:?}\n{transcript}"
    );
    let why = match run.status {
        Some(0) => None,
        Some(1) => Some(
            "an optimised kernel's output differs from the reference kernel's (see MISMATCH lines)",
        ),
        Some(101) => Some("the firmware panicked"),
        Some(102) => Some("the firmware faulted (HardFault or an unexpected exception)"),
        _ => Some("QEMU failed"),
    };
    if let Some(why) = why {
        panic!("{why}\n{transcript}");
    }
    assert!(
        run.stdout.contains(&format!("cpu {cpu} ")),
        "the firmware did not run on a {cpu}\n{transcript}"
    );
    let kernels = kernel_lines(&run.stdout);
    let mut total = 0;
    for &name in KERNELS {
        let Some(&(_, cases, mismatches)) = kernels.iter().find(|(n, ..)| n == name) else {
            panic!("no report for kernel {name}\n{transcript}");
        };
        assert_eq!(
            mismatches, 0,
            "{name}: {mismatches} mismatching cases\n{transcript}"
        );
        assert!(
            cases >= MIN_CASES,
            "{name}: only {cases} cases ran, expected at least {MIN_CASES}\n{transcript}"
        );
        total += cases;
    }
    assert_eq!(
        kernels.len(),
        KERNELS.len(),
        "the firmware reports kernels this test does not know: update KERNELS\n{transcript}"
    );
    assert!(
        run.stdout
            .contains(&format!("total cases={total} mismatches=0"))
            && run.stdout.lines().any(|l| l.trim() == "PASS"),
        "the firmware's summary does not match its kernel lines\n{transcript}"
    );
    eprintln!(
        "{machine} ({cpu}): {total} cases of {} kernels, no mismatch, {:.1} s",
        KERNELS.len(),
        run.elapsed.as_secs_f64()
    );
}

#[test]
fn optimised_kernels_match_reference_on_cortex_m4() {
    conformance_on("mps2-an386", "cortex-m4");
}

#[test]
fn optimised_kernels_match_reference_on_cortex_m7() {
    conformance_on("mps2-an500", "cortex-m7");
}
