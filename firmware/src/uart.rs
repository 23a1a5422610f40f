//! UART drivers, one per peripheral family a board file can name (`[uart] driver`). Each implements
//! `embedded-hal-nb`'s serial `Read` and `Write` (embedded-hal 1.0), polled, with no interrupts and no buffers:
//! the firmware reads a byte whenever one is ready and writes whole frames it has already encoded.
//!
//! Adding a driver: a struct with `new(base, divisor, ...)` here, a `UartDriver` variant with its divisor rule
//! in `kiln-boards`, and its constructor line in `build.rs`.
// A board uses one of these; the others are compiled, checked and dropped by the linker.
#![allow(dead_code)]

use core::convert::Infallible;
use core::ptr::{read_volatile, write_volatile};

use embedded_hal_nb::serial::{ErrorType, Read, Write};

fn rd(base: usize, offset: usize) -> u32 {
    // SAFETY: `base` is the peripheral's address from the board file; the offsets are its registers.
    unsafe { read_volatile((base + offset) as *const u32) }
}

fn wr(base: usize, offset: usize, value: u32) {
    // SAFETY: as `rd`.
    unsafe { write_volatile((base + offset) as *mut u32, value) }
}

/// Writes every byte of `bytes`, waiting for room.
pub fn write_all<S: Write<u8>>(serial: &mut S, bytes: &[u8]) {
    for &b in bytes {
        let _ = nb::block!(serial.write(b));
    }
    let _ = nb::block!(serial.flush());
}

/// Arm CMSDK APB UART: DATA 0x00, STATE 0x04 (TX full bit 0, RX full bit 1), CTRL 0x08, BAUDDIV 0x10.
pub struct Cmsdk {
    base: usize,
}

impl Cmsdk {
    /// # Safety
    /// `base` must be a CMSDK UART that nothing else drives.
    pub unsafe fn new(base: usize, divisor: u32) -> Self {
        wr(base, 0x10, divisor);
        wr(base, 0x08, 0b11); // TX and RX enable
        Cmsdk { base }
    }
}

impl ErrorType for Cmsdk {
    type Error = Infallible;
}

impl Read<u8> for Cmsdk {
    fn read(&mut self) -> nb::Result<u8, Infallible> {
        if rd(self.base, 0x04) & 0b10 != 0 {
            Ok(rd(self.base, 0x00) as u8)
        } else {
            Err(nb::Error::WouldBlock)
        }
    }
}

impl Write<u8> for Cmsdk {
    fn write(&mut self, byte: u8) -> nb::Result<(), Infallible> {
        if rd(self.base, 0x04) & 0b01 != 0 {
            return Err(nb::Error::WouldBlock);
        }
        wr(self.base, 0x00, u32::from(byte));
        Ok(())
    }

    fn flush(&mut self) -> nb::Result<(), Infallible> {
        if rd(self.base, 0x04) & 0b01 != 0 {
            Err(nb::Error::WouldBlock)
        } else {
            Ok(())
        }
    }
}

/// Arm PL011: DR 0x00, FR 0x18 (busy bit 3, RX empty bit 4, TX full bit 5), IBRD 0x24, FBRD 0x28, LCRH 0x2C,
/// CR 0x30.
pub struct Pl011 {
    base: usize,
}

impl Pl011 {
    /// # Safety
    /// `base` must be a PL011 that nothing else drives. `divisor` is `IBRD << 6 | FBRD`.
    pub unsafe fn new(base: usize, divisor: u32) -> Self {
        wr(base, 0x30, 0);
        wr(base, 0x24, divisor >> 6);
        wr(base, 0x28, divisor & 0x3F);
        wr(base, 0x2C, 0b11 << 5 | 1 << 4); // 8 bits, FIFOs on
        wr(base, 0x30, 1 << 9 | 1 << 8 | 1); // RX, TX, UART enable
        Pl011 { base }
    }
}

impl ErrorType for Pl011 {
    type Error = Infallible;
}

impl Read<u8> for Pl011 {
    fn read(&mut self) -> nb::Result<u8, Infallible> {
        if rd(self.base, 0x18) & 1 << 4 != 0 {
            Err(nb::Error::WouldBlock)
        } else {
            Ok(rd(self.base, 0x00) as u8)
        }
    }
}

