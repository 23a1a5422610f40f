//! Kiln's optimised int8 kernels against the reference kernels, on the device.
//!
//! `kiln_runtime::kernels::fast` and `fast_elementwise` have inline-assembly paths that only exist on Cortex-M4/M7
//! (`cfg(kiln_dsp)`, set by the runtime's build script for thumbv7em targets); the host's conformance tests
//! (`runtime/tests/kernels_s8.rs`) run their portable twins. This firmware runs many deterministic pseudo-random
//! cases of each optimised kernel against the reference kernel on the unpacked op, both compiled for the same
//! thumbv7em target (the reference is plain Rust, the optimised kernel its assembly), and compares the bytes.
//!
//! Each kernel's output goes to a buffer at an offset of 0 to 3 bytes (its input too), surrounded by guard bytes
//! that must survive. Output over semihosting, one line per kernel:
//!
//! ```text
//! kernel dot_conv2d_s8 cases=600 mismatches=0
//! ```
//!
//! then `total cases=… mismatches=…` and `PASS` (exit status 0) or `FAIL` (1). A mismatch prints the kernel, the
//! case index, the first differing byte and the case's parameters. A panic exits with 101, a fault with 102.
//! Built and run under QEMU (mps2-an386, Cortex-M4; the same image runs on mps2-an500, Cortex-M7) by
//! `compiler/tests/conformance_qemu.rs`.
#![no_std]
#![no_main]

mod conv;
mod elementwise;
mod gen;
mod rng;

use core::fmt::{self, Write as _};
use core::ptr::addr_of_mut;

use cortex_m_rt::{entry, exception, ExceptionFrame};

use rng::Rng;

/// Prints one line over semihosting (formatted first, then written with one call).
macro_rules! say {
    ($($t:tt)*) => { $crate::line(format_args!($($t)*)) };
}
pub(crate) use say;

struct Line {
    buf: [u8; 1024],
    len: usize,
}

