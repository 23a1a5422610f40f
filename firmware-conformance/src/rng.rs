//! The cases' pseudo-random numbers: a 32-bit LCG (`s = s * 1664525 + 1013904223`, Numerical Recipes), its high
//! bits used (the low ones of a power-of-two LCG are poor). Each case has its own generator, seeded from its
//! kernel and index, so a case is reproduced by its index alone.

pub struct Rng(u32);

impl Rng {
    pub fn new(seed: u32) -> Self {
        let mut r = Rng(seed);
        r.next();
        r
    }

    pub fn next(&mut self) -> u32 {
        self.0 = self.0.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        self.0
    }

    pub fn byte(&mut self) -> i8 {
        (self.next() >> 24) as u8 as i8
    }

    /// Any `i32` (the high halves of two steps).
    pub fn any_i32(&mut self) -> i32 {
        ((self.next() & 0xFFFF_0000) | (self.next() >> 16)) as i32
    }

    /// Uniform in `0..n` (`n >= 1`).
    pub fn below(&mut self, n: u32) -> u32 {
        ((self.next() as u64 * n as u64) >> 32) as u32
    }

    /// Uniform in `lo..=hi` (`lo <= hi`, a span of at most 2^32 values).
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        let span = (hi - lo + 1) as u64;
        lo + ((self.next() as u64 * span) >> 32) as i64
    }

    /// [`Rng::range`] for `u32` bounds.
    pub fn urange(&mut self, lo: u32, hi: u32) -> u32 {
        self.range(lo as i64, hi as i64) as u32
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u32, den: u32) -> bool {
        self.below(den) < num
    }
}