impl Write<u8> for Pl011 {
    fn write(&mut self, byte: u8) -> nb::Result<(), Infallible> {
        if rd(self.base, 0x18) & 1 << 5 != 0 {
            return Err(nb::Error::WouldBlock);
        }
        wr(self.base, 0x00, u32::from(byte));
        Ok(())
    }

    fn flush(&mut self) -> nb::Result<(), Infallible> {
        if rd(self.base, 0x18) & 1 << 3 != 0 {
            Err(nb::Error::WouldBlock)
        } else {
            Ok(())
        }
    }
}

/// ST STM32F4 USART: SR 0x00 (RXNE bit 5, TC bit 6, TXE bit 7), DR 0x04, BRR 0x08, CR1 0x0C. Its bus clock
/// and pins are set up by the board file's `init` writes.
pub struct Stm32Usart {
    base: usize,
}

impl Stm32Usart {
    /// # Safety
    /// `base` must be a USART that nothing else drives, clocked and routed.
    pub unsafe fn new(base: usize, divisor: u32) -> Self {
        wr(base, 0x08, divisor);
        wr(base, 0x0C, 1 << 13 | 1 << 3 | 1 << 2); // UE, TE, RE
        Stm32Usart { base }
    }
}

impl ErrorType for Stm32Usart {
    type Error = Infallible;
}

impl Read<u8> for Stm32Usart {
    fn read(&mut self) -> nb::Result<u8, Infallible> {
        // Reading SR then DR also clears an overrun.
        if rd(self.base, 0x00) & 1 << 5 != 0 {
            Ok(rd(self.base, 0x04) as u8)
        } else {
            Err(nb::Error::WouldBlock)
        }
    }
}

impl Write<u8> for Stm32Usart {
    fn write(&mut self, byte: u8) -> nb::Result<(), Infallible> {
        if rd(self.base, 0x00) & 1 << 7 == 0 {
            return Err(nb::Error::WouldBlock);
        }
        wr(self.base, 0x04, u32::from(byte));
        Ok(())
    }

    fn flush(&mut self) -> nb::Result<(), Infallible> {
        if rd(self.base, 0x00) & 1 << 6 == 0 {
            Err(nb::Error::WouldBlock)
        } else {
            Ok(())
        }
    }
}

/// Nordic nRF52 legacy UART: STARTRX 0x000, STARTTX 0x008, RXDRDY 0x108, TXDRDY 0x11C, ENABLE 0x500,
/// PSEL.TXD 0x50C, PSEL.RXD 0x514, RXD 0x518, TXD 0x51C, BAUDRATE 0x524.
pub struct NrfUart {
    base: usize,
    tx_pending: bool,
}

impl NrfUart {
    /// # Safety
    /// `base` must be an nRF UART that nothing else drives; `baudrate` is the BAUDRATE register's code.
    pub unsafe fn new(base: usize, baudrate: u32, tx_pin: u32, rx_pin: u32) -> Self {
        wr(base, 0x50C, tx_pin);
        wr(base, 0x514, rx_pin);
        wr(base, 0x524, baudrate);
        wr(base, 0x500, 4);
        wr(base, 0x000, 1);
        wr(base, 0x008, 1);
        NrfUart {
            base,
            tx_pending: false,
        }
    }

    fn tx_busy(&self) -> bool {
        self.tx_pending && rd(self.base, 0x11C) == 0
    }
}

impl ErrorType for NrfUart {
    type Error = Infallible;
}

impl Read<u8> for NrfUart {
    fn read(&mut self) -> nb::Result<u8, Infallible> {
        if rd(self.base, 0x108) == 0 {
            return Err(nb::Error::WouldBlock);
        }
        wr(self.base, 0x108, 0);
        Ok(rd(self.base, 0x518) as u8)
    }
}

impl Write<u8> for NrfUart {
    fn write(&mut self, byte: u8) -> nb::Result<(), Infallible> {
        if self.tx_busy() {
            return Err(nb::Error::WouldBlock);
        }
        wr(self.base, 0x11C, 0);
        wr(self.base, 0x51C, u32::from(byte));
        self.tx_pending = true;
        Ok(())
    }

    fn flush(&mut self) -> nb::Result<(), Infallible> {
        if self.tx_busy() {
            Err(nb::Error::WouldBlock)
        } else {
            Ok(())
        }
    }
}
