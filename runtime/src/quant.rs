//! Fixed-point requantisation, the one piece of arithmetic every int8 kernel shares.
//!
//! A real multiplier `M` in `(0, 1)` (or a little above) is stored as `multiplier * 2^(shift - 31)` with
//! `multiplier` in `[2^30, 2^31)` (or 0 for `M = 0`) and `shift` in `[-31, 30]`; the host computes the pair once
//! (`crate::host::quantize_multiplier`), the device only multiplies and shifts.

/// Smallest and largest `shift` a model may carry.
pub const SHIFT_MIN: i8 = -31;
pub const SHIFT_MAX: i8 = 30;

/// `round(acc * multiplier * 2^(shift - 31))`, ties rounded up (towards +inf), saturated to `i32`.
///
/// One 64-bit multiply and one rounding shift ("single rounding"). `shift` must be in
/// [`SHIFT_MIN`]`..=`[`SHIFT_MAX`] (checked when the model is loaded).
#[inline(always)]
pub fn requantize(acc: i32, multiplier: i32, shift: i8) -> i32 {
    debug_assert!((SHIFT_MIN..=SHIFT_MAX).contains(&shift));
    let total = 31 - shift as i32; // 1..=62
    let prod = acc as i64 * multiplier as i64;
    let rounded = (prod + (1i64 << (total - 1))) >> total;
    rounded.clamp(i32::MIN as i64, i32::MAX as i64) as i32
}

/// Whether `(multiplier, shift)` is a pair [`requantize`] accepts.
pub fn valid_multiplier(multiplier: i32, shift: i8) -> bool {
    (SHIFT_MIN..=SHIFT_MAX).contains(&shift) && (multiplier == 0 || multiplier >= 1 << 30)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_is_exact() {
        // 0.5 = 2^30 * 2^(0 - 31)
        assert_eq!(requantize(100, 1 << 30, 0), 50);
        assert_eq!(requantize(101, 1 << 30, 0), 51); // 50.5 rounds up
        assert_eq!(requantize(-101, 1 << 30, 0), -50); // -50.5 rounds up too
    }

    #[test]
    fn saturates_instead_of_wrapping() {
        assert_eq!(requantize(i32::MAX, i32::MAX, 30), i32::MAX);
        assert_eq!(requantize(i32::MIN, i32::MAX, 30), i32::MIN);
    }
}
