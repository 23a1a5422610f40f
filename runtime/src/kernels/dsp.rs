//! The Armv7E-M DSP instructions the optimised int8 kernels are built from, one function each: the instruction
//! itself on cores that have it (`cfg(kiln_dsp)`, set by `build.rs` for `thumbv7em` targets), its exact
//! definition in portable Rust elsewhere (the host, Cortex-M0+/M3). The kernels above are the same code on both,
//! so the host's tests of them against the reference kernels hold for the device, and the device's results are
//! bit-identical to the host's.
//!
//! A `u32` here is two 16-bit lanes, `lo` in bits 0..16 and `hi` in bits 16..32.
// The only `unsafe` of the kernels: inline assembly of pure register-to-register instructions.

/// Bytes 0 and 2 of `x`, sign-extended to the two 16-bit lanes (`SXTB16`).
#[inline(always)]
pub fn sxtb16(x: u32) -> u32 {
    #[cfg(kiln_dsp)]
    {
        let r: u32;
        // SAFETY: a pure register operation.
        unsafe {
            core::arch::asm!("sxtb16 {0}, {1}", out(reg) r, in(reg) x, options(pure, nomem, nostack, preserves_flags))
        };
        r
    }
    #[cfg(not(kiln_dsp))]
    {
        let lo = (x as u8 as i8 as i16) as u16 as u32;
        let hi = ((x >> 16) as u8 as i8 as i16) as u16 as u32;
        lo | hi << 16
    }
}

/// Bytes 1 and 3 of `x`, sign-extended to the two 16-bit lanes (`SXTB16 …, ROR #8`).
#[inline(always)]
pub fn sxtb16_ror8(x: u32) -> u32 {
    #[cfg(kiln_dsp)]
    {
        let r: u32;
        // SAFETY: a pure register operation.
        unsafe {
            core::arch::asm!("sxtb16 {0}, {1}, ror #8", out(reg) r, in(reg) x, options(pure, nomem, nostack, preserves_flags))
        };
        r
    }
    #[cfg(not(kiln_dsp))]
    {
        sxtb16(x.rotate_right(8))
    }
}

/// Lane-wise wrapping 16-bit addition (`SADD16`; its GE flags are not used).
#[inline(always)]
pub fn sadd16(a: u32, b: u32) -> u32 {
    #[cfg(kiln_dsp)]
    {
        let r: u32;
        // SAFETY: a pure register operation (it sets APSR.GE, which nothing reads).
        unsafe {
            core::arch::asm!("sadd16 {0}, {1}, {2}", out(reg) r, in(reg) a, in(reg) b, options(pure, nomem, nostack))
        };
        r
    }
    #[cfg(not(kiln_dsp))]
    {
        let lo = (a as u16).wrapping_add(b as u16) as u32;
        let hi = ((a >> 16) as u16).wrapping_add((b >> 16) as u16) as u32;
        lo | hi << 16
    }
}

/// `acc + a.lo * b.lo + a.hi * b.hi`, signed lanes, wrapping (`SMLAD`; it sets the sticky Q flag on overflow,
/// which nothing reads).
#[inline(always)]
pub fn smlad(a: u32, b: u32, acc: i32) -> i32 {
    #[cfg(kiln_dsp)]
    {
        let r: i32;
        // SAFETY: a pure register operation.
        unsafe {
            core::arch::asm!("smlad {0}, {1}, {2}, {3}", out(reg) r, in(reg) a, in(reg) b, in(reg) acc, options(pure, nomem, nostack))
        };
        r
    }
    #[cfg(not(kiln_dsp))]
    {
        let p0 = (a as u16 as i16 as i32) * (b as u16 as i16 as i32);
        let p1 = ((a >> 16) as u16 as i16 as i32) * ((b >> 16) as u16 as i16 as i32);
        acc.wrapping_add(p0).wrapping_add(p1)
    }
}

/// `acc + a.lo * b.lo`, signed 16-bit lanes, wrapping (`SMLABB`).
#[inline(always)]
pub fn smlabb(a: u32, b: u32, acc: i32) -> i32 {
    #[cfg(kiln_dsp)]
    {
        let r: i32;
        // SAFETY: a pure register operation.
        unsafe {
            core::arch::asm!("smlabb {0}, {1}, {2}, {3}", out(reg) r, in(reg) a, in(reg) b, in(reg) acc, options(pure, nomem, nostack))
        };
        r
    }
    #[cfg(not(kiln_dsp))]
    {
        acc.wrapping_add((a as u16 as i16 as i32) * (b as u16 as i16 as i32))
    }
}

/// `acc + a.hi * b.hi`, signed 16-bit lanes, wrapping (`SMLATT`).
#[inline(always)]
pub fn smlatt(a: u32, b: u32, acc: i32) -> i32 {
    #[cfg(kiln_dsp)]
    {
        let r: i32;
        // SAFETY: a pure register operation.
        unsafe {
            core::arch::asm!("smlatt {0}, {1}, {2}, {3}", out(reg) r, in(reg) a, in(reg) b, in(reg) acc, options(pure, nomem, nostack))
        };
        r
    }
    #[cfg(not(kiln_dsp))]
    {
        acc.wrapping_add(((a >> 16) as u16 as i16 as i32) * ((b >> 16) as u16 as i16 as i32))
    }
}

/// `(a * b + 2^31) >> 32`: the high word of the exact 64-bit product, rounded (`SMMULR`).
#[inline(always)]
pub fn smmulr(a: i32, b: i32) -> i32 {
    #[cfg(kiln_dsp)]
    {
        let r: i32;
        // SAFETY: a pure register operation.
        unsafe {
            core::arch::asm!("smmulr {0}, {1}, {2}", out(reg) r, in(reg) a, in(reg) b, options(pure, nomem, nostack, preserves_flags))
        };
        r
    }
    #[cfg(not(kiln_dsp))]
    {
        ((a as i64 * b as i64 + (1i64 << 31)) >> 32) as i32
    }
}

/// `v` in both 16-bit lanes.
#[inline(always)]
pub fn splat16(v: i16) -> u32 {
    (v as u16 as u32) * 0x0001_0001
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes() {
        assert_eq!(sxtb16(0x80_7F_01_FF), 0x007F_FFFF); // bytes 0 (-1) and 2 (127)
        assert_eq!(sxtb16_ror8(0x80_7F_01_FF), 0xFF80_0001); // bytes 1 (1) and 3 (-128)
        assert_eq!(sadd16(0xFFFF_0001, 0x0001_7FFF), 0x0000_8000);
        assert_eq!(smlad(0xFFFF_0002, 0x0003_0005, 100), 100 + 2 * 5 - 3);
        assert_eq!(splat16(-2), 0xFFFE_FFFE);
        assert_eq!(smlabb(0x0007_FFFE, 0x0009_0003, 1), 1 - 6);
        assert_eq!(smlatt(0xFFF9_0001, 0x0009_0003, 1), 1 - 63);
        assert_eq!(smmulr(1 << 30, 6), 2); // 1.5 rounds up
        assert_eq!(smmulr(-(1 << 30), 6), -1); // -1.5 rounds up too
        assert_eq!(smmulr(i32::MIN, i32::MIN), 1 << 30);
    }
}
