//! CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), as zip and PNG use it. A 16-entry table keeps it
//! at 64 bytes of flash; it runs once per model load.

const POLY: u32 = 0xEDB8_8320;

const fn nibble_table() -> [u32; 16] {
    let mut t = [0u32; 16];
    let mut i = 0;
    while i < 16 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 4 {
            c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

static TABLE: [u32; 16] = nibble_table();

/// CRC-32 of `data`.
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= b as u32;
        c = (c >> 4) ^ TABLE[(c & 0xF) as usize];
        c = (c >> 4) ^ TABLE[(c & 0xF) as usize];
    }
    !c
}

#[cfg(test)]
mod tests {
    #[test]
    fn check_value() {
        // The standard check value of CRC-32/ISO-HDLC.
        assert_eq!(super::crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(super::crc32(b""), 0);
    }
}
