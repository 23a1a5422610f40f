//! How the firmware ends, per log transport (the board file's `logs`): under an emulator with semihosting it
//! exits QEMU with a status; on a real board (RTT) it resets.

#[cfg(all(feature = "logs-semihosting", feature = "logs-rtt"))]
compile_error!("choose one of the features logs-semihosting and logs-rtt (kiln picks the board's)");
#[cfg(not(any(feature = "logs-semihosting", feature = "logs-rtt")))]
compile_error!("choose one of the features logs-semihosting and logs-rtt (kiln picks the board's)");

#[cfg(feature = "logs-semihosting")]
pub fn exit(code: i32) -> ! {
    semihosting::process::exit(code)
}

#[cfg(feature = "logs-rtt")]
pub fn exit(_code: i32) -> ! {
    cortex_m::peripheral::SCB::sys_reset()
}

// The global logger of the board's transport, unless no log is compiled in (`DEFMT_LOG=off`, see build.rs).
#[cfg(all(feature = "logs-rtt", not(kiln_no_logs)))]
use defmt_rtt as _;
#[cfg(all(feature = "logs-semihosting", not(kiln_no_logs)))]
use defmt_semihosting as _;
