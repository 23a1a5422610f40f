//! kiln-runtime: load a `.kiln` model once, then run allocation-free inference in a caller-provided arena.
//!
//! `#![no_std]`, no `alloc`, no panics on model data: [`Model::from_bytes`] checks magic, version, length,
//! checksum and every op's operands, shapes and parameters; [`Interpreter::invoke`] then trusts them.
#![no_std]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(not(test), deny(unsafe_op_in_unsafe_fn))]

#[cfg(any(feature = "std", test))]
extern crate std;

#[cfg(target_endian = "big")]
compile_error!("kiln-runtime reads weights in place and supports little-endian targets only");

pub mod crc32;
pub mod error;
pub mod format;
#[cfg(feature = "std")]
pub mod host;
mod interp;
pub mod kernels;
mod model;
pub mod ops;
pub mod quant;
pub mod telemetry;

pub use error::{Error, Field};
pub use interp::{Interpreter, TensorView};
pub use model::Model;
