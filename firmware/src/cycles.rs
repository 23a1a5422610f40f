//! A 64-bit cycle count from whichever counter the board file names: the DWT cycle counter (real cores) or
//! SysTick on the core clock (QEMU, which does not emulate DWT), extended past its 24 bits by its wrap
//! interrupt. Under QEMU with `-icount shift=0` one SysTick tick is `1e9 / clock_hz` guest instructions.

use core::cell::Cell;
use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m::peripheral::{DCB, DWT, SCB, SYST};
use cortex_m_rt::exception;

#[derive(Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)] // a board uses one
pub enum Counter {
    Dwt,
    SysTick,
}

const SYSTICK_RELOAD: u32 = 0x00FF_FFFF;

/// SysTick wraps (SysTick) or the high word (DWT). Only the SysTick handler and `now` touch it; a load and a
/// store (no read-modify-write) keep this working on cores without atomic RMW.
static HIGH: AtomicU32 = AtomicU32::new(0);
/// DWT: the last 32-bit count seen, to notice wraps.
static LAST: AtomicU32 = AtomicU32::new(0);

#[exception]
fn SysTick() {
    HIGH.store(
        HIGH.load(Ordering::Relaxed).wrapping_add(1),
        Ordering::Relaxed,
    );
}

pub struct Cycles {
    counter: Counter,
    _syst: SYST,
    /// The last value `now` returned: it never goes back (see `now`).
    last: Cell<u64>,
}

impl Cycles {
    pub fn start(counter: Counter, mut syst: SYST, dcb: &mut DCB, dwt: &mut DWT) -> Self {
        match counter {
            Counter::SysTick => {
                syst.set_clock_source(SystClkSource::Core);
                syst.set_reload(SYSTICK_RELOAD);
                syst.clear_current();
                syst.enable_interrupt();
                syst.enable_counter();
            }
            Counter::Dwt => {
                dcb.enable_trace();
                DWT::unlock();
                dwt.set_cycle_count(0);
                dwt.enable_cycle_counter();
            }
        }
        Cycles {
            counter,
            _syst: syst,
            last: Cell::new(0),
        }
    }

    /// Cycles since `start`.
    pub fn now(&self) -> u64 {
        match self.counter {
            Counter::SysTick => loop {
                let high = HIGH.load(Ordering::Relaxed);
                let current = SYST::get_current();
                let pending = SCB::is_pendst_pending();
                // A wrap whose interrupt ran between the reads shows as a changed HIGH: read again.
                if HIGH.load(Ordering::Relaxed) != high {
                    continue;
                }
                // A wrap whose interrupt has not run yet (it can lag by a few instructions, more under QEMU,
                // which takes interrupts between translated blocks) is still pending: count it if `current` was
                // read after it, i.e. the counter has just restarted from the top.
                let wraps = u64::from(high) + u64::from(pending && current > SYSTICK_RELOAD / 2);
                let mut t = (wraps << 24) + u64::from(SYSTICK_RELOAD - current);
                // QEMU can show the reloaded counter before it even marks the wrap pending: a reading below the
                // last one has missed exactly one wrap (now() runs far more often than once per wrap).
                if t < self.last.get() {
                    t += 1 << 24;
                }
                self.last.set(t);
                return t;
            },
            Counter::Dwt => {
                let count = DWT::cycle_count();
                let mut high = HIGH.load(Ordering::Relaxed);
                if count < LAST.load(Ordering::Relaxed) {
                    high = high.wrapping_add(1);
                    HIGH.store(high, Ordering::Relaxed);
                }
                LAST.store(count, Ordering::Relaxed);
                (u64::from(high) << 32) | u64::from(count)
            }
        }
    }
}