impl fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(self.buf.len() - 1 - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

pub fn line(args: fmt::Arguments<'_>) {
    let mut l = Line {
        buf: [0; 1024],
        len: 0,
    };
    let _ = l.write_fmt(args);
    l.buf[l.len] = b'\n';
    if let Ok(mut out) = semihosting::io::stdout() {
        use semihosting::io::Write as _;
        let _ = out.write_all(&l.buf[..=l.len]);
    }
}

// ---- buffers ----

/// Largest input (or first operand) of a case, in bytes.
pub const IN_CAP: usize = 16 * 1024;
/// Largest second operand of an Add/Sub.
pub const B_CAP: usize = 4 * 1024;
/// Largest weights.
pub const W_CAP: usize = 10 * 1024;
/// Largest packed weights, in bytes.
pub const PACK_CAP: usize = 12 * 1024;
/// Largest output.
pub const OUT_CAP: usize = 16 * 1024;
/// Most output channels of a conv or fully connected case.
pub const CH_CAP: usize = 64;
/// Inputs and outputs start 0 to `MAX_OFF` bytes into their buffers.
pub const MAX_OFF: usize = 3;
/// Guard bytes after an optimised kernel's output (and the bytes before it) must keep this value.
pub const GUARD: usize = 16;
pub const CANARY: i8 = 0x5A;

pub struct Bufs {
    pub a: [i8; MAX_OFF + IN_CAP],
    pub b: [i8; MAX_OFF + B_CAP],
    pub w: [i8; W_CAP],
    pub packed_bytes: [u8; PACK_CAP],
    pub packed: [u32; PACK_CAP / 4],
    pub bias: [i32; CH_CAP],
    pub mult: [i16; CH_CAP],
    pub shift: [i8; CH_CAP],
    /// The reference kernel's output.
    pub want: [i8; OUT_CAP],
    /// The optimised kernel's output (at an offset, guarded).
    pub got: [i8; MAX_OFF + OUT_CAP + GUARD],
}

static mut BUFS: Bufs = Bufs {
    a: [0; MAX_OFF + IN_CAP],
    b: [0; MAX_OFF + B_CAP],
    w: [0; W_CAP],
    packed_bytes: [0; PACK_CAP],
    packed: [0; PACK_CAP / 4],
    bias: [0; CH_CAP],
    mult: [0; CH_CAP],
    shift: [0; CH_CAP],
    want: [0; OUT_CAP],
    got: [0; MAX_OFF + OUT_CAP + GUARD],
};

/// Fills the optimised kernel's output buffer, around and at `got[off..off + len]`, with [`CANARY`].
pub fn prepare(got: &mut [i8], off: usize, len: usize) {
    got[..off + len + GUARD].fill(CANARY);
}

// ---- tallies ----

/// Mismatching cases reported in full per kernel (the others are only counted).
const REPORTED: u32 = 3;

pub struct Tally {
    pub name: &'static str,
    pub cases: u32,
    pub mismatches: u32,
}

impl Tally {
    /// One case: `want` (the reference's output) against `got[off..off + want.len()]` (the optimised kernel's),
    /// and the guard bytes around that in `got` untouched. On a mismatch prints where, then `describe()`s the case.
    pub fn check(
        &mut self,
        case: u32,
        want: &[i8],
        got: &[i8],
        off: usize,
        describe: impl FnOnce(),
    ) {
        self.cases += 1;
        let len = want.len();
        let out = &got[off..off + len];
        let differ = want.iter().zip(out).filter(|(w, g)| w != g).count();
        let first = want.iter().zip(out).position(|(w, g)| w != g);
        let stray = got[..off]
            .iter()
            .chain(&got[off + len..off + len + GUARD])
            .position(|&b| b != CANARY)
            .map(|i| {
                if i < off {
                    i as isize - off as isize
                } else {
                    (len + i - off) as isize
                }
            });
        if first.is_none() && stray.is_none() {
            return;
        }
        self.mismatches += 1;
        if self.mismatches > REPORTED {
            return;
        }
        if let Some(i) = first {
            say!(
                "MISMATCH {} case {}: {} of {} bytes differ, first at byte {}: got {}, want {}",
                self.name,
                case,
                differ,
                len,
                i,
                out[i],
                want[i]
            );
        }
        if let Some(i) = stray {
            say!(
                "MISMATCH {} case {}: wrote outside its {} output bytes, at byte {} (relative to the output)",
                self.name,
                case,
                len,
                i
            );
        }
        describe();
    }
}

/// One kernel's cases: generates case `case` from `rng`, runs the reference and the optimised kernel, checks.
type Runner = fn(&mut Bufs, &mut Rng, &mut Tally, u32);

/// The kernels and how many cases each runs.
const SUITE: &[(&str, u32, Runner)] = &[
    ("dot_conv2d_s8", 2000, conv::dot_conv),
    ("dot_conv2d_s8_in_place", 1000, conv::dot_conv_in_place),
    ("dot_fully_connected_s8", 1500, conv::dot_fc),
    ("depthwise_conv2d_s8", 2000, conv::depthwise),
    (
        "depthwise_conv2d_s8_in_place",
        1000,
        conv::depthwise_in_place,
    ),
    ("binary_s8_table", 1000, elementwise::binary),
    (
        "binary_s8_table_in_place",
        600,
        elementwise::binary_in_place,
    ),
    ("max_pool_s8_fast", 1000, elementwise::max_pool),
    ("avg_pool_s8_fast", 1000, elementwise::avg_pool),
];

/// The seed of case `case` of kernel `kernel` (its index in [`SUITE`]).
pub fn seed(kernel: usize, case: u32) -> u32 {
    ((kernel as u32 + 1) << 24) ^ case.wrapping_mul(0x9E37_79B9)
}

fn cpu() -> &'static str {
    // SAFETY: CPUID, a read-only register of the System Control Block on every Cortex-M.
    let cpuid = unsafe { core::ptr::read_volatile(0xE000_ED00 as *const u32) };
    match (cpuid >> 4) & 0xFFF {
        0xC24 => "cortex-m4",
        0xC27 => "cortex-m7",
        _ => "other",
    }
}

#[entry]
fn main() -> ! {
    // SAFETY: main runs once and is the only user of the buffers.
    let bufs = unsafe { &mut *addr_of_mut!(BUFS) };
    say!(
        "kiln firmware-conformance: cpu {} ({} kernels)",
        cpu(),
        SUITE.len()
    );
    let (mut cases, mut mismatches) = (0u32, 0u32);
    for (k, &(name, n, run)) in SUITE.iter().enumerate() {
        let mut t = Tally {
            name,
            cases: 0,
            mismatches: 0,
        };
        for case in 0..n {
            let mut rng = Rng::new(seed(k, case));
            run(bufs, &mut rng, &mut t, case);
        }
        say!(
            "kernel {} cases={} mismatches={}",
            name,
            t.cases,
            t.mismatches
        );
        cases += t.cases;
        mismatches += t.mismatches;
    }
    say!("total cases={} mismatches={}", cases, mismatches);
    if mismatches == 0 {
        say!("PASS");
        semihosting::process::exit(0)
    } else {
        say!("FAIL");
        semihosting::process::exit(1)
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    say!("PANIC {}", info);
    semihosting::process::exit(101)
}

#[exception]
unsafe fn HardFault(ef: &ExceptionFrame) -> ! {
    say!("HARDFAULT pc={:#010x} lr={:#010x}", ef.pc(), ef.lr());
    semihosting::process::exit(102)
}

#[exception]
unsafe fn DefaultHandler(irqn: i16) {
    say!("UNEXPECTED EXCEPTION {}", irqn);
    semihosting::process::exit(102)
}
