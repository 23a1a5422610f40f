//! `kiln_dsp` marks targets whose cores all have the Armv7E-M DSP extension (SMLAD, SXTB16, ...): Cortex-M4 and
//! M7 (`thumbv7em-*`). Stable Rust does not expose Arm target features to `cfg`, so the target name decides.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(kiln_dsp)");
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.starts_with("thumbv7em") {
        println!("cargo::rustc-cfg=kiln_dsp");
    }
}
