//! Stack high-water mark by painting: the stack reserve below the current stack pointer is filled with a pattern
//! once, and the lowest word no longer holding it is the deepest the stack has been since.

use crate::board::STACK_BYTES;

const PAINT: u32 = 0xC0DE_C0DE;

extern "C" {
    /// Top of the stack (cortex-m-rt).
    static _stack_start: u32;
    /// End of the statics (cortex-m-rt): the stack may not grow below it.
    static __sheap: u32;
}

fn top() -> usize {
    core::ptr::addr_of!(_stack_start) as usize
}

/// Lowest address the stack reserve covers.
fn bottom() -> usize {
    let statics_end = core::ptr::addr_of!(__sheap) as usize;
    top()
        .saturating_sub(STACK_BYTES)
        .max(statics_end)
        .next_multiple_of(4)
}

/// Paints the unused part of the stack reserve. Call from `main` before the work to be measured.
#[inline(never)]
pub fn paint() {
    let sp = cortex_m::register::msp::read() as usize;
    // Leave this function's own frame (and some slack below it) alone.
    let end = sp.saturating_sub(64) & !3;
    let mut p = bottom();
    while p < end {
        // SAFETY: between the statics and the live stack: memory nothing else uses.
        unsafe { core::ptr::write_volatile(p as *mut u32, PAINT) };
        p += 4;
    }
}

/// Most stack bytes used since [`paint`].
pub fn high_water() -> u32 {
    let mut p = bottom();
    let top = top();
    // SAFETY: reads of the painted region, which is mapped RAM.
    while p < top && unsafe { core::ptr::read_volatile(p as *const u32) } == PAINT {
        p += 4;
    }
    (top - p) as u32
}

/// True once the stack has used its whole painted reserve: it may have run into the statics below it.
pub fn exhausted() -> bool {
    high_water() as usize >= top() - bottom()
}
